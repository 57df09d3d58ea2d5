"""Merging and dropping classes while preparing: labels equal to the merged train ids on every pixel,
names, colours and counts that follow, and bad mappings refused before anything is written."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from seglib.data.cityscapes import TRAIN_NAMES, train_colours, train_id_table
from seglib.data.pairs import DatasetError
from seglib.data.prepare import prepare
from seglib.data.splits import open_split
from seglib.data.synthetic import generate_labelled

MERGE = ["vehicle=car,truck,bus", "barrier=wall,fence", "human=person,rider"]
MERGED = ["road", "sidewalk", "building", "barrier", "pole", "traffic light", "traffic sign", "vegetation",
          "terrain", "sky", "human", "vehicle", "motorcycle", "bicycle"]  # 14 classes: train dropped


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    generate_labelled(root / "cityscapes", count=24, seed=5, size=(64, 128), layout="cityscapes", progress=False)
    return root / "cityscapes"


def test_merged_and_dropped_cityscapes_labels_are_the_merged_train_ids_on_every_pixel(cityscapes, tmp_path):
    summary = prepare(cityscapes, tmp_path / "merged", size="64x128", progress=False, merge=MERGE, drop="train")
    by_hand = np.full(256, 255, np.uint8)  # train id -> merged id, written out for this test
    for new, name in enumerate(MERGED):
        members = {"barrier": ["wall", "fence"], "human": ["person", "rider"], "vehicle": ["car", "truck", "bus"]}
        for old in members.get(name, [name]):
            by_hand[TRAIN_NAMES.index(old)] = new
    train_ids = train_id_table()
    for split in ("train", "val", "test"):
        data = open_split(tmp_path / "merged", split)
        for row, photo in enumerate(data.files):
            label_ids = cv2.imread(photo.replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_labelIds.png"),
                                   cv2.IMREAD_UNCHANGED)
            assert np.array_equal(data.labels[row], by_hand[train_ids[label_ids]]), photo
        assert summary["ignored_pixels"][split] == int((np.asarray(data.labels) == 255).sum())
    palette = json.loads((tmp_path / "merged" / "palette.json").read_text())
    assert [c["name"] for c in palette["classes"]] == MERGED and palette["ignore_index"] == 255
    colours = train_colours()
    assert palette["classes"][MERGED.index("vehicle")]["rgb"] == list(colours[TRAIN_NAMES.index("car")])
    assert summary["parameters"]["classes"] == 14 and summary["parameters"]["drop"] == ["train"]
    shares = summary["class_shares"]["train"]
    assert len(shares) == 14 and sum(shares) == pytest.approx(1, abs=1e-4)


def test_kmeans_classes_merge_by_index_and_the_labels_follow(synth_dir, tmp_path):
    plain = prepare(synth_dir, tmp_path / "plain", clusters=6, size=32, sample_pixels=20_000, progress=False)
    merged = prepare(synth_dir, tmp_path / "merged", clusters=6, size=32, sample_pixels=20_000, progress=False,
                     merge="first=0,3", drop="5")
    expected = np.array([0, 1, 2, 0, 3, 255] + [255] * 250, np.uint8)
    for split in ("train", "test"):
        before, after = (np.asarray(open_split(tmp_path / d, split).labels) for d in ("plain", "merged"))
        assert np.array_equal(after, expected[before])
    names = [c["name"] for c in json.loads((tmp_path / "merged" / "palette.json").read_text())["classes"]]
    old = [c["name"] for c in json.loads((tmp_path / "plain" / "palette.json").read_text())["classes"]]
    assert names == ["first", old[1], old[2], old[4]]
    shares = plain["class_shares"]["train"]
    assert merged["class_shares"]["train"][0] == pytest.approx((shares[0] + shares[3]) / (1 - shares[5]), abs=1e-5)
    assert merged["ignored_pixels"]["train"] > 0 and plain["ignored_pixels"]["train"] == 0


@pytest.mark.parametrize(("merge", "drop", "message"), [
    (["vehicle=car,tram"], None, r"--merge vehicle: unknown class 'tram'; the classes are road, sidewalk"),
    (["vehicle=car,truck", "heavy=truck,bus"], None,
     r"class 'truck' is mapped twice \(--merge vehicle and --merge heavy"),
    (["vehicle=car"], "car", r"class 'car' is mapped twice \(--merge vehicle and --drop\)"),
    (["vehicle"], None, r"--merge 'vehicle': expected NEW=CLASS,CLASS"),
    (["road=sky", "sky=road"], None, r"--merge road=...: 'road' is the name of class 0, which is not merged into it"),
    (["car=truck"], None, r"--merge car=...: 'car' is the name of class 13, which is not merged into it"),
    (None, ",".join(map(str, range(19))), r"--drop 0,1,.*: 0 class\(es\) would be left of 19; a model needs 2"),
])
def test_a_bad_mapping_fails_before_anything_is_written(cityscapes, tmp_path, merge, drop, message):
    with pytest.raises(DatasetError, match=message):
        prepare(cityscapes, tmp_path / "out", size="64x128", progress=False, merge=merge, drop=drop)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_the_command_line_takes_merge_and_drop_and_says_what_is_wrong(cityscapes, tmp_path):
    base = [sys.executable, "-m", "seglib", "prepare", str(cityscapes), str(tmp_path / "out"), "--size", "64x128",
            "--quiet"]
    done = subprocess.run([*base, "--merge", "vehicle=car,truck,bus", "--drop", "train,bicycle"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    palette = json.loads((tmp_path / "out" / "palette.json").read_text())
    assert [c["name"] for c in palette["classes"]][-2:] == ["vehicle", "motorcycle"] and palette["k"] == 15
    bad = subprocess.run([*base[:5], str(tmp_path / "bad"), "--drop", "trams"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --drop: unknown class 'trams'")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_evaluate_full_size_scores_the_predictions_against_the_source_label_files(tmp_path, prepared_dir, seglib_cli):
    """Cityscapes-shaped scenes of 128x256 prepared at 64x128 with merged classes: the full-size
    figure counts every scored pixel of the source label files, next to the prepared-size one."""
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    generate_labelled(tmp_path / "cs", count=16, seed=6, size=(128, 256), layout="cityscapes", progress=False)
    prepare(tmp_path / "cs", tmp_path / "prepared", size="64x128", progress=False, merge=MERGE, drop="train")
    run = train(TrainConfig(str(tmp_path / "prepared"), str(tmp_path / "run"), arch="tinyunet", backbone="base8",
                            epochs=1, batch_size=4, encoder_weights=None), verbose=0)
    done = seglib_cli("evaluate", run.run_dir, tmp_path / "prepared", "--full-size")
    assert done.returncode == 0, done.stderr
    assert "at the source labels' size (128x256): pixel accuracy" in done.stdout
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    full = metrics["full_size"]
    scored = 0
    train_ids, merged = train_id_table(), [TRAIN_NAMES.index("train")]
    for photo in open_split(tmp_path / "prepared", "test").files:
        ids = train_ids[cv2.imread(photo.replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_labelIds.png"),
                                   cv2.IMREAD_UNCHANGED)]
        scored += int(((ids != 255) & ~np.isin(ids, merged)).sum())
    assert full["label_sizes"] == ["128x256"] and full["num_pixels"] == scored
    assert full["num_pixels"] > 3 * metrics["num_pixels"] and 0 <= full["mean_iou"] <= 1
    from seglib.data.splits import source_labels

    with pytest.raises(ValueError, match="prepared from image pairs .* nothing to score at the source size"):
        next(source_labels(prepared_dir, "test"))
