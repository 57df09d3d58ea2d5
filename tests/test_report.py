"""The HTML report: executed with papermill, rendered self-contained, opened offline in Chromium."""
import re

import pytest

from seglib.report import build_report


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
    assert "INFO:tensorflow" not in html and "Segmentation Models:" not in html  # no library log lines


@pytest.mark.slow
def test_report_opens_offline_in_chromium(report_html, open_in_chromium):
    open_in_chromium(report_html)  # asserts: screenshot not blank, no failed request
