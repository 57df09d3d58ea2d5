"""Test quality on real Cityscapes of the default training recipe against a fuller one, in one run.

Both train a U-Net/ResNet-34 from random init at 128 px (no ImageNet weights: none can be
downloaded here) on the same fixed subset of the Kaggle "cityscapes-image-pairs" training pairs,
prepared once by seglib (K-Means, K=10), for the same number of epochs, and are scored on the
500 test pairs (the Kaggle ``val/`` folder). Early stopping is off in both (patience = epochs) so
both get the whole budget; each keeps its best epoch by validation loss, as seglib does.

  default: Adam at a constant 1e-3, no augmentation (TrainConfig's defaults)
  fuller:  + augmentation (flip, scale-and-crop, brightness/contrast) + 2 warmup epochs and a
           cosine decay of the learning rate
  schedule (with --recipes): the fuller recipe without augmentation

    python bench/real_quality.py [--data ../shared/data/cityscapes-pairs] [--train-pairs 800] [--epochs 30]
                                 [--out /tmp/seglib-real-quality]

Prints test pixel accuracy, mean IoU and mean Dice of each recipe and the difference; writes
``results.json`` to --out. About 35-40 minutes on a 2-core CPU with the defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.data.pairs import scan_folder  # noqa: E402
from seglib.data.prepare import prepare  # noqa: E402
from seglib.inference.evaluate import evaluate  # noqa: E402
from seglib.training.config import TrainConfig  # noqa: E402
from seglib.training.train import train  # noqa: E402

RECIPES = {
    "default": {},
    "fuller": {"augment": True, "lr_schedule": "cosine", "warmup_epochs": 2},
    "schedule": {"lr_schedule": "cosine", "warmup_epochs": 2},  # the fuller recipe without augmentation
}


def subset(data: Path, out: Path, train_pairs: int) -> Path:
    """``out`` holding links to the first ``train_pairs`` training pairs (natural order) and every
    ``val/`` pair: the same fixed subset on every run."""
    for split, count in (("train", train_pairs), ("val", None)):
        files, _ = scan_folder(data / split)
        (out / split).mkdir(parents=True, exist_ok=True)
        for path in files[:count]:
            link = out / split / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cityscapes-pairs"))
    parser.add_argument("--train-pairs", type=int, default=800, help="training pairs used (80%% train, 20%% val)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="/tmp/seglib-real-quality")
    parser.add_argument("--recipes", default="default,fuller", help="comma-separated, of: " + ", ".join(RECIPES))
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"{data}: no Kaggle-layout pairs (train/ and val/) here; pass --data", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    prepared = out / f"prepared-{args.train_pairs}-{args.size}px"
    if not (prepared / "summary.json").exists():
        started = time.perf_counter()
        summary = prepare(subset(data, out / f"pairs-{args.train_pairs}", args.train_pairs), prepared,
                          size=args.size, progress=False)
        print(f"prepared {summary['counts']} in {time.perf_counter() - started:.0f}s")
    results = {}
    for name in args.recipes.split(","):
        run_dir = out / f"run-{name}-{args.train_pairs}-{args.epochs}ep"
        config = TrainConfig(str(prepared), str(run_dir), epochs=args.epochs, batch_size=args.batch_size,
                             patience=args.epochs, encoder_weights=None, overwrite=True, **RECIPES[name])
        started = time.perf_counter()
        run = train(config, verbose=0, log=lambda line, name=name: print(f"{name}: {line}", flush=True))
        metrics = evaluate(run_dir, prepared, "test")
        results[name] = {"recipe": RECIPES[name], "best_epoch": run.best_epoch,
                         "train_seconds": round(time.perf_counter() - started),
                         **{k: round(metrics[k], 4) for k in ("pixel_accuracy", "mean_iou", "mean_dice")}}
        print(f"{name}: test pixel accuracy {metrics['pixel_accuracy']:.4f}, mean IoU {metrics['mean_iou']:.4f}, "
              f"mean Dice {metrics['mean_dice']:.4f} (best epoch {run.best_epoch}, {results[name]['train_seconds']}s)",
              flush=True)
    print(f"\n{args.train_pairs} training pairs (80/20 train/val), {args.size} px, {args.epochs} epochs, "
          "random init, 500 test pairs")
    print(f"{'recipe':8s} {'pixel acc':>9s} {'mean IoU':>9s} {'mean Dice':>9s} {'best ep':>7s} {'seconds':>8s}")
    for name, r in results.items():
        print(f"{name:8s} {r['pixel_accuracy']:9.4f} {r['mean_iou']:9.4f} {r['mean_dice']:9.4f} "
              f"{r['best_epoch']:7d} {r['train_seconds']:8d}")
    if {"default", "fuller"} <= results.keys():
        gain = results["fuller"]["mean_iou"] - results["default"]["mean_iou"]
        print(f"fuller - default: mean IoU {gain:+.4f}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
