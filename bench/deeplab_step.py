"""DeepLabV3+'s training step with and without its ASPP taps that see only padding
(``seglib.training.deeplab.atrous_kernel``), at one size, measured in one run with interleaved
rounds; prints each model's median step time and its ratio to the reduced head. U-Net on the same
encoder is a labelled reference row.

    python bench/deeplab_step.py [--size 96] [--batch 8] [--rounds 5] [--backbones mobilenetv2,resnet34]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib import quiet  # noqa: E402

quiet.install()
import seglib.training.deeplab as deeplab  # noqa: E402
from seglib.training.losses import make_loss  # noqa: E402
from seglib.training.model import build_model  # noqa: E402


def full_taps(rate, feature_hw):
    return (3, 3), (rate, rate)


def step_fn(model):
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one tf.function per model: not retracing
    loss, optimizer = make_loss("ce", 19), tf.keras.optimizers.Adam(1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        weights = model.trainable_weights
        optimizer.apply_gradients(zip(tape.gradient(value, weights), weights, strict=True))
        return value
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbones", default="mobilenetv2,resnet34")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    y = rng.integers(0, 19, (args.batch, args.size, args.size)).astype(np.uint8)
    steps = {}
    for backbone in args.backbones.split(","):
        steps[f"DeepLabV3+ / {backbone}"] = step_fn(build_model("deeplabv3plus", backbone, 19, args.size, None))
        reduced = deeplab.atrous_kernel
        deeplab.atrous_kernel = full_taps
        try:
            steps[f"DeepLabV3+ / {backbone}, every 3x3 tap"] = step_fn(
                build_model("deeplabv3plus", backbone, 19, args.size, None))
        finally:
            deeplab.atrous_kernel = reduced
        steps[f"U-Net / {backbone} (reference)"] = step_fn(build_model("unet", backbone, 19, args.size, None))
    times = {name: [] for name in steps}
    for step in steps.values():
        step(x, y)  # trace and first run
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            float(step(x, y))
            times[name].append(time.perf_counter() - start)
    print(f"one training step, batch {args.batch} at {args.size}x{args.size}, median of {args.rounds} "
          f"interleaved rounds")
    for backbone in args.backbones.split(","):
        base = statistics.median(times[f"DeepLabV3+ / {backbone}"])
        for name in (n for n in steps if f"/ {backbone}" in n):
            t = statistics.median(times[name])
            print(f"  {name:45s} {t * 1000:8.0f} ms  {t / base:5.2f}x  {args.batch / t:6.1f} img/s")


if __name__ == "__main__":
    main()
