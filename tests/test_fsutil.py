"""Atomic writes leave files with the modes the user's umask gives, not tempfile's private 0600."""
import os
import stat

import pytest

from seglib.fsutil import atomic_write_json, atomic_write_text, staged_dir


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
    with staged_dir(tmp_path / "prepared", "summary.json") as tmp:
        atomic_write_json(tmp / "summary.json", {})
    assert mode(tmp_path / "report.html") == file_mode
    assert mode(tmp_path / "metrics.json") == file_mode
    assert mode(tmp_path / "prepared") == dir_mode
    assert mode(tmp_path / "prepared" / "summary.json") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "prepared", "report.html"]  # no temp left
