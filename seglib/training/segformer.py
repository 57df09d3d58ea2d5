"""SegFormer (Xie et al., 2021) from keras-hub: a Mix Transformer (MiT-B0 ... B5) encoder and an
all-MLP decoder. seglib's one door to keras-hub, which is an optional extra (``seglib[hub]``).

keras-hub builds the encoder and decoder (``MiTBackbone``, ``SegFormerBackbone``) and loads presets
(``SegFormerImageSegmenter.from_preset``: a name downloads once from Kaggle, a folder written by
``save_to_preset`` works offline). seglib adds what it adds to every architecture: its
preprocessing layer in front (the preset's own scale and offset when it starts from one) and the
head for the data's classes. keras-hub's MiT attention takes square feature maps only
(``H = W = sqrt(N)``), so a wider (or taller) image is cut into squares inside the model, run as a
batch and put back together: the tiled inference that Cityscapes' SegFormer is scored with.

Example:
    ``build_model("segformer", "mit_b0", num_classes=10, input_size=128, encoder_weights=None)``
"""
from __future__ import annotations

import numpy as np

EXTRA = 'keras-hub is not installed: SegFormer needs seglib\'s hub extra (pip install "seglib[hub]")'

# MiT variants (the paper's Table 6; keras-hub's presets hold the same): widths, blocks per stage,
# and the decoder's width.
VARIANTS = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
SHARED = {"num_layers": 4, "layerwise_num_heads": [1, 2, 5, 8], "layerwise_sr_ratios": [8, 4, 2, 1],
          "layerwise_patch_sizes": [7, 3, 3, 3], "layerwise_strides": [4, 2, 2, 2], "max_drop_path_rate": 0.1}
# ImageNet's mean and std: what SegFormer's training normalises with (a preset brings its own)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# The one 19-class preset family keras-hub has: Cityscapes', in trainId order
CITYSCAPES_CLASSES = 19


def keras_hub():
    """keras_hub, or the one-line error naming the extra (a ValueError: the commands print it as one line)."""
    try:
        import keras_hub
    except ImportError:
        raise ValueError(EXTRA) from None
    return keras_hub


def check_installed() -> None:
    """The one-line error naming the extra when keras-hub is missing, without importing it (or TensorFlow)."""
    import importlib.util

    if importlib.util.find_spec("keras_hub") is None:
        raise ValueError(EXTRA)


def encoders() -> list[str]:
    return list(VARIANTS)


def preprocessing(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, bias)``: RGB in [0, 255] to ImageNet-normalised values (random init; a preset's own
    converter replaces it, :func:`start_from_preset`)."""
    return np.diag(1 / (255 * STD)).astype(np.float32), (-MEAN / STD).astype(np.float32)


def check_size(height: int, width: int) -> str | None:
    """Why SegFormer cannot take ``height`` x ``width``, or None: the longer side a multiple of the shorter,
    and the shorter at least 64 (keras-hub's MiT fails to build on 32 px: its last stage would be 1x1)."""
    if min(height, width) < 64:
        return (f"segformer cannot take {height}x{width} images: keras-hub's MiT needs at least 64 px on the shorter "
                "side")
    if max(height, width) % min(height, width):
        return (f"segformer cannot take {height}x{width} images: keras-hub's MiT takes squares, so the longer side "
                "must be a multiple of the shorter (seglib cuts the image into squares), e.g. 128x256 or 256x512")
    return None


def build(backbone: str, classes: int, activation: str, encoder_weights, input_shape):
    """A random-init SegFormer on the MiT ``backbone`` (``build_model`` has refused any ``encoder_weights``
    but None: keras-hub has no ImageNet MiT; pretrained starts come from presets, ``--preset``)."""
    hub = keras_hub()
    widths, depths, decoder = VARIANTS[backbone]
    side = min(input_shape[:2])
    encoder = hub.models.MiTBackbone(image_shape=(side, side, 3), hidden_dims=list(widths),
                                     layerwise_depths=list(depths), **SHARED)
    return net(hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=decoder), classes, activation,
               input_shape)


def net(segformer_backbone, classes: int, activation: str, input_shape):
    """keras-hub's SegFormer head (dropout, 1x1 convolution, bilinear up-sampling) on ``segformer_backbone``,
    run on the image's squares."""
    import keras

    from seglib.training.segformer_layers import InferenceUnlessTraining, SquareTiles

    height, width = input_shape[:2]
    side = min(height, width)
    inputs = keras.Input(tuple(input_shape))
    x = SquareTiles(height, width)(inputs) if height != width else inputs
    x = InferenceUnlessTraining(segformer_backbone, name="segformer_backbone")(x)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Conv2D(classes, 1, name="segmentation_head")(x)
    x = keras.layers.Resizing(side, side, interpolation="bilinear")(x)
    x = SquareTiles(height, width, inverse=True)(x) if height != width else x
    return keras.Model(inputs, keras.layers.Activation(activation)(x), name="segformer")


def register() -> None:
    """Make keras-hub's and seglib's layers known to Keras, to load a saved SegFormer."""
    keras_hub()
    import seglib.training.segformer_layers  # noqa: F401 - registers seglib's layers


def load_preset(preset: str):
    """keras-hub's ``SegFormerImageSegmenter`` of ``preset`` (a name downloads once; a folder is read).
    Without Keras' warning that the task "has unbuilt state" (its preprocessor, which seglib does not use): with
    keras-hub 0.29, two lines of noise at a process's first preset load (0.32's Task has a build(); 0.21.1 and
    0.26 did not warn here)."""
    import warnings
    from pathlib import Path

    hub = keras_hub()
    if Path(preset).exists() and not Path(preset).is_dir():
        raise ValueError(f"{preset}: a preset is a keras-hub preset name or a folder written by save_to_preset")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer 'seg_former_image_segmenter'",
                                    category=UserWarning)
            return hub.models.SegFormerImageSegmenter.from_preset(preset)
    except Exception as exc:  # noqa: BLE001 - keras-hub, kagglehub and Keras raise many kinds
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        where = ("a folder written by save_to_preset" if Path(preset).is_dir() else
                 "a name downloads on first use (it needs the internet); offline, give a folder written by "
                 "save_to_preset")
        raise ValueError(f"{preset}: could not load it as a keras-hub SegFormer preset ({first}); {where}") from exc


def preset_variant(task) -> str:
    """The MiT variant (``mit_b0`` ...) of a loaded preset."""
    encoder = task.backbone.image_encoder
    found = (tuple(encoder.hidden_dims), tuple(encoder.layerwise_depths), task.backbone.projection_filters)
    for name, variant in VARIANTS.items():
        if variant == found:
            return name
    raise ValueError(f"a SegFormer preset on an MiT seglib does not know (widths {found[0]}, depths {found[1]})")


def preset_affine(task) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, bias)`` of the preset's image converter (``x * scale + offset``, per channel)."""
    converter = getattr(task.preprocessor, "image_converter", None)
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale, np.float32), (3,))
    offset = np.broadcast_to(np.asarray(0.0 if offset is None else offset, np.float32), (3,))
    return np.diag(scale).astype(np.float32), offset.astype(np.float32)


def head_order(task, class_names: list[str]) -> list[int] | None:
    """For each of the data's classes, its column in the preset's head, when the data has the preset's
    classes (Cityscapes' 19 trainIds, in any order); None when the head must be replaced."""
    from seglib.data.cityscapes import TRAIN_NAMES

    if task.num_classes != CITYSCAPES_CLASSES or sorted(class_names) != sorted(TRAIN_NAMES):
        return None
    return [list(TRAIN_NAMES).index(name) for name in class_names]


def start_from_preset(model, task, class_names: list[str]) -> dict:
    """Copy a preset into a seglib SegFormer ``model`` of the same variant: the encoder and decoder, its
    preprocessing, and the head when the classes are the preset's. Returns what was kept."""
    segformer = model.get_layer("segformer")
    segformer.get_layer("segformer_backbone").inner.set_weights(task.backbone.get_weights())
    matrix, bias = preset_affine(task)
    model.get_layer("preprocess").set_weights([matrix.reshape(1, 1, 3, 3), bias])
    order = head_order(task, class_names)
    if order is not None:
        kernel, bias = task.output_segmentation_head.get_weights()
        segformer.get_layer("segmentation_head").set_weights([kernel[..., order], bias[order]])
    return {"head": "kept" if order is not None else "replaced", "preset_classes": int(task.num_classes)}
