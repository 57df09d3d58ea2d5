"""Command line: ``python -m seglib <command> ...``; calls the same functions as the notebooks."""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

from seglib.layout import ARTIFACTS
from seglib.parameters import NONE_WORDS, add_arguments
from seglib.quiet import DEBUG_ENV, filtered_stderr, sigterm_to_main_thread
from seglib.training.config import TrainConfig


def _cmd_prepare(args) -> int:
    from seglib.data.config import PrepareConfig
    from seglib.data.prepare import prepare_dataset

    summary = prepare_dataset(PrepareConfig.from_args(args), progress=not args.quiet and sys.stderr.isatty())
    counts, params = summary["counts"], summary["parameters"]
    k = params.get("clusters", params.get("classes"))
    print(f"prepared {args.out_dir}: train {counts['train']}, val {counts['val']}, test {counts['test']} "
          f"({summary['layout']} layout, K={k}, {params['size']} px, {summary['timings_s']['total']:.1f}s)")
    if params.get("ignore_index") is not None:
        ignored = summary["ignored_pixels"]
        print(f"ignored pixels (label {params['ignore_index']}): " + ", ".join(f"{s} {n}" for s, n in ignored.items()))
    if summary.get("unmatched"):
        print(f"{len(summary['unmatched'])} image(s) or mask(s) without a partner, left out:")
        for line in summary["unmatched"][:20]:
            print(f"  {line}")
        if len(summary["unmatched"]) > 20:
            print(f"  ... (all in {args.out_dir}/summary.json)")
    if summary["skipped_count"]:
        print(f"skipped {summary['skipped_count']} bad file(s):")
        for item in summary["skipped"]:
            print(f"  {item['file']}: {item['reason']}")
    if summary["ignored_files"]:
        print(f"ignored {len(summary['ignored_files'])} non-image file(s)")
    for warning in summary["palette_warnings"]:
        print(f"warning: {warning['message']}")
    return 0


def _cmd_synth(args) -> int:
    from seglib.data.config import SynthConfig
    from seglib.data.pairs import parse_size
    from seglib.data.synthetic import generate, generate_labelled

    quiet, args = args.quiet, SynthConfig.from_args(args)  # every value checked
    if args.layout == "pairs":
        height, width = parse_size(args.size)
        if height != width:
            raise ValueError(f"--size {args.size}: pairs are square halves; give one side")
        info = generate(args.out_dir, count=args.count, seed=args.seed, size=height,
                        progress=not quiet and sys.stderr.isatty())
        what = "pairs"
    else:
        info = generate_labelled(args.out_dir, count=args.count, seed=args.seed, size=args.size, layout=args.layout,
                                 progress=not quiet and sys.stderr.isatty())
        what = f"scenes ({args.layout} layout: images and id masks)"
    print(f"generated {info['count']} synthetic {what} in {args.out_dir} (train {info['train']}, val {info['val']})")
    return 0


def _cmd_fetch_weights(args) -> int:
    from seglib.training.model import fetch_encoder_weights

    path = fetch_encoder_weights(args.backbone, args.out)
    print(f"wrote {path}; on a machine without internet train with --encoder-weights {path}")
    return 0


def _cmd_train(args) -> int:
    with sigterm_to_main_thread():  # threads started by these imports leave SIGTERM to the main thread
        from seglib.runs.colab import local_copy
        from seglib.training.train import train

    copy = partial(local_copy, cache=args.local_cache) if args.local_cache else None
    run = train(TrainConfig.from_args(args), log=print if args.quiet else None, verbose=0 if args.quiet else "auto",
                local_copy=copy)
    print(f"{run.run_dir}: {run.stop_reason}; {run.epochs_run} epochs, best epoch {run.best_epoch}")
    return 0


def _cmd_evaluate(args) -> int:
    from seglib.inference.evaluate import evaluate

    if args.preset:  # evaluate --preset NAME PREPARED_DIR [RUN_DIR]
        from seglib.training.presets import run_from_preset

        args.run_dir, args.prepared_dir = run_from_preset(args.preset, args.run_dir, args.prepared_dir), args.run_dir
        print(f"{args.run_dir}: the preset {args.preset} as it comes (report, export, predict and serve take it)")
    m = evaluate(args.run_dir, args.prepared_dir, args.split, full_size=args.full_size)
    print(f"{args.run_dir} on {args.split}: pixel accuracy {m['pixel_accuracy']:.4f}, mean IoU {m['mean_iou']:.4f}, "
          f"mean Dice {m['mean_dice']:.4f} (metrics.json, confusion.npy)")
    if args.full_size:
        full = m["full_size"]
        print(f"at the source labels' size ({', '.join(full['label_sizes'][:3])}): pixel accuracy "
              f"{full['pixel_accuracy']:.4f}, mean IoU {full['mean_iou']:.4f}, mean Dice {full['mean_dice']:.4f}")
    return 0


def _cmd_demo(args) -> int:
    from seglib.runs.demo import demo_config, run_demo
    from seglib.runs.index import best_run, run_results
    from seglib.runs.sweep import load_config, unfinished_runs

    weights = args.encoder_weights
    _interrupt_on_sigterm()
    index = run_demo(args.out, args.data, encoder_weights=weights, resume=args.resume)
    batch = load_config(demo_config(args.out, args.data, weights), args.out)
    failed = unfinished_runs(batch)
    print(f"demo: {len(batch.runs) - len(failed)} of {len(batch.runs)} runs finished; open {index}")
    best = best_run(run_results(batch))
    if best:
        python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
        print(f"serve the best model ({best}, int8): {python} -m seglib serve {batch.run_dir(best).root} "
              "then open http://127.0.0.1:8000/")
    return 1 if failed else 0


def _cmd_export(args) -> int:
    from seglib.inference.export import export_run

    result = export_run(args.run_dir, formats=args.formats, calibration_images=args.calibration_images,
                        prepared_dir=args.prepared_dir, eval_images=args.eval_images)
    print(f"latency: median (p10-p90) of one image; keras: the {result['keras']['call']}; TFLite models run with "
          f"{result['runtime']}")
    for fmt, info in {"keras": result["keras"], **result["formats"]}.items():
        agreement = f"{info['agreement']:.4f}" if "agreement" in info else "     -"
        print(f"{fmt:5s} {info['file_bytes'] / 1e6:7.1f} MB  agreement {agreement}  mIoU {info['mean_iou']:.4f}  "
              f"latency {info['latency_ms']:7.1f} ms ({info['latency_p10_ms']:.1f}-{info['latency_p90_ms']:.1f})")
    return 0


def _cmd_predict(args) -> int:
    from seglib.inference.config import PredictConfig
    from seglib.inference.predict import VIDEO_SUFFIXES, predict_paths, predict_video

    args = PredictConfig.from_args(args)  # every value checked
    if Path(args.input).suffix.lower() in VIDEO_SUFFIXES:
        video = predict_video(args.model, args.input, args.out_dir, every=args.every, overwrite=args.overwrite,
                              max_pixels=args.max_pixels)
        print(f"wrote {video['output']}: {video['frames']} frames ({video['predicted']} predicted) at "
              f"{video['frames_per_s']} frames/s")
        return 0
    result = predict_paths(args.model, args.input, args.out_dir, max_pixels=args.max_pixels, overwrite=args.overwrite)
    files = sum(len(item["outputs"]) for item in result["written"])
    print(f"wrote {files} files (mask and overlay) for {len(result['written'])} image(s) to {args.out_dir}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable image(s):")
        for item in result["skipped"]:
            print(f"  {item['file']}: {item['reason']}")
    return 0 if result["written"] else 2


def _cmd_serve(args) -> int:
    from seglib.inference.config import ServeConfig
    from seglib.inference.serve import serve

    c = ServeConfig.from_args(args)
    serve(c.run_dir, model=c.model, host=c.host, port=c.port, threads=c.threads, queue=c.queue,
          max_pixels=c.max_pixels, max_bytes=c.max_bytes, upload_timeout=c.upload_timeout,
          log_level="debug" if args.debug else "info")
    return 0


def _cmd_report(args) -> int:
    from seglib.reporting.report import write_run_report

    html = write_run_report(args.run_dir, args.report_dir, prepared_dir=args.prepared_dir, examples=args.examples)
    print(f"report: {html}")
    return 0


def _cmd_batch(args) -> int:
    from seglib.runs.batch import run_batch
    from seglib.runs.sweep import BatchConfig, load_config, unfinished_runs

    args = BatchConfig.from_args(args)  # every value checked
    only = [n for n in args.only.split(",") if n] or None
    _interrupt_on_sigterm()
    run_batch(args.config, args.root, only=only, resume=args.resume, overwrite=args.overwrite, parallel=args.parallel,
              ray=args.ray, wait_timeout=args.wait_timeout)
    failed = unfinished_runs(load_config(args.config, args.root), only)
    if failed:
        print(f"failed runs: {', '.join(failed)} (see the index; --resume re-runs only these)", file=sys.stderr)
    return 1 if failed else 0


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a closed terminal, a scheduler's stop) ends a batch like Ctrl-C: the running run is
    marked interrupted and the index rewritten."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _cmd_colab_badges(args) -> int:
    import subprocess

    from seglib.runs.colab import write_badges

    url = args.repo
    if not url:
        found = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True,
                               cwd=Path(args.readme).resolve().parent)
        if found.returncode != 0:
            raise ValueError("no git remote 'origin' here: pass --repo https://github.com/OWNER/NAME")
        url = found.stdout.strip()
    print(write_badges(args.readme, url, args.branch))
    return 0


def _cmd_doctor(args) -> int:
    from seglib.training.doctor import report

    lines, check = report(args.runs_dir)
    print("\n".join(lines))
    return 1 if check.ok is False else 0


def _cmd_purity(args) -> int:
    from seglib.data.quality import split_purity

    print(json.dumps({"split": args.split, "purity": round(split_purity(args.prepared_dir, args.split), 5)}))
    return 0


def _prepare_arguments(p) -> None:
    from seglib.data.config import PrepareConfig

    add_arguments(p, PrepareConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _synth_arguments(p) -> None:
    from seglib.data.config import SynthConfig

    add_arguments(p, SynthConfig)
    p.add_argument("--quiet", action="store_true")


def _train_arguments(p) -> None:
    add_arguments(p, TrainConfig)
    p.add_argument("--local-cache", metavar="DIR", help="read a copy of the prepared data made once in DIR (on Colab "
                   "the local disk: reads through the Drive mount are slow)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of Keras' progress bar")


def _fetch_weights_arguments(p) -> None:
    p.add_argument("backbone")
    p.add_argument("out", help="file or folder to write it to")


def _evaluate_arguments(p) -> None:
    from seglib.inference.config import EvaluateConfig

    add_arguments(p, EvaluateConfig, only=("run_dir", "prepared_dir", "preset", "split", "full_size"))


def _export_arguments(p) -> None:
    from seglib.inference.config import EvaluateConfig

    add_arguments(p, EvaluateConfig, only=("run_dir", "prepared_dir", "formats", "calibration_images", "eval_images"))


def _report_arguments(p) -> None:
    from seglib.reporting.config import ReportConfig, ShowConfig

    add_arguments(p, ReportConfig)
    add_arguments(p, ShowConfig)


def _demo_arguments(p) -> None:
    p.add_argument("--out", default=".", help="folder that gets data/, artifacts/ and reports/")
    p.add_argument("--resume", action="store_true", help="keep runs that finished in an earlier demo")
    p.add_argument("--data", default=None, help="pairs to use instead of generated synthetic ones")
    p.add_argument("--encoder-weights", default=None, type=lambda v: None if v.lower() in NONE_WORDS else v,
                   help="none (offline, the default) or imagenet")


def _predict_arguments(p) -> None:
    from seglib.inference.config import PredictConfig

    add_arguments(p, PredictConfig)


def _serve_arguments(p) -> None:
    from seglib.inference.config import ServeConfig

    add_arguments(p, ServeConfig)


def _batch_arguments(p) -> None:
    from seglib.runs.sweep import BatchConfig

    add_arguments(p, BatchConfig)


def _colab_badges_arguments(p) -> None:
    p.add_argument("--repo", default=None, help="GitHub URL (default: git remote origin)")
    p.add_argument("--branch", default="main")
    p.add_argument("--readme", default="README.md")


def _doctor_arguments(p) -> None:
    p.add_argument("--runs-dir", default=ARTIFACTS, help="where runs are written (its free disk is shown)")


def _purity_arguments(p) -> None:
    p.add_argument("prepared_dir")
    p.add_argument("--split", default="test")


# The commands in the order --help lists them: (name, help, its arguments, what it runs).
COMMANDS = [
    ("prepare", "split pairs, fit the K-Means palette (or read id masks), write the prepared dataset",
     _prepare_arguments, _cmd_prepare),
    ("synth", "generate synthetic street scenes: pairs in the Kaggle layout, or images with id masks",
     _synth_arguments, _cmd_synth),
    ("train", "train a model on a prepared dataset into RUN_DIR (resumes if unfinished)", _train_arguments, _cmd_train),
    ("fetch-weights", "download a backbone's ImageNet encoder file once (needs internet), for --encoder-weights PATH "
     "on machines without", _fetch_weights_arguments, _cmd_fetch_weights),
    ("evaluate", "metrics of a run's best model on a prepared split", _evaluate_arguments, _cmd_evaluate),
    ("demo", "synthetic pairs -> a batch of two small runs -> reports/demo/index.html (make demo)", _demo_arguments,
     _cmd_demo),
    ("export", "TFLite fp32/fp16/int8 (and ONNX) models of a run, with measured parity and latency",
     _export_arguments, _cmd_export),
    ("predict", "colour masks and overlays for an image, a pair, a folder or a video", _predict_arguments,
     _cmd_predict),
    ("serve", "serve a trained run over HTTP: a browser page at /, POST /predict, /health", _serve_arguments,
     _cmd_serve),
    ("report", "write a trained run's self-contained HTML report (reports/<run>/report.html)", _report_arguments,
     _cmd_report),
    ("batch", "run the notebooks for each run of a YAML batch config; reports/<batch>/index.html", _batch_arguments,
     _cmd_batch),
    ("colab-badges", "fill the README's Open-in-Colab badges from the GitHub remote", _colab_badges_arguments,
     _cmd_colab_badges),
    ("purity", "label purity of a prepared split against the true ids/ beside the pairs", _purity_arguments,
     _cmd_purity),
    ("doctor", "versions, the device, free disk, and a numeric check of the accelerator against the CPU",
     _doctor_arguments, _cmd_doctor),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seglib", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help)
        arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. An error a user can cause (bad input, a missing or refused folder, a full disk)
    is one line naming the file and what to do, exit status 2; any other (a bug, a library's own error)
    one line saying so, exit status 1. ``--debug`` shows the traceback."""
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # TensorFlow's start-up lines too (seglib.quiet)
    try:
        with filtered_stderr(stream=True):  # TensorFlow's C++ notices at any point of a command: not its lines
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # PairError, DatasetError, BatchError ...; FileNotFoundError, ENOSPC ...
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - not the user's: its first line, the traceback with --debug
        if args.debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error: {type(exc).__name__}: {first} (unexpected: run again with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
