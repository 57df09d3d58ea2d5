"""seglib's stages import only down the pipeline, and docs/development.md draws the graph as it is."""
import ast
import re
from pathlib import Path

import pytest

SEGLIB = Path(__file__).resolve().parents[1] / "seglib"
DOCS = SEGLIB.parent / "docs" / "development.md"
# bottom to top; a module may import from its own stage and the ones below it
STAGES = ["ground", "data", "training", "inference", "reporting", "runs", "cli"]
GROUND = {"seglib", "seglib.layout", "seglib.fsutil", "seglib.quiet", "seglib.parameters"}


def stage_of(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module in ("seglib.cli", "seglib.__main__"):
        return "cli"
    return module.split(".")[1]


def imports_of(source: str) -> set[str]:
    """The seglib modules a source imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seglib":
            found |= {node.module} if node.module != "seglib" else {f"seglib.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "seglib"}
    return {m if m in GROUND or stage_of(m) in STAGES else "seglib" for m in found}


def module_name(path: Path) -> str:
    parts = path.relative_to(SEGLIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward(name: str, source: str) -> list[str]:
    here = STAGES.index(stage_of(name))
    return sorted(m for m in imports_of(source) if STAGES.index(stage_of(m)) > here)


def stage_graph() -> dict[str, set[str]]:
    graph = {stage: set() for stage in STAGES}
    for path in SEGLIB.rglob("*.py"):
        name = module_name(path)
        graph[stage_of(name)] |= {stage_of(m) for m in imports_of(path.read_text())} - {stage_of(name)}
    return graph


def test_no_module_imports_up_the_pipeline():
    found = {module_name(p): upward(module_name(p), p.read_text()) for p in SEGLIB.rglob("*.py")}
    assert {name: ups for name, ups in found.items() if ups} == {}


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("seglib.training.pipeline", "def f():\n    from seglib.runs.colab import local_copy\n", ["seglib.runs.colab"]),
    ("seglib.data.splits", "import seglib.training.model\n", ["seglib.training.model"]),
    ("seglib.layout", "from seglib import fsutil\n", []),
    ("seglib.runs.batch", "from seglib.training.checks import run_state\n", []),
])
def test_the_check_finds_an_upward_import(module, source, expected):
    assert upward(module, source) == expected


def test_the_development_docs_draw_the_import_graph_as_it_is():
    drawn = re.search(r"<!-- stages -->\n```\n(.*?)```", DOCS.read_text(), re.S).group(1)
    graph = stage_graph()
    actual = "".join(f"{stage:<10} -> {', '.join(s for s in reversed(STAGES) if s in graph[stage]) or '(nothing)'}\n"
                     for stage in reversed(STAGES))
    assert drawn == actual


def test_each_stage_lists_its_modules_in_all():
    for package in [p for p in SEGLIB.iterdir() if (p / "__init__.py").exists()]:
        namespace = {}
        exec(compile((package / "__init__.py").read_text(), str(package), "exec"), namespace)
        modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
        assert sorted(namespace["__all__"]) == sorted(modules), package.name


def test_no_function_runs_past_60_lines_unless_a_comment_says_why_it_is_one_piece():
    """Functions a reader follows from the top: split into named steps past ~60 lines."""
    long = []
    for path in SEGLIB.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60
                    and "one piece" not in " ".join(lines[node.lineno - 3:node.lineno + 3])):
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_no_environment_variable_carries_state_between_seglibs_own_functions():
    """State is passed as arguments. The one variable of seglib's own is SEGLIB_DEBUG (seglib/quiet.py):
    the notebook kernels and run processes a command starts must inherit --debug."""
    found = {}
    for path in SEGLIB.rglob("*.py"):
        text = path.read_text()  # os.environ[...] / .get(...) with SEGLIB_..., or an X_ENV = "SEGLIB_..." constant
        names = set(re.findall(r"environ.*?[\"'](SEGLIB_[A-Z_]+)[\"']|_ENV = [\"'](SEGLIB_[A-Z_]+)[\"']", text))
        if names:
            found[module_name(path)] = {a or b for a, b in names}
    assert found == {"seglib.quiet": {"SEGLIB_DEBUG"}}


def test_the_public_api_is_seglibs_namespace_loaded_on_first_use():
    """``from seglib import train`` and the like, every name a docstring with an example or Args;
    ``import seglib`` imports no TensorFlow."""
    import subprocess
    import sys

    code = ("import sys, seglib; assert 'tensorflow' not in sys.modules; "
            "from seglib import PrepareConfig, TrainConfig, train; assert 'tensorflow' not in sys.modules; "
            "print(sorted(seglib.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import seglib

    for name in seglib.__all__[1:]:
        assert getattr(seglib, name).__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        seglib.nope  # noqa: B018
