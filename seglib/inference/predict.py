"""Predict masks for images, pairs, folders or videos with a run's .keras, .tflite or .onnx model.

The model file must sit in its RUN_DIR, whose ``palette.json`` gives the class colours. The
input is an image, a side-by-side pair (its left half, the photo, is used) or a folder of
either; each gets ``<name>_mask.png`` (palette colours) and ``<name>_overlay.png`` at the
photo's own size. Unreadable images are reported and skipped; the rest are still processed.
A video (.mp4/.avi/.mov) gets ``<name>_overlay.mp4`` with the same frame rate and size.

Only files predict wrote are ever replaced: OUT_DIR's marker lists them (:class:`PredictionsDir`);
any other file in the way is refused, before anything is written, unless ``overwrite``. Files
predict wrote, and this run's outputs, are never read as inputs.
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
    TooLarge,
    decode_image,
)
from seglib.data.palette import Palette
from seglib.fsutil import atomic_write_bytes, read_marker, staged_file, write_marker
from seglib.layout import PredictionsDir, RunDir

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
        from seglib.training.saved import input_hw, run_model

        model, predict = run_model(model_path)
        return predict, input_hw(model), palette
    raise ValueError(f"{model_path}: expected a .keras, .tflite or .onnx file")


def segment(predict, size: tuple[int, int], photo: np.ndarray) -> np.ndarray:
    """Class ids (H, W) of ``photo`` (H, W, 3 RGB): resized to the model's input ``size`` (H, W),
    predicted, and resized back to the photo's size with nearest neighbour."""
    h, w = photo.shape[:2]
    x = cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32)[None]
    labels = np.asarray(predict(x))[0].argmax(-1).astype(np.uint8)
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def overlay(photo: np.ndarray, mask: np.ndarray, alpha: float = 0.5, inplace: bool = False) -> np.ndarray:
    """The colour mask blended over the photo (``alpha``: the mask's weight; ``inplace``: into ``mask``)."""
    return cv2.addWeighted(photo, 1 - alpha, mask, alpha, 0, dst=mask if inplace else None)


def png(image: np.ndarray, inplace: bool = False) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 image (``inplace``: the caller's
    array may be turned BGR instead of copied, for large images)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=image if inplace else None)
    return cv2.imencode(".png", image)[1].tobytes()


def photo_of(image: np.ndarray, size: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The photo: the left half of a side-by-side pair (twice as wide, for its aspect, as the model's
    input ``size`` (H, W)), else the image itself: a 2:1 photo is a photo for a 256x512 model."""
    h, w = image.shape[:2]
    return image[:, : w // 2] if is_pair(w, h, size) else image


def is_pair(width: int, height: int, size: tuple[int, int] = (1, 1)) -> bool:
    """Whether a ``width`` x ``height`` image is a side-by-side pair for a model of input ``size``."""
    return abs(width / height / (size[1] / size[0]) - 2.0) <= ASPECT_TOLERANCE


def output_names(files: list[Path]) -> dict[Path, str]:
    """The name each input's outputs get: its stem, or stem and suffix (``1_jpg``) where two inputs
    share a stem, so no output overwrites another."""
    stems = [f.stem for f in files]
    return {f: f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}" for f in files}


def owned_outputs(folder: Path) -> set[str]:
    """The names of the files predict wrote in ``folder`` (its marker's list)."""
    marker = read_marker(folder) or {}
    return set(marker.get("files", [])) if marker.get("kind") == PredictionsDir.KIND else set()


def claim_outputs(out_dir: Path, outputs: list[Path], overwrite: bool) -> set[str]:
    """Before anything is written: each output is new, or predict's own, or ``overwrite`` says
    replace it; a file in the way is a one-line error naming it. Returns the names already owned."""
    owned = owned_outputs(out_dir)
    for path in outputs:
        if path.exists() and (path.name not in owned or not path.is_file()) and not overwrite:
            raise FileExistsError(f"{path}: exists and seglib did not write it; predict into another OUT_DIR, or "
                                  "replace it with --overwrite")
    return owned


def _record_outputs(out_dir: Path, owned: set[str], outputs: list[Path]) -> None:
    write_marker(out_dir, PredictionsDir.KIND, files=sorted(owned | {p.name for p in outputs}))


def predict_paths(model_path, input_path, out_dir, alpha: float = 0.5, max_pixels: int = MAX_PIXELS,
                  overwrite: bool = False) -> dict:
    """Predict every image under ``input_path``; returns {"written": [...], "skipped": [...]}, where
    each written entry is the input and its two outputs. Unreadable or oversized images are
    skipped and listed; an input with no image to predict is an error.

    Example:
        ``predict_paths("artifacts/default/model_int8.tflite", "photos/", "predicted/")``
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    if input_path.is_file() and input_path.suffix.lower() in VIDEO_SUFFIXES:
        raise ValueError(f"{input_path}: a video; use predict_video")
    if input_path.is_dir():
        earlier = owned_outputs(input_path)  # what predict wrote there is no input
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and p.name not in earlier)
        planned = {out_dir / f"{name}_{s}.png" for name in output_names(files).values() for s in ("mask", "overlay")}
        files = [p for p in files if p not in planned and p.resolve() not in {o.resolve() for o in planned}]
        if not files:
            raise FileNotFoundError(f"{input_path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    elif input_path.is_file():
        files = [input_path]
    else:
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    names = output_names(files)
    planned = [out_dir / f"{names[f]}_{suffix}.png" for f in files for suffix in ("mask", "overlay")]
    owned = claim_outputs(out_dir, planned, overwrite)
    predict, size, palette = load_predictor(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
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
            owned.add(outputs[-1].name)
            _record_outputs(out_dir, owned, [])  # after each file: a crash leaves every written one listed
        written.append({"file": str(path), "outputs": [str(o) for o in outputs]})
    return {"written": written, "skipped": skipped}


def predict_video(model_path, video_path, out_dir, every: int = 1, alpha: float = 0.5,
                  progress: bool = True, overwrite: bool = False, max_pixels: int = MAX_PIXELS) -> dict:
    """Write ``OUT_DIR/<name>_overlay.mp4``: every frame of the video with the predicted mask
    blended in (the same frame rate and size). With ``every`` N, one frame in N is predicted and
    the frames between reuse its mask. A video whose frames are over ``max_pixels`` is refused from
    its header, before any frame is decoded. Returns frames, frames predicted, seconds, frames/s.

    Example:
        ``predict_video("artifacts/default/model_int8.tflite", "drive.mp4", "predicted/", every=2)``
    """
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
    if width * height > max_pixels:
        capture.release()
        raise TooLarge(video_path, f"frames of {width}x{height} are {width * height} pixels, over the limit of "
                                   f"{max_pixels} (--max-pixels)")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    final = out_dir / f"{video_path.stem}_overlay.mp4"
    owned = claim_outputs(out_dir, [final], overwrite)
    predict, size, palette = load_predictor(model_path)
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
    _record_outputs(out_dir, owned, [final])
    seconds = time.perf_counter() - started
    return {"output": str(final), "frames": frames, "predicted": predicted, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 2) if seconds else None, "fps": fps, "size": [width, height]}
