"""Every parameter of ``report`` once (:mod:`seglib.parameters`): its flags, notebook 03's parameters
cell (with :class:`seglib.inference.config.EvaluateConfig`), the batch keys and
:func:`seglib.reporting.report.write_run_report`'s defaults derive from :class:`ReportConfig`;
:class:`ShowConfig` is what the notebooks show."""
from __future__ import annotations

from dataclasses import dataclass

from seglib.layout import ARTIFACTS, DEFAULT, from_notebooks
from seglib.parameters import Parameters, param


@dataclass
class ShowConfig(Parameters):
    """What notebooks and reports show (not what they compute).

    Example:
        ``ShowConfig.from_parameters(globals())`` in a notebook checks its ``EXAMPLES``
    """

    examples: int = param(4, "images in the example grids", min=0, max=64)


@dataclass
class ReportConfig(Parameters):
    """A run's report.

    Example:
        ``write_run_report(config.run_dir, config.report_dir, config.prepared_dir)``
    """

    run_dir: str = param(help="a trained run's folder", notebook=from_notebooks(f"{ARTIFACTS}/{DEFAULT}"))
    prepared_dir: str | None = param(None, "a prepared dataset (default: the one the run was trained on)")
    report_dir: str | None = param(None, "the report's folder (default: reports/<run name> beside the artifacts/ "
                                         "folder that holds the run)")
