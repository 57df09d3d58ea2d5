"""Prepare a dataset: split pairs, fit the K-Means palette on training masks, write labels.

Three phases: read the training pairs (a thread pool over files); fit the palette on pixels
drawn from their masks; label every split (val and test read now; a thread pool over chunks of
masks) and write it.

Output layout (:class:`seglib.layout.PreparedDir`; read later with ``np.load(..., mmap_mode="r")``)::

    OUT_DIR/palette.json   OUT_DIR/summary.json
    OUT_DIR/<split>/images.npy (N,H,W,3 uint8)  labels.npy (N,H,W uint8)  files.txt (one JSON string a line)

Everything is written to a temp folder beside OUT_DIR and renamed into place at the end, so
a crash or a bad file never leaves a half-written OUT_DIR that looks complete.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seglib import __version__
from seglib.cityscapes import nearest_label_names
from seglib.fsutil import atomic_write_json, atomic_write_text, save_concatenated, staged_dir
from seglib.idmasks import LabelledSet, find_labelled, read_labelled, settle_classes
from seglib.labels import Labeller, label_chunks
from seglib.layout import SPLITS, PreparedDir, SplitFiles
from seglib.pairs import MAX_PIXELS, DatasetError, PairError, iter_pairs, parse_size, size_text, split_files
from seglib.palette import Palette, close_classes, fit_palette, sample_pixels

SIZE_STEP = 32  # the U-Net halves the image five times
CHUNK = 4  # masks labelled together on one thread (small: their arrays stay in cache)


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
    return Split(
        images=np.load(files.images, mmap_mode="r"),
        labels=np.load(files.labels, mmap_mode="r"),
        files=read_file_list(files.files),
    )


def write_file_list(path: Path, files) -> None:
    """The source of each row, one JSON string a line: any file name survives (even a newline)."""
    atomic_write_text(path, "".join(json.dumps(str(f)) + "\n" for f in files))


def read_file_list(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def source_masks(prepared_dir: str | os.PathLike, split: str, rows) -> list[np.ndarray] | None:
    """The colour masks the labels of ``rows`` were made from (pairs), for showing beside them; None
    for a dataset of id masks, whose labels are the masks."""
    from seglib.pairs import read_pair

    summary = json.loads(PreparedDir(prepared_dir).summary.read_text())
    if summary.get("layout") not in ("kaggle", "flat"):
        return None
    data = open_split(prepared_dir, split)
    return [read_pair(data.files[i], data.images.shape[1:3])[1] for i in rows]


def load_palette(prepared_dir: str | os.PathLike) -> Palette:
    return Palette.load(PreparedDir(prepared_dir).palette)


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
    side-by-side pair file; see :func:`seglib.pairs.iter_pairs`)."""
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


def label_split(labeller: Labeller, masks: list[np.ndarray], path: Path, reading: Reading, name: str) -> np.ndarray:
    """Label ``masks`` in chunks on the worker threads and write them to ``path`` (labels.npy);
    returns the pixels per class."""
    parts, counts = [], np.zeros(labeller.k, np.int64)
    with tqdm(total=len(masks), desc=f"label {name}", unit="mask", disable=not reading.progress, leave=False) as bar:
        for labels, chunk_counts in label_chunks(labeller, masks, reading.workers, CHUNK):
            parts.append(labels)
            counts += chunk_counts
            bar.update(len(labels))
    save_concatenated(path, parts)
    return counts


SAMPLE_BYTES_PER_PIXEL = 24  # the drawn RGB pixels, their keys for np.unique and its sort, with room to spare
SPLIT_BYTES_PER_PIXEL = 7  # a split in memory while prepared: photo and mask RGB, labels


def _sample_size(sample_pixels: int, train_files: int, size: tuple[int, int]) -> int:
    """The K-Means sample drawn: what was asked for, at most what the training masks hold; refused
    before anything is allocated when memory cannot hold it or the training split."""
    import psutil

    def amount(n: float) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"

    available = psutil.virtual_memory().available
    pixels = size[0] * size[1]
    split = train_files * pixels * SPLIT_BYTES_PER_PIXEL
    if split > available:
        raise DatasetError(f"the {train_files} training pairs need about {amount(split)} of memory at --size "
                           f"{size_text(size)} while they are prepared, more than the {amount(available)} free; "
                           "use a smaller --size")
    sample = min(sample_pixels, train_files * pixels)
    if sample * SAMPLE_BYTES_PER_PIXEL > available // 2:
        raise DatasetError(f"--sample-pixels {sample_pixels}: the K-Means sample needs about "
                           f"{amount(sample * SAMPLE_BYTES_PER_PIXEL)}, more than half of the {amount(available)} of "
                           "free memory; use fewer (the default is 200000)")
    return sample


def checked_size(size) -> tuple[int, int]:
    """``(H, W)`` of a ``--size`` (``256`` or ``256x512``), each a multiple of 32, checked before any work."""
    try:
        height, width = parse_size(size)
    except ValueError as exc:
        raise DatasetError(f"--size: {exc}") from None
    if min(height, width) < SIZE_STEP or height % SIZE_STEP or width % SIZE_STEP:
        raise DatasetError(f"--size {size_text((height, width))}: H and W must be multiples of {SIZE_STEP} (the "
                           "models halve them five times), e.g. 128, 256 or 256x512")
    return height, width


def _check_source_is_safe(data_dir, out_dir: Path) -> None:
    """Refuse an OUT_DIR whose replacement would delete the pairs being read: DATA_DIR itself, or
    a folder that holds it."""
    data, out = Path(data_dir).resolve(), out_dir.resolve()
    if out == data or out in data.parents:
        raise DatasetError(f"{out_dir}: the output folder holds the pairs being prepared ({data_dir}); "
                           "choose an output folder outside the data")


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c / total), 6) if total else 0.0 for c in counts]


def prepare(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    clusters: int = 10,
    seed: int = 0,
    size: int | str | tuple[int, int] = 256,
    val_fraction: float = 0.2,
    sample_pixels_count: int = 200_000,
    skip_bad: bool = False,
    resolve_edges: bool = True,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """Prepare ``data_dir`` into ``out_dir``; returns the summary (also written as summary.json).

    ``resolve_edges=False`` labels by nearest colour only: about 10x faster labelling, lower
    label quality at class borders (see ``seglib.labels``). Image files over ``max_pixels`` are
    bad files (refused from their header, before decoding).
    """
    started = time.perf_counter()
    if not 2 <= clusters <= 255:
        raise DatasetError(f"--clusters must be between 2 and 255, got {clusters}")
    size = checked_size(size)
    if sample_pixels_count < clusters:
        raise DatasetError(f"--sample-pixels must be at least --clusters ({clusters}), got {sample_pixels_count}")
    out_dir = Path(out_dir)
    _check_source_is_safe(data_dir, out_dir)
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    workers = workers or min(8, os.cpu_count() or 1)
    reading = Reading(size, workers, progress, skip_bad, max_pixels)
    labelled = find_labelled(data_dir, val_fraction, seed)
    if labelled is not None:
        _check_splits(data_dir, labelled.splits, val_fraction)
        _sample_size(0, len(labelled.splits["train"]), size)
        return prepare_labelled(labelled, data_dir, out_dir, reading, seed, val_fraction, started)
    splits, layout, ignored = split_files(data_dir, val_fraction, seed)
    sample_pixels_count = _sample_size(sample_pixels_count, len(splits["train"]), size)
    _check_splits(data_dir, splits, val_fraction)
    with staged_dir(out_dir, PreparedDir) as tmp:
        prepared = PreparedDir(tmp)
        # 1. read the training pairs (photos written, masks kept for the sample and the labels)
        kept, counts = {}, {}
        kept["train"], masks = read_split(splits["train"], prepared.split("train"), reading, "train")
        if not kept["train"]:
            raise DatasetError(f"{data_dir}: no usable training pairs (all {len(reading.skipped)} files were bad)")
        read = time.perf_counter()
        # 2. fit the palette on pixels drawn from the flat parts of the training masks
        palette = fit_palette(sample_pixels(masks, sample_pixels_count, seed, workers=workers), clusters, seed)
        palette.names = nearest_label_names(palette.centroids)
        labeller = Labeller(palette, resolve_edges)
        fitted = time.perf_counter()
        # 3. label every split (val and test read now) and write the labels
        for name in SPLITS:
            if name != "train":
                kept[name], masks = read_split(splits[name], prepared.split(name), reading, name)
                if not kept[name]:
                    raise DatasetError(f"{data_dir}: every {name} pair was bad ({len(splits[name])} skipped); a run "
                                       "needs pairs in train, val and test")
            counts[name] = label_split(labeller, masks, prepared.split(name).labels, reading, name)
            write_file_list(prepared.split(name).files, kept[name])
        del masks
        shares = {name: _shares(counts[name]) for name in SPLITS}
        labelled = time.perf_counter()

        palette.save(prepared.palette)
        summary = _summary(data_dir, layout, {
            "clusters": clusters, "seed": seed, "size": size_text(size), "val_fraction": val_fraction,
            "sample_pixels": sample_pixels_count, "skip_bad": skip_bad, "resolve_edges": resolve_edges,
        }, kept, reading, ignored, shares, {
            "read_train": round(read - started, 3),
            "fit": round(fitted - read, 3),
            "read_and_label": round(labelled - fitted, 3),
            "total": round(time.perf_counter() - started, 3),
        })
        summary["palette_warnings"] = close_classes(palette)
        atomic_write_json(prepared.summary, summary)
    return summary


def _check_splits(data_dir, splits: dict, val_fraction: float) -> None:
    for name in SPLITS:
        if not splits.get(name):
            raise DatasetError(f"{data_dir}: the {name} split would be empty ({len(splits.get('train', []))} train, "
                               f"{len(splits.get('val', []))} val, {len(splits.get('test', []))} test); a run needs "
                               "all three" + (" (--val-fraction is 0)" if name == "val" and val_fraction == 0 else ""))


def _summary(data_dir, layout: str, parameters: dict, kept: dict, reading: Reading, ignored, shares: dict,
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


def prepare_labelled(labelled: LabelledSet, data_dir, out_dir: Path, reading: Reading, seed: int,
                     val_fraction: float, started: float) -> dict:
    """Prepare a dataset of photos and id masks (``seglib.idmasks``): read every split, settle the
    classes (K is the largest id found + 1 when no classes are declared), write labels and palette."""
    from functools import partial

    read = partial(read_labelled, size=reading.size, classes=labelled.classes, max_pixels=reading.max_pixels)
    with staged_dir(out_dir, PreparedDir) as tmp:
        prepared = PreparedDir(tmp)
        kept, labels, counts = {}, {}, {}
        for name in SPLITS:
            kept[name], labels[name] = read_split(labelled.splits[name], prepared.split(name), reading, name, read)
            if not kept[name]:
                raise DatasetError(f"{data_dir}: every {name} image was bad ({len(labelled.splits[name])} skipped); a "
                                   "run needs images in train, val and test")
            counts[name] = sum(np.bincount(m.ravel(), minlength=256) for m in labels[name])
        ignore = labelled.classes.ignore_index
        total = sum(counts.values())
        found = [i for i in np.flatnonzero(total) if i != ignore]
        classes = settle_classes(labelled.classes, int(max(found)) if found else 1)
        for name in SPLITS:
            save_concatenated(prepared.split(name).labels, [m[None] for m in labels[name]])
            write_file_list(prepared.split(name).files, [photo for photo, _ in kept[name]])
        shares = {name: _shares(counts[name][: classes.k]) for name in SPLITS}
        palette = Palette(np.array(classes.colours, np.float32), np.array(shares["train"], np.float64), seed, 0,
                          list(classes.names), ignore)
        palette.save(prepared.palette)
        summary = _summary(data_dir, labelled.layout, {
            "classes": classes.k, "class_source": classes.source, "ignore_index": ignore, "seed": seed,
            "size": size_text(reading.size), "val_fraction": val_fraction, "skip_bad": reading.skip_bad,
        }, kept, reading, labelled.ignored_files, shares, {"total": round(time.perf_counter() - started, 3)})
        summary["ignored_pixels"] = {name: int(counts[name][ignore]) if ignore is not None else 0 for name in SPLITS}
        summary["unmatched"] = labelled.unmatched
        atomic_write_json(prepared.summary, summary)
    return summary
