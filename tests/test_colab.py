"""The notebooks' first cell: Colab set-up with a stand-in ``google.colab``, a no-op elsewhere."""
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from seglib.colab import CELL, CELL_TAG
from seglib.notebooks import NOTEBOOKS


def test_every_notebook_starts_with_the_colab_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.cell_type == "code" and first.source == CELL, path
        assert first.metadata["tags"] == [CELL_TAG], path


def run_cell(drive_root: Path, git: str = "") -> dict:
    """Execute the cell as a notebook would, with its two Colab settings given."""
    source = re.sub(r'^DRIVE_ROOT = ".*?"', f"DRIVE_ROOT = {str(drive_root)!r}", CELL, flags=re.M)
    source = re.sub(r'^SEGLIB_GIT = ".*?"', f"SEGLIB_GIT = {git!r}", source, flags=re.M)
    assert source != CELL
    namespace = {}
    exec(compile(source, "colab-setup", "exec"), namespace)
    return namespace


@pytest.fixture
def colab(monkeypatch, tmp_path):
    """A stand-in ``google.colab`` that records mounts, and a recorder for the cell's commands."""
    mounts, commands = [], []
    fake = types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=lambda path, **kw: mounts.append(path))
    monkeypatch.setitem(sys.modules, "google.colab", fake)

    def fake_run(cmd, check=False, **kw):
        commands.append(cmd)
        if cmd[0] == "git":  # a clone puts the repository there
            (Path(cmd[-1]) / "notebooks").mkdir(parents=True)
            (Path(cmd[-1]) / "pyproject.toml").write_text("")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(mounts=mounts, commands=commands)


def checkout(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    return root


def test_on_colab_it_mounts_drive_and_works_in_the_drive_folder(colab, tmp_path):
    root = checkout(tmp_path / "MyDrive" / "seglib")
    run_cell(root)
    assert colab.mounts == ["/content/drive"]
    assert Path.cwd() == root / "notebooks"  # ../data, ../artifacts, ../reports are on Drive
    assert colab.commands == []  # seglib is importable here: nothing to install


def test_on_colab_it_installs_seglib_from_the_checkout_when_missing(colab, tmp_path, monkeypatch):
    import importlib.util

    root = checkout(tmp_path / "MyDrive" / "seglib")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    run_cell(root)
    assert colab.commands == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(root)]]
    assert sys.path[0] == str(root)


def test_on_colab_it_clones_the_repository_when_drive_has_none(colab, tmp_path):
    root = tmp_path / "MyDrive" / "seglib"
    run_cell(root, git="https://example.org/seglib.git")
    assert colab.commands[0] == ["git", "clone", "--depth", "1", "https://example.org/seglib.git", str(root)]
    assert Path.cwd() == root / "notebooks"


def test_on_colab_without_a_checkout_or_url_it_says_what_to_do(colab, tmp_path):
    with pytest.raises(RuntimeError, match="no seglib checkout there"):
        run_cell(tmp_path / "MyDrive" / "seglib")
    assert colab.mounts == ["/content/drive"] and colab.commands == []


def test_elsewhere_the_cell_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = run_cell(tmp_path / "nowhere")
    assert Path.cwd() == tmp_path and not (tmp_path / "nowhere").exists()
    assert "drive" not in namespace


def test_colab_badges_for_a_github_remote_fill_the_readme_block(tmp_path):
    from seglib.cli import main
    from seglib.colab import BADGES_END, BADGES_START, badges_markdown, github_path

    assert github_path("git@github.com:someone/seglib.git") == "someone/seglib"
    assert github_path("https://github.com/someone/seglib") == "someone/seglib"
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        github_path("https://example.org/seglib.git")
    lines = badges_markdown("https://github.com/someone/seglib.git").splitlines()
    assert [line.split("`")[1] for line in lines] == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert all("(https://colab.research.google.com/github/someone/seglib/blob/main/notebooks/" in line for line in lines)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BADGES_START}\nplaceholder\n{BADGES_END}\nrest\n")
    for _ in range(2):  # idempotent
        assert main(["colab-badges", "--repo", "https://github.com/someone/seglib", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "placeholder" not in text and text.count("colab-badge.svg") == 3 and text.endswith("rest\n")
    assert main(["colab-badges", "--readme", str(readme)]) == 2  # no git remote here: a clear error


def test_the_readme_has_the_badge_block():
    from seglib.colab import BADGES_END, BADGES_START

    text = (NOTEBOOKS.parent / "README.md").read_text()
    assert text.index(BADGES_START) < text.index(BADGES_END)
