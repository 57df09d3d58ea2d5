"""Execute the notebooks with papermill and small parameters; assert on what they produced."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from seglib import notebooks
from seglib.notebooks import NOTEBOOKS


def run_notebook(name: str, out_dir: Path, **parameters) -> nbformat.NotebookNode:
    output = notebooks.execute(Path(name).stem, out_dir / name, parameters)
    return nbformat.read(output, as_version=4)


def images_in(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_prepare_notebook_with_the_papermill_cli_and_a_parameters_file(tmp_path):
    """The README's form: papermill NB OUT -f params.yaml --cwd notebooks, from this environment."""
    data, prepared = tmp_path / "data", tmp_path / "prepared"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"DATA_DIR": str(data), "OUT_DIR": str(prepared), "SIZE": 64, "SYNTH_COUNT": 20,
                                      "N_EXAMPLES": 2, "SAMPLE_PIXELS": 20_000}))
    output = tmp_path / "01_prepare_data.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / output.name), str(output),
                           "-f", str(params), "--cwd", str(NOTEBOOKS), "--no-progress-bar"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(output, as_version=4)
    assert (data / "synthetic.json").exists()  # generated because DATA_DIR did not exist
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["counts"] == {"train": 13, "val": 3, "test": 4}
    assert images_in(nb) == 3  # examples, palette, class shares
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "timings (s)" in text


def test_notebooks_are_stripped_and_parameterised():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path


@pytest.mark.slow
def test_train_notebook(prepared_dir, tmp_path):
    """Tiny run: prepared at 128 px by the conftest fixture, 2 epochs, random encoder weights."""
    run_dir = tmp_path / "run"
    nb = run_notebook("02_train.ipynb", tmp_path, PREPARED_DIR=str(prepared_dir), RUN_DIR=str(run_dir), EPOCHS=2,
                      BATCH_SIZE=8, ENCODER_WEIGHTS=None, BACKBONE="mobilenetv2")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["epochs_run"] == 2 and info["stop_reason"] == "finished"
    assert (run_dir / "model.keras").exists()
    assert images_in(nb) == 1  # the training curves


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
