"""Figures for the notebooks and HTML reports (matplotlib); each returns its Figure."""
from __future__ import annotations

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
    from pathlib import Path

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
