"""Benchmark the prepare stage; prints rates and their ratios, all measured in this one run.

    python bench/prepare.py [DATA_DIR] [--rounds 3] [--against GIT_REV]

DATA_DIR defaults to the shared real sample when present, else synthetic pairs generated in a
temp folder. Measures (median of interleaved rounds):
  decode-only  read + decode + split every pair (the same threaded reader as prepare, no output)
  prepare      the whole `seglib prepare` (read, write, sample, fit K-Means, label, summary)
  labels       masks/s of seglib's labelling (lookup table + edge rule, and the table alone) on one
               thread, against a per-mask sklearn KMeans.predict with the same centroids on one
               thread; and in chunks on every core (as prepare labels) against the faster of two
               all-core KMeans.predict baselines (its own OpenMP threads, or a thread per core)
  --against    prepare of this checkout against prepare of GIT_REV (extracted with `git archive`),
               each timed in its own fresh process, the two alternating round by round
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seglib.data.labels import Labeller, label_chunks  # noqa: E402
from seglib.data.pairs import iter_pairs, split_files  # noqa: E402
from seglib.data.prepare import prepare  # noqa: E402
from seglib.data.splits import load_palette, open_split  # noqa: E402
from seglib.data.synthetic import generate  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "cityscapes-pairs-sample"
# run in a fresh process with the code at argv[1] first on sys.path: one untimed prepare, one timed
TIME_PREPARE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from seglib.data.prepare import prepare
prepare(sys.argv[2], sys.argv[3], progress=False)
start = time.perf_counter()
prepare(sys.argv[2], sys.argv[3], progress=False)
print(time.perf_counter() - start)
"""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="GIT_REV", help="also time prepare of this commit, in one run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seglib-bench-"))
    data_dir = Path(args.data_dir) if args.data_dir else SHARED
    if not data_dir.exists():
        data_dir = work / "synthetic"
        generate(data_dir, count=400, seed=0, progress=False)
    splits, layout, _ = split_files(data_dir)
    files = [f for name in ("train", "val", "test") for f in splits[name]]
    print(f"data: {data_dir} ({layout} layout, {len(files)} pairs)")

    def decode_only():
        for _path, result in iter_pairs(files, size=256):
            assert not isinstance(result, Exception), result

    decode_times, prepare_times, fast_times, phases = [], [], [], []
    for _ in range(args.rounds):  # interleaved so machine noise hits all alike
        decode_times.append(timed(decode_only))
        prepare_times.append(timed(lambda: phases.append(prepare(data_dir, work / "prepared", progress=False))))
        fast_times.append(timed(lambda: prepare(data_dir, work / "fast", edge_resolution=False, progress=False)))
    decode_rate = len(files) / statistics.median(decode_times)
    prepare_rate = len(files) / statistics.median(prepare_times)
    fast_rate = len(files) / statistics.median(fast_times)
    print(f"decode-only                  {decode_rate:8.1f} pairs/s")
    print(f"prepare (default)            {prepare_rate:8.1f} pairs/s  to decode-only {prepare_rate / decode_rate:.2f}")
    print(f"prepare --no-edge-resolution {fast_rate:8.1f} pairs/s  to decode-only {fast_rate / decode_rate:.2f}")
    steps = {key: statistics.median(p["timings_s"][key] for p in phases) for key in phases[0]["timings_s"]}
    print("prepare steps (s, median): " + ", ".join(f"{key} {value:.3f}" for key, value in steps.items())
          + f"; decode-only {statistics.median(decode_times):.3f}")
    if args.against:
        compare_with(args.against, data_dir, len(files), work, args.rounds)
    compare_labelling(work / "prepared", args.rounds)


def compare_with(rev: str, data_dir: Path, pairs: int, work: Path, rounds: int) -> None:
    """prepare pairs/s of this checkout and of ``rev``, each in fresh processes, alternating."""
    other = work / f"rev-{rev}"
    other.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "seglib"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(other)], input=archive.stdout, check=True)
    times: dict[str, list[float]] = {"this checkout": [], rev: []}
    for _ in range(rounds):
        for name, code in (("this checkout", ROOT), (rev, other)):
            done = subprocess.run([sys.executable, "-c", TIME_PREPARE, str(code), str(data_dir), str(work / "against")],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"prepare of {name} failed (an older commit may need numba: pip install numba):\n"
                         f"{done.stderr[-2000:]}")
            times[name].append(float(done.stdout.split()[-1]))
    rates = {name: pairs / statistics.median(ts) for name, ts in times.items()}
    for name, rate in rates.items():
        print(f"prepare, fresh process: {name:<14} {rate:8.1f} pairs/s")
    print(f"prepare, this checkout / {rev}: {rates['this checkout'] / rates[rev]:.2f}")


def compare_labelling(prepared: Path, rounds: int) -> None:
    palette = load_palette(prepared)
    test = open_split(prepared, "test")
    masks = np.stack([mask for _p, (_photo, mask) in iter_pairs(test.files, size=256)])
    kmeans = KMeans(n_clusters=palette.k, n_init=1, random_state=0).fit(palette.centroids)
    kmeans.cluster_centers_ = palette.centroids.astype(np.float64)
    labeller, table_only = Labeller(palette), Labeller(palette, resolve=False)  # built once, as in prepare

    def ours():
        for m in masks:
            labeller(m)

    def ours_threads():
        for _labels, _counts in label_chunks(labeller, masks):
            pass

    def table():
        for m in masks:
            table_only(m)

    def baseline():
        for m in masks:
            kmeans.predict(m.reshape(-1, 3).astype(np.float64))

    def baseline_one_thread():
        with threadpool_limits(1):
            baseline()

    def baseline_threads():
        with threadpool_limits(1), ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda m: kmeans.predict(m.reshape(-1, 3).astype(np.float64)), masks))

    t_one, t_base, t_base_threads, t_ours, t_threads, t_table = [], [], [], [], [], []
    for _ in range(rounds):
        t_one.append(timed(baseline_one_thread))
        t_base.append(timed(baseline))
        t_base_threads.append(timed(baseline_threads))
        t_ours.append(timed(ours))
        t_threads.append(timed(ours_threads))
        t_table.append(timed(table))
    rate = lambda ts: len(masks) / statistics.median(ts)  # noqa: E731
    one, every = rate(t_one), max(rate(t_base), rate(t_base_threads))
    cores = os.cpu_count()
    print(f"labels: KMeans.predict per mask, one thread          {one:8.1f} masks/s")
    print(f"labels: KMeans.predict per mask, its OpenMP threads  {rate(t_base):8.1f} masks/s")
    print(f"labels: KMeans.predict per mask, {cores} Python threads    {rate(t_base_threads):8.1f} masks/s")
    print(f"labels: seglib, one mask at a time, one thread       {rate(t_ours):8.1f} masks/s  "
          f"({rate(t_ours) / one:.1f}x one-thread KMeans)")
    print(f"labels: lookup table only, one thread                {rate(t_table):8.1f} masks/s  "
          f"({rate(t_table) / one:.1f}x one-thread KMeans)")
    print(f"labels: chunks + counts, {cores} threads (as prepare)     {rate(t_threads):8.1f} masks/s  "
          f"({rate(t_threads) / every:.1f}x the faster all-core KMeans)")


if __name__ == "__main__":
    main()
