"""Prepare a dataset: split pairs, fit the K-Means palette on training masks, write labels.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seglib import __version__
from seglib.cityscapes import nearest_label_names
from seglib.fsutil import atomic_write_json, atomic_write_text, staged_dir
from seglib.labels import (
    Palette,
    PixelSampler,
    assign_chunks,
    close_classes,
    fit_palette,
    label_counted,
    sample_pixels,
)
from seglib.layout import SPLITS, PreparedDir, SplitFiles
from seglib.pairs import MAX_PIXELS, PairError, iter_pairs, scan_folder

FLAT_TEST_FRACTION = 0.2
SIZE_STEP = 32  # the U-Net halves the image five times


class DatasetError(ValueError):
    """The data folder as a whole cannot be prepared (missing, empty, wrong layout)."""


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


def load_palette(prepared_dir: str | os.PathLike) -> Palette:
    return Palette.load(PreparedDir(prepared_dir).palette)


def _seeded_split(files: list[Path], fraction: float, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into (rest, picked) with ``fraction`` picked at random; both keep file order."""
    n_pick = int(round(len(files) * fraction))
    if fraction > 0 and len(files) >= 2:
        n_pick = min(max(n_pick, 1), len(files) - 1)
    picked = set(rng.permutation(len(files))[:n_pick].tolist())
    rest = [f for i, f in enumerate(files) if i not in picked]
    return rest, [f for i, f in enumerate(files) if i in picked]


def split_files(data_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0):
    """Find the pairs of ``data_dir`` and assign them to train/val/test.

    Kaggle layout (``train/`` and ``val/``): ``val/`` becomes test, ``train/`` is split into
    train/val by ``val_fraction``. A flat folder of pairs: a seeded 20% test split, then
    ``val_fraction`` of the rest for validation (64/16/20 by default).
    Returns ``(splits, layout, ignored_files)``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data folder not found")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    if (data_dir / "train").is_dir():
        if not (data_dir / "val").is_dir():
            raise DatasetError(f"{data_dir}: has train/ but no val/ (Kaggle layout needs both)")
        train, ignored = scan_folder(data_dir / "train")
        test, ignored_test = scan_folder(data_dir / "val")
        ignored += ignored_test
        if not train:
            raise DatasetError(f"{data_dir / 'train'}: no pair images (.jpg/.png) found")
        train, val = _seeded_split(train, val_fraction, rng)
        layout = "kaggle"
    else:
        files, ignored = scan_folder(data_dir)
        if not files:
            raise DatasetError(
                f"{data_dir}: no pair images found (expected train/ and val/ folders of pairs, "
                "or a folder of .jpg/.png pairs)"
            )
        rest, test = _seeded_split(files, FLAT_TEST_FRACTION, rng)
        train, val = _seeded_split(rest, val_fraction, rng)
        layout = "flat"
    return {"train": train, "val": val, "test": test}, layout, ignored


class _NpyWriter:
    """Append rows to a ``.npy`` file with plain sequential writes (no memmap page faults).

    The header is written for ``capacity`` rows and rewritten with the real count on close.
    """

    def __init__(self, path: Path, row_shape: tuple, dtype, capacity: int):
        self.path, self.row_shape, self.dtype, self.rows = path, tuple(row_shape), np.dtype(dtype), 0
        self.file = open(path, "wb")
        self.header = self._header(capacity)
        self.file.write(self.header)

    def _header(self, rows: int) -> bytes:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, *self.row_shape)}
        text = repr(header).encode("latin1")
        size = 10 + len(text) + 1
        text += b" " * (-size % 64 + 64) + b"\n"  # room to spare: the count only gets shorter
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text

    def append(self, row: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(row, dtype=self.dtype).data)
        self.rows += len(row) if row.shape != self.row_shape else 1

    def close(self) -> None:
        header = self._header(self.rows)
        if len(header) != len(self.header):  # same padding rule, so lengths match; kept as a guard
            raise RuntimeError(f"{self.path}: npy header size changed")
        self.file.seek(0)
        self.file.write(header)
        self.file.truncate(len(header) + self.rows * int(np.prod(self.row_shape)) * self.dtype.itemsize)
        self.file.close()


@dataclass
class _Reading:
    """How the pairs are read: their size, the worker threads, the progress bar, what to do with a
    bad file (raise, or list it in ``skipped`` with ``skip_bad``), the pixel limit per file."""

    size: int
    workers: int
    progress: bool
    skip_bad: bool
    max_pixels: int
    skipped: list = field(default_factory=list)


def _read_split(files, out: SplitFiles, reading: _Reading, name: str, then, keep) -> list[Path]:
    """Decode ``files`` in worker threads, which also run ``then(index, photo, mask)``, and write
    ``out.images``; each kept result goes to ``keep(result)``, in file order. Bad files
    raise, or with ``skip_bad`` are listed. Returns the kept files."""
    size = reading.size
    out.images.parent.mkdir(parents=True, exist_ok=True)
    images = _NpyWriter(out.images, (size, size, 3), np.uint8, len(files))
    kept: list[Path] = []
    try:
        with tqdm(total=len(files), desc=f"read {name}", unit="pair", disable=not reading.progress,
                  leave=False) as bar:
            for path, result in iter_pairs(files, size=size, workers=reading.workers, then=then,
                                           max_pixels=reading.max_pixels):
                bar.update()
                if isinstance(result, PairError):
                    if not reading.skip_bad:
                        raise result
                    reading.skipped.append({"file": str(path), "reason": result.reason})
                    continue
                images.append(result[0])
                keep(result)
                kept.append(path)
    finally:
        images.close()
    return kept


class _SplitLabeller:
    """Labels a split's masks as they are decoded and writes ``labels.npy`` in row order.

    The palette is still being fitted (``fitting``, the future of :func:`_fit`) while the first
    pairs are decoded: until it is ready, the worker threads pass their masks on unlabelled and
    they wait here; afterwards the workers label and count each mask themselves, and the masks
    still waiting are labelled before the first labelled row is written.
    """

    def __init__(self, fitting: Future, path: Path, size: int, capacity: int, resolve: bool):
        self.fitting, self.resolve, self.waiting, self.counts = fitting, resolve, [], 0
        self.writer = _NpyWriter(path, (size, size), np.uint8, capacity)

    def then(self, _index, photo, mask):
        if not self.fitting.done():
            return photo, mask, None
        labels, counts = label_counted(self.fitting.result()[0], [mask], self.resolve)
        return photo, labels[0], counts

    def keep(self, result) -> None:
        if result[2] is None:
            self.waiting.append(result[1])
        else:
            self._label_waiting()
            self.writer.append(result[1])
            self.counts += result[2]

    def _label_waiting(self) -> None:
        if self.waiting:
            labels, counts = label_counted(self.fitting.result()[0], self.waiting, self.resolve)
            self.writer.append(labels)
            self.counts += counts
            self.waiting = []

    def close(self, complete: bool) -> None:
        """Finish ``labels.npy``, labelling the masks still waiting when the split is ``complete``."""
        try:
            if complete:
                self._label_waiting()
        finally:
            self.writer.close()

    def class_counts(self) -> np.ndarray:
        """Pixels per class over the labelled masks."""
        return self.counts + np.zeros(self.fitting.result()[0].k)  # counts is still 0 if no pair was kept


def _read_labelled(files, out: SplitFiles, reading: _Reading, name: str, fitting: Future,
                   resolve: bool) -> tuple[list[Path], np.ndarray]:
    """Decode a split and write its ``images.npy`` and ``labels.npy``; returns (kept files, class
    pixel counts)."""
    out.labels.parent.mkdir(parents=True)
    labeller = _SplitLabeller(fitting, out.labels, reading.size, len(files), resolve)
    complete = False
    try:
        kept = _read_split(files, out, reading, name, labeller.then, labeller.keep)
        complete = True
    finally:
        labeller.close(complete)
    return kept, labeller.class_counts()


def _fit(pixels: np.ndarray, clusters: int, seed: int) -> tuple[Palette, float]:
    """Fit and name the palette and build its labelling tables; returns it and the seconds taken."""
    started = time.perf_counter()
    palette = fit_palette(pixels, clusters, seed)
    palette.names = nearest_label_names(palette.centroids)
    palette.build_tables()
    return palette, time.perf_counter() - started


def _label_masks(fitting: Future, masks: list[np.ndarray], out: SplitFiles, workers: int,
                 resolve: bool) -> np.ndarray:
    """Once the palette is fitted (``fitting``, the future of :func:`_fit`), write ``labels.npy``
    for masks kept in memory, labelling and counting chunks of them in parallel threads;
    returns the class pixel counts."""
    palette = fitting.result()[0]
    writer = _NpyWriter(out.labels, masks[0].shape[:2], np.uint8, len(masks))
    counts = np.zeros(palette.k)
    try:
        for labels, chunk_counts in assign_chunks(palette, masks, workers, resolve):
            writer.append(labels)
            counts += chunk_counts
    finally:
        writer.close()
    return counts


SAMPLE_BYTES_PER_PIXEL = 24  # the drawn RGB pixels, their keys for np.unique and its sort, with room to spare


def _sample_size(sample_pixels: int, train_files: int, size: int) -> int:
    """The K-Means sample drawn: what was asked for, at most what the training masks hold; refused
    before anything is allocated when memory cannot hold it."""
    import psutil

    sample = min(sample_pixels, train_files * size * size)
    needed, available = sample * SAMPLE_BYTES_PER_PIXEL, psutil.virtual_memory().available
    if needed > available // 2:
        def amount(n: float) -> str:
            return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"

        raise DatasetError(f"--sample-pixels {sample_pixels}: the K-Means sample needs about {amount(needed)}, more "
                           f"than half of the {amount(available)} of free memory; use fewer (the default is 200000)")
    return sample


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
    size: int = 256,
    val_fraction: float = 0.2,
    sample_pixels_count: int = 200_000,
    skip_bad: bool = False,
    resolve_edges: bool = True,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> dict:
    """Prepare ``data_dir`` into ``out_dir``; returns the summary (also written as summary.json).

    ``resolve_edges=False`` labels by nearest colour only: about 4x faster labelling, lower
    label quality at class borders (see ``seglib.labels``). Image files over ``max_pixels`` are
    bad files (refused from their header, before decoding).
    """
    started = time.perf_counter()
    if not 2 <= clusters <= 255:
        raise DatasetError(f"--clusters must be between 2 and 255, got {clusters}")
    if size < SIZE_STEP or size % SIZE_STEP:
        raise DatasetError(f"--size must be a multiple of {SIZE_STEP} (the U-Net halves it five times), got {size}")
    if sample_pixels_count < clusters:
        raise DatasetError(f"--sample-pixels must be at least --clusters ({clusters}), got {sample_pixels_count}")
    out_dir = Path(out_dir)
    _check_source_is_safe(data_dir, out_dir)
    splits, layout, ignored = split_files(data_dir, val_fraction, seed)
    sample_pixels_count = _sample_size(sample_pixels_count, len(splits["train"]), size)
    for name in SPLITS:
        if not splits[name]:
            raise DatasetError(f"{data_dir}: the {name} split would be empty ({len(splits['train'])} train, "
                               f"{len(splits['val'])} val, {len(splits['test'])} test pairs); a run needs all three"
                               + (" (--val-fraction is 0)" if name == "val" and val_fraction == 0 else ""))
    workers = workers or min(8, os.cpu_count() or 1)
    with staged_dir(out_dir, PreparedDir) as tmp:
        reading = _Reading(size, workers, progress, skip_bad, max_pixels)
        kept, counts = {}, {}
        # the worker threads draw each training mask's share of the K-Means sample; the masks stay
        # in memory to be labelled once the palette is fitted
        sampler = PixelSampler(sample_pixels_count, len(splits["train"]), seed)
        train_masks, drawn = [], []

        def draw(index, photo, mask):
            return photo, mask, sampler.draw(mask, index)

        def keep_train(result):
            train_masks.append(result[1])
            drawn.append(result[2])

        kept["train"] = _read_split(splits["train"], PreparedDir(tmp).split("train"), reading, "train", draw,
                                    keep_train)
        if not kept["train"]:
            raise DatasetError(f"{data_dir}: no usable training pairs (all {len(reading.skipped)} files were bad)")
        decoded = time.perf_counter()

        # each mask drew ceil(n / files) pixels; when bad files were skipped, draw again over the
        # kept masks, so the sample is what sample_pixels gives for them
        pixels = sampler.join(drawn) if len(kept["train"]) == len(splits["train"]) else sample_pixels(
            train_masks, sample_pixels_count, seed)
        # the K-Means fit runs on one thread: fit, then label the training masks, in a background
        # thread while the worker threads already decode val and test, so no core waits for it
        with ThreadPoolExecutor(1, thread_name_prefix="seglib-fit") as background:
            fitting = background.submit(_fit, pixels, clusters, seed)
            train_labelling = background.submit(_label_masks, fitting, train_masks, PreparedDir(tmp).split("train"),
                                                reading.workers, resolve_edges)
            for name in ("val", "test"):
                kept[name], counts[name] = _read_labelled(splits[name], PreparedDir(tmp).split(name), reading, name,
                                                          fitting, resolve_edges)
            counts["train"] = train_labelling.result()
        train_masks.clear()
        palette, fit_seconds = fitting.result()
        for name in SPLITS:
            if not kept[name]:
                raise DatasetError(f"{data_dir}: every {name} pair was bad ({len(splits[name])} skipped); a run "
                                   "needs pairs in train, val and test")
            write_file_list(PreparedDir(tmp).split(name).files, kept[name])
        shares = {name: _shares(counts[name]) for name in SPLITS}
        assigned = time.perf_counter()

        palette.save(PreparedDir(tmp).palette)
        summary = {
            "format": "seglib-prepared-1",
            "seglib_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_dir": str(Path(data_dir).resolve()),
            "layout": layout,
            "parameters": {
                "clusters": clusters, "seed": seed, "size": size, "val_fraction": val_fraction,
                "sample_pixels": sample_pixels_count, "skip_bad": skip_bad,
                "resolve_edges": resolve_edges,
            },
            "counts": {name: len(kept[name]) for name in SPLITS},
            "skipped_count": len(reading.skipped),
            "skipped": reading.skipped,
            "ignored_files": [str(p) for p in ignored],
            "class_shares": shares,
            "palette_warnings": close_classes(palette),
            "timings_s": {
                "read_train": round(decoded - started, 3),
                "fit": round(fit_seconds, 3),
                "label_and_read_rest": round(assigned - decoded, 3),
                "total": round(time.perf_counter() - started, 3),
            },
        }
        atomic_write_json(PreparedDir(tmp).summary, summary)
    return summary
