"""Predict masks for images, pairs, folders or videos with a run's .keras, .tflite or .onnx model.

The model file must sit in its RUN_DIR, whose ``palette.json`` gives the class colours. The
input is an image, a side-by-side pair (its left half, the photo, is used) or a folder of
either; each gets ``<name>_mask.png`` (palette colours) and ``<name>_overlay.png`` at the
photo's own size. Unreadable images are reported and skipped; the rest are still processed.
A video (.mp4/.avi/.mov) gets ``<name>_overlay.mp4`` with the same frame rate and size.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from seglib.data.labels import colourize
from seglib.data.pairs import (
    ASPECT_TOLERANCE,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    PairError,
    decode_image,
)
from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_bytes, staged_file
from seglib.layout import RunDir

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov"}


def load_predictor(model_path: str | os.PathLike):
    """``(predict(images float (N,H,W,3) in [0,255]) -> probs, input (H, W), palette)``."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no such model file")
    palette_path = RunDir(model_path.parent).palette
    if not palette_path.exists():
        raise FileNotFoundError(f"{palette_path}: missing; the model must be inside its RUN_DIR")
    palette = Palette.load(palette_path)
    if model_path.suffix == ".tflite":
        from seglib.inference.export import TFLiteModel

        lite = TFLiteModel(model_path)
        return lite.predict, lite.size, palette
    if model_path.suffix == ".onnx":
        from seglib.inference.export import OnnxModel

        onnx = OnnxModel(model_path)
        return onnx.predict, onnx.size, palette
    if model_path.suffix == ".keras":
        from seglib.training.model import input_hw, keras_predictor, load_keras_model

        model = load_keras_model(model_path)
        return keras_predictor(model), input_hw(model), palette
    raise ValueError(f"{model_path}: expected a .keras, .tflite or .onnx file")


def segment(predict, size: tuple[int, int], photo: np.ndarray) -> np.ndarray:
    """Class ids (H, W) of ``photo`` (H, W, 3 RGB): resized to the model's input ``size`` (H, W),
    predicted, and resized back to the photo's size with nearest neighbour."""
    h, w = photo.shape[:2]
    x = cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32)[None]
    labels = np.asarray(predict(x))[0].argmax(-1).astype(np.uint8)
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def overlay(photo: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colour mask blended over the photo (``alpha``: the mask's weight)."""
    return cv2.addWeighted(photo, 1 - alpha, mask, alpha, 0)


def png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 image."""
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)[1].tobytes()


def photo_of(image: np.ndarray, size: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The photo: the left half of a side-by-side pair (twice as wide, for its aspect, as the model's
    input ``size`` (H, W)), else the image itself: a 2:1 photo is a photo for a 256x512 model."""
    h, w = image.shape[:2]
    aspect = size[1] / size[0]
    return image[:, : w // 2] if abs(w / h / aspect - 2.0) <= ASPECT_TOLERANCE else image


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
    if input_path.is_file() and input_path.suffix.lower() in VIDEO_SUFFIXES:
        raise ValueError(f"{input_path}: a video; use predict_video")
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
            photo = photo_of(decode_image(path, max_pixels), size)
        except PairError as exc:
            if input_path.is_file():
                raise
            skipped.append({"file": str(path), "reason": exc.reason})
            continue
        mask = colourize(palette, segment(predict, size, photo))
        outputs = []
        for suffix, img in (("mask", mask), ("overlay", overlay(photo, mask, alpha))):
            outputs.append(out_dir / f"{names[path]}_{suffix}.png")
            atomic_write_bytes(outputs[-1], png(img))
        written.append({"file": str(path), "outputs": [str(o) for o in outputs]})
    return {"written": written, "skipped": skipped}


def predict_video(model_path, video_path, out_dir, every: int = 1, alpha: float = 0.5,
                  progress: bool = True) -> dict:
    """Write ``OUT_DIR/<name>_overlay.mp4``: every frame of the video with the predicted mask
    blended in (the same frame rate and size). With ``every`` N, one frame in N is predicted and
    the frames between reuse its mask. Returns frames, frames predicted, seconds, frames/s."""
    import time

    from tqdm import tqdm

    video_path, out_dir = Path(video_path), Path(out_dir)
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    capture = cv2.VideoCapture(str(video_path))
    if not video_path.is_file() or not capture.isOpened():
        raise PairError(video_path, "not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    predict, size, palette = load_predictor(model_path)
    final = out_dir / f"{video_path.stem}_overlay.mp4"
    frames = predicted = 0
    started = time.perf_counter()
    try:
        with staged_file(final, ".mp4") as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            try:
                if not writer.isOpened():
                    raise OSError(f"{tmp}: cannot write an mp4 video here")
                with tqdm(total=total, desc=video_path.name, unit="frame", disable=not progress, leave=False) as bar:
                    while True:
                        ok, frame = capture.read()
                        if not ok:
                            break
                        photo = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                        if frames % every == 0:
                            mask = colourize(palette, segment(predict, size, photo))
                            predicted += 1
                        writer.write(cv2.cvtColor(overlay(photo, mask, alpha), cv2.COLOR_RGB2BGR))
                        frames += 1
                        bar.update()
            finally:
                writer.release()
            if frames == 0:
                raise PairError(video_path, "no frames could be read")
    finally:
        capture.release()
    seconds = time.perf_counter() - started
    return {"output": str(final), "frames": frames, "predicted": predicted, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 2) if seconds else None, "fps": fps, "size": [width, height]}
