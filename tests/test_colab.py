"""The notebooks' Colab set-up cell with a stand-in ``google.colab``: a blank Drive, a Drive that
holds only data, one with the repository, one with an earlier run; a no-op elsewhere. The whole
Colab journey through the three notebooks is in ``test_journeys.py``."""
import os
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from seglib.runs.colab import CELL, CELL_TAG, cell_with
from seglib.runs.notebooks import NOTEBOOKS


def test_every_notebook_starts_with_the_colab_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert first.source == CELL, path
        assert first.metadata["tags"] == [CELL_TAG], path


def run_cell(drive_root: Path, code: Path, git: str = "") -> dict:
    """Execute the cell with its settings pointed at temp folders, as a user fills Colab's form."""
    source = cell_with(DRIVE_ROOT=drive_root, SEGLIB_CODE=code, SEGLIB_GIT=git,
                       LOCAL_CACHE=drive_root.parent / "local-cache")
    for name, value in (("DRIVE_ROOT", drive_root), ("SEGLIB_CODE", code), ("SEGLIB_GIT", git)):
        assert f"{name} = {str(value)!r}" in source
    namespace = {}
    exec(compile(source, "colab-setup", "exec"), namespace)
    return namespace


@pytest.fixture
def colab(monkeypatch, tmp_path):
    """A stand-in ``google.colab`` that records mounts, and a recorder for the cell's commands
    (a clone makes a checkout; pip succeeds unless ``colab.pip_fails``)."""
    mounts, commands = [], []
    fake = types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=lambda path, **kw: mounts.append(path))
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    state = types.SimpleNamespace(mounts=mounts, commands=commands, pip_fails=False)

    def fake_run(cmd, check=False, **kw):
        commands.append(cmd)
        if cmd[0] == "git":
            checkout(Path(cmd[-1]))
        if "pip" in cmd and state.pip_fails:
            return subprocess.CompletedProcess(cmd, 1, "Collecting tensorflow\n", "ERROR: No matching distribution\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    return state


def checkout(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    return root


def test_blank_drive_clones_the_code_to_its_own_folder_and_works_on_drive(colab, tmp_path):
    drive, code = tmp_path / "MyDrive" / "seglib", tmp_path / "content" / "seglib"
    run_cell(drive, code, git="https://example.org/seglib.git")
    assert colab.mounts == ["/content/drive"]
    assert colab.commands == [["git", "clone", "--depth", "1", "https://example.org/seglib.git", str(code)]]
    assert Path.cwd() == drive / "notebooks"  # ../data, ../artifacts, ../reports are on Drive
    assert not (drive / "pyproject.toml").exists()  # the code is not put into the outputs folder
    assert not {k for k in os.environ if k.startswith("SEGLIB")}  # settings travel as arguments, not environment


def test_drive_with_data_only_is_left_as_it_is(colab, tmp_path):
    drive, code = tmp_path / "MyDrive" / "seglib", tmp_path / "content" / "seglib"
    pairs = drive / "data" / "cityscapes_data" / "train"
    pairs.mkdir(parents=True)
    (pairs / "1.jpg").write_bytes(b"pair")
    run_cell(drive, code, git="https://example.org/seglib.git")
    assert colab.commands[0][-1] == str(code)  # cloned beside, never into the non-empty Drive folder
    assert (pairs / "1.jpg").read_bytes() == b"pair" and Path.cwd() == drive / "notebooks"


def test_drive_holding_the_repository_uses_it_without_cloning(colab, tmp_path):
    drive = checkout(tmp_path / "MyDrive" / "seglib")
    run_cell(drive, tmp_path / "content" / "seglib", git="https://example.org/seglib.git")
    assert colab.commands == [] and Path.cwd() == drive / "notebooks"


def test_drive_with_an_earlier_run_keeps_it(colab, tmp_path):
    drive, code = tmp_path / "MyDrive" / "seglib", checkout(tmp_path / "content" / "seglib")
    backup = drive / "artifacts" / "default" / "backup" / "epoch-0003"
    backup.mkdir(parents=True)
    (backup / "state.json").write_text('{"epoch": 3}')
    run_cell(drive, code)
    assert colab.commands == []  # the code is there (a checkout in SEGLIB_CODE): nothing to clone
    assert (backup / "state.json").read_text() == '{"epoch": 3}' and Path.cwd() == drive / "notebooks"


def test_it_never_clones_into_a_non_empty_folder(colab, tmp_path):
    code = tmp_path / "content" / "seglib"
    code.mkdir(parents=True)
    (code / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="is not empty and holds no seglib checkout"):
        run_cell(tmp_path / "MyDrive" / "seglib", code, git="https://example.org/seglib.git")
    assert colab.commands == [] and (code / "notes.txt").read_text() == "mine"


def test_without_code_or_url_it_says_what_to_do(colab, tmp_path):
    with pytest.raises(RuntimeError, match="set SEGLIB_GIT to the repository's git URL, or copy the repository"):
        run_cell(tmp_path / "MyDrive" / "seglib", tmp_path / "content" / "seglib")
    assert colab.mounts == ["/content/drive"] and colab.commands == []


def test_it_installs_seglib_when_missing_and_shows_pips_output_if_that_fails(colab, tmp_path, monkeypatch, capsys):
    import importlib.util

    drive = checkout(tmp_path / "MyDrive" / "seglib")
    # not installed, only a folder named seglib in the working directory (a namespace package)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(origin=None))
    monkeypatch.setattr(sys, "path", list(sys.path))
    run_cell(drive, tmp_path / "content" / "seglib")
    assert colab.commands == [[sys.executable, "-m", "pip", "install", "-e", str(drive)]]
    assert sys.path[0] == str(drive)
    colab.pip_fails = True
    with pytest.raises(RuntimeError, match="pip install -e .* failed"):
        run_cell(drive, tmp_path / "content" / "seglib")
    printed = capsys.readouterr().out
    assert "Collecting tensorflow" in printed and "No matching distribution" in printed


def test_elsewhere_the_cell_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = run_cell(tmp_path / "nowhere", tmp_path / "code")
    assert Path.cwd() == tmp_path and not (tmp_path / "nowhere").exists()
    assert "drive" not in namespace


def test_training_on_colab_reads_a_local_copy_of_prepared_data_made_once(prepared_dir, tmp_path, monkeypatch):
    from seglib.runs.colab import colab_local_copy, local_copy

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab_local_copy(tmp_path / "cache") is None  # not on Colab: read in place
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    copy = colab_local_copy(tmp_path / "cache")(prepared_dir)
    assert copy.parent == tmp_path / "cache" and (copy / "train" / "images.npy").read_bytes() == \
        (prepared_dir / "train" / "images.npy").read_bytes()
    stamp = (copy / "summary.json").stat().st_mtime_ns
    assert local_copy(prepared_dir, tmp_path / "cache") == copy
    assert (copy / "summary.json").stat().st_mtime_ns == stamp  # once
    assert local_copy(copy, tmp_path / "cache") == copy  # already local


def test_colab_badges_for_a_github_remote_fill_the_readme_block(tmp_path):
    from seglib.cli import main
    from seglib.runs.colab import BADGES_END, BADGES_START, badges_markdown, github_path

    assert github_path("git@github.com:someone/seglib.git") == "someone/seglib"
    assert github_path("https://github.com/someone/seglib") == "someone/seglib"
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        github_path("https://example.org/seglib.git")
    lines = badges_markdown("https://github.com/someone/seglib.git").splitlines()
    assert [line.split("`")[1] for line in lines] == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert all(
        "(https://colab.research.google.com/github/someone/seglib/blob/main/notebooks/" in line for line in lines
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BADGES_START}\nplaceholder\n{BADGES_END}\nrest\n")
    for _ in range(2):  # idempotent
        assert main(["colab-badges", "--repo", "https://github.com/someone/seglib", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "placeholder" not in text and text.count("colab-badge.svg") == 3 and text.endswith("rest\n")
    assert main(["colab-badges", "--readme", str(readme)]) == 2  # no git remote here: a clear error


def test_the_readme_has_the_badge_block():
    from seglib.runs.colab import BADGES_END, BADGES_START

    text = (NOTEBOOKS.parent / "README.md").read_text()
    assert text.index(BADGES_START) < text.index(BADGES_END)
