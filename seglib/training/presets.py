"""A keras-hub SegFormer preset scored as it comes: a run folder holding the preset, untrained, for a
prepared dataset with the preset's classes. ``evaluate``, ``report``, ``export``, ``predict`` and
``serve`` then take it like a trained run, so a user sees what the off-the-shelf model gives on their
data (same metrics, full-size protocol and report) before spending a GPU hour on fine-tuning."""
from __future__ import annotations

import os
from pathlib import Path

from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_json, read_json, remove_owned, staged_file, write_marker, writer_lock
from seglib.layout import ARTIFACTS, PreparedDir, RunDir
from seglib.training.checks import Checked, check_split, run_state
from seglib.training.config import TrainConfig

NOT_TRAINED = "not trained: the keras-hub preset as it comes"


def default_preset_run(preset: str) -> Path:
    """Where ``evaluate --preset`` writes a preset's run when not told: ``artifacts/preset-<name>``."""
    return Path(ARTIFACTS) / f"preset-{Path(str(preset).rstrip('/')).name}"


def run_from_preset(preset: str, prepared_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """Write a run folder holding ``preset`` (a keras-hub name, downloaded once, or a ``save_to_preset``
    folder) for ``prepared_dir``'s classes and image size; returns the folder. The data must have the
    preset's classes (Cityscapes' 19 trainIds): with others, fine-tune it (``train --preset``). A folder
    that holds an earlier preset run is replaced; any other run or a folder of files is refused.

    Example:
        ``evaluate(run_from_preset("segformer_b0_cityscapes_1024", "data/prepared/cityscapes"))``
    """
    from seglib.training.segformer import head_order, load_preset, preset_variant

    prepared = PreparedDir(prepared_dir)
    if not prepared.palette.exists():
        raise FileNotFoundError(f"{prepared.root}: not a prepared dataset (run `python -m seglib prepare` first)")
    palette = Palette.load(prepared.palette)
    rows, size = check_split(prepared.root, "train", palette)
    run = RunDir(run_dir if run_dir is not None else default_preset_run(preset))
    _check_replaceable(run)
    task = load_preset(preset)
    if head_order(task, palette.names) is None:
        raise ValueError(f"{preset}: predicts its own {task.num_classes} classes; {prepared.root} has K={palette.k} "
                         f"({', '.join(palette.names[:4]) or 'unnamed'}, ...): score a preset on data prepared with "
                         "its classes (Cityscapes' 19 trainIds), or fine-tune it on yours (train --preset)")
    config = TrainConfig(str(prepared.root), str(run.root), arch="segformer", backbone=preset_variant(task),
                         encoder_weights=None, preset=preset)
    with writer_lock(run.root, RunDir):
        remove_owned(run.root, RunDir)
        write_marker(run.root, RunDir.KIND)
        checked = Checked(palette, rows, val_rows=0, size=size, init_model=None, preset=task, preset_head="kept")
        _write_run(config, checked, run)  # (val_rows: no training, val is not read)
    return run.root


def preset_run_to_score(preset: str, prepared_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Notebook 03's ``PRESET``: ``run_dir`` itself when it holds a run trained from ``preset`` (a batch passes
    ``PRESET`` to every notebook of a run, and notebook 02 fine-tuned from it), else :func:`run_from_preset`."""
    run = RunDir(run_dir)
    if run.config.exists() and run.info.exists() and read_json(run.info).get("stop_reason") != NOT_TRAINED \
            and read_json(run.config).get("preset") == preset:
        return run.root
    return run_from_preset(preset, prepared_dir, run_dir)


def _check_replaceable(run: RunDir) -> None:
    state = run_state(run.root)
    if state == "foreign":
        raise FileExistsError(f"{run.root}: exists, is not empty and is not a seglib run; choose a new or empty folder")
    if state != "new" and not (run.info.exists() and read_json(run.info).get("stop_reason") == NOT_TRAINED):
        raise FileExistsError(f"{run.root}: holds a trained run; choose another folder for the preset")


def _write_run(config: TrainConfig, checked: Checked, run: RunDir) -> None:
    """The model, config.json and palette.json as training writes them, and run.json saying it is untrained."""
    import keras

    from seglib.training.distribute import make_strategy
    from seglib.training.model import build_model, detect_device
    from seglib.training.segformer import start_from_preset
    from seglib.training.train import write_run_config

    placement = make_strategy("default")
    device = {**detect_device(), "devices": placement.devices}
    write_run_config(config, checked, run, run, device, placement, config.batch_size, config.lr)
    model = build_model("segformer", config.backbone, checked.palette.k, checked.size, None)
    start_from_preset(model, checked.preset, checked.palette.names)
    with staged_file(run.model, ".keras") as tmp:
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
    atomic_write_json(run.info, {"stop_reason": NOT_TRAINED, "epochs_run": 0, "best_epoch": None,
                                 "device": device["kind"], "parameters": int(model.count_params())})
