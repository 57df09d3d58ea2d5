"""The training losses: cross-entropy, class-weighted CE, soft Dice, CE + Dice and online hard
example mining (OHEM) CE, each leaving the ignore label's pixels out."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class LossInputs:
    """What a loss factory may use: the classes, the class weights (``weighted_ce``), the ignore label
    and OHEM's two settings."""

    num_classes: int
    weights: np.ndarray | None = None
    ignore_index: int | None = None
    ohem_threshold: float = 0.7
    ohem_min_kept: float = 1 / 16

    def valid(self, y_true):
        """1 at the pixels that count, 0 at the ignore label's."""
        from keras import ops

        if self.ignore_index is None:
            return ops.ones_like(ops.cast(y_true, "float32"))
        return ops.cast(ops.not_equal(ops.cast(y_true, "int32"), self.ignore_index), "float32")

    def labels(self, y_true):
        """The labels with the ignore label's pixels set to class 0 (their weight is 0)."""
        from keras import ops

        return ops.where(self.valid(y_true) > 0, ops.cast(y_true, "int32"), 0)


def cross_entropy(the: LossInputs):
    import keras

    return keras.losses.SparseCategoricalCrossentropy(ignore_class=the.ignore_index)


def weighted_cross_entropy(the: LossInputs):
    """Cross-entropy with each pixel weighted by its true class's weight (:func:`class_weights`)."""
    from keras import ops

    if the.weights is None:
        raise ValueError("weighted_ce needs class weights (class_weights of the training split's shares)")
    ce = cross_entropy(the)

    def loss(y_true, y_pred):
        pixel_weights = ops.take(ops.convert_to_tensor(the.weights), the.labels(y_true)) * the.valid(y_true)
        return ce(y_true, y_pred, sample_weight=pixel_weights)
    return loss


def soft_dice(the: LossInputs):
    """1 - the mean over classes of the soft Dice of the batch (every class weighs the same)."""
    from keras import ops

    def loss(y_true, y_pred):
        keep = ops.expand_dims(the.valid(y_true), -1)
        onehot = ops.one_hot(the.labels(y_true), the.num_classes) * keep
        y_pred = y_pred * keep
        axes = (0, 1, 2)
        inter = ops.sum(onehot * y_pred, axis=axes)
        total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
        return 1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0))
    return loss


def cross_entropy_and_dice(the: LossInputs):
    ce, dice = cross_entropy(the), soft_dice(the)
    return lambda y_true, y_pred: ce(y_true, y_pred) + dice(y_true, y_pred)


def ohem_cross_entropy(the: LossInputs):
    """Cross-entropy averaged over the hard pixels only (:func:`ohem_mask`)."""
    from keras import ops

    def loss(y_true, y_pred):
        keep = the.valid(y_true)
        p_true = ops.sum(ops.one_hot(the.labels(y_true), the.num_classes) * ops.cast(y_pred, "float32"), axis=-1)
        hard = ops.stop_gradient(ohem_mask(p_true, keep, the.ohem_threshold, the.ohem_min_kept))
        return ops.sum(-ops.log(ops.clip(p_true, 1e-7, 1.0)) * hard) / ops.maximum(ops.sum(hard), 1.0)
    return loss


# Every training loss: name -> (factory, help). --loss's choices and help derive from it.
LOSSES = {
    "ce": (cross_entropy, "cross-entropy"),
    "weighted_ce": (weighted_cross_entropy, "class-weighted CE"),
    "dice": (soft_dice, "soft Dice"),
    "ce_dice": (cross_entropy_and_dice, "CE + Dice"),
    "ohem": (ohem_cross_entropy, "OHEM CE (hard pixels only)"),
}


def losses_table() -> str:
    """The registry as a Markdown table (docs/notebooks.md, written by ``make notebooks``)."""
    return "\n".join(["| `--loss` | what | its factory |", "|---|---|---|"] + [
        f"| `{name}` | {help} | `{factory.__name__}` |" for name, (factory, help) in LOSSES.items()])


def make_loss(name: str, num_classes: int, weights=None, ignore_index: int | None = None,
              ohem_threshold: float = 0.7, ohem_min_kept: float = 1 / 16):
    """The training loss ``name`` of :data:`LOSSES`; pixels labelled ``ignore_index`` add nothing to it."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name][0](LossInputs(num_classes, weights, ignore_index, ohem_threshold, ohem_min_kept))
