"""HTML output: a run's self-contained report, and executed notebooks rendered for batches.

:func:`write_run_report` builds ``report.html`` from a run's files (config, history, metrics,
export) and its prepared dataset, with the same tables (:mod:`seglib.reporting.tables`) and figures
(:mod:`seglib.reporting.figures`) the notebooks show. Figures are embedded and nothing is fetched from the
network, so the page opens offline and can be mailed or served as it is.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from seglib.fsutil import atomic_write_text, read_json, read_marker, write_marker
from seglib.layout import ARTIFACTS, REPORTS, PreparedDir, RunDir, RunReportDir
from seglib.parameters import checked_values
from seglib.reporting.config import ReportConfig, ShowConfig


def _read_json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def figure_png(fig) -> str:
    """A matplotlib figure as an embedded ``<img>`` (PNG data URI); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame, escape: bool = True) -> str:
    return frame.to_html(escape=escape, na_rep="–", border=0, classes="table",
                         float_format=lambda v: f"{v:.4g}")


def _palette_table(palette, summary) -> str:
    from seglib.reporting import tables

    frame = tables.palette(palette, summary)
    frame.index = [html.escape(str(i)) for i in frame.index]
    frame.insert(0, "colour", [f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
                               for r, g, b in palette.colours])
    return _table(frame, escape=False)


def default_report_dir(run_dir: str | os.PathLike) -> Path:
    """``reports/<run name>`` beside the ``artifacts/`` folder that holds the run (the project's
    ``reports/``, from the command line and from the notebooks alike); for a run kept elsewhere,
    ``reports/<run name>`` in the current folder."""
    run = Path(run_dir).resolve()
    return (run.parent.parent if run.parent.name == ARTIFACTS else Path()) / REPORTS / run.name


def write_run_report(run_dir: str | os.PathLike, report_dir: str | os.PathLike | None = ReportConfig.report_dir,
                     prepared_dir: str | os.PathLike | None = ReportConfig.prepared_dir,
                     examples: int = ShowConfig.examples) -> Path:
    """Write ``report_dir/report.html`` (default :func:`default_report_dir`) for a trained run: its
    parameters and environment, the data, training, test metrics, predictions and the TFLite
    export. Evaluates the run first if it has no ``metrics.json``; the export section needs
    ``export.json``. Returns the path of the report.

    Example:
        ``html = write_run_report("artifacts/default")``  # reports/default/report.html
    """
    from seglib.inference.evaluate import evaluate, run_prepared_dir

    checked_values(ShowConfig, examples=examples)
    run = RunDir(run_dir)
    if not run.config.exists() or not run.model.exists():
        raise FileNotFoundError(
            f"{run.root}: not a trained run (no {run.config.name} or {run.model.name}; train first)"
        )
    out = RunReportDir(report_dir if report_dir is not None else default_report_dir(run.root))
    marker = read_marker(out.root)
    if out.report.exists() and (marker is None or marker.get("kind") != RunReportDir.KIND):
        raise FileExistsError(f"{out.report}: exists and was not written by seglib; choose another --report-dir")
    prepared_dir = run_prepared_dir(run.root, prepared_dir)
    facts = RunFacts(run, read_json(run.config), _read_json(run.metrics) or evaluate(run.root, prepared_dir),
                     _read_json(run.info) or {}, _read_json(run.export), prepared_dir,
                     _read_json(PreparedDir(prepared_dir).summary))
    sections = [*_overview(facts), _data_section(facts), _training_section(facts), _metrics_section(facts),
                _predictions_section(facts, examples), *_export_section(facts)]
    nav = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "\n".join(f'<h2 id="{a}">{html.escape(t)}</h2>\n{b}' for a, t, b in sections)
    page = resources.files(__package__).joinpath("report.html").read_text(encoding="utf-8").format(
        name=html.escape(run.root.resolve().name), created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        run_dir=html.escape(str(run.root.resolve())), nav=nav, body=body)
    out.root.mkdir(parents=True, exist_ok=True)
    if marker is None:
        write_marker(out.root, RunReportDir.KIND)
    atomic_write_text(out.report, page)
    return out.report


@dataclass
class RunFacts:
    """What a report is made from: the run's files as read once."""

    run: RunDir
    config: dict
    metrics: dict
    info: dict  # run.json
    exported: dict | None
    prepared_dir: Path
    summary: dict | None  # the prepared dataset's

    @property
    def split(self) -> str:
        return self.metrics.get("split", "test")

    @property
    def palette(self):
        from seglib.data.palette import Palette

        return Palette.load(self.run.palette)


def _overview(facts: RunFacts) -> list[tuple[str, str, str]]:
    """The summary, parameters and environment sections: (anchor, title, body) each."""
    from seglib.reporting import tables

    metrics, info = facts.metrics, facts.info
    headline = {"pixel accuracy": metrics["pixel_accuracy"], "mean IoU": metrics["mean_iou"],
                "mean Dice": metrics["mean_dice"], "epochs": info.get("epochs_run"),
                "stopped": info.get("stop_reason"), "trained on": facts.config["device"]["kind"]}
    if facts.exported and "int8" in facts.exported["formats"]:
        headline["int8 latency ms"] = facts.exported["formats"]["int8"]["latency_ms"]
    return [("summary", f"Summary ({facts.split} split)", _table(tables.key_values(headline, "value").T)),
            ("parameters", "Parameters", _table(tables.parameters(facts.config, facts.summary))),
            ("environment", "Environment", _table(tables.environment(facts.config, facts.exported)))]


def _data_section(facts: RunFacts) -> tuple[str, str, str]:
    from seglib.reporting import figures, tables

    summary, palette, data = facts.summary, facts.palette, []
    if summary:
        data.append(_table(tables.splits(summary)))
        data.append(_table(tables.dataset(summary)))
        if summary.get("skipped"):
            data.append("<h3>Skipped files</h3>" + _table(tables.skipped(summary)))
    data += [f'<p class="warning">Palette warning: {html.escape(w)}</p>'
             for w in tables.palette_warnings(summary or {})]
    data.append("<h3>Palette</h3>" + _palette_table(palette, summary))
    if summary:
        data.append(figure_png(figures.class_shares(summary, palette)))
    return "data", "Data", "\n".join(data)


def _training_section(facts: RunFacts) -> tuple[str, str, str]:
    from seglib.reporting import figures, tables

    training = [_table(tables.training(facts.info))] if facts.info else []
    if facts.run.history.exists():
        training += [figure_png(figures.training_curves(facts.run.root)), _table(tables.history(facts.run.root))]
    return "training", "Training", "\n".join(training) or "<p>No training history.</p>"


def _metrics_section(facts: RunFacts) -> tuple[str, str, str]:
    from seglib.reporting import figures, tables

    metrics, palette = facts.metrics, facts.palette
    return "metrics", f"Metrics on the {facts.split} split", "\n".join([
        _table(tables.overall_metrics(metrics)),
        "<h3>Per class</h3>" + _table(tables.per_class(metrics, palette)),
        figure_png(figures.class_iou(metrics, palette)),
        figure_png(figures.confusion_matrix(_confusion(facts.run), palette)),
    ])


def _predictions_section(facts: RunFacts, examples: int) -> tuple[str, str, str]:
    """The first ``examples`` images of the split, then the best and worst by mean IoU."""
    from seglib.data.splits import open_split
    from seglib.inference.evaluate import best_and_worst, predict_rows
    from seglib.reporting import figures

    run, prepared_dir, split, palette = facts.run.root, facts.prepared_dir, facts.split, facts.palette
    rows = list(range(min(examples, len(open_split(prepared_dir, split)))))
    first = figures.predictions(*predict_rows(run, prepared_dir, split, rows), palette,
                                titles=[f"#{r}" for r in rows])
    picked = best_and_worst(facts.metrics)
    extremes = figures.predictions(*predict_rows(run, prepared_dir, split, [r for r, _ in picked]), palette,
                                   titles=[t for _, t in picked])
    return ("predictions", "Predictions", figure_png(first) + "<h3>Best and worst images by mean IoU</h3>"
            + figure_png(extremes))


def _export_section(facts: RunFacts) -> list[tuple[str, str, str]]:
    from seglib.reporting import tables

    exported = facts.exported
    if not exported:
        return []
    return [("export", "TFLite export", _table(tables.export(exported)) + (
        f"<p>Agreement: share of {facts.split} pixels whose class matches the Keras model's, on "
        f"{exported['eval_images']} images. Latency: one image, median and 10th-90th percentile of "
        f"{exported['keras'].get('latency_repeats', '')} runs; TFLite models ran with "
        f"{html.escape(str(exported.get('runtime')))} on {exported['threads']} threads.</p>"))]


def _confusion(run: RunDir):
    import numpy as np

    if not run.confusion.exists():
        raise FileNotFoundError(f"{run.confusion}: missing; evaluate the run again")
    return np.load(run.confusion)


_EXTERNAL = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\bhref=[\"']https?://[^>]*>",
                       re.IGNORECASE)


def render_html(notebook_path, html_path) -> Path:
    """An executed notebook -> one self-contained HTML file: inputs hidden, figures embedded as
    data URIs, no script or stylesheet fetched from the network (opens offline), and no stderr
    log streams."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    notebook = nbformat.read(str(notebook_path), as_version=4)
    for cell in notebook.cells:  # library log lines (TensorFlow start-up) are not report content
        if cell.get("outputs"):
            cell.outputs = [
                o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
    body, _ = exporter.from_notebook_node(notebook)
    body = _EXTERNAL.sub("", body)
    atomic_write_text(html_path, body)
    return Path(html_path)
