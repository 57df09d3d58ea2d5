"""The two comparison tables street-scene projects publish, measured on real Cityscapes with seglib's
own batches: architectures (``sweeps/architectures.yaml``) and losses on 19 and on 14 merged
classes (``sweeps/losses.yaml``). Every row trains from random init on the same prepared split.

    python bench/comparisons.py [--pairs ../shared/data/cityscapes-pairs] [--only architectures|losses]

Builds ``data/cityscapes-ids-400`` (bench/cityscapes_tree.py) when missing, runs the sweeps (runs
finished earlier are kept), then prints the tables as Markdown with the machine and the budget.
The batches' own pages: ``reports/architectures/index.html``, ``reports/losses/index.html``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from cityscapes_tree import build  # noqa: E402

from seglib.runs.batch import run_batch  # noqa: E402
from seglib.runs.index import run_results  # noqa: E402
from seglib.runs.sweep import load_config  # noqa: E402

SWEEPS = {"architectures": REPO / "sweeps" / "architectures.yaml", "losses": REPO / "sweeps" / "losses.yaml"}


def _f(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def architectures_table(rows: list[dict]) -> str:
    lines = ["| model | parameters | pixel acc | mean IoU | train img/s | int8 MB | int8 ms (1 image) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        int8 = r["export"].get("formats", {}).get("int8", {})
        lines.append(f"| {r['parameters']['ARCH']} / {r['parameters']['BACKBONE']} | "
                     f"{r['training'].get('parameters', 0) / 1e6:.1f} M | {_f(r['metrics'].get('pixel_accuracy'))} | "
                     f"{_f(r['metrics'].get('mean_iou'))} | {_f(r['training'].get('train_images_per_second'), 1)} | "
                     f"{_f(int8.get('file_bytes', 0) / 1e6, 1)} | {_f(int8.get('latency_ms'), 1)} |")
    return "\n".join(lines)


def losses_table(rows: list[dict]) -> str:
    lines = ["| loss | classes | pixel acc | mean acc | mean IoU | mean Dice |", "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (bool(r["parameters"].get("MERGE")), r["run"])):
        m = r["metrics"]
        classes = len(m.get("class_names", [])) or "–"
        lines.append(f"| {r['parameters']['LOSS']} | {classes} | {_f(m.get('pixel_accuracy'))} | "
                     f"{_f(m.get('mean_accuracy'))} | {_f(m.get('mean_iou'))} | {_f(m.get('mean_dice'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=REPO.parent / "shared" / "data" / "cityscapes-pairs")
    parser.add_argument("--only", choices=sorted(SWEEPS), action="append")
    args = parser.parse_args()
    os.chdir(REPO)  # the sweeps' DATA_DIR is relative to the repository's top folder
    build(args.pairs, REPO / "data" / "cityscapes-ids-400", {"train": 400, "val": 200})
    for name in args.only or sorted(SWEEPS):
        run_batch(SWEEPS[name], REPO, resume=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python "
          f"{platform.python_version()}")
    for name in args.only or sorted(SWEEPS):
        batch = load_config(SWEEPS[name], REPO)
        shared = batch.shared
        print(f"\n{name}: size {shared['SIZE']} px, {shared['EPOCHS']} epochs, batch {shared['BATCH_SIZE']}, "
              f"encoder weights {shared['ENCODER_WEIGHTS']}, data {shared['DATA_DIR']}\n")
        rows = [r for r in run_results(batch) if r["status"] == "finished"]
        print(architectures_table(rows) if name == "architectures" else losses_table(rows))


if __name__ == "__main__":
    main()
