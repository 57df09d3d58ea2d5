"""A command's parameters, each declared once: default, type, choices, valid range and help.

A command family's parameters are one dataclass of :func:`param` fields (``TrainConfig``,
``PrepareConfig``, ``EvaluateConfig``, ``ReportConfig``) based on :class:`Parameters`. From it come
the command's flags (:func:`add_arguments`), the notebooks' parameters cells (:func:`parameters_cell`,
written by ``make notebooks``) and the checks of a sweep file's values (:func:`checked_value`). One
name per parameter: ``--sample-pixels`` on the command line, ``SAMPLE_PIXELS`` in notebooks and
sweeps, ``sample_pixels`` in Python. Every value is checked where it enters (a flag, a notebook
cell, a sweep file), with the parameter named in the error.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, Field, field, fields

NONE_WORDS = ("", "none", "null")  # what a command line, a Colab form or YAML gives for "no value"


class ParameterError(ValueError):
    """A parameter's value of the wrong type or out of its range (names the parameter)."""


def param(default=MISSING, help: str = "", choices: tuple | None = None, *, min: float | None = None,
          max: float | None = None, above: float | None = None, below: float | None = None, notebook=MISSING,
          repeat: str | None = None, positional: bool = False, metavar: str | None = None) -> Field:
    """A parameter. ``min``/``max``: inclusive bounds, ``above``/``below``: exclusive ones;
    ``notebook``: the notebooks' own default where it must differ (say why beside it);
    ``repeat``: the flag may be given several times, its values joined with this separator;
    ``positional``: a positional argument on the command line even though it has a default;
    ``metavar``: the flag's value as ``--help`` shows it. No ``=`` in ``help``: papermill reads a
    parameters line with two as no parameter."""
    if "=" in help:
        raise ValueError(f"the help of a parameter cannot hold '=' (papermill would skip its line): {help!r}")
    metadata = {"help": help, "choices": choices, "min": min, "max": max, "above": above, "below": below,
                "repeat": repeat, "positional": positional, "metavar": metavar}
    if notebook is not MISSING:
        metadata["notebook"] = notebook
    return field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def label(f: Field) -> str:
    """How errors name a parameter: its notebook/sweep name and its flag."""
    return f"{f.name.upper()} ({flag(f.name)})"


def checked_value(f: Field, value):
    """``value`` for the parameter ``f`` (``"none"`` and the like become None where None is allowed),
    or a :class:`ParameterError` naming the parameter, the value and what it must be."""
    kinds = [k.strip() for k in f.type.split("|")]
    if "None" in kinds and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
        return None
    if not any(_is(kind, value) for kind in kinds if kind != "None"):
        wanted = " or ".join({"int": "an integer", "float": "a finite number", "bool": "true or false",
                              "str": "a string"}[k] for k in kinds if k != "None")
        raise ParameterError(f"{label(f)}: expected {wanted}{' (or none)' if 'None' in kinds else ''}, "
                             f"got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        known = ', '.join(map(str, meta['choices']))
        raise ParameterError(f"{label(f)}: unknown value {value!r}; choose one of {known}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("min") is not None and value < meta["min"]:
            raise ParameterError(f"{label(f)}: must be at least {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise ParameterError(f"{label(f)}: must be at most {meta['max']}, got {value}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise ParameterError(f"{label(f)}: must be more than {meta['above']}, got {value}")
        if meta.get("below") is not None and not value < meta["below"]:
            raise ParameterError(f"{label(f)}: must be less than {meta['below']}, got {value}")
    return value


def checked_values(config: type, **values) -> dict:
    """``values`` (some of ``config``'s parameters, by field name) each checked as :func:`checked_value`
    does: for functions that take the parameters one by one."""
    by_name = {f.name: f for f in fields(config)}
    return {name: checked_value(by_name[name], value) for name, value in values.items()}


def _is(kind: str, value) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, str)


class Parameters:
    """The base of a command's parameters dataclass: every value checked (and ``"none"`` made None) as
    the object is made, whichever way the values came."""

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, checked_value(f, getattr(self, f.name)))

    @classmethod
    def from_parameters(cls, values: dict):
        """From a notebook's UPPER_CASE parameters (e.g. ``globals()``)."""
        return cls(**{f.name: values[f.name.upper()] for f in fields(cls)})

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """From the flags :func:`add_arguments` made (repeated flags joined)."""
        values = {}
        for f in fields(cls):
            value = getattr(args, f.name, f.default)
            if f.metadata.get("repeat"):  # a repeated flag: a list, or None when not given
                value = f.default if value is None else f.metadata["repeat"].join(value)
            values[f.name] = value
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser, config: type, only: tuple[str, ...] | None = None) -> None:
    """A flag (or positional argument) per field of ``config``, or of its fields named in ``only``."""
    types = {"int": int, "float": float}
    for f in fields(config):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        shown = f.default is not MISSING and f.default not in (None, "") and not isinstance(f.default, bool)
        help = (meta["help"] + (f" (default {f.default})" if shown else "")).replace("%", "%%")
        if f.default is MISSING:
            parser.add_argument(f.name, help=help)
        elif meta.get("positional"):
            parser.add_argument(f.name, nargs="?", default=f.default, help=help)
        elif f.type == "bool":
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag(f.name), action=action, default=f.default, help=meta["help"])
        else:
            kind = next((types[k.strip()] for k in f.type.split("|") if k.strip() in types), str)
            if f.type == "int | str":
                kind = str  # a size: 256 or 256x512
            parser.add_argument(flag(f.name), type=kind, default=None if meta.get("repeat") else f.default,
                                choices=meta.get("choices"),
                                action="append" if meta.get("repeat") else None, help=help,
                                metavar=meta.get("metavar"))


def parameters_cell(*configs: type) -> str:
    """A notebook's parameters cell: one Colab form line per field of ``configs`` (the first of a
    name wins), with the notebook's default, its form type or choices and its help."""
    kinds = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    lines = ["# @title Parameters",
             "# papermill and Colab's form set these; paths are relative to the notebooks/ folder"]
    seen = set()
    for config in configs:
        for f in fields(config):
            if f.name in seen:
                continue
            seen.add(f.name)
            value = notebook_default(f)
            if f.metadata.get("choices"):
                form = json.dumps(list(f.metadata["choices"]))
            else:
                named = [k.strip() for k in f.type.split("|") if k.strip() != "None"]
                form = '{type:"raw"}' if value is None or len(named) > 1 else f'{{type:"{kinds[named[0]]}"}}'
            text = json.dumps(value) if isinstance(value, str) else repr(value)
            lines.append(f"{f.name.upper()} = {text}  # @param {form}  {f.metadata['help']}")
    return "\n".join(lines)


def notebook_default(f: Field):
    value = f.metadata.get("notebook", f.default)
    if value is MISSING:
        raise ValueError(f"{f.name}: a parameter without a default needs a notebook default (param(notebook=...))")
    return value


def notebook_defaults(*configs: type) -> dict:
    """``{NAME: notebook default}`` of ``configs``' fields, as :func:`parameters_cell` writes them."""
    values = {}
    for config in configs:
        for f in fields(config):
            values.setdefault(f.name.upper(), notebook_default(f))
    return values


def field_of(configs: tuple[type, ...], name: str) -> Field | None:
    """The field an UPPER_CASE parameter name is, in the first of ``configs`` that has it."""
    for config in configs:
        for f in fields(config):
            if f.name.upper() == name:
                return f
    return None
