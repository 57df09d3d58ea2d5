"""The batch's comparison page, ``reports/<batch>/index.html``: one sortable row per run with the
best marked, the curves, every run's parameters; self-contained, so it opens offline."""
from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from seglib.fsutil import atomic_write_text, read_json
from seglib.layout import RunDir
from seglib.runs import notebooks
from seglib.runs.sweep import Batch, effective_parameters, now, read_status


def run_results(batch: Batch) -> list[dict]:
    """One record per run of the batch: status, parameters and what its files say."""
    rows = []
    for run in batch.runs:
        status = read_status(batch, run.name)
        run_dir = RunDir(status.get("run_dir", batch.run_dir(run.name).root))
        record = {"run": run.name, "status": status.get("status", "not run"), "error": status.get("error"),
                  "step": status.get("step"), "notebook": status.get("notebook"),
                  "parameters": effective_parameters(run), "prepared_dir": status.get("prepared_dir"),
                  "run_dir": run_dir.root}
        for path, key in ((run_dir.metrics, "metrics"), (run_dir.info, "training"), (run_dir.export, "export")):
            record[key] = read_json(path) if path.exists() and status else {}
        record["history"] = run_dir.history
        rows.append(record)
    return rows


SCORES = {"pixel_accuracy": "pixel acc", "mean_accuracy": "mean acc", "mean_iou": "mean IoU", "mean_dice": "mean Dice"}


def results_table(rows: list[dict]):
    """The comparison as a DataFrame, one row per run: the parameters that differ between runs,
    test scores, training and int8 export figures, status."""
    import pandas as pd

    keys = sorted({k for r in rows for k in r["parameters"]})
    differing = [k for k in keys if len({json.dumps(r["parameters"].get(k), default=str) for r in rows}) > 1]
    records = []
    for r in rows:
        int8 = r["export"].get("formats", {}).get("int8", {})
        records.append({
            "run": r["run"],
            **{k: r["parameters"].get(k) for k in differing},
            **{label: r["metrics"].get(key) for key, label in SCORES.items()},
            "model params": r["training"].get("parameters"),
            "epochs": r["training"].get("epochs_run"),
            "stop reason": r["training"].get("stop_reason"),
            "train time s": r["training"].get("seconds_total"),
            "train img/s": r["training"].get("train_images_per_second"),
            "int8 MB": int8["file_bytes"] / 1e6 if int8 else None,
            "int8 ms": int8.get("latency_ms"),
            "status": r["status"],
        })
    # counts stay integers where a run has none (a failed run): pandas would make the column float
    return pd.DataFrame.from_records(records).astype({"model params": "Int64", "epochs": "Int64"})


def best_run(rows: list[dict]) -> str | None:
    """The finished run with the highest test mean IoU."""
    scored = [(r["metrics"]["mean_iou"], r["run"]) for r in rows
              if r["status"] == "finished" and isinstance(r["metrics"].get("mean_iou"), float)
              and r["metrics"]["mean_iou"] == r["metrics"]["mean_iou"]]
    return max(scored)[1] if scored else None


def _cell(value) -> str:
    """A table cell with a sort key: numbers sort as numbers (integers shown with thousands separators),
    missing values show a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return '<td data-sort="">–</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = html.escape(str(value))
        return f'<td data-sort="{text}">{text}</td>'
    return (
        f'<td data-sort="{value}">{value:.4g}</td>'
        if isinstance(value, float)
        else f'<td data-sort="{value}">{value:,}</td>'  # 24,457,471 parameters
    )


def _links(batch: Batch, r: dict) -> str:
    folder = batch.run_report(r["run"])
    parts = []
    if folder.report.exists() and r["status"] == "finished":
        parts.append(f'<a href="{batch.link(folder.report)}">report</a>')
    for step, label in ((notebooks.TRAIN, "training"), (notebooks.EVALUATE, "evaluation")):
        if folder.html(step).exists() and not (r["status"] == "failed" and r["step"] == step):
            parts.append(f'<a href="{batch.link(folder.html(step))}">{label}</a>')
    data = batch.folder.data(Path(r["prepared_dir"]).name) if r["prepared_dir"] else None
    if data and data.html(notebooks.PREPARE).exists():
        parts.append(f'<a href="{batch.link(data.html(notebooks.PREPARE))}">data</a>')
    if r["status"] == "failed" and r["notebook"]:
        failed = batch.report_dir / r["notebook"]
        parts.append(f'<a href="{batch.link(failed.with_suffix(".html"))}">failed notebook</a> '
                     f'(<a href="{batch.link(failed)}">.ipynb</a>)')
    if folder.log.exists():
        parts.append(f'<a href="{batch.link(folder.log)}">log</a>')
    return " · ".join(parts)


def write_index(batch: Batch) -> Path:
    """``reports/<batch>/index.html``: the sortable comparison table with the best run marked,
    the training and validation curves, every run's full parameters, failures and links;
    self-contained (figure embedded, script inline), so it opens offline."""
    from seglib.reporting.figures import runs_curves, runs_scores
    from seglib.reporting.report import figure_png

    rows = run_results(batch)
    table = results_table(rows)
    best = best_run(rows)
    notes = [
        f"<li><b>{html.escape(r['run'])}</b> {html.escape(r['status'])} in {html.escape(str(r['step']))}: "
        f"<code>{html.escape(str(r['error']))}</code></li>"
        for r in rows
        if r["status"] in ("failed", "interrupted")
    ]
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "interrupted", "running", "not run")
    }
    runtimes = sorted({r["export"]["runtime"] for r in rows if r["export"].get("runtime")})
    data_pages = [batch.folder.data(p.name).html(notebooks.PREPARE) for p in sorted(batch.folder.data_root.glob("*"))]
    data_links = "".join(f'<li><a href="{batch.link(page)}">{html.escape(page.parent.name)}</a></li>'
                         for page in data_pages if page.exists())
    page = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8").format(
        name=html.escape(batch.name), updated=now(), table=_runs_table(batch, rows, table, best),
        params=_parameters_table(rows),
        curves=figure_png(runs_curves({r["run"]: r["history"] for r in rows})),
        scores=figure_png(runs_scores(table.set_index("run")[list(SCORES.values())])),
        counts=", ".join(f"{n} {s}" for s, n in counts.items() if n),
        best=f"Best test mean IoU: <b>{html.escape(best)}</b>. " if best else "",
        runtime=f" (TFLite runtime: {html.escape(', '.join(runtimes))})" if runtimes else "",
        failures=f"<h2>Failed or interrupted</h2><ul>{''.join(notes)}</ul>" if notes else "",
        data=f"<h2>Prepared data</h2><ul>{data_links}</ul>" if data_links else "")
    atomic_write_text(batch.folder.index, page)
    return batch.folder.index


def _runs_table(batch: Batch, rows: list[dict], table, best: str | None) -> str:
    """The sortable table of runs: name (the best starred), status, scores, links."""
    head = "".join(f'<th title="click to sort">{html.escape(str(c))}</th>' for c in table.columns) + "<th>links</th>"
    body = []
    for r, record in zip(rows, table.to_dict("records"), strict=True):
        cells = []
        for column, value in record.items():
            if column == "run":
                star = ' <span class="star" title="best test mean IoU">★ best</span>' if r["run"] == best else ""
                cells.append(f'<td data-sort="{html.escape(r["run"])}">{html.escape(r["run"])}{star}</td>')
            elif column == "status":
                cls = html.escape(value.replace(" ", "-"))
                cells.append(f'<td data-sort="{cls}"><span class="{cls}">{html.escape(value)}</span></td>')
            else:
                cells.append(_cell(value))
        cells.append(f"<td>{_links(batch, r)}</td>")
        row_class = ' class="best"' if r["run"] == best else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f'<table class="runs sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _parameters_table(rows: list[dict]) -> str:
    """Every parameter of every run, a row each; the rows where runs differ marked."""
    param_rows = []
    for name in sorted({k for r in rows for k in r["parameters"]}):
        values = [json.dumps(r["parameters"].get(name), default=str) for r in rows]
        cls = ' class="differs"' if len(set(values)) > 1 else ""
        param_rows.append(f"<tr{cls}><th>{html.escape(name)}</th>"
                          + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return ('<table class="params"><thead><tr><th>parameter</th>'
            + "".join(f"<th>{html.escape(r['run'])}</th>" for r in rows)
            + f"</tr></thead><tbody>{''.join(param_rows)}</tbody></table>")
