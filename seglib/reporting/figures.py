"""Figures for the notebooks and HTML reports (matplotlib); each returns its Figure."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from seglib.data.labels import colourize
from seglib.data.palette import Palette
from seglib.fsutil import read_json
from seglib.layout import RunDir


def class_names(palette: Palette) -> list[str]:
    """Display names of the palette classes: given names, else the id and RGB colour."""
    if palette.names:
        return [f"{i}: {name}" for i, name in enumerate(palette.names)]
    return [f"{i}: rgb{tuple(int(v) for v in c)}" for i, c in enumerate(palette.colours)]


def palette_legend(palette: Palette) -> list[Patch]:
    names = class_names(palette)
    return [Patch(facecolor=palette.colours[i] / 255.0, edgecolor="k", label=names[i]) for i in range(palette.k)]


def palette_shares(palette: Palette):
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


def examples(images: np.ndarray, labels: np.ndarray, palette: Palette, masks: np.ndarray | None = None,
                  titles: list[str] | None = None):
    """Rows of photo | (original mask) | labels rendered with the palette."""
    n = len(images)
    cols = 3 if masks is not None else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.2 * n), squeeze=False)
    for r in range(n):
        panels = [("photo", images[r])]
        if masks is not None:
            panels.append(("mask", masks[r]))
        panels.append(("labels", colourize(palette, labels[r])))
        for c, (name, img) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(name if titles is None else f"{titles[r]} {name}", fontsize=9)
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=min(palette.k, 5), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def class_shares(summary: dict, palette: Palette):
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


def read_history(path: str | Path):
    """A run's ``history.csv`` as a DataFrame: an ``epoch`` column and numbers; a one-line error
    naming the file when it is not that (damaged, cut short, edited)."""
    import pandas as pd

    try:
        history = pd.read_csv(path)
        if "epoch" not in history or history.empty:
            raise ValueError("no epoch rows")
        return history.apply(pd.to_numeric, errors="raise")
    except (ValueError, TypeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a training history seglib wrote ({' '.join(str(exc).split())[:120]}); "
                         "the file is damaged") from None


def training_curves(run_dir):
    """Loss, pixel accuracy and mean IoU per epoch (train and val) from a run's history.csv,
    with the best epoch (the weights kept in model.keras) marked."""


    run = RunDir(run_dir)
    history = read_history(run.history)
    epochs = history["epoch"] + 1
    info = read_json(run.info) if run.info.exists() else {}
    best = info.get("best_epoch")
    panels = [("loss", "loss"), ("pixel_accuracy", "pixel accuracy"), ("mean_iou", "mean IoU")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
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


def predictions(images, truth, pred, palette: Palette, titles: list[str] | None = None):
    """Rows of photo | true labels | prediction | error map (red where they differ)."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for r in range(n):
        error = np.zeros(truth[r].shape + (3,), np.uint8)
        error[truth[r] != pred[r]] = (220, 30, 30)
        accuracy = float((truth[r] == pred[r]).mean())
        panels = [("photo", np.asarray(images[r]).astype(np.uint8)), ("truth", colourize(palette, truth[r])),
                  ("prediction", colourize(palette, pred[r])), (f"errors ({100 * (1 - accuracy):.1f}%)", error)]
        for c, (name, img) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(name if titles is None else f"{titles[r]}: {name}", fontsize=9)
    fig.legend(handles=palette_legend(palette), loc="lower center", ncol=min(palette.k, 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def confusion_matrix(confusion, palette: Palette):
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


def class_iou(metrics: dict, palette: Palette):
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


def runs_scores(scores):
    """The test scores of a batch's runs as grouped bars, a group per run (``scores``: a DataFrame,
    a row per run, a column per score; runs without scores are left out)."""
    scores = scores.dropna(how="all").astype(float)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(scores) + 2), 3.6))
    if not scores.empty:
        scores.plot.bar(ax=ax, rot=20 if len(scores) > 3 else 0, width=0.8)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)  # beside the bars, not over them
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def runs_curves(histories: dict):
    """Training curves beside validation curves, one line per run (``{run name: history.csv}``):
    loss and mean IoU per epoch; runs without a history yet (or still starting to write it, in a
    parallel batch) are left out."""
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 6.4), sharex=True, sharey="row")
    drawn = 0
    for name, path in histories.items():
        try:
            history = pd.read_csv(path) if Path(path).exists() else None
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            history = None
        if history is None or history.empty or "epoch" not in history:
            continue
        colour = f"C{drawn % 10}"
        for row, key in enumerate(("loss", "mean_iou")):
            for col, column in enumerate((key, f"val_{key}")):
                if column in history:
                    axes[row, col].plot(history["epoch"] + 1, history[column], marker="o", color=colour, label=name)
        drawn += 1
    for (row, col), title in np.ndenumerate(np.array([["training loss", "validation loss"],
                                                      ["training mean IoU", "validation mean IoU"]])):
        ax = axes[row, col]
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if row == 1:
            ax.set_xlabel("epoch")
    if drawn:
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    return fig
