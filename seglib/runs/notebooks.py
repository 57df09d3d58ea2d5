"""Run the project's notebooks with papermill, in a kernel of the environment running seglib.

Batches and tests go through :func:`execute`, so parameters, working directory and kernel
choice are the same everywhere. Paths in the notebooks' parameter cells are relative to the
``notebooks/`` folder, which is the working directory they run in.

Given a log file, everything the notebook and its kernel print (TensorFlow's start-up lines,
the kernel's own warnings, converter logs, progress bars) goes there instead of the terminal,
and only progress lines (:data:`PROGRESS`) are passed on as they come.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PREPARE, TRAIN, EVALUATE = "01_prepare_data", "02_train", "03_evaluate_export"


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"{path}: notebook not found; seglib's notebooks/ folder must sit beside the "
                                "package (install seglib from a checkout: pip install -e .)")
    return path


def parameter_configs(name: str) -> tuple[type, ...]:
    """The parameter dataclasses whose fields are notebook ``name``'s parameters, in the cell's order."""
    from seglib.data.config import PrepareConfig
    from seglib.inference.config import EvaluateConfig
    from seglib.reporting.config import ReportConfig, ShowConfig
    from seglib.training.config import TrainConfig

    return {PREPARE: (PrepareConfig, ShowConfig), TRAIN: (TrainConfig,),
            EVALUATE: (EvaluateConfig, ReportConfig, ShowConfig)}[name]


def parameters(name: str) -> dict:
    """Notebook ``name``'s parameters as ``{NAME: default}``: what its parameters cell holds (written
    from :func:`parameter_configs` by ``make notebooks``; ``tests/test_notebooks.py`` holds them equal)."""
    from seglib.parameters import notebook_defaults

    return notebook_defaults(*parameter_configs(name))


def parameters_cell(name: str) -> str:
    from seglib.parameters import parameters_cell as cell

    return cell(*parameter_configs(name))


def write_parameters() -> list[Path]:
    """Rewrite every notebook's parameters cell from its parameter dataclasses (``make notebooks``)."""
    import nbformat

    written = []
    for name in (PREPARE, TRAIN, EVALUATE):
        path = notebook_path(name)
        nb = nbformat.read(path, as_version=4)
        next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source = parameters_cell(name)
        nbformat.write(nb, path)
        written.append(path)
    return written


DOCS = NOTEBOOKS.parent / "docs" / "notebooks.md"


def docs_tables() -> dict[str, str]:
    """The tables docs/notebooks.md shows of the registries, by their marker's name."""
    from seglib.training.losses import losses_table
    from seglib.training.model import architectures_table

    return {"architectures": architectures_table(), "losses": losses_table()}


def write_docs_tables(path: Path = DOCS) -> Path:
    """Rewrite the tables between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (``make notebooks``)."""
    text = path.read_text()
    for name, table in docs_tables().items():
        text = re.sub(rf"(<!-- {name} -->\n)(?:.*?\n)?(<!-- /{name} -->)",
                      lambda m, table=table: f"{m.group(1)}{table}\n{m.group(2)}", text, flags=re.S)
    path.write_text(text)
    return path


def kernel_name() -> str:
    """A Jupyter kernel that runs *this* Python (so the notebooks import this seglib).

    The stock ``python3`` spec does when its command is a bare ``python``/``python3`` (Jupyter
    then substitutes ``sys.executable``) or this interpreter. If another environment's
    ``python3`` spec shadows it, a kernel for this environment is registered under
    ``sys.prefix`` and used instead.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        argv0 = manager.get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    if argv0 in ("python", "python3") or (argv0 and _same_file(argv0, sys.executable)):
        return "python3"
    name = "seglib-" + Path(sys.prefix).name.lower().replace(".", "").replace(" ", "-")
    try:
        spec = manager.get_kernel_spec(name)
        if _same_file(spec.argv[0], sys.executable):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name=f"Python (seglib, {sys.prefix})", prefix=sys.prefix)
    return name


def _same_file(a: str, b: str) -> bool:
    """Same interpreter path, symlinks *not* followed: a venv's ``bin/python`` links to the base
    Python, which is another environment."""
    return os.path.abspath(a) == os.path.abspath(b)


# What seglib prints that a person watching a batch wants to see: epoch lines (seglib.training.train),
# palette warnings (01_prepare_data), data generated or downloaded (seglib.data.datasets).
PROGRESS = re.compile(r"^(epoch \d+/\d+: |WARNING: |generated \d+ synthetic |downloading kaggle:|using kaggle:)")


def execute(name: str, output: str | os.PathLike, parameters: dict, log: str | os.PathLike | None = None,
            on_progress=None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` into ``output``.

    With ``log``, the notebook's printed output and the kernel's own output are appended to that
    file rather than shown, and each :data:`PROGRESS` line is passed to ``on_progress`` as it
    comes. On a failing cell papermill still writes the partly executed notebook to ``output``
    and raises ``papermill.PapermillExecutionError`` (with ``ename``/``evalue``).
    """
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    run = functools.partial(pm.execute_notebook, str(notebook_path(name)), str(output),
                            parameters=_plain(parameters), kernel_name=kernel_name(), cwd=str(NOTEBOOKS),
                            progress_bar=False)
    try:
        if log is None:
            _interruptible(run)
            return output
        with open(log, "a", encoding="utf-8") as sink, _stderr_to(sink):
            sink.write(f"\n===== {name} =====\n")
            sink.flush()
            _interruptible(functools.partial(run, stdout_file=_ProgressLines(sink, on_progress), stderr_file=sink))
    except KeyboardInterrupt:
        # the kernel was stopped mid-cell; nbclient's abandoned task then logs "Task exception was
        # never retrieved ... DeadKernelError" with a traceback at exit
        logging.getLogger("asyncio").addFilter(_abandoned_kernel_tasks)
        raise
    return output


def _interruptible(execute) -> None:
    """Run ``execute()`` (a papermill call) in a worker thread so that Ctrl-C and SIGTERM stay with
    this thread: run in the main thread, nbclient takes SIGINT over and only asks the kernel to
    shut down, so the cell may run on to its end. On KeyboardInterrupt here the kernel (a child
    process in its own session, which Ctrl-C does not reach) is killed and KeyboardInterrupt goes on."""
    import threading

    outcome: dict = {}

    def target():
        try:
            execute()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="seglib-notebook", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        _kill_kernels()
        worker.join(30)
        raise
    if "error" in outcome:
        raise outcome["error"]


def _kill_kernels() -> None:
    """Kill the Jupyter kernels this process started (and what they started)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                for process in [*child.children(recursive=True), child]:
                    process.kill()
        except psutil.Error:
            pass


def _abandoned_kernel_tasks(record: logging.LogRecord) -> bool:
    """Drop asyncio's report of a kernel task left behind by an interrupted execution."""
    return not (record.getMessage().startswith("Task exception was never retrieved")
                and "DeadKernelError" in repr(record.__dict__.get("exc_info") or record.getMessage()))


class _ProgressLines:
    """A file for papermill's ``stdout_file``: writes everything to ``sink`` and passes complete
    :data:`PROGRESS` lines to ``on_progress``."""

    def __init__(self, sink, on_progress):
        self.sink, self.on_progress, self.pending = sink, on_progress, ""

    def write(self, text: str) -> None:
        self.sink.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if self.on_progress and PROGRESS.match(line):
                self.on_progress(line)

    def flush(self) -> None:
        self.sink.flush()


@contextmanager
def _stderr_to(sink):
    """Point this process's file descriptor 2 at ``sink`` meanwhile: the kernel, started now,
    inherits it, so what it writes outside cells (its warnings, TensorFlow's C++ logs) lands
    there too."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _plain(parameters: dict) -> dict:
    """Parameters as papermill can write them into a cell (paths become strings)."""
    return json.loads(json.dumps(parameters, default=str))
