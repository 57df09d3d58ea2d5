"""Synthetic Cityscapes-like street scenes in the Kaggle pair layout, for demos and tests.

Every scene has sky, buildings, road, sidewalk, terrain, trees, poles, signs, cars and people,
drawn in perspective. Photos use class textures (windows, tiles, foliage, asphalt) with
overlapping colours (grey road, grey buildings, grey poles, overcast sky), so no class is
separable by one pixel's colour; masks use the Cityscapes palette with blended edges and are
saved as JPEG like the real data. The true labelId of every mask pixel is saved beside it as
``ids/<split>/<n>.png`` (the layout of the shared real sample), so label quality is measurable.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
from tqdm import tqdm

from seglib.data.cityscapes import ID_TO_COLOUR, NAME_TO_ID
from seglib.fsutil import atomic_write_json, staged_dir
from seglib.layout import SyntheticDir

CLASSES = ["road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "terrain", "sky", "person", "car"]
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (NAME_TO_ID[c] for c in CLASSES)
_PALETTE = np.zeros((256, 3), np.uint8)
for _id, _rgb in ID_TO_COLOUR.items():
    _PALETTE[_id] = _rgb


class _Canvas:
    """A photo (float RGB) and its labelId map, painted object by object."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.photo = np.zeros((size, size, 3), np.float32)
        self.ids = np.zeros((size, size), np.uint8)

    def noise(self, cells: int, amplitude: float) -> np.ndarray:
        """Smooth random field (size, size, 1): ``cells`` random values upsampled per side."""
        grid = self.rng.normal(0.0, amplitude, (max(cells, 2), max(cells, 2))).astype(np.float32)
        return cv2.resize(grid, (self.size, self.size), interpolation=cv2.INTER_CUBIC)[..., None]

    def region(self, draw) -> np.ndarray:
        """Boolean region drawn by ``draw(uint8 image)`` with OpenCV primitives."""
        layer = np.zeros((self.size, self.size), np.uint8)
        draw(layer)
        return layer.astype(bool)

    def paint(self, region: np.ndarray, label_id: int, texture: np.ndarray) -> None:
        self.ids[region] = label_id
        self.photo[region] = np.broadcast_to(texture, self.photo.shape)[region]


def _poly(points):
    return lambda img: cv2.fillPoly(img, [np.round(np.array(points)).astype(np.int32)], 1)


def _circles(circles):
    """Draws filled circles ``(x, y, radius)``, each at least one pixel."""
    return lambda img: [cv2.circle(img, (int(x), int(y)), max(int(r), 1), 1, -1) for x, y, r in circles]


def _rgb(*values) -> np.ndarray:
    return np.array(values, np.float32)


def render_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: ``(photo RGB uint8, labelIds uint8)``, both ``size`` x ``size``. Painted back to
    front: sky, buildings, the ground, then trees, poles, cars and people from far to near."""
    c = _Canvas(size, rng)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    street = _Street(size, horizon=size * rng.uniform(0.38, 0.5), vx=size * rng.uniform(0.35, 0.65))
    # Sky: blue gradient, or overcast grey (which looks like buildings and roads).
    sky = _rgb(110, 160, 215) if rng.random() < 0.7 else _rgb(175, 178, 185)
    c.paint(np.ones((size, size), bool), SKY, sky * (1.15 - 0.35 * yy) + c.noise(4, 8))
    _paint_buildings(c, rng, street)
    _paint_ground(c, rng, street)
    painters = {"tree": _paint_tree, "pole": _paint_pole, "car": _paint_car, "person": _paint_person}
    for kind, y, x in sorted(_place_objects(rng, street), key=lambda o: o[1]):  # far to near
        painters[kind](c, rng, street, x, y)
    # Lighting and sensor noise.
    xx = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None]
    photo = c.photo * rng.uniform(0.7, 1.2) * (1 + rng.uniform(-0.15, 0.15) * xx)
    photo += rng.normal(0, 4, photo.shape).astype(np.float32)
    return np.clip(photo, 0, 255).astype(np.uint8), c.ids


class _Street:
    """The scene's perspective: the horizon, the vanishing point, the road's and sidewalks' half widths
    at the bottom edge (set by :func:`_paint_ground`)."""

    def __init__(self, size: int, horizon: float, vx: float):
        self.size, self.s, self.horizon, self.vx = size, size / 256.0, horizon, vx
        self.half_base = self.walk = 0.0

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom edge."""
        return max((y - self.horizon) / (self.size - self.horizon), 0.05)


def _paint_buildings(c: _Canvas, rng, street: _Street) -> None:
    """Buildings along the skyline, some gaps; windows in a grid."""
    size, s, horizon = street.size, street.s, street.horizon
    x = -rng.uniform(0, 30) * s
    while x < size:
        width = rng.uniform(25, 80) * s
        if rng.random() < 0.85:
            top = rng.uniform(0.03 * size, horizon - 0.06 * size)
            base = _rgb(*rng.choice([[120, 115, 110], [150, 130, 110], [95, 95, 100], [165, 158, 150], [130, 90, 80]]))
            body = c.region(_poly([(x, top), (x + width, top), (x + width, horizon + 4 * s), (x, horizon + 4 * s)]))
            tex = base * rng.uniform(0.8, 1.1) + c.noise(32, 6)
            win = max(int(10 * s), 3)
            gy, gx = np.mgrid[0:size, 0:size]
            windows = ((gy % win) < win * 0.5) & (((gx - int(x)) % win) < win * 0.5)
            tex = np.where(windows[..., None], tex * 0.55 + _rgb(10, 15, 25), tex)
            c.paint(body, BUILDING, tex)
        x += width


def _paint_ground(c: _Canvas, rng, street: _Street) -> None:
    """Road trapezoid to the vanishing point with a dashed centre line, sidewalks beside it, terrain beyond."""
    size, s, vx, ground_y = street.size, street.s, street.vx, street.horizon
    street.half_base = half_base = size * rng.uniform(0.45, 0.8)
    apex = 0.04 * size
    street.walk = walk = half_base * rng.uniform(0.35, 0.7)
    terrain = _rgb(125, 135, 70) * rng.uniform(0.8, 1.15) + c.noise(48, 10)
    c.paint(c.region(_poly([(0, ground_y), (size, ground_y), (size, size), (0, size)])), TERRAIN, terrain)
    sidewalk_poly = [(vx - apex * 1.6, ground_y), (vx + apex * 1.6, ground_y),
                     (vx + half_base + walk, size), (vx - half_base - walk, size)]
    gy, gx = np.mgrid[0:size, 0:size]
    tiles = ((gy % max(int(8 * s), 2)) == 0) | ((gx % max(int(12 * s), 2)) == 0)
    walk_tex = _rgb(150, 142, 136) * rng.uniform(0.85, 1.1) + c.noise(64, 5)
    walk_tex = np.where(tiles[..., None], walk_tex * 0.8, walk_tex)
    c.paint(c.region(_poly(sidewalk_poly)), SIDEWALK, walk_tex)
    road_poly = [(vx - apex, ground_y), (vx + apex, ground_y), (vx + half_base, size), (vx - half_base, size)]
    road_tex = _rgb(88, 88, 92) * rng.uniform(0.8, 1.15) + c.noise(128, 7)
    c.paint(c.region(_poly(road_poly)), ROAD, road_tex)
    for k in range(0, 12, 2):  # dashed centre line (still road)
        t0, t1 = (k / 12) ** 1.6, ((k + 1) / 12) ** 1.6
        y0, y1 = ground_y + (size - ground_y) * t0, ground_y + (size - ground_y) * t1
        w0, w1 = 0.5 + 3 * s * t0, 0.5 + 3 * s * t1
        dash = c.region(_poly([(vx - w0, y0), (vx + w0, y0), (vx + w1, y1), (vx - w1, y1)])) & (c.ids == ROAD)
        c.photo[dash] = _rgb(225, 225, 215)


def _place_objects(rng, street: _Street) -> list[tuple[str, float, float]]:
    """``(kind, y of its foot, x)`` of the trees, poles, cars and people."""
    size, s, horizon, vx = street.size, street.s, street.horizon, street.vx
    half_base, walk, depth = street.half_base, street.walk, street.depth
    objects = []
    for _ in range(rng.integers(2, 6)):  # trees on both sides
        side = rng.choice([-1, 1])
        y = rng.uniform(horizon + 2, horizon + 0.35 * (size - horizon))
        objects.append(("tree", y, vx + side * (half_base + walk * 1.6) * depth(y) + side * rng.uniform(0, 20) * s))
    for _ in range(rng.integers(1, 5)):  # poles with signs on the sidewalk
        side = rng.choice([-1, 1])
        y = rng.uniform(horizon + 4, size * 0.95)
        objects.append(("pole", y, vx + side * (half_base + walk * 0.5) * depth(y)))
    for _ in range(rng.integers(1, 5)):  # cars on the road
        y = rng.uniform(horizon + 0.12 * (size - horizon), size * 1.05)
        objects.append(("car", y, vx + rng.uniform(-0.7, 0.7) * half_base * depth(y)))
    for _ in range(rng.integers(0, 5)):  # people on the sidewalk
        side = rng.choice([-1, 1])
        y = rng.uniform(horizon + 6, size * 0.98)
        objects.append(("person", y, vx + side * (half_base + walk * rng.uniform(0.2, 0.8)) * depth(y)))
    return objects


def _paint_tree(c: _Canvas, rng, street: _Street, x: float, y: float) -> None:
    s, d = street.s, street.depth(y)
    r = rng.uniform(18, 34) * s * (0.6 + d)
    blobs = [(x + rng.uniform(-r, r) * 0.6, y - r * rng.uniform(1.0, 2.2), r * rng.uniform(0.5, 0.9)) for _ in range(5)]
    tex = _rgb(60, 105, 40) * rng.uniform(0.7, 1.2) + c.noise(int(street.size / 3), 28)
    c.paint(c.region(_circles(blobs)), VEGETATION, tex)


def _paint_pole(c: _Canvas, rng, street: _Street, x: float, y: float) -> None:
    """A pole, most with a round or square sign on top."""
    s, d = street.s, street.depth(y)
    h, w = rng.uniform(90, 150) * s * d, max(6 * s, 8 * s * d)  # wide enough for flat pixels at half size
    c.paint(c.region(_poly([(x - w / 2, y - h), (x + w / 2, y - h), (x + w / 2, y), (x - w / 2, y)])),
            POLE, _rgb(115, 115, 118) * rng.uniform(0.8, 1.2) + c.noise(16, 4))
    if rng.random() < 0.7:
        r = max(2.5, 9 * s * d)
        sign = _rgb(*rng.choice([[230, 200, 30], [40, 80, 190], [200, 40, 40], [235, 235, 235]]))
        if rng.random() < 0.5:
            region = c.region(_circles([(x, y - h, r)]))
        else:
            region = c.region(_poly([(x - r, y - h - r), (x + r, y - h - r), (x + r, y - h + r), (x - r, y - h + r)]))
        c.paint(region, SIGN, sign + c.noise(8, 5))


def _paint_car(c: _Canvas, rng, street: _Street, x: float, y: float) -> None:
    """A body, a darker cabin and two wheels, all car."""
    s, d = street.s, street.depth(y)
    w = rng.uniform(70, 100) * s * d
    h = w * rng.uniform(0.55, 0.75)
    body_colour = _rgb(*rng.choice([[180, 30, 30], [30, 50, 140], [200, 200, 205], [40, 40, 45], [120, 120, 125],
                                    [20, 90, 60]]))
    region = c.region(_poly([(x - w / 2, y - h * 0.55), (x + w / 2, y - h * 0.55), (x + w / 2, y - h * 0.1),
                             (x - w / 2, y - h * 0.1)]))
    cabin = c.region(_poly([(x - w * 0.35, y - h), (x + w * 0.35, y - h), (x + w * 0.45, y - h * 0.55),
                            (x - w * 0.45, y - h * 0.55)]))
    wheels = c.region(_circles([(x + sx * w * 0.32, y - h * 0.12, h * 0.14) for sx in (-1, 1)]))
    tex = body_colour * rng.uniform(0.8, 1.1) + c.noise(16, 6)
    c.paint(region, CAR, tex)
    c.paint(cabin, CAR, tex * 0.45 + _rgb(20, 25, 35))
    c.paint(wheels, CAR, _rgb(25, 25, 25) + c.noise(8, 3))


def _paint_person(c: _Canvas, rng, street: _Street, x: float, y: float) -> None:
    h = rng.uniform(45, 70) * street.s * street.depth(y)
    w = h * 0.28
    clothes = _rgb(*rng.integers(20, 160, 3))
    body = c.region(_poly([(x - w / 2, y - h * 0.82), (x + w / 2, y - h * 0.82), (x + w * 0.35, y), (x - w * 0.35, y)]))
    head = c.region(_circles([(x, y - h * 0.9, h * 0.09)]))
    c.paint(body, PERSON, clothes + c.noise(8, 8))
    c.paint(head, PERSON, _rgb(200, 160, 130) + c.noise(8, 6))


def colour_mask(ids: np.ndarray) -> np.ndarray:
    """Cityscapes colours of a labelId map, with slightly blended edges like the real masks."""
    return cv2.GaussianBlur(_PALETTE[ids], (3, 3), 0.6)


def generate(out_dir: str | os.PathLike, count: int = 200, seed: int = 0, size: int = 256,
             test_fraction: float = 0.2, progress: bool = True) -> dict:
    """Write ``count`` pairs as ``OUT_DIR/{train,val}/<n>.jpg`` (+ ``ids/``), atomically."""
    if count < 2:
        raise ValueError(f"--count must be at least 2, got {count}")
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(count * test_fraction)))
    with staged_dir(out_dir, SyntheticDir) as tmp:
        for split in ("train", "val", "ids/train", "ids/val"):
            (tmp / split).mkdir(parents=True)
        for i in tqdm(range(count), desc="synth", unit="pair", disable=not progress, leave=False):
            split = "val" if i >= count - n_test else "train"
            number = i + 1 if split == "train" else i - (count - n_test) + 1
            photo, ids = render_scene(rng, size)
            pair = np.concatenate([photo, colour_mask(ids)], axis=1)
            cv2.imwrite(
                str(tmp / split / f"{number}.jpg"),
                cv2.cvtColor(pair, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            cv2.imwrite(str(tmp / "ids" / split / f"{number}.png"), ids)
        info = {"count": count, "seed": seed, "size": size, "train": count - n_test, "val": n_test, "classes": CLASSES}
        atomic_write_json(SyntheticDir(tmp).info, info)
    return info


LABELLED_LAYOUTS = ("folders", "cityscapes")
EGO_ROWS = 0.08  # the bottom share of every labelled scene is the ego vehicle's hood: ignored, like in Cityscapes


def generate_labelled(out_dir: str | os.PathLike, count: int = 40, seed: int = 0, size=(128, 256),
                      layout: str = "folders", test_fraction: float = 0.2, progress: bool = True) -> dict:
    """Write ``count`` synthetic scenes of ``size`` (H, W) as a labelled dataset (``seglib.data.idmasks``):

    * ``folders``: ``{train,val}/images/<n>.jpg`` and ``{train,val}/masks/<n>.png`` holding the 19
      Cityscapes train ids (255 = ignore), with a ``classes.json`` naming them;
    * ``cityscapes``: the official layout, ``leftImg8bit/{train,val}/<city>/..._leftImg8bit.png`` and
      ``gtFine/{train,val}/<city>/..._gtFine_labelIds.png`` holding raw label ids.

    The bottom rows are the ego vehicle (labelId 1, ignored by the train ids)."""
    from seglib.data.cityscapes import TRAIN_NAMES, train_colours, train_id_table
    from seglib.data.pairs import parse_size
    from seglib.layout import SyntheticLabelledDir

    if layout not in LABELLED_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LABELLED_LAYOUTS)}")
    if count < 2:
        raise ValueError(f"--count must be at least 2, got {count}")
    height, width = parse_size(size)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(count * test_fraction)))
    table = train_id_table()
    with staged_dir(out_dir, SyntheticLabelledDir) as tmp:
        for i in tqdm(range(count), desc="synth", unit="scene", disable=not progress, leave=False):
            split = "val" if i >= count - n_test else "train"
            photo, ids = render_scene(rng, max(height, width))
            photo = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
            ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
            ego = int(round(height * (1 - EGO_ROWS)))
            ids[ego:] = NAME_TO_ID["ego vehicle"]
            photo[ego:] = (photo[ego:] * 0.25).astype(np.uint8)
            if layout == "folders":
                photo_file, mask_file, mask = f"{split}/images/{i:04d}.jpg", f"{split}/masks/{i:04d}.png", table[ids]
            else:
                city = "synthtown" if i % 2 else "gentown"
                stem = f"{city}/{city}_000000_{i:06d}"
                photo_file = f"leftImg8bit/{split}/{stem}_leftImg8bit.png"
                mask_file = f"gtFine/{split}/{stem}_gtFine_labelIds.png"
                mask = ids
            for name in (photo_file, mask_file):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            quality = [cv2.IMWRITE_JPEG_QUALITY, 90] if photo_file.endswith(".jpg") else []
            cv2.imwrite(str(tmp / photo_file), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), quality)
            cv2.imwrite(str(tmp / mask_file), mask)
        if layout == "folders":
            atomic_write_json(tmp / "classes.json", {
                "classes": [{"name": n, "color": list(c)} for n, c in zip(TRAIN_NAMES, train_colours(), strict=True)],
                "ignore_index": 255})
        info = {"layout": layout, "count": count, "seed": seed, "size": [height, width], "train": count - n_test,
                "val": n_test}
        atomic_write_json(SyntheticLabelledDir(tmp).info, info)
    return info
