"""The demo's quality figure: ``make demo``'s own job (synthetic scenes, the batch of two runs
through the three notebooks, seglib.runs.demo) run as a user runs it, then each run's test
scores against the majority-class baseline (predict the most common class of the test split
everywhere: the cheapest honest segmenter), with the wall time.

    python bench/demo_accuracy.py [--out FOLDER]    # or: make bench-demo

``--out`` keeps the demo's data, runs and reports (default: a temporary folder, removed after).
The test suite only checks that the demo runs end to end and learns, at a tiny size
(tests/test_batch.py); this is where its accuracy is measured.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib import quiet  # noqa: E402

quiet.install()
from seglib.data.splits import open_split  # noqa: E402
from seglib.layout import RunDir  # noqa: E402
from seglib.runs.demo import DEMO, DEMO_RUNS, run_demo  # noqa: E402


def majority_share(prepared_dir: Path) -> float:
    """The pixel accuracy of predicting the test split's most common class everywhere."""
    labels = np.asarray(open_split(prepared_dir, "test").labels)
    counts = np.bincount(labels[labels != 255].ravel())
    return float(counts.max() / counts.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep the demo's outputs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seglib-demo-bench-") as tmp:
        out = Path(args.out or tmp)
        started = time.perf_counter()
        index = run_demo(out, resume=False)
        took = time.perf_counter() - started
        print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; demo: {DEMO}")
        print(f"make demo's job: {took / 60:.1f} min; {index}")
        for run in DEMO_RUNS:
            status = json.loads((out / "reports" / "demo" / run["name"] / "status.json").read_text())
            if status["status"] != "finished":
                print(f"{run['name']:<12} {status['status']}: {status.get('error')}")
                continue
            metrics = json.loads(RunDir(status["run_dir"]).metrics.read_text())
            baseline = majority_share(Path(status["prepared_dir"]))
            print(f"{run['name']:<12} pixel accuracy {metrics['pixel_accuracy']:.4f}, mean IoU "
                  f"{metrics['mean_iou']:.4f}; majority class {baseline:.4f}; accuracy / majority "
                  f"{metrics['pixel_accuracy'] / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
