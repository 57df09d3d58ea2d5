"""Tables for the notebooks and HTML reports (pandas), read from a run's or a prepared dataset's
files: the notebooks display them, :mod:`seglib.reporting.report` renders the same tables into the report."""
from __future__ import annotations

import os
from dataclasses import fields

import pandas as pd

from seglib.data.palette import Palette
from seglib.fsutil import read_json
from seglib.layout import RunDir
from seglib.reporting.figures import class_names, read_history
from seglib.training.config import TrainConfig

TRAINING_KEYS = [f.name for f in fields(TrainConfig) if f.name not in ("prepared_dir", "run_dir")]
DATA_KEYS = ("clusters", "classes", "ignore_index", "size", "seed", "val_fraction", "sample_pixels", "edge_resolution",
             "skip_bad")


def key_values(values: dict, name: str) -> pd.DataFrame:
    """A one-column table of named values (None shown as a dash)."""
    return pd.Series({k: "–" if v is None else v for k, v in values.items()}, name=name, dtype=object).to_frame()


def parameters(config: dict, summary: dict | None = None) -> pd.DataFrame:
    """Every parameter the run was trained with (config.json), and the data's (summary.json)."""
    values = {f"training: {k}": config.get(k) for k in TRAINING_KEYS if k in config}
    if "encoder_weights" in config and config["encoder_weights"] is None:
        values["training: encoder_weights"] = "none (random init)"
    values["training: prepared_dir"] = config.get("prepared_dir")
    if summary:
        values["data: data_dir"] = summary.get("data_dir")
        values |= {f"data: {k}": summary["parameters"].get(k) for k in DATA_KEYS if k in summary["parameters"]}
    return key_values(values, "value")


def environment(config: dict, export: dict | None = None) -> pd.DataFrame:
    """Library versions and the device the run was trained on (config.json), and the TFLite runtime
    that measured the export latencies (export.json)."""
    versions = config.get("versions", {})
    device = config.get("device", {})
    values = {
        "seglib": versions.get("seglib"), "TensorFlow": versions.get("tensorflow"), "Keras": versions.get("keras"),
        "Python": versions.get("python"), "device": device.get("kind"),
        "devices": ", ".join(device.get("devices", [])), "machine": device.get("machine"),
        "mixed precision": config.get("mixed_precision"),
    }
    if export:
        values["TFLite runtime"] = export.get("runtime")
    return key_values(values, "value")


def splits(summary: dict) -> pd.DataFrame:
    """Pairs per split, with the layout and what was skipped or ignored (summary.json)."""
    counts = summary["counts"]
    table = pd.DataFrame({"pairs": counts}).rename_axis("split")
    table.loc["total"] = sum(counts.values())
    return table


def dataset(summary: dict) -> pd.DataFrame:
    """Where a prepared dataset came from and how it was made (summary.json)."""
    params = summary["parameters"]
    return key_values(
        {
            "data folder": summary.get("data_dir"),
            "layout": summary.get("layout"),
            "classes (K)": params.get("clusters", params.get("classes")),
            "classes from": params.get("class_source", "K-Means on the mask colours"),
            "ignore index": params.get("ignore_index"),
            "ignored pixels (train)": summary.get("ignored_pixels", {}).get("train"),
            "size (px, H x W)": params.get("size"),
            "seed": params.get("seed"),
            "val fraction": params.get("val_fraction"),
            "sampled pixels": params.get("sample_pixels"),
            "edge resolution": params.get("edge_resolution", params.get("resolve_edges")),  # its earlier name
            "skipped bad files": summary.get("skipped_count", 0),
            "ignored non-image files": len(summary.get("ignored_files", [])),
            "images or masks without a partner": len(summary.get("unmatched", [])),
            "prepare time (s)": summary.get("timings_s", {}).get("total"),
        },
        "value",
    )


def skipped(summary: dict) -> pd.DataFrame:
    """Files that were skipped as bad, with the reason."""
    return pd.DataFrame(summary.get("skipped", []), columns=["file", "reason"])


def timings(summary: dict) -> pd.DataFrame:
    return pd.Series(summary.get("timings_s", {}), name="seconds").rename_axis("step").to_frame()


def palette(palette: Palette, summary: dict | None = None) -> pd.DataFrame:
    """One row per class: name, colour, share of the sampled training pixels and, with the
    dataset's summary, its pixel share in each split."""
    table = pd.DataFrame({
        "class": class_names(palette),
        "RGB": [", ".join(str(int(v)) for v in c) for c in palette.colours],
        "sampled share": palette.shares,
    })
    for split, shares in (summary or {}).get("class_shares", {}).items():
        table[f"{split} share"] = shares
    return table.set_index("class")


def palette_warnings(summary: dict) -> list[str]:
    """The dataset's palette warnings (classes within JPEG-noise distance), as sentences."""
    return [w["message"] for w in summary.get("palette_warnings", [])]


def history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per epoch from history.csv: losses, metrics, seconds; the best epoch marked."""

    run = RunDir(run_dir)
    table = read_history(run.history)
    table.insert(0, "epoch", table.pop("epoch") + 1)
    info = read_json(run.info) if run.info.exists() else {}
    order = ["epoch", "loss", "val_loss", "pixel_accuracy", "val_pixel_accuracy", "mean_iou", "val_mean_iou",
             "learning_rate", "seconds"]
    table = table[[c for c in order if c in table] + [c for c in table if c not in order]]
    table = table.rename(columns=lambda c: c.replace("_", " ")).set_index("epoch")
    if info.get("best_epoch"):
        table["best"] = ["✓" if e == info["best_epoch"] else "" for e in table.index]
    return table


def training(run_info: dict) -> pd.DataFrame:
    """How training ended (run.json)."""
    per_epoch = run_info.get("seconds_per_epoch") or []
    best = {k: v for k, v in run_info.items() if k.startswith("best_") and k != "best_epoch"}
    return key_values({
        "stop reason": run_info.get("stop_reason"), "epochs run": run_info.get("epochs_run"),
        "best epoch": run_info.get("best_epoch"), **{k.replace("_", " "): v for k, v in best.items()},
        "device": run_info.get("device"), "training time (s)": run_info.get("seconds_total"),
        "median epoch (s)": sorted(per_epoch)[len(per_epoch) // 2] if per_epoch else None,
        "training images/s": run_info.get("train_images_per_second"), "model parameters": run_info.get("parameters"),
    }, "value")


def overall_metrics(metrics: dict) -> pd.DataFrame:
    """The split's scores; with an ignore index, how many pixels were scored and how many ignored."""
    keys = ("pixel_accuracy", "mean_accuracy", "mean_iou", "mean_dice")
    values = {k: metrics[k] for k in keys}
    if metrics.get("ignore_index") is not None:
        values |= {"scored pixels": metrics["num_pixels"],
                   f"ignored pixels (label {metrics['ignore_index']})": metrics.get("ignored_pixels", 0)}
    table = pd.Series(values, name=metrics.get("split", "value"), dtype=object).to_frame()
    if "full_size" in metrics:  # the same predictions scored against the source label files
        full = metrics["full_size"]
        table.columns = [f"{metrics.get('split')} at the prepared size"]
        table[f"at the source labels' size ({', '.join(full['label_sizes'][:2])})"] = pd.Series(
            {**{k: full[k] for k in keys}, "scored pixels": full["num_pixels"]}, dtype=object)
    return table


def per_class(metrics: dict, palette: Palette) -> pd.DataFrame:
    """IoU, Dice, precision, recall, specificity and pixel share of every class (NaN: absent)."""
    return pd.DataFrame(metrics["per_class"], index=pd.Index(class_names(palette), name="class"))


def export(exported: dict) -> pd.DataFrame:
    """The Keras model and each exported model: size, agreement with Keras, mean IoU and single-image
    latency as median with its spread (p10-p90) (export.json); the Keras row names the call it timed."""
    keras_call = exported["keras"].get("call", "model.predict").split(" (")[0]  # runs exported before it was named
    rows = {f"keras ({keras_call})": exported["keras"], **exported["formats"]}
    return pd.DataFrame(
        {
            fmt: {
                "size MB": info["file_bytes"] / 1e6,
                "agreement": info.get("agreement", 1.0),
                "mean IoU": info["mean_iou"],
                "latency ms (median)": info["latency_ms"],
                "p10 ms": info.get("latency_p10_ms"),
                "p90 ms": info.get("latency_p90_ms"),
            }
            for fmt, info in rows.items()
        }
    ).T.rename_axis("model")
