"""The training losses: cross-entropy, class-weighted CE, soft Dice and CE + Dice, each leaving
the ignore label's pixels out."""
from __future__ import annotations

import numpy as np


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
