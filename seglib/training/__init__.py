"""Stage 2, the model and its training: every parameter (``config``) and its checks (``checks``),
the model (``model``; DeepLabV3+ in ``deeplab``; a tiny U-Net from scratch in ``tinyunet``; SegFormer
from keras-hub in ``segformer``, with seglib's layers around it in ``segformer_layers``; a saved one
loaded and called in ``saved``), its input pipeline (``pipeline``), ``losses``, ``metrics``,
``callbacks``, the training loop (``train``), a keras-hub preset as it comes (``presets``), where it
runs (``distribute``) and whether that device can be trusted (``doctor``)."""
__all__ = ["config", "checks", "model", "deeplab", "tinyunet", "segformer", "segformer_layers", "saved", "pipeline",
           "losses", "metrics", "callbacks", "distribute", "train", "presets", "doctor"]
