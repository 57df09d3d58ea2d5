"""Shared fixtures: small synthetic datasets (every run) and the real shared sample (when present)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "cityscapes-pairs-sample"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """60 synthetic 256-px pairs in the Kaggle layout (48 train/, 12 val/), with ids/."""
    from seglib.synthetic import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, count=60, seed=1, size=256, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory) -> Path:
    from seglib.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(synth_dir, out, seed=0, size=128, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    if not (SHARED_SAMPLE / "train").is_dir():
        pytest.skip(f"real Cityscapes sample not present at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A small model trained on synthetic data: ROOT/pairs, ROOT/prepared (64 px), ROOT/run."""
    from seglib.prepare import prepare
    from seglib.synthetic import generate
    from seglib.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    generate(root / "pairs", count=120, seed=2, size=128, progress=False)
    prepare(root / "pairs", root / "prepared", size=64, progress=False)
    train(TrainConfig(str(root / "prepared"), str(root / "run"), backbone="mobilenetv2", epochs=8, batch_size=8,
                      encoder_weights=None, patience=8), verbose=0)
    return root
