"""Every parameter of ``evaluate`` and ``export`` once (:mod:`seglib.parameters`): their flags,
notebook 03's parameters cell (with :class:`seglib.reporting.config.ReportConfig`), the batch keys
and the functions' defaults derive from :class:`EvaluateConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from seglib.data.pairs import MAX_PIXELS
from seglib.layout import ARTIFACTS, DEFAULT, from_notebooks
from seglib.parameters import Parameters, param

SPLITS = ("test", "val", "train")
MODELS = ("int8", "fp16", "fp32", "onnx", "keras")  # what serve serves
MAX_BYTES = 20_000_000  # an upload; a 12 MP JPEG is about 5 MB


@dataclass
class EvaluateConfig(Parameters):
    """How a run is scored and exported.

    Example:
        ``evaluate(config.run_dir, config.prepared_dir, config.split, full_size=config.full_size)``
    """

    run_dir: str = param(help="a trained run's folder", notebook=from_notebooks(f"{ARTIFACTS}/{DEFAULT}"))
    prepared_dir: str | None = param(None, "a prepared dataset (default: the one the run was trained on)",
                                     positional=True)
    preset: str | None = param(None, "score a keras-hub SegFormer preset (a name or a save_to_preset folder) as it "
                                     "comes on PREPARED_DIR, written as a run to RUN_DIR (command line: evaluate "
                                     "--preset NAME PREPARED_DIR [RUN_DIR], default artifacts/preset-NAME)",
                               notebook="none")  # a Colab text field cannot hold None
    split: str = param("test", "the split scored", SPLITS)
    full_size: bool = param(False, "also score at the source label files' size (data prepared from id masks or "
                                   "Cityscapes), as Cityscapes benchmarks do")
    formats: str = param("fp32,fp16,int8", "exports, comma-separated: fp32, fp16, int8 (TFLite), onnx; none: no "
                                           "export")
    calibration_images: int = param(100, "int8: train images its quantization is calibrated on", min=1,
                                    max=100_000)
    eval_images: int | None = param(None, "images of the split the exports are scored on (default: all)", min=1)


@dataclass
class PredictConfig(Parameters):
    """What ``predict`` predicts and where its masks and overlays go."""

    model: str = param(help="RUN_DIR/model.keras or RUN_DIR/model_<fmt>.tflite (or .onnx)")
    input: str = param(help="an image, a pair, a folder of them, or a video (.mp4, .avi, .mov)")
    out_dir: str = param(help="where the masks and overlays go")
    max_pixels: int = param(MAX_PIXELS, "larger images (and video frames) are skipped, from their header", min=1,
                            max=1_000_000_000)
    every: int = param(1, "video: predict one frame in N, the others reuse its mask", min=1, max=10_000)
    overwrite: bool = param(False, "replace files in OUT_DIR that seglib did not write")


@dataclass
class ServeConfig(Parameters):
    """How a run is served over HTTP (docs/serving.md: the memory these bound)."""

    run_dir: str = param(help="a trained (and exported) run's folder")
    model: str = param("int8", "which of the run's models (the exports need `export` first)", MODELS)
    host: str = param("127.0.0.1", "0.0.0.0 to accept other machines (no authentication!)")
    port: int = param(8000, "the TCP port", min=1, max=65_535)
    threads: int = param(2, "model runners: requests predicted at once", min=1, max=64)
    queue: int = param(8, "requests that may wait for a runner; more get 503", min=0, max=1024)
    max_pixels: int = param(MAX_PIXELS, "larger images get 413 (header check)", min=1, max=1_000_000_000)
    max_bytes: int = param(MAX_BYTES, "larger uploads get 413", min=1, max=2_000_000_000)
    upload_timeout: float = param(30, "seconds an upload may take to arrive; a slower sender gets 408 and its "
                                      "place is freed", above=0, max=3600)
