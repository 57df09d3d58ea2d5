"""``python -m seglib doctor``: what this machine runs seglib with, and whether its accelerator
computes what the CPU computes.

tensorflow-metal (a Mac's GPU) has had no release since 1.2.0 (January 2025), loads only with
TensorFlow 2.18/2.19, and has public reports of results that differ from the CPU's
(tensorflow/tensorflow#92686). The self-check runs a small fixed convolutional model's forward pass
and one gradient step on the accelerator and on the CPU and compares them. ``train`` runs it once
per machine and library versions when it trains on an accelerator (the verdict is cached) and
warns when it fails.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from seglib.layout import ARTIFACTS

TOLERANCE = 1e-3  # largest absolute difference allowed; float32 kernels on other hardware differ by ~1e-6
METAL_TF = {"1.2": ("2.18", "2.19"), "1.1": ("2.14", "2.15", "2.16", "2.17")}  # tensorflow-metal -> TF it loads with


@dataclass
class SelfCheck:
    """The self-check's outcome: ``ok`` None when there is no accelerator to compare."""

    device: str
    ok: bool | None
    largest_difference: float | None
    verdict: str


def versions() -> dict:
    """Python, TensorFlow, Keras, segmentation-models, the TFLite runtime and the Metal plugin."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    found = {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
             "seglib": installed("seglib")}
    for name in ("tensorflow", "keras", "segmentation-models", "ai-edge-litert", "onnxruntime", "tensorflow-metal"):
        found[name] = installed(name)
    return found


def metal_note(found: dict) -> str | None:
    """Whether the installed tensorflow-metal loads with the installed TensorFlow (None without it)."""
    metal, tf = found.get("tensorflow-metal"), found.get("tensorflow") or ""
    if not metal:
        return None
    supported = METAL_TF.get(".".join(metal.split(".")[:2]))
    if supported is None:
        return f"tensorflow-metal {metal}: not a release seglib knows"
    if ".".join(tf.split(".")[:2]) in supported:
        return f"tensorflow-metal {metal} supports TensorFlow {tf}"
    return (f"tensorflow-metal {metal} needs TensorFlow {' or '.join(supported)}, this is {tf}: the GPU is not used "
            "(environment.yml pins the versions that work)")


def self_check(accelerator: str | None, run_on=None, tolerance: float = TOLERANCE) -> SelfCheck:
    """The fixed model's outputs and gradient step on ``accelerator`` (a TensorFlow device name, None
    for none) against the CPU's. ``run_on(device) -> array`` computes them (a test passes its own)."""
    import numpy as np

    if accelerator is None:
        return SelfCheck("CPU", None, None, "only a CPU here: there is nothing to compare it with")
    run_on = run_on or _fixed_step
    cpu, other = np.asarray(run_on("/device:CPU:0")), np.asarray(run_on(accelerator))
    largest = float(np.max(np.abs(cpu - other))) if cpu.shape == other.shape and np.isfinite(other).all() \
        else float("inf")
    if largest <= tolerance:
        return SelfCheck(accelerator, True, largest, f"{accelerator} agrees with the CPU (largest difference "
                                                     f"{largest:.2g}, allowed {tolerance:g})")
    return SelfCheck(accelerator, False, largest, f"{accelerator} differs from the CPU by up to {largest:.3g} "
                                                  f"(allowed {tolerance:g}): results trained there may be wrong")


def _fixed_step(device: str):
    """A seeded 2-layer convolutional model on a fixed batch: its outputs and its weights after one
    SGD step, concatenated, computed on ``device``."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 5, (4, 32, 32)))
    kernels = [rng.normal(0, 0.3, shape).astype(np.float32) for shape in ((3, 3, 3, 8), (3, 3, 8, 5))]
    with tf.device(device):
        weights = [tf.Variable(k) for k in kernels]
        with tf.GradientTape() as tape:
            hidden = tf.nn.relu(tf.nn.conv2d(images, weights[0], 1, "SAME"))
            logits = tf.nn.conv2d(hidden, weights[1], 1, "SAME")
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        for weight, grad in zip(weights, tape.gradient(loss, weights), strict=True):
            weight.assign_sub(0.1 * grad)
        return np.concatenate([tf.nn.softmax(logits).numpy().ravel()] + [w.numpy().ravel() for w in weights])


def accelerator() -> str | None:
    """The first GPU or TPU device TensorFlow sees, or None."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        found = tf.config.list_logical_devices(kind)
        if found:
            return found[0].name
    return None


def cached_check(cache_dir: str | os.PathLike | None = None) -> SelfCheck:
    """:func:`self_check` on this machine's accelerator, run once per machine and library versions
    (the verdict kept in ``cache_dir``, by default ``~/.cache/seglib``)."""
    from seglib.fsutil import atomic_write_json, read_json

    device = accelerator()
    if device is None:
        return self_check(None)
    found = versions()
    key = "-".join(str(found.get(k)) for k in ("platform", "tensorflow", "tensorflow-metal")) + f"-{device}"
    cache = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "seglib")
    path = cache / "device-check.json"
    known = read_json(path) if path.exists() else {}
    if key not in known:
        known[key] = asdict(self_check(device))
        atomic_write_json(path, known)
    return SelfCheck(**known[key])


def report(runs_dir: str | os.PathLike = ARTIFACTS) -> tuple[list[str], SelfCheck]:
    """The doctor's lines: versions, the Metal plugin, the device, free disk where runs go, the check."""
    from seglib.training.model import detect_device

    found = versions()
    lines = [f"{name:20s} {value or '-'}" for name, value in found.items()]
    note = metal_note(found)
    if note:
        lines.append(f"{'metal plugin':20s} {note}")
    device = detect_device()
    lines.append(f"{'device':20s} {device['kind']} ({', '.join(device['devices'])})")
    where = Path(runs_dir).resolve()
    while not where.exists():
        where = where.parent
    lines.append(f"{'free disk':20s} {shutil.disk_usage(where).free / 1e9:.1f} GB at {where}")
    check = self_check(accelerator())
    lines.append(f"{'self-check':20s} {'PASS' if check.ok else 'FAIL' if check.ok is False else '-'}: {check.verdict}")
    return lines, check


def warn_if_unreliable(log=None) -> None:
    """What ``train`` does on an accelerator: the cached self-check, and a warning when it failed."""
    check = cached_check()
    if check.ok is False:
        (log or (lambda line: print(line, file=sys.stderr)))(
            f"warning: {check.verdict}. Run `python -m seglib doctor`; to train on the CPU instead hide the GPU "
            "(CUDA_VISIBLE_DEVICES=-1, or on a Mac pip uninstall tensorflow-metal)")
