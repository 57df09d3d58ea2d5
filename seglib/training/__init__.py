"""Stage 2, the model and its training: every parameter (``config``) and its checks (``checks``),
the model (``model``), its input pipeline (``pipeline``), ``losses``, ``metrics``, ``callbacks``,
the training loop (``train``) and where it runs (``distribute``)."""
__all__ = ["config", "checks", "model", "pipeline", "losses", "metrics", "callbacks", "distribute", "train"]
