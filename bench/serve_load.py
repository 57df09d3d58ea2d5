"""Load-test the HTTP service; prints throughput and latency, all measured in this one run.

    python bench/serve_load.py [RUN_DIR] [--clients 1,4,16] [--requests 40] [--threads 2]

Without RUN_DIR it trains a small run first (synthetic pairs, 256 px, MobileNetV2, one epoch) and
exports its int8 model. The service (`python -m seglib serve RUN_DIR`, int8) listens on a free
loopback port; C clients (threads) each send ``--requests`` photos (256x256 JPEGs, ``output=mask``)
one after another over a kept-alive connection. For each C: requests/s, p50/p90/p99 latency,
errors. The service's RSS is read after a warm-up and after the last request. In the same run the
service's own work (decode, the model pool, PNG mask) runs in-process on the same photos, without
HTTP, on as many threads as the pool has runners: the images/s the throughput is compared with.
"""
from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seglib.inference.serve import ModelPool, predict_bytes  # noqa: E402

MAX_SECONDS = 600  # every client stops after this, whatever is left


def small_run(work: Path) -> Path:
    """A small trained run with its int8 export (synthetic data, 256 px, one epoch)."""
    from seglib.data.prepare import prepare
    from seglib.data.synthetic import generate
    from seglib.inference.export import export_run
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    generate(work / "pairs", count=60, seed=0, size=256, progress=False)
    prepare(work / "pairs", work / "prepared", size=256, progress=False)
    train(TrainConfig(str(work / "prepared"), str(work / "run"), backbone="mobilenetv2", epochs=1, batch_size=8,
                      encoder_weights=None), verbose=0)
    export_run(work / "run", formats=["int8"], calibration_images=16, eval_images=4, latency_repeats=2)
    return work / "run"


def photos(count: int = 16) -> list[bytes]:
    """Street photos as 256x256 JPEGs (the left halves of synthetic pairs)."""
    from seglib.data.synthetic import render_scene

    rng = np.random.default_rng(1)
    return [cv2.imencode(".jpg", cv2.cvtColor(render_scene(rng, 256)[0], cv2.COLOR_RGB2BGR))[1].tobytes()
            for _ in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with ``data`` in the field ``file``, and its content type."""
    boundary = "seglib-bench-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    """``clients`` threads, each sending ``requests`` images in turn over one kept-alive connection
    (plain http.client with prebuilt bodies, so the clients take little of the machine's CPU)."""
    deadline = time.time() + MAX_SECONDS
    bodies = [multipart(d) for d in images]

    def client(index: int) -> tuple[list[float], int]:
        latencies, errors = [], 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(requests):
            if time.time() > deadline:
                break
            body, content_type = bodies[(index + i) % len(bodies)]
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies.append(time.perf_counter() - start)
            errors += not ok
        connection.close()
        return latencies, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - start
    latencies = [t * 1000 for lat, _ in done for t in lat]
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"requests": len(latencies), "errors": sum(e for _, e in done), "per_s": len(latencies) / seconds,
            "p50": p50, "p90": p90, "p99": p99}


def in_process(run: Path, images: list[bytes], threads: int, seconds: float = 10.0) -> float:
    """Images/s of the service's own work on the same JPEGs without HTTP (decode, the model pool,
    PNG mask), by as many threads as the pool has runners."""
    pool = ModelPool(run, "int8", threads=threads, queue_size=threads)
    predict_bytes(pool, images[0])  # warm-up
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> int:
        n = 0
        while time.perf_counter() < deadline:
            predict_bytes(pool, images[(index + n) % len(images)])
            n += 1
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        total = sum(executor.map(worker, range(threads)))
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=40, help="per client")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the service's model runners")
    args = parser.parse_args()
    run = Path(args.run_dir) if args.run_dir else small_run(Path(tempfile.mkdtemp(prefix="seglib-serve-bench-")))
    images = photos()
    clients = [int(c) for c in args.clients.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "seglib", "serve", str(run), "--port", str(port), "--threads",
                               str(args.threads), "--queue", str(2 * max(clients))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            sys.exit("the service did not start")
        health = httpx.get(f"{url}/health").json()
        print(f"service: {health['file']} ({health['runtime']}), {health['input_size']} px, "
              f"{args.threads} runner(s), {os.cpu_count()} cores; photos 256x256 JPEG, output=mask")
        load(port, images, 1, 10)  # warm-up
        rss = psutil.Process(server.pid)
        before = rss.memory_info().rss
        results, total = {}, 0
        for c in clients:
            results[c] = load(port, images, c, args.requests)
            total += results[c]["requests"]
        after = rss.memory_info().rss
    finally:
        server.terminate()
        server.wait(30)
    local = in_process(run, images, args.threads)
    for c, r in results.items():
        print(f"{c:3d} clients: {r['per_s']:7.1f} requests/s  p50 {r['p50']:6.1f} ms  p90 {r['p90']:6.1f} ms  "
              f"p99 {r['p99']:6.1f} ms  errors {r['errors']}/{r['requests']}  ({r['per_s'] / local:.2f}x in-process)")
    print(f"in-process, the same work without HTTP ({args.threads} threads): {local:7.1f} images/s")
    print(f"service RSS: {before / 1e6:.0f} MB after warm-up, {after / 1e6:.0f} MB after {total} requests "
          f"(+{(after - before) / 1e6:.1f} MB)")
    print(f"median over clients: {statistics.median(r['per_s'] for r in results.values()):.1f} requests/s")


if __name__ == "__main__":
    main()
