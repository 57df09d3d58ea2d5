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


class TooBig(ValueError):
    """A file holds more bytes than its reader allows."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of ``path``, reading at most ``limit + 1`` of them: what is read counts, not what
    ``stat`` says (a pipe, a growing file); :class:`TooBig` over ``limit``."""
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise TooBig(path, f"more than {limit} bytes")
    return data


def read_json(path: str | os.PathLike):
    """A JSON file (a run's config.json, a dataset's summary.json, ...); a one-line error naming the
    file when it cannot be parsed (cut short, or not JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is damaged or cut short") from None


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


@contextmanager
def staged_file(path: str | os.PathLike, suffix: str = ""):
    """A temp path beside ``path`` for a writer that takes a file name (a library's exporter, a
    video writer): renamed to ``path`` when the block ends, removed if it raises. ``suffix`` keeps
    the extension a writer may need."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_concatenated(path: str | os.PathLike, parts) -> None:
    """Write ``np.concatenate(parts)`` as a ``.npy`` file without building it in memory: numpy's
    header, then each part with plain buffered writes (so a full disk raises the system's own "No
    space left on device"). ``parts`` share dtype and trailing shape; at least one is given."""
    import numpy as np

    first = np.asarray(parts[0])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (sum(len(part) for part in parts), *first.shape[1:])}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype=first.dtype).data)


def write_marker(folder: str | os.PathLike, kind: str, **extra) -> None:
    """Mark ``folder`` as written by seglib (see :mod:`seglib.layout`): kind, format, version, and
    the process writing it (so a temp folder left by a killed process can be told apart); ``extra``
    keys are recorded too."""
    import socket
    from datetime import datetime, timezone

    from seglib import __version__
    from seglib.layout import FORMAT, MARKER

    atomic_write_json(Path(folder) / MARKER, {
        "kind": kind, "format": FORMAT, "seglib": __version__, "pid": os.getpid(), "host": socket.gethostname(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra})


def read_marker(folder: str | os.PathLike) -> dict | None:
    from seglib.layout import MARKER

    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def strangers(folder: str | os.PathLike, owned) -> list[str]:
    """Entries under ``folder`` (relative, ``/``-separated) that match none of the ``owned`` glob
    patterns: files seglib did not write there."""
    from fnmatch import fnmatchcase

    folder, found = Path(folder), []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames) + sorted(filenames):
            relative = (Path(dirpath) / name).relative_to(folder).as_posix()
            if not any(fnmatchcase(relative, pattern) for pattern in owned):
                found.append(relative)
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).relative_to(folder).as_posix() not in found]
    return found


def check_output_dir(final: str | os.PathLike, layout) -> None:
    """Fail early (before any work) unless ``final`` is new, empty, or an earlier folder of the
    same ``layout`` (a :class:`seglib.layout.Folder` type) holding nothing seglib did not write."""
    final = Path(final)
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return
    if not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a folder; choose another output folder")
    marker = read_marker(final)
    if marker is None or marker.get("kind") != layout.KIND:
        raise FileExistsError(f"{final}: exists, is not empty and is not a {layout.KIND} folder written by seglib; "
                              "choose another output folder or empty it")
    found = strangers(final, layout.OWNED)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FileExistsError(f"{final}: holds files seglib did not write ({shown}); move them away or choose "
                              "another output folder")


def remove_owned(folder: str | os.PathLike, layout, keep=()) -> None:
    """Delete what seglib wrote in ``folder`` (``layout.OWNED``), except ``keep`` (names) and the lock
    file (its holder keeps it open); files seglib did not write stay."""
    from fnmatch import fnmatchcase

    from seglib.layout import LOCK

    folder = Path(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        relative = path.relative_to(folder).as_posix()
        if relative in (*keep, LOCK) or not any(fnmatchcase(relative, pattern) for pattern in layout.OWNED):
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink()


def remove_stale_temps(final: str | os.PathLike, layout) -> None:
    """Remove temp and old folders of ``final`` that an earlier process (now gone) left behind;
    only those carrying seglib's marker of this kind."""
    import socket

    final = Path(final)
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(f".{final.name}.*"):
        marker = read_marker(path)
        if (
            path.is_dir()
            and marker
            and marker.get("kind") == layout.KIND
            and marker.get("host") == socket.gethostname()
            and not pid_alive(marker.get("pid"))
        ):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_temp_dir(final: str | os.PathLike, layout) -> Path:
    """A fresh temp folder beside ``final`` (same file system, so the last rename is atomic),
    marked as ``layout``'s kind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(dir_mode())
    write_marker(tmp, layout.KIND)
    return tmp


def replace_dir(tmp: Path, final: str | os.PathLike, layout) -> None:
    """Move the finished folder ``tmp`` to ``final``. An existing ``final`` is replaced only when
    :func:`check_output_dir` allows it, and removed only after the new one is in place."""
    final = Path(final)
    check_output_dir(final, layout)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_dir(final: str | os.PathLike, layout):
    """Build a folder of ``layout`` (a :class:`seglib.layout.Folder` type) in a temp place, marked,
    and move it to ``final`` only if the block succeeds. On any error the temp folder is removed
    and ``final`` is left as it was; temp folders of killed earlier attempts are removed first."""
    check_output_dir(final, layout)
    remove_stale_temps(final, layout)
    tmp = make_temp_dir(final, layout)
    try:
        yield tmp
        replace_dir(tmp, final, layout)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderBusy(OSError):
    """Another process is writing the folder (it holds the folder's lock)."""


_HELD: set[Path] = set()  # the folders whose lock this process holds (a lock is taken once per process)


@contextmanager
def writer_lock(folder: str | os.PathLike, layout):
    """Be the one writer of ``folder`` (a seglib folder of kind ``layout``) while the block runs: an
    exclusive OS lock on its lock file (``layout``'s ``LOCK``), released when the block ends or the
    process dies, however it dies. Taken, it makes the temporaries a dead writer left (``layout.STALE``)
    safe to remove, and they are. A second writer gets :class:`FolderBusy` naming the holder."""
    import fcntl
    import shutil
    import socket
    import sys
    from datetime import datetime, timezone

    from seglib.layout import LOCK

    folder = Path(folder).resolve()
    if folder in _HELD:  # this process holds it already (report -> evaluate)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise FolderBusy(f"{folder}: another seglib command is writing here ({holder}); wait for it to end or "
                         "stop it, or use another folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
                  f"{' '.join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))}").encode())
    _HELD.add(folder)
    try:
        for stale in sorted(p for pattern in layout.STALE for p in folder.glob(pattern)):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)
        yield
    finally:
        _HELD.discard(folder)
        os.close(fd)
