import cv2
import numpy as np
from sklearn.tree import DecisionTreeClassifier

from seglib.data.cityscapes import NAME_TO_ID
from seglib.data.synthetic import CLASSES, generate, render_scene


def test_layout_and_truth(synth_dir):
    train, val = sorted((synth_dir / "train").glob("*.jpg")), sorted((synth_dir / "val").glob("*.jpg"))
    assert len(train) == 48 and len(val) == 12
    pair = cv2.imread(str(train[0]))
    assert pair.shape == (256, 512, 3)
    ids = cv2.imread(str(synth_dir / "ids" / "train" / f"{train[0].stem}.png"), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (256, 256) and set(np.unique(ids)) <= {NAME_TO_ID[c] for c in CLASSES}


def test_deterministic(tmp_path):
    generate(tmp_path / "a", count=3, seed=5, size=64, progress=False)
    generate(tmp_path / "b", count=3, seed=5, size=64, progress=False)
    for rel in ("train/1.jpg", "ids/train/1.png", "val/1.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_scenes_have_all_classes_and_are_not_pixel_separable():
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, 128) for _ in range(24)]
    ids = np.stack([s[1] for s in scenes])
    present = set(np.unique(ids))
    assert {NAME_TO_ID[c] for c in CLASSES} == present
    photos = np.stack([s[0] for s in scenes]).reshape(-1, 3)
    labels = ids.ravel()
    # a deep tree on a single pixel's colour cannot tell the classes apart on unseen scenes
    half = len(labels) // 2
    tree = DecisionTreeClassifier(max_depth=12, random_state=0).fit(photos[:half], labels[:half])
    accuracy = (tree.predict(photos[half:]) == labels[half:]).mean()
    assert accuracy < 0.85, accuracy


def test_the_demos_scenes_prepare_to_ten_distinct_classes(tmp_path):
    """At the demo's own count, seed and size (seglib.runs.demo): K-Means finds the ten classes, none
    split in two. (The demo's accuracy: bench/demo_accuracy.py.)"""
    import json

    from seglib.data.prepare import prepare
    from seglib.runs.demo import DEMO

    generate(tmp_path / "pairs", count=DEMO["SYNTH_COUNT"], seed=DEMO["SEED"], progress=False)
    summary = prepare(tmp_path / "pairs", tmp_path / "prepared", size=DEMO["SIZE"], seed=DEMO["SEED"], progress=False)
    names = json.loads((tmp_path / "prepared" / "palette.json").read_text())["classes"]
    assert sorted(c["name"] for c in names) == sorted(CLASSES)
    assert summary["palette_warnings"] == []
