import numpy as np
import pytest

from seglib.data.labels import (
    EDGE_TAU,
    LUT_BITS,
    YCC_WEIGHTED,
    Labeller,
    assign,
    colourize,
    label_chunks,
    nearest_centroid,
)
from seglib.data.palette import Palette

ROAD, BLACK, BUILDING = (128, 64, 128), (0, 0, 0), (70, 70, 70)


def test_lookup_table_matches_nearest_centroid():
    rng = np.random.default_rng(1)
    pal = Palette(rng.uniform(0, 255, (10, 3)).astype(np.float32), np.full(10, 0.1))
    colours = rng.integers(0, 256, (200_000, 3), dtype=np.uint8)
    fast = assign(pal, colours, resolve=False)
    exact = nearest_centroid(colours, pal.centroids)
    assert (fast == exact).mean() > 0.98
    # where they differ, the colour lies within one quantisation cell (4 levels) of the boundary
    dist = np.sqrt(((colours[:, None, :].astype(float) - pal.centroids[None]) ** 2).sum(-1))
    rows = np.arange(len(colours))
    assert (dist[rows, fast] - dist[rows, exact]).max() <= 2 * np.sqrt(3) * 2.0 + 1e-6
    assert (assign(pal, pal.colours, resolve=False) == np.arange(10)).all()


def test_resolve_edges_relabels_blends_to_a_neighbouring_class():
    """Road beside black: the blended seam is nearest to building grey, which is not there."""
    pal = Palette(np.array([ROAD, BUILDING, BLACK], np.float32), np.array([0.5, 0.3, 0.2]))
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, :16] = ROAD
    mask[:, 16] = (64, 32, 64)  # half road, half black
    mask[:, 17] = (40, 20, 40)  # mostly black
    mask[:, 18:] = BLACK
    plain = assign(pal, mask, resolve=False)
    assert (plain[:, 16] == 1).all()  # building: wrong
    resolved = assign(pal, mask)
    assert set(np.unique(resolved[:, 16])) <= {0, 2} and (resolved[:, 17] == 2).all()
    assert (resolved[:, :15] == 0).all() and (resolved[:, 19:] == 2).all()
    # a real building next to the road keeps its label
    mask[:, 16:] = BUILDING
    assert (assign(pal, mask)[:, 17:] == 1).all()
    assert (Labeller(pal)(np.stack([mask, mask])) == assign(pal, mask)).all()  # a batch: the same per mask


def test_colourize_and_range_check():
    pal = Palette(np.array([ROAD, BLACK], np.float32), np.array([0.6, 0.4]))
    assert colourize(pal, np.array([[0, 1]])).tolist() == [[list(ROAD), list(BLACK)]]
    with pytest.raises(ValueError, match="outside the palette"):
        colourize(pal, np.array([2]))


def _reference_labels(mask: np.ndarray, pal: Palette) -> np.ndarray:
    """The edge rule as seglib.data.labels states it, pixel by pixel in plain numpy (slow, clear)."""
    step = 1 << (8 - LUT_BITS)
    cell = (mask >> (8 - LUT_BITS)).astype(np.float32) * step + (step - 1) / 2  # the table cell's centre colour
    dist = ((cell[..., None, :] - pal.centroids) ** 2).sum(-1)
    labels, far = dist.argmin(-1), dist.min(-1) > EDGE_TAU**2
    height, width = labels.shape
    uniform = np.zeros_like(far)
    for y in range(1, height - 1):
        for x in range(1, width - 1):
            uniform[y, x] = (labels[y - 1 : y + 2, x - 1 : x + 2] == labels[y, x]).all()
    blocks = {}
    for y, x in zip(*np.nonzero(uniform), strict=True):
        blocks.setdefault((y // 4, x // 4), set()).add(int(labels[y, x]))
    centres = pal.centroids.astype(np.float32) @ YCC_WEIGHTED
    out = labels.copy()
    for y, x in zip(*np.nonzero(far & ~uniform), strict=True):
        gy, gx = y // 4, x // 4
        candidates = sorted(
            set().union(*(blocks.get((gy + dy, gx + dx), set()) for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
        )
        if len(candidates) < 2:
            continue
        colour = mask[y, x].astype(np.float32) @ YCC_WEIGHTED
        dist = {c: float(((colour - centres[c]) ** 2).sum()) for c in candidates}
        first, second = sorted(candidates, key=lambda c: (dist[c], c))[:2]
        step = centres[second] - centres[first]
        t = float(np.clip((colour - centres[first]) @ step / max(float(step @ step), 1e-6), 0.0, 1.0))
        residual = float(((colour - centres[first] - t * step) ** 2).sum())
        if residual < float(((colour - centres[labels[y, x]]) ** 2).sum()):
            out[y, x] = first if t < 0.5 else second
    return out


@pytest.mark.parametrize("shape", [(48, 64), (37, 53)])
def test_edges_are_labelled_as_the_plain_reference_says(shape):
    """The vectorised rule (lookup, uniformity, block candidates, blend test) against the rule
    written pixel by pixel, without the own-class shortcut; exact ties may go either way."""
    import cv2

    rng = np.random.default_rng(7)
    colours = np.array([ROAD, BUILDING, BLACK, (220, 20, 60), (107, 142, 35), (70, 130, 180)], np.float32)
    pal = Palette(colours, np.full(len(colours), 1 / len(colours)))
    big = np.zeros((shape[0] * 4, shape[1] * 4, 3), np.uint8)
    for _ in range(40):  # random rectangles of palette colours, then shrunk (blended edges) and JPEG-coded
        y, x = rng.integers(0, big.shape[0]), rng.integers(0, big.shape[1])
        big[y : y + rng.integers(8, 80), x : x + rng.integers(8, 80)] = colours[rng.integers(len(colours))]
    small = cv2.resize(big, shape[::-1], interpolation=cv2.INTER_AREA)
    mask = cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_COLOR)
    expected = _reference_labels(mask, pal)
    assert (expected != assign(pal, mask, resolve=False)).sum() > 20  # the rule does change labels here
    assert (assign(pal, mask) != expected).sum() <= 2  # float rounding may flip a tie, nothing more


def test_many_clusters_label_without_edge_resolution():
    """Above 16 clusters there is no edge resolution, and ids above 127 survive the lookup."""
    rng = np.random.default_rng(3)
    pal = Palette(rng.uniform(0, 255, (200, 3)).astype(np.float32), np.full(200, 1 / 200))
    masks = rng.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    labels = assign(pal, masks)
    assert labels.max() > 127
    assert (labels == assign(pal, masks, resolve=False)).all()
    assert (assign(pal, pal.colours, resolve=False) == np.arange(200)).all()


def test_chunks_label_and_count_as_one_call():
    rng = np.random.default_rng(5)
    pal = Palette(np.array([ROAD, BUILDING, BLACK], np.float32), np.array([0.5, 0.3, 0.2]))
    masks = [np.ascontiguousarray(colourize(pal, rng.integers(0, 3, (30, 41)))) for _ in range(5)]
    masks[1] = masks[1][:, ::-1]  # a non-contiguous view is fine too
    labels = assign(pal, np.stack(masks))
    chunks = list(label_chunks(Labeller(pal), masks, workers=2, chunk=2))
    assert len(chunks) == 3 and (np.concatenate([c[0] for c in chunks]) == labels).all()
    assert sum(c[1] for c in chunks).tolist() == np.bincount(labels.ravel(), minlength=3).tolist()
    from_array = list(label_chunks(Labeller(pal), np.stack(masks), workers=1, chunk=4))
    assert (np.concatenate([c[0] for c in from_array]) == labels).all()
    with pytest.raises(ValueError, match="mask 2"):
        list(label_chunks(Labeller(pal), [masks[0], masks[1], masks[2][:20]]))
