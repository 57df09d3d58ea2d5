"""Batches: config checks before anything runs, then a real batch where runs fail, its progress
output and index page, --resume re-running only the failed runs, and a batch interrupted with
Ctrl-C and resumed."""
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from seglib.cli import main
from seglib.runs.batch import run_batch
from seglib.runs.sweep import BatchError, load_config

TINY = {"SIZE": 64, "SAMPLE_PIXELS": 20_000, "EPOCHS": 2, "ENCODER_WEIGHTS": None, "BACKBONE": "mobilenet",
        "FORMATS": "int8", "CALIBRATION_IMAGES": 8, "EVAL_IMAGES": 8, "EXAMPLES": 2}


def write_config(path, runs, **shared):
    path.write_text(yaml.safe_dump({"name": "tiny", "parameters": {**TINY, **shared}, "runs": runs}))
    return path


@pytest.mark.parametrize("runs, shared, message", [
    ([{"name": "a", "LEARNING_RATE": 0.1}], {}, "unknown parameters ['LEARNING_RATE']"),
    ([{"name": "a"}], {"RUN_DIR": "x"}, "chosen by the batch"),
    ([{"name": "a"}], {"REPORT_DIR": "x"}, "chosen by the batch"),
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


def test_a_yaml_alias_bomb_or_a_huge_config_is_refused_at_once(tmp_path):
    import time

    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}" + f", *{chr(97 + i)}" * 8 + "]" for i in range(8)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nruns: [{name: x}]\n")
    assert len(bomb.read_bytes()) < 600
    started = time.perf_counter()
    with pytest.raises(BatchError, match=r"bomb.yaml: not valid YAML: aliases \(\*a\) are not allowed"):
        load_config(bomb, tmp_path)
    assert time.perf_counter() - started < 1
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20) + "\nruns: [{name: x}]\n")
    with pytest.raises(BatchError, match="huge.yaml: .* bytes; a batch config may have at most 1048576"):
        load_config(huge, tmp_path)


def test_cli_reports_config_errors_and_unknown_only(tmp_path, capsys):
    config = write_config(tmp_path / "sweep.yaml", [{"name": "a"}])
    assert main(["batch", str(config), "--only", "b", "--root", str(tmp_path)]) == 2
    assert "--only 'b' is not a run" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("runs: [unclosed")
    assert main(["batch", str(tmp_path / "broken.yaml")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def test_runs_with_the_same_data_setting_share_one_prepared_dataset(tmp_path):
    from seglib.runs.sweep import data_setting

    batch = load_config(
        {
            "parameters": {"DATA_DIR": "d", "SIZE": 64, "SYNTH_COUNT": 10},
            "runs": [{"name": "a"}, {"name": "b", "LR": 0.01, "EXAMPLES": 1}, {"name": "c", "SIZE": 128}],
        },
        tmp_path,
    )
    labels = [data_setting(r)[0] for r in batch.runs]
    assert labels[0] == labels[1] != labels[2]
    assert labels[0].startswith("d-k10-64px-")


@pytest.fixture(scope="module")
def failed_batch(synth_dir, tmp_path_factory):
    """The demo's batch (``make demo``: seglib.runs.demo) at a tiny size on the shared synthetic pairs:
    its lighter run as ``good``, and two runs that fail, one in training and one in export."""
    from seglib.runs.demo import DEMO_RUNS, demo_config

    root = tmp_path_factory.mktemp("batch")
    demo = demo_config(root, data_dir=synth_dir)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "parameters": {**demo["parameters"], **TINY},
        "runs": [{**DEMO_RUNS[1], "name": "good"}, {"name": "broken", "BACKBONE": "nosuchnet"},
                 {"name": "badexport", "FORMATS": "int9", "ARCH": "tinyunet", "BACKBONE": "base8"}]}))
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
    # per run: a start line, its steps, one line per epoch with the time left, an end line
    good_lines = [line for line in lines if line.startswith("[1/3] good: ")]
    assert good_lines[0].startswith("[1/3] good: running (BACKBONE=mobilenetv2)") and "run.log" in good_lines[0]
    assert [line for line in good_lines if re.search(r": (01_prepare_data|02_train|03_evaluate_export)", line)]
    epochs = [line for line in good_lines if ": epoch " in line]
    assert [e.split(": epoch ")[1].split(":")[0] for e in epochs] == ["1/2", "2/2"]
    assert "val mean IoU" in epochs[0] and "ETA ≤" in epochs[0]
    assert "finished in" in good_lines[-1]
    assert any(line.startswith("[2/3] broken: FAILED in 02_train") for line in lines)
    assert any(line.startswith("[3/3] badexport: running") and "batch ETA about" in line for line in lines)
    assert not [line for line in lines if "IPKernelApp" in line or "cuInit" in line or "tensorflow" in line.lower()]
    log = (root / "reports" / "tiny" / "good" / "run.log").read_text()
    assert "===== 02_train =====" in log and "epoch 2/2" in log  # the kernels' output is kept there

    run = root / "artifacts" / "tiny" / "good"
    metrics = json.loads((run / "metrics.json").read_text())
    int8 = json.loads((run / "export.json").read_text())["formats"]["int8"]
    html = index.read_text()
    runs_table = re.search(r'<table class="runs sortable">.*?</table>', html, flags=re.S).group(0)
    rows = re.findall(r"<tr[^>]*>.*?</tr>", runs_table, flags=re.S)
    good_row = next(r for r in rows if ">good" in r)
    broken_row = next(r for r in rows if ">broken<" in r)
    assert f"{metrics['pixel_accuracy']:.4g}" in good_row and f"{metrics['mean_iou']:.4g}" in good_row
    assert f"{int8['file_bytes'] / 1e6:.4g}" in good_row and 'class="finished">finished<' in good_row
    parameters = json.loads((run / "run.json").read_text())["parameters"]
    assert f'<td data-sort="{parameters}">{parameters:,}</td>' in good_row and parameters > 1000  # e.g. "8,048,758"
    assert 'href="good/report.html">report<' in good_row and 'href="good/run.log">log<' in good_row
    assert 'href="good/02_train.html">training<' in good_row
    assert re.search(r'href="_data/[^"]+/01_prepare_data.html">data<', good_row)
    assert 'class="best"' in good_row and "★ best" in good_row  # the only finished run
    assert 'class="failed">failed<' in broken_row and "nosuchnet" in broken_row  # the differing parameter is a column
    assert 'href="broken/02_train.html">failed notebook' in broken_row
    assert 'table class="runs sortable"' in html and "<script>" in html and "data-sort=" in html
    # every run's full parameters, defaults included (PATIENCE and MONITOR are never set in the config)
    params = re.search(r'<table class="params">.*?</table>', html, flags=re.S).group(0)
    assert re.search(r"<th>PATIENCE</th><td>5</td><td>5</td><td>5</td>", params)
    assert re.search(r'<th>MONITOR</th>(<td>&quot;val_loss&quot;</td>){3}', params)
    assert re.search(r'<tr class="differs"><th>BACKBONE</th>', params)
    assert "unknown backbone" in html  # the error is on the page
    assert html.count("data:image/png;base64,") == 2  # test-score bars and training/validation curves, embedded
    assert "<h2>Test scores</h2>" in html and "mean acc" in html and "model params" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)
    # each executed notebook is rendered; the run's report holds curves, predictions, metrics, export table
    report = (root / "reports" / "tiny" / "good" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 6 and "int8" in report and "mean_iou" in report
    executed = (root / "reports" / "tiny" / "good" / "03_evaluate_export.html").read_text()
    assert executed.count("data:image/png;base64,") >= 4
    assert (root / "reports" / "tiny" / "broken" / "02_train.html").exists()
    badexport = json.loads((root / "reports" / "tiny" / "badexport" / "status.json").read_text())
    assert badexport["status"] == "failed" and badexport["step"] == "03_evaluate_export"
    assert "unknown format(s) int9" in badexport["error"]
    assert len(list((root / "data" / "prepared").iterdir())) == 1  # prepared once for both runs


@pytest.mark.slow
def test_the_demos_run_learns_at_a_tiny_size(failed_batch):
    """The demo's own parameters (``good``), shrunk: its loss falls and its test accuracy beats predicting
    the majority class everywhere. The demo's accuracy at its real size: bench/demo_accuracy.py."""
    import numpy as np

    from seglib.data.splits import open_split

    root = failed_batch[0]
    status = json.loads((root / "reports" / "tiny" / "good" / "status.json").read_text())
    assert status["effective_parameters"]["LR"] == 1e-3 and status["effective_parameters"]["BATCH_SIZE"] == 8
    with open(root / "artifacts" / "tiny" / "good" / "history.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses[-1] < losses[0]
    labels = np.asarray(open_split(status["prepared_dir"], "test").labels)
    majority = np.bincount(labels.ravel()).max() / labels.size
    metrics = json.loads((root / "artifacts" / "tiny" / "good" / "metrics.json").read_text())
    assert metrics["pixel_accuracy"] > majority + 0.05, (metrics["pixel_accuracy"], majority)


@pytest.mark.slow
def test_index_and_run_report_open_offline_in_chromium(failed_batch, open_in_chromium):
    _, _, index, _ = failed_batch
    open_in_chromium(index, height=1400)
    open_in_chromium(index.parent / "good" / "report.html", height=6000)


@pytest.mark.slow
def test_a_batch_never_reruns_finished_runs_or_touches_a_users_files_unasked(failed_batch):
    root, config, _, _ = failed_batch
    good = root / "reports" / "tiny" / "good"
    before = {p.name: p.stat().st_mtime_ns for p in good.iterdir()}
    with pytest.raises(BatchError, match="runs good finished earlier: --resume keeps them .*--overwrite"):
        run_batch(config, root)
    assert main(["batch", str(config), "--root", str(root)]) == 2
    (root / "reports" / "tiny" / "broken" / "precious.txt").write_text("mine")
    try:
        with pytest.raises(BatchError, match=r"broken.* holds files seglib did not write \(precious.txt\)"):
            run_batch(config, root, resume=True)
    finally:
        (root / "reports" / "tiny" / "broken" / "precious.txt").unlink()
    broken_run = root / "artifacts" / "tiny" / "broken"  # training failed before it wrote anything there
    broken_run.mkdir(parents=True, exist_ok=True)
    (broken_run / "my_model.h5").write_text("mine")
    try:
        with pytest.raises(BatchError, match="broken.* holds files and is not a seglib run"):
            run_batch(config, root, resume=True)
        assert (broken_run / "my_model.h5").read_text() == "mine"
    finally:
        (broken_run / "my_model.h5").unlink()
    assert {p.name: p.stat().st_mtime_ns for p in good.iterdir()} == before  # nothing ran, nothing changed


@pytest.mark.slow
def test_resume_reruns_only_the_failed_runs_and_a_batch_interrupted_with_ctrl_c_resumes(failed_batch):
    """The user fixes the failed runs and resumes from a terminal; Ctrl-C in the fixed run's training
    marks it interrupted; a second --resume continues its training after the last finished epoch."""
    root, config, index, _ = failed_batch
    finished = root / "reports" / "tiny" / "good" / "03_evaluate_export.ipynb"
    trained = root / "reports" / "tiny" / "badexport" / "02_train.ipynb"
    before, trained_before = finished.stat().st_mtime_ns, trained.stat().st_mtime_ns
    fixed = yaml.safe_load(config.read_text())
    fixed["runs"][1].update(ARCH="tinyunet", BACKBONE="base8", EPOCHS=6, PATIENCE=6, FORMATS="")
    fixed["runs"][2]["FORMATS"] = "int8"
    config.write_text(yaml.safe_dump(fixed))
    cmd = [sys.executable, "-m", "seglib", "batch", str(config), "--root", str(root), "--resume"]
    # as from a terminal: SIGINT not ignored (a shell's background job, as CI may be, inherits it ignored)
    batch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in batch.stdout:  # Ctrl-C in a terminal: SIGINT to the foreground process group
        seen.append(line)
        if ": epoch 2/6:" in line:
            os.killpg(batch.pid, signal.SIGINT)
            break
    out, err = batch.communicate(timeout=300)
    assert batch.returncode == 130, "".join(seen) + out + err
    assert seen[0].strip() == "[1/3] good: finished earlier, skipped (--resume)"
    assert "interrupted; run the batch again with --resume" in out and "Traceback" not in err
    status_file = root / "reports" / "tiny" / "broken" / "status.json"
    assert json.loads(status_file.read_text())["status"] == "interrupted"
    html = index.read_text()
    assert 'class="interrupted">interrupted<' in html and "1 interrupted" in html
    run_dir = root / "artifacts" / "tiny" / "broken"
    assert (run_dir / "backup").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert finished.stat().st_mtime_ns == before
    for name in ("broken", "badexport"):
        assert json.loads((root / "reports" / "tiny" / name / "status.json").read_text())["status"] == "finished"
    with open(run_dir / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(6))  # continued after the last finished epoch, nothing repeated
    resumed_epochs = [line for line in done.stdout.splitlines() if "broken: epoch " in line]
    assert resumed_epochs and not resumed_epochs[0].split(": epoch ")[1].startswith("1/")
    # badexport's training had finished with the same parameters: kept, not trained again
    assert trained.stat().st_mtime_ns == trained_before
    assert json.loads((root / "reports" / "tiny" / "badexport" / "status.json").read_text())["train_reused"]
    assert index.read_text().count('class="finished">finished<') == 3


def test_a_run_left_running_by_a_dead_batch_process_reads_as_interrupted(tmp_path):
    from seglib.runs.index import write_index
    from seglib.runs.sweep import read_status

    batch = load_config({"parameters": {"DATA_DIR": str(tmp_path)}, "runs": [{"name": "a"}]}, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    folder = batch.report_dir / "a"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"status": "running", "pid": gone.pid,
                                                    "host": socket.gethostname()}))
    assert read_status(batch, "a")["status"] == "interrupted"
    assert 'class="interrupted">interrupted<' in write_index(batch).read_text()
    (folder / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                    "host": socket.gethostname()}))
    assert read_status(batch, "a")["status"] == "running"  # its process is alive
