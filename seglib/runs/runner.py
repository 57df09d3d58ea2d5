"""One run of a batch: its notebooks executed in turn (the data setting prepared once), its
``status.json`` kept up to date, a failing step recorded without stopping the other runs."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from seglib.fsutil import atomic_write_json, read_json, remove_owned, write_marker
from seglib.layout import PreparedDir, RunDir, RunReportDir
from seglib.runs import notebooks
from seglib.runs.sweep import Batch, BatchRun, data_setting, effective_parameters, now, read_status
from seglib.training.checks import run_state


def run_one(batch: Batch, run: BatchRun, data: PreparedData, resume: bool, progress, placement: str = "") -> dict:
    """Run ``run``'s notebooks in turn (its data from ``data``); returns its final status. ``placement``:
    what the run's process was pinned to (recorded in its status)."""
    folder = batch.run_report(run.name)
    run_dir = batch.run_dir(run.name)
    if not resume:  # this run starts from scratch: what seglib wrote for it goes, nothing else
        for old, layout in ((run_dir, RunDir), (folder, RunReportDir)):
            if old.root.is_dir():
                remove_owned(old.root, layout)
    folder.root.mkdir(parents=True, exist_ok=True)
    write_marker(folder.root, RunReportDir.KIND)
    before = read_status(batch, run.name) if resume else {}
    status = {"run": run.name, "status": "running", "overrides": run.overrides, "parameters": run.parameters,
              "effective_parameters": effective_parameters(run), "run_dir": str(run_dir.root), "started": now(),
              "pid": os.getpid(), "host": socket.gethostname(), **({"placement": placement} if placement else {})}
    atomic_write_json(folder.status, status)
    started = time.perf_counter()
    step = notebooks.PREPARE
    log = folder.log
    try:
        status["prepared_dir"] = str(data.folder_of(run))
        data_dir = data.prepared(run, log, progress)
        for step, params in ((notebooks.TRAIN, {"PREPARED_DIR": str(data_dir), "RUN_DIR": str(run_dir.root)}),
                             (notebooks.EVALUATE, {"RUN_DIR": str(run_dir.root), "PREPARED_DIR": str(data_dir),
                                                   "REPORT_DIR": str(folder.root)})):
            accepted = notebooks.parameters(step)
            values = {**{k: v for k, v in run.parameters.items() if k in accepted}, **params}
            if step == notebooks.TRAIN:
                status["train_parameters"] = values
                if _training_finished(before, values, run_dir, folder):
                    status["train_reused"] = True  # resumed after a later step failed: keep the model
                    progress(f"{step}: finished earlier with these parameters, kept")
                    continue
                # resumed with other training parameters: the earlier training of this run is replaced
                values = {**values, "OVERWRITE": run_state(run_dir.root) == "finished"}
            progress(step)
            _execute(step, folder, values, log, progress)
        status.update(status="finished")
    except StepFailed as e:
        notebook = e.notebook.relative_to(batch.report_dir).as_posix() if e.notebook else None
        interrupted = e.error.startswith("KeyboardInterrupt")
        status.update(status="interrupted" if interrupted else "failed", step=e.step, error=e.error, notebook=notebook)
    except KeyboardInterrupt:
        status.update(status="interrupted", step=step, error="interrupted (Ctrl-C or SIGTERM)")
        _finish(folder, status, started)
        raise
    except Exception as e:  # noqa: BLE001 - any failure marks this run failed; the others still run
        status.update(status="failed", step=step, error=f"{type(e).__name__}: {e}")
    _finish(folder, status, started)
    if status["status"] == "interrupted":
        raise KeyboardInterrupt
    return status


def _finish(folder: RunReportDir, status: dict, started: float) -> None:
    status.update(finished=now(), seconds=round(time.perf_counter() - started, 1))
    atomic_write_json(folder.status, status)


def _training_finished(before: dict, values: dict, run_dir: RunDir, folder: RunReportDir) -> bool:
    """On resume: did this run's training already finish, with the same training parameters?"""
    return (before.get("train_parameters") == json.loads(json.dumps(values, default=str))
            and run_dir.info.exists() and run_dir.model.exists()
            and not run_dir.backup.exists() and folder.html(notebooks.TRAIN).exists())


class StepFailed(Exception):
    def __init__(self, step: str, error: str, notebook: Path | None):
        super().__init__(error)
        self.step, self.error, self.notebook = step, error, notebook


def _execute(step: str, folder: RunReportDir, parameters: dict, log: Path, progress) -> Path:
    """Execute one notebook into ``folder`` and render it (its output to ``log``, progress lines to
    ``progress``); a failing cell becomes ``StepFailed`` with the partly executed notebook
    rendered beside it."""
    import papermill as pm

    from seglib.reporting.report import render_html

    executed = folder.notebook(step)
    try:
        notebooks.execute(step, executed, parameters, log=log, on_progress=progress)
    except pm.PapermillExecutionError as e:
        if executed.exists():
            render_html(executed, folder.html(step))
        raise StepFailed(step, f"{e.ename}: {e.evalue}", executed if executed.exists() else None) from e
    render_html(executed, folder.html(step))
    return executed


class PreparedData:
    """The prepared dataset of each data setting of a batch: prepared once per batch invocation (or
    reused from an earlier one with ``resume``). A setting whose preparation failed fails every run
    that needs it with the same error, without preparing it again."""

    def __init__(self, batch: Batch, resume: bool, ready: dict[str, str] | None = None):
        self.batch, self.resume = batch, resume
        self.done: dict[str, Path] = {label: Path(path) for label, path in (ready or {}).items()}
        self.failed: dict[str, StepFailed] = {}

    def folder_of(self, run: BatchRun) -> Path:
        return self.batch.prepared_root / data_setting(run)[0]

    def prepared(self, run: BatchRun, log: Path, progress) -> Path:
        """The folder of ``run``'s prepared data, prepared now if needed; :class:`StepFailed` if it cannot be."""
        label, params = data_setting(run)
        data_dir, folder = self.batch.prepared_root / label, self.batch.folder.data(label)
        if label in self.failed:
            raise self.failed[label]
        if label in self.done or (self.resume and PreparedDir(data_dir).summary.exists()
                                  and folder.html(notebooks.PREPARE).exists()):
            progress(f"{notebooks.PREPARE}: using the prepared data in {data_dir}")
            self.done[label] = data_dir
            return data_dir
        progress(f"{notebooks.PREPARE} -> {data_dir}")
        folder.root.mkdir(parents=True, exist_ok=True)
        write_marker(folder.root, RunReportDir.KIND)
        try:
            _execute(notebooks.PREPARE, folder, {**params, "OUT_DIR": str(data_dir)}, log, progress)
        except StepFailed as e:
            self.failed[label] = e
            raise
        self.done[label] = data_dir
        return data_dir

    def ready(self) -> dict[str, str]:
        """The settings prepared so far, ``{label: folder}``: what a run in another process is given."""
        return {label: str(path) for label, path in self.done.items()}


def summary_line(batch: Batch, run_name: str, status: dict) -> str:
    took = f"{status.get('seconds', 0):.0f} s"
    if status["status"] != "finished":
        return f"FAILED in {status.get('step')} after {took}: {status.get('error')}"
    metrics_path = RunDir(status["run_dir"]).metrics
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    return (f"finished in {took}: pixel accuracy {metrics.get('pixel_accuracy', float('nan')):.4f}, "
            f"mean IoU {metrics.get('mean_iou', float('nan')):.4f} -> {batch.report_dir / run_name}")
