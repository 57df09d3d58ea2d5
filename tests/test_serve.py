"""The HTTP service (`python -m seglib serve`) on a free loopback port, its browser page in headless
Chromium, and video prediction."""
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(run, *options):
    """Start the service on a free loopback port; returns (process, base URL) once /health answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "seglib", "serve", str(run), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    pytest.fail("the service did not answer /health in time")


def stop(process) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]


@pytest.fixture(scope="module")
def service(exported_run):
    process, url = start_service(exported_run, "--threads", "2", "--queue", "4", "--max-bytes", "2000000")
    yield url
    log = stop(process)
    assert "Traceback" not in log or "failed" in log  # a traceback only ever goes with a logged failure


@pytest.fixture(scope="module")
def street(trained):
    """A test photo (the left half of a synthetic pair) as JPEG bytes, and the pair itself."""
    pair_file = sorted((trained / "pairs" / "val").glob("*.jpg"))[0]
    pair = cv2.imread(str(pair_file))
    photo = pair[:, : pair.shape[1] // 2]
    return cv2.imencode(".jpg", photo)[1].tobytes(), pair_file.read_bytes(), photo.shape[:2]


def post(url, data: bytes, name="street.jpg", **params):
    return httpx.post(f"{url}/predict", params=params, files={"file": (name, data, "image/jpeg")}, timeout=60)


def png_of(response, flags=cv2.IMREAD_UNCHANGED):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and float(response.headers["x-latency-ms"]) > 0
    return cv2.imdecode(np.frombuffer(response.content, np.uint8), flags)


@pytest.mark.tf_lines
def test_health_and_metadata(service, exported_run):
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["model"] == "int8" and health["file"] == "model_int8.tflite"
    assert health["classes"] == 10 and health["input_size"] == [64, 64] and health["uptime_s"] >= 0
    assert health["runtime"].startswith(("ai-edge-litert", "tf.lite"))
    meta = httpx.get(f"{service}/metadata").json()
    assert meta["run"] == exported_run.name and len(meta["palette"]) == 10
    assert set(meta["palette"][0]) == {"id", "name", "rgb"}
    assert meta["parameters"]["arch"] == "tinyunet"
    assert 0 <= meta["metrics"]["mean_iou"] <= 1
    assert meta["parameters"]["run_dir"] == exported_run.name  # names, not the server's paths
    assert "/" not in meta["parameters"]["prepared_dir"] and str(exported_run.parent) not in httpx.get(
        f"{service}/metadata").text


@pytest.mark.tf_lines
def test_every_output_kind_at_the_image_size(service, street):
    photo_jpg, pair_jpg, (h, w) = street
    palette = {tuple(c["rgb"]) for c in httpx.get(f"{service}/metadata").json()["palette"]}
    mask = png_of(post(service, photo_jpg), cv2.IMREAD_COLOR)
    assert mask.shape == (h, w, 3)
    assert {tuple(int(v) for v in c[::-1]) for c in np.unique(mask.reshape(-1, 3), axis=0)} <= palette
    overlay = png_of(post(service, photo_jpg, output="overlay", alpha=0.3), cv2.IMREAD_COLOR)
    assert overlay.shape == (h, w, 3)
    ids = png_of(post(service, photo_jpg, output="ids"))
    assert ids.shape == (h, w) and ids.dtype == np.uint8 and ids.max() < 10
    assert (ids == png_of(post(service, pair_jpg, pair="true", output="ids"))).mean() > 0.95  # the pair's photo half
    body = post(service, photo_jpg, output="json", mask="true").json()
    assert body["width"] == w and body["height"] == h and body["latency_ms"] > 0
    assert sum(c["share"] for c in body["classes"]) == pytest.approx(1, abs=1e-4)
    shares = np.bincount(ids.ravel(), minlength=10) / ids.size
    assert [c["share"] for c in body["classes"]] == pytest.approx(shares.tolist(), abs=1e-5)
    assert "mask_png" in body and "mask_png" not in post(service, photo_jpg, output="json").json()


def test_bad_input_gets_a_clear_status_and_no_traceback(service, street, declared_png, tmp_path):
    photo_jpg = street[0]
    cases = [
        (post(service, b"this is not an image", name="notes.txt"), 400, "notes.txt: not a readable image"),
        (post(service, photo_jpg[: len(photo_jpg) // 2] + b"\xff\xd9", name="cut.jpg"), 400, "cut.jpg: truncated"),
        (post(service, declared_png(tmp_path / "bomb.png", 20000, 10000).read_bytes(), name="bomb.png"), 413,
         "over the limit"),
        (post(service, b"\xff" * 2_100_000, name="big.jpg"), 413, "over the limit of 2000000"),
        (post(service, b"", name="empty.jpg"), 400, "empty file"),
        (post(service, photo_jpg, output="svg"), 400, "output must be one of"),
        (post(service, photo_jpg, alpha="half"), 400, "bad parameters (alpha: "),
        (post(service, photo_jpg, pair="true"), 400,
         "street.jpg: pair=true, but the image is 128x128, not a side-by-side pair (2:1"),
        (post(service, photo_jpg, output="mask", alpha=0.3), 400, "needs output=overlay, not output=mask"),
        (post(service, photo_jpg, output="ids", mask="true"), 400, "mask=true adds the mask to output=json"),
        (httpx.post(f"{service}/predict", json={"file": "x"}), 415, "multipart/form-data"),
        (httpx.post(f"{service}/predict", files={"image": ("a.jpg", photo_jpg)}), 400, "no file"),
        (httpx.get(f"{service}/predict"), 405, "Method Not Allowed"),
        (httpx.delete(f"{service}/health"), 405, "Method Not Allowed"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.status_code, response.text)
        assert words in response.json()["error"], response.text
        assert "Traceback" not in response.text and 'File "' not in response.text


def test_an_overfull_queue_gets_503_and_a_stalled_or_dropped_upload_frees_its_place_in_its_deadline(exported_run):
    """One runner, no queue, --upload-timeout 2: a flood gets 503 with Retry-After; a sender that stalls
    after ~100 bytes holds the only place until its deadline, then gets 408 and the next request 200; a
    client that drops its upload costs one log line, not a traceback."""
    big = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (1500, 3000, 3), np.uint8))[1].tobytes()
    process, url = start_service(exported_run, "--threads", "1", "--queue", "0", "--upload-timeout", "2")
    small = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    try:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post(url, big, name="big.png", output="json"), range(12)))
        port = int(url.rsplit(":", 1)[1])
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                b"filename=\"slow.png\"\r\n\r\n")
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(head + b"\0" * 100)
        time.sleep(0.5)
        assert post(url, small, name="small.png").status_code == 503  # the stalled sender holds the place
        started = time.monotonic()
        stalled.settimeout(10)
        answer = b""
        while b"upload-timeout" not in answer and (part := stalled.recv(4096)):
            answer += part
        assert answer.startswith(b"HTTP/1.1 408") and b"upload-timeout" in answer and time.monotonic() - started < 4
        stalled.close()
        assert post(url, small, name="small.png").status_code == 200  # its place is free again
        dropped = socket.create_connection(("127.0.0.1", port))
        dropped.sendall(head + b"\0" * 100)
        dropped.close()
        time.sleep(0.5)
        assert post(url, small, name="small.png").status_code == 200
    finally:
        log = stop(process)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    assert "an upload did not arrive within 2 s" in log and "a client disconnected during its upload" in log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("flag, value, message", [
    ("--port", "70000", r"PORT \(--port\): must be at most 65535"),
    ("--threads", "0", r"THREADS \(--threads\): must be at least 1"),
    ("--threads", "100000", r"THREADS \(--threads\): must be at most 64"),
    ("--queue", "-1", r"QUEUE \(--queue\): must be at least 0"),
    ("--max-pixels", "-1", r"MAX_PIXELS \(--max-pixels\): must be at least 1"),
    ("--upload-timeout", "0", r"UPLOAD_TIMEOUT \(--upload-timeout\): must be more than 0"),
])
def test_every_serve_flag_is_checked_before_the_service_starts(trained, seglib_cli, flag, value, message):
    import re

    done = seglib_cli("serve", trained / "run", "--model", "keras", flag, value)
    assert done.returncode == 2 and re.search(message, done.stderr) and len(done.stderr.splitlines()) == 1, done.stderr


def test_three_huge_16_bit_pngs_at_once_keep_the_service_under_its_stated_memory_bound(exported_run):
    """7000x7000 16-bit RGBA PNGs (540 KB each, 49 MP: under the 50 MP limit), three at once, to a
    service with --threads 1 --queue 2: each is decoded only in the one working slot, so the peak
    stays under the bound the service states (docs/serving.md): 720 MB over its idle size here, where
    three decodes at once would take about 1.4 GB (before: 5.9 GB)."""
    from seglib.inference.serve import memory_bound

    big = np.zeros((7000, 7000, 4), np.uint16)
    big[::7, ::5], big[..., 3] = 60000, 65535
    data = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    del big
    process, url = start_service(exported_run, "--threads", "1", "--queue", "2")
    status = Path(f"/proc/{process.pid}/status")

    def kib(field: str) -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith(field))

    try:
        png_of(post(url, cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes(), name="warm.png"))
        idle = kib("VmRSS:") * 1024
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda _: post(url, data, name="big16.png", output="json", mask="true"),
                                      range(3)))
        peak = kib("VmHWM:") * 1024
    finally:
        stop(process)
    assert [r.status_code for r in responses] == [200] * 3, [r.text[:200] for r in responses]
    assert responses[0].json()["width"] == 7000
    bound = memory_bound(threads=1, queue_size=2)
    print(f"peak {peak / 1e6:.0f} MB over {idle / 1e6:.0f} MB idle, bound {bound / 1e6:.0f} MB")
    assert peak - idle <= bound, f"peak {peak / 1e6:.0f} MB over {idle / 1e6:.0f} MB idle, bound {bound / 1e6:.0f} MB"


def test_the_page_segments_a_dropped_image_in_headless_chromium(service, street, chromium, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = tmp_path / "street.jpg"
    photo.write_bytes(street[0])
    names = {c["name"] for c in httpx.get(f"{service}/metadata").json()["palette"]}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(service + "/")
            page.wait_for_function("document.getElementById('about').textContent.startsWith('Run ')")
            page.set_input_files("#pick", str(photo))
            page.wait_for_selector(".result img.mask", timeout=60_000)
            page.wait_for_function("[...document.querySelectorAll('.result img')].every("
                                   "i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            legend = page.locator(".legend li").all_inner_texts()
            assert legend and all(line.split(":")[0] in names for line in legend)
            assert sum(float(line.split(": ")[1].rstrip("%")) for line in legend) == pytest.approx(100, abs=1)
            size = page.evaluate("[document.querySelector('img.mask').naturalWidth, "
                                 "document.querySelector('img.mask').naturalHeight]")
            assert size == [street[2][1], street[2][0]]
            assert "ms" in page.locator(".result .muted").first.inner_text()
            page.fill("#opacity", "80")
            page.dispatch_event("#opacity", "input")
            assert page.evaluate("getComputedStyle(document.querySelector('img.mask')).opacity") == "0.8"
            assert not failed, failed
        finally:
            browser.close()


@pytest.mark.tf_lines
def test_video_gets_an_overlay_video_of_the_same_fps_and_size_and_its_frames_are_held_to_the_pixel_limit(
        exported_run, trained, tmp_path):
    pairs = sorted((trained / "pairs" / "val").glob("*.jpg"))
    frames = [cv2.resize(cv2.imread(str(f))[:, :128], (96, 64)) for f in pairs]
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (96, 64))
    for frame in (frames * 3)[:30]:
        writer.write(frame)
    writer.release()
    done = subprocess.run([sys.executable, "-m", "seglib", "predict", str(exported_run / "model_int8.tflite"),
                           str(video), str(tmp_path / "out"), "--every", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "30 frames (15 predicted)" in done.stdout and "frames/s" in done.stdout
    out = cv2.VideoCapture(str(tmp_path / "out" / "drive_overlay.mp4"))
    assert out.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0) and int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert (int(out.get(cv2.CAP_PROP_FRAME_WIDTH)), int(out.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".seglib", "drive_overlay.mp4"]  # no temp file
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    done = subprocess.run([sys.executable, "-m", "seglib", "predict", str(exported_run / "model_int8.tflite"),
                           str(bad), str(tmp_path / "out2")], capture_output=True, text=True)
    assert done.returncode == 2 and "broken.mp4: not a readable video" in done.stderr
    # frames over the pixel limit are refused from the container's header, before one is decoded
    done = subprocess.run([sys.executable, "-m", "seglib", "predict", str(exported_run / "model_int8.tflite"),
                           str(video), str(tmp_path / "out3"), "--max-pixels", "6000"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {video}: frames of 96x64 are 6144 pixels, over the limit of 6000 (--max-pixels)"), done.stderr
    assert not (tmp_path / "out3").exists()


def test_serve_refuses_a_model_the_run_lacks_and_a_port_in_use(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("*.tflite", "*.onnx"))
    done = subprocess.run([sys.executable, "-m", "seglib", "serve", str(run), "--model", "fp16",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "model_fp16.tflite: no such model (export it first" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "seglib", "serve", str(trained / "run"), "--model", "keras",
                               "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"127.0.0.1:{port}: cannot listen there" in done.stderr


def test_a_chunked_upload_over_the_limit_is_refused_having_read_about_the_limit(service):
    """300 MB sent with Transfer-Encoding: chunked (no Content-Length) to a service with --max-bytes 2 MB:
    413 while the client is still sending, the service having read about 2 MB of it."""
    import http.client
    import threading
    from urllib.parse import urlparse

    where = urlparse(service)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "multipart/form-data; boundary=b")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    sent, answer = 0, {}

    def read_answer():
        response = connection.getresponse()
        answer.update(status=response.status, body=response.read())

    reader = threading.Thread(target=read_answer)
    chunk = b"\0" * (1 << 20)
    try:
        connection.send(b"%x\r\n%s\r\n" % (len(head), head))
        reader.start()
        while sent < 300 << 20 and reader.is_alive():
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:  # the service closed the connection on its refusal
        pass
    reader.join(60)
    assert answer["status"] == 413 and b"refused after reading" in answer["body"]
    read = int(answer["body"].split(b"refused after reading ")[1].split(b" ")[0])
    assert 2_000_000 < read <= 2_000_000 + 64 * 1024 + (1 << 20) and sent < 100 << 20
