"""Stage 2, the model and its training: every parameter (``config``) and its checks (``checks``),
the model (``model``; DeepLabV3+ in ``deeplab``), its input pipeline (``pipeline``), ``losses``,
``metrics``, ``callbacks``, the training loop (``train``), where it runs (``distribute``) and whether that
device can be trusted (``doctor``)."""
__all__ = ["config", "checks", "model", "deeplab", "pipeline", "losses", "metrics", "callbacks", "distribute", "train",
           "doctor"]
