"""Sweeps: run the notebooks with papermill for each named parameter set and compare the runs.

A batch config (YAML) holds shared parameters and a list of named runs that override some of
them; the names are the notebooks' UPPER_CASE parameters::

    name: lr-sweep                 # -> reports/lr-sweep/, artifacts/lr-sweep/
    parameters:                    # shared by every run
      DATA_DIR: data/cityscapes_data
      SIZE: 128
      EPOCHS: 20
    runs:
      - name: resnet34
      - name: resnet34-lr3e-4
        LR: 3.0e-4
      - name: mobilenetv2
        BACKBONE: mobilenetv2

Each run executes ``01_prepare_data`` (once per distinct data setting, then reused),
``02_train`` and ``03_evaluate_export``. Executed notebooks and their HTML, the run's report
(``report.html``) and its log (``run.log``: everything the kernels printed) go to
``reports/<batch>/<run>/``, the model to ``artifacts/<batch>/<run>/``, the prepared data to
``data/prepared/<setting>/``. ``reports/<batch>/index.html`` compares the runs.

While it runs, each run's step and epoch lines (with the time left) are printed. A failing run
is marked failed with its error and the others go on; Ctrl-C or SIGTERM marks the running run
interrupted (so does a batch process that died: its status file names a process that is gone);
``resume=True`` skips finished runs (an interrupted training continues from its last finished
epoch).

``parallel=N`` runs N runs at once on this machine, each in its own process pinned to its own GPU
(``CUDA_VISIBLE_DEVICES``) or, without GPUs, to its share of the CPU threads; ``ray=ADDRESS`` sends
each run to a Ray cluster as a task (one GPU each where the cluster has them). Either way every
data setting is prepared first, here, and the index is written as runs end.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from seglib import notebooks
from seglib.datasets import is_kaggle
from seglib.fsutil import (
    atomic_write_json,
    atomic_write_text,
    pid_alive,
    read_marker,
    remove_owned,
    strangers,
    write_marker,
)
from seglib.layout import BatchDir, PreparedDir, RunDir, RunReportDir

SET_BY_BATCH = {"OUT_DIR", "PREPARED_DIR", "RUN_DIR", "REPORT_DIR", "OVERWRITE"}  # the batch chooses these per run
# Relative paths in a config are relative to the current directory; these words are not paths.
PATH_PARAMETERS = {"DATA_DIR", "ENCODER_WEIGHTS", "INIT_FROM"}
NOT_PATHS = {None, "", "none", "null", "imagenet"}
DISPLAY_ONLY = {"N_EXAMPLES"}  # do not make a data setting distinct
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BatchError(ValueError):
    """A batch config that cannot run (names the file and the problem)."""


MAX_CONFIG_BYTES = 1 << 20


def _no_alias_loader():
    """A safe YAML loader that refuses aliases (``*name``): a few hundred bytes of nested aliases
    expand to gigabytes ("billion laughs"), and a batch config has no use for them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in a batch config, "
                                     f"line {event.start_mark.line + 1}")
            return super().compose_node(parent, index)

    return NoAliasLoader


@dataclass
class Run:
    name: str
    overrides: dict  # what this run sets itself
    parameters: dict  # shared + overrides


@dataclass
class Batch:
    name: str
    runs: list[Run]
    shared: dict
    reports_dir: Path
    artifacts_dir: Path
    prepared_root: Path
    source: str = "<dict>"

    @property
    def report_dir(self) -> Path:
        return self.reports_dir / self.name

    @property
    def folder(self) -> BatchDir:
        return BatchDir(self.report_dir)

    def run_dir(self, run_name: str) -> RunDir:
        return RunDir(self.artifacts_dir / self.name / run_name)

    def run_report(self, run_name: str) -> RunReportDir:
        return self.folder.run(run_name)

    def link(self, path: Path) -> str:
        """``path`` relative to the batch's page, for its links."""
        return html.escape(Path(path).relative_to(self.report_dir).as_posix())


def load_config(config: str | os.PathLike | dict, root: str | os.PathLike = ".") -> Batch:
    """Read and check a batch config (a YAML path or a dict) before anything runs.

    ``root`` is where ``reports/``, ``artifacts/`` and ``data/prepared/`` go unless the config
    names them; relative ``DATA_DIR`` values are taken relative to the current directory.
    """
    import yaml

    if isinstance(config, dict):
        source, raw = "<dict>", config
    else:
        source = str(config)
        try:
            if Path(config).stat().st_size > MAX_CONFIG_BYTES:
                raise BatchError(f"{source}: {Path(config).stat().st_size} bytes; a batch config may have at most "
                                 f"{MAX_CONFIG_BYTES}")
            raw = yaml.load(Path(config).read_text(encoding="utf-8"), Loader=_no_alias_loader())
        except FileNotFoundError:
            raise BatchError(f"{source}: batch config not found") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise BatchError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise BatchError(f"{source}: expected a mapping with 'parameters' and 'runs'")
    unknown_keys = set(raw) - {"name", "parameters", "runs", "reports_dir", "artifacts_dir", "prepared_dir"}
    if unknown_keys:
        raise BatchError(f"{source}: unknown top-level keys {sorted(unknown_keys)} "
                         "(expected name, parameters, runs, reports_dir, artifacts_dir, prepared_dir)")
    name = str(raw.get("name") or (Path(source).stem if source != "<dict>" else "batch"))
    if not _NAME.match(name):
        raise BatchError(f"{source}: batch name {name!r} must be letters, digits, '.', '_' or '-'")

    known = set().union(*(notebooks.parameters(nb) for nb in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE)))
    shared = dict(raw.get("parameters") or {})
    _check_keys(shared, known, f"{source}: parameters")
    runs_raw = raw.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise BatchError(f"{source}: 'runs' must be a non-empty list of runs, each with a 'name'")
    runs, seen = [], set()
    for i, entry in enumerate(runs_raw):
        if not isinstance(entry, dict) or "name" not in entry:
            raise BatchError(f"{source}: run #{i + 1} needs a 'name'")
        run_name = str(entry["name"])
        if not _NAME.match(run_name):
            raise BatchError(f"{source}: run name {run_name!r} must be letters, digits, '.', '_' or '-'")
        if run_name in seen:
            raise BatchError(f"{source}: run name {run_name!r} appears twice")
        seen.add(run_name)
        overrides = {k: v for k, v in entry.items() if k != "name"}
        _check_keys(overrides, known, f"{source}: run {run_name!r}")
        parameters = {**shared, **overrides}
        for key in PATH_PARAMETERS & parameters.keys():
            value = parameters[key]
            if not (is_kaggle(value) or (value.lower() if isinstance(value, str) else value) in NOT_PATHS):
                parameters[key] = str(Path(value).resolve())
        if ("DATA_DIR" in parameters and not is_kaggle(parameters["DATA_DIR"])
                and not Path(parameters["DATA_DIR"]).exists() and "SYNTH_COUNT" not in parameters):
            raise BatchError(f"{source}: run {run_name!r}: DATA_DIR {parameters['DATA_DIR']} does not exist "
                             "(set SYNTH_COUNT to generate synthetic pairs there instead)")
        runs.append(Run(run_name, overrides, parameters))
    root = Path(root)
    return Batch(name, runs, shared,
                 reports_dir=Path(raw.get("reports_dir") or root / "reports").resolve(),
                 artifacts_dir=Path(raw.get("artifacts_dir") or root / "artifacts").resolve(),
                 prepared_root=Path(raw.get("prepared_dir") or root / "data" / "prepared").resolve(),
                 source=source)


def _check_keys(values: dict, known: set, where: str) -> None:
    reserved = SET_BY_BATCH & values.keys()
    if reserved:
        raise BatchError(f"{where}: {sorted(reserved)} are chosen by the batch for each run; remove them")
    unknown = set(values) - known
    if unknown:
        raise BatchError(
            f"{where}: unknown parameters {sorted(unknown)}; the notebooks take {sorted(known - SET_BY_BATCH)}"
        )


def data_setting(run: Run) -> tuple[str, dict]:
    """(folder name, parameters) of the prepared dataset a run needs: runs with the same data
    parameters share one."""
    defaults = notebooks.parameters(notebooks.PREPARE)
    values = {k: run.parameters.get(k, v) for k, v in defaults.items() if k not in SET_BY_BATCH | DISPLAY_ONLY}
    if "DATA_DIR" not in run.parameters and not is_kaggle(values["DATA_DIR"]):  # relative to notebooks/
        values["DATA_DIR"] = str((notebooks.NOTEBOOKS / values["DATA_DIR"]).resolve())
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    label = f"{Path(values['DATA_DIR']).name}-k{values.get('CLUSTERS')}-{values.get('SIZE')}px-{digest}"
    return label, {k: v for k, v in run.parameters.items() if k in defaults} | values


def run_batch(config: str | os.PathLike | dict, root: str | os.PathLike = ".", only: list[str] | None = None,
              resume: bool = False, overwrite: bool = False, echo=print, parallel: int = 1,
              ray: str | None = None) -> Path:
    """Run a batch (see the module docstring) and return the path of its ``index.html``.

    Runs that finished earlier are skipped with ``resume`` and run again with ``overwrite``;
    without either the batch refuses to start. Folders seglib did not write are never touched.
    ``parallel``: runs at once on this machine; ``ray``: a Ray cluster's address (or ``auto``)."""
    from seglib.train import format_seconds

    batch = load_config(config, root)
    names = [r.name for r in batch.runs]
    for name in only or []:
        if name not in names:
            raise BatchError(f"{batch.source}: --only {name!r} is not a run of this batch (runs: {names})")
    selected = [r for r in batch.runs if not only or r.name in only]
    if parallel < 1:
        raise BatchError(f"--parallel must be at least 1, got {parallel}")
    _check_run_folders(batch, selected, resume, overwrite)
    batch.report_dir.mkdir(parents=True, exist_ok=True)
    write_marker(batch.report_dir, BatchDir.KIND)
    _save_config(batch)
    if parallel > 1 or ray:
        return _run_spread(batch, selected, resume, echo, parallel, ray)
    prepared: dict[str, tuple] = {}  # data setting -> (prepared dir, _StepFailed or None)
    index, took = None, []
    for i, run in enumerate(selected, 1):
        tag = f"[{i}/{len(selected)}] {run.name}"
        if resume and read_status(batch, run.name).get("status") == "finished":
            echo(f"{tag}: finished earlier, skipped (--resume)")
            continue
        left = len(selected) - i + 1
        eta = f" · batch ETA about {format_seconds(sum(took) / len(took) * left)}" if took else ""
        echo(f"{tag}: running ({_describe(run.overrides)}){eta} · log {batch.run_report(run.name).log}")
        try:
            status = _run_one(batch, run, prepared, resume, lambda line, tag=tag: echo(f"{tag}: {line}"))
        except KeyboardInterrupt:
            write_index(batch)
            echo(f"{tag}: interrupted; run the batch again with --resume to continue where it stopped")
            raise
        took.append(status.get("seconds", 0))
        echo(f"{tag}: {_summary_line(batch, run.name, status)}")
        index = write_index(batch)  # after every run, so the page shows progress
    index = index or write_index(batch)  # every run was skipped: still (re)write the page
    echo(f"batch {batch.name}: {index}")
    return index


def _run_spread(batch: Batch, selected: list[Run], resume: bool, echo, parallel: int, ray: str | None) -> Path:
    """Run the selected runs N at a time in processes here, or as Ray tasks: data first, here."""
    todo = []
    for run in selected:
        if resume and read_status(batch, run.name).get("status") == "finished":
            echo(f"{run.name}: finished earlier, skipped (--resume)")
        else:
            todo.append(run)
    prepared: dict[str, tuple] = {}
    for run in todo:  # every data setting once, before the runs spread out
        label, _ = data_setting(run)
        if label not in prepared:
            batch.folder.data(label).root.mkdir(parents=True, exist_ok=True)
            _prepared_for(batch, run, prepared, resume, batch.folder.data(label).log,
                          lambda line, label=label: echo(f"[data {label}] {line}"))
    ready = {label: (str(path), None) for label, (path, failure) in prepared.items() if failure is None}
    for run in [r for r in todo if data_setting(r)[0] not in ready]:  # its data failed: marked failed here
        todo.remove(run)
        status = _run_one(batch, run, prepared, resume, lambda line: None)
        echo(f"{run.name}: {_summary_line(batch, run.name, status)}")
    placements = run_placements(parallel) if not ray else [{}]
    where = f"Ray cluster {ray}" if ray else f"{parallel} processes ({placements[0].get('pinned', '')} each)"
    echo(f"batch {batch.name}: {len(todo)} runs on {where}")
    spread = _ray_runs if ray else _process_runs
    try:
        for name, status in spread(batch, todo, ready, resume, placements, ray):
            echo(f"{name}: {_summary_line(batch, name, status)}")
            write_index(batch)
    except KeyboardInterrupt:
        write_index(batch)
        echo(f"batch {batch.name}: interrupted; run it again with --resume to continue where it stopped")
        raise
    index = write_index(batch)
    echo(f"batch {batch.name}: {index}")
    return index


def run_placements(parallel: int, gpus: int | None = None) -> list[dict]:
    """The environment of each of ``parallel`` run processes: its own GPU where there are GPUs (runs
    share them round-robin when there are fewer, each then taking GPU memory as it needs it instead
    of TensorFlow's all at start, which would leave the other run none), else its share of the CPU
    threads. ``gpus``: the count of GPUs (default: those TensorFlow sees)."""
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        shared = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if parallel > gpus else {}
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus), **shared,
                 "pinned": f"GPU {i % gpus}" + (" (shared)" if shared else "")} for i in range(parallel)]
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return [{"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": str(threads),
             "pinned": f"{threads} CPU threads"} for _ in range(parallel)]


def _claim_placement(slots, placements: list[dict]) -> None:
    """A run process's initializer: take a free placement for the process's lifetime."""
    placement = placements[slots.get()]
    os.environ.update({k: v for k, v in placement.items() if k != "pinned"})
    os.environ["SEGLIB_PLACEMENT"] = placement["pinned"]


def run_elsewhere(batch: Batch, name: str, ready: dict, resume: bool) -> dict:
    """One run of a batch in another process (a run process, a Ray worker): its data is prepared."""
    run = next(r for r in batch.runs if r.name == name)
    prepared = {label: (Path(path), None) for label, (path, _) in ready.items()}
    where = os.environ.get("SEGLIB_PLACEMENT") or f"{socket.gethostname()}"
    return _run_one(batch, run, prepared, resume, lambda line: print(f"{name} [{where}]: {line}", flush=True))


def _process_runs(batch: Batch, todo: list[Run], ready: dict, resume: bool, placements: list[dict], ray=None):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # a clean process: its TensorFlow sees only its placement
    slots = context.Queue()
    for i in range(len(placements)):
        slots.put(i)
    with ProcessPoolExecutor(len(placements), mp_context=context, initializer=_claim_placement,
                             initargs=(slots, placements)) as pool:
        futures = {pool.submit(run_elsewhere, batch, run.name, ready, resume): run.name for run in todo}
        for future in as_completed(futures):
            yield futures[future], _outcome(batch, futures[future], future.exception(), future)


def _ray_runs(batch: Batch, todo: list[Run], ready: dict, resume: bool, placements=None, ray_address: str = "auto"):
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'seglib[ray]' (make install installs it)") from None
    if not ray.is_initialized():  # "local" starts a Ray instance on this machine
        ray.init(address=None if ray_address == "local" else ray_address, log_to_driver=True)
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


def _check_run_folders(batch: Batch, selected: list[Run], resume: bool, overwrite: bool) -> None:
    """Before anything runs: every run's folders are new or seglib's own, and no finished run is
    run again unless asked to (``resume`` skips them, ``overwrite`` replaces them)."""
    from seglib.train import run_state

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


def _run_one(batch: Batch, run: Run, prepared: dict, resume: bool, progress) -> dict:
    from seglib.train import run_state

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
              "effective_parameters": effective_parameters(run), "run_dir": str(run_dir.root), "started": _now(),
              "pid": os.getpid(), "host": socket.gethostname(),
              **({"placement": os.environ["SEGLIB_PLACEMENT"]} if os.environ.get("SEGLIB_PLACEMENT") else {})}
    atomic_write_json(folder.status, status)
    started = time.perf_counter()
    step = notebooks.PREPARE
    log = folder.log
    try:
        data_dir, failure = _prepared_for(batch, run, prepared, resume, log, progress)
        status["prepared_dir"] = str(data_dir)
        if failure:
            raise failure
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
    except _StepFailed as e:
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
    status.update(finished=_now(), seconds=round(time.perf_counter() - started, 1))
    atomic_write_json(folder.status, status)


def effective_parameters(run: Run) -> dict:
    """Every notebook parameter this run uses: the notebooks' defaults with the run's values over
    them (the paths the batch chooses left out)."""
    merged = {}
    for name in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE):
        merged |= {k: v for k, v in notebooks.parameters(name).items() if k not in SET_BY_BATCH}
    return json.loads(json.dumps({**merged, **run.parameters}, default=str))


def _training_finished(before: dict, values: dict, run_dir: RunDir, folder: RunReportDir) -> bool:
    """On resume: did this run's training already finish, with the same training parameters?"""
    return (before.get("train_parameters") == json.loads(json.dumps(values, default=str))
            and run_dir.info.exists() and run_dir.model.exists()
            and not run_dir.backup.exists() and folder.html(notebooks.TRAIN).exists())


class _StepFailed(Exception):
    def __init__(self, step: str, error: str, notebook: Path | None):
        super().__init__(error)
        self.step, self.error, self.notebook = step, error, notebook


def _execute(step: str, folder: RunReportDir, parameters: dict, log: Path, progress) -> Path:
    """Execute one notebook into ``folder`` and render it (its output to ``log``, progress lines to
    ``progress``); a failing cell becomes ``_StepFailed`` with the partly executed notebook
    rendered beside it."""
    import papermill as pm

    from seglib.report import render_html

    executed = folder.notebook(step)
    try:
        notebooks.execute(step, executed, parameters, log=log, on_progress=progress)
    except pm.PapermillExecutionError as e:
        if executed.exists():
            render_html(executed, folder.html(step))
        raise _StepFailed(step, f"{e.ename}: {e.evalue}", executed if executed.exists() else None) from e
    render_html(executed, folder.html(step))
    return executed


def _prepared_for(batch: Batch, run: Run, prepared: dict, resume: bool, log: Path,
                  progress) -> tuple[Path, _StepFailed | None]:
    """The prepared dataset of a run's data setting: prepared once per batch invocation (or
    reused from an earlier one with ``resume``); a failure is remembered for the other runs."""
    label, params = data_setting(run)
    data_dir = batch.prepared_root / label
    folder = batch.folder.data(label)
    if label in prepared or (resume and PreparedDir(data_dir).summary.exists()
                             and folder.html(notebooks.PREPARE).exists()):
        progress(f"{notebooks.PREPARE}: using the prepared data in {data_dir}")
        return prepared.setdefault(label, (data_dir, None))
    progress(f"{notebooks.PREPARE} -> {data_dir}")
    try:
        folder.root.mkdir(parents=True, exist_ok=True)
        write_marker(folder.root, RunReportDir.KIND)
        _execute(notebooks.PREPARE, folder, {**params, "OUT_DIR": str(data_dir)}, log, progress)
        prepared[label] = (data_dir, None)
    except _StepFailed as e:
        prepared[label] = (data_dir, e)
    return prepared[label]


def read_status(batch: Batch, run_name: str) -> dict:
    """The run's ``status.json``; a run still marked running whose batch process is gone (killed,
    or the machine restarted) reads as interrupted."""
    path = batch.run_report(run_name).status
    status = json.loads(path.read_text()) if path.exists() else {}
    if status.get("status") == "running" and status.get("host") == socket.gethostname() \
            and not pid_alive(status.get("pid")):
        status.update(status="interrupted", error="the batch process stopped while this run was running")
    return status


def unfinished_runs(batch: Batch, only: list[str] | None = None) -> list[str]:
    """Names of the (selected) runs whose last status is not finished."""
    return [r.name for r in batch.runs if (not only or r.name in only)
            and read_status(batch, r.name).get("status") != "finished"]


def _save_config(batch: Batch) -> None:
    import yaml

    config = {"name": batch.name, "parameters": batch.shared,
              "runs": [{"name": r.name, **r.overrides} for r in batch.runs]}
    atomic_write_text(batch.folder.config, yaml.safe_dump(config, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# The comparison page


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
            record[key] = json.loads(path.read_text()) if path.exists() and status else {}
        record["history"] = run_dir.history
        rows.append(record)
    return rows


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
            "pixel acc": r["metrics"].get("pixel_accuracy"),
            "mean IoU": r["metrics"].get("mean_iou"),
            "mean Dice": r["metrics"].get("mean_dice"),
            "epochs": r["training"].get("epochs_run"),
            "stop reason": r["training"].get("stop_reason"),
            "train time s": r["training"].get("seconds_total"),
            "int8 MB": int8["file_bytes"] / 1e6 if int8 else None,
            "int8 ms": int8.get("latency_ms"),
            "status": r["status"],
        })
    return pd.DataFrame.from_records(records)


def best_run(rows: list[dict]) -> str | None:
    """The finished run with the highest test mean IoU."""
    scored = [(r["metrics"]["mean_iou"], r["run"]) for r in rows
              if r["status"] == "finished" and isinstance(r["metrics"].get("mean_iou"), float)
              and r["metrics"]["mean_iou"] == r["metrics"]["mean_iou"]]
    return max(scored)[1] if scored else None


def _cell(value) -> str:
    """A table cell with a sort key: numbers sort as numbers, missing values show a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return '<td data-sort="">–</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = html.escape(str(value))
        return f'<td data-sort="{text}">{text}</td>'
    return (
        f'<td data-sort="{value}">{value:.4g}</td>'
        if isinstance(value, float)
        else f'<td data-sort="{value}">{value}</td>'
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
    from seglib.figures import runs_curves
    from seglib.report import figure_png

    rows = run_results(batch)
    table = results_table(rows)
    best = best_run(rows)
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
    runs_html = f'<table class="runs sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    names = sorted({k for r in rows for k in r["parameters"]})
    param_rows = []
    for name in names:
        values = [json.dumps(r["parameters"].get(name), default=str) for r in rows]
        cls = ' class="differs"' if len(set(values)) > 1 else ""
        param_rows.append(f"<tr{cls}><th>{html.escape(name)}</th>"
                          + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    params_html = ('<table class="params"><thead><tr><th>parameter</th>'
                   + "".join(f"<th>{html.escape(r['run'])}</th>" for r in rows)
                   + f"</tr></thead><tbody>{''.join(param_rows)}</tbody></table>")

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
    page = _INDEX.format(
        name=html.escape(batch.name), updated=_now(), table=runs_html, params=params_html,
        curves=figure_png(runs_curves({r["run"]: r["history"] for r in rows})),
        counts=", ".join(f"{n} {s}" for s, n in counts.items() if n),
        best=f"Best test mean IoU: <b>{html.escape(best)}</b>. " if best else "",
        runtime=f" (TFLite runtime: {html.escape(', '.join(runtimes))})" if runtimes else "",
        failures=f"<h2>Failed or interrupted</h2><ul>{''.join(notes)}</ul>" if notes else "",
        data=f"<h2>Prepared data</h2><ul>{data_links}</ul>" if data_links else "")
    atomic_write_text(batch.folder.index, page)
    return batch.folder.index


def _summary_line(batch: Batch, run_name: str, status: dict) -> str:
    took = f"{status.get('seconds', 0):.0f} s"
    if status["status"] != "finished":
        return f"FAILED in {status.get('step')} after {took}: {status.get('error')}"
    metrics_path = RunDir(status["run_dir"]).metrics
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return (f"finished in {took}: pixel accuracy {metrics.get('pixel_accuracy', float('nan')):.4f}, "
            f"mean IoU {metrics.get('mean_iou', float('nan')):.4f} -> {batch.report_dir / run_name}")


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "shared parameters"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seglib batch {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
thead th {{ background: #f3f3f3; }}
table.sortable thead th {{ cursor: pointer; user-select: none; }}
table.sortable thead th[data-order="asc"]::after {{ content: " ▲"; }}
table.sortable thead th[data-order="desc"]::after {{ content: " ▼"; }}
table.runs td:first-child {{ text-align: left; font-weight: 600; white-space: nowrap; }}
table.runs td:last-child {{ white-space: nowrap; text-align: left; }}
tr.best td {{ background: #e8f6ec; }}
.star {{ color: #11772d; font-size: 12px; }}
table.params th {{ text-align: left; }} table.params td {{ text-align: left; font-family: monospace; }}
table.params tr.differs {{ background: #fff4ce; }}
.finished {{ color: #11772d; font-weight: 600; }} .failed {{ color: #b00020; font-weight: 600; }}
.interrupted {{ color: #b35c00; font-weight: 600; }} .running, .not-run {{ color: #8a6d00; }}
code {{ background: #f6f6f6; padding: 1px 4px; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>Batch <code>{name}</code></h1>
<p>{counts} · updated {updated}. {best}Metrics on the test split; int8 latency: one image, median, on the
machine that ran the batch{runtime}. Click a column title to sort.</p>
{table}
{failures}
<h2>Training and validation curves</h2>
{curves}
<h2>Parameters of each run</h2>
<p>Every parameter the notebooks ran with, defaults included; rows that differ between runs are highlighted.</p>
{params}
{data}
<script>
document.querySelectorAll("table.sortable thead th").forEach((th, col) => th.addEventListener("click", () => {{
  const body = th.closest("table").tBodies[0];
  const asc = th.dataset.order !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? "asc" : "desc";
  const key = row => {{
    const cell = row.cells[col];
    const text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
    const number = parseFloat(text);
    return text === "" ? null : isNaN(number) ? text : number;
  }};
  const rows = Array.from(body.rows).sort((a, b) => {{
    const x = key(a), y = key(b);
    if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;  // missing values last
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
  }});
  rows.forEach(row => body.appendChild(row));
}}));
</script>
</body></html>
"""
