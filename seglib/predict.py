"""Predict masks for images, pairs or folders with a run's .keras or .tflite model.

The model file must sit in its RUN_DIR, whose ``palette.json`` gives the class colours. The
input is an image, a side-by-side pair (its left half, the photo, is used) or a folder of
either; each gets ``<name>_mask.png`` (palette colours) and ``<name>_overlay.png`` at the
photo's own size. Unreadable images are reported and skipped; the rest are still processed.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from seglib.fsutil import atomic_write_bytes
from seglib.labels import colourize
from seglib.layout import RunDir
from seglib.pairs import (
    ASPECT_TOLERANCE,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    PairError,
    decode_image,
)
from seglib.palette import Palette


def load_predictor(model_path: str | os.PathLike):
    """``(predict(images float (N,S,S,3) in [0,255]) -> probs, input size, palette)``."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no such model file")
    palette_path = RunDir(model_path.parent).palette
    if not palette_path.exists():
        raise FileNotFoundError(f"{palette_path}: missing; the model must be inside its RUN_DIR")
    palette = Palette.load(palette_path)
    if model_path.suffix == ".tflite":
        from seglib.export import TFLiteModel

        lite = TFLiteModel(model_path)
        return lite.predict, lite.size, palette
    if model_path.suffix == ".keras":
        from seglib.model import load_keras_model

        model = load_keras_model(model_path)
        return (lambda x: model.predict(x, verbose=0)), int(model.input_shape[1]), palette
    raise ValueError(f"{model_path}: expected a .keras or .tflite file")


def photo_of(image: np.ndarray) -> np.ndarray:
    """The photo: the left half of a side-by-side pair, else the image itself."""
    h, w = image.shape[:2]
    return image[:, : w // 2] if abs(w / h - 2.0) <= ASPECT_TOLERANCE else image


def output_names(files: list[Path]) -> dict[Path, str]:
    """The name each input's outputs get: its stem, or stem and suffix (``1_jpg``) where two inputs
    share a stem, so no output overwrites another."""
    stems = [f.stem for f in files]
    return {f: f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}" for f in files}


def predict_paths(model_path, input_path, out_dir, alpha: float = 0.5, max_pixels: int = MAX_PIXELS) -> dict:
    """Predict every image under ``input_path``; returns {"written": [...], "skipped": [...]}, where
    each written entry is the input and its two outputs. Unreadable or oversized images are
    skipped and listed; an input with no image to predict is an error."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{input_path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    elif input_path.is_file():
        files = [input_path]
    else:
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    predict, size, palette = load_predictor(model_path)
    names = output_names(files)
    written, skipped = [], []
    for path in files:
        try:
            photo = photo_of(decode_image(path, max_pixels))
        except PairError as exc:
            if input_path.is_file():
                raise
            skipped.append({"file": str(path), "reason": exc.reason})
            continue
        h, w = photo.shape[:2]
        x = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)[None]
        labels = np.asarray(predict(x))[0].argmax(-1).astype(np.uint8)
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        mask = colourize(palette, labels)
        overlay = cv2.addWeighted(photo, 1 - alpha, mask, alpha, 0)
        outputs = []
        for suffix, img in (("mask", mask), ("overlay", overlay)):
            png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
            outputs.append(out_dir / f"{names[path]}_{suffix}.png")
            atomic_write_bytes(outputs[-1], png)
        written.append({"file": str(path), "outputs": [str(o) for o in outputs]})
    return {"written": written, "skipped": skipped}
