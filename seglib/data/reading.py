"""Reading a split's source files into a staged prepared split: decoded on reader threads, photos
written as they come, masks labelled in chunks; and the ``summary.json`` record of what was read."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seglib import __version__
from seglib.data.labels import Labeller, label_chunks
from seglib.data.pairs import MAX_PIXELS, PairError, iter_pairs
from seglib.fsutil import save_concatenated
from seglib.layout import SPLITS, SplitFiles

CHUNK = 4  # masks labelled together on one thread (small: their arrays stay in cache)


@dataclass
class Reading:
    """How pairs are read: their size, worker threads, progress bars, what to do with a bad file
    (raise, or with ``skip_bad`` list it in ``skipped``), the pixel limit per file."""

    size: tuple[int, int]  # (H, W)
    workers: int
    progress: bool = False
    skip_bad: bool = False
    max_pixels: int = MAX_PIXELS
    skipped: list = field(default_factory=list)


def read_split(files: list, out: SplitFiles, reading: Reading, name: str, read=None) -> tuple[list, list[np.ndarray]]:
    """Decode a split's pairs on the reader threads and write its photos to ``out.images``;
    returns the files kept and their masks, in file order (a split's pairs are held in memory
    until written: about 0.4 MB a pair at 256 px). ``read``: how one item is read (default: a
    side-by-side pair file; see :func:`seglib.data.pairs.iter_pairs`)."""
    kept, photos, masks = [], [], []
    for path, result in tqdm(iter_pairs(files, reading.size, reading.workers, reading.max_pixels, read),
                             total=len(files), desc=f"read {name}", unit="pair", disable=not reading.progress,
                             leave=False):
        if isinstance(result, PairError):
            if not reading.skip_bad:
                raise result
            reading.skipped.append({"file": result.path, "reason": result.reason})
            continue
        kept.append(path)
        photos.append(result[0][None])
        masks.append(result[1])
    if kept:
        out.images.parent.mkdir(parents=True, exist_ok=True)
        save_concatenated(out.images, photos)
    return kept, masks


def label_split(labeller: Labeller, masks: list[np.ndarray], path: Path, reading: Reading, name: str,
                lut: np.ndarray | None = None) -> np.ndarray:
    """Label ``masks`` in chunks on the worker threads and write them to ``path`` (labels.npy), through
    ``lut`` (merged and dropped classes) if given; returns the pixels per class before ``lut``."""
    parts, counts = [], np.zeros(labeller.k, np.int64)
    with tqdm(total=len(masks), desc=f"label {name}", unit="mask", disable=not reading.progress, leave=False) as bar:
        for labels, chunk_counts in label_chunks(labeller, masks, reading.workers, CHUNK):
            parts.append(labels if lut is None else lut[labels])
            counts += chunk_counts
            bar.update(len(labels))
    save_concatenated(path, parts)
    return counts


def pixel_shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c / total), 6) if total else 0.0 for c in counts]


def summary_record(data_dir, layout: str, parameters: dict, kept: dict, reading: Reading, ignored, shares: dict,
                   timings: dict) -> dict:
    """summary.json: where the data came from, how it was prepared, what each split holds."""
    return {
        "format": "seglib-prepared-1",
        "seglib_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "layout": layout,
        "parameters": parameters,
        "counts": {name: len(kept[name]) for name in SPLITS},
        "skipped_count": len(reading.skipped),
        "skipped": reading.skipped,
        "ignored_files": [str(p) for p in ignored],
        "class_shares": shares,
        "ignored_pixels": {name: 0 for name in SPLITS},
        "palette_warnings": [],
        "timings_s": timings,
    }
