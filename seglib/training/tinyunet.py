"""A tiny U-Net built from scratch: four levels of one 3x3 convolution each way, joined by skip connections,
as in the keras-io ``oxford_pets_image_segmentation`` example without its separable and residual blocks.

It has no pretrained encoder and 0.25 M parameters (base8; a U-Net / MobileNet has 8.3 M); what it is
for is speed on a CPU: Keras builds its first training step (an Adam update per variable: 29 against
113) about three times sooner than the smallest segmentation-models U-Net's (``train()`` of two epochs
at 64 px: 3.6-4.3 s against 12.2 s on one idle core here). That makes it the model to try a pipeline, a
sweep file or a cluster with before the real run, and the one seglib's own tests train where the
architecture is not what they test. It is not a model to judge a dataset's quality by.

Example:

    python -m seglib train data/prepared/default artifacts/try --arch tinyunet --backbone base8 \\
        --encoder-weights none --epochs 2
"""
from __future__ import annotations

import numpy as np

LEVELS = 4  # the input is halved four times: H and W multiples of 16
# --backbone: the width of the first level (doubled at each level down)
WIDTHS = {"base8": 8, "base16": 16, "base32": 32}


def encoders() -> list[str]:
    return list(WIDTHS)


def preprocessing(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, bias)``: RGB in [0, 255] to [-1, 1]."""
    return np.eye(3, dtype=np.float32) / 127.5, -np.ones(3, np.float32)


def build(backbone: str, classes: int, activation: str, encoder_weights, input_shape):
    """The network for ``input_shape`` (H, W, 3), random init (``build_model`` has refused any
    ``encoder_weights`` but None: the registry entry says it takes none)."""
    import keras

    width = WIDTHS[backbone]
    inputs = keras.Input(input_shape)
    x, skips = inputs, []
    for level in range(LEVELS):
        x = _conv_bn_relu(x, width << level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"down{level}_pool")(x)
    x = _conv_bn_relu(x, width << LEVELS, "bottom")
    for level in reversed(range(LEVELS)):
        x = keras.layers.UpSampling2D(name=f"up{level}_upsample")(x)
        x = keras.layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_bn_relu(x, width << level, f"up{level}")
    outputs = keras.layers.Conv2D(classes, 1, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=f"tinyunet_{backbone}")


def _conv_bn_relu(x, filters: int, name: str):
    import keras

    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)
