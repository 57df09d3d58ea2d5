"""Training: Adam + sparse categorical cross-entropy (or a class-imbalance loss), early stopping
with the best weights restored, an atomic checkpoint of the best model, and resume.

A run lives in RUN_DIR: ``config.json``, ``palette.json``, ``history.csv``, ``model.keras`` (best
weights), ``run.json`` (stop reason, timings, device) and ``backup/`` while it is unfinished.
Started again with the same RUN_DIR, a killed run continues after its last finished epoch
(Keras ``BackupAndRestore``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seglib import __version__
from seglib.fsutil import atomic_write_json
from seglib.labels import Palette

LOSSES = ("ce", "weighted_ce", "dice", "ce_dice")
MONITORS = ("val_loss", "val_pixel_accuracy", "val_mean_iou")


@dataclass
class TrainConfig:
    prepared_dir: str
    run_dir: str
    backbone: str = "resnet34"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 5
    monitor: str = "val_loss"
    encoder_weights: str | None = "imagenet"
    augment: bool = False
    loss: str = "ce"
    seed: int = 0
    reduce_lr: bool = False
    jit_compile: bool = False


@dataclass
class Run:
    run_dir: Path
    config: TrainConfig
    history: list[dict]
    stop_reason: str
    epochs_run: int
    best_epoch: int

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"


def validate(config: TrainConfig) -> Palette:
    """Check everything that can be checked before any training; returns the palette."""
    from seglib.model import available_backbones

    prepared = Path(config.prepared_dir)
    if not (prepared / "palette.json").exists() or not (prepared / "train" / "labels.npy").exists():
        raise FileNotFoundError(f"{prepared}: not a prepared dataset (run `python -m seglib prepare` first)")
    if config.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {config.batch_size}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if not config.lr > 0:
        raise ValueError(f"learning rate must be positive, got {config.lr}")
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if config.monitor not in MONITORS:
        raise ValueError(f"unknown monitor {config.monitor!r}; choose one of {', '.join(MONITORS)}")
    if config.backbone not in available_backbones():
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of: {', '.join(available_backbones())}")
    palette = Palette.load(prepared / "palette.json")
    labels = np.load(prepared / "train" / "labels.npy", mmap_mode="r")
    if labels.size and int(labels[: min(len(labels), 16)].max()) >= palette.k:
        raise ValueError(f"{prepared}: labels exceed the palette's K={palette.k}")
    run_palette = Path(config.run_dir) / "palette.json"
    if run_palette.exists():
        previous = Palette.load(run_palette)
        if previous.k != palette.k:
            raise ValueError(f"{config.run_dir} holds a run with K={previous.k}, the data has K={palette.k}: "
                             "use a new RUN_DIR")
    size = np.load(prepared / "train" / "images.npy", mmap_mode="r").shape[1]
    if size % 32:
        raise ValueError(f"{prepared}: image size {size} is not a multiple of 32 (prepare with --size 64/128/256)")
    return palette


def class_weights(shares, floor: float = 1e-4) -> np.ndarray:
    """Inverse square root of the class pixel shares, normalised to a pixel-weighted mean of 1."""
    shares = np.maximum(np.asarray(shares, np.float64), floor)
    weights = 1.0 / np.sqrt(shares)
    return (weights / (weights * shares).sum()).astype(np.float32)


def make_loss(name: str, num_classes: int, weights=None):
    import keras
    from keras import ops

    ce = keras.losses.SparseCategoricalCrossentropy()

    def soft_dice(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(y_true, "int32"), num_classes)
        axes = (0, 1, 2)
        inter = ops.sum(onehot * y_pred, axis=axes)
        total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
        return 1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0))

    def weighted_ce(y_true, y_pred):
        pixel_weights = ops.take(ops.convert_to_tensor(weights), ops.cast(y_true, "int32"))
        return ce(y_true, y_pred, sample_weight=pixel_weights)

    if name == "ce":
        return ce
    if name == "weighted_ce":
        return weighted_ce
    if name == "dice":
        return soft_dice
    return lambda y_true, y_pred: ce(y_true, y_pred) + soft_dice(y_true, y_pred)


def _atomic_checkpoint(path: Path, monitor: str):
    """Save the model when ``monitor`` improves: to a temp file, then renamed into place.

    The saved copy is uncompiled, so it holds no optimizer state (a third of the size with
    Adam); resuming uses the separate BackupAndRestore checkpoint.
    """
    import keras

    mode_max = "accuracy" in monitor or "iou" in monitor

    class AtomicCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = -math.inf if mode_max else math.inf
            self.best_epoch = 0

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(value):
                return
            if (value > self.best) if mode_max else (value < self.best):
                self.best, self.best_epoch = value, epoch + 1
                tmp = path.with_name(f".{path.name}.tmp.keras")
                # the same layers in an uncompiled Model: saved without optimizer state
                keras.Model(self.model.inputs, self.model.outputs, name=self.model.name).save(tmp)
                os.replace(tmp, path)

    return AtomicCheckpoint()


def _resume_state(path: Path, checkpoint, early):
    """Carry the best-model checkpoint's and EarlyStopping's state across a restart.

    BackupAndRestore restores weights, optimizer and epoch, but callbacks start afresh: the
    first resumed epoch would overwrite ``model.keras`` even when it is worse than the best
    before the interruption, and patience would start again. This callback (placed after both)
    writes their state next to the backup after every epoch and restores it when training
    starts again.
    """
    import keras

    class ResumeState(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if path.exists():
                state = json.loads(path.read_text())
                checkpoint.best, checkpoint.best_epoch = state["checkpoint_best"], state["checkpoint_best_epoch"]
                early.best, early.wait = state["early_best"], state["early_wait"]
                early.best_epoch = state["early_best_epoch"]

        def on_epoch_end(self, epoch, logs=None):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {
                "checkpoint_best": float(checkpoint.best), "checkpoint_best_epoch": checkpoint.best_epoch,
                "early_best": None if early.best is None else float(early.best), "early_wait": int(early.wait),
                "early_best_epoch": int(early.best_epoch)})

    return ResumeState()


def train(config: TrainConfig, verbose: int | str = "auto") -> Run:
    """Train a U-Net on a prepared dataset into ``config.run_dir``; see the module docstring."""
    palette = validate(config)
    import keras
    import tensorflow as tf

    from seglib.data import make_dataset
    from seglib.model import build_unet, detect_device

    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "backup").exists():  # a new run, not a resume: start a new history
        (run_dir / "history.csv").unlink(missing_ok=True)
    device = detect_device()
    if device["kind"] == "cuda":
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)
    summary = json.loads((Path(config.prepared_dir) / "summary.json").read_text())
    train_ds = make_dataset(config.prepared_dir, "train", config.batch_size, shuffle=True, seed=config.seed,
                            augment=config.augment)
    val_ds = make_dataset(config.prepared_dir, "val", config.batch_size)
    size = summary["parameters"]["size"]
    n_train = summary["counts"]["train"]

    config_record = {
        **asdict(config),
        "prepared_dir": str(Path(config.prepared_dir).resolve()),
        "run_dir": str(run_dir.resolve()),
        "num_classes": palette.k,
        "input_size": size,
        "input": "RGB float in [0, 255]; the model's 'preprocess' layer applies the backbone's preprocessing",
        "versions": {"seglib": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
        "device": device,
        "mixed_precision": device["kind"] == "cuda",
    }
    atomic_write_json(run_dir / "config.json", config_record)
    palette.save(run_dir / "palette.json")

    model = build_unet(config.backbone, palette.k, size, config.encoder_weights)
    weights = class_weights(summary["class_shares"]["train"]) if config.loss == "weighted_ce" else None
    model.compile(
        optimizer=keras.optimizers.Adam(config.lr),
        loss=make_loss(config.loss, palette.k, weights),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
                 keras.metrics.MeanIoU(palette.k, name="mean_iou", sparse_y_pred=False)],
        jit_compile=config.jit_compile,
    )
    checkpoint = _atomic_checkpoint(run_dir / "model.keras", config.monitor)
    mode = "max" if ("accuracy" in config.monitor or "iou" in config.monitor) else "min"
    early = keras.callbacks.EarlyStopping(config.monitor, patience=config.patience, mode=mode,
                                          restore_best_weights=True)
    epoch_times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        early,
        _resume_state(run_dir / "backup" / "callbacks.json", checkpoint, early),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        Timer(),
    ]
    if config.reduce_lr:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.5,
                                                           patience=max(1, config.patience // 2)))
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                        verbose=verbose, shuffle=False)  # the dataset shuffles itself
    losses = history.history.get("loss", [])
    epochs_run = len(_read_history(run_dir / "history.csv"))
    if losses and not all(math.isfinite(v) for v in losses):
        stop = f"nan: loss became NaN at epoch {epochs_run}"
    elif early.stopped_epoch > 0:
        stop = f"early stop at epoch {early.stopped_epoch + 1}"
    else:
        stop = "finished"
    if not (run_dir / "model.keras").exists():
        stop += " (no finite epoch: no model saved)"
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    run_info = {
        "stop_reason": stop,
        "epochs_run": epochs_run,
        "best_epoch": checkpoint.best_epoch or None,
        "best_" + config.monitor: None if not math.isfinite(checkpoint.best) else float(checkpoint.best),
        "device": device["kind"],
        "seconds_total": round(time.perf_counter() - started, 2),
        "seconds_per_epoch": [round(t, 2) for t in epoch_times],
        "train_images_per_second": round(n_train / float(np.median(epoch_times)), 2) if epoch_times else None,
    }
    atomic_write_json(run_dir / "run.json", run_info)
    return Run(run_dir, config, _read_history(run_dir / "history.csv"), stop, epochs_run,
               checkpoint.best_epoch)


def _read_history(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_model(run_dir: str | os.PathLike):
    """The best model of a run (uncompiled)."""
    from seglib.model import load_keras_model

    return load_keras_model(Path(run_dir) / "model.keras")
