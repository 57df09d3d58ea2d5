"""Shared fixtures: small synthetic datasets (every run) and the real shared sample (when present)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "cityscapes-pairs-sample"


# The modules that take longest, first (longest-processing-time order of one make test's module times
# under three workers: 210, 206, 206, 145, 144, 124, 119, 66, 50, 33 s...): pytest-xdist hands each worker
# whole modules (make test: --dist loadscope --no-loadscope-reorder) as it frees up, and a long module
# handed out last runs on alone while the other workers idle. The session's trained and exported runs
# are built by whichever module asks first (``once_per_session``).
SLOWEST_FIRST = ("test_segformer.py", "test_batch.py", "test_journeys.py", "test_distribute.py", "test_spread.py",
                 "test_deeplab.py", "test_labelled.py", "test_train.py", "test_serve.py", "test_export.py",
                 "test_prepare.py", "test_synthetic.py", "test_classmap.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order kept


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """60 synthetic 256-px pairs in the Kaggle layout (48 train/, 12 val/), with ids/."""
    from seglib.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, count=60, seed=1, size=256, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory) -> Path:
    from seglib.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(synth_dir, out, seed=0, size=128, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    if not (SHARED_SAMPLE / "train").is_dir():
        pytest.skip(f"real Cityscapes sample not present at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


def once_per_session(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """A folder ``build(folder)`` fills, built once for the whole session: under pytest-xdist
    (``make test`` runs three workers) the first worker to ask builds it while the others wait, then
    all read the same folder. Tests treat it as read-only."""
    if worker_id == "master":  # no xdist
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the one base folder of every worker of this session
    folder, built = shared / name, shared / f"{name}.built"
    with FileLock(str(shared / f"{name}.lock")):
        if not built.exists():
            if folder.exists():  # a worker that failed building it
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id) -> Path:
    """A small model trained on synthetic data: ROOT/pairs, ROOT/prepared (64 px), ROOT/run. Read-only:
    tests that write into a run copy it (or use ``exported_run``). A tinyunet: the tests that read it test
    evaluation, export, predict and serve, not an architecture (each family is trained, exported and
    served in test_labelled, test_deeplab and test_segformer)."""
    from seglib.data.prepare import prepare
    from seglib.data.synthetic import generate
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    def build(root: Path) -> None:
        generate(root / "pairs", count=120, seed=2, size=128, progress=False)
        prepare(root / "pairs", root / "prepared", size=64, progress=False)
        train(TrainConfig(str(root / "prepared"), str(root / "run"), arch="tinyunet", backbone="base8",
                          epochs=8, batch_size=8, encoder_weights=None, patience=8), verbose=0)

    return once_per_session(tmp_path_factory, worker_id, "trained", build)


@pytest.fixture(scope="session")
def exported_run(trained, tmp_path_factory, worker_id) -> Path:
    """A copy of the trained run, evaluated, with every export format (TFLite fp32, fp16, int8 and ONNX)."""
    from seglib.inference.evaluate import evaluate
    from seglib.inference.export import export_run

    def build(folder: Path) -> None:
        run = folder / "run"
        shutil.copytree(trained / "run", run)
        evaluate(run, trained / "prepared", "test")
        export_run(run, formats=["fp32", "fp16", "int8", "onnx"], calibration_images=32, eval_images=16,
                   latency_repeats=5, prepared_dir=trained / "prepared")

    return once_per_session(tmp_path_factory, worker_id, "exported", build) / "run"


@pytest.fixture
def interrupted_run():
    """``run(config, at="epoch", **kwargs)``: ``train(config, **kwargs)`` stopped as a Ctrl-C would stop it,
    after its first epoch's backup, or with ``at="start"`` as training starts (the model built and started,
    the run's config written, no step traced: what a test of the start needs, at a fraction of the cost)."""
    import keras

    from seglib.training.train import train

    class Stop(keras.callbacks.Callback):
        def __init__(self, at: str):
            super().__init__()
            self.at = at

        def on_train_begin(self, logs=None):
            if self.at == "start":
                raise KeyboardInterrupt

        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    def run(config, at: str = "epoch", **kwargs) -> None:
        with pytest.raises(KeyboardInterrupt):
            train(config, verbose=0, callbacks=[Stop(at)], **kwargs)

    return run


@pytest.fixture
def seglib_cli(capsys):
    """``run(*args) -> CompletedProcess``: the ``seglib`` command line run in this test process, which
    has TensorFlow imported already (a ``python -m seglib`` process pays about 7 s for that). An
    unexpected exception is ``main``'s one line and exit status 1, as in a process. Tests of what a
    process prints at start-up, of signals or of a stand-in package start a process instead."""
    from seglib.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["seglib", *map(str, args)], status, out, err)

    return run


@pytest.fixture
def declared_png():
    """``make(path, width, height)``: a tiny valid PNG whose header declares a 16-bit RGBA image of
    that size (a decompression bomb when large)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def make(path: Path, width: int, height: int) -> Path:
        header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                         + chunk(b"IEND", b""))
        return path

    return make


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Debian's chromium, installed here if missing (needs root and the package mirror; not with
    SEGLIB_NO_BROWSER_INSTALL=1). One xdist worker installs it while the others wait (apt's lock)."""
    from filelock import FileLock

    may_install = os.environ.get("SEGLIB_NO_BROWSER_INSTALL", "") in ("", "0")
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "chromium.lock")):
        path = shutil.which("chromium")
        if path is None and may_install and os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, env=env, timeout=900)
            path = shutil.which("chromium")
    if path is None:
        reason = "it could not be installed here (needs root and apt)" if may_install else \
            "SEGLIB_NO_BROWSER_INSTALL is set"
        pytest.skip(f"chromium is not installed and {reason}")
    return path


@pytest.fixture
def open_in_chromium(chromium, tmp_path):
    """Open a local HTML file in headless Chromium with the network closed; assert that the
    screenshot is not blank and that no request failed. Returns the screenshot path."""
    import cv2

    def open_page(html_path: Path, height: int = 2400) -> Path:
        shot = tmp_path / f"{html_path.stem}.png"
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                               f"--screenshot={shot}", f"--window-size=1280,{height}", html_path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
        assert shot.exists(), done.stderr[-2000:]
        image = cv2.imread(str(shot))
        assert image.std() > 10 and (image < 200).mean() > 0.01, f"{html_path}: blank screenshot"
        assert "net::ERR_" not in done.stderr, f"{html_path}: a request failed"
        return shot

    return open_page
