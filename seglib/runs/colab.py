"""Colab: the set-up cell every notebook starts with (a no-op anywhere else), and the fast local
copy of prepared data that training reads there.

On Colab (``"google.colab" in sys.modules``) the cell mounts Google Drive and keeps two places
apart:

- ``DRIVE_ROOT`` (on Drive) gets the outputs: the notebooks run in ``DRIVE_ROOT/notebooks``, so
  their ``../data``, ``../artifacts`` and ``../reports`` are on Drive and outlive the session; a
  training started again with the same ``RUN_DIR`` continues after its last finished epoch. Data
  or earlier runs already there are used as they are, never replaced by the set-up.
- The code: ``DRIVE_ROOT`` itself when the repository was copied there, else ``SEGLIB_CODE``: a
  checkout found there, or a clone of ``SEGLIB_GIT`` made there (local disk by default, so it is
  cloned again in a new session). A clone into a non-empty folder is never attempted.

It installs seglib from the code when it is not importable (pip's output is shown if that fails).
Its ``LOCAL_CACHE`` is where notebook 02 has training read a copy of the prepared data
(:func:`colab_local_copy`): memory-mapped reads through the Drive mount are slow.

The cell cannot import seglib (it may install it), so its text lives here once and
``tests/test_colab.py`` checks that every notebook starts with exactly this cell.
"""
from __future__ import annotations

import os
from pathlib import Path

CELL_TAG = "colab-setup"

CELL = '''\
# @title Colab set-up (does nothing elsewhere)
# Outputs (data/, artifacts/, reports/) go to DRIVE_ROOT on Drive; data or earlier runs there are kept.
# The code is DRIVE_ROOT itself if you copied the repository there, else SEGLIB_CODE: a checkout you put
# there, or a clone of SEGLIB_GIT (its git URL) made there.
DRIVE_ROOT = "/content/drive/MyDrive/seglib"  # @param {type:"string"}
SEGLIB_CODE = "/content/seglib-code"  # @param {type:"string"}
SEGLIB_GIT = ""  # @param {type:"string"}
LOCAL_CACHE = "/content/seglib-cache"  # local disk: training reads a copy of the prepared data from here

import os
import sys

if "google.colab" in sys.modules:
    import subprocess
    from importlib.util import find_spec

    from google.colab import drive

    def _checkout(folder):
        return os.path.exists(os.path.join(folder, "pyproject.toml"))

    drive.mount("/content/drive")
    code = DRIVE_ROOT if _checkout(DRIVE_ROOT) else SEGLIB_CODE
    if not _checkout(code):
        if not SEGLIB_GIT:
            raise RuntimeError(f"no seglib code at {DRIVE_ROOT} or {SEGLIB_CODE}: set SEGLIB_GIT to the repository's "
                               "git URL, or copy the repository to one of them, and run this cell again")
        if os.path.isdir(code) and os.listdir(code):
            raise RuntimeError(f"{code} is not empty and holds no seglib checkout: set SEGLIB_CODE to a new folder")
        done = subprocess.run(["git", "clone", "--depth", "1", SEGLIB_GIT, code], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"git clone {SEGLIB_GIT} failed:\\n{done.stderr}")
    spec = find_spec("seglib")
    if spec is None or spec.origin is None:  # not installed (a folder named seglib is no package)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-e", code], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\\n")
            raise RuntimeError(f"pip install -e {code} failed (its output is above)")
        sys.path.insert(0, code)  # importable in this kernel at once (no restart needed)
    os.makedirs(os.path.join(DRIVE_ROOT, "notebooks"), exist_ok=True)
    os.chdir(os.path.join(DRIVE_ROOT, "notebooks"))
    print(f"Colab: code in {code}, working in {os.getcwd()} (outputs on Drive)")
'''


CELL_SETTINGS = ("DRIVE_ROOT", "SEGLIB_CODE", "SEGLIB_GIT", "LOCAL_CACHE")


def cell_with(**settings: str) -> str:
    """The set-up cell with some of its settings (``CELL_SETTINGS``) given other values, e.g. the
    repository's git URL as ``SEGLIB_GIT`` once it is published."""
    import re

    source = CELL
    for name, value in settings.items():
        if name not in CELL_SETTINGS:
            raise ValueError(f"the Colab cell has no setting {name!r} (it has {', '.join(CELL_SETTINGS)})")
        source = re.sub(rf'^{name} = ".*?"', lambda _m, n=name, v=str(value): f"{n} = {v!r}", source, count=1,
                        flags=re.M)
    return source


def colab_local_copy(cache: str | os.PathLike):
    """On Colab (``google.colab`` imported in this kernel): ``prepared_dir -> its copy under cache``,
    for ``train(config, local_copy=...)``; elsewhere None (training reads the data in place)."""
    import sys
    from functools import partial

    return partial(local_copy, cache=cache) if "google.colab" in sys.modules else None


def local_copy(prepared_dir: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """The prepared dataset copied under ``cache`` (local disk), once per dataset and version; a
    dataset already under ``cache`` is read where it is."""
    import shutil
    from hashlib import sha1

    from seglib.fsutil import read_json, staged_dir
    from seglib.layout import PreparedDir

    prepared = PreparedDir(prepared_dir)
    if not prepared.summary.exists() or Path(cache).resolve() in prepared.root.resolve().parents:
        return prepared.root
    created = read_json(prepared.summary).get("created", "")
    key = sha1(f"{prepared.root.resolve()}|{created}".encode()).hexdigest()[:10]
    copy = Path(cache) / f"{prepared.root.name}-{key}"
    if not PreparedDir(copy).summary.exists():
        with staged_dir(copy, PreparedDir) as tmp:
            shutil.copytree(prepared.root, tmp, dirs_exist_ok=True)
    return copy


BADGES_START, BADGES_END = "<!-- colab-badges -->", "<!-- /colab-badges -->"
_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def github_path(repo_url: str) -> str:
    """``owner/name`` of a GitHub remote (https or ssh form)."""
    import re

    found = re.match(r"^(?:https?://(?:www\.)?github\.com/|git@github\.com:|ssh://git@github\.com/)"
                     r"([\w.-]+)/([\w.-]+?)(?:\.git)?/?$", repo_url.strip())
    if not found:
        raise ValueError(f"{repo_url}: not a GitHub repository URL (Colab opens notebooks from GitHub)")
    return f"{found.group(1)}/{found.group(2)}"


def badges_markdown(repo_url: str, branch: str = "main", notebooks=None) -> str:
    """An "Open in Colab" badge line per notebook, for the README."""
    from seglib.runs.notebooks import NOTEBOOKS

    path = github_path(repo_url)
    names = notebooks or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    return "\n".join(f"- [![Open In Colab]({_BADGE})](https://colab.research.google.com/github/{path}/blob/"
                     f"{branch}/notebooks/{name}) `{name}`" for name in names)


def write_badges(readme, repo_url: str, branch: str = "main") -> str:
    """Replace the README's badge block (between the two markers) with badges for ``repo_url``."""
    from seglib.fsutil import atomic_write_text

    text = Path(readme).read_text()
    if BADGES_START not in text or BADGES_END not in text:
        raise ValueError(f"{readme}: no {BADGES_START} ... {BADGES_END} block to fill")
    head, rest = text.split(BADGES_START, 1)
    _, tail = rest.split(BADGES_END, 1)
    block = badges_markdown(repo_url, branch)
    atomic_write_text(readme, f"{head}{BADGES_START}\n{block}\n{BADGES_END}{tail}")
    return block
