"""Run the project's notebooks with papermill, in a kernel of the environment running seglib.

Reports and batches both go through :func:`execute`, so parameters, working directory and
kernel choice are the same everywhere. Paths in the notebooks' parameter cells are relative to
the ``notebooks/`` folder, which is the working directory they run in.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PREPARE, TRAIN, EVALUATE = "01_prepare_data", "02_train", "03_evaluate_export"


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"{path}: notebook not found; seglib's notebooks/ folder must sit beside the "
                                "package (install seglib from a checkout: pip install -e .)")
    return path


def parameters(name: str) -> dict:
    """The notebook's parameters cell as ``{NAME: default}`` (defaults that are not plain
    literals come back as their source text)."""
    return dict(_parameters(name))


@functools.lru_cache(maxsize=None)
def _parameters(name: str) -> dict:  # read once per process: a batch asks for each notebook per run
    import papermill as pm

    found = pm.inspect_notebook(str(notebook_path(name)))
    values = {}
    for key, info in found.items():
        try:
            values[key] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            values[key] = info["default"]
    return values


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


def execute(name: str, output: str | os.PathLike, parameters: dict, log_output: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` into ``output``.

    On a failing cell papermill still writes the partly executed notebook to ``output`` and
    raises ``papermill.PapermillExecutionError`` (with ``ename``/``evalue``).
    """
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook_path(name)), str(output), parameters=_plain(parameters),
                        kernel_name=kernel_name(), cwd=str(NOTEBOOKS), progress_bar=False, log_output=log_output)
    return output


def _plain(parameters: dict) -> dict:
    """Parameters as papermill can write them into a cell (paths become strings)."""
    return json.loads(json.dumps(parameters, default=str))
