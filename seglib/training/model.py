"""The segmentation model: an architecture of the registry :data:`ARCHITECTURES` (U-Net, FPN, Linknet, PSPNet from
segmentation-models; DeepLabV3+; SegFormer from keras-hub) on an encoder, with the backbone's own input
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

import math  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from seglib.data.pairs import SIZE_STEP, check_size_step  # noqa: E402


def _sm():
    """segmentation_models, imported without its start-up print (it would land in every report)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import segmentation_models as sm
    return sm


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


def _segmentation_models(name: str):
    """A builder for one of segmentation-models' own architectures (``Unet``, ``FPN``, ...)."""
    def build(backbone: str, classes: int, activation: str, encoder_weights, input_shape):
        weights_file = encoder_weights not in (None, "imagenet")
        net = getattr(_sm(), name)(backbone, classes=classes, activation=activation,
                                   encoder_weights=None if weights_file else encoder_weights, input_shape=input_shape)
        if weights_file:
            load_encoder_weights(net, backbone, encoder_weights)
        return net
    return build


def _deeplab(backbone: str, classes: int, activation: str, encoder_weights, input_shape):
    """DeepLabV3+ on the encoder segmentation-models builds for ``backbone``, on its stride-16 and
    stride-4 features (the U-Net's skip connections)."""
    from seglib.training.deeplab import deeplabv3plus

    net = encoder(backbone, encoder_weights, input_shape)
    layers = [net.get_layer(name=f) if isinstance(f, str) else net.get_layer(index=f)
              for f in _sm().Backbones.get_feature_layers(backbone, n=4)]  # strides 16, 8, 4, 2
    high, low = layers[0], layers[2]
    if (high.output.shape[1], low.output.shape[1]) != (input_shape[0] // 16, input_shape[0] // 4):
        raise ValueError(f"deeplabv3plus: the {backbone} encoder has no stride-16 and stride-4 features; "
                         "use e.g. mobilenetv2, resnet34 or efficientnetb0")
    return deeplabv3plus(net, high, low, classes, activation)


# segmentation-models' encoders: its pinned 1.0.1 (its last release, 2020) cannot change them, and a wrong
# --backbone is refused from this list before TensorFlow is imported (7 s). A test holds it to the library's.
SM_BACKBONES = ("densenet121", "densenet169", "densenet201", "efficientnetb0", "efficientnetb1", "efficientnetb2",
                "efficientnetb3", "efficientnetb4", "efficientnetb5", "efficientnetb6", "efficientnetb7",
                "inceptionresnetv2", "inceptionv3", "mobilenet", "mobilenetv2", "resnet101", "resnet152", "resnet18",
                "resnet34", "resnet50", "resnext101", "resnext50", "senet154", "seresnet101", "seresnet152",
                "seresnet18", "seresnet34", "seresnet50", "seresnext101", "seresnext50", "vgg16", "vgg19")


@dataclass(frozen=True)
class Architecture:
    """One kind of model, as the registry :data:`ARCHITECTURES` holds it.

    Args:
        build: ``(backbone, classes, activation, encoder_weights, input_shape) -> keras.Model`` (the
            network without seglib's preprocessing layer).
        size_step: H and W must be multiples of this, and of :data:`SIZE_STEP` (prepared data).
        size_why: why, for the error message.
        encoders: ``() -> names`` of the backbones it takes.
        exports: the formats ``export`` makes of it.
        preprocessing: ``backbone -> (matrix, bias)``: the affine map per RGB pixel its encoder expects.
        check_size: ``(H, W) -> why not, or None``: a rule on sizes besides the step.
        encoder_weights: it takes ``--encoder-weights`` (imagenet or a file); if not, only none.
        pretrained: when it takes no encoder weights, how it starts pretrained instead (said in that error).
        check_installed: raises a one-line error when a library it needs (an optional extra) is missing.
    """

    build: Callable
    size_step: int = SIZE_STEP
    size_why: str = "the encoder halves them five times"
    encoders: Callable[[], list[str]] = lambda: list(SM_BACKBONES)
    exports: tuple[str, ...] = ("fp32", "fp16", "int8", "onnx")
    preprocessing: Callable[[str], tuple] = preprocessing_affine
    check_size: Callable[[int, int], str | None] = lambda height, width: None
    encoder_weights: bool = True
    pretrained: str = ""
    check_installed: Callable[[], None] = lambda: None


def _part(module: str, name: str) -> Callable:
    """The function ``name`` of ``seglib.training.<module>``, imported when called (segformer is keras-hub's
    door: importing it must wait until a SegFormer is asked for)."""
    def call(*args):
        import importlib

        return getattr(importlib.import_module(f"seglib.training.{module}"), name)(*args)
    return call


# Every architecture seglib builds: the choices of --arch, its checks and docs/architectures.md derive from it.
ARCHITECTURES = {
    "unet": Architecture(_segmentation_models("Unet")),
    "fpn": Architecture(_segmentation_models("FPN")),
    "linknet": Architecture(_segmentation_models("Linknet")),
    "pspnet": Architecture(_segmentation_models("PSPNet"), 48, "PSPNet's pooling"),
    "deeplabv3plus": Architecture(_deeplab, 16, "its ASPP runs at 1/16 of the input"),
    "segformer": Architecture(_part("segformer", "build"), encoders=_part("segformer", "encoders"),
                              preprocessing=_part("segformer", "preprocessing"),
                              check_size=_part("segformer", "check_size"), encoder_weights=False,
                              pretrained="start from pretrained weights with --preset NAME_OR_FOLDER (PRESET)",
                              check_installed=_part("segformer", "check_installed")),
    "tinyunet": Architecture(_part("tinyunet", "build"), 16, "it halves them four times",
                             encoders=_part("tinyunet", "encoders"), preprocessing=_part("tinyunet", "preprocessing"),
                             encoder_weights=False),
}


def architectures_table() -> str:
    """The registry as a Markdown table (docs/notebooks.md, written by ``make notebooks``)."""
    rows = ["| `--arch` | H and W multiples of | encoders (`--backbone`) | exports |", "|---|---|---|---|"]
    for name, entry in ARCHITECTURES.items():
        step = math.lcm(entry.size_step, SIZE_STEP)
        why = f"{step} ({entry.size_step}: {entry.size_why})" if entry.size_step != SIZE_STEP else f"{step}"
        encoders = entry.encoders()
        shown = ", ".join(encoders[:3]) + (", ..." if len(encoders) > 3 else "")
        rows.append(f"| `{name}` | {why} | {len(encoders)} ({shown}) | "
                    f"{', '.join(entry.exports)} |")
    return "\n".join(rows)


def architecture(name: str) -> Architecture:
    """The registry's entry for ``name``; a one-line error listing the known ones otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def check_backbone(arch: str, backbone: str) -> None:
    """``backbone`` is an encoder ``arch`` takes; a one-line error listing them otherwise."""
    architecture(arch).check_installed()
    known = architecture(arch).encoders()
    if backbone not in known:
        raise ValueError(f"unknown backbone {backbone!r} for {arch}; choose one of: {', '.join(known)}")


def check_encoder_weights(encoder_weights: str | None, arch: str = "unet") -> None:
    """``imagenet``, ``None`` or an existing file (the three things --encoder-weights takes); only ``None``
    for an architecture without encoder weights files (tinyunet; SegFormer starts pretrained from a preset)."""
    entry = architecture(arch)
    if encoder_weights is not None and not entry.encoder_weights:
        raise ValueError(f"ENCODER_WEIGHTS (--encoder-weights): {arch} takes none (random init), got "
                         f"{encoder_weights}" + (f"; {entry.pretrained}" if entry.pretrained else ""))
    if encoder_weights not in (None, "imagenet") and not Path(encoder_weights).is_file():
        raise FileNotFoundError(f"{encoder_weights}: no such encoder weights file (--encoder-weights takes imagenet, "
                                "none or the path of a weights file)")


def check_input_size(arch: str, size) -> tuple[int, int]:
    """``(H, W)`` of ``size`` (an int for square) when ``arch`` accepts it; a one-line error otherwise."""
    entry = architecture(arch)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    step = math.lcm(entry.size_step, SIZE_STEP)
    rule = f"multiples of {entry.size_step} ({entry.size_why})" + (
        f" and of {SIZE_STEP} (prepared data): {step}, {2 * step}, {3 * step}" if entry.size_step != SIZE_STEP else "")
    check_size_step(height, width, f"{arch} cannot take {height}x{width} images", step, rule)
    why_not = entry.check_size(height, width)
    if why_not:
        raise ValueError(why_not)
    return height, width


def build_model(arch: str = "unet", backbone: str = "resnet34", num_classes: int = 10, input_size=256,
                encoder_weights: str | None = "imagenet", activation: str = "softmax", bn_momentum: float = 0.9):
    """An ``arch`` of :data:`ARCHITECTURES` on a ``backbone`` encoder, input (H, W, 3) RGB in [0, 255],
    ``input_size`` an int (square) or ``(H, W)``.

    ``encoder_weights``: ``"imagenet"`` (segmentation-models downloads the file once), ``None``
    (random init: what tests use, no downloads here) or the path of a local weights file of the
    encoder (:func:`load_encoder_weights`; for machines without internet).
    Batch-norm layers use ``bn_momentum`` 0.9 rather than Keras' 0.99: with small datasets
    (hundreds of steps) the moving statistics used at validation time would otherwise still be
    far from the batch statistics, and validation loss meaningless for the first epochs.
    The output layer is float32 even under a mixed-precision policy.
    """
    import keras

    check_backbone(arch, backbone)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    height, width = check_input_size(arch, input_size)
    check_encoder_weights(encoder_weights, arch)
    matrix, bias = architecture(arch).preprocessing(backbone)
    inputs = keras.Input((height, width, 3), name="image")
    preprocess = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False, dtype="float32")
    x = preprocess(inputs)
    preprocess.set_weights([matrix.reshape(1, 1, 3, 3), bias])
    net = architecture(arch).build(backbone, num_classes, activation, encoder_weights, (height, width, 3))
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    outputs = keras.layers.Activation("linear", dtype="float32", name="probabilities")(net(x))
    return keras.Model(inputs, outputs, name=f"{arch}_{backbone}")


def encoder(backbone: str, weights_path: str | os.PathLike | None = None, input_shape=(None, None, 3)):
    """The bare encoder segmentation-models builds for ``backbone`` (no classifier), with random
    weights, ImageNet's (``"imagenet"``, downloaded once) or those of ``weights_path``: what an
    encoder weights file holds."""
    sm = _sm()
    keras_modules = {"backend": sm._KERAS_BACKEND, "layers": sm._KERAS_LAYERS, "models": sm._KERAS_MODELS,
                     "utils": sm._KERAS_UTILS}  # what segmentation-models passes its own backbone factories
    imagenet = weights_path == "imagenet"
    model = sm.Backbones.get_backbone(backbone, input_shape=input_shape, weights="imagenet" if imagenet else None,
                                      include_top=False, **keras_modules)
    if weights_path is not None and not imagenet:
        import warnings

        try:
            with warnings.catch_warnings():  # Keras only warns when parts of the file do not fit the model
                warnings.simplefilter("error", UserWarning)
                model.load_weights(str(weights_path))
        except Exception as exc:  # noqa: BLE001 - h5py and Keras raise several kinds for a wrong file
            raise ValueError(f"{weights_path}: not weights of a {backbone} encoder ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    return model


def load_encoder_weights(net, backbone: str, weights_path: str | os.PathLike) -> int:
    """Load a local encoder weights file into the encoder layers of a segmentation-models ``net``;
    returns the number of layers loaded.

    The file is what segmentation-models would download for ``encoder_weights="imagenet"`` (for
    ResNets the ``*_imagenet_1000_no_top.h5`` of qubvel/classification_models, see
    :func:`imagenet_weights_source`), or an encoder saved with ``save_weights``. It is loaded into a
    bare encoder, then copied layer by layer (same names) into ``net``.
    """
    source = encoder(backbone, weights_path)
    loaded = 0
    for layer in source.layers:
        values = layer.get_weights()
        if not values:
            continue
        try:
            target = net.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"{weights_path}: layer {layer.name!r} of the {backbone} encoder is not in the "
                             f"model") from None
        target.set_weights(values)
        loaded += 1
    if not loaded:
        raise ValueError(f"{weights_path}: holds no weights for the {backbone} encoder")
    return loaded


def imagenet_weights_source(backbone: str) -> dict | None:
    """``{"url", "name", "md5"}`` of the ImageNet encoder file segmentation-models downloads for
    ``backbone`` (the classification_models backbones: ResNets, SE-ResNe(X)ts, ...), or None for the
    backbones Keras' own applications provide (their files come with ``keras.applications``)."""
    from classification_models.weights import WEIGHTS_COLLECTION

    for item in WEIGHTS_COLLECTION:
        if item["model"] == backbone and item["dataset"] == "imagenet" and not item["include_top"]:
            return {"url": item["url"], "name": item["name"], "md5": item["md5"]}
    return None


def fetch_encoder_weights(backbone: str, out: str | os.PathLike) -> Path:
    """Download ``backbone``'s ImageNet encoder file once (on a machine with internet) to ``out``, for
    ``--encoder-weights PATH`` on machines without. Checked against its md5 by Keras."""
    import shutil

    import keras

    source = imagenet_weights_source(backbone)
    if source is None:
        raise ValueError(f"{backbone}: its ImageNet weights come from keras.applications, not from a "
                         "classification_models file; build it once with encoder_weights='imagenet' and "
                         "save the encoder with save_weights")
    cached = keras.utils.get_file(source["name"], source["url"], cache_subdir="models", md5_hash=source["md5"])
    out = Path(out)
    if out.is_dir():
        out = out / source["name"]
    shutil.copyfile(cached, out)
    return out


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

