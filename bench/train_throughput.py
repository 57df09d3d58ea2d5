"""Training throughput (images/s) of the same U-Net fed three ways, measured in one run:

  (a) seglib's tf.data pipeline streaming the prepared .npy files (memory-mapped),
  (b) tf.data over in-memory tensors (the ceiling for any input pipeline),
  (c) the origin project's way: model.fit on one big float32 numpy array,

at 256 px and 128 px, plus (a) with XLA (jit_compile=True). The variants are interleaved
(--repeats passes) and the median epoch time (warm-up epochs dropped) is used, so machine
noise hits every variant alike.

    python bench/train_throughput.py [--images 48] [--rounds 2] [--repeats 2] [--backbone resnet34]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.data.prepare import prepare  # noqa: E402
from seglib.data.synthetic import generate  # noqa: E402
from seglib.training.model import build_model  # noqa: E402
from seglib.training.pipeline import make_dataset  # noqa: E402


def epoch_seconds(model, fit_args: dict, rounds: int) -> list[float]:
    """Wall times of ``rounds`` epochs, after one warm-up epoch (tracing, caches)."""
    import keras

    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(**fit_args, epochs=rounds + 1, verbose=0, callbacks=[Clock()])
    return times[1:]


def input_variants(prepared: Path, images: np.ndarray, labels: np.ndarray, batch: int) -> dict:
    """The three ways of feeding the same training images, each a function making ``fit``'s inputs."""
    import tensorflow as tf

    steps = len(images) // batch
    return {
        "(a) tf.data from .npy": lambda: {"x": make_dataset(prepared, "train", batch, shuffle=True).take(steps)},
        "(b) in-memory tensors": lambda: {"x": tf.data.Dataset.from_tensor_slices(
            (tf.constant(images, tf.float32), tf.constant(labels))).shuffle(len(images)).batch(batch)
            .take(steps).prefetch(tf.data.AUTOTUNE)},
        "(c) fit(numpy float32)": lambda: {"x": images.astype(np.float32)[: steps * batch],
                                           "y": labels[: steps * batch], "batch_size": batch},
    }


def main() -> None:
    import keras
    import tensorflow as tf

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=2, help="timed epochs per fit call")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes over the variants")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="resnet34")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seglib-train-bench-"))
    generate(work / "pairs", count=int(args.images / 0.64 / 0.8) + 2, seed=0, size=256, progress=False)
    print(f"U-Net/{args.backbone}, {args.images} training images per epoch, batch {args.batch_size}, "
          f"device {tf.config.list_physical_devices('GPU') or 'CPU'}")
    for size in (256, 128):
        prepared = work / f"prepared{size}"
        prepare(work / "pairs", prepared, size=size, progress=False)
        images = np.load(prepared / "train" / "images.npy")[: args.images]
        labels = np.load(prepared / "train" / "labels.npy")[: args.images]
        variants = input_variants(prepared, images, labels, args.batch_size)
        times: dict[str, list[float]] = {}
        models = {}
        for jit in (False, True):
            models[jit] = build_model("unet", args.backbone, 10, size, encoder_weights=None)
            models[jit].compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", jit_compile=jit)
        for _repeat in range(args.repeats):  # interleaved: A B C A+XLA, A B C A+XLA, ...
            for jit in (False, True):
                for name, make in variants.items():
                    if jit and not name.startswith("(a)"):
                        continue
                    label = name + (" + XLA" if jit else "")
                    try:
                        times.setdefault(label, []).extend(epoch_seconds(models[jit], make(), args.rounds))
                    except Exception as exc:  # XLA can fail on some ops/platforms: report, don't crash
                        print(f"{size}px {label}: failed ({type(exc).__name__}: {str(exc)[:120]})")
        images_per_epoch = len(images) // args.batch_size * args.batch_size
        rates = {label: images_per_epoch / statistics.median(ts) for label, ts in times.items()}
        a, b, c = (rates[k] for k in list(variants))
        for label, rate in rates.items():
            print(f"{size}px {label:28s} {rate:7.2f} images/s")
        print(f"{size}px ratio (a)/(b) tf.data vs in-memory: {a / b:.2f}   (a)/(c) tf.data vs fit(numpy): {a / c:.2f}")
        if "(a) tf.data from .npy + XLA" in rates:
            print(f"{size}px XLA speed-up on (a): {rates['(a) tf.data from .npy + XLA'] / a:.2f}x")


if __name__ == "__main__":
    main()
