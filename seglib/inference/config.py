"""Every parameter of ``evaluate`` and ``export`` once (:mod:`seglib.parameters`): their flags,
notebook 03's parameters cell (with :class:`seglib.reporting.config.ReportConfig`), the batch keys
and the functions' defaults derive from :class:`EvaluateConfig`."""
from __future__ import annotations

from dataclasses import dataclass

from seglib.parameters import Parameters, param

SPLITS = ("test", "val", "train")


@dataclass
class EvaluateConfig(Parameters):
    """How a run is scored and exported.

    Example:
        ``evaluate(config.run_dir, config.prepared_dir, config.split, full_size=config.full_size)``
    """

    run_dir: str = param(help="a trained run's folder", notebook="../artifacts/default")  # notebooks run in notebooks/
    prepared_dir: str | None = param(None, "a prepared dataset (default: the one the run was trained on)",
                                     positional=True)
    split: str = param("test", "the split scored", SPLITS)
    full_size: bool = param(False, "also score at the source label files' size (data prepared from id masks or "
                                   "Cityscapes), as Cityscapes benchmarks do")
    formats: str = param("fp32,fp16,int8", "exports, comma-separated: fp32, fp16, int8 (TFLite), onnx; none: no "
                                           "export")
    calibration_images: int = param(100, "int8: train images its quantization is calibrated on", min=1,
                                    max=100_000)
    eval_images: int | None = param(None, "images of the split the exports are scored on (default: all)", min=1)
