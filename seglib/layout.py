"""Every file and folder name seglib reads or writes, in one place.

A prepared dataset (:class:`PreparedDir`), a run (:class:`RunDir`), a batch's report folders
(:class:`RunReportDir`, :class:`BatchDir`) and the data folders seglib makes (synthetic pairs, a
Kaggle download) each carry a marker file, ``.seglib``, saying what wrote them and in which format.
Only folders with the right marker are ever replaced or cleaned, and only the entries seglib
writes in them (``OWNED``, glob patterns relative to the folder): a folder holding anything else is
refused with the names of the strangers, so a user's files are never lost.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MARKER = ".seglib"
LOCK = ".seglib.lock"  # one writer per folder: an OS lock on this file (seglib.fsutil.writer_lock)
FORMAT = 1
SPLITS = ("train", "val", "test")
REPORT = "report.html"
ARTIFACTS = "artifacts"  # the project's folder of runs (git-ignored); a command's default, relative to where it runs
REPORTS = "reports"  # the project's folder of reports and executed notebooks, beside ARTIFACTS
SYNTHETIC = "data/synthetic"  # generated scenes: the demo's and the notebooks' default data
PREPARED = "data/prepared"  # prepared datasets: a batch's (one per data setting) and the notebooks' own
KAGGLE = "data/kaggle"  # kaggle: downloads, made once
DEFAULT = "default"  # the notebooks' prepared dataset and run, by name
TEMP_PATTERNS = (".*.tmp-*", ".*.tmp", ".*.old-*")  # seglib's staged writes (see seglib.fsutil)


def from_notebooks(path: str) -> str:
    """A project folder as the notebooks name it: they run in notebooks/ (papermill --cwd, Jupyter)."""
    return f"../{path}"


@dataclass(frozen=True)
class SplitFiles:
    images: Path
    labels: Path
    files: Path


class Folder:
    """A folder of a known layout: ``KIND`` (its marker's kind) and ``OWNED`` (what seglib writes)."""

    KIND = ""
    OWNED: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.root == other.root

    def __hash__(self) -> int:
        return hash((type(self), self.root))


class PreparedDir(Folder):
    """``palette.json``, ``summary.json`` and per split ``images.npy``, ``labels.npy``, ``files.txt``."""

    KIND = "prepared"
    OWNED = (MARKER, "palette.json", "summary.json", *SPLITS,
             *(f"{s}/{name}" for s in SPLITS for name in ("images.npy", "labels.npy", "files.txt")), *TEMP_PATTERNS)

    @property
    def palette(self) -> Path:
        return self.root / "palette.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def split(self, name: str) -> SplitFiles:
        folder = self.root / name
        return SplitFiles(folder / "images.npy", folder / "labels.npy", folder / "files.txt")


class RunDir(Folder):
    """A trained run: what training writes, then evaluation and export."""

    KIND = "run"
    OWNED = (MARKER, "config.json", "palette.json", "history.csv", "model.keras", "run.json", "metrics.json",
             "confusion.npy", "export.json", "model_*.tflite", "model.onnx", "backup", "backup/*", "tensorboard",
             "tensorboard/*", ".saved_model-*", ".saved_model-*/*", LOCK,
             *TEMP_PATTERNS)
    STALE = (".saved_model-*", *TEMP_PATTERNS)  # temporaries only a live writer uses: a dead one's are removed

    config = property(lambda self: self.root / "config.json")
    palette = property(lambda self: self.root / "palette.json")
    history = property(lambda self: self.root / "history.csv")
    model = property(lambda self: self.root / "model.keras")
    info = property(lambda self: self.root / "run.json", doc="how training ended (run.json)")
    metrics = property(lambda self: self.root / "metrics.json")
    confusion = property(lambda self: self.root / "confusion.npy")
    export = property(lambda self: self.root / "export.json")
    backup = property(lambda self: self.root / "backup")
    tensorboard = property(lambda self: self.root / "tensorboard", doc="TensorBoard's event files (--tensorboard)")

    onnx = property(lambda self: self.root / "model.onnx")

    def tflite(self, fmt: str) -> Path:
        return self.root / f"model_{fmt}.tflite"

    def exported(self, fmt: str) -> Path:
        """The file of an export format (``fp32``, ``fp16``, ``int8``, ``onnx``)."""
        return self.onnx if fmt == "onnx" else self.tflite(fmt)

    def backup_epoch(self, epoch: int) -> BackupEpochDir:
        return BackupEpochDir(self.backup / f"epoch-{epoch:04d}")

    def backup_epochs(self) -> list[BackupEpochDir]:
        """The complete backed-up epochs, oldest first (a folder is complete once its state is in it)."""
        return [BackupEpochDir(p) for p in sorted(self.backup.glob("epoch-*")) if BackupEpochDir(p).state.exists()]


class BackupEpochDir(Folder):
    """``backup/epoch-NNNN/``: what resuming after epoch NNNN needs (see ``seglib.training.train``)."""

    KIND = "backup"
    OWNED = (MARKER, "state.json", "model.weights.h5", *TEMP_PATTERNS)
    state = property(lambda self: self.root / "state.json")
    weights = property(lambda self: self.root / "model.weights.h5")


class RunReportDir(Folder):
    """``reports/<batch>/<run>/``: the run's executed notebooks, report, log and status."""

    KIND = "run-report"
    OWNED = (MARKER, "status.json", "run.log", REPORT, "0*.ipynb", "0*.html", *TEMP_PATTERNS)

    status = property(lambda self: self.root / "status.json")
    log = property(lambda self: self.root / "run.log")
    report = property(lambda self: self.root / REPORT)

    def notebook(self, step: str) -> Path:
        return self.root / f"{step}.ipynb"

    def html(self, step: str) -> Path:
        return self.root / f"{step}.html"


class BatchDir(Folder):
    """``reports/<batch>/``: the comparison page, the config as run, a folder per run and one per
    prepared data setting (``_data/<setting>/``)."""

    KIND = "batch"

    index = property(lambda self: self.root / "index.html")
    config = property(lambda self: self.root / "batch.yaml")

    def run(self, name: str) -> RunReportDir:
        return RunReportDir(self.root / name)

    data_root = property(lambda self: self.root / "_data")

    def data(self, setting: str) -> RunReportDir:
        return RunReportDir(self.data_root / setting)


class SyntheticDir(Folder):
    """Generated pairs in the Kaggle layout, with their true labelIds in ``ids/``."""

    KIND = "synthetic"
    OWNED = (MARKER, "synthetic.json", "train", "val", "ids", "ids/train", "ids/val", "train/*.jpg", "val/*.jpg",
             "ids/*/*.png", *TEMP_PATTERNS)
    info = property(lambda self: self.root / "synthetic.json")


class SyntheticLabelledDir(Folder):
    """Generated scenes as a labelled dataset: images and id masks in folders or the Cityscapes layout."""

    KIND = "synthetic-labelled"
    OWNED = (MARKER, "synthetic.json", "classes.json", "train", "val", "train/*", "val/*", "leftImg8bit",
             "leftImg8bit/*", "gtFine", "gtFine/*", *TEMP_PATTERNS)
    info = property(lambda self: self.root / "synthetic.json")


class KaggleDir(Folder):
    """A Kaggle dataset's ``train/`` and ``val/`` as downloaded."""

    KIND = "kaggle"
    OWNED = (MARKER, "kaggle.json", "train", "val", "train/*", "val/*", *TEMP_PATTERNS)
    info = property(lambda self: self.root / "kaggle.json")


class PredictionsDir(Folder):
    """What ``predict`` wrote into an OUT_DIR: ``<name>_mask.png``, ``<name>_overlay.png``,
    ``<name>_overlay.mp4``, each listed by name in the marker (``files``): only those are replaced."""

    KIND = "predictions"
    OWNED = (MARKER, "*_mask.png", "*_overlay.png", "*_overlay.mp4", *TEMP_PATTERNS)
