"""A batch: the notebooks run with papermill for each named parameter set of a sweep file
(:mod:`.sweep`, docs/batches.md), one after the other here, in N run processes (each pinned to a
GPU or its share of the CPU threads) or as tasks on a Ray cluster, and compared on
``reports/<batch>/index.html`` (:mod:`.index`).

Each run executes ``01_prepare_data`` (once per distinct data setting, then reused), ``02_train``
and ``03_evaluate_export`` (:mod:`.runner`). A failing run is marked failed and the others go on;
Ctrl-C or SIGTERM marks the running run interrupted; ``resume=True`` skips finished runs (an
interrupted training continues from its last finished epoch).
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from seglib.fsutil import atomic_write_json, read_marker, strangers, write_marker
from seglib.layout import BatchDir, RunReportDir
from seglib.parameters import checked_values
from seglib.runs.index import write_index
from seglib.runs.runner import PreparedData, StepFailed, run_one, summary_line
from seglib.runs.sweep import (
    Batch,
    BatchConfig,
    BatchError,
    BatchRun,
    data_setting,
    load_config,
    read_status,
    save_config,
)
from seglib.training.callbacks import format_seconds
from seglib.training.checks import run_state


def run_batch(config: str | os.PathLike | dict, root: str | os.PathLike = ".", only: list[str] | None = None,
              resume: bool = False, overwrite: bool = False, echo=print, parallel: int = 1,
              ray: str | None = None, wait_timeout: float = 120) -> Path:
    """Run a batch (see the module docstring) and return the path of its ``index.html``.

    Runs that finished earlier are skipped with ``resume`` and run again with ``overwrite``;
    without either the batch refuses to start. Folders seglib did not write are never touched.
    ``parallel``: runs at once on this machine; ``ray``: a Ray cluster's address (or ``auto``), waited
    for at most ``wait_timeout`` seconds.

    Example:
        ``index = run_batch("sweeps/losses.yaml", resume=True)``
    """
    batch = load_config(config, root)
    names = [r.name for r in batch.runs]
    for name in only or []:
        if name not in names:
            raise BatchError(f"{batch.source}: --only {name!r} is not a run of this batch (runs: {names})")
    selected = [r for r in batch.runs if not only or r.name in only]
    checked_values(BatchConfig, parallel=parallel, wait_timeout=wait_timeout)
    if ray:
        check_ray_address(ray, wait_timeout)
    _check_run_folders(batch, selected, resume, overwrite)
    batch.report_dir.mkdir(parents=True, exist_ok=True)
    write_marker(batch.report_dir, BatchDir.KIND)
    save_config(batch)
    tags = {run.name: f"[{i}/{len(selected)}] {run.name}" for i, run in enumerate(selected, 1)}
    todo = []
    for run in selected:  # the same for every way of running: finished runs are skipped with --resume
        if resume and read_status(batch, run.name).get("status") == "finished":
            echo(f"{tags[run.name]}: finished earlier, skipped (--resume)")
        else:
            todo.append(run)
    data = PreparedData(batch, resume)
    if parallel > 1 or ray:
        outcomes = spread_runs(batch, todo, data, resume, echo, parallel, ray, wait_timeout)
    else:
        outcomes = serial_runs(batch, todo, data, resume, echo, tags)
    index = None
    try:
        for name, status in outcomes:  # one loop for serial, parallel and Ray batches
            echo(f"{tags[name]}: {summary_line(batch, name, status)}")
            index = write_index(batch)  # after every run, so the page shows progress
    except KeyboardInterrupt:
        write_index(batch)
        echo(f"batch {batch.name}: interrupted; run the batch again with --resume to continue where it stopped")
        raise
    index = index or write_index(batch)  # every run skipped (--resume): still (re)write the page
    echo(f"batch {batch.name}: {index}")
    return index


def serial_runs(batch: Batch, todo: list[BatchRun], data: PreparedData, resume: bool, echo, tags: dict):
    """Each run in this process in turn, its data prepared when first needed: ``(name, status)`` each."""
    took = []
    for i, run in enumerate(todo):
        tag = tags[run.name]
        eta = f" · batch ETA about {format_seconds(sum(took) / len(took) * (len(todo) - i))}" if took else ""
        echo(f"{tag}: running ({_describe(run.overrides)}){eta} · log {batch.run_report(run.name).log}")
        status = run_one(batch, run, data, resume, lambda line, tag=tag: echo(f"{tag}: {line}"))
        took.append(status.get("seconds", 0))
        yield run.name, status


def _check_run_folders(batch: Batch, selected: list[BatchRun], resume: bool, overwrite: bool) -> None:
    """Before anything runs: every run's folders are new or seglib's own, and no finished run is
    run again unless asked to (``resume`` skips them, ``overwrite`` replaces them)."""
    finished = []
    for run in selected:
        folder = batch.run_report(run.name)
        if folder.root.exists() and any(folder.root.iterdir()):
            marker = read_marker(folder.root)
            if marker is None or marker.get("kind") != RunReportDir.KIND:
                raise BatchError(f"{batch.source}: run {run.name!r}: {folder.root} holds files seglib did not write; "
                                 "choose another reports_dir or batch name")
            found = strangers(folder.root, RunReportDir.OWNED)
            if found:
                raise BatchError(f"{batch.source}: run {run.name!r}: {folder.root} holds files seglib did not write "
                                 f"({', '.join(found[:5])}); move them away first")
        state = run_state(batch.run_dir(run.name).root)
        if state == "foreign":
            raise BatchError(f"{batch.source}: run {run.name!r}: {batch.run_dir(run.name).root} holds files and is not "
                             "a seglib run; choose another artifacts_dir or batch name")
        if not resume and not overwrite and read_status(batch, run.name).get("status") == "finished":
            finished.append(run.name)
    if finished:
        raise BatchError(f"{batch.source}: runs {', '.join(finished)} finished earlier: --resume keeps them (and runs "
                         "the others), --overwrite runs them again")


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "shared parameters"


def spread_runs(batch: Batch, todo: list[BatchRun], data: PreparedData, resume: bool, echo, parallel: int,
                ray: str | None, wait_timeout: float = 120):
    """The runs N at a time in processes here, or as Ray tasks, each data setting prepared here first:
    ``(name, status)`` each, as they finish."""
    waiting = []
    for run in todo:  # every data setting once, before the runs spread out
        label = data_setting(run)[0]
        try:
            if label not in data.done:
                tag = f"[data {label}]"
                data.prepared(run, batch.folder.data(label).log, lambda line, tag=tag: echo(f"{tag} {line}"))
            waiting.append(run)
        except StepFailed:  # its data failed: the run is marked failed here
            yield run.name, run_one(batch, run, data, resume, lambda line: None)
    placements = run_placements(parallel) if not ray else [{}]
    where = f"Ray cluster {ray}" if ray else f"{parallel} processes ({placements[0].get('pinned', '')} each)"
    echo(f"batch {batch.name}: {len(waiting)} runs on {where}")
    if ray:
        yield from _ray_runs(batch, waiting, data.ready(), resume, ray, wait_timeout)
    else:
        yield from _process_runs(batch, waiting, data.ready(), resume, placements)


def run_placements(parallel: int, gpus: int | None = None) -> list[dict]:
    """The environment of each of ``parallel`` run processes: its own GPU where there are GPUs (runs
    share them round-robin when there are fewer, each then taking GPU memory as it needs it instead
    of TensorFlow's all at start, which would leave the other run none), else its share of the CPU
    threads. ``gpus``: the count of GPUs (default: :func:`gpu_count`)."""
    gpus = gpu_count() if gpus is None else gpus
    if gpus:
        shared = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if parallel > gpus else {}
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus), **shared,
                 "pinned": f"GPU {i % gpus}" + (" (shared)" if shared else "")} for i in range(parallel)]
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return [{"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": str(threads),
             "pinned": f"{threads} CPU threads"} for _ in range(parallel)]


def gpu_count() -> int:
    """The GPUs a run process will see, counted without starting TensorFlow in the batch process:
    ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA driver's list; a Mac's Metal GPU is one."""
    import subprocess
    from importlib.metadata import distributions

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return sum(line.startswith("GPU ") for line in listed.splitlines())
    except (OSError, subprocess.TimeoutExpired):
        return int(sys.platform == "darwin" and any(d.metadata["Name"] == "tensorflow-metal" for d in distributions()))


def run_elsewhere(batch: Batch, name: str, ready: dict[str, str], resume: bool, placement: dict | None = None) -> dict:
    """One run of a batch in another process (a fresh run process, a Ray worker), its data prepared
    (``ready``). ``placement`` (:func:`run_placements`): environment variables TensorFlow reads when it
    starts in this process (the GPU it sees, its threads), and what they pin the run to."""
    placement = placement or {}
    os.environ.update({k: v for k, v in placement.items() if k != "pinned"})  # before TensorFlow starts here
    run = next(r for r in batch.runs if r.name == name)
    where = placement.get("pinned") or socket.gethostname()
    return run_one(batch, run, PreparedData(batch, resume, ready), resume,
                   lambda line: print(f"{name} [{where}]: {line}", flush=True), placement.get("pinned", ""))


def _process_runs(batch: Batch, todo: list[BatchRun], ready: dict, resume: bool, placements: list[dict]):
    """Each run in a fresh process (its TensorFlow sees only its placement), at most one per placement."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    free, waiting, running = list(range(len(placements))), list(todo), {}
    with ProcessPoolExecutor(len(placements), mp_context=context, max_tasks_per_child=1) as pool:
        while waiting or running:
            while waiting and free:
                run, slot = waiting.pop(0), free.pop(0)
                running[pool.submit(run_elsewhere, batch, run.name, ready, resume, placements[slot])] = (run.name, slot)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name, slot = running.pop(future)
                free.append(slot)
                yield name, _outcome(batch, name, future.exception(), future)


def check_ray_address(address: str, timeout: float) -> None:
    """A ``HOST:PORT`` address must answer before anything runs (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host, int(port)), timeout=min(10, timeout)).close()
        except OSError as exc:
            raise BatchError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _ray_runs(batch: Batch, todo: list[BatchRun], ready: dict, resume: bool, ray_address: str = "auto",
              wait_timeout: float = 120):
    from seglib.training.distribute import bounded_wait

    if not todo:  # nothing to send (e.g. every run's data failed): no cluster to wait for
        return
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'seglib[ray]' (make install installs it)") from None
    if not ray.is_initialized():  # "local" starts a Ray instance on this machine
        bounded_wait(f"the Ray cluster {ray_address}", lambda: ray.init(
            address=None if ray_address == "local" else ray_address, log_to_driver=True), wait_timeout)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(run_elsewhere)
    refs = {remote.remote(batch, run.name, ready, resume): run.name for run in todo}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            yield refs[done[0]], ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - a lost task or worker: the run is marked failed
            yield refs[done[0]], _outcome(batch, refs[done[0]], exc)


def _outcome(batch: Batch, name: str, error: BaseException | None, future=None) -> dict:
    """A run's status after its process ended: what it wrote, or failed when the process died first."""
    if error is None:
        return future.result()
    if isinstance(error, KeyboardInterrupt):
        raise KeyboardInterrupt
    status = read_status(batch, name)
    if status.get("status") in (None, "running", "interrupted"):
        status.update(run=name, status="failed", error=f"the run's process failed: {type(error).__name__}: {error}")
        batch.run_report(name).root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(batch.run_report(name).status, status)
    return status
