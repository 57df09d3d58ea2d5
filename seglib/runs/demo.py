"""The one-command demo (``make demo``): synthetic (or given) pairs -> a batch of two small CPU
runs, ResNet-34 and the lighter MobileNetV2, through the three notebooks ->
``reports/demo/index.html`` comparing them, with each run's report beside it."""
from __future__ import annotations

import os
from pathlib import Path

from seglib.layout import SYNTHETIC

# Shared by both runs: small enough for 2 CPU cores, large enough to learn the synthetic scenes.
DEMO = {"SYNTH_COUNT": 240, "SEED": 0, "SIZE": 128, "EPOCHS": 6, "BATCH_SIZE": 8, "LR": 1e-3,
        "CALIBRATION_IMAGES": 50}
DEMO_RUNS = [{"name": "resnet34", "BACKBONE": "resnet34"},
             {"name": "mobilenetv2", "BACKBONE": "mobilenetv2"}]


def demo_config(out: str | os.PathLike = ".", data_dir: str | os.PathLike | None = None,
                encoder_weights: str | None = None) -> dict:
    """The demo as a batch config. Without ``data_dir``, ``01_prepare_data`` generates synthetic
    pairs in ``out/data/synthetic`` (offline, so encoders start from random weights unless
    ``encoder_weights="imagenet"``)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{data_dir}: no such data folder (expected train/ and val/ or a folder of pairs)")
    parameters = dict(DEMO, ENCODER_WEIGHTS=encoder_weights,
                      DATA_DIR=str(Path(data_dir if data_dir is not None else Path(out) / SYNTHETIC)))
    if data_dir is not None:
        del parameters["SYNTH_COUNT"]
    return {"name": "demo", "parameters": parameters, "runs": [dict(r) for r in DEMO_RUNS]}


def run_demo(out: str | os.PathLike = ".", data_dir: str | os.PathLike | None = None,
             encoder_weights: str | None = None, resume: bool = False) -> Path:
    """Run the demo batch under ``out`` (``data/``, ``artifacts/demo/``, ``reports/demo/``);
    returns the path of ``reports/demo/index.html``. Runs again over an earlier demo's runs (they
    are the demo's own) unless ``resume`` keeps the finished ones."""
    from seglib.runs.batch import run_batch

    return run_batch(demo_config(out, data_dir, encoder_weights), out, resume=resume, overwrite=not resume)
