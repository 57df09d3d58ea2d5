"""Everything checked before training starts (and before RUN_DIR is made): the parameters, the
prepared arrays, the run folder's state, the model to start from."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from seglib.data.pairs import check_size_step
from seglib.data.palette import Palette
from seglib.data.splits import open_split
from seglib.fsutil import read_json, read_marker
from seglib.layout import LOCK, BackupEpochDir, PreparedDir, RunDir
from seglib.parameters import checked_value
from seglib.training.config import TrainConfig


@dataclass
class Checked:
    """What :func:`validate` found, so that training reads none of it again."""

    palette: Palette
    train_rows: int
    val_rows: int
    size: tuple[int, int]  # (H, W)
    init_model: Path | None  # the model file of ``init_from``
    preset: object | None = None  # keras-hub's model of ``preset`` (None on resume: the backup holds the weights)
    preset_head: str | None = None  # "kept" (the data has the preset's classes) or "replaced"


def check_split(prepared_dir: str | os.PathLike, split: str, palette: Palette) -> tuple[int, tuple[int, int]]:
    """Check a prepared split's arrays before any training: uint8 images (N, H, W, 3) and labels
    (N, H, W) of one size, H and W multiples of SIZE_STEP, a source for each row, and every label (all rows)
    a class of the palette or its ignore index. Returns (rows, (H, W))."""
    where = PreparedDir(prepared_dir).split(split).images.parent
    try:
        data = open_split(prepared_dir, split)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: unreadable prepared split ({exc}); prepare the data again") from exc
    images, labels = data.images, data.labels
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{where}/images.npy: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:3]:
        raise ValueError(f"{where}/labels.npy: expected uint8 labels {images.shape[:3]}, got {labels.dtype} "
                         f"{labels.shape}")
    if len(data.files) != len(images) or len(images) == 0:
        raise ValueError(f"{where}: {len(images)} rows but {len(data.files)} source files; prepare the data again")
    height, width = images.shape[1:3]
    check_size_step(height, width, f"{where}: images are {height}x{width}; prepare them again (--size 128 or "
                    "--size 256x512)")
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
    if not run.root.exists() or (run.root.is_dir() and not any(p.name != LOCK for p in run.root.iterdir())):
        return "new"
    marker = read_marker(run.root)
    if not run.root.is_dir() or marker is None or marker.get("kind") != RunDir.KIND:
        return "foreign"
    if run.info.exists():
        return "finished"
    return "resumable" if latest_backup(run.root) else "started"


def validate(config: TrainConfig) -> Checked:
    """Check everything that can be checked before any training (and before RUN_DIR is made)."""
    from seglib.training.model import check_backbone, check_encoder_weights, check_input_size

    prepared = PreparedDir(config.prepared_dir)
    if not prepared.palette.exists() or not prepared.split("train").labels.exists():
        raise FileNotFoundError(f"{prepared.root}: not a prepared dataset (run `python -m seglib prepare` first)")
    for f in fields(config):  # values set after the config was made are checked too
        checked_value(f, getattr(config, f.name))
    check_backbone(config.arch, config.backbone)
    if not config.warmup_epochs < config.epochs:
        raise ValueError(f"WARMUP_EPOCHS (--warmup-epochs): must be fewer than the epochs ({config.epochs}), "
                         f"got {config.warmup_epochs}")
    if config.preset is not None and config.init_from is not None:  # before either source is read
        raise ValueError("PRESET (--preset) and INIT_FROM (--init-from) are two starts: give one of them")
    check_encoder_weights(None if config.preset else config.encoder_weights, config.arch)  # a preset brings all
    palette = Palette.load(prepared.palette)
    (rows, size), (val_rows, val_size) = (check_split(prepared.root, split, palette) for split in ("train", "val"))
    if size != val_size:
        raise ValueError(f"{prepared.root}: train and val images differ in size ({sorted({size, val_size})})")
    check_input_size(config.arch, size)
    init_model = init_source(config) if config.init_from is not None else None
    run = RunDir(config.run_dir)
    state = run_state(run.root)
    if state == "foreign":
        raise FileExistsError(f"{run.root}: exists, is not empty and is not a seglib run; choose a new or empty "
                              "RUN_DIR")
    if state == "finished" and not config.overwrite:
        info = read_json(run.info)
        raise FileExistsError(f"{run.root}: holds a finished run ({info.get('stop_reason')}, {info.get('epochs_run')} "
                              "epochs); use a new RUN_DIR, or overwrite it (--overwrite, OVERWRITE = True)")
    if state == "resumable" and not config.overwrite and run.palette.exists():
        previous = Palette.load(run.palette)
        if previous.k != palette.k:
            raise ValueError(f"{run.root} holds a run with K={previous.k}, the data has K={palette.k}: "
                             "use a new RUN_DIR")
    if state == "resumable" and not config.overwrite and run.config.exists():
        check_resume_flags(config, read_json(run.config), run.root)
    preset, head = None, None
    if config.preset is not None and state == "resumable" and not config.overwrite:  # the backup holds the weights
        head = read_json(run.config).get("preset_head") if run.config.exists() else None
    elif config.preset is not None:
        from seglib.training.segformer import head_order

        preset = preset_source(config)
        head = "replaced" if head_order(preset, palette.names) is None else "kept"
    return Checked(palette, rows, val_rows, size, init_model, preset, head)


def check_replicas(prepared_dir: str | os.PathLike, rows: dict[str, int], replicas: int) -> None:
    """Each split holds at least one image per replica: every batch is split evenly across them
    (:func:`seglib.training.pipeline.make_dataset`), so a smaller split cannot train or validate."""
    for split, n in rows.items():
        if n < replicas:
            raise ValueError(f"{prepared_dir}/{split}: {n} images, fewer than the {replicas} devices each batch is "
                             "split across")


# What may differ when a run is resumed: where it is, and what does not change what it computes.
RESUME_FREE = ("run_dir", "prepared_dir", "overwrite", "tensorboard", "wait_timeout")


def check_resume_flags(config: TrainConfig, earlier: dict, run_dir: Path) -> None:
    """An unfinished run continues only with the parameters it was started with; otherwise a one-line
    error names the flags that differ and the two ways out, before anything is written."""
    from seglib.parameters import flag

    differ = [f"{flag(f.name)} {getattr(config, f.name)} (the run has {earlier[f.name]})" for f in fields(config)
              if f.name not in RESUME_FREE and f.name in earlier and getattr(config, f.name) != earlier[f.name]]
    if Path(config.prepared_dir).resolve() != Path(earlier.get("prepared_dir", config.prepared_dir)).resolve():
        differ.append(f"PREPARED_DIR {config.prepared_dir} (the run has {earlier['prepared_dir']})")
    if differ:
        raise ValueError(f"{run_dir}: an unfinished run started with other parameters: {'; '.join(differ)}. Resume "
                         "it with its own (config.json), or start it over with --overwrite (OVERWRITE = True)")


def init_source(config: TrainConfig) -> Path:
    """The model file ``config.init_from`` names (a finished run's folder or a ``.keras`` file), checked:
    same architecture and backbone."""
    source = Path(config.init_from)
    model_file = RunDir(source).model if source.is_dir() else source
    if not model_file.is_file():
        raise FileNotFoundError(f"{config.init_from}: no trained model to start from (expected a run folder with "
                                "model.keras, or a .keras file)")
    record = RunDir(model_file.parent).config
    if record.exists():
        earlier = read_json(record)
        arch, backbone = earlier.get("arch", "unet"), earlier.get("backbone")
        if (arch, backbone) != (config.arch, config.backbone):
            raise ValueError(f"{config.init_from}: a {arch}/{backbone} model; this run is {config.arch}/"
                             f"{config.backbone} (set the same --arch and --backbone)")
    return model_file


def preset_source(config: TrainConfig):
    """keras-hub's model of ``config.preset``, checked: a segformer of its MiT variant."""
    if config.arch != "segformer":
        raise ValueError(f"PRESET (--preset): a SegFormer preset; set --arch segformer (ARCH), got {config.arch}")
    from seglib.training.segformer import load_preset, preset_variant

    task = load_preset(config.preset)
    variant = preset_variant(task)
    if variant != config.backbone:
        raise ValueError(f"{config.preset}: a SegFormer on {variant}; set --backbone {variant} (BACKBONE), got "
                         f"{config.backbone}")
    return task


def latest_backup(run_dir: str | os.PathLike) -> tuple[BackupEpochDir, dict] | None:
    """The newest complete backup of an unfinished run, ``(folder, state)``, or None."""
    done = RunDir(run_dir).backup_epochs()
    if not done:
        return None
    try:
        return done[-1], read_json(done[-1].state)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{done[-1].state}: corrupt training backup ({exc}); start the run over with --overwrite "
                         "(OVERWRITE = True)") from exc
