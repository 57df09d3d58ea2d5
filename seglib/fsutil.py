"""Atomic file and folder writes: a crash never leaves a half-written file that looks complete.

Temp files and folders are created private (``tempfile`` uses 0600/0700); before they are renamed
into place they get the modes a plain ``open``/``mkdir`` would give them under the user's umask
(0644/0755 under umask 022), so reports and datasets can be shared and served as they are.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask (read without changing it where Linux tells it, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def make_temp_dir(final: str | os.PathLike) -> Path:
    """A fresh temp folder beside ``final`` (same file system, so the last rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(dir_mode())
    return tmp


def replace_dir(tmp: Path, final: str | os.PathLike, marker: str) -> None:
    """Move the finished folder ``tmp`` to ``final``.

    An existing ``final`` is replaced only when it holds ``marker`` (i.e. it is an earlier output
    of the same step); any other non-empty folder is refused so user files are never lost.
    The old folder is removed only after the new one is in place.
    """
    final = Path(final)
    check_output_dir(final, marker)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def check_output_dir(final: str | os.PathLike, marker: str) -> None:
    """Fail early (before any work) if ``replace_dir`` would refuse ``final``."""
    final = Path(final)
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / marker).exists())):
        raise FileExistsError(
            f"{final}: exists, is not empty and was not written by seglib (no {marker}); "
            "choose another output folder or empty it"
        )


@contextmanager
def staged_dir(final: str | os.PathLike, marker: str):
    """Build a folder in a temp place and move it to ``final`` only if the block succeeds.

    ``marker`` is the file that identifies an earlier output of the same step (see
    :func:`replace_dir`); the block must write it. On any error the temp folder is removed and
    ``final`` is left as it was.
    """
    check_output_dir(final, marker)
    tmp = make_temp_dir(final)
    try:
        yield tmp
        replace_dir(tmp, final, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
