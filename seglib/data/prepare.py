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

import os
import time
from pathlib import Path

import numpy as np

from seglib.data.cityscapes import nearest_label_names
from seglib.data.classmap import ClassMap, merged_counts, parse_class_map, remapped, resolve
from seglib.data.config import PrepareConfig
from seglib.data.idmasks import LabelledSet, find_labelled, read_labelled, settle_classes
from seglib.data.labels import Labeller
from seglib.data.pairs import SIZE_STEP, DatasetError, check_size_step, parse_size, size_text, split_files
from seglib.data.palette import Palette, close_classes, fit_palette, sample_pixels
from seglib.data.reading import Reading, label_split, pixel_shares, read_split, summary_record
from seglib.data.splits import write_file_list
from seglib.fsutil import atomic_write_json, save_concatenated, staged_dir
from seglib.layout import SPLITS, PreparedDir
from seglib.parameters import checked_values

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
    check_size_step(height, width, f"--size {size_text((height, width))}",
                    rule=f"multiples of {SIZE_STEP} (the models halve them five times), e.g. 128, 256 or 256x512")
    return height, width


def _check_source_is_safe(data_dir, out_dir: Path) -> None:
    """Refuse an OUT_DIR whose replacement would delete the pairs being read: DATA_DIR itself, or
    a folder that holds it."""
    data, out = Path(data_dir).resolve(), out_dir.resolve()
    if out == data or out in data.parents:
        raise DatasetError(f"{out_dir}: the output folder holds the pairs being prepared ({data_dir}); "
                           "choose an output folder outside the data")


def prepare_dataset(config: PrepareConfig, progress: bool = True, log=print) -> dict:
    """Prepare ``config.data_dir`` into ``config.out_dir`` (fetching a ``kaggle:`` dataset or generating
    ``synth_count`` synthetic scenes first where it says so); what ``prepare`` and notebook 01 run.

    Example:
        ``summary = prepare_dataset(PrepareConfig("data/synthetic", "data/prepared/default", synth_count=200))``
    """
    from dataclasses import asdict

    from seglib.data.datasets import resolve_data_dir

    values = asdict(config)
    data_dir = resolve_data_dir(values.pop("data_dir"), synth_count=values.pop("synth_count"), seed=config.seed,
                                kaggle_cache=values.pop("kaggle_cache"), log=log, progress=progress)
    return prepare(data_dir, values.pop("out_dir"), progress=progress, **values)


D = PrepareConfig  # the defaults below are PrepareConfig's


def prepare(data_dir: str | os.PathLike, out_dir: str | os.PathLike, clusters: int = D.clusters, seed: int = D.seed,
            size: int | str | tuple[int, int] = D.size, val_fraction: float = D.val_fraction,
            sample_pixels: int = D.sample_pixels, skip_bad: bool = D.skip_bad,
            edge_resolution: bool = D.edge_resolution, workers: int | None = D.workers, progress: bool = True,
            max_pixels: int = D.max_pixels, merge=D.merge, drop=D.drop) -> dict:
    """Prepare ``data_dir`` into ``out_dir``; returns the summary (also written as summary.json).
    The parameters are :class:`~seglib.data.config.PrepareConfig`'s.

    ``edge_resolution=False`` labels by nearest colour only: about 10x faster labelling, lower
    label quality at class borders (see ``seglib.data.labels``). Image files over ``max_pixels`` are
    bad files (refused from their header, before decoding). ``merge`` (``"NEW=A,B"`` items) and
    ``drop`` (class names or ids) map the classes (:mod:`seglib.data.classmap`).
    """
    started = time.perf_counter()
    checked_values(PrepareConfig, clusters=clusters, seed=seed, val_fraction=val_fraction, sample_pixels=sample_pixels,
                   workers=workers, max_pixels=max_pixels)
    class_map = parse_class_map(merge, drop)
    size = checked_size(size)
    if sample_pixels < clusters:
        raise DatasetError(f"SAMPLE_PIXELS (--sample-pixels): must be at least CLUSTERS ({clusters}), got "
                           f"{sample_pixels}")
    out_dir = Path(out_dir)
    _check_source_is_safe(data_dir, out_dir)
    workers = workers or min(8, os.cpu_count() or 1)
    reading = Reading(size, workers, progress, skip_bad, max_pixels)
    labelled = find_labelled(data_dir, val_fraction, seed)
    if labelled is not None:
        _check_splits(data_dir, labelled.splits, val_fraction)
        _sample_size(0, len(labelled.splits["train"]), size)
        if class_map and labelled.classes.declared:  # known now: refuse a bad mapping before reading
            resolve(class_map, list(labelled.classes.names))
        return prepare_labelled(labelled, data_dir, out_dir, reading, seed, val_fraction, started, class_map)
    splits, layout, ignored = split_files(data_dir, val_fraction, seed)
    sample_pixels = _sample_size(sample_pixels, len(splits["train"]), size)
    _check_splits(data_dir, splits, val_fraction)
    parameters = {"clusters": clusters, "seed": seed, "size": size_text(size), "val_fraction": val_fraction,
                  "sample_pixels": sample_pixels, "skip_bad": skip_bad, "edge_resolution": edge_resolution,
                  **(class_map.record() if class_map else {})}
    with staged_dir(out_dir, PreparedDir) as tmp:
        summary = _prepare_pairs(PreparedDir(tmp), data_dir, (splits, layout, ignored), reading, parameters, class_map)
        summary["timings_s"]["total"] = round(time.perf_counter() - started, 3)
        atomic_write_json(PreparedDir(tmp).summary, summary)
    return summary


def _prepare_pairs(prepared: PreparedDir, data_dir, found: tuple, reading: Reading, parameters: dict,
                   class_map: ClassMap) -> dict:
    """The three phases of preparing pairs into ``prepared`` (a staged folder); ``found``: the splits'
    files, the layout and the ignored files (:func:`split_files`). Returns the summary."""
    splits, layout, ignored = found
    started = time.perf_counter()
    # 1. read the training pairs (photos written, masks kept for the sample and the labels)
    kept, counts = {}, {}
    kept["train"], masks = read_split(splits["train"], prepared.split("train"), reading, "train")
    if not kept["train"]:
        raise DatasetError(f"{data_dir}: no usable training pairs (all {len(reading.skipped)} files were bad)")
    read = time.perf_counter()
    # 2. fit the palette on pixels drawn from the flat parts of the training masks
    seed = parameters["seed"]
    pixels = sample_pixels(masks, parameters["sample_pixels"], seed, workers=reading.workers)
    palette = fit_palette(pixels, parameters["clusters"], seed)
    palette.names = nearest_label_names(palette.centroids)
    labeller = Labeller(palette, parameters["edge_resolution"])
    palette, lut, members = remapped(palette, class_map) if class_map else (palette, None, None)
    fitted = time.perf_counter()
    # 3. label every split (val and test read now) and write the labels
    for name in SPLITS:
        if name != "train":
            kept[name], masks = read_split(splits[name], prepared.split(name), reading, name)
            if not kept[name]:
                raise DatasetError(f"{data_dir}: every {name} pair was bad ({len(splits[name])} skipped); a run "
                                   "needs pairs in train, val and test")
        counts[name] = label_split(labeller, masks, prepared.split(name).labels, reading, name, lut)
        write_file_list(prepared.split(name).files, kept[name])
    del masks
    classes = {name: merged_counts(c, members) if members else c for name, c in counts.items()}
    palette.save(prepared.palette)
    summary = summary_record(data_dir, layout, parameters, kept, reading, ignored,
                             {name: pixel_shares(classes[name]) for name in SPLITS}, {
                                 "read_train": round(read - started, 3),
                                 "fit": round(fitted - read, 3),
                                 "read_and_label": round(time.perf_counter() - fitted, 3)})
    summary["palette_warnings"] = close_classes(palette)
    summary["ignored_pixels"] = {name: int(counts[name].sum() - classes[name].sum()) for name in SPLITS}
    return summary


def _check_splits(data_dir, splits: dict, val_fraction: float) -> None:
    for name in SPLITS:
        if not splits.get(name):
            raise DatasetError(f"{data_dir}: the {name} split would be empty ({len(splits.get('train', []))} train, "
                               f"{len(splits.get('val', []))} val, {len(splits.get('test', []))} test); a run needs "
                               "all three" + (" (--val-fraction is 0)" if name == "val" and val_fraction == 0 else ""))


def prepare_labelled(labelled: LabelledSet, data_dir, out_dir: Path, reading: Reading, seed: int,
                     val_fraction: float, started: float, class_map: ClassMap) -> dict:
    """Prepare a dataset of photos and id masks (``seglib.data.idmasks``): read every split, settle the
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
        palette = Palette(np.array(classes.colours, np.float32), np.array(pixel_shares(counts["train"][: classes.k])),
                          seed, 0, list(classes.names), ignore)
        palette, lut, members = remapped(palette, class_map) if class_map else (palette, None, None)
        kept_counts = {n: merged_counts(c, members) if members else c[: classes.k] for n, c in counts.items()}
        for name in SPLITS:
            save_concatenated(prepared.split(name).labels, [(m if lut is None else lut[m])[None] for m in labels[name]])
            write_file_list(prepared.split(name).files, [photo for photo, _ in kept[name]])
        shares = {name: pixel_shares(kept_counts[name]) for name in SPLITS}
        palette.save(prepared.palette)
        summary = summary_record(data_dir, labelled.layout, {
            "classes": classes.k, "class_source": classes.source, "ignore_index": ignore, "seed": seed,
            "size": size_text(reading.size), "val_fraction": val_fraction, "skip_bad": reading.skip_bad,
            **(class_map.record() if class_map else {}),
        }, kept, reading, labelled.ignored_files, shares, {"total": round(time.perf_counter() - started, 3)})
        summary["parameters"].update(classes=palette.k, ignore_index=palette.ignore_index)
        summary["ignored_pixels"] = {n: int(counts[n].sum() - kept_counts[n].sum()) for n in SPLITS}
        summary["unmatched"] = labelled.unmatched
        atomic_write_json(prepared.summary, summary)
    return summary
