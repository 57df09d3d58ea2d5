"""Atomic writes leave files with the modes the user's umask gives, not tempfile's private 0600;
only folders seglib marked are replaced or cleaned, and only of what seglib wrote in them."""
import os
import stat

import pytest

from seglib.fsutil import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    remove_owned,
    staged_dir,
    strangers,
    write_marker,
)
from seglib.layout import MARKER, PreparedDir, RunDir


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "report.html", "<html></html>")
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    with staged_dir(tmp_path / "prepared", PreparedDir) as tmp:
        atomic_write_json(tmp / "summary.json", {})
    assert mode(tmp_path / "report.html") == file_mode
    assert mode(tmp_path / "metrics.json") == file_mode
    assert mode(tmp_path / "prepared") == dir_mode
    assert mode(tmp_path / "prepared" / "summary.json") == file_mode
    assert mode(tmp_path / "prepared" / MARKER) == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "prepared", "report.html"]  # no temp left


def test_only_seglibs_own_folders_of_the_same_kind_are_replaced(tmp_path):
    check_output_dir(tmp_path / "new", PreparedDir)  # missing: fine
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", PreparedDir)
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, RunDir.KIND)
    with pytest.raises(FileExistsError, match="is not a prepared folder written by seglib"):
        check_output_dir(run, PreparedDir)  # seglib's, but another kind
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        check_output_dir(tmp_path / "file", PreparedDir)


def test_strangers_and_remove_owned_spare_the_users_files(tmp_path):
    write_marker(tmp_path, RunDir.KIND)
    for name in ("config.json", "model.keras", "model_int8.tflite", "backup/epoch-0003/state.json", "notes.md",
                 "mine/data.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert strangers(tmp_path, RunDir.OWNED) == ["mine", "notes.md"]
    remove_owned(tmp_path, RunDir)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/data.csv",
                                                                                      "notes.md"]
