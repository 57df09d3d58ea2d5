"""Evaluate a run's best model on a prepared split: ``metrics.json`` and ``confusion.npy``."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from seglib.fsutil import atomic_write_bytes, atomic_write_json
from seglib.labels import Palette
from seglib.metrics import scores, update_confusion


def evaluate(run_dir: str | os.PathLike, prepared_dir: str | os.PathLike, split: str = "test",
             batch_size: int = 8) -> dict:
    """Stream ``split`` through the run's best model; writes and returns the metrics."""
    from seglib.train import load_model

    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").exists():
        raise FileNotFoundError(f"{run_dir}: no model.keras (train first)")
    palette = Palette.load(run_dir / "palette.json")
    data_palette = Palette.load(Path(prepared_dir) / "palette.json")
    if data_palette.k != palette.k:
        raise ValueError(f"{prepared_dir} has K={data_palette.k} classes, the run has K={palette.k}")
    model = load_model(run_dir)
    confusion = np.zeros((palette.k, palette.k), np.int64)
    for _rows, _images, labels, pred in predict_split(model, prepared_dir, split, batch_size):
        update_confusion(confusion, labels, pred)
    result = {"split": split, "prepared_dir": str(prepared_dir), "num_pixels": int(confusion.sum()),
              "class_names": palette.names, **scores(confusion)}
    atomic_write_json(run_dir / "metrics.json", result)
    buffer = io.BytesIO()
    np.save(buffer, confusion)
    atomic_write_bytes(run_dir / "confusion.npy", buffer.getvalue())
    return result


def predict_split(model, prepared_dir: str | os.PathLike, split: str = "test", batch_size: int = 8):
    """Yield ``(row_index, images, labels, predicted labels)`` batch by batch over a split."""
    from seglib.data import make_dataset

    start = 0
    for images, labels in make_dataset(prepared_dir, split, batch_size):
        pred = np.asarray(model(images, training=False)).argmax(-1).astype(np.uint8)
        yield np.arange(start, start + len(pred)), np.asarray(images), np.asarray(labels), pred
        start += len(pred)
