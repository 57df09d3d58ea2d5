"""Reading a prepared dataset (:class:`seglib.layout.PreparedDir`): a split's memory-mapped arrays,
the source of each row, its palette. Every later stage reads prepared data through here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_text, read_json
from seglib.layout import PreparedDir


@dataclass
class Split:
    """One prepared split, memory-mapped: rows of ``images`` and ``labels`` match ``files``."""

    images: np.ndarray
    labels: np.ndarray
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)


def open_split(prepared_dir: str | os.PathLike, split: str) -> Split:
    """Open a prepared split without loading it into memory."""
    files = PreparedDir(prepared_dir).split(split)
    if not files.images.exists():
        raise FileNotFoundError(f"{files.images.parent}: no prepared split here (run `python -m seglib prepare` first)")
    arrays = []
    for path in (files.images, files.labels):
        try:
            arrays.append(np.load(path, mmap_mode="r"))
        except (OSError, ValueError) as exc:  # e.g. "mmap length is greater than file size": cut short
            raise ValueError(f"{path}: unreadable or cut short ({exc}); prepare the data again") from exc
    return Split(*arrays, read_file_list(files.files))


def write_file_list(path: Path, files) -> None:
    """The source of each row, one JSON string a line: any file name survives (even a newline)."""
    atomic_write_text(path, "".join(json.dumps(str(f)) + "\n" for f in files))


def read_file_list(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def source_masks(prepared_dir: str | os.PathLike, split: str, rows) -> list[np.ndarray] | None:
    """The colour masks the labels of ``rows`` were made from (pairs), for showing beside them; None
    for a dataset of id masks, whose labels are the masks."""
    from seglib.data.pairs import read_pair

    summary = read_json(PreparedDir(prepared_dir).summary)
    if summary.get("layout") not in ("kaggle", "flat"):
        return None
    data = open_split(prepared_dir, split)
    return [read_pair(data.files[i], data.images.shape[1:3])[1] for i in rows]


def load_palette(prepared_dir: str | os.PathLike) -> Palette:
    return Palette.load(PreparedDir(prepared_dir).palette)


def source_labels(prepared_dir: str | os.PathLike, split: str):
    """``(row, labels)`` of each row of a split prepared from label files (id masks, Cityscapes): its
    label file at its own size, with the ids prepare gave it (train ids; merged and dropped classes):
    what a benchmark scores predictions against."""
    from seglib.data.classmap import parse_class_map, resolve
    from seglib.data.idmasks import decode_mask, find_labelled, settle_classes

    prepared = PreparedDir(prepared_dir)
    summary = read_json(prepared.summary)
    params = summary["parameters"]
    labelled = find_labelled(summary["data_dir"], params["val_fraction"], params["seed"])
    if labelled is None:
        raise ValueError(f"{prepared.root}: prepared from image pairs (colour masks), not from label files: there is "
                         "nothing to score at the source size")
    masks = {Path(photo).resolve(): mask for photo, mask in labelled.splits[split]}
    classes = settle_classes(labelled.classes, 254)
    lut = None
    if params.get("merge") or params.get("drop"):
        lut = resolve(parse_class_map(params.get("merge"), params.get("drop")), list(classes.names))[0]
    for row, photo in enumerate(read_file_list(prepared.split(split).files)):
        mask = masks.get(Path(photo).resolve())
        if mask is None:
            raise FileNotFoundError(f"{photo}: its label file is no longer in {summary['data_dir']}")
        ids = decode_mask(mask)
        ids = ids if classes.id_map is None else classes.id_map[ids]
        yield row, ids if lut is None else lut[ids]
