import json

import numpy as np
import pytest

from seglib.data.cityscapes import nearest_label_names
from seglib.data.palette import FIT_RANGE, Palette, close_classes, draw_pixels, fit_palette, flat_pixels, sample_pixels

ROAD, BLACK, BUILDING = (128, 64, 128), (0, 0, 0), (70, 70, 70)


def pixels_of(counts: dict, noise=3, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [np.array(c) + rng.normal(0, noise, (n, 3)) for c, n in counts.items()]
    return np.clip(np.concatenate(blocks), 0, 255).astype(np.uint8)


def test_fit_orders_clusters_by_share():
    px = pixels_of({(200, 0, 0): 2000, (0, 200, 0): 5000, (0, 0, 200): 3000})
    pal = fit_palette(px, k=3, seed=0)
    assert np.allclose(pal.shares, [0.5, 0.3, 0.2], atol=1e-6)
    assert np.allclose(pal.centroids, [(0, 200, 0), (0, 0, 200), (200, 0, 0)], atol=2)


def test_fit_is_deterministic_for_a_seed():
    px = pixels_of({ROAD: 3000, BLACK: 1000, BUILDING: 2000, (220, 20, 60): 500}, noise=20)
    a, b = fit_palette(px, k=4, seed=3), fit_palette(px, k=4, seed=3)
    assert a.to_dict() == b.to_dict()


def test_one_colour_split_in_two_is_named_apart_and_warned_about():
    """K > the mask's colours: K-Means splits the widest colour; the two halves lie within JPEG noise."""
    px = pixels_of({ROAD: 6000, BLACK: 2000, BUILDING: 2000}, noise=4)
    pal = fit_palette(px, k=4, seed=0)
    pal.names = nearest_label_names(pal.centroids)
    assert sorted(pal.names) == ["building", "road", "road (2)", "unlabeled"]
    warnings = close_classes(pal)
    assert len(warnings) == 1
    i, j = warnings[0]["classes"]
    assert {pal.names[i], pal.names[j]} == {"road", "road (2)"}
    assert 0 < warnings[0]["distance"] < 12 and "split in two" in warnings[0]["message"]
    assert close_classes(fit_palette(px, k=3, seed=0)) == []  # distinct Cityscapes colours: no warning


def test_too_few_colours():
    with pytest.raises(ValueError, match="distinct colours"):
        fit_palette(np.zeros((100, 3), np.uint8), k=3)


def test_palette_json_roundtrip(tmp_path):
    pal = fit_palette(pixels_of({ROAD: 300, BLACK: 200}), k=2)
    pal.names = ["road", "unlabeled"]
    pal.save(tmp_path / "palette.json")
    data = json.loads((tmp_path / "palette.json").read_text())
    assert data["k"] == 2 and data["seed"] == 0 and data["sample_pixels"] == 500
    assert set(data["classes"][0]) == {"id", "rgb", "share", "name"}
    back = Palette.load(tmp_path / "palette.json")
    assert back.names == pal.names and np.allclose(back.centroids, pal.centroids, atol=1e-3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        Palette.load(tmp_path / "bad.json")


def test_sample_pixels_prefers_flat_regions():
    masks = np.zeros((4, 32, 32, 3), np.uint8)
    masks[:, :, :16] = ROAD
    masks[:, :, 16] = (64, 32, 64)
    px = sample_pixels(masks, 5000, seed=0)
    assert len(px) == 5000
    assert not (px == (64, 32, 64)).all(1).any()
    assert (sample_pixels(masks, 5000, seed=0) == px).all()
    with pytest.raises(ValueError, match="empty"):
        sample_pixels(masks[:0], 10)


def test_fit_is_the_same_on_any_thread_count():
    """K-Means runs on one thread, so palette.json does not depend on the machine's core count."""
    from threadpoolctl import threadpool_limits

    px = pixels_of({ROAD: 3000, BLACK: 1000, BUILDING: 2000, (220, 20, 60): 500}, noise=20)
    with threadpool_limits(2):
        many = fit_palette(px, k=4, seed=1)
    with threadpool_limits(1):
        one = fit_palette(px, k=4, seed=1)
    assert many.to_dict() == one.to_dict()


def test_flat_pixels_are_those_whose_3x3_box_barely_varies():
    """Checked against the rule written out pixel by pixel (the box is cut at the border)."""
    rng = np.random.default_rng(2)
    road = np.zeros((40, 50, 3), np.uint8) + np.array(ROAD, np.uint8)
    road[10:30, 20:35] = BUILDING
    road[::7, ::5] += rng.integers(0, 40, (6, 10, 3), dtype=np.uint8)  # specks: some boxes not flat
    masks = [road, rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), rng.integers(0, 40, (9, 11, 3), dtype=np.uint8),
             rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), rng.integers(0, 60, (2, 9, 3), dtype=np.uint8)]
    for mask in masks:
        height, width = mask.shape[:2]
        expected = np.array([[np.ptp(mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].reshape(-1, 3).astype(int),
                                     axis=0).max() < FIT_RANGE for x in range(width)] for y in range(height)])
        assert (flat_pixels(mask) == expected).all(), mask.shape
    assert 0 < flat_pixels(road).mean() < 1


def test_pixels_are_drawn_uniformly_among_flat_pixels_in_any_order():
    mask = np.zeros((60, 60, 3), np.uint8) + np.array(ROAD, np.uint8)
    mask[:, 45:] = BUILDING  # a quarter of the width; the boundary columns are not flat
    mask[:, 44] = (99, 67, 99)  # a blend column
    masks = np.stack([mask] * 4)
    px = sample_pixels(masks, 40_000, seed=3)
    assert px.shape == (40_000, 3)
    assert not (px == (99, 67, 99)).all(1).any()  # blends and their neighbours are never drawn
    # flat pixels: road columns 0..42 (43 of them), building columns 46..59 (14)
    assert (px == BUILDING).all(1).mean() == pytest.approx(14 / 57, abs=0.01)
    # each mask has its own seeded stream: any thread count gives the same sample
    assert (sample_pixels(masks, 40_000, seed=3, workers=3) == px).all()
    assert (draw_pixels(mask, 10_000, 3, 2) == px[20_000:30_000]).all()
    assert not (draw_pixels(mask, 100, 3, 0) == draw_pixels(mask, 100, 3, 1)).all()


def test_masks_with_no_flat_pixels_are_drawn_from_anywhere():
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)  # no flat box anywhere
    patch = noise.copy()
    patch[20:23, 30:33] = ROAD  # one flat pixel, (21, 31)
    assert (draw_pixels(patch, 500, 0, 0) == ROAD).all()
    assert len(np.unique(draw_pixels(noise, 500, 0, 0), axis=0)) > 300  # none flat: any pixel
    assert len(np.unique(draw_pixels(patch, 500, 0, 0, flat_range=None), axis=0)) > 300  # no filter
