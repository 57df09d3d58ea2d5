"""The notebooks as files: stripped, parameterised as Colab forms papermill reads, defaults that
chain, and the kernel they run in. (Running them is in test_journeys.py and test_batch.py.)"""
import argparse
import json
import re
import sys
from dataclasses import MISSING

import nbformat
import pytest

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


@pytest.mark.parametrize("name", [notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE])
def test_each_notebooks_parameters_cell_is_written_from_its_parameter_dataclasses(name):
    """``make notebooks`` writes each parameters cell from the dataclasses (TrainConfig, PrepareConfig,
    EvaluateConfig, ReportConfig, ShowConfig); papermill reads back exactly their notebook defaults."""
    import ast

    import papermill as pm

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == notebooks.parameters_cell(name), "run `make notebooks` after changing a parameter"
    found = pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    found = {k: ast.literal_eval(v["default"]) for k, v in found.items()}
    assert found == notebooks.parameters(name)


@pytest.mark.parametrize("commands, configs", [
    ([["prepare", "D", "O"]], ("PrepareConfig",)),
    ([["train", "P", "R"]], ("TrainConfig",)),
    ([["evaluate", "R"], ["export", "R"], ["report", "R"]], ("EvaluateConfig", "ReportConfig", "ShowConfig")),
])
def test_the_flags_and_the_notebooks_take_the_same_parameters_with_the_same_defaults(commands, configs):
    """One name and one default per parameter: each command's flags are its dataclass's fields, and
    their defaults are the notebook's, except the documented notebook-only defaults (paths seen from
    notebooks/, the synthetic scenes notebook 01 makes on its first run, INIT_FROM's "none")."""
    from dataclasses import fields

    import seglib
    from seglib.cli import build_parser

    flags = {}
    for argv in commands:
        flags |= vars(build_parser().parse_args(argv))
    for config in (getattr(seglib, name) for name in configs):
        assert not {f.name for f in fields(config)} - set(flags), f"{config.__name__}: a field without a flag"
        from_flags = config.from_args(argparse.Namespace(**flags))
        for f in fields(config):
            if "notebook" not in f.metadata and f.default is not MISSING:
                assert getattr(from_flags, f.name) == f.default == notebooks.parameters(
                    next(n for n in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE)
                         if config in notebooks.parameter_configs(n)))[f.name.upper()], f.name
    assert notebooks.parameters(notebooks.PREPARE)["SKIP_BAD"] is False  # one default everywhere (docs/own-data.md)


def test_a_value_of_the_wrong_type_or_out_of_range_is_refused_where_it_enters_naming_the_parameter(tmp_path):
    from seglib import PrepareConfig, TrainConfig
    from seglib.cli import main
    from seglib.runs.sweep import BatchError, load_config

    with pytest.raises(ValueError, match=r"EPOCHS \(--epochs\): expected an integer, got inf"):
        TrainConfig("p", "r", epochs=float("inf"))
    with pytest.raises(ValueError, match=r"VAL_FRACTION \(--val-fraction\): must be less than 1, got 1.5"):
        PrepareConfig.from_parameters({**notebooks.parameters(notebooks.PREPARE), "VAL_FRACTION": 1.5})
    assert TrainConfig("p", "r", encoder_weights="None", init_from="").encoder_weights is None  # "none" once
    sweep = tmp_path / "s.yaml"
    sweep.write_text("runs:\n  - name: a\n    EPOCHS: .inf\n")
    with pytest.raises(BatchError, match=r"s.yaml: run 'a': EPOCHS \(--epochs\): expected an integer, got inf"):
        load_config(sweep)
    sweep.write_text("parameters:\n  OHEM_THRESHOLD: 1.0e+308\nruns:\n  - name: a\n")
    with pytest.raises(BatchError, match=r"parameters: OHEM_THRESHOLD \(--ohem-threshold\): must be at most 1, got"):
        load_config(sweep)
    assert main(["prepare", "d", "o", "--clusters", "300"]) == 2


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
