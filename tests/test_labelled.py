"""Labelled datasets (images + id masks, the official Cityscapes layout), the ignore label end to end,
non-square inputs, and the training options: architectures, encoder weights from a file, fine-tuning
from a run, learning-rate schedules, TensorBoard and user callbacks."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from seglib.data.cityscapes import TRAIN_NAMES, train_id_table
from seglib.data.pairs import DatasetError, PairError
from seglib.data.prepare import prepare
from seglib.data.splits import open_split
from seglib.data.synthetic import generate_labelled
from seglib.layout import RunDir

SIZE = (64, 128)  # H x W: non-square throughout


def read_ids(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def mask_of(photo: str) -> Path:
    """The id mask beside a photo of either layout."""
    photo = Path(photo)
    if photo.name.endswith("_leftImg8bit.png"):
        relative = photo.relative_to(photo.parents[3] / "leftImg8bit")
        return photo.parents[3] / "gtFine" / str(relative).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    return photo.parents[1] / "masks" / f"{photo.stem}.png"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for layout in ("folders", "cityscapes"):
        generate_labelled(root / layout, count=30, seed=3, size=SIZE, layout=layout, progress=False)
    return root


def test_a_folder_dataset_prepares_with_labels_equal_to_its_mask_ids(labelled, tmp_path):
    summary = prepare(labelled / "folders", tmp_path / "prepared", size="64x128", progress=False)
    assert summary["layout"] == "folders" and summary["parameters"]["size"] == "64x128"
    assert summary["parameters"]["classes"] == 19 and summary["parameters"]["ignore_index"] == 255
    assert summary["counts"] == {"train": 19, "val": 5, "test": 6}  # val/ became test; 20% of train is val
    palette = json.loads((tmp_path / "prepared" / "palette.json").read_text())
    assert [c["name"] for c in palette["classes"]] == list(TRAIN_NAMES) and palette["ignore_index"] == 255
    for split in ("train", "val", "test"):
        data = open_split(tmp_path / "prepared", split)
        assert data.images.shape[1:] == (64, 128, 3) and data.labels.shape[1:] == (64, 128)
        for row, photo in enumerate(data.files):
            assert np.array_equal(data.labels[row], read_ids(mask_of(photo)))
        assert summary["ignored_pixels"][split] == int((np.asarray(data.labels) == 255).sum()) > 0
    test_files = open_split(tmp_path / "prepared", "test").files
    assert all("/val/images/" in f for f in test_files)
    from seglib.data.splits import source_masks

    assert source_masks(tmp_path / "prepared", "train", [0, 1]) is None  # the labels are the masks (notebook 01)


def test_an_official_cityscapes_tree_maps_label_ids_to_train_ids(labelled, tmp_path):
    summary = prepare(labelled / "cityscapes", tmp_path / "prepared", size="32x64", progress=False)
    assert summary["layout"] == "cityscapes" and summary["parameters"]["classes"] == 19
    table = train_id_table()
    for split in ("train", "val", "test"):
        data = open_split(tmp_path / "prepared", split)
        for row, photo in enumerate(data.files):
            source = cv2.resize(read_ids(mask_of(photo)), (64, 32), interpolation=cv2.INTER_NEAREST)
            assert np.array_equal(data.labels[row], table[source])  # labelIds -> train ids, 255 = ignored
    assert table[1] == 255 and table[7] == 0 and table[26] == 13  # ego vehicle ignored, road 0, car 13
    assert all("/leftImg8bit/val/" in f for f in open_split(tmp_path / "prepared", "test").files)
    assert summary["ignored_pixels"]["train"] > 0


def _folders(root: Path, masks: dict[str, np.ndarray], photos=None) -> Path:
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
    for i, (name, mask) in enumerate(masks.items()):
        split = "val" if i % 3 == 2 else "train"
        cv2.imwrite(str(root / split / "images" / f"{name}.png"), np.full((*mask.shape, 3), 40 * (i % 5), np.uint8))
        cv2.imwrite(str(root / split / "masks" / f"{name}.png"), mask)
    for name in photos or []:
        cv2.imwrite(str(root / "train" / "images" / f"{name}.jpg"), np.zeros((32, 32, 3), np.uint8))
    return root


def test_without_classes_json_the_classes_are_the_ids_found_and_bad_ids_are_named(tmp_path):
    masks = {f"m{i}": np.full((32, 32), i % 4, np.uint8) for i in range(12)}
    masks["m5"][:4] = 255
    data = _folders(tmp_path / "data", masks, photos=["lonely"])
    summary = prepare(data, tmp_path / "prepared", size=32, progress=False)
    palette = json.loads((tmp_path / "prepared" / "palette.json").read_text())
    assert palette["k"] == 4 and palette["ignore_index"] == 255
    assert [c["name"] for c in palette["classes"]] == ["class 0", "class 1", "class 2", "class 3"]
    assert summary["unmatched"] == [f"{data / 'train' / 'images' / 'lonely.jpg'}: no mask"]
    assert sum(summary["ignored_pixels"].values()) == 4 * 32

    (data / "classes.json").write_text(json.dumps({"classes": ["road", {"name": "car", "color": [0, 0, 142]}, "sky"]}))
    with pytest.raises(PairError, match=r"train/masks/m3\.png: class id 3 is not a declared class \(ids 0-2, ignore"):
        prepare(data, tmp_path / "refused", size=32, progress=False)
    assert not (tmp_path / "refused").exists()
    summary = prepare(data, tmp_path / "skipped", size=32, skip_bad=True, progress=False)
    assert sorted(Path(s["file"]).name for s in summary["skipped"]) == ["m11.png", "m3.png", "m7.png"]
    assert json.loads((tmp_path / "skipped" / "palette.json").read_text())["classes"][1]["rgb"] == [0, 0, 142]

    (data / "classes.json").write_text(json.dumps({"classes": ["road", "car"], "ignore_index": 1}))
    with pytest.raises(DatasetError, match=r"classes\.json: ignore_index 1 must be null or an id from 2 to 255"):
        prepare(data, tmp_path / "refused", size=32, progress=False)


def test_a_colour_mask_is_a_bad_file_naming_it(tmp_path):
    masks = {f"m{i}": np.full((32, 32), i % 3, np.uint8) for i in range(8)}
    data = _folders(tmp_path / "data", masks)
    cv2.imwrite(str(data / "train" / "masks" / "m0.png"), np.dstack([np.zeros((32, 32), np.uint8)] * 2
                                                                   + [np.ones((32, 32), np.uint8)]))
    with pytest.raises(PairError, match=r"m0\.png: a colour mask: expected single-channel class ids"):
        prepare(data, tmp_path / "out", size=32, progress=False)


@pytest.mark.tf_lines
def test_ignored_pixels_add_nothing_to_loss_metrics_or_confusion():
    """A hand-made case: truth [0, 1, 255], prediction [0, 0, 1]."""
    from seglib.training.losses import make_loss
    from seglib.training.metrics import make_metrics, scores, update_confusion

    truth = np.array([[[0, 1, 255]]], np.uint8)
    probs = np.array([[[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]]], np.float32)
    confusion = update_confusion(np.zeros((2, 2), np.int64), truth, probs.argmax(-1), ignore_index=255)
    assert confusion.tolist() == [[1, 0], [1, 0]]
    result = scores(confusion)
    assert result["pixel_accuracy"] == 0.5 and result["mean_iou"] == pytest.approx((0.5 + 0.0) / 2)
    ce = make_loss("ce", 2, ignore_index=255)
    expected = -(np.log(0.9) + np.log(0.4)) / 2  # the two scored pixels only
    assert float(ce(truth, probs)) == pytest.approx(expected, rel=1e-4)
    other = probs.copy()
    other[0, 0, 2] = [0.99, 0.01]  # whatever is predicted at the ignored pixel
    for name in ("ce", "dice", "ce_dice"):
        loss = make_loss(name, 2, ignore_index=255)
        assert float(loss(truth, probs)) == pytest.approx(float(loss(truth, other)), rel=1e-5)
    weighted = make_loss("weighted_ce", 2, np.array([1.0, 1.0], np.float32), ignore_index=255)
    assert float(weighted(truth, probs)) == pytest.approx(expected, rel=1e-4)
    accuracy, iou = make_metrics(2, ignore_index=255)
    accuracy.update_state(truth, probs)
    iou.update_state(truth, probs)
    assert float(accuracy.result()) == pytest.approx(0.5) and float(iou.result()) == pytest.approx(0.25)


class Recorder:
    """A user callback: remembers every epoch's logs, and counts how often the training step is
    traced (Keras calls ``train_step`` from Python only while tf.function traces it)."""

    def __new__(cls):
        import keras

        class _Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.epochs, self.traces = [], 0

            def set_model(self, model):
                super().set_model(model)
                step = model.train_step

                def counted(data):
                    self.traces += 1
                    return step(data)

                model.train_step = counted

            def on_epoch_end(self, epoch, logs=None):
                self.epochs.append((epoch, dict(logs or {})))

        return _Recorder()


@pytest.fixture(scope="module")
def cityscapes_run(labelled, tmp_path_factory) -> dict:
    """A 64x128 run on the Cityscapes-shaped tree: cosine schedule with warmup, TensorBoard, a user callback."""
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    root = tmp_path_factory.mktemp("cs-run")
    prepare(labelled / "cityscapes", root / "prepared", size="64x128", progress=False)
    recorder = Recorder()
    run = train(TrainConfig(str(root / "prepared"), str(root / "run"), backbone="mobilenet", epochs=4, batch_size=4,
                            encoder_weights=None, lr=2e-3, lr_schedule="cosine", warmup_epochs=1, tensorboard=True,
                            patience=4), verbose=0, callbacks=[recorder])
    return {"root": root, "run": run, "recorder": recorder}


@pytest.mark.tf_lines
def test_a_labelled_non_square_run_trains_with_schedule_tensorboard_and_callbacks(cityscapes_run):
    run, recorder = cityscapes_run["run"], cityscapes_run["recorder"]
    assert run.epochs_run == 4 and [e for e, _ in recorder.epochs] == [0, 1, 2, 3]
    assert recorder.traces == 1  # the optimizer is built before fit: no second trace for its variables
    assert all("val_mean_iou" in logs and "learning_rate" in logs for _, logs in recorder.epochs)
    rates = [float(h["learning_rate"]) for h in run.history]
    assert rates[0] < rates[1] and rates[1] > rates[2] > rates[3]  # warmup, then cosine decay
    assert max(rates) <= 2e-3 and rates[3] < 2e-3 * 0.2  # logged: the rate of each epoch's last step
    events = sorted(p.relative_to(run.run_dir / "tensorboard").parts[0]
                    for p in (run.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events == ["train", "validation"]
    config = json.loads(RunDir(run.run_dir).config.read_text())
    assert config["input_size"] == [64, 128] and config["ignore_index"] == 255 and config["lr_schedule"] == "cosine"


def test_the_learning_rate_warms_up_linearly_then_follows_the_schedule():
    from seglib.training.callbacks import learning_rate
    from seglib.training.config import TrainConfig

    cosine = TrainConfig("p", "r", epochs=10, lr=1e-3, lr_schedule="cosine", warmup_epochs=2)
    rates = [learning_rate(step, cosine, 10) for step in range(101)]
    assert rates[0] == pytest.approx(1e-5) and rates[10] == pytest.approx(0.505e-3) and rates[20] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[20:], rates[21:], strict=False)) and rates[100] == pytest.approx(1e-5)
    plateau = TrainConfig("p", "r", epochs=10, lr=1e-3, lr_schedule="plateau", warmup_epochs=1)
    assert [learning_rate(s, plateau, 10) for s in (0, 5, 10)] == pytest.approx([1e-5, 0.505e-3, 1e-3])
    assert learning_rate(11, plateau, 10) is None  # after warmup the optimizer's rate (ReduceLROnPlateau's) stands


def test_evaluate_export_predict_and_serve_keep_the_shape_and_leave_ignored_pixels_out(cityscapes_run, labelled,
                                                                                      tmp_path, seglib_cli):
    from seglib.inference.evaluate import evaluate
    from seglib.inference.export import export_run

    root, run_dir = cityscapes_run["root"], cityscapes_run["run"].run_dir
    metrics = evaluate(run_dir, root / "prepared", "test")
    test = open_split(root / "prepared", "test")
    ignored = int((np.asarray(test.labels) == 255).sum())
    assert metrics["ignored_pixels"] == ignored > 0
    assert metrics["num_pixels"] == test.labels.size - ignored
    exported = export_run(run_dir, formats=["int8"], calibration_images=8, latency_repeats=2)
    assert exported["formats"]["int8"]["agreement"] > 0.5
    photo = next((labelled / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))  # 2:1, like real Cityscapes
    done = seglib_cli("predict", RunDir(run_dir).tflite("int8"), photo, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    mask = cv2.imread(str(tmp_path / "out" / f"{photo.stem}_mask.png"))
    assert mask.shape == (64, 128, 3)  # the whole photo, not its left half: a 2:1 photo for a 64x128 model

    from fastapi.testclient import TestClient

    from seglib.inference.serve import create_app

    with TestClient(create_app(run_dir, model="int8", threads=1)) as client:
        assert client.get("/health").json()["input_size"] == [64, 128]
        answer = client.post("/predict?output=json", files={"file": ("p.png", photo.read_bytes(), "image/png")})
        assert answer.status_code == 200 and (answer.json()["width"], answer.json()["height"]) == (128, 64)


@pytest.mark.parametrize("arch,size", [("fpn", "64x128"), ("linknet", "64x128"),
                                       pytest.param("pspnet", "96x192", marks=pytest.mark.tf_lines)])
def test_each_architecture_trains(labelled, tmp_path, arch, size):
    """(The U-Net, the default, is trained by the other tests.)"""
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    prepare(labelled / "folders", tmp_path / "prepared", size=size, progress=False)
    run = train(TrainConfig(str(tmp_path / "prepared"), str(tmp_path / "run"), arch=arch, backbone="mobilenet",
                            epochs=1, batch_size=8, encoder_weights=None), verbose=0)
    assert run.model_path.exists() and json.loads(RunDir(run.run_dir).config.read_text())["arch"] == arch
    from seglib.inference.evaluate import evaluate
    from seglib.inference.predict import predict_paths
    from seglib.training.saved import input_hw, load_keras_model

    height, width = (int(v) for v in size.split("x"))
    assert input_hw(load_keras_model(run.model_path)) == (height, width)
    metrics = evaluate(run.run_dir, tmp_path / "prepared")
    assert metrics["ignored_pixels"] > 0 and 0 <= metrics["pixel_accuracy"] <= 1
    photo = sorted((labelled / "folders" / "val" / "images").iterdir())[0]
    written = predict_paths(run.model_path, photo, tmp_path / "predicted")["written"][0]["outputs"]
    assert cv2.imread(written[0]).shape == (*SIZE, 3)  # the photo's own size


def test_an_input_size_an_architecture_cannot_take_is_refused_before_work(labelled, tmp_path):
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    prepare(labelled / "folders", tmp_path / "prepared", size="64x128", progress=False)
    with pytest.raises(ValueError, match=r"pspnet cannot take 64x128 images: H and W must be multiples of 48"):
        train(TrainConfig(str(tmp_path / "prepared"), str(tmp_path / "run"), arch="pspnet", encoder_weights=None))
    assert not (tmp_path / "run").exists()


@pytest.mark.tf_lines
def test_encoder_weights_load_from_a_local_file(tmp_path):
    from seglib.training.model import build_model, encoder

    source = encoder("mobilenetv2")  # random weights: what a downloaded ImageNet file would hold instead
    source.save_weights(tmp_path / "mobilenetv2_encoder.weights.h5")
    model = build_model("unet", "mobilenetv2", 5, (64, 128), str(tmp_path / "mobilenetv2_encoder.weights.h5"))
    net = model.get_layer(index=2)
    compared = 0
    for layer in (layer for layer in source.layers if layer.weights):
        for expected, loaded in zip(layer.get_weights(), net.get_layer(layer.name).get_weights(), strict=True):
            assert np.array_equal(expected, loaded)
            compared += 1
    assert compared > 100
    with pytest.raises(FileNotFoundError, match=r"nowhere\.h5: no such encoder weights file"):
        build_model("unet", "mobilenetv2", 5, 64, str(tmp_path / "nowhere.h5"))
    with pytest.raises(ValueError, match=r"mobilenetv2_encoder\.weights\.h5: not weights of a resnet18 encoder"):
        build_model("unet", "resnet18", 5, 64, str(tmp_path / "mobilenetv2_encoder.weights.h5"))


@pytest.mark.tf_lines
@pytest.mark.parametrize("arch, backbone", [("fpn", "mobilenetv2"), ("linknet", "mobilenetv2"), ("tinyunet", "base8")])
def test_each_decoder_builds_saves_and_loads_at_a_non_square_size(arch, backbone, tmp_path):
    """The decoders whose training runs only on the main TF line (tinyunet: in the tests of batches,
    strategies and Colab) are still built, called, saved and loaded on the TF 2.18 line."""
    from seglib.training.model import build_model
    from seglib.training.saved import input_hw, load_keras_model

    model = build_model(arch, backbone, 5, (64, 128), None)
    out = np.asarray(model(np.zeros((1, 64, 128, 3), np.float32)))
    assert out.shape == (1, 64, 128, 5) and np.allclose(out.sum(-1), 1, atol=1e-4)
    model.save(tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")
    assert input_hw(loaded) == (64, 128)
    assert np.allclose(np.asarray(loaded(np.zeros((1, 64, 128, 3), np.float32))), out, atol=1e-5)


def test_training_with_an_encoder_file_and_fine_tuning_from_a_run(cityscapes_run, tmp_path):
    from seglib.training.config import TrainConfig
    from seglib.training.model import encoder
    from seglib.training.train import copy_weights, train

    root = cityscapes_run["root"]
    encoder("mobilenet").save_weights(tmp_path / "enc.weights.h5")
    earlier = cityscapes_run["run"].run_dir
    lines = []  # the encoder file is loaded first, then the earlier run's weights replace all of it
    tuned = train(TrainConfig(str(root / "prepared"), str(tmp_path / "tuned"), backbone="mobilenet", epochs=1,
                              encoder_weights=str(tmp_path / "enc.weights.h5"), init_from=str(earlier)),
                  verbose=0, log=lines.append)
    assert tuned.stop_reason == "finished" and lines[0].startswith(f"started from {earlier}: ")
    assert json.loads(RunDir(tuned.run_dir).config.read_text())["encoder_weights"] == str(tmp_path / "enc.weights.h5")
    from seglib.training.model import build_model
    from seglib.training.saved import load_keras_model

    fresh = build_model("unet", "mobilenet", 19, (64, 128), None)
    assert copy_weights(fresh, RunDir(earlier).model)["kept_new"] == []
    for new, old in zip(fresh.weights, load_keras_model(RunDir(earlier).model).weights, strict=True):
        assert np.array_equal(np.asarray(new), np.asarray(old))
    with pytest.raises(ValueError, match=r"a unet/mobilenet model; this run is fpn/mobilenet"):
        train(TrainConfig(str(root / "prepared"), str(tmp_path / "other"), arch="fpn", backbone="mobilenet",
                          encoder_weights=None, init_from=str(earlier)))


def test_fetch_weights_names_the_file_segmentation_models_downloads(tmp_path):
    """The download itself needs internet (not here); which file, and the backbones it cannot fetch."""
    from seglib.training.model import fetch_encoder_weights, imagenet_weights_source

    source = imagenet_weights_source("resnet34")
    assert source["name"] == "resnet34_imagenet_1000_no_top.h5" and len(source["md5"]) == 32
    assert source["url"].startswith("https://github.com/qubvel/classification_models/releases/download/")
    with pytest.raises(ValueError, match="mobilenetv2: its ImageNet weights come from keras.applications"):
        fetch_encoder_weights("mobilenetv2", tmp_path)
    assert list(tmp_path.iterdir()) == []
