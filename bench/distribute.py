"""Distributed training and parallel batches, measured in one run.

1. Training images/s of the default strategy (one device) against a MirroredStrategy over two
   logical CPU devices (or, on a machine with 2+ GPUs, over the GPUs) at the same global batch:
   the same model and data, epochs interleaved over --rounds, median epoch time (after a warm-up
   epoch each: tracing). On CPU this shows the strategy's overhead (both share the same cores);
   on a multi-GPU machine the same script shows the scaling.
2. Wall time of a two-run CPU batch (notebooks, prepare shared) with --parallel 1 against
   --parallel 2.

    python bench/distribute.py [--images 96] [--size 128] [--global-batch 16] [--rounds 3] [--skip-batch]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.data.prepare import prepare  # noqa: E402
from seglib.data.synthetic import generate  # noqa: E402
from seglib.runs.batch import run_batch  # noqa: E402
from seglib.training.distribute import make_strategy  # noqa: E402
from seglib.training.model import build_model  # noqa: E402
from seglib.training.pipeline import make_dataset  # noqa: E402


def compiled(placement, prepared: Path, size: int):
    """The U-Net compiled under ``placement``'s strategy."""
    import keras

    with placement.strategy.scope():
        model = build_model("unet", "mobilenetv2", 10, size, None)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
    return model


def timed_epoch(model, data) -> float:
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return time.perf_counter() - started


def batch_seconds(data: Path, root: Path, parallel: int, size: int) -> float:
    config = {"name": f"parallel{parallel}", "parameters": {
        "DATA_DIR": str(data), "SIZE": size, "SAMPLE_PIXELS": 20_000, "EPOCHS": 3, "ENCODER_WEIGHTS": None,
        "BACKBONE": "mobilenetv2", "FORMATS": "int8", "CALIBRATION_IMAGES": 8, "EVAL_IMAGES": 8, "EXAMPLES": 2},
        "runs": [{"name": "a", "LR": 1e-3}, {"name": "b", "LR": 2e-3}]}
    started = time.perf_counter()
    run_batch(config, root, parallel=parallel, echo=lambda line: None)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per strategy")
    parser.add_argument("--skip-batch", action="store_true", help="only the strategies")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "pairs", count=args.images, seed=0, size=args.size, progress=False)
        prepare(tmp / "pairs", tmp / "prepared", size=args.size, val_fraction=0.1, progress=False)
        placements = {name: make_strategy(name, cpu_devices=2) for name in ("default", "mirrored")}  # 2 logical CPUs
        print(f"U-Net/MobileNetV2 at {args.size} px, global batch {args.global_batch}; mirrored over "
              f"{placements['mirrored'].replicas} devices: {', '.join(placements['mirrored'].devices)}")
        n_train = len(make_dataset(tmp / "prepared", "train", 1))
        models = {name: compiled(p, tmp / "prepared", args.size) for name, p in placements.items()}
        data = make_dataset(tmp / "prepared", "train", args.global_batch, shuffle=True)
        for model in models.values():
            timed_epoch(model, data)  # warm-up: tracing
        seconds = {name: [] for name in placements}
        for _ in range(args.rounds):  # interleaved: machine noise hits both alike
            for name, model in models.items():
                seconds[name].append(timed_epoch(model, data))
        rate = {name: n_train / statistics.median(times) for name, times in seconds.items()}
        for name in placements:
            print(f"{name:9s} {rate[name]:7.2f} images/s  (epochs {', '.join(f'{t:.1f}' for t in seconds[name])} s)")
        print(f"mirrored / default: {rate['mirrored'] / rate['default']:.2f}x")
        if not args.skip_batch:
            walls = {n: batch_seconds(tmp / "pairs", tmp / f"batch{n}", n, 64) for n in (1, 2)}
            print(f"two-run CPU batch (64 px, 3 epochs, notebooks): --parallel 1 {walls[1]:.0f} s, "
                  f"--parallel 2 {walls[2]:.0f} s: {walls[1] / walls[2]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
