"""Reading a prepared dataset (:class:`seglib.layout.PreparedDir`): a split's memory-mapped arrays,
the source of each row, its palette. Every later stage reads prepared data through here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_text
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
    return Split(np.load(files.images, mmap_mode="r"), np.load(files.labels, mmap_mode="r"),
                 read_file_list(files.files))


def write_file_list(path: Path, files) -> None:
    """The source of each row, one JSON string a line: any file name survives (even a newline)."""
    atomic_write_text(path, "".join(json.dumps(str(f)) + "\n" for f in files))


def read_file_list(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def source_masks(prepared_dir: str | os.PathLike, split: str, rows) -> list[np.ndarray] | None:
    """The colour masks the labels of ``rows`` were made from (pairs), for showing beside them; None
    for a dataset of id masks, whose labels are the masks."""
    from seglib.data.pairs import read_pair

    summary = json.loads(PreparedDir(prepared_dir).summary.read_text())
    if summary.get("layout") not in ("kaggle", "flat"):
        return None
    data = open_split(prepared_dir, split)
    return [read_pair(data.files[i], data.images.shape[1:3])[1] for i in rows]


def load_palette(prepared_dir: str | os.PathLike) -> Palette:
    return Palette.load(PreparedDir(prepared_dir).palette)
