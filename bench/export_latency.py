"""Single-image latency of the Keras model against its fp32 / fp16 / int8 TFLite exports at
256 px (U-Net / ResNet-34), measured in one run with interleaved rounds; prints ratios to the
compiled Keras call seglib predicts and serves with (``keras_predictor``: one ``tf.function``).
``model.predict`` (its per-call set-up) and the eager call are extra rows, labelled as such.

    python bench/export_latency.py [--size 256] [--rounds 5] [--repeats 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.data.synthetic import render_scene  # noqa: E402
from seglib.inference.export import FORMATS, TFLiteModel, convert  # noqa: E402
from seglib.training.model import build_model  # noqa: E402
from seglib.training.saved import keras_predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seglib-export-bench-"))
    rng = np.random.default_rng(0)
    images = np.stack([render_scene(rng, args.size)[0] for _ in range(17)]).astype(np.float32)
    model = build_model("unet", args.backbone, 10, args.size, encoder_weights=None)
    model.export(str(work / "saved"), format="tf_saved_model", verbose=False)
    compiled = keras_predictor(model)
    runners = {"keras": lambda x: compiled(x[None]),
               "keras model.predict": lambda x: model.predict(x[None], verbose=0),
               "keras eager": lambda x: model(x[None], training=False).numpy()}
    for fmt in FORMATS:
        path = work / f"model_{fmt}.tflite"
        path.write_bytes(convert(work / "saved", fmt, images[1:] if fmt == "int8" else None))
        runners[fmt] = TFLiteModel(path, args.threads).predict_one
    image = images[0]
    times = {name: [] for name in runners}
    for run in runners.values():
        run(image)  # warm-up
    for _ in range(args.rounds):
        for name, run in runners.items():
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(image)
                times[name].append((time.perf_counter() - start) * 1000)
    keras_ms = statistics.median(times["keras"])
    print(f"U-Net/{args.backbone} at {args.size}px, one image, {args.threads} TFLite threads (median of "
          f"{args.rounds * args.repeats} interleaved runs); keras: the compiled call (tf.function)")
    for name, ts in times.items():
        ms = statistics.median(ts)
        size = "" if name.startswith("keras") else f"  {(work / f'model_{name}.tflite').stat().st_size / 1e6:6.1f} MB"
        print(f"{name:19s} {ms:8.1f} ms  ratio to keras {ms / keras_ms:5.2f}{size}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
