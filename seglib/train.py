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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from seglib import __version__
from seglib.fsutil import atomic_write_json, read_marker, remove_owned, write_marker
from seglib.layout import BackupEpochDir, PreparedDir, RunDir
from seglib.palette import Palette

LOSSES = ("ce", "weighted_ce", "dice", "ce_dice")
MONITORS = ("val_loss", "val_pixel_accuracy", "val_mean_iou")
LR_SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainConfig:
    prepared_dir: str
    run_dir: str
    backbone: str = "resnet34"
    arch: str = "unet"  # unet, fpn, linknet or pspnet (segmentation-models' four)
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 5
    monitor: str = "val_loss"
    encoder_weights: str | None = "imagenet"  # "imagenet", None (random) or the path of an encoder weights file
    init_from: str | None = None  # an earlier run's folder: start from its model's weights (fine-tuning)
    augment: bool = False
    loss: str = "ce"
    seed: int = 0
    lr_schedule: str = "constant"  # constant, cosine (to 1% of lr at the last epoch) or plateau (halve on plateaus)
    warmup_epochs: float = 0  # the learning rate rises linearly from lr/100 to lr over these epochs first
    tensorboard: bool = False  # write RUN_DIR/tensorboard/ for TensorBoard
    strategy: str = "auto"  # auto, default, mirrored, multiworker or tpu (seglib.distribute)
    scale_lr: bool = False  # multiply lr by the replicas in sync (batch_size is per replica)
    jit_compile: bool = False
    overwrite: bool = False  # replace a finished run in RUN_DIR (its model, history, metrics, exports)

    def __post_init__(self):
        if isinstance(self.encoder_weights, str) and self.encoder_weights.strip().lower() in ("", "none", "null"):
            self.encoder_weights = None  # "none" from a command line or a Colab form: random init
        if isinstance(self.init_from, str) and self.init_from.strip().lower() in ("", "none", "null"):
            self.init_from = None


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
        return RunDir(self.run_dir).model


def check_split(prepared_dir: str | os.PathLike, split: str, palette: Palette) -> tuple[int, tuple[int, int]]:
    """Check a prepared split's arrays before any training: uint8 images (N, H, W, 3) and labels
    (N, H, W) of one size, H and W multiples of 32, a source for each row, and every label (all rows)
    a class of the palette or its ignore index. Returns (rows, (H, W))."""
    from seglib.prepare import open_split

    where = PreparedDir(prepared_dir).split(split).images.parent
    try:
        data = open_split(prepared_dir, split)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: unreadable prepared split ({exc}); prepare the data again") from exc
    images, labels = data.images, data.labels
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{where}/images.npy: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:3]:
        raise ValueError(
            f"{where}/labels.npy: expected uint8 labels {images.shape[:3]}, got {labels.dtype} {labels.shape}"
        )
    if len(data.files) != len(images) or len(images) == 0:
        raise ValueError(f"{where}: {len(images)} rows but {len(data.files)} source files; prepare the data again")
    height, width = images.shape[1:3]
    if height % 32 or width % 32:
        raise ValueError(f"{where}: images are {height}x{width}; the models need H and W multiples of 32 "
                         "(prepare with --size 128 or --size 256x512)")
    for start in range(0, len(labels), 256):  # every row once, through the memory map, a block at a time
        block = np.asarray(labels[start:start + 256])
        bad = (block >= palette.k) & (block != (palette.ignore_index if palette.ignore_index is not None else -1))
        if bad.any():
            row = start + int(np.argmax(bad.reshape(len(block), -1).any(1)))
            value = int(np.asarray(labels[row])[bad[row - start]][0])
            raise ValueError(f"{where}/labels.npy: row {row} ({data.files[row]}) has class id {value}, the palette "
                             f"has K={palette.k}; prepare the data again")
    return len(images), (int(height), int(width))


def run_state(run_dir: str | os.PathLike) -> str:
    """``new`` (missing or empty), ``foreign`` (files but no seglib run marker), ``resumable``
    (an unfinished run with a backup), ``finished`` (run.json written) or ``started`` (a run that
    stopped before its first backup)."""
    run = RunDir(run_dir)
    if not run.root.exists() or (run.root.is_dir() and not any(run.root.iterdir())):
        return "new"
    marker = read_marker(run.root)
    if not run.root.is_dir() or marker is None or marker.get("kind") != RunDir.KIND:
        return "foreign"
    if run.info.exists():
        return "finished"
    return "resumable" if latest_backup(run.root) else "started"


def validate(config: TrainConfig) -> Palette:
    """Check everything that can be checked before any training (and before RUN_DIR is made);
    returns the palette."""
    from seglib.model import available_backbones, check_input_size

    prepared = PreparedDir(config.prepared_dir)
    if not prepared.palette.exists() or not prepared.split("train").labels.exists():
        raise FileNotFoundError(f"{prepared.root}: not a prepared dataset (run `python -m seglib prepare` first)")
    from seglib.distribute import STRATEGIES

    if config.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {config.strategy!r}; choose one of {', '.join(STRATEGIES)}")
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
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {config.lr_schedule!r}; choose one of "
                         f"{', '.join(LR_SCHEDULES)}")
    if not 0 <= config.warmup_epochs < config.epochs:
        raise ValueError(f"warmup epochs must be at least 0 and fewer than the epochs ({config.epochs}), "
                         f"got {config.warmup_epochs}")
    weights = config.encoder_weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: no such encoder weights file (--encoder-weights takes imagenet, none or "
                                "the path of a weights file)")
    palette = Palette.load(prepared.palette)
    sizes = {check_split(prepared.root, split, palette)[1] for split in ("train", "val")}
    if len(sizes) != 1:
        raise ValueError(f"{prepared.root}: train and val images differ in size ({sorted(sizes)})")
    check_input_size(config.arch, sizes.pop())
    if config.init_from is not None:
        init_source(config, palette)
    run = RunDir(config.run_dir)
    state = run_state(run.root)
    if state == "foreign":
        raise FileExistsError(
            f"{run.root}: exists, is not empty and is not a seglib run; choose a new or empty RUN_DIR"
        )
    if state == "finished" and not config.overwrite:
        info = json.loads(run.info.read_text())
        raise FileExistsError(f"{run.root}: holds a finished run ({info.get('stop_reason')}, {info.get('epochs_run')} "
                              "epochs); use a new RUN_DIR, or overwrite it (--overwrite, OVERWRITE = True)")
    if state == "resumable" and not config.overwrite and run.palette.exists():
        previous = Palette.load(run.palette)
        if previous.k != palette.k:
            raise ValueError(f"{run.root} holds a run with K={previous.k}, the data has K={palette.k}: "
                             "use a new RUN_DIR")
    return palette


def init_source(config: TrainConfig, palette: Palette) -> Path:
    """The model file ``config.init_from`` names (a finished run's folder or a ``.keras`` file), checked:
    same architecture and backbone, and the same classes unless only the classifier is left out."""
    source = Path(config.init_from)
    model_file = RunDir(source).model if source.is_dir() else source
    if not model_file.is_file():
        raise FileNotFoundError(f"{config.init_from}: no trained model to start from (expected a run folder with "
                                "model.keras, or a .keras file)")
    record = RunDir(model_file.parent).config
    if record.exists():
        earlier = json.loads(record.read_text())
        arch, backbone = earlier.get("arch", "unet"), earlier.get("backbone")
        if (arch, backbone) != (config.arch, config.backbone):
            raise ValueError(f"{config.init_from}: a {arch}/{backbone} model; this run is {config.arch}/"
                             f"{config.backbone} (set the same --arch and --backbone)")
    return model_file


def copy_weights(model, source_file: Path) -> dict:
    """Start ``model`` from the weights of the model in ``source_file``, variable by variable in order;
    variables whose shape differs (the classifier, when the classes changed) keep their new init.
    Returns ``{"copied": n, "kept_new": names}``."""
    from seglib.model import load_keras_model

    source = load_keras_model(source_file)
    if len(source.weights) != len(model.weights):
        raise ValueError(f"{source_file}: {len(source.weights)} weights, this model has {len(model.weights)}: "
                         "not the same architecture")
    kept = []
    for new, old in zip(model.weights, source.weights, strict=True):
        if tuple(new.shape) == tuple(old.shape):
            new.assign(old)
        else:
            kept.append(new.path)
    if len(kept) > 2:
        raise ValueError(f"{source_file}: {len(kept)} weights differ in shape ({', '.join(kept[:3])}, ...): not the "
                         "same architecture")
    return {"copied": len(model.weights) - len(kept), "kept_new": kept}


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


def class_weights(shares, floor: float = 1e-4) -> np.ndarray:
    """Inverse square root of the class pixel shares, normalised to a pixel-weighted mean of 1."""
    shares = np.maximum(np.asarray(shares, np.float64), floor)
    weights = 1.0 / np.sqrt(shares)
    return (weights / (weights * shares).sum()).astype(np.float32)


def make_loss(name: str, num_classes: int, weights=None, ignore_index: int | None = None):
    """The training loss; pixels labelled ``ignore_index`` add nothing to it (Keras' ``ignore_class``)."""
    import keras
    from keras import ops

    ce = keras.losses.SparseCategoricalCrossentropy(ignore_class=ignore_index)

    def valid(y_true):
        if ignore_index is None:
            return ops.ones_like(ops.cast(y_true, "float32"))
        return ops.cast(ops.not_equal(ops.cast(y_true, "int32"), ignore_index), "float32")

    def soft_dice(y_true, y_pred):
        keep = ops.expand_dims(valid(y_true), -1)
        labels = ops.where(keep[..., 0] > 0, ops.cast(y_true, "int32"), 0)
        onehot = ops.one_hot(labels, num_classes) * keep
        y_pred = y_pred * keep
        axes = (0, 1, 2)
        inter = ops.sum(onehot * y_pred, axis=axes)
        total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
        return 1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0))

    def weighted_ce(y_true, y_pred):
        labels = ops.where(valid(y_true) > 0, ops.cast(y_true, "int32"), 0)
        pixel_weights = ops.take(ops.convert_to_tensor(weights), labels) * valid(y_true)
        return ce(y_true, y_pred, sample_weight=pixel_weights)

    if name == "ce":
        return ce
    if name == "weighted_ce":
        return weighted_ce
    if name == "dice":
        return soft_dice
    return lambda y_true, y_pred: ce(y_true, y_pred) + soft_dice(y_true, y_pred)


def make_metrics(num_classes: int, ignore_index: int | None = None) -> list:
    """Pixel accuracy and mean IoU as Keras metrics, both leaving ``ignore_index`` pixels out."""
    import keras
    from keras import ops

    class PixelAccuracy(keras.metrics.SparseCategoricalAccuracy):
        def update_state(self, y_true, y_pred, sample_weight=None):
            if ignore_index is not None:
                sample_weight = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), ignore_index), "float32")
                y_true = ops.where(sample_weight > 0, ops.cast(y_true, "int32"), 0)
            return super().update_state(y_true, y_pred, sample_weight)

    return [PixelAccuracy(name="pixel_accuracy"),
            keras.metrics.MeanIoU(num_classes, name="mean_iou", sparse_y_pred=False, ignore_class=ignore_index)]


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
                tmp = path.with_name(f".{path.name}.tmp.keras")
                try:  # the same layers in an uncompiled Model: saved without optimizer state
                    ensure_space(path.parent, _variables_bytes(self.model.weights), "the best model")
                    keras.Model(self.model.inputs, self.model.outputs, name=self.model.name).save(tmp)
                    os.replace(tmp, path)
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise OSError(f"{path}: could not save the best model of epoch {epoch + 1} "
                                  f"({exc.strerror or exc}); the previous one is kept. Free some space and run "
                                  "again: training continues from its last backup") from exc
                self.best, self.best_epoch = value, epoch + 1

    return AtomicCheckpoint()


def latest_backup(run_dir: str | os.PathLike) -> tuple[BackupEpochDir, dict] | None:
    """The newest complete backup of an unfinished run, ``(folder, state)``, or None."""
    done = RunDir(run_dir).backup_epochs()
    if not done:
        return None
    try:
        return done[-1], json.loads(done[-1].state.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{done[-1].state}: corrupt training backup ({exc}); start the run over with --overwrite "
                         "(OVERWRITE = True)") from exc


def epoch_backup(run: RunDir, checkpoint, early, restored: dict | None):
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


def train(config: TrainConfig, verbose: int | str = "auto", log=None, callbacks=None) -> Run:
    """Train a model on a prepared dataset into ``config.run_dir``; see the module docstring.

    ``verbose`` is Keras' (progress bar, or 0); ``log`` (e.g. ``print``) gets one line per epoch;
    ``callbacks``: your own Keras callbacks, called after seglib's (they see each epoch's logs)."""
    palette = validate(config)

    from seglib.distribute import make_strategy

    placement = make_strategy(config.strategy)  # first: it may split the CPU before TensorFlow starts
    run = RunDir(config.run_dir)
    if placement.chief:
        state = run_state(run.root)
        if state in ("finished", "started") or (state == "resumable" and config.overwrite):
            remove_owned(run.root, RunDir)  # start over: the earlier run's files go, a user's files stay
        run.root.mkdir(parents=True, exist_ok=True)
        write_marker(run.root, RunDir.KIND)
        out = run
    else:  # another worker of a multi-worker run: the chief writes; this one writes to a temp folder
        import tempfile

        out = RunDir(tempfile.mkdtemp(prefix="seglib-worker-"))
    try:
        return _train(config, placement, palette, run, out, verbose, log, callbacks)
    finally:
        if out != run:
            shutil.rmtree(out.root, ignore_errors=True)


def _train(config: TrainConfig, placement, palette: Palette, run: RunDir, out: RunDir, verbose, log,
           callbacks) -> Run:
    """:func:`train` once the strategy is made: ``run`` is the run's folder (its backup is resumed
    from), ``out`` where this process writes (``run`` on the chief)."""
    import keras
    import tensorflow as tf

    from seglib.data import make_dataset
    from seglib.distribute import build_for_multiworker
    from seglib.model import build_model, detect_device
    from seglib.prepare import open_split

    backup = latest_backup(run.root)
    initial_epoch = backup[1]["epoch"] if backup else 0
    if out == run:
        _keep_history(run.history, initial_epoch)  # a new run starts a new history
    device = detect_device()
    if device["kind"] == "cuda":
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)
    summary = json.loads(PreparedDir(config.prepared_dir).summary.read_text())
    global_batch = config.batch_size * placement.replicas  # --batch-size is per replica
    lr = config.lr * placement.replicas if config.scale_lr else config.lr
    train_ds = make_dataset(config.prepared_dir, "train", global_batch, shuffle=True, seed=config.seed,
                            augment=config.augment)
    val_ds = make_dataset(config.prepared_dir, "val", global_batch)
    n_train, height, width = open_split(config.prepared_dir, "train").images.shape[:3]  # checked in validate()
    size = (int(height), int(width))
    steps_per_epoch = math.ceil(n_train / global_batch)

    config_record = {
        **asdict(config),
        "prepared_dir": str(Path(config.prepared_dir).resolve()),
        "run_dir": str(run.root.resolve()),
        "num_classes": palette.k,
        "input_size": list(size),
        "ignore_index": palette.ignore_index,
        "input": "RGB float in [0, 255]; the model's 'preprocess' layer applies the backbone's preprocessing",
        "versions": {"seglib": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
        "device": device,
        "distribution": placement.record(),
        "global_batch_size": global_batch,
        "effective_lr": lr,
        "mixed_precision": device["kind"] == "cuda",
    }
    atomic_write_json(out.config, config_record)
    palette.save(out.palette)

    with placement.strategy.scope():  # the model, optimizer and metrics live on the strategy's devices
        model = build_model(config.arch, config.backbone, palette.k, size, config.encoder_weights)
        if config.init_from is not None and not backup:
            copied = copy_weights(model, init_source(config, palette))
            if log is not None:
                log(f"started from {config.init_from}: {copied['copied']} weights copied"
                    + (f", {len(copied['kept_new'])} new (the classifier: other classes)" if copied["kept_new"]
                       else ""))
        weights = class_weights(summary["class_shares"]["train"]) if config.loss == "weighted_ce" else None
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=make_loss(config.loss, palette.k, weights, palette.ignore_index),
            metrics=make_metrics(palette.k, palette.ignore_index),
            jit_compile=config.jit_compile,
        )
        if backup:  # resume: the weights and the optimizer's state of the last backed-up epoch
            model.optimizer.build(model.trainable_variables)
            try:
                model.load_weights(backup[0].weights)
            except Exception as exc:  # noqa: BLE001 - h5py and Keras raise several kinds for a damaged file
                raise ValueError(f"{backup[0].weights}: corrupt training backup ({type(exc).__name__}: "
                                 f"{exc}); start the run over with --overwrite (OVERWRITE = True)") from exc
    build_for_multiworker(model, placement, train_ds)
    checkpoint = atomic_checkpoint(out.model, config.monitor)
    mode = "max" if ("accuracy" in config.monitor or "iou" in config.monitor) else "min"
    early = keras.callbacks.EarlyStopping(config.monitor, patience=config.patience, mode=mode,
                                          restore_best_weights=True)
    timer = _epoch_timer(config.epochs, log)
    user_callbacks, callbacks = callbacks, [
        timer,  # first: puts the epoch's seconds into the logs the others see (history.csv keeps them)
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        early,
        epoch_backup(out, checkpoint, early, backup[1] if backup else None),
        keras.callbacks.CSVLogger(str(out.history), append=True),
    ]
    if config.lr_schedule != "constant" or config.warmup_epochs:
        # before the others, so they see the rate; from lr as scaled (--scale-lr)
        callbacks.insert(1, lr_scheduler(replace(config, lr=lr), steps_per_epoch))
    if config.lr_schedule == "plateau":
        callbacks.insert(2, keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.5,
                                                              patience=max(1, config.patience // 2)))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out.tensorboard)))
    callbacks += list(user_callbacks or [])
    started = time.perf_counter()
    try:
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                            callbacks=callbacks, verbose=verbose, shuffle=False)  # the dataset shuffles itself
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError) as exc:
        if placement.name != "multiworker":
            raise
        done = latest_backup(run.root)
        raise ConnectionError(f"{run.root}: a worker of this multi-worker run was lost "
                              f"({str(exc).strip().splitlines()[0][:160]}); start every worker again with the same "
                              f"command: training continues after epoch {done[1]['epoch'] if done else 0}") from exc
    losses = history.history.get("loss", [])
    epochs_run = len(_read_history(out.history))
    if losses and not all(math.isfinite(v) for v in losses):
        stop = f"nan: loss became NaN at epoch {epochs_run}"
    elif early.stopped_epoch > 0:
        stop = f"early stop at epoch {early.stopped_epoch + 1}"
    else:
        stop = "finished"
    if not out.model.exists():
        stop += " (no finite epoch: no model saved)"
    shutil.rmtree(out.backup, ignore_errors=True)
    run_info = {
        "stop_reason": stop,
        "epochs_run": epochs_run,
        "best_epoch": checkpoint.best_epoch or None,
        "best_" + config.monitor: None if not math.isfinite(checkpoint.best) else float(checkpoint.best),
        "device": device["kind"],
        "strategy": placement.name,
        "replicas": placement.replicas,
        "seconds_total": round(time.perf_counter() - started, 2),
        "seconds_per_epoch": [round(t, 2) for t in timer.seconds],
        "train_images_per_second": round(n_train / float(np.median(timer.seconds)), 2) if timer.seconds else None,
    }
    atomic_write_json(out.info, run_info)
    return Run(run.root, config, _read_history(out.history), stop, epochs_run,
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
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) < epochs]
    if len(kept) != len(rows):  # also drops a row cut short by a full disk
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

    return load_keras_model(RunDir(run_dir).model)
