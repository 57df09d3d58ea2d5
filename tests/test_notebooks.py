"""The notebooks as files: stripped, parameterised as Colab forms papermill reads, defaults that
chain, and the kernel they run in. (Running them is in test_journeys.py and test_batch.py.)"""
import json
import re
import sys

import nbformat

from seglib.runs import notebooks
from seglib.runs.notebooks import NOTEBOOKS


def test_notebooks_are_stripped_and_parameterised():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), (
            path
        )


def test_parameters_are_colab_form_fields_that_papermill_reads():
    """Every parameter line carries a Colab ``# @param`` annotation, and papermill still reads the
    default (not the annotation) as the value."""
    for name in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assignments = [line for line in cell.source.splitlines() if re.match(r"^[A-Z_]+ = ", line)]
        assert assignments and all("# @param" in line for line in assignments), name
        values = notebooks.parameters(name)
        assert set(values) == {line.split(" = ")[0] for line in assignments}
        assert all(not str(v).startswith("#") for v in values.values()), values


def test_the_training_parameters_are_the_training_configs_fields():
    """Notebook 02's parameters cell is written from TrainConfig (``make notebooks``), so the notebook,
    the ``train`` flags and batch configs take the same parameters with the same defaults."""
    from dataclasses import fields

    from seglib.cli import build_parser
    from seglib.training.config import TrainConfig

    nb = nbformat.read(NOTEBOOKS / f"{notebooks.TRAIN}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == notebooks.train_parameters_cell(), "run `make notebooks` after changing TrainConfig"
    values = notebooks.parameters(notebooks.TRAIN)
    assert list(values) == [f.name.upper() for f in fields(TrainConfig)]
    from_notebook = TrainConfig.from_parameters(values)
    flags = vars(build_parser().parse_args(["train", values["PREPARED_DIR"], values["RUN_DIR"]]))
    from_cli = TrainConfig(**{f.name: flags[f.name] for f in fields(TrainConfig)})
    assert from_notebook == from_cli == TrainConfig(values["PREPARED_DIR"], values["RUN_DIR"])


def test_defaults_chain_01_to_02_to_03():
    prepare, train, evaluate = (notebooks.parameters(n) for n in (notebooks.PREPARE, notebooks.TRAIN,
                                                                 notebooks.EVALUATE))
    assert prepare["OUT_DIR"] == train["PREPARED_DIR"]
    assert train["RUN_DIR"] == evaluate["RUN_DIR"]
    assert evaluate["PREPARED_DIR"] is None and evaluate["REPORT_DIR"] is None  # the run's own data, ../reports


def test_kernel_is_this_environments_python_even_when_another_python3_shadows_it(tmp_path, monkeypatch):
    """papermill must run the notebooks with the Python running seglib; a user-level ``python3``
    kernel of another environment would import another (or no) seglib."""
    from jupyter_client.kernelspec import KernelSpecManager

    assert notebooks.kernel_name() == "python3"  # the stock spec runs this interpreter
    other = tmp_path / "kernels" / "python3"
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "language": "python",
                                                   "display_name": "another env"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    name = notebooks.kernel_name()
    assert name != "python3"
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[0] == sys.executable
    assert notebooks.kernel_name() == name  # registered once, then found
