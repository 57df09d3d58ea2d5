"""The training losses: cross-entropy, class-weighted CE, soft Dice, CE + Dice and online hard
example mining (OHEM) CE, each leaving the ignore label's pixels out."""
from __future__ import annotations

import numpy as np


def class_weights(shares, floor: float = 1e-4) -> np.ndarray:
    """Inverse square root of the class pixel shares, normalised to a pixel-weighted mean of 1."""
    shares = np.maximum(np.asarray(shares, np.float64), floor)
    weights = 1.0 / np.sqrt(shares)
    return (weights / (weights * shares).sum()).astype(np.float32)


def ohem_mask(p_true, valid, threshold: float = 0.7, min_kept: float = 1 / 16):
    """1 at the hard pixels of a batch: valid pixels whose true-class probability is below
    ``threshold``, and at least the ``min_kept`` share of the valid pixels with the lowest (the
    hardest), so that a well-fitted batch still trains on its worst pixels."""
    from keras import ops

    flat = ops.reshape(ops.where(valid > 0, p_true, 2.0), (-1,))  # ignored pixels sort last
    k = ops.maximum(ops.cast(ops.floor(ops.sum(valid) * min_kept + 1e-3), "int32"), 1)
    kth = ops.take(ops.sort(flat), k - 1)  # the k-th lowest probability
    return ops.cast(ops.logical_or(p_true < threshold, p_true <= kth), "float32") * valid


def make_loss(name: str, num_classes: int, weights=None, ignore_index: int | None = None,
              ohem_threshold: float = 0.7, ohem_min_kept: float = 1 / 16):
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

    def ohem_ce(y_true, y_pred):
        """Cross-entropy averaged over the hard pixels only (:func:`ohem_mask`)."""
        keep = valid(y_true)
        labels = ops.where(keep > 0, ops.cast(y_true, "int32"), 0)
        p_true = ops.sum(ops.one_hot(labels, num_classes) * ops.cast(y_pred, "float32"), axis=-1)
        hard = ops.stop_gradient(ohem_mask(p_true, keep, ohem_threshold, ohem_min_kept))
        return ops.sum(-ops.log(ops.clip(p_true, 1e-7, 1.0)) * hard) / ops.maximum(ops.sum(hard), 1.0)

    if name == "ce":
        return ce
    if name == "ohem":
        return ohem_ce
    if name == "weighted_ce":
        return weighted_ce
    if name == "dice":
        return soft_dice
    return lambda y_true, y_pred: ce(y_true, y_pred) + soft_dice(y_true, y_pred)
