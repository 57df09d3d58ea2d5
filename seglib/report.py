"""Figures for the notebooks and HTML reports (matplotlib); each returns its Figure."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from seglib.labels import Palette


def class_names(palette: Palette) -> list[str]:
    """Display names of the palette classes: given names, else the id and RGB colour."""
    if palette.names:
        return [f"{i}: {name}" for i, name in enumerate(palette.names)]
    return [f"{i}: rgb{tuple(int(v) for v in c)}" for i, c in enumerate(palette.colours)]


def palette_legend(palette: Palette) -> list[Patch]:
    names = class_names(palette)
    return [Patch(facecolor=palette.colours[i] / 255.0, edgecolor="k", label=names[i]) for i in range(palette.k)]


def plot_palette(palette: Palette):
    """The palette as colour swatches with each class's share of training pixels."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * palette.k + 0.6))
    names = class_names(palette)
    for i in range(palette.k):
        ax.barh(i, palette.shares[i], color=palette.colours[i] / 255.0, edgecolor="k")
        ax.text(palette.shares[i], i, f"  {100 * palette.shares[i]:.1f}%", va="center")
    ax.set_yticks(range(palette.k), names)
    ax.invert_yaxis()
    ax.set_xlabel("share of sampled training-mask pixels")
    ax.set_xlim(0, max(palette.shares) * 1.25)
    ax.set_title(f"K-Means palette (K={palette.k}, seed={palette.seed})")
    fig.tight_layout()
    return fig


def plot_examples(images: np.ndarray, labels: np.ndarray, palette: Palette, masks: np.ndarray | None = None,
                  titles: list[str] | None = None):
    """Rows of photo | (original mask) | labels rendered with the palette."""
    n = len(images)
    cols = 3 if masks is not None else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.2 * n), squeeze=False)
    for r in range(n):
        panels = [("photo", images[r])]
        if masks is not None:
            panels.append(("mask", masks[r]))
        panels.append(("labels", palette.colourize(labels[r])))
        for c, (name, img) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(name if titles is None else f"{titles[r]} {name}", fontsize=9)
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=min(palette.k, 5), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_class_shares(summary: dict, palette: Palette):
    """Grouped bars: pixel share of every class in each split (from summary.json)."""
    shares = summary["class_shares"]
    splits = [s for s in ("train", "val", "test") if s in shares]
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(6, palette.k * 0.8), 3.8))
    x = np.arange(palette.k)
    for j, split in enumerate(splits):
        ax.bar(x + j * width - 0.4 + width / 2, shares[split], width, label=f"{split} ({summary['counts'][split]})",
               color=palette.colours / 255.0, edgecolor="k", alpha=[1.0, 0.65, 0.35][j % 3])
    ax.set_xticks(x, [str(i) for i in range(palette.k)])
    ax.set_xlabel("class id")
    ax.set_ylabel("pixel share")
    ax.set_title("class pixel shares per split (bars: train, val, test)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_training_curves(run_dir):
    """Loss, pixel accuracy and mean IoU per epoch (train and val) from a run's history.csv,
    with the best epoch (the weights kept in model.keras) marked."""
    import json

    import pandas as pd

    run_dir = Path(run_dir)
    history = pd.read_csv(run_dir / "history.csv")
    epochs = history["epoch"] + 1
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    best = info.get("best_epoch")
    panels = [("loss", "loss"), ("pixel_accuracy", "pixel accuracy"), ("mean_iou", "mean IoU")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels):
        if key in history:
            ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label="val")
        if best:
            ax.axvline(best, color="grey", linestyle="--", label=f"best epoch {best}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(info.get("stop_reason", ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_validation_curves(histories: dict):
    """Validation loss and mean IoU per epoch, one line per run (``{run name: history.csv}``);
    runs without a history yet are left out."""
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    drawn = 0
    for name, path in histories.items():
        history = pd.read_csv(path) if Path(path).exists() else None
        if history is None or history.empty:
            continue
        for ax, column in zip(axes, ("val_loss", "val_mean_iou")):
            if column in history:
                ax.plot(history["epoch"] + 1, history[column], marker="o", label=name)
        drawn += 1
    for ax, title in zip(axes, ("validation loss", "validation mean IoU")):
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_predictions(images, truth, pred, palette: Palette, titles: list[str] | None = None):
    """Rows of photo | true labels | prediction | error map (red where they differ)."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for r in range(n):
        error = np.zeros(truth[r].shape + (3,), np.uint8)
        error[truth[r] != pred[r]] = (220, 30, 30)
        accuracy = float((truth[r] == pred[r]).mean())
        panels = [("photo", np.asarray(images[r]).astype(np.uint8)), ("truth", palette.colourize(truth[r])),
                  ("prediction", palette.colourize(pred[r])), (f"errors ({100 * (1 - accuracy):.1f}%)", error)]
        for c, (name, img) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(name if titles is None else f"{titles[r]}: {name}", fontsize=9)
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=min(palette.k, 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_confusion(confusion, palette: Palette):
    """Row-normalised confusion matrix (share of each true class predicted as each class)."""
    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    names = class_names(palette)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for t in range(len(names)):
        for p in range(len(names)):
            if normalised[t, p] >= 0.01:
                ax.text(p, t, f"{normalised[t, p]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if normalised[t, p] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_class_iou(metrics: dict, palette: Palette):
    """Per-class IoU bars in palette colours; absent classes (NaN) are marked."""
    iou = np.array(metrics["per_class"]["iou"], np.float64)
    names = class_names(palette)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.8))
    ax.bar(range(len(names)), np.nan_to_num(iou), color=palette.colours / 255.0, edgecolor="k")
    for i, v in enumerate(iou):
        ax.text(i, (0 if np.isnan(v) else v) + 0.02, "absent" if np.isnan(v) else f"{v:.2f}", ha="center", fontsize=8)
    ax.axhline(metrics["mean_iou"], color="grey", linestyle="--", label=f"mean IoU {metrics['mean_iou']:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IoU")
    ax.legend()
    fig.tight_layout()
    return fig


def image_ious(truth, pred, num_classes: int) -> np.ndarray:
    """Mean IoU of each image over the classes present in its truth or prediction."""
    from seglib.metrics import scores, update_confusion

    return np.array([scores(update_confusion(np.zeros((num_classes, num_classes), np.int64), t, p))["mean_iou"]
                     for t, p in zip(truth, pred)])


_EXTERNAL = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\bhref=[\"']https?://[^>]*>",
                       re.IGNORECASE)


def render_html(notebook_path, html_path) -> Path:
    """An executed notebook -> one self-contained HTML file: inputs hidden, figures embedded as
    data URIs, no script or stylesheet fetched from the network (opens offline), and no stderr
    log streams."""
    from pathlib import Path

    import nbformat
    from nbconvert import HTMLExporter

    from seglib.fsutil import atomic_write_text

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    notebook = nbformat.read(str(notebook_path), as_version=4)
    for cell in notebook.cells:  # library log lines (TensorFlow start-up) are not report content
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    body, _ = exporter.from_notebook_node(notebook)
    body = _EXTERNAL.sub("", body)
    atomic_write_text(html_path, body)
    return Path(html_path)


def build_report(run_dir, out_dir=None, **parameters) -> Path:
    """Execute ``03_evaluate_export`` for a run with papermill and render it as
    ``reports/<run>/report.html`` (the executed notebook is kept beside it)."""
    from seglib import notebooks

    run_dir = Path(run_dir).resolve()
    out_dir = Path(out_dir) if out_dir else Path("reports") / run_dir.name
    executed = notebooks.execute(notebooks.EVALUATE, out_dir / f"{notebooks.EVALUATE}.ipynb",
                                 {"RUN_DIR": str(run_dir), **parameters})
    return render_html(executed, out_dir / "report.html")
