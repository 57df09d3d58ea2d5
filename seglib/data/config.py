"""Every parameter of ``prepare`` once (:mod:`seglib.parameters`): the ``prepare`` flags, notebook
01's parameters cell, the batch keys, :func:`seglib.data.prepare.prepare_dataset` and the checks of
their values derive from :class:`PrepareConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from seglib.data.pairs import MAX_PIXELS, SIZE_STEP
from seglib.layout import DEFAULT, KAGGLE, PREPARED, SYNTHETIC, from_notebooks
from seglib.parameters import Parameters, param


@dataclass
class PrepareConfig(Parameters):
    """A prepared dataset's parameters (``python -m seglib prepare --help`` lists them).

    Example:
        ``prepare_dataset(PrepareConfig("data/synthetic", "data/prepared/default", size=128, synth_count=200))``
    """

    data_dir: str = param(help="pairs (Kaggle layout train/ val/, a flat folder, or kaggle:OWNER/NAME), images/ + "
                               "masks/ of class ids (optionally under train/ val/ test/, with classes.json), or the "
                               "official Cityscapes leftImg8bit/ + gtFine/",
                          notebook=from_notebooks(SYNTHETIC))
    out_dir: str = param(help="the prepared dataset's folder", notebook=from_notebooks(f"{PREPARED}/{DEFAULT}"))
    clusters: int = param(10, "K-Means classes: the mask colours are grouped into this many (pairs only)",
                          min=2, max=255)
    seed: int = param(0, "seeds the split, the K-Means sample and synthetic scenes", min=0, max=2**32 - 1)
    size: int | str = param(256, f"side (256) or H x W (256x512), multiples of {SIZE_STEP}")
    val_fraction: float = param(0.2, "share of the training pairs held out for validation (pairs without val/)",
                                min=0, below=1)
    sample_pixels: int = param(200_000, "mask pixels K-Means is fitted on", min=2)
    skip_bad: bool = param(False, "skip unreadable or invalid files (or masks with undeclared ids) and list them, "
                                  "instead of stopping at the first")
    edge_resolution: bool = param(True, "label blended border pixels by their neighbours (off: nearest palette "
                                        "colour only, faster, less accurate at class borders)")
    workers: int | None = param(None, "threads reading and labelling (default: the cores, at most 8)", min=1,
                                max=256)
    kaggle_cache: str = param(KAGGLE, "where kaggle: datasets are downloaded once", notebook=from_notebooks(KAGGLE))
    max_pixels: int = param(MAX_PIXELS, "image files over this many pixels are bad files (checked in the header, "
                                        "before decoding)", min=1)
    merge: str = param("", "join classes (names or ids) into a new one, written as in the notebook's example and "
                           "docs/own-data.md; several separated by semicolons, or the flag repeated",
                       repeat="; ", metavar="NEW=A,B")
    drop: str = param("", "classes that become the ignore label 255, comma-separated (or the flag repeated)",
                      repeat=",")
    synth_count: int = param(0, "a DATA_DIR that does not exist yet: generate this many synthetic scenes there "
                                "(0: it is an error)", min=0, max=1_000_000,
                             notebook=200)  # the notebook's default DATA_DIR is generated on its first run


@dataclass
class SynthConfig(Parameters):
    """Synthetic street scenes (``python -m seglib synth``)."""

    out_dir: str = param(help="the folder the scenes are written to")
    count: int = param(200, "scenes", min=2, max=100_000)
    seed: int = param(0, "seeds the scenes", min=0, max=2**32 - 1)
    layout: str = param("pairs", "pairs (the Kaggle layout), or images with id masks as folders or as the official "
                                 "Cityscapes layout", ("pairs", "folders", "cityscapes"))
    size: int | str = param(256, "pairs: side of each half (pairs are 2*size x size); folders and cityscapes: H x W, "
                                 "e.g. 128x256")
