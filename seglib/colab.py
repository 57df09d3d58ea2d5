"""The first cell of every notebook: Colab set-up, a no-op anywhere else.

On Colab (``"google.colab" in sys.modules``) it mounts Google Drive, installs seglib from the
repository checkout on Drive (cloning it first if ``SEGLIB_GIT`` names one and it is not there
yet), and makes ``DRIVE_ROOT/notebooks`` the working directory. The notebooks' relative paths
(``../data``, ``../artifacts``, ``../reports``) then point into ``DRIVE_ROOT`` on Drive, so
prepared data, models and reports outlive the Colab session, and a training started again with
the same ``RUN_DIR`` continues after its last finished epoch.

The cell cannot import seglib (it may install it), so its text lives here once and
``tests/test_colab.py`` checks that every notebook starts with exactly this cell.
"""

CELL_TAG = "colab-setup"

CELL = '''\
# Colab set-up (does nothing elsewhere): mount Google Drive, install seglib from its checkout on Drive,
# and work in DRIVE_ROOT so data/, artifacts/ and reports/ survive a dropped session.
DRIVE_ROOT = "/content/drive/MyDrive/seglib"  # Colab only: the seglib repository folder on your Drive
SEGLIB_GIT = ""  # Colab only: git URL to clone into DRIVE_ROOT if it is not there yet ("" = you copied it)

import os
import sys

if "google.colab" in sys.modules:
    import subprocess
    from importlib.util import find_spec

    from google.colab import drive

    drive.mount("/content/drive")
    if not os.path.exists(os.path.join(DRIVE_ROOT, "pyproject.toml")):
        if not SEGLIB_GIT:
            raise RuntimeError(f"{DRIVE_ROOT}: no seglib checkout there. Copy the repository to that Drive "
                               "folder, or set SEGLIB_GIT to its git URL and run this cell again.")
        subprocess.run(["git", "clone", "--depth", "1", SEGLIB_GIT, DRIVE_ROOT], check=True)
    if find_spec("seglib") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", DRIVE_ROOT], check=True)
        sys.path.insert(0, DRIVE_ROOT)  # importable in this kernel at once (no restart needed)
    os.chdir(os.path.join(DRIVE_ROOT, "notebooks"))
    print("Colab: working in", os.getcwd())
'''


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
    from seglib.notebooks import NOTEBOOKS

    path = github_path(repo_url)
    names = notebooks or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    return "\n".join(f"- [![Open In Colab]({_BADGE})](https://colab.research.google.com/github/{path}/blob/"
                     f"{branch}/notebooks/{name}) `{name}`" for name in names)


def write_badges(readme, repo_url: str, branch: str = "main") -> str:
    """Replace the README's badge block (between the two markers) with badges for ``repo_url``."""
    from pathlib import Path

    from seglib.fsutil import atomic_write_text

    text = Path(readme).read_text()
    if BADGES_START not in text or BADGES_END not in text:
        raise ValueError(f"{readme}: no {BADGES_START} ... {BADGES_END} block to fill")
    head, rest = text.split(BADGES_START, 1)
    _, tail = rest.split(BADGES_END, 1)
    block = badges_markdown(repo_url, branch)
    atomic_write_text(readme, f"{head}{BADGES_START}\n{block}\n{BADGES_END}{tail}")
    return block
