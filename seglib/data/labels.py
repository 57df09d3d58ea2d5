"""Mask colours -> class ids with a fitted palette, and class ids -> colours.

Each pixel takes the nearest palette colour, looked up in a table over quantised colours (one
array index per pixel) rather than a per-image ``KMeans.predict``.

Mask edges are blends of two classes (the masks were downsampled, then JPEG-compressed), and a
blend such as road+black lands nearest to a third class (building grey). The edge rule relabels
such a pixel as one of the two classes it blends:

- an *edge pixel* is one whose 3x3 box of nearest-colour labels is not uniform and whose colour
  is farther than ``EDGE_TAU`` from every palette colour;
- its *candidates* are the classes of the uniform pixels nearby (in the 4x4 blocks around its own
  block, 12x12 pixels);
- with two or more candidates: if its own class is one of them it takes the nearest candidate
  (its own class on a tie); otherwise, if its colour lies closer to the segment between the two
  nearest candidates A and B (A the nearer, the lower id on a tie) than to its own class colour,
  it is a blend and takes A.

Distances are in YCbCr with luma weighted 4x in squared distance, as JPEG keeps chroma at half
resolution. Everything is whole-array numpy and OpenCV over a few masks at a time (their arrays
stay in cache); chunks of masks can be labelled in parallel threads.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from seglib.data.palette import Palette

LUT_BITS = 6  # bits kept per channel in the lookup table (64**3 entries)
EDGE_TAU = 6.0  # colours farther than this from every palette colour (RGB units) may be blends
MAX_RESOLVE_K = 16  # candidate classes are 16-bit sets: with more clusters, no edge resolution
BLOCK = 4  # candidates are gathered per BLOCK x BLOCK pixels
# RGB -> YCbCr (BT.601) with luma scaled by 2, so squared distances count it 4x (row vectors: rgb @ YCC_WEIGHTED)
YCC_WEIGHTED = (np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
) * np.array([[2.0], [1.0], [1.0]], np.float32)).T

_BOX3 = np.ones((3, 3), np.uint8)


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


def rgba_words(masks: np.ndarray) -> np.ndarray:
    """Every pixel of ``masks`` (..., 3) uint8 RGB as one uint32 word, r | g << 8 | b << 16 |
    255 << 24 (RGBA viewed little-endian): one OpenCV pass, then whole-word operations."""
    masks = np.ascontiguousarray(masks)
    if masks.size == 0:
        return np.zeros(masks.shape[:-1], np.uint32)
    rgba = cv2.cvtColor(masks.reshape(1, -1, 3), cv2.COLOR_RGB2RGBA)  # one row: OpenCV's fastest path
    return rgba.view(np.uint32).reshape(masks.shape[:-1])


def colour_index(words: np.ndarray) -> np.ndarray:
    """The lookup-table index of :func:`rgba_words`: the top ``LUT_BITS`` bits of r, g and b."""
    index = words >> (8 - LUT_BITS)
    index &= 0x3F3F3F
    return index


class Labeller:
    """Labels masks with one palette; its tables are built once, then it is safe to share
    between threads."""

    def __init__(self, palette: Palette, resolve: bool = True):
        self.palette, self.k = palette, palette.k
        self.resolve = resolve and self.k <= MAX_RESOLVE_K
        step = 1 << (8 - LUT_BITS)
        cells = np.stack(np.meshgrid(*[np.arange(1 << LUT_BITS, dtype=np.uint8)] * 3, indexing="ij"), -1)
        cells = (cells * step + step // 2).reshape(-1, 3)  # a colour inside every table cell
        centre = cells.astype(np.float32) - 0.5  # the cell's centre
        nearest = nearest_centroid(centre, palette.centroids)
        far = ((centre - palette.centroids[nearest]) ** 2).sum(1) > EDGE_TAU**2
        # per table cell: the nearest class, with bit 7 set when even that is farther than EDGE_TAU
        self.codes = np.zeros(0x400000, np.uint8)
        self.codes[colour_index(rgba_words(cells))] = nearest | (far << 7) if self.resolve else nearest
        # RGBA -> (YCbCr weighted, 1), then -> squared distance to each class less |colour|^2
        self.to_ycc = np.zeros((4, 5), np.float32)
        self.to_ycc[:3, :3], self.to_ycc[3, 4] = YCC_WEIGHTED.T, 1.0
        self.centres = palette.centroids.astype(np.float32) @ YCC_WEIGHTED
        self.to_relative = np.vstack([-2.0 * self.centres.T, (self.centres**2).sum(1)]).astype(np.float32)
        self.class_bits = (1 << np.arange(min(self.k, MAX_RESOLVE_K))).astype(np.uint16)
        sets = np.arange(1 << len(self.class_bits))
        member = ((sets[:, None] >> np.arange(len(self.class_bits))) & 1).astype(bool)  # per candidate set
        self.set_sizes = member.sum(1).astype(np.uint8)
        self.outside = np.where(member, 0.0, np.inf).astype(np.float32)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Class ids (...) uint8 of ``masks`` (..., 3) uint8 RGB. Images (H, W, 3) and batches
        (N, H, W, 3) get the edge rule (when ``resolve``); other shapes are labelled pixel by pixel."""
        masks = np.asarray(masks)
        if masks.dtype != np.uint8 or masks.shape[-1] != 3:
            raise ValueError(f"masks must be uint8 RGB (..., 3), got {masks.dtype} {masks.shape}")
        words = rgba_words(masks)
        codes = np.take(self.codes, colour_index(words))
        if not self.resolve:
            return codes
        labels = codes & 127
        if masks.ndim >= 3:
            shape = (-1, *masks.shape[-3:-1])
            self._resolve_edges(words.reshape(shape), labels.reshape(shape), (codes >= 128).reshape(shape))
        return labels

    def _resolve_edges(self, words: np.ndarray, labels: np.ndarray, far: np.ndarray) -> None:
        """Apply the edge rule (module docstring) to ``labels`` (N, H, W) in place; ``words`` are
        the masks' pixels (:func:`rgba_words`)."""
        n, height, width = labels.shape
        # uniform: the 3x3 box has one label (masks stacked as rows; their border rows are cleared)
        rows = labels.reshape(n * height, width)
        uniform = (cv2.erode(rows, _BOX3) == cv2.dilate(rows, _BOX3)).reshape(n, height, width)
        uniform[:, [0, -1]] = False
        uniform[:, :, [0, -1]] = False
        edge = np.flatnonzero(far & ~uniform)
        if not edge.size:
            return
        support = _spread(_blocks(np.where(uniform, self.class_bits[labels], 0)))
        image, rest = np.divmod(edge, height * width)
        candidates = support[image, rest // (width * BLOCK), rest % width // BLOCK]
        keep = self.set_sizes[candidates] >= 2
        edge, candidates = edge[keep], candidates[keep]

        rgba = words.reshape(-1)[edge].view(np.uint8).astype(np.float32)
        ycc = cv2.transform(rgba.reshape(-1, 1, 4), self.to_ycc).reshape(-1, 4)
        colour = ycc[:, :3]
        # squared distance to every class, less |colour|^2 (the same for all classes of a pixel)
        relative = ycc @ self.to_relative
        among = relative + self.outside[candidates]  # +inf for the classes that are not candidates
        first = among.argmin(1)  # the nearest candidate, the lowest id on a tie
        pixels = np.arange(len(edge))
        own = labels.reshape(-1)[edge]
        d_own = relative[pixels, own]
        result = np.where(d_own <= among[pixels, first], own, first)  # own class a candidate: the nearest
        blends = np.flatnonzero(((candidates >> own) & 1) == 0)  # otherwise: a blend of the two nearest?
        among, first, colour = among[blends], first[blends], colour[blends]
        among[np.arange(len(blends)), first] = np.inf
        start = self.centres[first]
        step = self.centres[among.argmin(1)] - start
        t = np.clip(((colour - start) * step).sum(1) / np.maximum((step**2).sum(1), 1e-6), 0.0, 1.0)
        residual = ((colour - start - t[:, None] * step) ** 2).sum(1)
        d_own = d_own[blends] + (colour**2).sum(1)
        result[blends] = np.where(residual < d_own, first, own[blends])
        labels.reshape(-1)[edge] = result


def _blocks(bits: np.ndarray) -> np.ndarray:
    """OR of ``bits`` (N, H, W) over each BLOCK x BLOCK block: (N, ceil(H/BLOCK), ceil(W/BLOCK))."""
    if bits.shape[1] % BLOCK or bits.shape[2] % BLOCK:
        bits = np.pad(bits, ((0, 0), (0, -bits.shape[1] % BLOCK), (0, -bits.shape[2] % BLOCK)))
    rows = functools.reduce(np.bitwise_or, [bits[:, i::BLOCK] for i in range(BLOCK)])
    return functools.reduce(np.bitwise_or, [rows[:, :, i::BLOCK] for i in range(BLOCK)])


def _spread(blocks: np.ndarray) -> np.ndarray:
    """OR of each block with its eight neighbours."""
    padded = np.pad(blocks, ((0, 0), (1, 1), (1, 1)))
    across = padded[:, :, :-2] | padded[:, :, 1:-1] | padded[:, :, 2:]
    return across[:, :-2] | across[:, 1:-1] | across[:, 2:]


def assign(palette: Palette, masks: np.ndarray, resolve: bool = True) -> np.ndarray:
    """Class ids (...) uint8 of ``masks`` (..., 3) uint8 RGB (see :class:`Labeller`)."""
    return Labeller(palette, resolve)(masks)


def label_chunks(labeller: Labeller, masks: np.ndarray | Sequence[np.ndarray], workers: int = 0,
                 chunk: int = 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Label ``masks`` ((N, H, W, 3) uint8, or a sequence of (H, W, 3) arrays of one size) in
    chunks on ``workers`` threads (0: one per core); yields ``(labels (n, H, W), pixels per class
    (K,))`` per chunk, in order."""
    shape = np.shape(masks[0]) if len(masks) else ()

    def one(start: int) -> tuple[np.ndarray, np.ndarray]:
        part = masks[start : start + chunk]
        if not isinstance(part, np.ndarray):
            for i, mask in enumerate(part, start):
                if mask.dtype != np.uint8 or mask.shape != shape or len(shape) != 3 or shape[2] != 3:
                    raise ValueError(f"mask {i}: expected uint8 {shape} RGB like the first, got {mask.dtype} "
                                     f"{mask.shape}")
            part = np.stack(part)
        labels = labeller(part)
        return labels, np.bincount(labels.ravel(), minlength=labeller.k)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        yield from pool.map(one, range(0, len(masks), chunk))


def colourize(palette: Palette, labels: np.ndarray) -> np.ndarray:
    """Class ids rendered back to RGB with the palette colours (for plots, legends, predictions);
    the palette's ignore index is drawn black."""
    labels = np.asarray(labels)
    if labels.size and labels.max() >= palette.k:
        outside = labels[(labels >= palette.k) & (labels != palette.ignore_index)]
        if outside.size:
            raise ValueError(f"label {int(outside.max())} is outside the palette (K={palette.k})")
    table = np.zeros((1, 256, 3), np.uint8)  # ids past K (the ignore index) stay black
    table[0, : palette.k] = palette.colours
    if labels.dtype == np.uint8 and labels.ndim == 2 and labels.size:  # an image: OpenCV's table lookup
        return cv2.LUT(cv2.merge([labels] * 3), table)
    return table[0][labels]
