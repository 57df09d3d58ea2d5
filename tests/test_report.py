"""The HTML report: executed with papermill, rendered self-contained, opened offline in Chromium."""
import os
import re
import shutil
import subprocess

import cv2
import pytest

from seglib.report import build_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed here if missing (needs root and the package mirror)."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, env=env, timeout=900)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed and could not be installed here (needs root + apt)")
    return path


@pytest.fixture(scope="session")
def report_html(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(trained / "run", out, CALIBRATION_IMAGES=16, EVAL_IMAGES=8, N_EXAMPLES=2)


@pytest.mark.slow
def test_report_is_self_contained_with_figures_and_tables(report_html):
    html = report_html.read_text()
    assert report_html.name == "report.html" and (report_html.parent / "03_evaluate_export.ipynb").exists()
    # curves, predictions, confusion matrix, per-class IoU, best/worst: embedded, not linked
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r"""(src|href)=["']https?://""", html)
    tables = re.findall(r"<table.*?</table>", html, flags=re.S)
    assert any("pixel_accuracy" in t and "mean_iou" in t for t in tables)  # overall metrics
    assert any("specificity" in t for t in tables)  # per-class table
    assert any("int8" in t and "agreement" in t for t in tables)  # export table
    assert "from seglib" not in html  # inputs hidden


@pytest.mark.slow
def test_report_opens_offline_in_chromium(report_html, chromium, tmp_path):
    shot = tmp_path / "shot.png"
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={shot}", "--window-size=1280,2400", report_html.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.exists(), done.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.std() > 10 and (image < 200).mean() > 0.01  # not blank
    assert "net::ERR_" not in done.stderr  # no failed requests
