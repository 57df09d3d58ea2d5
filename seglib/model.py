"""The segmentation model: a U-Net from segmentation-models, with the backbone's own input
preprocessing built in as the model's first layer.

The model takes RGB images with values in [0, 255] (float or uint8 cast to float). The
backbone's ``preprocess_input`` (identity for ResNets, [-1, 1] for MobileNet, ImageNet
mean/std for EfficientNet, BGR mean subtraction for VGG) is an affine map per pixel, so it is
baked into a frozen 1x1 convolution named ``preprocess``: training, evaluation, TFLite export
and prediction all see exactly the same preprocessing, with no extra code path.
"""
from __future__ import annotations

import os

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")  # segmentation-models on Keras 3 needs tf.keras mode
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _sm():
    """segmentation_models, imported without its start-up print (it would land in every report)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import segmentation_models as sm
    return sm


def available_backbones() -> list[str]:
    return sorted(_sm().Backbones.models_names())


def preprocessing_affine(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, bias)`` with ``preprocess_input(x) == x @ matrix + bias`` for RGB pixels ``x``.

    Read off segmentation-models' own preprocessing by probing it, so every backbone it knows
    is covered, including channel swaps (VGG's BGR).
    """
    preprocess = _sm().get_preprocessing(backbone)
    probes = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], np.float32).reshape(4, 1, 1, 3)
    out = np.asarray(preprocess(probes.copy()), np.float64).reshape(4, 3)
    bias = out[0]
    matrix = (out[1:] - bias) / 100.0
    check = np.array([[10, 200, 55]], np.float32).reshape(1, 1, 1, 3)
    expected = np.asarray(preprocess(check.copy()), np.float64).reshape(3)
    if not np.allclose(check.reshape(3) @ matrix + bias, expected, atol=1e-3):
        raise ValueError(f"preprocessing of backbone {backbone!r} is not an affine map per pixel")
    return matrix.astype(np.float32), bias.astype(np.float32)


def build_unet(backbone: str = "resnet34", num_classes: int = 10, input_size: int = 256,
               encoder_weights: str | None = "imagenet", activation: str = "softmax", bn_momentum: float = 0.9):
    """U-Net with ``backbone`` encoder; input (input_size, input_size, 3) RGB in [0, 255].

    ``encoder_weights=None`` starts from random weights (what tests use: no downloads here).
    Batch-norm layers use ``bn_momentum`` 0.9 rather than Keras' 0.99: with small datasets
    (hundreds of steps) the moving statistics used at validation time would otherwise still be
    far from the batch statistics, and validation loss meaningless for the first epochs.
    The output layer is float32 even under a mixed-precision policy.
    """
    import keras

    sm = _sm()
    if backbone not in sm.Backbones.models_names():
        raise ValueError(f"unknown backbone {backbone!r}; choose one of: {', '.join(available_backbones())}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a multiple of 32 (the U-Net downsamples 5 times), got {input_size}")
    matrix, bias = preprocessing_affine(backbone)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    preprocess = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False, dtype="float32")
    x = preprocess(inputs)
    preprocess.set_weights([matrix.reshape(1, 1, 3, 3), bias])
    unet = sm.Unet(backbone, classes=num_classes, activation=activation, encoder_weights=encoder_weights,
                   input_shape=(input_size, input_size, 3))
    for layer in unet.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    outputs = keras.layers.Activation("linear", dtype="float32", name="probabilities")(unet(x))
    return keras.Model(inputs, outputs, name=f"unet_{backbone}")


def load_keras_model(path: str | os.PathLike):
    """A saved seglib model (.keras), uncompiled: for inference, export and evaluation."""
    from pathlib import Path

    import keras

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file (train first)")
    _sm()  # registers the segmentation-models layers the U-Net uses
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - zipfile, h5py and Keras each raise their own kind
        raise ValueError(f"{path}: corrupt or not a Keras model file ({type(exc).__name__}: {exc}); "
                         "train the run again (--overwrite)") from exc


def detect_device() -> dict:
    """Which accelerator TensorFlow will use: Apple Metal GPU, CUDA GPU, or CPU."""
    import platform
    import sys

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus and sys.platform == "darwin":
        kind = "metal"
    elif gpus and tf.test.is_built_with_cuda():
        kind = "cuda"
    elif gpus:
        kind = "gpu"
    else:
        kind = "cpu"
    return {"kind": kind, "devices": [d.name for d in gpus] or ["CPU"], "machine": platform.machine()}


def keras_predictor(model):
    """``predict(images (N, H, W, 3) float32) -> probabilities`` as a direct call of ``model``: safe
    from several threads at once, and without ``model.predict``'s per-call set-up."""
    structured = isinstance(model.input, list)  # segmentation-models' U-Net takes a list of one input
    return lambda x: model([x] if structured else x, training=False).numpy()
