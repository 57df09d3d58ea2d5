"""Training: Adam + sparse categorical cross-entropy (or a class-imbalance loss), early stopping
with the best weights restored, an atomic checkpoint of the best model, and resume.

A run lives in RUN_DIR: ``config.json``, ``palette.json``, ``history.csv``, ``model.keras`` (best
weights), ``run.json`` (stop reason, timings, device) and ``backup/`` while it is unfinished.
Started again with the same RUN_DIR, a killed run continues after its last finished epoch: after
every epoch the weights with the optimizer's state, the epoch and the callbacks' state are written
to a new folder in ``backup/`` that appears complete or not at all, so a kill or a full disk at
any moment leaves the previous epoch's backup to resume from.
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

    def __post_init__(self):
        if isinstance(self.encoder_weights, str) and self.encoder_weights.strip().lower() in ("", "none", "null"):
            self.encoder_weights = None  # "none" from a command line or a Colab form: random init


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
    Adam); resuming uses the separate backup (:func:`_epoch_backup`).
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


BACKUP = "backup"
_GENERATION = "epoch-{:04d}"  # one folder per backed-up epoch; the newest complete one is kept


def latest_backup(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest complete backup of an unfinished run, ``(folder, state)``, or None."""
    done = sorted(p for p in (Path(run_dir) / BACKUP).glob("epoch-*") if (p / "state.json").exists())
    return (done[-1], json.loads((done[-1] / "state.json").read_text())) if done else None


def _epoch_backup(folder: Path, checkpoint, early, restored: dict | None):
    """After every epoch, back up what a restart needs: the weights with the optimizer's state
    (``save_weights``), the epoch, and the state of the best-model checkpoint and EarlyStopping
    (otherwise the first resumed epoch would overwrite a better ``model.keras`` and patience would
    start again). Each backup is built in a temp folder and renamed into place, then the older
    ones are removed. Placed after the checkpoint and EarlyStopping; ``restored`` (the state of
    the backup training starts from) is put back into them when training begins."""
    import keras

    from seglib.fsutil import staged_dir

    class EpochBackup(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if restored:
                checkpoint.best, checkpoint.best_epoch = restored["checkpoint_best"], restored["checkpoint_best_epoch"]
                early.best, early.wait = restored["early_best"], restored["early_wait"]
                early.best_epoch = restored["early_best_epoch"]

        def on_epoch_end(self, epoch, logs=None):
            final = folder / _GENERATION.format(epoch + 1)
            try:
                with staged_dir(final, "state.json") as tmp:
                    self.model.save_weights(tmp / "model.weights.h5")
                    atomic_write_json(tmp / "state.json", {
                        "epoch": epoch + 1,
                        "checkpoint_best": float(checkpoint.best), "checkpoint_best_epoch": checkpoint.best_epoch,
                        "early_best": None if early.best is None else float(early.best),
                        "early_wait": int(early.wait), "early_best_epoch": int(early.best_epoch)})
            except OSError as exc:
                raise OSError(f"{final}: could not write the training backup ({exc.strerror or exc}); "
                              f"free some space and run again: training continues after epoch {epoch}") from exc
            for old in folder.glob("epoch-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)

    return EpochBackup()


def format_seconds(seconds: float) -> str:
    """``0.4s``, ``37s``, ``2m05s``."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, left: float) -> str:
    """``epoch 3/6: loss 0.4123, val loss 0.3987, val pixel accuracy 0.9121, val mean IoU 0.5531 · 12s · ETA ≤ 37s``
    (an upper bound: early stopping may end the run sooner)."""
    shown = [("loss", "loss"), ("val_loss", "val loss"), ("val_pixel_accuracy", "val pixel accuracy"),
             ("val_mean_iou", "val mean IoU")]
    values = ", ".join(f"{label} {logs[key]:.4f}" for key, label in shown if key in logs)
    eta = f" · ETA ≤ {format_seconds(left)}" if epoch < epochs else ""
    return f"epoch {epoch}/{epochs}: {values} · {format_seconds(seconds)}{eta}"


def _epoch_timer(epochs: int, log=None):
    """Times every epoch into ``logs["seconds"]`` and, with ``log``, reports one :func:`epoch_line`
    per finished epoch (what notebooks and batches show instead of Keras' step lines)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            took = time.perf_counter() - self.start
            self.seconds.append(took)
            if logs is not None:
                logs["seconds"] = round(took, 2)
            if log is not None:
                typical = float(np.median(self.seconds[1:] or self.seconds))  # the first epoch also compiles
                left = (epochs - epoch - 1) * typical
                log(epoch_line(epoch + 1, epochs, logs or {}, took, left))

    return EpochTimer()


def train(config: TrainConfig, verbose: int | str = "auto", log=None) -> Run:
    """Train a U-Net on a prepared dataset into ``config.run_dir``; see the module docstring.

    ``verbose`` is Keras' (progress bar, or 0); ``log`` (e.g. ``print``) gets one line per epoch."""
    palette = validate(config)
    import keras
    import tensorflow as tf

    from seglib.data import make_dataset
    from seglib.model import build_unet, detect_device

    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    backup = latest_backup(run_dir)
    initial_epoch = backup[1]["epoch"] if backup else 0
    _keep_history(run_dir / "history.csv", initial_epoch)  # a new run starts a new history
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
    if backup:  # resume: the weights and the optimizer's state of the last backed-up epoch
        model.optimizer.build(model.trainable_variables)
        model.load_weights(backup[0] / "model.weights.h5")
    checkpoint = _atomic_checkpoint(run_dir / "model.keras", config.monitor)
    mode = "max" if ("accuracy" in config.monitor or "iou" in config.monitor) else "min"
    early = keras.callbacks.EarlyStopping(config.monitor, patience=config.patience, mode=mode,
                                          restore_best_weights=True)
    timer = _epoch_timer(config.epochs, log)
    callbacks = [
        timer,  # first: puts the epoch's seconds into the logs the others see (history.csv keeps them)
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        early,
        _epoch_backup(run_dir / BACKUP, checkpoint, early, backup[1] if backup else None),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if config.reduce_lr:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.5,
                                                           patience=max(1, config.patience // 2)))
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                        callbacks=callbacks, verbose=verbose, shuffle=False)  # the dataset shuffles itself
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
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)
    run_info = {
        "stop_reason": stop,
        "epochs_run": epochs_run,
        "best_epoch": checkpoint.best_epoch or None,
        "best_" + config.monitor: None if not math.isfinite(checkpoint.best) else float(checkpoint.best),
        "device": device["kind"],
        "seconds_total": round(time.perf_counter() - started, 2),
        "seconds_per_epoch": [round(t, 2) for t in timer.seconds],
        "train_images_per_second": round(n_train / float(np.median(timer.seconds)), 2) if timer.seconds else None,
    }
    atomic_write_json(run_dir / "run.json", run_info)
    return Run(run_dir, config, _read_history(run_dir / "history.csv"), stop, epochs_run,
               checkpoint.best_epoch)


def _keep_history(path: Path, epochs: int) -> None:
    """Keep the rows of the first ``epochs`` epochs of history.csv (all of a resumed run's backed-up
    epochs, none for a new run): an epoch logged after its backup was written is run again."""
    import csv
    import io

    from seglib.fsutil import atomic_write_text

    if not path.exists():
        return
    if epochs == 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs]
    if len(kept) != len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        atomic_write_text(path, text.getvalue())


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
