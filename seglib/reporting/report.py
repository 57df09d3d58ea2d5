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
import json
import os
import re
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from seglib.fsutil import atomic_write_text, read_marker, write_marker
from seglib.layout import PreparedDir, RunDir, RunReportDir


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


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


def write_run_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     prepared_dir: str | os.PathLike | None = None, n_examples: int = 4) -> Path:
    """Write ``out_dir/report.html`` (default ``reports/<run name>/``) for a trained run: its
    parameters and environment, the data, training, test metrics, predictions and the TFLite
    export. Evaluates the run first if it has no ``metrics.json``; the export section needs
    ``export.json``. Returns the path of the report."""
    from seglib.data.palette import Palette
    from seglib.data.splits import open_split
    from seglib.inference.evaluate import best_and_worst, evaluate, predict_rows
    from seglib.reporting import figures, tables
    from seglib.training.train import load_model

    run = RunDir(run_dir)
    config = _read_json(run.config)
    if config is None or not run.model.exists():
        raise FileNotFoundError(
            f"{run.root}: not a trained run (no {run.config.name} or {run.model.name}; train first)"
        )
    out = RunReportDir(out_dir if out_dir is not None else Path("reports") / run.root.resolve().name)
    marker = read_marker(out.root)
    if out.report.exists() and (marker is None or marker.get("kind") != RunReportDir.KIND):
        raise FileExistsError(f"{out.report}: exists and was not written by seglib; choose another --out folder")
    prepared_dir = Path(prepared_dir or config["prepared_dir"])
    metrics = _read_json(run.metrics) or evaluate(run.root, prepared_dir)
    split = metrics.get("split", "test")
    summary = _read_json(PreparedDir(prepared_dir).summary)
    run_info = _read_json(run.info) or {}
    exported = _read_json(run.export)
    palette = Palette.load(run.palette)
    name = run.root.resolve().name

    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    headline = {"pixel accuracy": metrics["pixel_accuracy"], "mean IoU": metrics["mean_iou"],
                "mean Dice": metrics["mean_dice"], "epochs": run_info.get("epochs_run"),
                "stopped": run_info.get("stop_reason"), "trained on": config["device"]["kind"]}
    if exported and "int8" in exported["formats"]:
        headline["int8 latency ms"] = exported["formats"]["int8"]["latency_ms"]
    sections.append(("summary", f"Summary ({split} split)", _table(tables.key_values(headline, "value").T)))
    sections.append(("parameters", "Parameters", _table(tables.parameters(config, summary))))
    sections.append(("environment", "Environment", _table(tables.environment(config, exported))))

    data = []
    if summary:
        data.append(_table(tables.splits(summary)))
        data.append(_table(tables.dataset(summary)))
        if summary.get("skipped"):
            data.append("<h3>Skipped files</h3>" + _table(tables.skipped(summary)))
    warnings = tables.palette_warnings(summary or {})
    data += [f'<p class="warning">Palette warning: {html.escape(w)}</p>' for w in warnings]
    data.append("<h3>Palette</h3>" + _palette_table(palette, summary))
    if summary:
        data.append(figure_png(figures.class_shares(summary, palette)))
    sections.append(("data", "Data", "\n".join(data)))

    training = [_table(tables.training(run_info))] if run_info else []
    if run.history.exists():
        training += [figure_png(figures.training_curves(run.root)), _table(tables.history(run.root))]
    sections.append(("training", "Training", "\n".join(training) or "<p>No training history.</p>"))

    sections.append(("metrics", f"Metrics on the {split} split", "\n".join([
        _table(tables.overall_metrics(metrics)),
        "<h3>Per class</h3>" + _table(tables.per_class(metrics, palette)),
        figure_png(figures.class_iou(metrics, palette)),
        figure_png(figures.confusion_matrix(_confusion(run), palette)),
    ])))

    model = load_model(run.root)
    rows = list(range(min(n_examples, len(open_split(prepared_dir, split)))))
    examples = figures.predictions(*predict_rows(model, prepared_dir, split, rows), palette,
                                   titles=[f"#{r}" for r in rows])
    picked = best_and_worst(metrics)
    extremes = figures.predictions(*predict_rows(model, prepared_dir, split, [r for r, _ in picked]), palette,
                                   titles=[t for _, t in picked])
    sections.append(("predictions", "Predictions", figure_png(examples)
                     + "<h3>Best and worst images by mean IoU</h3>" + figure_png(extremes)))

    if exported:
        sections.append(("export", "TFLite export", _table(tables.export(exported)) + (
            f"<p>Agreement: share of {split} pixels whose class matches the Keras model's, on "
            f"{exported['eval_images']} images. Latency: one image, median and 10th-90th percentile of "
            f"{exported['keras'].get('latency_repeats', '')} runs; TFLite models ran with "
            f"{html.escape(str(exported.get('runtime')))} on {exported['threads']} threads.</p>")))

    nav = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "\n".join(f'<h2 id="{a}">{html.escape(t)}</h2>\n{b}' for a, t, b in sections)
    page = resources.files(__package__).joinpath("report.html").read_text(encoding="utf-8").format(
        name=html.escape(name), created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        run_dir=html.escape(str(run.root.resolve())), nav=nav, body=body)
    out.root.mkdir(parents=True, exist_ok=True)
    if marker is None:
        write_marker(out.root, RunReportDir.KIND)
    atomic_write_text(out.report, page)
    return out.report


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
