"""TensorFlow's C++ start-up lines kept off the terminal: absl's "All log messages before
absl::InitializeLog() ..." notice, oneDNN's and the CUDA stubs' INFO lines and, on a machine
without a GPU, "E0000 ... failed call to cuInit". absl writes them to stderr before any log level
applies (TF_CPP_MIN_LOG_LEVEL does not reach them, and absl reads no environment variable), so the
first import of TensorFlow in a seglib process, and its device set-up, run with file descriptor 2
read through a pipe: those lines are dropped, every other line is written on to stderr.
``SEGLIB_DEBUG=1`` (``python -m seglib --debug``) keeps everything: an environment variable, the one
of seglib's own, because the notebook kernels and run processes a command starts must inherit it.
The threads that import starts never take SIGTERM (:func:`sigterm_to_main_thread`).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import signal
import sys
import threading

DEBUG_ENV = "SEGLIB_DEBUG"
# a C++ log line: absl's "E0000 00:00:..." or TensorFlow 2.18's "2026-01-01 12:00:00.000: E ..."; its severity
LOG_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:.]+: ([IWE]) |([IWE])\d{4} )")
ERROR_NOISE = re.compile(r"cuInit|cuda_dnn|cuda_fft|cuda_blas|cuDNN|cuFFT|cuBLAS|computation_placer|NodeDef mentions "
                         r"attribute|oneDNN supports DT_INT32 only")
OTHER_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|.*TF-TRT Warning|.*oneDNN "
                         r"custom operations|fully_quantize: |INFO: Created TensorFlow Lite XNNPACK delegate|"
                         r"To enable the following instructions: )")


def startup_noise(line: str) -> bool:
    """INFO and WARNING log lines, the CUDA-less machine's errors, and the lines named above."""
    found = LOG_LINE.match(line)
    if found:
        return (found.group(1) or found.group(2)) in "IW" or bool(ERROR_NOISE.search(line))
    return bool(OTHER_NOISE.match(line))


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the loading of the ``tensorflow`` package the first time it is imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with sigterm_to_main_thread(), filtered_stderr():
                    load(module)
                    module.config.list_physical_devices()  # device set-up (cuInit) logs now, not mid-run

            spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def sigterm_to_main_thread():
    """Threads that libraries start meanwhile (OpenBLAS, OpenCV, TensorFlow's pools) are made with
    SIGTERM blocked, so that a SIGTERM always reaches the main thread, where seglib can hold it while
    TensorFlow waits for other workers (``seglib.training.distribute.bounded_wait``)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_SAVED: list = []  # the stderr descriptors the active filters saved, outermost first


def real_stderr() -> int:
    """The process's own stderr descriptor even while a filter reads descriptor 2: for a child that must
    be heard after this process ends (a watchdog that kills it)."""
    return _SAVED[0] if _SAVED and _SAVED[0] is not None else 2


class filtered_stderr:
    """File descriptor 2 read through a pipe meanwhile; start-up noise dropped, the rest passed on:
    at the end, or line by line as it comes with ``stream=True`` (for a long run, e.g. training).
    With ``SEGLIB_DEBUG`` set it changes nothing."""

    def __init__(self, stream: bool = False):
        self.stream = stream

    def __enter__(self):
        self.active = not os.environ.get(DEBUG_ENV)
        if not self.active:
            return self
        _SAVED.append(None)  # replaced by this filter's saved descriptor below
        sys.stderr.flush()
        self.read, write = os.pipe()
        self.saved = os.dup(2)
        _SAVED[-1] = self.saved
        os.dup2(write, 2)
        os.close(write)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        with sigterm_to_main_thread():  # the reader never takes a SIGTERM meant for the main thread
            self.reader.start()
        return self

    def _drain(self):
        pending = b""
        while chunk := os.read(self.read, 65536):
            if not self.stream:
                self.chunks.append(chunk)
                continue
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line for line in lines if not startup_noise(line.decode(errors="replace"))]
            if kept:
                os.write(self.saved, b"\n".join(kept) + b"\n")
            if b"\r" in pending:  # a progress bar's update, not a log line: shown as it comes
                os.write(self.saved, pending)
                pending = b""
        self.chunks.append(pending)

    def __exit__(self, *exc):
        if not self.active:
            return False
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # the pipe's last writer closes: the reader sees its end
        self.reader.join()  # (it may still be writing to the saved descriptor)
        _SAVED.pop()
        os.close(self.saved)
        os.close(self.read)
        kept = [line for line in b"".join(self.chunks).decode(errors="replace").splitlines(keepends=True)
                if not startup_noise(line)]
        if kept:
            os.write(2, "".join(kept).encode())
        return False


def install() -> None:
    """Filter the first TensorFlow import of this process (a no-op once TensorFlow is imported), and
    Keras' warning that a model of one input is called without a list (segmentation-models' U-Net
    declares a list of one; seglib calls it with the tensor, which Keras takes as meant)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match the expected structure",
                            category=UserWarning)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _FirstTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FirstTensorFlowImport())
