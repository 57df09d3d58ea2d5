"""Errors a user can cause name the file or folder and what is wrong, in the user's terms."""
from __future__ import annotations

import shutil

import cv2
import pytest

from seglib.data.pairs import PairError
from seglib.data.prepare import prepare
from seglib.data.synthetic import generate_labelled


def test_an_unknown_cityscapes_label_id_is_reported_with_its_file_or_counted_as_skipped(tmp_path):
    generate_labelled(tmp_path / "cs", count=12, seed=2, size=(64, 128), layout="cityscapes", progress=False)
    bad = sorted((tmp_path / "cs" / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    ids = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    ids[:4, :4] = 250
    cv2.imwrite(str(bad), ids)
    with pytest.raises(PairError, match=rf"{bad.name}: label id 250 is not a Cityscapes label id \(0-33\)"):
        prepare(tmp_path / "cs", tmp_path / "out", size="64x128", progress=False)
    assert not (tmp_path / "out").exists()
    summary = prepare(tmp_path / "cs", tmp_path / "out", size="64x128", progress=False, skip_bad=True)
    assert summary["skipped_count"] == 1 and summary["skipped"][0]["file"] == str(bad)


def test_evaluate_names_a_cut_short_array_and_a_dataset_of_another_size(trained, synth_dir, tmp_path, seglib_cli):
    cli = ["evaluate", trained / "run"]
    shutil.copytree(trained / "prepared", tmp_path / "cut")
    labels = tmp_path / "cut" / "test" / "labels.npy"
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    done = seglib_cli(*cli, tmp_path / "cut")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {labels}: unreadable or cut short")
    prepare(synth_dir, tmp_path / "small", size=32, sample_pixels=20_000, progress=False)
    done = seglib_cli(*cli, tmp_path / "small")
    assert done.returncode == 2 and f"the model takes 64x64 images, {tmp_path / 'small'} holds 32x32" in done.stderr


def test_an_unexpected_error_is_one_line_saying_so_and_debug_shows_its_traceback(monkeypatch, seglib_cli, tmp_path):
    """Not the user's (a bug, or a library's own error as TensorFlow's once was under --strategy mirrored):
    its first line and exit status 1; with --debug, the exception itself."""
    import seglib.reporting.report as report
    from seglib.quiet import DEBUG_ENV

    def broken(*args, **kwargs):
        raise RuntimeError("Inputs to operation AddN of type AddN must have the same size and shape.\n[[{{node}}]]")

    monkeypatch.setattr(report, "write_run_report", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)  # --debug sets it: restored after the test
    done = seglib_cli("report", tmp_path)
    assert done.returncode == 1 and done.stderr == ("error: RuntimeError: Inputs to operation AddN of type AddN must "
                                                    "have the same size and shape. (unexpected: run again with "
                                                    "--debug for the traceback)\n")
    with pytest.raises(RuntimeError, match="AddN"):
        seglib_cli("--debug", "report", tmp_path)


def test_the_tpu_strategy_without_a_tpu_says_so(monkeypatch):
    from seglib.training.distribute import make_strategy

    for variable in ("COLAB_TPU_ADDR", "TPU_NAME"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=r"--strategy tpu: no TPU here .* use --strategy auto"):
        make_strategy("tpu")
