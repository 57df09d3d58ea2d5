"""The run report's inputs and errors. (Whole reports are written and checked, and opened in
Chromium, by test_journeys.py and test_batch.py.)"""
import json
import subprocess
import sys

import pytest

from seglib.reporting import tables


def test_report_of_an_untrained_folder_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "seglib", "report", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "not a trained run" in done.stderr and "Traceback" not in done.stderr


def test_history_table_numbers_epochs_from_one_and_marks_the_best(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss,seconds\n0,2.0,1.5,3.1\n1,1.0,1.2,0.5\n2,0.8,1.3,0.5\n")
    (tmp_path / "run.json").write_text(json.dumps({"best_epoch": 2}))
    table = tables.history(tmp_path)
    assert list(table.index) == [1, 2, 3] and list(table.columns) == ["loss", "val loss", "seconds", "best"]
    assert list(table["best"]) == ["", "✓", ""]


def test_export_table_shows_latency_spread_and_names_the_keras_call():
    from seglib.inference.export import KERAS_CALL

    exported = {"keras": {"file_bytes": 2e6, "mean_iou": 0.5, "latency_ms": 10.0, "latency_p10_ms": 9.0,
                          "latency_p90_ms": 12.0, "call": KERAS_CALL},
                "formats": {"int8": {"file_bytes": 5e5, "agreement": 0.99, "mean_iou": 0.49, "latency_ms": 2.0,
                                     "latency_p10_ms": 1.8, "latency_p90_ms": 2.5}}}
    table = tables.export(exported)
    assert list(table.index) == ["keras (compiled call)", "int8"]
    assert table.loc["int8", "p10 ms"] == 1.8 and table.loc["int8", "p90 ms"] == 2.5
    assert table.loc["int8", "size MB"] == 0.5 and table.loc["keras (compiled call)", "agreement"] == 1.0
    del exported["keras"]["call"]  # an export.json written before the call was named timed model.predict
    assert list(tables.export(exported).index)[0] == "keras (model.predict)"


def test_a_report_html_seglib_did_not_write_is_not_replaced(tmp_path):
    from seglib.fsutil import write_marker
    from seglib.reporting.report import write_run_report

    run = tmp_path / "run"  # enough of a run to get past the first check
    run.mkdir()
    write_marker(run, "run")
    (run / "config.json").write_text("{}")
    (run / "model.keras").write_bytes(b"")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>my own report</p>")
    with pytest.raises(FileExistsError, match="report.html: exists and was not written by seglib"):
        write_run_report(run, mine)
    assert (mine / "report.html").read_text() == "<p>my own report</p>"
