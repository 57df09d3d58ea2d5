"""A saved seglib model: loaded from its .keras file (the layers of segmentation-models and keras-hub
registered first), its input size, and called for inference through one compiled call, once per run
and process (:func:`run_model`: what evaluate, export, predict and the report share)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from seglib.training.model import _sm


def load_keras_model(path: str | os.PathLike):
    """A saved seglib model (.keras), uncompiled: for inference, export and evaluation."""
    import keras

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file (train first)")
    _sm()  # registers the segmentation-models layers the U-Net uses
    if _uses_keras_hub(path):
        from seglib.training.segformer import register

        register()  # keras-hub's layers (a one-line error naming the extra without it) and seglib's SquareTiles
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - zipfile, h5py and Keras each raise their own kind
        raise ValueError(f"{path}: corrupt or not a Keras model file ({type(exc).__name__}: {exc}); "
                         "train the run again (--overwrite)") from exc


def _uses_keras_hub(path) -> bool:
    """Whether a .keras file holds keras-hub layers (SegFormer), read from its config without loading it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False  # not readable as a .keras file: load_model says so


def input_hw(model) -> tuple[int, int]:
    """``(H, W)`` of a model's input."""
    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    return int(shape[1]), int(shape[2])


def keras_predictor(model):
    """``predict(images (N, H, W, 3) float32) -> probabilities``: ``model`` called through one
    ``tf.function`` with a fixed input signature (traced here, once: later calls from several threads
    only run the graph), without eager op-by-op calls or ``model.predict``'s per-call set-up."""
    import tensorflow as tf

    structured = isinstance(model.input, list)  # segmentation-models' U-Net takes a list of one input
    height, width = input_hw(model)

    @tf.function(input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32)])
    def call(images):
        return model([images] if structured else images, training=False)

    call.get_concrete_function()
    return lambda x: call(tf.convert_to_tensor(x, tf.float32)).numpy()


def run_model(path: str | os.PathLike) -> tuple:
    """``(model, predict)``: the model of a .keras file and its :func:`keras_predictor`, loaded and traced
    once per process while the file is unchanged. Evaluation, the 03 notebook's figures, export and the
    report of one run share them instead of each paying a load and a trace (seconds each). Read-only:
    seglib's own callers only; :func:`seglib.load_model` gives users a model of their own."""
    if not Path(path).is_file():
        load_keras_model(path)  # its one-line error
    stat = Path(path).stat()
    return _run_model(str(Path(path).resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _run_model(path: str, inode: int, mtime_ns: int, size: int) -> tuple:
    """One entry: a rewritten file (a new inode, time or size) is loaded again, the older model let go."""
    model = load_keras_model(path)
    return model, keras_predictor(model)
