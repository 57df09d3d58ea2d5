"""environment.yml (Apple Silicon) parses and agrees with pyproject.toml's dependencies."""
import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_pins_agree_with_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.12" in deps and "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    env_reqs = {Requirement(line).name.lower(): Requirement(line) for line in pip if not line.startswith("-")}
    assert str(env_reqs["tensorflow"].specifier) == "==2.18.1"
    assert str(env_reqs["tensorflow-metal"].specifier) == "==1.2.0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        assert req.name.lower() in env_reqs, f"{req.name} is missing from environment.yml"
        env_spec = env_reqs[req.name.lower()].specifier
        # the version environment.yml pins, or the lowest it allows, must satisfy pyproject
        versions = [s.version for s in env_spec if s.operator in ("==", ">=")]
        assert versions, f"environment.yml gives {req.name} no pin or lower bound"
        for version in versions:
            assert req.specifier.contains(version, prereleases=True), f"{req.name}: {version} vs {req.specifier}"
    assert re.search(r"tensorflow-metal 1\.2\.0 loads only up to TF 2\.18", (REPO / "environment.yml").read_text())
