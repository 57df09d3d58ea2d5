"""Stage 3, a trained run used: scored on a split (``evaluate``), exported to TFLite and ONNX
(``export``), applied to images and videos (``predict``) and served over HTTP (``serve``)."""
__all__ = ["config", "evaluate", "export", "predict", "serve"]
