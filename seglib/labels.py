"""Mask colours -> class ids with K-Means fitted on real mask pixels.

The palette is fitted on a random sample of pixels from the training masks only, and its
clusters are ordered by pixel share, so label 0 is the most common colour and ids are stable
for a given seed. Masks are labelled through a lookup table over quantised colours (one array
index per pixel) instead of a per-image ``KMeans.predict``.

Mask edges are blends of two classes (the masks were downsampled, then JPEG-compressed), and a
blend such as road+black lands nearest to a third class (building grey). :func:`resolve_edges`
relabels such pixels as the nearer of the two neighbouring classes they blend.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numba
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from seglib.fsutil import atomic_write_json

LUT_BITS = 6  # bits kept per channel in the lookup table (64**3 entries); _label_image assumes 6
FIT_RANGE = 30  # K-Means is fitted on pixels whose 3x3 box varies less than this (pure colours)
EDGE_TAU = 6.0  # colours farther than this from every centroid (RGB units) may be blends
MAX_RESOLVE_K = 16  # edge resolution keeps candidate classes as 16-bit sets; more clusters: no resolution
# Flat mask pixels lie within about 4-8 RGB units of their class colour (90th percentile: synthetic
# 4.2, real sample 8.2), and distinct Cityscapes colours are at least 20 apart: two centroids closer
# than this are one mask colour that K-Means split in two.
NOISE_DISTANCE = 12.0
PALETTE_FORMAT = "seglib-palette-1"


def _lut_grid() -> np.ndarray:
    """Centre colour of every lookup-table cell, in table order (r<<12 | g<<6 | b)."""
    step = 1 << (8 - LUT_BITS)
    levels = np.arange(1 << LUT_BITS, dtype=np.float32) * step + (step - 1) / 2.0
    return np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)


@dataclass
class Palette:
    """K cluster centres in RGB, ordered by the share of training pixels they hold."""

    centroids: np.ndarray  # (K, 3) float32, RGB
    shares: np.ndarray  # (K,) float64, fraction of sampled pixels per cluster
    seed: int = 0
    sample_pixels: int = 0
    names: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(len(self.centroids))

    @property
    def colours(self) -> np.ndarray:
        """Centroids rounded to uint8 RGB: the colour drawn for each class."""
        return np.clip(np.rint(self.centroids), 0, 255).astype(np.uint8)

    @cached_property
    def _codes(self) -> np.ndarray:
        """Per quantised colour (index r<<12 | g<<6 | b, 6 bits each): the nearest centroid, with
        bit 7 set when even that centroid is farther than ``EDGE_TAU`` (a possible blend). Without
        edge resolution (more than ``MAX_RESOLVE_K`` clusters) the code is the plain centroid id."""
        return _lookup_codes(np.ascontiguousarray(self.centroids, dtype=np.float32), np.float32(EDGE_TAU**2),
                             self.k <= MAX_RESOLVE_K)

    @property
    def lut(self) -> np.ndarray:
        """Nearest centroid of every quantised colour (index r<<12 | g<<6 | b, 6 bits each)."""
        return self._codes & 127 if self.k <= MAX_RESOLVE_K else self._codes

    @property
    def far(self) -> np.ndarray:
        """For every quantised colour: is it farther than ``EDGE_TAU`` from every centroid?"""
        if self.k <= MAX_RESOLVE_K:
            return self._codes >= 128
        return ((_lut_grid() - self.centroids[self.lut]) ** 2).sum(1) > EDGE_TAU**2

    @cached_property
    def _kernel_tables(self) -> tuple:
        """What :func:`_label_image` looks up: the lookup codes, YCbCr centres, squared segment
        lengths between centres, and for every set of candidate classes (a bit set) its size and
        members in ascending order."""
        centres = np.ascontiguousarray(self.centroids.astype(np.float32) @ _YCC_WEIGHTED)
        step = centres[None, :, :] - centres[:, None, :]
        denom = np.maximum(step[..., 0] * step[..., 0] + step[..., 1] * step[..., 1] + step[..., 2] * step[..., 2],
                           np.float32(1e-6)).astype(np.float32)
        k = min(self.k, MAX_RESOLVE_K)
        sets = np.arange(1 << k)
        member = ((sets[:, None] >> np.arange(k)) & 1).astype(bool)
        sizes = member.sum(1).astype(np.uint8)
        order = np.argsort(~member, axis=1, kind="stable").astype(np.uint8)  # members first, ascending
        return self._codes, centres, denom, sizes, order

    def build_tables(self) -> "Palette":
        """Build the labelling tables now rather than on first use, so that threads labelling
        with this palette find them ready instead of each building its own."""
        self._kernel_tables  # noqa: B018 - a cached property: reading it builds it
        return self

    def assign(self, masks: np.ndarray, resolve: bool = True) -> np.ndarray:
        """Label every pixel of ``masks`` (..., 3) uint8 RGB; returns (...) uint8 class ids.

        Images (H, W, 3) or batches (N, H, W, 3) get edge resolution (:func:`resolve_edges`)
        unless ``resolve`` is False; other shapes are labelled pixel by pixel.
        """
        masks = np.asarray(masks)
        if masks.dtype != np.uint8 or masks.shape[-1] != 3:
            raise ValueError(f"masks must be uint8 RGB (..., 3), got {masks.dtype} {masks.shape}")
        if masks.ndim < 3:
            index = (masks[..., 0] >> 2).astype(np.int32) << 12
            index |= (masks[..., 1] >> 2).astype(np.int32) << 6
            index |= masks[..., 2] >> 2
            return self.lut[index]
        images = np.ascontiguousarray(masks.reshape(-1, *masks.shape[-3:]))
        out = np.empty(images.shape[:3], np.uint8)
        tables = self._kernel_tables
        for i in range(len(images)):
            _label_image(images[i], *tables, resolve, out[i])
        return out.reshape(masks.shape[:-1])

    def colourize(self, labels: np.ndarray) -> np.ndarray:
        """Render class ids back to RGB with the palette colours (for plots and legends)."""
        labels = np.asarray(labels)
        if labels.size and labels.max() >= self.k:
            raise ValueError(f"label {int(labels.max())} is outside the palette (K={self.k})")
        return self.colours[labels]

    def to_dict(self) -> dict:
        return {
            "format": PALETTE_FORMAT,
            "k": self.k,
            "seed": int(self.seed),
            "sample_pixels": int(self.sample_pixels),
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
    def from_dict(cls, data: dict) -> "Palette":
        classes = data["classes"]
        if len(classes) != data["k"]:
            raise ValueError(f"palette says k={data['k']} but lists {len(classes)} classes")
        return cls(
            centroids=np.array([c["rgb"] for c in classes], dtype=np.float32),
            shares=np.array([c["share"] for c in classes], dtype=np.float64),
            seed=int(data.get("seed", 0)),
            sample_pixels=int(data.get("sample_pixels", 0)),
            names=[c["name"] for c in classes] if all("name" in c for c in classes) else [],
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Palette":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid seglib palette ({exc})") from exc


def nearest_centroid(pixels: np.ndarray, centroids: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Index of the nearest centroid (squared RGB distance) for each row of ``pixels`` (N, 3)."""
    pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 3)
    centroids = np.asarray(centroids, dtype=np.float32)
    out = np.empty(len(pixels), dtype=np.uint8)
    c_sq = (centroids**2).sum(axis=1)
    for start in range(0, len(pixels), chunk):
        block = pixels[start : start + chunk]
        out[start : start + chunk] = np.argmin(c_sq[None, :] - 2.0 * block @ centroids.T, axis=1)
    return out


_BOX3 = np.ones((3, 3), np.uint8)
# RGB -> YCbCr (BT.601) with luma scaled by 2, so squared distances count it 4x
_YCC_WEIGHTED = (np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
) * np.array([[2.0], [1.0], [1.0]], np.float32)).T


@numba.njit(cache=True, nogil=True)
def _lookup_codes(centroids, tau_sq, with_far):  # pragma: no cover - compiled
    """The lookup table of :attr:`Palette._codes`, one pass over the 64**3 cell centres.

    Nearest by ``|c|^2 - 2 p.c`` (as :func:`nearest_centroid`), computed here in plain loops:
    a BLAS product would leave its threads spinning while the labelling threads need the cores.
    """
    k = centroids.shape[0]
    codes = np.empty(1 << 18, np.uint8)
    c_sq = np.empty(k, np.float32)
    for c in range(k):
        c_sq[c] = centroids[c, 0] * centroids[c, 0] + centroids[c, 1] * centroids[c, 1] + centroids[c, 2] * centroids[c, 2]
    for r in range(64):
        pr = np.float32(r * 4 + 1.5)
        for g in range(64):
            pg = np.float32(g * 4 + 1.5)
            for b in range(64):
                pb = np.float32(b * 4 + 1.5)
                best, best_d = 0, np.float32(np.inf)
                for c in range(k):
                    d = c_sq[c] - np.float32(2.0) * (pr * centroids[c, 0] + pg * centroids[c, 1] + pb * centroids[c, 2])
                    if d < best_d:
                        best, best_d = c, d
                if not with_far:
                    codes[(r << 12) | (g << 6) | b] = best
                    continue
                e = (pr - centroids[best, 0]) ** 2 + (pg - centroids[best, 1]) ** 2 + (pb - centroids[best, 2]) ** 2
                codes[(r << 12) | (g << 6) | b] = best | (np.uint8(128) if e > tau_sq else np.uint8(0))
    return codes


@numba.njit(cache=True, nogil=True, fastmath=True)
def _label_image(mask, code, centres, denom, set_sizes, set_members, resolve, out):  # pragma: no cover - compiled
    """Label one (H, W, 3) mask into ``out`` (H, W); see :func:`resolve_edges` for ``resolve``.

    Passes: table lookup; 3x3 uniformity (clearing the edge flag of uniform pixels) and the
    classes of uniform pixels per 4x4 block as bits; those bits spread to the neighbouring
    blocks; then, row by row, the flagged pixels are gathered and resolved: by the nearest
    candidate when the own class is one (see :func:`resolve_edges`), else by the blend test,
    branch-free for two candidates (the common case).
    """
    height, width = mask.shape[0], mask.shape[1]
    k = centres.shape[0]
    padded = (width + 15) & ~7  # flag rows are read as 64-bit words, 8 pixels at a time
    for y in range(height):
        row = out[y]
        for x in range(width):
            row[x] = code[((np.int32(mask[y, x, 0]) >> 2) << 12) | ((np.int32(mask[y, x, 1]) >> 2) << 6)
                          | (np.int32(mask[y, x, 2]) >> 2)]
    if k > MAX_RESOLVE_K:  # plain centroid ids, no far flag (see Palette._codes)
        return
    if not resolve:
        for y in range(height):
            row = out[y]
            for x in range(width):
                row[x] &= 127
        return
    flag = np.zeros((height, padded), np.bool_)  # edge candidates: far colour, then also not uniform
    for y in range(height):
        row, frow = out[y], flag[y]
        for x in range(width):
            value = row[x]
            frow[x] = value >= 128
            row[x] = value & 127
    grid_h, grid_w = (height + 3) >> 2, (width + 3) >> 2
    grid = np.zeros((grid_h, grid_w), np.uint16)
    bits = np.zeros(grid_w * 4, np.uint16)  # class bit of each uniform pixel of the row (0: not uniform)
    for y in range(1, height - 1):
        above, row, below, frow = out[y - 1], out[y], out[y + 1], flag[y]
        for x in range(1, width - 1):
            label = row[x]
            same = ((above[x - 1] == label) & (above[x] == label) & (above[x + 1] == label)
                    & (row[x - 1] == label) & (row[x + 1] == label)
                    & (below[x - 1] == label) & (below[x] == label) & (below[x + 1] == label))
            frow[x] = frow[x] & ~same
            bits[x] = np.uint16(same) << label
        cells = grid[y >> 2]
        for g in range(grid_w):
            x = g << 2
            cells[g] |= bits[x] | bits[x + 1] | bits[x + 2] | bits[x + 3]
    across = np.zeros((grid_h, grid_w), np.uint16)
    for gy in range(grid_h):
        for gx in range(grid_w):
            value = grid[gy, gx]
            if gx > 0:
                value |= grid[gy, gx - 1]
            if gx + 1 < grid_w:
                value |= grid[gy, gx + 1]
            across[gy, gx] = value
    support = np.empty((grid_h, grid_w), np.uint16)  # candidate classes of each 4x4 block
    for gy in range(grid_h):
        for gx in range(grid_w):
            value = across[gy, gx]
            if gy > 0:
                value |= across[gy - 1, gx]
            if gy + 1 < grid_h:
                value |= across[gy + 1, gx]
            support[gy, gx] = value
    big = np.float32(3.0e38)
    w00, w10, w20 = _YCC_WEIGHTED[0, 0], _YCC_WEIGHTED[1, 0], _YCC_WEIGHTED[2, 0]
    w01, w11, w21 = _YCC_WEIGHTED[0, 1], _YCC_WEIGHTED[1, 1], _YCC_WEIGHTED[2, 1]
    w02, w12, w22 = _YCC_WEIGHTED[0, 2], _YCC_WEIGHTED[1, 2], _YCC_WEIGHTED[2, 2]
    words = flag.view(np.uint64)
    xs = np.empty(padded, np.int32)
    for y in range(height):
        row_out, frow, block_row = out[y], flag[y], support[y >> 2]
        found = 0
        for word in range(padded >> 3):  # gather the flagged pixels of the row, skipping empty words
            if words[y, word] == 0:
                continue
            base = word << 3
            for j in range(8):
                xs[found] = base + j
                found += np.int32(frow[base + j])
        for i in range(found):
            x = xs[i]
            classes = block_row[x >> 2]
            n = set_sizes[classes]
            if n < 2:
                continue
            members = set_members[classes]
            r, g, b = np.float32(mask[y, x, 0]), np.float32(mask[y, x, 1]), np.float32(mask[y, x, 2])
            c0 = r * w00 + g * w10 + b * w20
            c1 = r * w01 + g * w11 + b * w21
            c2 = r * w02 + g * w12 + b * w22
            own = row_out[x]
            if (classes >> own) & 1:  # own class is a candidate: the nearest candidate, own on a tie
                if n == 2:
                    a, bb = members[0], members[1]
                    da = (c0 - centres[a, 0]) ** 2 + (c1 - centres[a, 1]) ** 2 + (c2 - centres[a, 2]) ** 2
                    db = (c0 - centres[bb, 0]) ** 2 + (c1 - centres[bb, 1]) ** 2 + (c2 - centres[bb, 2]) ** 2
                    row_out[x] = bb if (db < da) | ((db == da) & (own == bb)) else a
                else:
                    first, d_first, d_own = own, big, big
                    for j in range(n):
                        c = members[j]
                        d = (c0 - centres[c, 0]) ** 2 + (c1 - centres[c, 1]) ** 2 + (c2 - centres[c, 2]) ** 2
                        d_own = d if c == own else d_own
                        lt_first = d < d_first
                        first = c if lt_first else first
                        d_first = d if lt_first else d_first
                    row_out[x] = own if d_own <= d_first else first
                continue
            own_dist = (c0 - centres[own, 0]) ** 2 + (c1 - centres[own, 1]) ** 2 + (c2 - centres[own, 2]) ** 2
            # a blend of the nearest candidate ("first", the lower id on a tie) and the second?
            if n == 2:  # branch-free
                a, bb = members[0], members[1]
                a0, a1, a2 = centres[a, 0], centres[a, 1], centres[a, 2]
                b0, b1, b2 = centres[bb, 0], centres[bb, 1], centres[bb, 2]
                da = (c0 - a0) ** 2 + (c1 - a1) ** 2 + (c2 - a2) ** 2
                db = (c0 - b0) ** 2 + (c1 - b1) ** 2 + (c2 - b2) ** 2
                swap = db < da
                first = bb if swap else a
                f0, f1, f2 = (b0 if swap else a0), (b1 if swap else a1), (b2 if swap else a2)
                s0, s1, s2 = ((a0 - b0) if swap else (b0 - a0)), ((a1 - b1) if swap else (b1 - a1)), (
                    (a2 - b2) if swap else (b2 - a2))
                length = denom[a, bb]
            else:
                first, second, d_first, d_second = 0, 0, big, big
                for j in range(n):
                    c = members[j]
                    d = (c0 - centres[c, 0]) ** 2 + (c1 - centres[c, 1]) ** 2 + (c2 - centres[c, 2]) ** 2
                    lt_first, lt_second = d < d_first, d < d_second
                    second = first if lt_first else (c if lt_second else second)
                    d_second = d_first if lt_first else (d if lt_second else d_second)
                    first = c if lt_first else first
                    d_first = d if lt_first else d_first
                f0, f1, f2 = centres[first, 0], centres[first, 1], centres[first, 2]
                s0, s1, s2 = centres[second, 0] - f0, centres[second, 1] - f1, centres[second, 2] - f2
                length = denom[first, second]
            t = ((c0 - f0) * s0 + (c1 - f1) * s1 + (c2 - f2) * s2) / length
            t = min(max(t, np.float32(0.0)), np.float32(1.0))
            residual = (c0 - f0 - t * s0) ** 2 + (c1 - f1 - t * s1) ** 2 + (c2 - f2 - t * s2) ** 2
            row_out[x] = first if residual < own_dist else own


@numba.njit(cache=True, nogil=True)
def _count_classes(labels, counts):  # pragma: no cover - compiled
    """Add the pixels per class id of ``labels`` (C-contiguous uint8) to ``counts`` (4, 256)
    (four interleaved histograms, so equal neighbours do not wait on one counter)."""
    flat = labels.reshape(-1)
    even = flat.size & ~3
    for i in range(0, even, 4):
        counts[0, flat[i]] += 1
        counts[1, flat[i + 1]] += 1
        counts[2, flat[i + 2]] += 1
        counts[3, flat[i + 3]] += 1
    for i in range(even, flat.size):
        counts[0, flat[i]] += 1


def label_counted(palette: Palette, masks, resolve: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Label ``masks`` (a sequence of (H, W, 3) uint8 RGB arrays of one size, or an (N, H, W, 3)
    array) and count the pixels of each class: returns ``(labels (N, H, W), counts (K,))``.

    This is what prepare runs in its worker threads: compiled calls that release the GIL, with
    next to no Python work per mask, so the threads scale.
    """
    if len(masks) == 0:
        return np.empty((0, 0, 0), np.uint8), np.zeros(palette.k, np.int64)
    shape = np.shape(masks[0])
    out = np.empty((len(masks), *shape[:2]), np.uint8)
    tables = palette._kernel_tables
    for i, mask in enumerate(masks):
        if mask.dtype != np.uint8 or mask.shape != shape or len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"mask {i}: expected uint8 {shape} RGB like the first, got {mask.dtype} {mask.shape}")
        _label_image(np.ascontiguousarray(mask), *tables, resolve, out[i])
    counts = np.zeros((4, 256), np.int64)
    _count_classes(out, counts)
    return out, counts.sum(0)[: palette.k]


def assign_chunks(palette: Palette, masks, workers: int = 0, resolve: bool = True, chunk: int = 16):
    """Label and count ``masks`` (a sequence of (H, W, 3) arrays) in chunks on ``workers``
    threads (0: one per core); yields :func:`label_counted`'s ``(labels, counts)`` per chunk, in
    order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        yield from pool.map(lambda i: label_counted(palette, masks[i : i + chunk], resolve),
                            range(0, len(masks), chunk))


def resolve_edges(mask: np.ndarray, palette: "Palette") -> np.ndarray:
    """Label one mask (H, W, 3), resolving blended edge pixels (see module docstring).

    An edge pixel is one whose 3x3 box of nearest-centroid labels is not uniform and whose colour
    is farther than ``EDGE_TAU`` from every centroid. Its candidates are the classes of uniform
    pixels nearby (the 12x12 pixels of the 4x4 blocks around its own block). When its colour lies
    closer to the segment between the two nearest candidates, A and B, than to its own centroid,
    it is a blend and takes whichever of A and B it is nearer to along the segment.

    When its own class is a candidate this is simply the nearest candidate (own class on a tie):
    the nearer of A and B is the nearer along the segment, and the segment's closest point is no
    farther than A, so it is always closer than the own centroid unless that is A; the compiled
    kernel takes that shortcut. Distances are in YCbCr with luma weighted 4x in squared
    distance, as JPEG keeps chroma at half resolution.
    """
    out = np.empty(mask.shape[:2], np.uint8)
    _label_image(np.ascontiguousarray(mask), *palette._kernel_tables, True, out)
    return out


def flat_pixels(mask: np.ndarray, flat_range: int) -> np.ndarray:
    """Boolean (H, W): pixels whose 3x3 box varies less than ``flat_range`` in every channel."""
    span = cv2.dilate(mask, _BOX3) - cv2.erode(mask, _BOX3)
    return np.maximum(np.maximum(span[..., 0], span[..., 1]), span[..., 2]) < flat_range


@numba.njit(cache=True, nogil=True)
def _flat_at(mask, indices, flat_range, out):  # pragma: no cover - compiled
    """``out[j]``: the pixel at flat index ``indices[j]`` of ``mask`` (H, W, 3) is flat, i.e. its
    3x3 box (cut at the image border) varies less than ``flat_range`` in every channel, exactly
    as :func:`flat_pixels` finds for the whole mask."""
    height, width = mask.shape[0], mask.shape[1]
    for j in range(indices.size):
        y = indices[j] // width
        x = indices[j] - y * width
        lo0 = lo1 = lo2 = np.int32(255)
        hi0 = hi1 = hi2 = np.int32(0)
        for yy in range(max(y - 1, 0), min(y + 2, height)):
            for xx in range(max(x - 1, 0), min(x + 2, width)):
                v0, v1, v2 = np.int32(mask[yy, xx, 0]), np.int32(mask[yy, xx, 1]), np.int32(mask[yy, xx, 2])
                lo0, hi0 = min(lo0, v0), max(hi0, v0)
                lo1, hi1 = min(lo1, v1), max(hi1, v1)
                lo2, hi2 = min(lo2, v2), max(hi2, v2)
        out[j] = (hi0 - lo0 < flat_range) & (hi1 - lo1 < flat_range) & (hi2 - lo2 < flat_range)


class PixelSampler:
    """Draws ``n`` random pixels from ``count`` masks, ``ceil(n / count)`` from each.

    A mask's pixels are uniform with replacement among its flat pixels (see
    :func:`flat_pixels`; among all its pixels when it has none, or when ``flat_range`` is None).
    Each mask has its own random stream, seeded by ``(seed, its index)``, so masks can be drawn
    from in any order, in worker threads, and the sample stays the same. Draws are by rejection,
    uniform candidates kept when their box is flat, so only about as many boxes are tested as
    pixels are drawn instead of the whole mask; a mask with few flat pixels falls back to
    finding all of them.
    """

    REJECTION_ROUNDS = 8

    def __init__(self, n: int, count: int, seed: int = 0, flat_range: int | None = FIT_RANGE):
        if count <= 0:
            raise ValueError("no masks to sample pixels from (the training split is empty)")
        self.n, self.count, self.seed, self.flat_range = int(n), int(count), int(seed), flat_range
        self.per_mask = -(-self.n // self.count)

    def draw(self, mask: np.ndarray, index: int) -> np.ndarray:
        """The pixels (per_mask, 3) drawn from ``mask`` (H, W, 3), the ``index``-th mask."""
        mask = np.ascontiguousarray(mask)
        rng = np.random.default_rng([self.seed, index])
        size, need, picks = mask.shape[0] * mask.shape[1], self.per_mask, []
        if self.flat_range is not None:
            for _ in range(self.REJECTION_ROUNDS):
                candidates = rng.integers(0, size, size=need * 3 // 2 + 16)  # masks are ~80% flat
                flat = np.empty(candidates.size, np.bool_)
                _flat_at(mask, candidates, self.flat_range, flat)
                picks.append(candidates[flat][:need])
                need -= picks[-1].size
                if need == 0:
                    break
            else:
                keep = flat_indices(mask, self.flat_range)
                if keep.size:
                    picks.append(keep[rng.integers(0, keep.size, size=need)])
                    need = 0
        if need:
            picks.append(rng.integers(0, size, size=need))
        return mask.reshape(-1, 3)[np.concatenate(picks)]

    def join(self, drawn: list[np.ndarray]) -> np.ndarray:
        """The sample: the pixels drawn from every mask, in mask order, cut to ``n``."""
        if len(drawn) != self.count:
            raise ValueError(f"pixels drawn from {len(drawn)} masks, expected {self.count}")
        return np.concatenate(drawn)[: self.n]


def flat_indices(mask: np.ndarray, flat_range: int = FIT_RANGE) -> np.ndarray:
    """Flat indices of the pixels of ``mask`` inside flat regions (what K-Means is fitted on)."""
    return np.flatnonzero(flat_pixels(np.asarray(mask), flat_range))


def sample_pixels(masks: np.ndarray, n: int, seed: int = 0, flat_range: int | None = FIT_RANGE) -> np.ndarray:
    """Draw ``n`` random pixels from masks (N, H, W, 3); works on memmaps, one mask at a time.

    With ``flat_range`` only pixels inside flat regions are drawn, so the blended edges and JPEG
    ringing do not pull the centroids away from the true mask colours (``None``: any pixel).
    """
    sampler = PixelSampler(n, len(masks), seed, flat_range)
    return sampler.join([sampler.draw(mask, i) for i, mask in enumerate(masks)])


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
    with threadpool_limits(1):  # one thread: the same centroids on any core count (and no idle
        # OpenMP/BLAS threads left spinning while prepare's own threads need the cores)
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
