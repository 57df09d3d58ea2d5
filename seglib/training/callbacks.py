"""seglib's Keras callbacks: the learning-rate schedule, the atomic best-model checkpoint, the
per-epoch backup a killed run resumes from, and the one-line-per-epoch timer."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

from seglib.fsutil import atomic_write_json, staged_dir, staged_file
from seglib.layout import BackupEpochDir, RunDir
from seglib.training.config import TrainConfig


def learning_rate(step: int, config: TrainConfig, steps_per_epoch: int) -> float | None:
    """The learning rate of training step ``step`` (from 0) under ``config``'s warmup and schedule, or
    None where the schedule leaves it to the optimizer (``constant`` and ``plateau`` after warmup:
    ReduceLROnPlateau may have lowered it)."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (0.01 + 0.99 * step / warmup)
    if config.lr_schedule != "cosine":
        return config.lr if step == warmup else None
    total = max(1, config.epochs * steps_per_epoch - warmup)
    progress = min(1.0, (step - warmup) / total)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_scheduler(config: TrainConfig, steps_per_epoch: int):
    """Sets the optimizer's learning rate before every step (:func:`learning_rate`), from the
    optimizer's own step count, so a resumed run continues its schedule; logs it per epoch."""
    import keras

    class StepSchedule(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            value = learning_rate(int(self.model.optimizer.iterations.numpy()), config, steps_per_epoch)
            if value is not None:
                self.model.optimizer.learning_rate.assign(value)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())

    return StepSchedule()


def _variables_bytes(variables) -> int:
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """Refuse a write that would not fit, before it starts: h5py does not survive a full disk
    (it crashes the process), so a backup or checkpoint checks the free space first."""
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05 + (8 << 20):
        import errno

        raise OSError(errno.ENOSPC, f"No space left on device: {what} needs about {needed / 1e6:.0f} MB, "
                                    f"{free / 1e6:.0f} MB free", str(folder))


def atomic_checkpoint(path: Path, monitor: str):
    """Save the model when ``monitor`` improves: to a temp file, then renamed into place.

    The saved copy is uncompiled, so it holds no optimizer state (a third of the size with
    Adam); resuming uses the separate backup (:func:`epoch_backup`).
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
                try:  # the same layers in an uncompiled Model: saved without optimizer state
                    ensure_space(path.parent, _variables_bytes(self.model.weights), "the best model")
                    with staged_file(path, ".keras") as tmp:  # a temp name seglib owns (.model.keras.tmp-*)
                        keras.Model(self.model.inputs, self.model.outputs, name=self.model.name).save(tmp)
                except OSError as exc:
                    raise OSError(f"{path}: could not save the best model of epoch {epoch + 1} "
                                  f"({exc.strerror or exc}); the previous one is kept. Free some space and run "
                                  "again: training continues from its last backup") from exc
                self.best, self.best_epoch = value, epoch + 1

    return AtomicCheckpoint()


def epoch_backup(run: RunDir, checkpoint, early, restored: dict | None):
    """After every epoch, back up what a restart needs: the weights with the optimizer's state
    (``save_weights``), the epoch, and the state of the best-model checkpoint and EarlyStopping
    (otherwise the first resumed epoch would overwrite a better ``model.keras`` and patience would
    start again). Each backup is built in a temp folder and renamed into place, then the older
    ones are removed. Placed after the checkpoint and EarlyStopping; ``restored`` (the state of
    the backup training starts from) is put back into them when training begins."""
    import keras

    class EpochBackup(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if restored:
                checkpoint.best, checkpoint.best_epoch = restored["checkpoint_best"], restored["checkpoint_best_epoch"]
                early.best, early.wait = restored["early_best"], restored["early_wait"]
                early.best_epoch = restored["early_best_epoch"]

        def on_epoch_end(self, epoch, logs=None):
            final = run.backup_epoch(epoch + 1)
            try:
                run.backup.mkdir(parents=True, exist_ok=True)
                ensure_space(run.backup, _variables_bytes(self.model.weights)
                             + _variables_bytes(self.model.optimizer.variables), "the training backup")
                with staged_dir(final.root, BackupEpochDir) as tmp:
                    self.model.save_weights(BackupEpochDir(tmp).weights)
                    atomic_write_json(BackupEpochDir(tmp).state, {
                        "epoch": epoch + 1,
                        "checkpoint_best": float(checkpoint.best), "checkpoint_best_epoch": checkpoint.best_epoch,
                        "early_best": None if early.best is None else float(early.best),
                        "early_wait": int(early.wait), "early_best_epoch": int(early.best_epoch)})
            except OSError as exc:
                raise OSError(f"{final.root}: could not write the training backup ({exc.strerror or exc}); "
                              f"free some space and run again: training continues after epoch {epoch}") from exc
            for old in run.backup_epochs():
                if old != final:
                    shutil.rmtree(old.root, ignore_errors=True)

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


def epoch_timer(epochs: int, log=None):
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
