"""Segmentation metrics from a confusion matrix accumulated batch by batch.

``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``. Classes that appear
neither in the truth nor in the predictions are *absent*: their per-class scores are NaN and
they are left out of the means (the result lists them). A class present but never predicted
right has IoU 0 and stays in the means.
"""
from __future__ import annotations

import numpy as np


def update_confusion(confusion: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                     ignore_index: int | None = None) -> np.ndarray:
    """Add one batch of integer label maps to ``confusion`` (K, K) in place; returns it. Pixels whose
    truth is ``ignore_index`` are left out."""
    k = confusion.shape[0]
    truth = np.asarray(truth, np.int64).ravel()
    pred = np.asarray(pred, np.int64).ravel()
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction sizes differ: {truth.shape} vs {pred.shape}")
    if ignore_index is not None:
        keep = truth != ignore_index
        truth, pred = truth[keep], pred[keep]
    if truth.size and (truth.max() >= k or pred.max() >= k or truth.min() < 0 or pred.min() < 0):
        raise ValueError(f"labels must be in [0, {k})")
    confusion += np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
    return confusion


def _safe_divide(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(confusion: np.ndarray) -> dict:
    """Every standard score from a confusion matrix; per-class values are lists (NaN = absent)."""
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    tp = np.diag(confusion)
    true_count = confusion.sum(1)
    pred_count = confusion.sum(0)
    fp, fn = pred_count - tp, true_count - tp
    tn = total - tp - fp - fn
    absent = (true_count == 0) & (pred_count == 0)
    iou = _safe_divide(tp, tp + fp + fn)
    dice = _safe_divide(2 * tp, 2 * tp + fp + fn)
    precision = _safe_divide(tp, pred_count)
    recall = _safe_divide(tp, true_count)
    specificity = _safe_divide(tn, tn + fp)
    for values in (iou, dice, precision, recall, specificity):
        values[absent] = np.nan

    def mean(values):
        kept = values[~absent & ~np.isnan(values)]
        return float(kept.mean()) if kept.size else float("nan")

    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": mean(recall),
        "mean_iou": mean(iou),
        "mean_dice": mean(dice),
        "absent_classes": [int(i) for i in np.flatnonzero(absent)],
        "per_class": {
            "iou": iou.tolist(), "dice": dice.tolist(), "precision": precision.tolist(),
            "recall": recall.tolist(), "specificity": specificity.tolist(),
            "pixel_share": (true_count / total if total else true_count).tolist(),
        },
    }


def image_ious(truth, pred, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Mean IoU of each image of a batch over the classes present in its truth or prediction
    (ignored pixels left out)."""
    return np.array([scores(update_confusion(np.zeros((num_classes, num_classes), np.int64), t, p,
                                             ignore_index))["mean_iou"]
                     for t, p in zip(truth, pred, strict=True)])


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
