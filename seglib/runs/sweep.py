"""The sweep file: a batch config (YAML) read and checked before anything runs, the runs it names,
the prepared-data setting each needs, and each run's ``status.json`` as the batch left it."""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from seglib.data.datasets import is_kaggle
from seglib.fsutil import TooBig, atomic_write_text, pid_alive, read_bounded, read_json
from seglib.layout import ARTIFACTS, PREPARED, REPORTS, BatchDir, RunDir, RunReportDir
from seglib.parameters import NONE_WORDS, Parameters, checked_value, field_of, notebook_defaults, param
from seglib.runs import notebooks

SET_BY_BATCH = {"OUT_DIR", "PREPARED_DIR", "RUN_DIR", "REPORT_DIR", "OVERWRITE"}  # the batch chooses these per run
# Relative paths in a config are relative to the current directory; these words are not paths.
PATH_PARAMETERS = {"DATA_DIR", "ENCODER_WEIGHTS", "INIT_FROM", "KAGGLE_CACHE"}
NOT_PATHS = {None, "imagenet", *NONE_WORDS}
NOT_DATA = {"EXAMPLES", "WORKERS", "KAGGLE_CACHE"}  # change how data is shown or made, not the data: one setting
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BatchConfig(Parameters):
    """How ``python -m seglib batch`` runs a sweep file."""

    config: str = param(help="YAML: name, parameters (shared), runs (each a name plus overrides)")
    only: str = param("", "run only these runs, comma-separated (or the flag repeated)", repeat=",", metavar="NAME")
    resume: bool = param(False, "skip runs that finished; continue interrupted training")
    overwrite: bool = param(False, "run again runs that finished earlier")
    root: str = param(".", "folder that gets reports/, artifacts/ and data/prepared/")
    parallel: int = param(1, "runs at once on this machine, each on its own GPU or its share of the CPU threads",
                          min=1, max=64)
    ray: str | None = param(None, "run each run as a task on a Ray cluster (ADDRESS, auto, or local to start one "
                                  "here)", metavar="ADDRESS")
    wait_timeout: float = param(120, "seconds to wait for the Ray cluster", above=0, max=7 * 86_400)


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
class BatchRun:
    """One run of a sweep file: its name, what it sets itself and every parameter it uses."""

    name: str
    overrides: dict  # what this run sets itself
    parameters: dict  # shared + overrides


@dataclass
class Batch:
    name: str
    runs: list[BatchRun]
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
    source, raw = _read_config(config)
    if not isinstance(raw, dict):
        raise BatchError(f"{source}: expected a mapping with 'parameters' and 'runs'")
    unknown_keys = set(raw) - {"name", "parameters", "runs", "reports_dir", "artifacts_dir", "prepared_dir"}
    if unknown_keys:
        raise BatchError(f"{source}: unknown top-level keys {sorted(unknown_keys)} "
                         "(expected name, parameters, runs, reports_dir, artifacts_dir, prepared_dir)")
    name = str(raw.get("name") or (Path(source).stem if source != "<dict>" else "batch"))
    if not _NAME.match(name):
        raise BatchError(f"{source}: batch name {name!r} must be letters, digits, '.', '_' or '-'")
    shared = dict(raw.get("parameters") or {})
    _check_parameters(shared, f"{source}: parameters")
    root = Path(root)
    return Batch(name, _batch_runs(source, raw.get("runs"), shared), shared,
                 reports_dir=Path(raw.get("reports_dir") or root / REPORTS).resolve(),
                 artifacts_dir=Path(raw.get("artifacts_dir") or root / ARTIFACTS).resolve(),
                 prepared_root=Path(raw.get("prepared_dir") or root / PREPARED).resolve(),
                 source=source)


def _read_config(config: str | os.PathLike | dict) -> tuple[str, object]:
    """``(source, the parsed YAML)`` of a config file (bounded in size, no aliases), or of a dict."""
    import yaml

    if isinstance(config, dict):
        return "<dict>", config
    source = str(config)
    try:
        text = read_bounded(config, MAX_CONFIG_BYTES).decode("utf-8")
        return source, yaml.load(text, Loader=_no_alias_loader())
    except TooBig:
        raise BatchError(f"{source}: more than {MAX_CONFIG_BYTES} bytes; a batch config may have at most "
                         f"{MAX_CONFIG_BYTES}") from None
    except FileNotFoundError:
        raise BatchError(f"{source}: batch config not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BatchError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def _batch_runs(source: str, runs_raw, shared: dict) -> list[BatchRun]:
    """The config's runs, each named once and checked, with the shared parameters under its own and
    its paths made absolute."""
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
        _check_parameters(overrides, f"{source}: run {run_name!r}")
        parameters = {**shared, **overrides}
        for key in PATH_PARAMETERS & parameters.keys():
            value = parameters[key]
            if not (is_kaggle(value) or (value.lower() if isinstance(value, str) else value) in NOT_PATHS):
                parameters[key] = str(Path(value).resolve())
        if ("DATA_DIR" in parameters and not is_kaggle(parameters["DATA_DIR"])
                and not Path(parameters["DATA_DIR"]).exists() and "SYNTH_COUNT" not in parameters):
            raise BatchError(f"{source}: run {run_name!r}: DATA_DIR {parameters['DATA_DIR']} does not exist "
                             "(set SYNTH_COUNT to generate synthetic pairs there instead)")
        runs.append(BatchRun(run_name, overrides, parameters))
    return runs


def _check_parameters(values: dict, where: str) -> None:
    """Every key a notebook parameter the batch does not choose itself, every value of its type and
    in its range (:mod:`seglib.parameters`): a bad sweep fails before anything runs."""
    reserved = SET_BY_BATCH & values.keys()
    if reserved:
        raise BatchError(f"{where}: {sorted(reserved)} are chosen by the batch for each run; remove them")
    configs = tuple(c for nb in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE)
                    for c in notebooks.parameter_configs(nb))
    unknown = [key for key in values if field_of(configs, key) is None]
    if unknown:
        known = sorted(set(notebook_defaults(*configs)) - SET_BY_BATCH)
        raise BatchError(f"{where}: unknown parameters {sorted(unknown)}; the notebooks take {known}")
    for key, value in values.items():
        try:
            values[key] = checked_value(field_of(configs, key), value)
        except ValueError as exc:
            raise BatchError(f"{where}: {exc}") from None


def data_setting(run: BatchRun) -> tuple[str, dict]:
    """(folder name, parameters) of the prepared dataset a run needs: runs with the same data
    parameters share one."""
    defaults = notebooks.parameters(notebooks.PREPARE)
    values = {k: run.parameters.get(k, v) for k, v in defaults.items() if k not in SET_BY_BATCH | NOT_DATA}
    if "DATA_DIR" not in run.parameters and not is_kaggle(values["DATA_DIR"]):  # relative to notebooks/
        values["DATA_DIR"] = str((notebooks.NOTEBOOKS / values["DATA_DIR"]).resolve())
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    label = f"{Path(values['DATA_DIR']).name}-k{values.get('CLUSTERS')}-{values.get('SIZE')}px-{digest}"
    return label, {k: v for k, v in run.parameters.items() if k in defaults} | values


def effective_parameters(run: BatchRun) -> dict:
    """Every notebook parameter this run uses: the notebooks' defaults with the run's values over
    them (the paths the batch chooses left out)."""
    merged = {}
    for name in (notebooks.PREPARE, notebooks.TRAIN, notebooks.EVALUATE):
        merged |= {k: v for k, v in notebooks.parameters(name).items() if k not in SET_BY_BATCH}
    return json.loads(json.dumps({**merged, **run.parameters}, default=str))


def read_status(batch: Batch, run_name: str) -> dict:
    """The run's ``status.json``; a run still marked running whose batch process is gone (killed,
    or the machine restarted) reads as interrupted."""
    path = batch.run_report(run_name).status
    status = read_json(path) if path.exists() else {}
    if status.get("status") == "running" and status.get("host") == socket.gethostname() \
            and not pid_alive(status.get("pid")):
        status.update(status="interrupted", error="the batch process stopped while this run was running")
    return status


def unfinished_runs(batch: Batch, only: list[str] | None = None) -> list[str]:
    """Names of the (selected) runs whose last status is not finished."""
    return [r.name for r in batch.runs if (not only or r.name in only)
            and read_status(batch, r.name).get("status") != "finished"]


def save_config(batch: Batch) -> None:
    import yaml

    config = {"name": batch.name, "parameters": batch.shared,
              "runs": [{"name": r.name, **r.overrides} for r in batch.runs]}
    atomic_write_text(batch.folder.config, yaml.safe_dump(config, sort_keys=False))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
