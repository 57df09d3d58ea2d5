"""The journeys as users walk them, with only size, epoch and count parameters shrunk (one export
format of the default three, and no ImageNet download, which this machine cannot make):

- the three notebooks run by hand in order with their defaults, from a copy of ``notebooks/``
  (01 with the README's ``papermill -f params.yaml`` form), ending with the run's report;
- on Colab (a stand-in ``google.colab`` in the kernel, a stand-in ``kagglehub`` that serves the
  synthetic pairs as the Kaggle download), from a blank Drive to a report, through a dropped session
  whose training continues in a new one;
- on a Mac older than macOS 15.2, where ai-edge-litert's binary does not load: export, predict and
  report still work, with ``tf.lite`` as the recorded runtime.
"""
import csv
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from seglib.runs import notebooks
from seglib.runs.notebooks import NOTEBOOKS

REPO = NOTEBOOKS.parent
SHRUNK_PREPARE = {"SIZE": 64, "SYNTH_COUNT": 40, "SAMPLE_PIXELS": 20_000, "EXAMPLES": 2}
SHRUNK_TRAIN = {"EPOCHS": 2, "ENCODER_WEIGHTS": "none"}
SHRUNK_EVALUATE = {"CALIBRATION_IMAGES": 8, "EVAL_IMAGES": 8, "EXAMPLES": 2, "FORMATS": "int8"}


def papermill(notebook: Path, output: Path, cwd: Path, parameters: dict, **popen):
    """``python -m papermill`` as a user runs it (parameters from a YAML file)."""
    params = output.with_suffix(".yaml")
    params.write_text(yaml.safe_dump(parameters))
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(output), "-f", str(params), "--cwd", str(cwd),
           "--no-progress-bar", "-k", notebooks.kernel_name()]
    if popen:
        return subprocess.Popen(cmd, **popen)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return nbformat.read(output, as_version=4)


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells for o in c.get("outputs", []) if o.get("name") != "stderr")


@pytest.mark.slow
def test_the_three_notebooks_chain_with_their_defaults(tmp_path):
    checkout = tmp_path / "seglib"
    shutil.copytree(NOTEBOOKS, checkout / "notebooks")
    here = checkout / "notebooks"
    old = os.umask(0o022)
    try:
        prepared = papermill(here / "01_prepare_data.ipynb", tmp_path / "01.ipynb", here, SHRUNK_PREPARE)
        trained = papermill(here / "02_train.ipynb", tmp_path / "02.ipynb", here, SHRUNK_TRAIN)
        evaluated = papermill(here / "03_evaluate_export.ipynb", tmp_path / "03.ipynb", here, SHRUNK_EVALUATE)
    finally:
        os.umask(old)
    # the defaults chain: 01 writes what 02 reads, 02 what 03 reads, and 03 ends with the report
    assert (checkout / "data" / "synthetic" / "synthetic.json").exists()
    assert (checkout / "data" / "prepared" / "default" / "summary.json").exists()
    run = checkout / "artifacts" / "default"
    assert json.loads((run / "run.json").read_text())["epochs_run"] == 2
    report = checkout / "reports" / "default" / "report.html"
    assert f"report: {report}" in outputs_text(evaluated)
    # readable output: tables, epoch lines, no raw dicts or Keras step lines
    for nb in (prepared, trained, evaluated):
        text = outputs_text(nb)
        assert "{'" not in text and "ms/step" not in text, text[:2000]
    assert sum("text/html" in o.get("data", {}) for c in prepared.cells for o in c.get("outputs", [])) >= 3
    assert re.search(
        r"epoch 2/2: loss [\d.]+, val loss [\d.]+, val pixel accuracy [\d.]+, val mean IoU", outputs_text(trained)
    )
    # the report: every section, the parameters and environment, shareable as it is
    html = report.read_text()
    for section in ("Parameters", "Environment", "Data", "Training", "Metrics on the test split", "Predictions",
                    "Best and worst", "TFLite export"):
        assert f">{section}" in html, section
    assert "training: backbone" in html and "resnet34" in html and "TFLite runtime" in html and "p90 ms" in html
    assert html.count("data:image/png;base64,") >= 6 and not re.search(r"""(src|href)=["']https?://""", html)
    for path in (report, run / "metrics.json", run / "export.json", run / "model_int8.tflite",
                 checkout / "data" / "prepared" / "default" / "summary.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((checkout / "data" / "prepared" / "default").stat().st_mode) == 0o755


# ---------------------------------------------------------------------------------------------
# Colab


STARTUP = """\
import os, sys, types
# Colab's kernel has google.colab imported; mount() records its mount point
_fake = types.ModuleType("google.colab")
def _mount(path, **kw):
    with open(os.environ["FAKE_COLAB_MOUNTS"], "a") as f:
        f.write(path + "\\n")
_fake.drive = types.SimpleNamespace(mount=_mount)
sys.modules["google.colab"] = _fake
"""

KAGGLEHUB = '''\
"""Stand-in kagglehub: "downloads" the synthetic pairs, nested as the real archive is."""
import os
import shutil
from pathlib import Path


def dataset_download(handle, path=None, **kwargs):
    with open(os.environ["FAKE_KAGGLE_CALLS"], "a") as f:
        f.write(handle + "\\n")
    target = Path(os.environ["FAKE_KAGGLE_CACHE"]) / "datasets" / handle / "versions" / "1"
    for nested in ("cityscapes_data", "cityscapes_data/cityscapes_data"):
        for split in ("train", "val"):
            shutil.copytree(Path(os.environ["FAKE_KAGGLE_SOURCE"]) / split, target / nested / split, dirs_exist_ok=True)
    return str(target)
'''


@pytest.fixture
def colab(tmp_path, monkeypatch, synth_dir):
    """A Colab VM: /content (local disk), a Drive folder, the notebooks with their set-up cell
    pointed there, a git repository to clone, google.colab in the kernel, a stand-in kagglehub."""
    from seglib.runs.colab import CELL, cell_with

    vm = tmp_path / "content"
    drive = tmp_path / "drive" / "MyDrive" / "seglib"
    origin = tmp_path / "origin.git"
    shutil.copytree(REPO / "notebooks", origin / "notebooks")
    shutil.copy(REPO / "pyproject.toml", origin / "pyproject.toml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(origin)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "seglib"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    opened = tmp_path / "opened"  # notebooks as Colab opens them (File > Upload), settings filled in
    opened.mkdir()
    cell = cell_with(
        DRIVE_ROOT=drive, SEGLIB_CODE=vm / "seglib-code", SEGLIB_GIT=origin, LOCAL_CACHE=vm / "seglib-cache"
    )
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        next(c for c in nb.cells if c.source == CELL).source = cell
        nbformat.write(nb, opened / path.name)
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text(STARTUP)
    (tmp_path / "stand-ins").mkdir()
    (tmp_path / "stand-ins" / "kagglehub.py").write_text(KAGGLEHUB)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "stand-ins"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_COLAB_MOUNTS", str(tmp_path / "mounts.txt"))
    monkeypatch.setenv("FAKE_KAGGLE_CALLS", str(tmp_path / "kaggle-calls.txt"))
    monkeypatch.setenv("FAKE_KAGGLE_CACHE", str(vm / "kagglehub-cache"))
    monkeypatch.setenv("FAKE_KAGGLE_SOURCE", str(synth_dir))
    vm.mkdir()

    class VM:
        content, notebooks, root = vm, opened, tmp_path

        def run(self, name, parameters, **popen):
            return papermill(opened / f"{name}.ipynb", tmp_path / f"{name}-{time.monotonic_ns()}.ipynb", vm,
                             parameters, **popen)

        def new_session(self):
            """A new Colab VM: local disk empty again, Drive as it was."""
            shutil.rmtree(vm)
            vm.mkdir()

    return VM(), drive


@pytest.mark.slow
def test_colab_from_a_blank_drive_to_a_report_through_a_dropped_session(colab):
    """01 downloads and prepares; 02's session drops in its third epoch (the VM goes away); a new
    session runs 02 again, which continues after the last backed-up epoch, then 03 ends with the
    report. All with the notebooks' defaults (sizes and epochs shrunk; no export: tested elsewhere)."""
    vm, drive = colab
    kaggle = {**SHRUNK_PREPARE, "DATA_DIR": "kaggle:dansbecker/cityscapes-image-pairs"}
    vm.run("01_prepare_data", kaggle)
    assert (vm.content / "seglib-code" / "pyproject.toml").exists()  # cloned to local disk, not into Drive
    assert not (drive / "pyproject.toml").exists()
    cached = drive / "data" / "kaggle" / "dansbecker" / "cityscapes-image-pairs"
    assert (cached / "kaggle.json").exists() and len(list((cached / "train").iterdir())) == 48
    assert (drive / "data" / "prepared" / "default" / "summary.json").exists()

    run = drive / "artifacts" / "default"
    training = {**SHRUNK_TRAIN, "ARCH": "tinyunet", "BACKBONE": "base8", "EPOCHS": 6, "PATIENCE": 6}
    history = run / "history.csv"
    session = vm.run("02_train", training, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (history.exists() and len(history.read_text().splitlines()) >= 3):
        assert session.poll() is None and time.time() < deadline, "training ended before the session dropped"
        time.sleep(0.2)
    assert list((vm.content / "seglib-cache").glob("default-*/train/images.npy"))  # read from the local copy
    _kill_tree(session.pid)  # the VM goes away: papermill and its kernel die at once
    assert (run / "backup").exists() and not (run / "run.json").exists()

    vm.new_session()  # the data stays on Drive (a second prepare uses the download kept there: test_datasets.py)
    vm.run("02_train", training)
    with open(history) as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(6))  # continued after the last backed-up epoch, none repeated
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_run"] == 6 and not (run / "backup").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["prepared_dir"] == str((drive / "data" / "prepared" / "default").resolve())  # Drive is recorded
    assert list((vm.content / "seglib-cache").glob("default-*/train/images.npy"))  # copied again in the new VM
    vm.run("03_evaluate_export", {**SHRUNK_EVALUATE, "FORMATS": ""})
    assert (drive / "reports" / "default" / "report.html").exists()
    assert Path(os.environ["FAKE_KAGGLE_CALLS"]).read_text().splitlines() == ["dansbecker/cityscapes-image-pairs"]
    assert Path(os.environ["FAKE_COLAB_MOUNTS"]).read_text().splitlines() == ["/content/drive"] * 4  # each notebook run


def _kill_tree(pid: int) -> None:
    import psutil

    parent = psutil.Process(pid)
    for child in parent.children(recursive=True) + [parent]:
        child.send_signal(signal.SIGKILL)
    psutil.wait_procs(parent.children(recursive=True) + [parent], timeout=30)


# ---------------------------------------------------------------------------------------------
# A Mac older than macOS 15.2


@pytest.mark.tf_lines
@pytest.mark.slow
def test_without_a_loadable_ai_edge_litert_the_cli_exports_predicts_and_reports_with_tf_lite(trained, tmp_path,
                                                                                           seglib_cli):
    """The export in a process whose ai_edge_litert fails to load as on that Mac; predict and report in this
    process with ai_edge_litert made unimportable (the same ImportError, without two more start-ups)."""
    stub = tmp_path / "stub" / "ai_edge_litert"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "interpreter.py").write_text(  # what importing it does on macOS < 15.2
        'raise ImportError("dlopen(_pywrap_tensorflow_interpreter_wrapper.so): Symbol not found '
        '(built for macOS 15.2 which is newer than running OS)")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("*.tflite", "export.json", "metrics.json",
                                                                         "confusion.npy"))

    def seglib(*args):
        done = subprocess.run([sys.executable, "-m", "seglib", *args], capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = seglib("export", str(run), "--formats", "int8", "--calibration-images", "8")
    assert "TFLite models run with tf.lite (TensorFlow" in out
    exported = json.loads((run / "export.json").read_text())
    int8 = exported["formats"]["int8"]
    assert exported["runtime"].startswith("tf.lite (TensorFlow ") and int8["agreement"] >= 0.97
    assert int8["latency_p10_ms"] <= int8["latency_ms"] <= int8["latency_p90_ms"]
    from seglib.inference.export import TFLiteModel

    pair = sorted((trained / "pairs" / "val").glob("*.jpg"))[0]
    with pytest.MonkeyPatch.context() as patch:  # unimportable in this process too: the Python API falls back
        patch.setitem(sys.modules, "ai_edge_litert", None)
        patch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
        assert TFLiteModel(run / "model_int8.tflite").runtime.startswith("tf.lite")
        done = seglib_cli("predict", run / "model_int8.tflite", pair, tmp_path / "predicted")
        assert done.returncode == 0 and "wrote 2 files (mask and overlay) for 1 image(s)" in done.stdout, done.stderr
        assert (tmp_path / "predicted" / f"{pair.stem}_overlay.png").exists()
        done = seglib_cli("report", run, "--report-dir", tmp_path / "report")
        assert done.returncode == 0, done.stderr
    assert (run / "metrics.json").exists()  # the run had not been evaluated: the report did it
    html = (tmp_path / "report" / "report.html").read_text()
    assert re.search(r"TFLite runtime</th>\s*<td>tf\.lite \(TensorFlow", html)
