"""Label quality: purity of prepared labels against the true labelIds saved beside the pairs.

Both the shared real sample and the synthetic generator store ``ids/<split>/<n>.png`` next to
``<split>/<n>.jpg``. True ids are compared as Cityscapes *colour* classes, since ids that share
a colour cannot be told apart from a colour mask.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from seglib.data.cityscapes import ids_to_colour_classes
from seglib.data.splits import open_split


def purity(labels: np.ndarray, truth: np.ndarray, ignore: int = 255) -> float:
    """Share of pixels whose cluster's majority true class is their own true class.

    Pixels whose truth is ``ignore`` are left out.
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    truth = np.asarray(truth).ravel().astype(np.int64)
    keep = truth != ignore
    labels, truth = labels[keep], truth[keep]
    if labels.size == 0:
        raise ValueError("no pixels with a known true class")
    n_truth = int(truth.max()) + 1
    table = np.bincount(labels * n_truth + truth, minlength=(int(labels.max()) + 1) * n_truth)
    table = table.reshape(-1, n_truth)
    return float(table.max(axis=1).sum() / labels.size)


def truth_path(pair_file: str | os.PathLike) -> Path:
    """``DATA/<split>/<n>.jpg`` -> ``DATA/ids/<split>/<n>.png`` (flat: ``DATA/ids/<n>.png``)."""
    pair_file = Path(pair_file)
    split_dir = pair_file.parent
    if (split_dir.parent / "ids" / split_dir.name).is_dir():
        return split_dir.parent / "ids" / split_dir.name / f"{pair_file.stem}.png"
    return split_dir / "ids" / f"{pair_file.stem}.png"


def load_truth(pair_file: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """True colour classes (H, W) of a pair's mask, resized to ``size`` (H, W) with nearest neighbour."""
    path = truth_path(pair_file)
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        raise FileNotFoundError(f"{path}: no readable single-channel labelId image for {pair_file}")
    if ids.shape != tuple(size):
        ids = cv2.resize(ids, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return ids_to_colour_classes(ids)


def split_purity(prepared_dir: str | os.PathLike, split: str = "test") -> float:
    """Purity of a prepared split's labels against the true colour classes."""
    data = open_split(prepared_dir, split)
    size = data.labels.shape[1:3]
    truth = np.stack([load_truth(f, size) for f in data.files])
    return purity(np.asarray(data.labels), truth)
