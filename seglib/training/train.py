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

import csv
import io
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from seglib import __version__
from seglib.fsutil import atomic_write_json, atomic_write_text, read_json, remove_owned, write_marker, writer_lock
from seglib.layout import PreparedDir, RunDir
from seglib.quiet import filtered_stderr
from seglib.training.callbacks import atomic_checkpoint, epoch_backup, epoch_timer, lr_scheduler
from seglib.training.checks import Checked, check_replicas, latest_backup, run_state, validate
from seglib.training.config import TrainConfig
from seglib.training.losses import class_weights, make_loss
from seglib.training.metrics import make_metrics
from seglib.training.saved import load_keras_model


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


def copy_weights(model, source_file: Path) -> dict:
    """Start ``model`` from the weights of the model in ``source_file``, variable by variable in order;
    variables whose shape differs (the classifier, when the classes changed) keep their new init.
    Returns ``{"copied": n, "kept_new": names}``."""
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


def train(config: TrainConfig, verbose: int | str = "auto", log=None, callbacks=None, local_copy=None) -> Run:
    """Train a model on a prepared dataset into ``config.run_dir``; see the module docstring.

    ``verbose`` is Keras' (progress bar, or 0); ``log`` (e.g. ``print``) gets one line per epoch;
    ``callbacks``: your own Keras callbacks, called after seglib's (they see each epoch's logs);
    ``local_copy(prepared_dir) -> folder``: where to read the data from (on Colab a copy on local
    disk, :func:`seglib.runs.colab.local_copy`). Into a file or a captured cell (stdout not a
    terminal) ``"auto"`` prints one line per epoch instead of the bar's carriage-return updates.
    A run that ends without a model (not one finite epoch) raises :class:`TrainingFailed`.

    Example:
        ``run = train(TrainConfig("data/prepared/default", "artifacts/first", epochs=5))``
    """
    if verbose == "auto" and not sys.stdout.isatty():
        verbose, log = 0, log or print
    checked = validate(config)

    from seglib.training.distribute import make_strategy

    placement = make_strategy(config.strategy, config.wait_timeout, config.cpu_devices)  # first: it may split the CPU
    check_replicas(config.prepared_dir, {"train": checked.train_rows, "val": checked.val_rows}, placement.replicas)
    run = RunDir(config.run_dir)
    if placement.chief:
        with writer_lock(run.root, RunDir):  # one writer per run folder; a dead writer's temporaries go
            state = run_state(run.root)
            if state == "finished" and not config.overwrite:  # finished by another process since validate()
                raise FileExistsError(f"{run.root}: holds a finished run; use a new RUN_DIR, or --overwrite")
            if state in ("finished", "started") or (state == "resumable" and config.overwrite):
                remove_owned(run.root, RunDir)  # start over: the earlier run's files go, a user's files stay
            write_marker(run.root, RunDir.KIND)
            result = _train(config, placement, checked, run, run, verbose, log, callbacks, local_copy)
    else:  # another worker of a multi-worker run: the chief writes; this one writes to a temp folder
        import tempfile

        out = RunDir(tempfile.mkdtemp(prefix="seglib-worker-"))
        try:
            result = _train(config, placement, checked, run, out, verbose, log, callbacks, local_copy)
        finally:
            shutil.rmtree(out.root, ignore_errors=True)
    if placement.chief and not run.model.exists():  # no model, no success: a script or a batch must see it
        raise TrainingFailed(f"{run.root}: {result.stop_reason}; there is nothing to evaluate or export (a lower --lr "
                             "or another --loss may help; run.json records the run)")
    return result


class TrainingFailed(ValueError):
    """Training ended without a model (the loss was not finite from the first epoch on)."""


def _train(config: TrainConfig, placement, checked: Checked, run: RunDir, out: RunDir, verbose, log,
           callbacks, local_copy) -> Run:
    """:func:`train` once the strategy is made: ``run`` is the run's folder (its backup is resumed
    from), ``out`` where this process writes (``run`` on the chief)."""
    import keras

    from seglib.training.distribute import build_for_multiworker
    from seglib.training.model import detect_device
    from seglib.training.pipeline import make_dataset

    backup = latest_backup(run.root)
    if out == run:
        _keep_history(run.history, backup[1]["epoch"] if backup else 0)  # a new run starts a new history
    device = {**detect_device(), "devices": placement.devices}  # what the strategy's replicas run on
    if device["kind"] != "cpu":  # once per machine and library versions: does it compute what the CPU does?
        from seglib.training.doctor import warn_if_unreliable

        warn_if_unreliable(log)
    if device["kind"] == "cuda":
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)
    global_batch = config.batch_size * placement.replicas  # --batch-size is per replica
    lr = config.lr * placement.replicas if config.scale_lr else config.lr
    data_dir = local_copy(config.prepared_dir) if local_copy else config.prepared_dir
    replicas = placement.replicas  # every batch split evenly across them (make_dataset)
    train_ds = make_dataset(data_dir, "train", global_batch, shuffle=True, seed=config.seed, augment=config.augment,
                            multiple_of=replicas)
    val_ds = make_dataset(data_dir, "val", global_batch, multiple_of=replicas)
    train_rows = checked.train_rows - checked.train_rows % replicas
    write_run_config(config, checked, run, out, device, placement, global_batch, lr)
    with placement.strategy.scope():  # the model, optimizer and metrics live on the strategy's devices
        model = _compiled_model(config, checked, backup, lr, log)
    build_for_multiworker(model, placement, train_ds)
    steps = _callbacks(config, out, backup, lr, math.ceil(train_rows / global_batch), log)
    started = time.perf_counter()
    history = _fit(model, train_ds, val_ds, config, backup, list(steps.values()) + list(callbacks or []), verbose,
                   placement, run)
    return _finish(config, run, out, model, history, steps, device, placement, train_rows,
                   time.perf_counter() - started)


def write_run_config(config: TrainConfig, checked: Checked, run: RunDir, out: RunDir, device: dict, placement,
                     global_batch: int, lr: float) -> None:
    """``config.json``: every parameter, and what the run was made of and on; ``palette.json``."""
    import keras
    import tensorflow as tf

    atomic_write_json(out.config, {
        **asdict(config),
        "prepared_dir": str(Path(config.prepared_dir).resolve()),
        "run_dir": str(run.root.resolve()),
        "num_classes": checked.palette.k,
        "input_size": list(checked.size),
        "ignore_index": checked.palette.ignore_index,
        "input": "RGB float in [0, 255]; the model's 'preprocess' layer applies the backbone's preprocessing",
        "versions": {"seglib": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
        "device": device,
        "distribution": placement.record(),
        "preset_head": checked.preset_head,  # with --preset: the head kept (the preset's classes) or replaced
        "global_batch_size": global_batch,
        "effective_lr": lr,
        "mixed_precision": device["kind"] == "cuda",
    })
    checked.palette.save(out.palette)


def _compiled_model(config: TrainConfig, checked: Checked, backup, lr: float, log):
    """The model built (from ``init_from``'s weights, or the backup's on resume) and compiled, with the
    optimizer's variables made."""
    import keras

    from seglib.training.model import build_model

    palette = checked.palette
    model = build_model(config.arch, config.backbone, palette.k, checked.size,
                        None if config.preset else config.encoder_weights)
    if config.init_from is not None and not backup:
        copied = copy_weights(model, checked.init_model)
        if log is not None:
            log(f"started from {config.init_from}: {copied['copied']} weights copied"
                + (f", {len(copied['kept_new'])} new (the classifier: other classes)" if copied["kept_new"] else ""))
    if checked.preset is not None and not backup:
        from seglib.training.segformer import start_from_preset

        start_from_preset(model, checked.preset, palette.names)
        if log is not None:
            log(f"started from the preset {config.preset}: its head {checked.preset_head} ("
                + ("the data has its classes)" if checked.preset_head == "kept" else
                   f"{checked.preset.num_classes} classes; the data has {palette.k})"))
    shares = read_json(PreparedDir(config.prepared_dir).summary)["class_shares"]["train"]
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=make_loss(config.loss, palette.k, class_weights(shares), palette.ignore_index, config.ohem_threshold,
                       config.ohem_min_kept),
        metrics=make_metrics(palette.k, palette.ignore_index),
        jit_compile=config.jit_compile,
    )
    # the optimizer's variables made here, not inside the first training step: tf.function traces a
    # step that creates variables twice (about a third of a small run's first epoch on a CPU)
    model.optimizer.build(model.trainable_variables)
    if backup:  # resume: the weights and the optimizer's state of the last backed-up epoch
        try:
            model.load_weights(backup[0].weights)
        except Exception as exc:  # noqa: BLE001 - h5py and Keras raise several kinds for a damaged file
            raise ValueError(f"{backup[0].weights}: corrupt training backup ({type(exc).__name__}: "
                             f"{exc}); start the run over with --overwrite (OVERWRITE = True)") from exc
    return model


def _callbacks(config: TrainConfig, out: RunDir, backup, lr: float, steps_per_epoch: int, log) -> dict:
    """seglib's callbacks by role, in the order Keras calls them (a user's come after them all)."""
    import keras

    mode = "max" if ("accuracy" in config.monitor or "iou" in config.monitor) else "min"
    steps = {"timer": epoch_timer(config.epochs, log)}  # first: the epoch's seconds go into the logs all others see
    if config.lr_schedule != "constant" or config.warmup_epochs:
        # before the others, so they see the rate; from lr as scaled (--scale-lr)
        steps["schedule"] = lr_scheduler(replace(config, lr=lr), steps_per_epoch)
    if config.lr_schedule == "plateau":
        steps["plateau"] = keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.5,
                                                             patience=max(1, config.patience // 2))
    steps["nan"] = keras.callbacks.TerminateOnNaN()
    steps["checkpoint"] = atomic_checkpoint(out.model, config.monitor)  # the best model, before early stopping
    steps["early"] = keras.callbacks.EarlyStopping(config.monitor, patience=config.patience, mode=mode,
                                                   restore_best_weights=True)
    # the epoch's row before its backup: an epoch a backup holds is always in history.csv (a kill between
    # the two would otherwise lose the row; a row without a backup is dropped on resume, the epoch run again)
    steps["history"] = keras.callbacks.CSVLogger(str(out.history), append=True)
    # after the checkpoint and early stopping: the backup holds their state of this epoch
    steps["backup"] = epoch_backup(out, steps["checkpoint"], steps["early"], backup[1] if backup else None)
    if config.tensorboard:
        steps["tensorboard"] = keras.callbacks.TensorBoard(str(out.tensorboard))
    return steps


def _fit(model, train_ds, val_ds, config: TrainConfig, backup, callbacks: list, verbose, placement, run: RunDir):
    """``model.fit`` from the epoch after the backup; a lost worker of a multi-worker run is a one-line error."""
    import tensorflow as tf

    try:
        with filtered_stderr(stream=True):  # TensorFlow's C++ notices at the first steps ("oneDNN supports ...")
            return model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                             initial_epoch=backup[1]["epoch"] if backup else 0, callbacks=callbacks, verbose=verbose,
                             shuffle=False)  # the dataset shuffles itself
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError) as exc:
        if placement.name != "multiworker":
            raise
        done = latest_backup(run.root)
        raise ConnectionError(f"{run.root}: a worker of this multi-worker run was lost "
                              f"({str(exc).strip().splitlines()[0][:160]}); start every worker again with the same "
                              f"command: training continues after epoch {done[1]['epoch'] if done else 0}") from exc


def _finish(config: TrainConfig, run: RunDir, out: RunDir, model, history, steps: dict, device: dict, placement,
            n_train: int, seconds: float) -> Run:
    """Why training stopped, ``run.json``, and the backup removed: the run is finished."""
    losses = history.history.get("loss", [])
    history_rows = _read_history(out.history)
    epochs_run = len(history_rows)
    checkpoint, early, timer = steps["checkpoint"], steps["early"], steps["timer"]
    if losses and not all(math.isfinite(v) for v in losses):
        stop = f"nan: loss became NaN at epoch {epochs_run}"
    elif early.stopped_epoch > 0:
        stop = f"early stop at epoch {early.stopped_epoch + 1}"
    else:
        stop = "finished"
    if not out.model.exists():
        stop += " (no finite epoch: no model saved)"
    shutil.rmtree(out.backup, ignore_errors=True)
    atomic_write_json(out.info, {
        "stop_reason": stop,
        "epochs_run": epochs_run,
        "best_epoch": checkpoint.best_epoch or None,
        "best_" + config.monitor: None if not math.isfinite(checkpoint.best) else float(checkpoint.best),
        "device": device["kind"],
        "strategy": placement.name,
        "replicas": placement.replicas,
        "seconds_total": round(seconds, 2),
        "seconds_per_epoch": [round(t, 2) for t in timer.seconds],
        "train_images_per_second": round(n_train / float(np.median(timer.seconds)), 2) if timer.seconds else None,
        "parameters": int(model.count_params()),
    })
    return Run(run.root, config, history_rows, stop, epochs_run, checkpoint.best_epoch)


def _keep_history(path: Path, epochs: int) -> None:
    """Keep the rows of the first ``epochs`` epochs of history.csv (all of a resumed run's backed-up
    epochs, none for a new run): an epoch logged after its backup was written is run again."""
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
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_model(run_dir: str | os.PathLike):
    """The best model of a run (uncompiled), its preprocessing inside: it takes RGB in [0, 255].

    Example:
        ``probabilities = load_model("artifacts/default").predict(images)``
    """
    return load_keras_model(RunDir(run_dir).model)
