"""Benchmark the prepare stage; prints rates and their ratios, all measured in this one run.

    python bench/prepare.py [DATA_DIR] [--rounds 3]

DATA_DIR defaults to the shared real sample when present, else synthetic pairs generated in a
temp folder. Measures (median of interleaved rounds):
  decode-only  read + decode + split every pair (same threaded reader as prepare, no output)
  prepare      the whole `seglib prepare` (decode, write, fit K-Means, label, summary)
  labels       masks/s of Palette.assign (lookup table + edge resolution, and table only), one
               mask at a time on one thread, against a per-mask sklearn KMeans.predict with the
               same centroids limited to one thread; and labelling + class counts in chunks on
               every core (assign_chunks, as prepare labels) against the faster of two per-mask
               KMeans.predict baselines that use every core (its own OpenMP threads, or one
               predict per mask in a thread per core)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.labels import assign_chunks  # noqa: E402
from seglib.pairs import iter_pairs  # noqa: E402
from seglib.prepare import load_palette, open_split, prepare, split_files  # noqa: E402
from seglib.synthetic import generate  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes-pairs-sample"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
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
    for r in range(args.rounds):  # interleaved so machine noise hits all alike
        decode_times.append(timed(decode_only))
        prepare_times.append(timed(lambda: phases.append(prepare(data_dir, work / "prepared", progress=False))))
        fast_times.append(timed(lambda: prepare(data_dir, work / "fast", resolve_edges=False, progress=False)))
    decode_rate = len(files) / statistics.median(decode_times)
    prepare_rate = len(files) / statistics.median(prepare_times)
    fast_rate = len(files) / statistics.median(fast_times)
    print(f"decode-only                      {decode_rate:8.1f} pairs/s")
    print(f"prepare (default)                {prepare_rate:8.1f} pairs/s  ratio to decode-only {prepare_rate / decode_rate:.2f}")
    print(f"prepare --no-edge-resolution     {fast_rate:8.1f} pairs/s  ratio to decode-only {fast_rate / decode_rate:.2f}")
    steps = {key: statistics.median(p["timings_s"][key] for p in phases) for key in phases[0]["timings_s"]}
    print("prepare steps (s, median): " + ", ".join(f"{key} {value:.3f}" for key, value in steps.items())
          + f"; decode-only {statistics.median(decode_times):.3f}")

    palette = load_palette(work / "prepared")
    test = open_split(work / "prepared", "test")
    masks = [mask for _p, (_photo, mask) in iter_pairs(test.files, size=256)]
    kmeans = KMeans(n_clusters=palette.k, n_init=1, random_state=0).fit(palette.centroids)
    kmeans.cluster_centers_ = palette.centroids.astype(np.float64)
    palette.lut  # built once per palette, as in prepare

    def ours():
        for m in masks:
            palette.assign(m)

    def ours_threads():
        for _labels, _counts in assign_chunks(palette, masks):
            pass

    def table_only():
        for m in masks:
            palette.assign(m, resolve=False)

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
    for _ in range(args.rounds):
        t_one.append(timed(baseline_one_thread))
        t_base.append(timed(baseline))
        t_base_threads.append(timed(baseline_threads))
        t_ours.append(timed(ours))
        t_threads.append(timed(ours_threads))
        t_table.append(timed(table_only))
    rate = lambda ts: len(masks) / statistics.median(ts)  # noqa: E731
    one, every = rate(t_one), max(rate(t_base), rate(t_base_threads))
    cores = os.cpu_count()
    print(f"labels: KMeans.predict per mask, one thread         {one:8.1f} masks/s")
    print(f"labels: KMeans.predict per mask, its OpenMP threads {rate(t_base):8.1f} masks/s")
    print(f"labels: KMeans.predict per mask, {cores} Python threads   {rate(t_base_threads):8.1f} masks/s")
    print(f"labels: Palette.assign, one thread                  {rate(t_ours):8.1f} masks/s  ({rate(t_ours) / one:.1f}x one-thread KMeans)")
    print(f"labels: lookup table only, one thread               {rate(t_table):8.1f} masks/s  ({rate(t_table) / one:.1f}x one-thread KMeans)")
    print(f"labels: assign_chunks + counts, {cores} threads (prepare) {rate(t_threads):8.1f} masks/s  "
          f"({rate(t_threads) / every:.1f}x the faster all-core KMeans)")


if __name__ == "__main__":
    main()
