"""TFLite (fp32 / fp16 / int8) and ONNX export with measured agreement, accuracy, size and latency.

int8 is full-integer post-training quantization (every op int8, calibrated on a representative
dataset drawn from the train split); its input is the uint8 image itself (scale 1), its output
float32 probabilities. Models run with ai-edge-litert's interpreter at a fixed thread count, so
latencies are comparable. Where ai-edge-litert cannot be imported or loaded (its macOS wheels
from 1.3.0 on need macOS 15.2), TensorFlow's own, deprecated ``tf.lite.Interpreter`` runs them;
``export.json`` records which runtime measured the latencies. ONNX goes through Keras' own
``model.export(format="onnx")`` (tf2onnx) and runs with onnxruntime at the same thread count.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from seglib.data.splits import open_split
from seglib.fsutil import atomic_write_bytes, atomic_write_json, read_json, staged_file, writer_lock
from seglib.inference.config import EvaluateConfig
from seglib.inference.evaluate import run_prepared_dir
from seglib.layout import RunDir
from seglib.parameters import NONE_WORDS, checked_values
from seglib.quiet import filtered_stderr
from seglib.training.metrics import scores, update_confusion

FORMATS = ("fp32", "fp16", "int8")  # TFLite
EXPORTS = (*FORMATS, "onnx")


def tflite_interpreter(path: str | os.PathLike, threads: int = 2):
    """``(interpreter, runtime)`` for a .tflite file: ai-edge-litert's interpreter, or TensorFlow's
    ``tf.lite.Interpreter`` when ai-edge-litert cannot be imported or its binary cannot be loaded
    here; ``runtime`` names the one used, with its version."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except (ImportError, OSError):  # missing, or its binary needs a newer OS (dlopen fails on import)
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": it is the fallback
            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
            quantized = interpreter.get_input_details()[0]["dtype"] in (np.uint8, np.int8)
            if quantized and _xnnpack_int8_unverified(tf.__version__):
                # TF 2.18's XNNPACK delegate gets this int8 model wrong (argmax agreement with Keras
                # 0.21; 0.99 with TF's own kernels, as with ai-edge-litert or TF 2.21)
                interpreter = tf.lite.Interpreter(
                    model_path=str(path), num_threads=threads,
                    experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                return interpreter, f"tf.lite (TensorFlow {tf.__version__}, int8 without XNNPACK)"
        return interpreter, f"tf.lite (TensorFlow {tf.__version__})"
    from importlib.metadata import PackageNotFoundError, version

    try:
        runtime = f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:
        runtime = "ai-edge-litert"
    return Interpreter(model_path=str(path), num_threads=threads), runtime


def _xnnpack_int8_unverified(tf_version: str) -> bool:
    """True below TF 2.21, the first tf.lite whose XNNPACK int8 results were checked right here."""
    major, minor = (int(part) for part in tf_version.split(".")[:2])
    return (major, minor) < (2, 21)


class TFLiteModel:
    """A .tflite segmentation model: ``predict(images)`` -> probabilities (N, H, W, K)."""

    def __init__(self, path: str | os.PathLike, threads: int = 2):
        self.path = Path(path)
        with filtered_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter, self.runtime = tflite_interpreter(path, threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = (int(self.input["shape"][1]), int(self.input["shape"][2]))  # (H, W)

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        """One RGB image (H, W, 3) with values in [0, 255] -> probabilities (H, W, K)."""
        dtype = self.input["dtype"]
        x = np.asarray(image)[None]
        x = np.clip(np.rint(x), 0, 255).astype(dtype) if dtype == np.uint8 else x.astype(dtype)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero = self.output["quantization"]
        return (out.astype(np.float32) - zero) * scale if out.dtype != np.float32 and scale else out

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.predict_one(im) for im in images])


class OnnxModel:
    """A .onnx segmentation model run with onnxruntime: the same ``predict``/``predict_one``."""

    def __init__(self, path: str | os.PathLike, threads: int = 2):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.size = (int(self.input.shape[1]), int(self.input.shape[2]))  # (H, W)
        self.runtime = f"onnxruntime {ort.__version__}"

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: np.asarray(images, np.float32)})[0]

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        return self.predict(np.asarray(image)[None])[0]


def export_onnx(model, path: Path, example: np.ndarray) -> None:
    """Write ``model`` as ONNX to ``path`` (atomically) through Keras' exporter."""
    from seglib.training.saved import keras_predictor

    keras_predictor(model)(example[:1])  # Keras exports only a model that has been called
    with staged_file(path, ".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation warnings
        model.export(str(tmp), format="onnx", verbose=False)


def convert(saved_model_dir: str | os.PathLike, fmt: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a SavedModel to TFLite bytes in format ``fmt`` (see module docstring)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if fmt == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 export needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.asarray(im, np.float32)[None]] for im in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    elif fmt != "fp32":
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    with filtered_stderr():  # the converter's C++ log lines (quantizer settings, NodeDef notices)
        return converter.convert()


KERAS_CALL = "compiled call (tf.function, fixed input signature)"


def latency_ms(fn, image, repeats: int) -> dict:
    """Single-image latency of ``fn`` over ``repeats`` calls after a warm-up: median, p10 and p90
    in milliseconds (the spread shows how noisy the machine was)."""
    fn(image)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(image)
        times.append((time.perf_counter() - start) * 1000)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {"latency_ms": float(median), "latency_p10_ms": float(p10), "latency_p90_ms": float(p90),
            "latency_repeats": repeats}


def export_formats(formats) -> list[str]:
    """The formats of ``--formats`` (``"fp32,int8"``, a list, or none/empty for no export), checked."""
    if isinstance(formats, str):
        formats = [] if formats.strip().lower() in NONE_WORDS else formats.split(",")
    formats = [f.strip() for f in formats]
    unknown = [f for f in formats if f not in EXPORTS]
    if unknown:
        raise ValueError(f"FORMATS (--formats): unknown format(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(EXPORTS)}")
    return formats


E = EvaluateConfig  # the defaults below are EvaluateConfig's


def export_run(run_dir: str | os.PathLike, formats=E.formats, calibration_images: int = E.calibration_images,
               prepared_dir: str | os.PathLike | None = E.prepared_dir, eval_images: int | None = E.eval_images,
               threads: int = 2, latency_repeats: int = 20, seed: int = 0) -> dict:
    """Write ``RUN_DIR/model_<fmt>.tflite`` (or ``.onnx``) for each format and ``RUN_DIR/export.json``
    (:class:`seglib.layout.RunDir`): each model's size, its argmax agreement with the Keras model and its
    mean IoU on the first ``eval_images`` test images, and its latency on one image.

    Example:
        ``result = export_run("artifacts/default", formats="int8,onnx")``
    """
    from seglib.training.model import architecture
    from seglib.training.saved import run_model

    checked_values(EvaluateConfig, calibration_images=calibration_images, eval_images=eval_images)
    run = RunDir(run_dir)
    formats = export_formats(formats)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.root}: not a trained run (no {run.config.name}; train first)")
    config = read_json(run.config)
    arch = config.get("arch", "unet")
    refused = [f for f in formats if f not in architecture(arch).exports]
    if refused:
        raise ValueError(f"FORMATS (--formats): {arch} does not export to {', '.join(refused)}; it exports to "
                         f"{', '.join(architecture(arch).exports)}")
    data = _export_data(run_prepared_dir(run.root, prepared_dir), calibration_images, eval_images, seed)
    import tensorflow as tf

    with writer_lock(run.root, RunDir):  # one writer; a killed export's .saved_model-*/ is removed here
        try:
            return _export_formats(run, run_model(run.model), formats, data, config, threads, latency_repeats)
        except tf.errors.ResourceExhaustedError as exc:  # TensorFlow's word for a full disk while saving
            raise OSError(f"{run.root}: no space left to export the model ({str(exc).strip().splitlines()[0][:160]}); "
                          "free some space and export again (nothing half-written is kept)") from None


def _export_data(prepared_dir: Path, calibration_images: int, eval_images: int | None, seed: int) -> dict:
    """The representative (calibration) images drawn from train, and the test images and labels the
    exports are scored on."""
    train = open_split(prepared_dir, "train")
    rows = np.sort(np.random.default_rng(seed).permutation(len(train))[: min(calibration_images, len(train))])
    test = open_split(prepared_dir, "test")
    n_eval = len(test) if eval_images is None else min(eval_images, len(test))
    return {"representative": np.asarray(train.images[rows], np.float32),
            "images": np.asarray(test.images[:n_eval], np.float32), "truth": np.asarray(test.labels[:n_eval])}


def _export_formats(run: RunDir, loaded: tuple, formats: list[str], data: dict, config: dict, threads: int,
                    repeats: int) -> dict:
    """Score the Keras model (the baseline: the call seglib predicts and serves with), then write and
    score each format from one SavedModel; ``export.json`` written last."""
    import tensorflow as tf

    model, compiled = loaded  # the run's model and its compiled call (run_model)
    images, truth, k, ignore = data["images"], data["truth"], config["num_classes"], config.get("ignore_index")
    keras_pred = _argmax(compiled, images)
    keras_cm = update_confusion(np.zeros((k, k), np.int64), truth, keras_pred, ignore)
    keras_latency = latency_ms(compiled, images[:1], repeats)
    result = {"eval_images": len(images), "calibration_images": len(data["representative"]), "threads": threads,
              "runtime": None, "keras": {"mean_iou": scores(keras_cm)["mean_iou"], **keras_latency,
                                         "file_bytes": run.model.stat().st_size, "call": KERAS_CALL},
              "formats": {}}
    saved = Path(tempfile.mkdtemp(prefix=".saved_model-", dir=run.root))
    try:
        logger = tf.get_logger()  # keep "INFO:tensorflow:Assets written to ..." out of reports
        level = logger.level
        logger.setLevel("WARNING")
        try:
            model.export(str(saved), format="tf_saved_model", verbose=False)
        finally:
            logger.setLevel(level)
        for fmt in formats:
            path = run.exported(fmt)
            if fmt == "onnx":
                export_onnx(model, path, images)
                exported = OnnxModel(path, threads)
            else:
                atomic_write_bytes(path, convert(saved, fmt, data["representative"] if fmt == "int8" else None))
                exported = TFLiteModel(path, threads)
                result["runtime"] = exported.runtime
            pred = _argmax(exported.predict, images)
            cm = update_confusion(np.zeros((k, k), np.int64), truth, pred, ignore)
            result["formats"][fmt] = {
                "file": path.name, "file_bytes": path.stat().st_size, "size_vs_fp32": None,
                "agreement": float((pred == keras_pred).mean()), "mean_iou": scores(cm)["mean_iou"],
                **latency_ms(exported.predict_one, images[0], repeats),
                **({"runtime": exported.runtime} if fmt == "onnx" else {}),
            }
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    fp32 = result["formats"].get("fp32", {}).get("file_bytes")
    for info in result["formats"].values():
        info["size_vs_fp32"] = info["file_bytes"] / fp32 if fp32 else None
        info["latency_vs_keras"] = info["latency_ms"] / keras_latency["latency_ms"]
    atomic_write_json(run.export, result)
    return result


def _argmax(predict, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """The predicted classes of ``images``, ``batch`` at a time."""
    return np.concatenate([predict(images[i : i + batch]).argmax(-1) for i in range(0, len(images), batch)])
