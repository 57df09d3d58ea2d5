"""Batches: config checks before anything runs, then a real two-run batch where one run fails,
its index page, and --resume re-running only the failed run."""
import json
import re

import pytest
import yaml

from seglib.batch import BatchError, load_config, run_batch
from seglib.cli import main

TINY = {"SIZE": 64, "SAMPLE_PIXELS": 20_000, "EPOCHS": 2, "ENCODER_WEIGHTS": None, "BACKBONE": "mobilenetv2",
        "FORMATS": "int8", "CALIBRATION_IMAGES": 8, "EVAL_IMAGES": 8, "N_EXAMPLES": 2}


def write_config(path, runs, **shared):
    path.write_text(yaml.safe_dump({"name": "tiny", "parameters": {**TINY, **shared}, "runs": runs}))
    return path


@pytest.mark.parametrize("runs, shared, message", [
    ([{"name": "a", "LEARNING_RATE": 0.1}], {}, "unknown parameters ['LEARNING_RATE']"),
    ([{"name": "a"}], {"RUN_DIR": "x"}, "chosen by the batch"),
    ([{"name": "a"}, {"name": "a"}], {}, "appears twice"),
    ([{"BACKBONE": "resnet34"}], {}, "needs a 'name'"),
    ([{"name": "../escape"}], {}, "must be letters"),
    ([], {}, "non-empty list"),
    ([{"name": "a"}], {"DATA_DIR": "no/such/folder"}, "does not exist (set SYNTH_COUNT"),
])
def test_bad_configs_fail_before_anything_runs(tmp_path, runs, shared, message):
    config = write_config(tmp_path / "sweep.yaml", runs, **shared)
    with pytest.raises(BatchError, match=re.escape(message)) as err:
        run_batch(config, tmp_path)
    assert str(config) in str(err.value)
    assert not (tmp_path / "reports").exists()


def test_cli_reports_config_errors_and_unknown_only(tmp_path, capsys):
    config = write_config(tmp_path / "sweep.yaml", [{"name": "a"}])
    assert main(["batch", str(config), "--only", "b", "--root", str(tmp_path)]) == 2
    assert "--only 'b' is not a run" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("runs: [unclosed")
    assert main(["batch", str(tmp_path / "broken.yaml")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def test_runs_with_the_same_data_setting_share_one_prepared_dataset(tmp_path):
    from seglib.batch import data_setting

    batch = load_config({"parameters": {"DATA_DIR": "d", "SIZE": 64, "SYNTH_COUNT": 10},
                         "runs": [{"name": "a"}, {"name": "b", "LR": 0.01, "N_EXAMPLES": 1}, {"name": "c", "SIZE": 128}]},
                        tmp_path)
    labels = [data_setting(r)[0] for r in batch.runs]
    assert labels[0] == labels[1] != labels[2]
    assert labels[0].startswith("d-k10-64px-")


@pytest.fixture(scope="module")
def failed_batch(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    config = write_config(root / "tiny.yaml", [{"name": "good"}, {"name": "broken", "BACKBONE": "nosuchnet"},
                                               {"name": "badexport", "FORMATS": "int9"}],
                          DATA_DIR=str(synth_dir))
    lines = []
    index = run_batch(config, root, echo=lines.append)
    return root, config, index, lines


@pytest.mark.slow
def test_a_failing_run_is_marked_and_the_other_finishes(failed_batch):
    root, _, index, lines = failed_batch
    assert index == root / "reports" / "tiny" / "index.html"
    good = json.loads((root / "reports" / "tiny" / "good" / "status.json").read_text())
    broken = json.loads((root / "reports" / "tiny" / "broken" / "status.json").read_text())
    assert good["status"] == "finished"
    assert broken["status"] == "failed" and broken["step"] == "02_train"
    assert "unknown backbone 'nosuchnet'" in broken["error"]
    # one progress line when a run starts and one when it ends
    assert [line.split(":")[0] for line in lines[:6]] == ["[1/3] good"] * 2 + ["[2/3] broken"] * 2 + ["[3/3] badexport"] * 2
    assert "finished in" in lines[1] and "FAILED in 02_train" in lines[3]

    run = root / "artifacts" / "tiny" / "good"
    metrics = json.loads((run / "metrics.json").read_text())
    int8 = json.loads((run / "export.json").read_text())["formats"]["int8"]
    html = index.read_text()
    rows = re.findall(r"<tr>.*?</tr>", html, flags=re.S)
    good_row = next(r for r in rows if ">good<" in r)
    broken_row = next(r for r in rows if ">broken<" in r)
    assert f"{metrics['pixel_accuracy']:.4g}" in good_row and f"{metrics['mean_iou']:.4g}" in good_row
    assert f"{int8['file_bytes'] / 1e6:.4g}" in good_row and 'class="finished">finished<' in good_row
    assert 'href="good/03_evaluate_export.html"' in good_row
    assert re.search(r'href="_data/[^"]+/01_prepare_data.html">data<', good_row)
    assert 'class="failed">failed<' in broken_row and "nosuchnet" in broken_row  # the differing parameter is a column
    assert 'href="broken/02_train.html">failed notebook' in broken_row
    assert "unknown backbone" in html  # the error is on the page
    assert html.count("data:image/png;base64,") == 1  # combined validation curves, embedded
    assert not re.search(r"""(src|href)=["']https?://""", html)
    # each executed notebook is rendered; the run's report holds curves, predictions, metrics, export table
    report = (root / "reports" / "tiny" / "good" / "03_evaluate_export.html").read_text()
    assert report.count("data:image/png;base64,") >= 4 and "int8" in report and "mean_iou" in report
    assert (root / "reports" / "tiny" / "broken" / "02_train.html").exists()
    badexport = json.loads((root / "reports" / "tiny" / "badexport" / "status.json").read_text())
    assert badexport["status"] == "failed" and badexport["step"] == "03_evaluate_export"
    assert "unknown format(s) int9" in badexport["error"]
    assert len(list((root / "data" / "prepared").iterdir())) == 1  # prepared once for both runs


@pytest.mark.slow
def test_index_and_run_report_open_offline_in_chromium(failed_batch, open_in_chromium):
    _, _, index, _ = failed_batch
    open_in_chromium(index, height=1400)
    open_in_chromium(index.parent / "good" / "03_evaluate_export.html")


@pytest.mark.slow
def test_resume_reruns_only_the_failed_run(failed_batch):
    root, config, index, _ = failed_batch
    finished = root / "reports" / "tiny" / "good" / "03_evaluate_export.ipynb"
    trained = root / "reports" / "tiny" / "badexport" / "02_train.ipynb"
    before, trained_before = finished.stat().st_mtime_ns, trained.stat().st_mtime_ns
    fixed = yaml.safe_load(config.read_text())
    fixed["runs"][1]["BACKBONE"] = "mobilenetv2"  # the user fixes the failed runs, then resumes
    fixed["runs"][2]["FORMATS"] = "int8"
    config.write_text(yaml.safe_dump(fixed))
    lines = []
    run_batch(config, root, resume=True, echo=lines.append)
    assert lines[0] == "[1/3] good: finished earlier, skipped (--resume)"
    assert finished.stat().st_mtime_ns == before
    for name in ("broken", "badexport"):
        assert json.loads((root / "reports" / "tiny" / name / "status.json").read_text())["status"] == "finished"
    # badexport's training had finished with the same parameters: kept, not trained again
    assert trained.stat().st_mtime_ns == trained_before
    assert json.loads((root / "reports" / "tiny" / "badexport" / "status.json").read_text())["train_reused"]
    assert index.read_text().count('class="finished">finished<') == 3
