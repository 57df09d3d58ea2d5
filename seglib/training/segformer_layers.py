"""seglib's own layers around keras-hub's SegFormer. Imports Keras: imported only where a SegFormer is
built or loaded."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="seglib")
class SquareTiles(keras.layers.Layer):
    """(B, H, W, C) -> (B * n, S, S, C): the n squares of side S = min(H, W) along the longer side, or
    back (``inverse``). Reshapes and a transpose, which TFLite and ONNX take as they are.

    Args:
        height, width: the image's size (the longer side a multiple of the shorter).
        inverse: squares back to images.

    Example:
        ``SquareTiles(128, 256)(images)`` gives twice as many 128x128 images.
    """

    def __init__(self, height: int, width: int, inverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width, self.inverse = height, width, inverse

    def call(self, x):
        side, wide = min(self.height, self.width), self.width > self.height
        n, channels = max(self.height, self.width) // side, x.shape[-1]
        perm = [0, 2, 1, 3, 4] if wide else [0, 1, 2, 3, 4]  # wide: (B, S, n, S, C) <-> (B, n, S, S, C)
        if self.inverse:
            x = ops.transpose(ops.reshape(x, (-1, n, side, side, channels)), perm)
            return ops.reshape(x, (-1, self.height, self.width, channels))
        x = ops.reshape(x, (-1, side, n, side, channels) if wide else (-1, n, side, side, channels))
        return ops.reshape(ops.transpose(x, perm), (-1, side, side, channels))

    def compute_output_shape(self, shape):
        side = min(self.height, self.width)
        return (None, self.height, self.width, shape[-1]) if self.inverse else (None, side, side, shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="seglib")
class InferenceUnlessTraining(keras.layers.Layer):
    """Calls ``inner`` with ``training=False`` unless training is asked for.

    keras-hub's ``SegFormerBackbone`` called with ``training=None`` (what ``model(x)``, ``model.export``
    and the TFLite and ONNX converters do) computes neither its inference nor its training output (its
    batch-norm; measured: up to 3.5 apart), so an export agreed with the model on 69% of pixels.

    Args:
        inner: the layer or model to call.

    Example:
        ``x = InferenceUnlessTraining(segformer_backbone)(x)``
    """

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x, training=None):
        return self.inner(x, training=bool(training))

    def compute_output_shape(self, shape):
        return self.inner.compute_output_shape(shape)

    def get_config(self):
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("inner")), **config)
