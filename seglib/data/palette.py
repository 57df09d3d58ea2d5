"""The K-Means palette: the mask colours, fitted on a sample of real training-mask pixels.

Pixels are drawn from the flat parts of the masks only (where a 3x3 box barely varies), so the
blended class borders and JPEG ringing do not pull the centroids away from the true colours.
Clusters are ordered by pixel share, so class 0 is the most common colour and ids are stable
for a given seed; the fit runs on one thread, so ``palette.json`` is the same on any machine.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from seglib.fsutil import atomic_write_json

FIT_RANGE = 30  # K-Means is fitted on pixels whose 3x3 box varies less than this (pure colours)
# Flat mask pixels lie within about 4-8 RGB units of their class colour (90th percentile: synthetic
# 4.2, real sample 8.2), and distinct Cityscapes colours are at least 20 apart: two centroids closer
# than this are one mask colour that K-Means split in two.
NOISE_DISTANCE = 12.0
PALETTE_FORMAT = "seglib-palette-1"

_BOX3 = np.ones((3, 3), np.uint8)


@dataclass
class Palette:
    """K class colours in RGB: K-Means cluster centres ordered by the share of training pixels they
    hold, or a labelled dataset's declared colours (``seglib.data.idmasks``)."""

    centroids: np.ndarray  # (K, 3) float32, RGB
    shares: np.ndarray  # (K,) float64, fraction of sampled pixels per cluster
    seed: int = 0
    sample_pixels: int = 0
    names: list[str] = field(default_factory=list)
    ignore_index: int | None = None  # a label value that is no class (e.g. 255): left out of loss and metrics

    @property
    def k(self) -> int:
        return int(len(self.centroids))

    @property
    def colours(self) -> np.ndarray:
        """Centroids rounded to uint8 RGB: the colour drawn for each class."""
        return np.clip(np.rint(self.centroids), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        return {
            "format": PALETTE_FORMAT,
            "k": self.k,
            "seed": int(self.seed),
            "sample_pixels": int(self.sample_pixels),
            "ignore_index": self.ignore_index,
            "classes": [
                {
                    "id": i,
                    "rgb": [round(float(c), 4) for c in self.centroids[i]],
                    "share": round(float(self.shares[i]), 8),
                    **({"name": self.names[i]} if self.names else {}),
                }
                for i in range(self.k)
            ],
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Palette:
        classes = data["classes"]
        if len(classes) != data["k"]:
            raise ValueError(f"palette says k={data['k']} but lists {len(classes)} classes")
        return cls(
            centroids=np.array([c["rgb"] for c in classes], dtype=np.float32),
            shares=np.array([c["share"] for c in classes], dtype=np.float64),
            seed=int(data.get("seed", 0)),
            sample_pixels=int(data.get("sample_pixels", 0)),
            names=[c["name"] for c in classes] if all("name" in c for c in classes) else [],
            ignore_index=data.get("ignore_index"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Palette:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid seglib palette ({exc})") from exc


def flat_pixels(mask: np.ndarray, flat_range: int = FIT_RANGE) -> np.ndarray:
    """Boolean (H, W): pixels whose 3x3 box (cut at the border) varies less than ``flat_range``
    in every channel."""
    mask = np.ascontiguousarray(mask)
    span = cv2.dilate(mask, _BOX3) - cv2.erode(mask, _BOX3)
    return np.maximum(np.maximum(span[..., 0], span[..., 1]), span[..., 2]) < flat_range


def draw_pixels(mask: np.ndarray, count: int, seed: int, index: int,
                flat_range: int | None = FIT_RANGE) -> np.ndarray:
    """``count`` pixels (count, 3) drawn at random, with replacement, from the flat pixels of
    ``mask`` (from all of them when it has none, or when ``flat_range`` is None). The random
    stream is seeded by ``(seed, index)``, so masks can be drawn from in any order or thread."""
    rng = np.random.default_rng([seed, index])
    pixels = np.asarray(mask).reshape(-1, 3)
    where = np.flatnonzero(flat_pixels(mask, flat_range)) if flat_range is not None else np.empty(0, np.intp)
    if where.size:
        return pixels[where[rng.integers(0, where.size, size=count)]]
    return pixels[rng.integers(0, len(pixels), size=count)]


def sample_pixels(masks, n: int, seed: int = 0, flat_range: int | None = FIT_RANGE, workers: int = 1) -> np.ndarray:
    """Draw ``n`` pixels (n, 3) from ``masks`` (a sequence of (H, W, 3) arrays or memmaps),
    ``ceil(n / len(masks))`` from each (see :func:`draw_pixels`), on ``workers`` threads; the
    sample is the same for any thread count."""
    if len(masks) == 0:
        raise ValueError("no masks to sample pixels from (the training split is empty)")
    per_mask = -(-int(n) // len(masks))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        drawn = list(pool.map(lambda i: draw_pixels(masks[i], per_mask, seed, i, flat_range), range(len(masks))))
    return np.concatenate(drawn)[:n]


def fit_palette(pixels: np.ndarray, k: int = 10, seed: int = 0) -> Palette:
    """Fit K-Means on RGB pixels (N, 3) uint8 and order clusters by pixel share.

    Identical colours are merged first and weighted by their count (exactly the same objective,
    far fewer points), which keeps fitting fast on 200k pixels.
    """
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    keys = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    unique, counts = np.unique(keys, return_counts=True)
    if len(unique) < k:
        raise ValueError(
            f"only {len(unique)} distinct colours among {len(pixels)} sampled mask pixels: "
            f"cannot fit {k} clusters (use fewer --clusters)"
        )
    colours = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    with threadpool_limits(1):  # one thread: the same centroids on any core count
        kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(colours, sample_weight=counts)
    shares = np.bincount(kmeans.labels_, weights=counts, minlength=k) / counts.sum()
    order = np.argsort(-shares, kind="stable")
    return Palette(
        centroids=kmeans.cluster_centers_[order].astype(np.float32),
        shares=shares[order],
        seed=seed,
        sample_pixels=len(pixels),
    )


def close_classes(palette: Palette, distance: float = NOISE_DISTANCE) -> list[dict]:
    """Pairs of classes whose colours lie within JPEG-noise ``distance`` (RGB units) of each other:
    most likely one mask colour split in two by K-Means, which no model can learn apart (fewer
    clusters would help). Each: ``{"classes": [i, j], "names": [...], "distance": d, "message": ...}``."""
    found = []
    for i in range(palette.k):
        for j in range(i + 1, palette.k):
            d = float(np.linalg.norm(palette.centroids[i] - palette.centroids[j]))
            if d < distance:
                names = [palette.names[i], palette.names[j]] if palette.names else [str(i), str(j)]
                found.append({"classes": [i, j], "names": names, "distance": round(d, 2), "message": (
                    f"classes {i} ({names[0]}) and {j} ({names[1]}) are {d:.1f} RGB units apart, within JPEG "
                    f"noise ({distance:g}): probably one mask colour split in two; try {palette.k - 1} clusters")})
    return found
