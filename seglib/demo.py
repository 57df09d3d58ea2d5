"""The one-command demo: synthetic (or given) pairs -> prepared dataset -> trained U-Net ->
test metrics -> TFLite exports and ``reports/demo/report.html``. ``make demo`` runs it; the
test suite runs the same training defaults."""
from __future__ import annotations

import os
from pathlib import Path

DEMO = {"count": 240, "size": 128, "backbone": "resnet34", "epochs": 6, "batch_size": 8, "lr": 1e-3}


def run_demo(out: str | os.PathLike = ".", data_dir: str | os.PathLike | None = None,
             encoder_weights: str | None = None, progress: bool = True, verbose: int | str = 2,
             report: bool = True) -> dict:
    """Run the demo under ``out`` (``data/``, ``artifacts/``); returns the test metrics.

    Without ``data_dir``, synthetic pairs are generated (offline, so the encoder starts from
    random weights unless ``encoder_weights="imagenet"`` is given).
    """
    from seglib.evaluate import evaluate
    from seglib.prepare import prepare
    from seglib.report import build_report
    from seglib.synthetic import generate
    from seglib.train import TrainConfig, train

    out = Path(out)
    if data_dir is None:
        data_dir = out / "data" / "synthetic"
        generate(data_dir, count=DEMO["count"], seed=0, progress=progress)
    prepared = out / "data" / "prepared-demo"
    prepare(data_dir, prepared, size=DEMO["size"], seed=0, skip_bad=True, progress=progress)
    run_dir = out / "artifacts" / "runs" / "demo"
    train(TrainConfig(str(prepared), str(run_dir), backbone=DEMO["backbone"], epochs=DEMO["epochs"],
                      batch_size=DEMO["batch_size"], lr=DEMO["lr"], encoder_weights=encoder_weights), verbose=verbose)
    metrics = evaluate(run_dir, prepared, "test")
    print(f"demo: {run_dir} test pixel accuracy {metrics['pixel_accuracy']:.4f}, mean IoU {metrics['mean_iou']:.4f}")
    if report:
        html = build_report(run_dir, out / "reports" / "demo", CALIBRATION_IMAGES=50)
        print(f"demo report: {html}")
    return metrics
