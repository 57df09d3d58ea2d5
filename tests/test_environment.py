"""environment.yml (Apple Silicon) parses, and every pin in it holds what it must: Metal's TF line,
what TF 2.18.1 accepts, pyproject.toml's ranges, the ai-edge-litert whose macOS binaries need the
oldest macOS, the same pins CI tests on Linux; and the Makefile installs into an active conda env."""
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

pytestmark = pytest.mark.tf_lines  # the Mac line's pins: checked in the TF 2.18 venv as in the main one

REPO = Path(__file__).resolve().parents[1]
# What tensorflow 2.18.1's wheel metadata requires (Requires-Dist), for the pins beside it.
TF_2181_REQUIRES = {"numpy": SpecifierSet(">=1.26.0,<2.1.0"), "keras": SpecifierSet(">=3.5.0")}
CANDIDATES = {"numpy": ["1.25.2", "1.26.0", "1.26.4", "2.0.2", "2.1.0", "2.2.6", "2.4.0"],
              "keras": ["3.4.1", "3.5.0", "3.8.0", "3.9.0", "3.12.0"]}
LITERT_MACOS_MINIMUM = "14.5"  # read from ai-edge-litert 1.2.0's macOS arm64 wheel; 1.3.0 onwards: 15.2


def env_pip() -> dict:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.12" in deps and "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    return {Requirement(line).name.lower(): Requirement(line) for line in pip if not line.startswith("-")}


def test_environment_yml_pins_metal_and_what_tf_2_18_1_accepts():
    reqs = env_pip()
    assert str(reqs["tensorflow"].specifier) == "==2.18.1"
    assert str(reqs["tensorflow-metal"].specifier) == "==1.2.0"
    for name, allowed in TF_2181_REQUIRES.items():
        env_spec = reqs[name].specifier
        admitted = [v for v in CANDIDATES[name] if env_spec.contains(v)]
        assert admitted, f"environment.yml admits no {name} version"
        assert all(allowed.contains(v) for v in admitted), f"{name} {env_spec} admits versions TF 2.18.1 refuses"
    assert {"jupyterlab", "pytest", "ipykernel"} <= set(reqs)  # notebooks by hand, make test in the env


def test_installed_tf_2_18_requirements_match_the_recorded_ones():
    """On the TF 2.18 CI line the real metadata is here: the recorded requirements must match it."""
    from importlib.metadata import requires, version

    if version("tensorflow") != "2.18.1":
        pytest.skip(f"tensorflow {version('tensorflow')} installed; the check needs 2.18.1 (make test-tf2.18)")
    found = {Requirement(r).name.lower(): Requirement(r).specifier for r in requires("tensorflow")
             if "extra ==" not in r}
    for name, spec in TF_2181_REQUIRES.items():
        assert found[name] == spec, f"tensorflow 2.18.1 requires {name}{found[name]}, recorded {spec}"


def test_environment_yml_pins_agree_with_pyproject():
    reqs = env_pip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for line in project["dependencies"] + extras["dev"] + extras["serve"] + extras["onnx"] + extras["hub"]:
        req = Requirement(line)
        assert req.name.lower() in reqs, f"{req.name} is missing from environment.yml"
        env_spec = reqs[req.name.lower()].specifier
        # the version environment.yml pins, or the lowest it allows, must satisfy pyproject
        versions = [s.version for s in env_spec if s.operator in ("==", ">=")]
        assert versions, f"environment.yml gives {req.name} no pin or lower bound"
        for version in versions:
            assert req.specifier.contains(version, prereleases=True), f"{req.name}: {version} vs {req.specifier}"


def test_ci_tests_the_same_pins_on_linux():
    """make test-tf2.18 installs with .ci/constraints-tf2.18.txt: it must hold the env's pins, so the
    Mac's TF, Keras, NumPy, ai-edge-litert, onnx and keras-hub versions are what CI tests (and pip checks they
    resolve)."""
    reqs = env_pip()
    lines = [line for line in (REPO / ".ci" / "constraints-tf2.18.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    constraints = {Requirement(line).name.lower(): Requirement(line).specifier for line in lines}
    assert set(constraints) == {"tensorflow", "keras", "numpy", "ai-edge-litert", "onnx", "keras-hub"}
    for name, spec in constraints.items():
        assert reqs[name].specifier == spec, f"{name}: environment.yml {reqs[name].specifier}, CI {spec}"


def macos_minimums(wheel: Path) -> set[str]:
    """Minimum macOS of every Mach-O binary in a wheel (LC_BUILD_VERSION / LC_VERSION_MIN_MACOSX)."""
    def read(data: bytes) -> list[str]:
        magic = struct.unpack_from("<I", data, 0)[0]
        if magic == 0xBEBAFECA:  # universal binary: read each architecture's slice
            found = []
            for i in range(struct.unpack_from(">I", data, 4)[0]):
                start, size = struct.unpack_from(">II", data, 8 + 20 * i + 8)
                found += read(data[start : start + size])
            return found
        if magic != 0xFEEDFACF:
            return []
        found, offset = [], 32
        for _ in range(struct.unpack_from("<I", data, 16)[0]):
            cmd, size = struct.unpack_from("<II", data, offset)
            if cmd in (0x32, 0x24):  # LC_BUILD_VERSION: platform, minos; LC_VERSION_MIN_MACOSX: version
                v = struct.unpack_from("<I", data, offset + (12 if cmd == 0x32 else 8))[0]
                found.append(f"{v >> 16}.{(v >> 8) & 0xFF}")
            offset += size
        return found

    with zipfile.ZipFile(wheel) as z:
        return {m for name in z.namelist() if name.endswith((".so", ".dylib")) for m in read(z.read(name))}


def test_ai_edge_litert_is_pinned_to_the_oldest_macos_minimum(tmp_path):
    reqs = env_pip()
    spec = reqs["ai-edge-litert"].specifier
    assert len(spec) == 1 and next(iter(spec)).operator == "==", "ai-edge-litert must be pinned (==)"
    version = next(iter(spec)).version
    assert f"macOS {LITERT_MACOS_MINIMUM}" in (REPO / "README.md").read_text()
    assert f"need macOS {LITERT_MACOS_MINIMUM}" in (REPO / "environment.yml").read_text()
    done = subprocess.run([sys.executable, "-m", "pip", "download", f"ai-edge-litert=={version}", "--no-deps",
                           "--only-binary=:all:", "--platform", "macosx_12_0_arm64", "--python-version", "3.12",
                           "-d", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    wheels = list(tmp_path.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"could not download the macOS wheel from the package index: {done.stderr.strip()[-300:]}")
    minimums = macos_minimums(wheels[0])
    assert minimums and max(minimums, key=lambda v: tuple(map(int, v.split(".")))) == LITERT_MACOS_MINIMUM


@pytest.mark.parametrize("conda_env, uses", [("seglib", "conda"), ("base", "venv"), (None, "venv")])
def test_make_installs_into_an_active_conda_env(conda_env, uses):
    env = {"PATH": "/usr/bin:/bin"}
    if conda_env:
        env |= {"CONDA_PREFIX": f"/opt/conda/envs/{conda_env}", "CONDA_DEFAULT_ENV": conda_env}
    dry = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    if uses == "conda":
        assert "using the active conda env seglib" in dry.stdout and "venv" not in dry.stdout.replace("no .venv", "")
        install = r"^/opt/conda/envs/seglib/bin/python -m pip install -q -e \"\.\[dev,serve,onnx,ray,hub\]\"$"
        assert re.search(install, dry.stdout, re.M)
        assert "/opt/conda/envs/seglib/bin/python -m pytest" in dry.stdout
    else:
        assert "-m venv .venv" in dry.stdout and ".venv/bin/python -m pytest" in dry.stdout


def test_environment_yml_states_metal_limits():
    assert re.search(r"tensorflow-metal 1\.2\.0 loads only up to TF 2\.18", (REPO / "environment.yml").read_text())


def test_doctor_reports_the_machine_and_an_accelerator_that_disagrees_with_the_cpu_is_caught(tmp_path, monkeypatch,
                                                                                             seglib_cli):
    """Here (CPU only) the check has nothing to compare; an injected accelerator whose numbers are 1%
    off fails it, the verdict is cached per machine and versions, and train's warning names the way out."""
    from seglib.training import doctor

    done = seglib_cli("doctor", "--runs-dir", tmp_path / "artifacts")
    assert done.returncode == 0, done.stderr
    assert "tensorflow " in done.stdout and "segmentation-models" in done.stdout and "free disk" in done.stdout
    assert "self-check           -: only a CPU here: there is nothing to compare it with" in done.stdout
    honest = doctor._fixed_step
    assert doctor.self_check("/device:GPU:0", run_on=lambda device: honest("/device:CPU:0")).ok is True

    def off_by_one_percent(device):
        values = honest("/device:CPU:0")
        return values if device.endswith("CPU:0") else values * 1.01

    failed = doctor.self_check("/device:GPU:0", run_on=off_by_one_percent)
    assert failed.ok is False and failed.largest_difference > doctor.TOLERANCE
    assert "/device:GPU:0 differs from the CPU by up to" in failed.verdict
    monkeypatch.setattr(doctor, "accelerator", lambda: "/device:GPU:0")
    monkeypatch.setattr(doctor, "_fixed_step", off_by_one_percent)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    warned = []
    doctor.warn_if_unreliable(warned.append)
    monkeypatch.setattr(doctor, "_fixed_step", honest)  # cached: not run again for the same machine and versions
    doctor.warn_if_unreliable(warned.append)
    assert len(warned) == 2 and all("seglib doctor" in w and "CUDA_VISIBLE_DEVICES=-1" in w for w in warned)
    assert (tmp_path / "cache" / "seglib" / "device-check.json").exists()
    assert "needs TensorFlow 2.18 or 2.19, this is 2.21.0" in doctor.metal_note({"tensorflow-metal": "1.2.0",
                                                                                 "tensorflow": "2.21.0"})
