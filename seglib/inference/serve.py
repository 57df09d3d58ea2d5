"""Serve a trained run over HTTP: a FastAPI app with a browser page, on a bounded model pool.

``python -m seglib serve RUN_DIR`` runs it with uvicorn. The model is one of the run's exports
(``int8`` by default, the fastest on a CPU) or its ``.keras`` file. Requests run on a fixed pool
of model runners, one per thread (a TFLite interpreter is not thread-safe); a request that
finds every runner busy and the waiting line full gets 503 with ``Retry-After`` at once, before
its upload is read. At most ``threads + queue`` uploads are held and ``threads`` images decoded at
once, so those two numbers bound the service's memory (docs/serving.md gives the figure).

Endpoints: ``GET /`` (the page), ``GET /health``, ``GET /metadata``, ``POST /predict`` (a
multipart form with the image in ``file``; ``?pair=true`` for a side-by-side pair, ``?output=``
``mask`` | ``overlay`` | ``ids`` | ``json``). Bad input is 400 (not an image), 413 (over the byte
or pixel limit), 405 or 415; no response carries a traceback.
"""
import contextlib
import functools
import logging
import os
import queue
import threading
import time
from base64 import b64encode
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from seglib import fsutil
from seglib.data.labels import colourize
from seglib.data.pairs import MAX_PIXELS, PairError, TooLarge, decode_image_bytes, image_header
from seglib.data.palette import Palette
from seglib.inference.config import MAX_BYTES, MODELS, ServeConfig
from seglib.inference.predict import is_pair, overlay, png, segment
from seglib.layout import RunDir
from seglib.parameters import checked_values

OUTPUTS = ("mask", "overlay", "ids", "json")
log = logging.getLogger("seglib.inference.serve")


class Busy(Exception):
    """Every runner is busy and the waiting line is full."""


class ModelPool:
    """``threads`` runners of one model, each used by one request at a time; at most ``queue``
    more requests wait for one, the rest are refused with :class:`Busy`."""

    def __init__(self, run_dir: str | os.PathLike, model: str = "int8", threads: int = 2, queue_size: int = 8):
        run = RunDir(run_dir)
        if model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
        path = run.model if model == "keras" else run.exported(model)
        if not path.exists():
            how = "train first" if model == "keras" else f"export it first: python -m seglib export {run.root} " \
                                                        f"--formats {model}"
            raise FileNotFoundError(f"{path}: no such model ({how})")
        self.model, self.path, self.palette = model, path, Palette.load(run.palette)
        self.threads = max(1, threads)
        self.runners: queue.Queue = queue.Queue()
        for _ in range(self.threads):
            self.runners.put(self._runner(path, model))
        _, self.size, self.runtime = self.runners.queue[0]
        self.places = threading.BoundedSemaphore(self.threads + max(0, queue_size))
        self.working = threading.BoundedSemaphore(self.threads)

    @functools.cached_property
    def _keras(self):
        """The .keras model, loaded once: every runner calls it (a direct call is thread-safe)."""
        from seglib.training.saved import load_keras_model

        return load_keras_model(self.path)

    def _runner(self, path: Path, model: str):
        """``(predict(batch) -> probabilities, input size, runtime)`` for one thread."""
        if model == "keras":
            import keras

            from seglib.training.saved import input_hw, keras_predictor

            return keras_predictor(self._keras), input_hw(self._keras), f"keras {keras.__version__}"
        if model == "onnx":
            from seglib.inference.export import OnnxModel

            onnx = OnnxModel(path, threads=1)
            return onnx.predict, onnx.size, onnx.runtime
        from seglib.inference.export import TFLiteModel

        lite = TFLiteModel(path, threads=1)
        return lite.predict, lite.size, lite.runtime

    @contextlib.contextmanager
    def place(self):
        """One of the ``threads + queue`` places a request holds from reading its upload to sending
        the answer; :class:`Busy` at once when none is free (never waits)."""
        if not self.places.acquire(blocking=False):
            raise Busy
        try:
            yield
        finally:
            self.places.release()

    @contextlib.contextmanager
    def work(self):
        """One of the ``threads`` slots a request holds from decoding its image to encoding the answer
        (waits for one): no more than ``threads`` decoded images exist at once."""
        with self.working:
            yield

    def segment(self, photo: np.ndarray) -> np.ndarray:
        """Class ids (H, W) of ``photo``, on the next free runner (call it inside :meth:`work`)."""
        runner = self.runners.get()
        try:
            return segment(runner[0], runner[1], photo)
        finally:
            self.runners.put(runner)


FORM_OVERHEAD = 64 * 1024  # a multipart form's bytes around the file: boundaries, headers, other fields
WORK_BYTES_PER_PIXEL = 12  # measured: 474 MB (9.7 B/px) from decoding a 49 MP 16-bit RGBA PNG to its overlay PNG


def memory_bound(threads: int = 2, queue_size: int = 8, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_BYTES) -> int:
    """The most bytes the service holds above its idle size: each working slot one decoded image and
    its answer, each place its upload twice (the body as read and the form's file)."""
    return threads * WORK_BYTES_PER_PIXEL * max_pixels + (threads + queue_size) * 2 * (max_bytes + FORM_OVERHEAD)


def create_app(run_dir: str | os.PathLike, model: str = "int8", threads: int = 2, queue_size: int = 8,
               max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, upload_timeout: float = 30):
    """The FastAPI app serving ``run_dir`` (see the module docstring): JSON errors, the page and the
    run's facts, and ``/predict``."""
    from fastapi import FastAPI

    run = RunDir(run_dir)
    pool = ModelPool(run.root, model, threads, queue_size)
    app = FastAPI(title="seglib", docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)
    _read_routes(app, run, pool)
    _predict_route(app, pool, max_pixels, max_bytes, upload_timeout)
    app.state.pool = pool
    return app


def _error_handlers(app) -> None:
    """Every error a JSON ``{"error": ...}``: HTTP errors as raised, bad query parameters 400, anything
    else 500 with the traceback in the service's log only."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad parameters ({problems})"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # one line a failed request; --debug: the traceback
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__,
                  " ".join(str(exc).split())[:300], exc_info=log.isEnabledFor(logging.DEBUG))
        return JSONResponse({"error": "internal error (see the service's log)"}, status_code=500)


def _read_routes(app, run: RunDir, pool: ModelPool) -> None:
    """``/`` (the browser page), ``/health`` and ``/metadata`` (the palette, parameters and metrics)."""
    from fastapi.responses import HTMLResponse

    started = time.time()

    def read_json(path: Path) -> dict | None:
        return fsutil.read_json(path) if path.exists() else None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("seglib.inference").joinpath("static/serve.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": pool.model, "file": pool.path.name, "runtime": pool.runtime,
                "classes": pool.palette.k, "input_size": list(pool.size), "threads": pool.threads,
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/metadata")
    def metadata() -> dict:
        palette = pool.palette
        metrics = read_json(run.metrics)
        return {
            "run": run.root.name, "model": pool.model,
            "palette": [{"id": i, "name": palette.names[i] if palette.names else str(i),
                         "rgb": [int(c) for c in palette.colours[i]]} for i in range(palette.k)],
            "parameters": _without_paths(read_json(run.config)),
            "metrics": {k: metrics[k] for k in ("split", "pixel_accuracy", "mean_accuracy", "mean_iou", "mean_dice")
                        if k in metrics} if metrics else None,
        }


def _predict_route(app, pool: ModelPool, max_pixels: int, max_bytes: int, upload_timeout: float) -> None:
    """``POST /predict``: a place taken before the upload is read (503 when none is free), the upload
    bounded in bytes and in time (408 past ``upload_timeout``), the work on a worker thread."""
    import asyncio

    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    @app.post("/predict")
    async def predict(request: Request, pair: bool = False, output: str = "mask", alpha: float | None = None,
                      mask: bool = False):
        _check_options(output, alpha, mask)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the image as multipart/form-data in the field 'file'")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
            raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} (--max-bytes)")
        try:
            with pool.place():  # taken before the upload is read: a refused request has stored nothing
                try:  # a sender that stalls loses its place at the deadline
                    data, name = await asyncio.wait_for(_read_upload(request, max_bytes), upload_timeout)
                except TimeoutError:
                    log.warning("an upload did not arrive within %g s (--upload-timeout): cut off", upload_timeout)
                    raise HTTPException(408, f"the upload did not arrive within {upload_timeout:g} s "
                                             "(--upload-timeout)") from None
                except ClientDisconnect:
                    log.warning("a client disconnected during its upload")
                    return Response(status_code=400)
                try:  # decoding, the model and encoding run on a worker thread, not on the event loop
                    return await run_in_threadpool(answer, data, name, pair, output, alpha, mask)
                except TooLarge as exc:
                    raise HTTPException(413, f"{name}: {exc.reason}") from None
                except PairError as exc:
                    raise HTTPException(400, f"{name}: {exc.reason}") from None
        except Busy:
            raise HTTPException(503, "busy: every model runner is in use and the queue is full; retry shortly",
                                headers={"Retry-After": "1"}) from None

    def answer(data: bytes, name: str, pair: bool, output: str, alpha: float | None, mask: bool) -> Response:
        with pool.work():
            body, latency = _answer(pool, data, name, pair, output, alpha, mask, max_pixels)
        headers = {"X-Latency-Ms": str(latency)}
        if isinstance(body, dict):
            return JSONResponse(body, headers=headers)
        return Response(body, media_type="image/png", headers=headers)


def _without_paths(config: dict | None) -> dict | None:
    """A run's parameters as clients may see them: folders and files by name, not the server's paths."""
    if config is None:
        return None
    named = {k: Path(config[k]).name for k in ("prepared_dir", "run_dir", "init_from") if config.get(k)}
    weights = config.get("encoder_weights")
    if weights not in (None, "imagenet"):
        named["encoder_weights"] = Path(weights).name
    return {**config, **named}


def _check_options(output: str, alpha: float | None, mask: bool) -> None:
    """400 for options that do not fit together, saying why."""
    from fastapi import HTTPException

    if output not in OUTPUTS:
        raise HTTPException(400, f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise HTTPException(400, f"alpha must be between 0 and 1, got {alpha}")
    if alpha is not None and output != "overlay":
        raise HTTPException(400, f"alpha is the overlay's opacity: it needs output=overlay, not output={output}")
    if mask and output != "json":
        raise HTTPException(400, f"mask=true adds the mask to output=json; output={output} does not take it")


def predict_bytes(pool: ModelPool, data: bytes, name: str = "upload", pair: bool = False, output: str = "mask",
                  alpha: float | None = None, mask: bool = False,
                  max_pixels: int = MAX_PIXELS) -> tuple[bytes | dict, float]:
    """What ``POST /predict`` answers for an image file's bytes, without the HTTP: PNG bytes (or the
    JSON body for ``output="json"``) and the model's milliseconds; in one of the pool's places
    (:class:`Busy` when none is free) and its working slots."""
    with pool.place(), pool.work():
        return _answer(pool, data, name, pair, output, alpha, mask, max_pixels)


def _answer(pool: ModelPool, data: bytes, name: str, pair: bool, output: str, alpha: float | None, mask: bool,
            max_pixels: int) -> tuple[bytes | dict, float]:
    if pair:  # from the header, before decoding
        width, height, _ = image_header(data, name)
        if not is_pair(width, height, pool.size):
            raise PairError(name, f"pair=true, but the image is {width}x{height}, not a side-by-side pair "
                                  f"({2 * pool.size[1] / pool.size[0]:g}:1 for this model's "
                                  f"{pool.size[1]}x{pool.size[0]} input)")
    image = decode_image_bytes(data, name, max_pixels)
    photo = image[:, : image.shape[1] // 2] if pair else image
    begun = time.perf_counter()
    ids = pool.segment(photo)
    latency = round((time.perf_counter() - begun) * 1000, 2)
    height, width = photo.shape[:2]
    if output != "overlay":
        del image, photo  # an image of 50 MP is 150 MB: no longer needed
    if output == "ids":
        return png(ids), latency
    colour = colourize(pool.palette, ids)
    if output == "mask":
        return png(colour, inplace=True), latency
    if output == "overlay":
        return png(overlay(photo, colour, 0.5 if alpha is None else alpha, inplace=True), inplace=True), latency
    # OpenCV's histogram counts in place; np.bincount would first copy a 50 MP image to int64 (400 MB)
    counts = cv2.calcHist([ids], [0], None, [256], [0, 256]).ravel()[: pool.palette.k].astype(np.int64)
    names = pool.palette.names or [str(i) for i in range(pool.palette.k)]
    body = {"width": width, "height": height, "latency_ms": latency,
            "classes": [{"id": i, "name": names[i], "rgb": [int(c) for c in pool.palette.colours[i]],
                         "share": round(float(counts[i] / ids.size), 6)} for i in range(pool.palette.k)]}
    if mask:
        body["mask_png"] = b64encode(png(colour, inplace=True)).decode("ascii")
    return body, latency


async def _read_upload(request, max_bytes: int) -> tuple[bytes, str]:
    """The bytes and file name of the form's ``file`` field; 400 without one, 413 over ``max_bytes``.
    The body is read into memory as it arrives and refused as soon as it passes the limit (a chunked
    upload declares no length), so no more than ``max_bytes`` and the form's own bytes are stored."""
    from fastapi import HTTPException
    from starlette.datastructures import UploadFile

    body, limit = bytearray(), max_bytes + FORM_OVERHEAD
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"upload over the limit of {max_bytes} bytes (--max-bytes): refused after "
                                     f"reading {len(body)} bytes")
    request._body = bytes(body)  # what starlette's form parser reads
    del body
    try:
        form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
    except Exception as exc:  # noqa: BLE001 - starlette's parser errors: a malformed form
        status = 413 if "too large" in str(exc).lower() or "exceed" in str(exc).lower() else 400
        raise HTTPException(status, f"malformed multipart form ({exc})") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "no file: send the image in the multipart form field 'file'")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{upload.filename}: over the limit of {max_bytes} bytes (--max-bytes)")
    return data, upload.filename or "upload"


S = ServeConfig  # the defaults below are ServeConfig's


def serve(run_dir: str | os.PathLike, model: str = S.model, host: str = S.host, port: int = S.port,
          threads: int = S.threads, queue: int = S.queue, max_pixels: int = S.max_pixels,
          max_bytes: int = S.max_bytes, upload_timeout: float = S.upload_timeout, log_level: str = "info") -> None:
    """Run the service until interrupted (uvicorn); the parameters are
    :class:`~seglib.inference.config.ServeConfig`'s, each checked before anything starts.

    Example:
        ``serve("artifacts/default", model="int8", port=8080)``
    """
    import socket

    import uvicorn

    checked_values(ServeConfig, model=model, port=port, threads=threads, queue=queue, max_pixels=max_pixels,
                   max_bytes=max_bytes, upload_timeout=upload_timeout)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # a clear error first
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"{host}:{port}: cannot listen there ({exc.strerror}); choose another --port") from None
    logging.basicConfig(level=logging.DEBUG if log_level == "debug" else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(run_dir, model, threads, queue, max_pixels, max_bytes, upload_timeout)
    pool = app.state.pool
    bound = memory_bound(pool.threads, queue, max_pixels, max_bytes)
    print(f"serving {pool.path} ({pool.runtime}, {pool.threads} thread(s)) on http://{host}:{port}/\n"
          f"at most {pool.threads} image(s) decoded and {pool.threads + queue} upload(s) held at once: "
          f"up to {bound / 1e9:.1f} GB above the idle size (--threads, --queue, --max-pixels, --max-bytes); an "
          f"upload has {upload_timeout:g} s to arrive (--upload-timeout)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")
