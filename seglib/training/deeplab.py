"""DeepLabV3+ (Chen et al., 2018) on a segmentation-models encoder: atrous spatial pyramid pooling
(rates 6, 12, 18 and image pooling) on the encoder's stride-16 feature, bilinear up-sampling by 4,
a 1x1 projection of the stride-4 feature joined to it, two 3x3 convolutions, up-sampling to the input.

Written here rather than taken from keras-hub: its current releases need Keras >= 3.15 and
tensorflow-text, which the TF 2.18 line of tensorflow-metal cannot take. Like the keras-io
DeepLabV3+ example, the encoder stops at stride 16 (output stride 16 without re-dilating its last
stage), so the head is small and the stride-32 stage is not built.
"""
from __future__ import annotations

RATES = (6, 12, 18)
FILTERS = 256
LOW_LEVEL_FILTERS = 48  # the paper's projection of the stride-4 feature


def conv_bn_relu(x, filters: int, kernel, name: str, rate=1):
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def atrous_kernel(rate: int, feature_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The kernel and dilation of a 3x3 convolution at ``rate`` on a map of ``feature_hw``, less the
    taps that only ever see padding: along an axis no longer than the rate, every off-centre tap
    falls outside the map (the paper's remark that the filter degenerates to 1x1), so that axis
    keeps its centre tap alone. The output is the same; with the dead taps TensorFlow's CPU kernels,
    which pad a dilated convolution out to its rate, made a training step 17x slower (DeepLabV3+ /
    MobileNetV2 at 64 px, batch 8, 2-core CPU: 7.3 s against 0.43 s)."""
    axes = [(3, rate) if rate < size else (1, 1) for size in feature_hw]
    return (axes[0][0], axes[1][0]), (axes[0][1], axes[1][1])


def aspp_branches(x, filters: int = FILTERS, rates=RATES) -> list:
    """The five parallel branches: a 1x1 convolution, a 3x3 atrous convolution per rate (each sees
    a wider context; :func:`atrous_kernel` drops its taps that see only padding), and the image's
    mean (image pooling) spread back over the feature map."""
    import keras

    branches = [conv_bn_relu(x, filters, 1, "aspp_1x1")]
    for rate in rates:
        kernel, dilation = atrous_kernel(rate, (int(x.shape[1]), int(x.shape[2])))
        branches.append(conv_bn_relu(x, filters, kernel, f"aspp_rate{rate}", dilation))
    pooled = conv_bn_relu(keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x), filters, 1,
                          "aspp_pool")
    size = (int(x.shape[1]), int(x.shape[2]))
    branches.append(keras.layers.UpSampling2D(size, interpolation="bilinear", name="aspp_pool_up")(pooled))
    return branches


def deeplabv3plus(encoder, high, low, classes: int, activation: str = "softmax"):
    """The DeepLabV3+ model on ``encoder`` (a Keras model): ``high`` and ``low`` are its layers whose
    outputs are the stride-16 and stride-4 features."""
    import keras

    x = keras.layers.Concatenate(name="aspp_concat")(aspp_branches(high.output))
    x = conv_bn_relu(x, FILTERS, 1, "aspp_project")
    x = keras.layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up")(x)
    x = keras.layers.Concatenate(name="decoder_concat")([x, conv_bn_relu(low.output, LOW_LEVEL_FILTERS, 1,
                                                                         "decoder_low")])
    x = conv_bn_relu(conv_bn_relu(x, FILTERS, 3, "decoder_conv1"), FILTERS, 3, "decoder_conv2")
    x = keras.layers.Conv2D(classes, 1, name="final_conv")(x)
    x = keras.layers.UpSampling2D(4, interpolation="bilinear", name="final_up")(x)
    return keras.Model(encoder.input, keras.layers.Activation(activation, name=activation)(x), name="deeplabv3plus")
