"""Where the pairs come from: a folder, the Kaggle dataset, or synthetic scenes.

``DATA_DIR`` is a folder of pairs (Kaggle layout or flat); ``kaggle:OWNER/NAME`` (for example
``kaggle:dansbecker/cityscapes-image-pairs``), downloaded once with ``kagglehub`` and kept in
``CACHE/OWNER/NAME`` (on Colab that is on Drive, so a new session does not download again); or a
folder that does not exist yet, where synthetic street scenes are generated when a count is given.
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from seglib.layout import KaggleDir

KAGGLE_PREFIX = "kaggle:"


class DataSourceError(ValueError):
    """The data cannot be fetched (names the source and what to do)."""


def is_kaggle(data_dir) -> bool:
    return str(data_dir).startswith(KAGGLE_PREFIX)


def resolve_data_dir(data_dir: str | os.PathLike, synth_count: int | None = None, seed: int = 0,
                     kaggle_cache: str | os.PathLike = "../data/kaggle", log=print, progress: bool = True) -> Path:
    """The folder of pairs that ``data_dir`` names, fetching or generating it first if needed.
    ``kaggle_cache``'s default is the project's ``data/kaggle`` seen from ``notebooks/``."""
    if is_kaggle(data_dir):
        return fetch_kaggle(str(data_dir)[len(KAGGLE_PREFIX):], kaggle_cache, log)
    path = Path(data_dir)
    if path.exists():
        return path
    if not synth_count:
        raise FileNotFoundError(f"{path}: data folder not found (expected train/ and val/, a folder of pairs, "
                                "or kaggle:OWNER/NAME)")
    from seglib.data.synthetic import generate

    info = generate(path, count=synth_count, seed=seed, progress=progress)
    log(f"generated {info['count']} synthetic pairs in {path} (train {info['train']}, val {info['val']})")
    return path


def pairs_root(folder: Path) -> Path:
    """The shallowest folder under ``folder`` holding both ``train/`` and ``val/`` (a Kaggle
    download nests them, e.g. ``cityscapes_data/train``)."""
    candidates = [folder] + sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: (len(p.parts), str(p)))
    for candidate in candidates:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise FileNotFoundError(f"{folder}: the download holds no folder with train/ and val/")


def fetch_kaggle(handle: str, cache: str | os.PathLike, log=print) -> Path:
    """Download the Kaggle dataset ``OWNER/NAME`` once into ``cache/OWNER/NAME`` (its ``train/`` and
    ``val/``); later calls return that copy without asking Kaggle."""
    from seglib.fsutil import atomic_write_json, staged_dir

    parts = handle.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise DataSourceError(f"{KAGGLE_PREFIX}{handle}: expected {KAGGLE_PREFIX}OWNER/NAME, "
                         f"e.g. {KAGGLE_PREFIX}dansbecker/cityscapes-image-pairs")
    target = KaggleDir(Path(cache) / parts[0] / parts[1])
    if target.info.exists():
        log(f"using {KAGGLE_PREFIX}{handle} downloaded earlier to {target.root}")
        return target.root
    try:
        import kagglehub
    except ImportError:
        raise DataSourceError("kaggle: data needs the kagglehub package (pip install kagglehub)") from None
    log(f"downloading {KAGGLE_PREFIX}{handle} with kagglehub (once; kept in {target.root})")
    try:
        downloaded = Path(kagglehub.dataset_download(handle))
    except Exception as exc:  # noqa: BLE001 - network, credentials or a wrong handle: say which dataset
        raise DataSourceError(f"{KAGGLE_PREFIX}{handle}: download failed ({type(exc).__name__}: {exc}). Kaggle "
                           "credentials: on Colab add KAGGLE_USERNAME and KAGGLE_KEY as secrets, elsewhere "
                           "~/.kaggle/kaggle.json (see kagglehub's README)") from exc
    source = pairs_root(downloaded)
    with staged_dir(target.root, KaggleDir) as tmp:
        for split in ("train", "val"):
            shutil.copytree(source / split, tmp / split)
        atomic_write_json(KaggleDir(tmp).info, {"handle": handle, "downloaded_to": str(source),
                                                "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log(f"{KAGGLE_PREFIX}{handle}: {sum(1 for _ in (target.root / 'train').iterdir())} train and "
        f"{sum(1 for _ in (target.root / 'val').iterdir())} val files in {target.root}")
    return target.root

