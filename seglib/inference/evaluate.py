"""Evaluate a run's best model on a prepared split: ``metrics.json`` (with every image's mean IoU,
so reports can show the best and worst images without another pass) and ``confusion.npy``.
Pixels labelled with the palette's ignore index are left out of every score and counted."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_bytes, atomic_write_json, read_json, writer_lock
from seglib.inference.config import EvaluateConfig
from seglib.layout import PreparedDir, RunDir
from seglib.parameters import checked_values
from seglib.quiet import filtered_stderr
from seglib.training.metrics import image_ious, scores, update_confusion


def run_prepared_dir(run_dir: str | os.PathLike, prepared_dir: str | os.PathLike | None = None) -> Path:
    """The prepared dataset a run is scored on: ``prepared_dir``, or (None) the one it was trained on."""
    if prepared_dir is not None:
        return Path(prepared_dir)
    run = RunDir(run_dir)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.root}: not a trained run (no {run.config.name}; train first)")
    return Path(read_json(run.config)["prepared_dir"])


E = EvaluateConfig  # the defaults below are EvaluateConfig's


def evaluate(run_dir: str | os.PathLike, prepared_dir: str | os.PathLike | None = E.prepared_dir,
             split: str = E.split, batch_size: int = 8, full_size: bool = E.full_size) -> dict:
    """Stream ``split`` through the run's best model; writes and returns the metrics. ``full_size``:
    also score each prediction resized to its source label file against that file (the
    Cityscapes protocol), as ``metrics["full_size"]``. The parameters are
    :class:`~seglib.inference.config.EvaluateConfig`'s.

    Example:
        ``metrics = evaluate("artifacts/default", split="val")`` (on the data the run was trained on)
    """
    from seglib.training.saved import input_hw, run_model

    checked_values(EvaluateConfig, split=split, full_size=full_size)
    run = RunDir(run_dir)
    if not run.model.exists():
        raise FileNotFoundError(f"{run.model}: no model (train first)")
    prepared_dir = run_prepared_dir(run_dir, prepared_dir)
    palette = Palette.load(run.palette)
    data_palette = Palette.load(PreparedDir(prepared_dir).palette)
    if data_palette.k != palette.k:
        raise ValueError(f"{prepared_dir} has K={data_palette.k} classes, the run has K={palette.k}")
    from seglib.data.splits import open_split, source_labels

    if full_size:
        next(source_labels(prepared_dir, split), None)  # a dataset of pairs has no label files: say so first
    with filtered_stderr(stream=True):  # TensorFlow's C++ notices as the call is traced
        model, predict = run_model(run.model)
    held, takes = open_split(prepared_dir, split).images.shape[1:3], input_hw(model)
    if tuple(held) != takes:
        raise ValueError(f"the model takes {takes[0]}x{takes[1]} images, {prepared_dir} holds {held[0]}x{held[1]}: "
                         "evaluate on data prepared at the run's size (--size)")
    confusion = np.zeros((palette.k, palette.k), np.int64)
    per_image: list[float] = []
    ignored = 0
    with filtered_stderr(stream=True):  # and at the first call
        for _rows, _images, labels, pred in predict_split(predict, prepared_dir, split, batch_size):
            update_confusion(confusion, labels, pred, palette.ignore_index)
            per_image.extend(image_ious(labels, pred, palette.k, palette.ignore_index))
            if palette.ignore_index is not None:
                ignored += int(np.count_nonzero(labels == palette.ignore_index))
    result = {"split": split, "prepared_dir": str(prepared_dir), "num_pixels": int(confusion.sum()),
              "ignored_pixels": ignored, "ignore_index": palette.ignore_index,
              "class_names": palette.names, **scores(confusion),
              "image_mean_iou": [round(float(v), 5) for v in per_image]}
    if full_size:
        result["full_size"] = full_size_scores(predict, prepared_dir, split, palette, batch_size)
    buffer = io.BytesIO()
    np.save(buffer, confusion)
    with writer_lock(run.root, RunDir):  # not while another command writes the run
        atomic_write_json(run.metrics, result)
        atomic_write_bytes(run.confusion, buffer.getvalue())
    return result


def full_size_scores(predict, prepared_dir, split: str, palette: Palette, batch_size: int = 8) -> dict:
    """Scores of the predictions at the source labels' own size: the probabilities resized
    (bilinear) to each label file's size, then the class of each pixel."""
    import cv2

    from seglib.data.splits import open_split, source_labels

    data = open_split(prepared_dir, split)
    labels = source_labels(prepared_dir, split)
    confusion, sizes = np.zeros((palette.k, palette.k), np.int64), set()
    for start in range(0, len(data), batch_size):
        for probs in predict(np.asarray(data.images[start:start + batch_size], np.float32)):
            _, truth = next(labels)
            sizes.add(f"{truth.shape[0]}x{truth.shape[1]}")
            if probs.shape[:2] != truth.shape:
                probs = cv2.resize(probs, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
            update_confusion(confusion, truth, probs.reshape(*truth.shape, -1).argmax(-1), palette.ignore_index)
    return {"label_sizes": sorted(sizes), "num_pixels": int(confusion.sum()),
            **{k: v for k, v in scores(confusion).items() if k != "per_class"}}


def predict_split(predict, prepared_dir: str | os.PathLike, split: str = "test", batch_size: int = 8):
    """Yield ``(row_index, images, labels, predicted labels)`` batch by batch over a split; ``predict``:
    images -> probabilities (:func:`~seglib.training.saved.keras_predictor`)."""
    from seglib.training.pipeline import make_dataset

    start = 0
    for images, labels in make_dataset(prepared_dir, split, batch_size):
        pred = predict(images).argmax(-1).astype(np.uint8)
        yield np.arange(start, start + len(pred)), np.asarray(images), np.asarray(labels), pred
        start += len(pred)


def predict_rows(run_dir: str | os.PathLike, prepared_dir: str | os.PathLike, split: str,
                 rows) -> tuple[np.ndarray, ...]:
    """``(images, labels, predicted labels)`` of the given rows of a split, by the run's best model."""
    from seglib.data.splits import open_split
    from seglib.training.saved import run_model

    data = open_split(prepared_dir, split)
    rows = [int(r) for r in rows]
    images = np.stack([np.asarray(data.images[r]) for r in rows])
    labels = np.stack([np.asarray(data.labels[r]) for r in rows])
    pred = run_model(RunDir(run_dir).model)[1](images.astype(np.float32)).argmax(-1).astype(np.uint8)
    return images, labels, pred


def best_and_worst(metrics: dict, n: int = 2) -> list[tuple[int, str]]:
    """``(row, title)`` of the ``n`` best and ``n`` worst images of the evaluated split by mean IoU."""
    ious = np.array(metrics["image_mean_iou"], np.float64)
    order = [int(i) for i in np.argsort(np.nan_to_num(ious, nan=-1.0), kind="stable")]
    best = order[::-1][: min(n, len(order))]
    worst = [r for r in order[:n] if r not in best]
    return ([(r, f"best #{r} IoU {ious[r]:.2f}") for r in best]
            + [(r, f"worst #{r} IoU {ious[r]:.2f}") for r in worst])
