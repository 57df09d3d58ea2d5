"""Labelled datasets: photos with single-channel class-id masks, prepared without K-Means.

Two layouts are recognised by ``prepare`` (anything else is read as side-by-side pairs):

* **folders**: ``DATA/images/<name>.(jpg|png)`` with ``DATA/masks/<name>.png`` (same relative name,
  sub-folders allowed), or the same under ``DATA/train/``, ``DATA/val/`` and ``DATA/test/``. An
  optional ``DATA/classes.json`` declares the classes (see :func:`read_classes`); without it the
  classes are 0 .. the largest id found, 255 is ignored, and colours come from a default map.
* **cityscapes**: the official release, ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` with
  ``gtFine/{train,val}/<city>/*_gtFine_labelIds.png``; label ids become the 19 official train
  ids (every other id is ignored: 255) with their official names and colours.

Splits: ``train/``, ``val/`` and ``test/`` are used as they are; with only ``train/`` and ``val/``
(Cityscapes: its ``test/`` labels are withheld) ``val/`` becomes test and ``val_fraction`` of
train becomes val; one folder: a seeded 20% test, then ``val_fraction`` of the rest. Photos are
resized with area interpolation, masks with nearest neighbour. A mask id outside the declared
classes is a bad file (an error naming it, or skipped with ``skip_bad``); images without a mask and
masks without an image are listed in the summary.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from seglib.data.cityscapes import ID_TO_COLOUR, IGNORE_ID, TRAIN_NAMES, train_colours, train_id_table
from seglib.data.pairs import (
    FLAT_TEST_FRACTION,
    MAX_PIXELS,
    DatasetError,
    PairError,
    decode_image,
    image_size,
    max_file_bytes,
    resize_pair,
    seeded_split,
)
from seglib.fsutil import TooBig, read_bounded

CLASSES_FILE = "classes.json"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"
CITYSCAPES_PHOTO, CITYSCAPES_MASK = "_leftImg8bit.png", "_gtFine_labelIds.png"


@dataclass
class Classes:
    """What the mask ids mean: ``names`` and ``colours`` of classes 0..K-1, the ``ignore_index``
    (a label value that is no class, or None) and ``id_map``, a 256-entry table applied to the
    mask ids first (Cityscapes label ids -> train ids), or None, and the ids it knows
    (``mapped_ids``: another id in a mask is an error). ``declared``: K is fixed (ids above it are
    errors); otherwise K is the largest id found + 1."""

    names: list[str]
    colours: list[tuple[int, int, int]]
    ignore_index: int | None = IGNORE_ID
    id_map: np.ndarray | None = None
    declared: bool = True
    source: str = ""
    mapped_ids: tuple[int, ...] = ()

    @property
    def k(self) -> int:
        return len(self.names)


@dataclass
class LabelledSet:
    """A labelled dataset found in a folder: ``splits`` of ``(photo, mask)`` file pairs."""

    layout: str
    splits: dict[str, list[tuple[Path, Path]]]
    classes: Classes
    unmatched: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)


def default_colours(k: int) -> list[tuple[int, int, int]]:
    """Distinct colours for classes 0..k-1 (the PASCAL VOC colour map: bits of the id spread over R, G, B)."""
    colours = []
    for i in range(k):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def read_classes(path: Path) -> Classes:
    """``classes.json``: ``{"classes": [{"name": "road", "color": [128, 64, 128]}, ...], "ignore_index": 255}``.

    A class may be just its name (``"classes": ["road", "car"]``: default colours); class ids are
    list positions; ``ignore_index`` (default 255, ``null`` for none) must not be a class id."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None
    items = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) < 2:
        raise DatasetError(f'{path}: expected {{"classes": [...]}} with at least 2 classes')
    names, colours = [], []
    fallback = default_colours(len(items))
    for i, item in enumerate(items):
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("name", f"class {i}"), str):
            raise DatasetError(f"{path}: class {i} must be a name or {{\"name\": ..., \"color\": [r, g, b]}}")
        colour = item.get("color", item.get("colour", fallback[i]))
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
            raise DatasetError(f"{path}: class {i} colour {colour!r} is not [r, g, b] with values 0-255")
        names.append(item.get("name", f"class {i}"))
        colours.append(tuple(colour))
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{path}: class names repeat ({', '.join(repeated)})")
    ignore = data.get("ignore_index", IGNORE_ID)
    if ignore is not None and (not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < len(names)):
        raise DatasetError(f"{path}: ignore_index {ignore!r} must be null or an id from {len(names)} to 255 (ids "
                           f"0-{len(names) - 1} are the classes)")
    if len(names) > 255 or (ignore is None and len(names) > 256):
        raise DatasetError(f"{path}: {len(names)} classes; at most 255 fit in uint8 labels beside an ignore id")
    return Classes(names, colours, ignore, None, True, str(path))


def cityscapes_classes() -> Classes:
    return Classes(list(TRAIN_NAMES), train_colours(), IGNORE_ID, train_id_table(), True, "cityscapes train ids",
                   tuple(sorted(ID_TO_COLOUR)))


def _by_name(folder: Path, suffixes) -> dict[str, Path]:
    """Files under ``folder`` (recursively, hidden ones left out) keyed by relative path without suffix."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise DatasetError(f"{path}: two images named {key} ({found[key].name} and {path.name}); keep one")
            found[key] = path
    return found


def _match(photos: dict[str, Path], masks: dict[str, Path], unmatched: list[str]) -> list[tuple[Path, Path]]:
    unmatched += [f"{photos[k]}: no mask" for k in sorted(photos.keys() - masks.keys())]
    unmatched += [f"{masks[k]}: no image" for k in sorted(masks.keys() - photos.keys())]
    return [(photos[k], masks[k]) for k in sorted(photos.keys() & masks.keys())]


def _folder_split(folder: Path, unmatched: list[str]) -> list[tuple[Path, Path]]:
    return _match(_by_name(folder / "images", PHOTO_SUFFIXES), _by_name(folder / "masks", (MASK_SUFFIX,)), unmatched)


def _cityscapes_split(root: Path, split: str, unmatched: list[str]) -> list[tuple[Path, Path]]:
    def stems(folder: Path, suffix: str) -> dict[str, Path]:
        return {p.relative_to(folder).as_posix()[: -len(suffix)]: p
                for p in sorted(folder.rglob(f"*{suffix}")) if folder.is_dir()}

    return _match(stems(root / "leftImg8bit" / split, CITYSCAPES_PHOTO),
                  stems(root / "gtFine" / split, CITYSCAPES_MASK), unmatched)


def _assign(found: dict[str, list], val_fraction: float, seed: int) -> dict[str, list]:
    """Splits from what a dataset holds (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if "test" in found and "val" in found:
        return {name: found[name] for name in ("train", "val", "test")}
    if "val" in found:
        train, val = seeded_split(found["train"], val_fraction, rng)
        return {"train": train, "val": val, "test": found["val"]}
    rest, test = seeded_split(found["train"], FLAT_TEST_FRACTION, rng)
    train, val = seeded_split(rest, val_fraction, rng)
    return {"train": train, "val": val, "test": test}


def find_labelled(data_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> LabelledSet | None:
    """The labelled dataset in ``data_dir``, or None when it holds neither layout (pairs, then)."""
    root = Path(data_dir)
    unmatched: list[str] = []
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        found = {split: _cityscapes_split(root, split, unmatched) for split in ("train", "val")}
        if not found["train"]:
            raise DatasetError(f"{root}: no leftImg8bit/train/<city>/*{CITYSCAPES_PHOTO} with a gtFine/train/<city>/"
                               f"*{CITYSCAPES_MASK} (the official Cityscapes layout)")
        found = {k: v for k, v in found.items() if v}
        ignored = [str(root / d / "test") for d in ("leftImg8bit", "gtFine") if (root / d / "test").is_dir()]
        return LabelledSet("cityscapes", _assign(found, val_fraction, seed), cityscapes_classes(), unmatched, ignored)
    split_dirs = [s for s in ("train", "val", "test")
                  if (root / s / "images").is_dir() and (root / s / "masks").is_dir()]
    if not split_dirs and not ((root / "images").is_dir() and (root / "masks").is_dir()):
        return None
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"{root}: has {', '.join(s + '/' for s in split_dirs)} but no train/images and "
                           "train/masks")
    found = ({s: _folder_split(root / s, unmatched) for s in split_dirs} if split_dirs
             else {"train": _folder_split(root, unmatched)})
    if not found["train"]:
        where = root / "train" if split_dirs else root
        raise DatasetError(f"{where}: no image in images/ has a mask of the same name in masks/ "
                           f"({len(unmatched)} unmatched)")
    found = {k: v for k, v in found.items() if v}
    classes_file = root / CLASSES_FILE
    classes = (read_classes(classes_file) if classes_file.exists()
               else Classes([], [], IGNORE_ID, None, False, "ids found (no classes.json)"))
    return LabelledSet("folders", _assign(found, val_fraction, seed), classes, unmatched)


def decode_mask(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A single-channel id mask (H, W) uint8; a colour or 16-bit mask with ids over 255 is a
    :class:`PairError` (an RGB file whose three channels are equal counts as single-channel)."""
    try:
        data = read_bounded(path, max_file_bytes(max_pixels))
    except TooBig as exc:
        raise PairError(path, f"{exc.reason} for a mask of at most {max_pixels / 1e6:.0f} MP") from None
    except OSError as exc:
        raise PairError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise PairError(path, "empty file")
    width, height = image_size(data, path)
    if width * height > max_pixels:
        raise PairError(path, f"mask is {width}x{height}, over the limit of {max_pixels / 1e6:.0f} MP (--max-pixels)")
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise PairError(path, "not a readable image (corrupt or unsupported format)")
    if mask.ndim == 3:
        if mask.shape[2] == 4:
            mask = mask[..., :3]
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 1], mask[..., 2])):
            raise PairError(path, "a colour mask: expected single-channel class ids (for colour masks use "
                                  "side-by-side pairs, whose colours K-Means turns into classes)")
        mask = mask[..., 0]
    if mask.dtype == np.uint16:
        if int(mask.max()) > 255:
            raise PairError(path, f"class id {int(mask.max())} in a 16-bit mask: ids must be 0-255")
        mask = mask.astype(np.uint8)
    elif mask.dtype != np.uint8:
        raise PairError(path, f"unsupported pixel type {mask.dtype} (expected 8-bit class ids)")
    return mask


def read_labelled(item: tuple[Path, Path], size: tuple[int, int], classes: Classes,
                  max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """``(photo (H, W, 3), labels (H, W))`` of one image and its mask, at ``size``, ids mapped
    (``classes.id_map``) and checked against the declared classes."""
    photo_path, mask_path = item
    photo = decode_image(photo_path, max_pixels)
    mask = decode_mask(mask_path, max_pixels)
    if mask.shape != photo.shape[:2]:
        raise PairError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {photo_path.name} is "
                                   f"{photo.shape[1]}x{photo.shape[0]}")
    if classes.id_map is not None:
        unknown = np.setdiff1d(np.unique(mask), classes.mapped_ids)
        if unknown.size:
            raise PairError(mask_path, f"label id {int(unknown[0])} is not a Cityscapes label id (0-"
                                       f"{max(classes.mapped_ids)}); {unknown.size} unknown id(s) in this file")
        mask = classes.id_map[mask]
    if classes.declared:
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        bad = [int(v) for v in present if v >= classes.k and v != classes.ignore_index]
        if bad:
            ignore = f", ignore {classes.ignore_index}" if classes.ignore_index is not None else ""
            raise PairError(mask_path, f"class id {bad[0]} is not a declared class (ids 0-{classes.k - 1}{ignore}; "
                                       f"{classes.source})")
    return resize_pair(photo, mask, size)


def settle_classes(classes: Classes, top_id: int) -> Classes:
    """The classes of an undeclared dataset once its largest class id (ignore left out) is known."""
    if classes.declared:
        return classes
    k = max(2, top_id + 1)
    return Classes([f"class {i}" for i in range(k)], default_colours(k), classes.ignore_index, None, False,
                   f"class ids 0-{k - 1} found (no {CLASSES_FILE}; 255 ignored)")
