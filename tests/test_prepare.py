import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seglib.data.pairs import DatasetError, PairError, split_files
from seglib.data.prepare import prepare
from seglib.data.quality import split_purity
from seglib.data.splits import open_split


def test_prepared_layout_and_contents(prepared_dir, synth_dir):
    summary = json.loads((prepared_dir / "summary.json").read_text())
    assert summary["layout"] == "kaggle"
    # Kaggle layout: val/ (12) is our test split, train/ (48) splits 80/20 into train/val
    assert summary["counts"] == {"train": 38, "val": 10, "test": 12}
    palette = json.loads((prepared_dir / "palette.json").read_text())
    assert palette["k"] == 10 and len(palette["classes"]) == 10
    shares = [c["share"] for c in palette["classes"]]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6
    for name, n in summary["counts"].items():
        split = open_split(prepared_dir, name)
        assert isinstance(split.images, np.memmap) and isinstance(split.labels, np.memmap)
        assert split.images.shape == (n, 128, 128, 3) and split.images.dtype == np.uint8
        assert split.labels.shape == (n, 128, 128) and split.labels.dtype == np.uint8
        assert len(split.files) == n and int(split.labels.max()) < 10
        assert abs(sum(summary["class_shares"][name]) - 1) < 1e-4
        assert sorted(p.name for p in (prepared_dir / name).iterdir()) == ["files.txt", "images.npy", "labels.npy"]
    test = open_split(prepared_dir, "test")
    assert all(f.startswith(str(synth_dir / "val")) for f in test.files)
    assert set(summary["timings_s"]) == {"read_train", "fit", "read_and_label", "total"}
    assert summary["skipped_count"] == 0 and summary["ignored_files"] == []


def test_synthetic_label_purity(prepared_dir):
    assert split_purity(prepared_dir, "test") >= 0.97
    assert split_purity(prepared_dir, "train") >= 0.97


def test_same_seed_same_output(synth_dir, prepared_dir, tmp_path):
    again = tmp_path / "again"
    prepare(synth_dir, again, seed=0, size=128, progress=False)
    assert (again / "palette.json").read_bytes() == (prepared_dir / "palette.json").read_bytes()
    for split in ("train", "val", "test"):
        assert np.array_equal(np.load(again / split / "labels.npy"), np.load(prepared_dir / split / "labels.npy"))
        assert (again / split / "files.txt").read_text() == (prepared_dir / split / "files.txt").read_text()


def test_flat_layout_split_64_16_20(synth_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted((synth_dir / "train").glob("*.jpg"))[:25]):
        shutil.copy(f, flat / f"{i}.jpg")
    splits, layout, _ = split_files(flat, 0.2, seed=0)
    assert layout == "flat" and {k: len(v) for k, v in splits.items()} == {"train": 16, "val": 4, "test": 5}
    assert not set(splits["train"]) & set(splits["test"])
    summary = prepare(flat, tmp_path / "out", size=64, progress=False)
    assert summary["counts"] == {"train": 16, "val": 4, "test": 5} and summary["layout"] == "flat"


@pytest.fixture()
def messy_dir(synth_dir, tmp_path):
    """A flat folder of good pairs plus a corrupt JPEG, a square image and a text file."""
    messy = tmp_path / "messy"
    messy.mkdir()
    for i, f in enumerate(sorted((synth_dir / "train").glob("*.jpg"))[:10]):
        shutil.copy(f, messy / f"{i}.jpg")
    (messy / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    square = np.zeros((64, 64, 3), np.uint8)
    import cv2

    cv2.imwrite(str(messy / "square.png"), square)
    (messy / "README.txt").write_text("not a pair")
    return messy


def test_bad_file_stops_with_its_name_and_leaves_nothing(messy_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PairError) as info:
        prepare(messy_dir, out, size=64, progress=False, seed=0)
    assert str(messy_dir) in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_skip_bad_counts_and_lists(messy_dir, tmp_path):
    summary = prepare(messy_dir, tmp_path / "out", size=64, skip_bad=True, progress=False)
    assert summary["skipped_count"] == 2
    reasons = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in summary["skipped"]}
    assert "not a readable JPEG" in reasons["corrupt.jpg"] and "twice as wide" in reasons["square.png"]
    assert [p.rsplit("/", 1)[-1] for p in summary["ignored_files"]] == ["README.txt"]
    assert sum(summary["counts"].values()) == 10
    for split, n in summary["counts"].items():
        assert len(open_split(tmp_path / "out", split)) == n


def test_empty_and_non_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no pair images"):
        prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.csv").write_text("y")
    with pytest.raises(DatasetError, match="no pair images"):
        prepare(tmp_path / "docs", tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match="not found"):
        prepare(tmp_path / "missing", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_output_folder_rules(synth_dir, tmp_path):
    """Only an earlier prepared dataset holding nothing but seglib's files is replaced; a user's
    folder, a look-alike, or one whose replacement would delete the pairs is refused untouched."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a prepared folder written by seglib"):
        prepare(synth_dir, foreign, size=32, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    lookalike = tmp_path / "lookalike"  # a summary.json does not make a folder seglib's
    lookalike.mkdir()
    (lookalike / "summary.json").write_text("{}")
    (lookalike / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="not a prepared folder written by seglib"):
        prepare(synth_dir, lookalike, size=32, progress=False)
    assert sorted(p.name for p in lookalike.iterdir()) == ["summary.json", "thesis.docx"]

    out = tmp_path / "out"
    prepare(synth_dir, out, size=32, progress=False)
    prepare(synth_dir, out, size=64, progress=False)  # an earlier prepared dataset is replaced
    assert open_split(out, "train").images.shape[1] == 64
    (out / "notes.md").write_text("mine")  # ... unless the user keeps files in it
    with pytest.raises(FileExistsError, match=r"holds files seglib did not write \(notes.md\)"):
        prepare(synth_dir, out, size=32, progress=False)
    assert (out / "notes.md").read_text() == "mine" and open_split(out, "train").images.shape[1] == 64
    (out / "notes.md").unlink()

    raw = out / "raw"  # pairs copied into the prepared folder, then prepared into it again
    shutil.copytree(synth_dir, raw)
    with pytest.raises(DatasetError, match="holds the pairs being prepared"):
        prepare(raw, out, size=32, progress=False)
    assert len(list((raw / "train").iterdir())) == len(list((synth_dir / "train").iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left


@pytest.mark.parametrize("size", [8, 100, 48, "64x100", "64 by 128", "0x64"])
def test_sizes_the_model_cannot_take_are_refused_before_any_work(synth_dir, tmp_path, size):
    with pytest.raises(DatasetError, match=r"--size.*(must be multiples of 32|expected a side \(256\) or H x W)"):
        prepare(synth_dir, tmp_path / "out", size=size, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_empty_val_split_is_refused(synth_dir, tmp_path):
    with pytest.raises(DatasetError, match=r"the val split would be empty .*--val-fraction is 0"):
        prepare(synth_dir, tmp_path / "out", size=32, val_fraction=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_killed_prepare_leaves_no_temp_folder_behind_on_the_next_run(synth_dir, tmp_path):
    """A temp folder with seglib's marker whose process is gone is removed by the next prepare."""
    import signal

    script = (f"from seglib.data.prepare import prepare; prepare({str(synth_dir)!r}, {str(tmp_path / 'out')!r}, "
              "size=32, sample_pixels=20000, progress=False, workers=1)")
    killed = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.tmp-*/train")):
        assert killed.poll() is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list(tmp_path.glob(".out.tmp-*"))
    (tmp_path / ".notes.tmp-keep").mkdir()  # a look-alike without seglib's marker stays
    prepare(synth_dir, tmp_path / "out", size=32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp-keep", "out"]


def test_cli_prepare_and_errors(synth_dir, tmp_path):
    cmd = [sys.executable, "-m", "seglib", "prepare", str(synth_dir), str(tmp_path / "cli"), "--size", "32",
           "--clusters", "8", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train 38, val 10, test 12" in done.stdout
    assert json.loads((tmp_path / "cli" / "palette.json").read_text())["k"] == 8
    bad = subprocess.run([sys.executable, "-m", "seglib", "prepare", str(tmp_path / "nowhere"), str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr and "not found" in bad.stderr


def test_real_sample_label_purity(shared_sample, tmp_path):
    """The palette fitted on real training masks labels the test split (the sample's val/) well."""
    summary = prepare(shared_sample, tmp_path / "real", progress=False)
    assert summary["counts"] == {"train": 240, "val": 60, "test": 100}
    assert split_purity(tmp_path / "real", "test") >= 0.92


def test_skipped_training_file_palette_uses_kept_masks(messy_dir, tmp_path):
    """With a bad training file skipped, the palette is fitted on the kept training masks alone."""
    from seglib.data.pairs import read_pair
    from seglib.data.palette import fit_palette, sample_pixels
    from seglib.data.splits import load_palette

    splits, _, _ = split_files(messy_dir)
    assert {"corrupt.jpg", "square.png"} & {p.name for p in splits["train"]}  # a bad file is in train
    prepare(messy_dir, tmp_path / "out", size=64, skip_bad=True, sample_pixels=5000, progress=False)
    kept = open_split(tmp_path / "out", "train").files
    assert len(kept) < len(splits["train"])
    masks = np.stack([read_pair(f, 64)[1] for f in kept])
    expected = fit_palette(sample_pixels(masks, 5000, seed=0), 10, seed=0)
    assert np.allclose(load_palette(tmp_path / "out").centroids, expected.centroids, atol=1e-3)  # JSON keeps 4 decimals


def test_same_output_on_any_number_of_worker_threads(synth_dir, prepared_dir, tmp_path):
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        prepare(synth_dir, out, seed=0, size=128, workers=workers, progress=False)
        assert (out / "palette.json").read_bytes() == (prepared_dir / "palette.json").read_bytes()
        for split in ("train", "val", "test"):
            for name in ("images.npy", "labels.npy", "files.txt"):
                assert (out / split / name).read_bytes() == (prepared_dir / split / name).read_bytes()


def test_the_k_means_sample_is_bounded_by_the_masks_and_by_memory(synth_dir, tmp_path, monkeypatch):
    import types

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=100_000_000))  # 100 MB free
    with pytest.raises(
        DatasetError,
        match=r"--sample-pixels 2000000000: the K-Means sample needs about \d+ MB, more than half of the 100 MB",
    ):
        prepare(synth_dir, tmp_path / "huge", size=256, sample_pixels=2_000_000_000, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any work: nothing written, no temp folder
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10_000_000))  # 10 MB free
    with pytest.raises(DatasetError, match=r"the 38 training pairs need about 17 MB of memory at --size 256"):
        prepare(synth_dir, tmp_path / "huge", size=256, progress=False)
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    summary = prepare(synth_dir, tmp_path / "small", size=32, sample_pixels=10_000_000, progress=False)
    held = summary["counts"]["train"] * 32 * 32
    assert summary["parameters"]["sample_pixels"] == held  # at most what the training masks hold
    assert json.loads((tmp_path / "small" / "palette.json").read_text())["sample_pixels"] == held


def test_any_file_name_survives_in_files_txt(synth_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    sources = sorted((synth_dir / "train").glob("*.jpg"))[:10]
    names = [f"{i}.jpg" for i in range(9)] + ["odd\nname 'with' \"quotes\".jpg"]
    for source, name in zip(sources, names, strict=True):
        shutil.copy(source, flat / name)
    prepare(flat, tmp_path / "out", size=32, progress=False)
    listed = sorted(
        Path(f).name for split in ("train", "val", "test") for f in open_split(tmp_path / "out", split).files
    )
    assert listed == sorted(names)
    for split in ("train", "val", "test"):
        data = open_split(tmp_path / "out", split)
        assert len(data.files) == len(data.images) == len(data.labels)


def test_a_full_disk_in_prepare_is_one_line_and_leaves_nothing(synth_dir, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        done = subprocess.run([sys.executable, "-m", "seglib", "prepare", str(synth_dir), str(disk / "out"),
                               "--size", "128", "--quiet"], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.startswith("error: ") and "No space left on device" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert list(disk.iterdir()) == []  # the temp folder went with the error
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
