"""Read side-by-side image pairs: photo on the left half, colour mask on the right half.

The Kaggle "cityscapes-image-pairs" files are 512x256 JPEGs. Every bad file raises
:class:`PairError` naming the file and what is wrong, so a folder scan can either stop with a
clear message or skip the file and report it. :func:`split_files` finds a folder's pairs and
assigns them to train/val/test.
"""
from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from seglib.fsutil import TooBig, read_bounded

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
ASPECT_TOLERANCE = 0.1  # width/height may be 2 +- 0.1
FLAT_TEST_FRACTION = 0.2  # a flat folder of pairs: this share becomes the test split
MAX_PIXELS = 50_000_000  # per image file, checked in its header before decoding (a 2x Cityscapes pair is 4 MP)


class DatasetError(ValueError):
    """The data folder as a whole cannot be prepared (missing, empty, wrong layout)."""


class PairError(ValueError):
    """A pair file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TooLarge(PairError):
    """An image over the pixel limit (refused from its header, before decoding)."""


GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow's header modes


def image_size(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[int, int]:
    """``(width, height)`` an image file declares in its header, read without decoding it."""
    return image_header(data, path)[:2]


def image_header(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[int, int, str]:
    """``(width, height, mode)`` from an image file's header, without decoding it (mode as Pillow
    names it: "RGB", "RGBA", "L", "I;16", ...)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    if data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise PairError(path, f"not a readable JPEG ({exc})") from exc
        return width, height, "L" if colorspace == "Gray" else colorspace
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit that counts is ours
            with Image.open(io.BytesIO(data)) as image:
                return *image.size, image.mode
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: far over any sane one
        raise TooLarge(path, f"image is over the limit ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PairError(path, "not a readable image (corrupt or unsupported format)") from exc


def max_file_bytes(max_pixels: int = MAX_PIXELS) -> int:
    """The most bytes an image file of at most ``max_pixels`` may hold: its raw 16-bit RGBA size and
    a margin for headers; no encoding of such an image is larger."""
    return max_pixels * 8 + (1 << 20)


def decode_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3).

    The file is read through a bounded read and its header first: an image over ``max_pixels`` is
    refused before anything is decoded, so a decode never takes more than width x height x 3 bytes.
    JPEGs are decoded strictly, so a truncated one (even with its end marker put back) is refused
    instead of coming out with grey rows. 16-bit and alpha images are reduced to 8-bit RGB as they
    decode; grayscale is refused (a mask needs its colours). Every problem is this file's
    :class:`PairError`.
    """
    try:
        data = read_bounded(path, max_file_bytes(max_pixels))
    except TooBig as exc:
        raise TooLarge(path, f"{exc.reason} for an image of at most {max_pixels / 1e6:.0f} MP") from None
    except OSError as exc:
        raise PairError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image_bytes(data, path, max_pixels)


def decode_image_bytes(data: bytes, path: str | os.PathLike = "<upload>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`decode_image` of a file's bytes (``path`` names it in errors)."""
    if not data:
        raise PairError(path, "empty file")
    width, height, mode = image_header(data, path)
    if width * height > max_pixels:
        raise TooLarge(path, f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the limit of "
                             f"{max_pixels / 1e6:.0f} MP (--max-pixels)")
    if mode in GRAY_MODES:
        raise PairError(path, "grayscale image: the mask half needs its colours")
    if data[:2] == b"\xff\xd8" and mode in ("YCbCr", "RGB"):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as exc:
            raise PairError(path, f"truncated or corrupt JPEG ({exc})") from exc
    try:  # IMREAD_COLOR: 16 bits and alpha are dropped row by row as it decodes, into width x height x 3 bytes
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise PairError(path, f"not a readable image ({' '.join(str(exc).split())[-200:]})") from exc
    if image is None:
        raise PairError(path, "not a readable image (corrupt or unsupported format)")
    if image.shape[:2] != (height, width):
        raise PairError(path, f"decodes to {image.shape[1]}x{image.shape[0]}, its header says {width}x{height}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy


def parse_size(size) -> tuple[int, int]:
    """``(H, W)`` from ``256``, ``"256"``, ``"256x512"`` (H x W) or ``(256, 512)``; a one-line error
    for anything else."""
    try:
        if isinstance(size, str):
            parts = size.lower().replace(" ", "").split("x")
            if len(parts) not in (1, 2):
                raise ValueError
            height, width = int(parts[0]), int(parts[-1])
        elif isinstance(size, (int, np.integer)):
            height = width = int(size)
        else:
            height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size {size!r}: expected a side (256) or H x W (256x512)") from None
    return height, width


SIZE_STEP = 32  # every model halves H and W five times: prepared data's H and W are multiples of this


def check_size_step(height: int, width: int, what: str, step: int = SIZE_STEP,
                    rule: str = f"multiples of {SIZE_STEP} (the models halve them five times)") -> None:
    """The one check of "H and W multiples of ``step``": a :class:`DatasetError` ``"{what}: H and W
    must be {rule}"`` otherwise."""
    if min(height, width) < step or height % step or width % step:
        raise DatasetError(f"{what}: H and W must be {rule}")


def size_text(size) -> int | str:
    """A size as users write it: ``256`` for square, ``"256x512"`` (H x W) otherwise."""
    height, width = parse_size(size)
    return height if height == width else f"{height}x{width}"


def resize_pair(photo: np.ndarray, mask: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    """Resize a photo and its mask to ``size`` (H, W): the photo with area (shrinking) or linear
    (enlarging) interpolation, the mask with nearest neighbour so that no value appears that was
    not in it."""
    height, width = parse_size(size)
    if photo.shape[:2] != (height, width):
        shrinking = height * width < photo.shape[0] * photo.shape[1]
        photo = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if mask.shape[:2] != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return photo, mask


def split_pair(image: np.ndarray, path: str | os.PathLike = "<array>", size=256):
    """Split a side-by-side pair at the middle of its width into ``(photo, mask)``.

    Both halves are resized to ``size`` (a side or ``(H, W)``; ``None`` keeps them): the photo with area
    (shrinking) or linear (enlarging) interpolation, the mask with nearest neighbour so that no
    colour appears that was not in the mask.
    """
    height, width = image.shape[:2]
    if height == 0 or abs(width / height - 2.0) > ASPECT_TOLERANCE:
        raise PairError(
            path, f"size {width}x{height}: a pair must be about twice as wide as high (photo | mask)"
        )
    half = width // 2
    photo, mask = image[:, :half], image[:, half : 2 * half]
    if size is not None:
        photo, mask = resize_pair(photo, mask, size)
    return np.ascontiguousarray(photo), np.ascontiguousarray(mask)


def read_pair(path: str | os.PathLike, size=256, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair file into ``(photo, mask)`` RGB uint8 arrays of ``size`` (a side or (H, W))."""
    return split_pair(decode_image(path, max_pixels), path, size)


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def scan_folder(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """List the image files of a folder in natural order (2.jpg before 10.jpg).

    Returns ``(images, ignored)``: files whose suffix is not an image type (and hidden files)
    are not pairs; they are returned so the caller can report them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    images, ignored = [], []
    for path in sorted(folder.iterdir(), key=_natural_key):
        if not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            images.append(path)
        else:
            ignored.append(path)
    return images, ignored


def iter_pairs(
    files: Iterable, size=256, workers: int | None = None, max_pixels: int = MAX_PIXELS, read=None,
) -> Iterator[tuple]:
    """Decode pairs in parallel threads (the decoders release the GIL), yielding in input order.

    Yields ``(item, (photo, mask))`` or ``(item, PairError)``. ``read(item)`` decodes one item;
    by default items are pair files read with :func:`read_pair`. At most a few batches are in
    flight, so memory stays bounded for any folder size.
    """
    items = list(files) if read is not None else [Path(f) for f in files]
    workers = workers or min(8, os.cpu_count() or 1)
    read = read or (lambda path: read_pair(path, size, max_pixels))

    def load(item):
        try:
            return read(item)
        except PairError as exc:
            return exc

    window = 4 * workers
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            pending.append((item, pool.submit(load, item)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def seeded_split(files: list, fraction: float, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
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
    rng = np.random.default_rng(seed)
    if (data_dir / "train").is_dir():
        if not (data_dir / "val").is_dir():
            raise DatasetError(f"{data_dir}: has train/ but no val/ (Kaggle layout needs both)")
        train, ignored = scan_folder(data_dir / "train")
        test, ignored_test = scan_folder(data_dir / "val")
        ignored += ignored_test
        if not train:
            raise DatasetError(f"{data_dir / 'train'}: no pair images (.jpg/.png) found")
        train, val = seeded_split(train, val_fraction, rng)
        layout = "kaggle"
    else:
        files, ignored = scan_folder(data_dir)
        if not files:
            raise DatasetError(
                f"{data_dir}: no pair images found (expected train/ and val/ folders of pairs, "
                "or a folder of .jpg/.png pairs)"
            )
        rest, test = seeded_split(files, FLAT_TEST_FRACTION, rng)
        train, val = seeded_split(rest, val_fraction, rng)
        layout = "flat"
    return {"train": train, "val": val, "test": test}, layout, ignored
