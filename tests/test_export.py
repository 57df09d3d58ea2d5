"""Evaluate, export and predict on a model trained on synthetic data (small, random init)."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from seglib.data.splits import open_split
from seglib.inference.export import TFLiteModel
from seglib.inference.predict import predict_paths
from seglib.training.train import load_model


@pytest.mark.tf_lines
@pytest.mark.slow
def test_metrics_match_an_independent_computation(exported_run, trained):
    """What ``evaluate`` wrote for the run (the ``exported_run`` fixture evaluates it) against
    scikit-learn's confusion matrix of the model's own predictions."""
    test = open_split(trained / "prepared", "test")
    model = load_model(exported_run)
    pred = model.predict(np.asarray(test.images, np.float32), verbose=0).argmax(-1)
    cm = confusion_matrix(np.asarray(test.labels).ravel(), pred.ravel(), labels=range(10))
    assert (np.load(exported_run / "confusion.npy") == cm).all()
    saved = json.loads((exported_run / "metrics.json").read_text())
    assert saved["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert {"pixel_accuracy", "mean_accuracy", "mean_iou", "mean_dice", "per_class"} <= set(saved)
    assert set(saved["per_class"]) == {"iou", "dice", "precision", "recall", "specificity", "pixel_share"}
    assert len(saved["per_class"]["iou"]) == 10 and cm.sum() == saved["num_pixels"]


@pytest.mark.tf_lines
@pytest.mark.slow
def test_tflite_export_parity_and_size(exported_run, trained):
    """What ``export_run`` returned and wrote (the ``exported_run`` fixture's export of every format)."""
    result = json.loads((exported_run / "export.json").read_text())
    formats = result["formats"]
    from importlib.metadata import version

    assert result["runtime"] == f"ai-edge-litert {version('ai-edge-litert')}"
    assert formats["fp16"]["agreement"] >= 0.995
    assert formats["int8"]["agreement"] >= 0.97
    assert formats["int8"]["file_bytes"] <= 0.3 * formats["fp32"]["file_bytes"]
    assert formats["fp32"]["agreement"] >= 0.999
    for fmt in ("fp32", "fp16", "int8"):
        assert (exported_run / f"model_{fmt}.tflite").stat().st_size == formats[fmt]["file_bytes"]
        assert formats[fmt]["latency_ms"] > 0 and 0 <= formats[fmt]["mean_iou"] <= 1
    lite = TFLiteModel(exported_run / "model_int8.tflite")
    image = np.asarray(open_split(trained / "prepared", "test").images[0])
    assert lite.predict(image[None]).shape == (1, 64, 64, 10)
    assert result["keras"]["call"].startswith("compiled call")  # what the latency ratios divide by


@pytest.mark.tf_lines
def test_the_keras_predictor_is_a_compiled_call_with_unchanged_predictions_from_several_threads(trained):
    from concurrent.futures import ThreadPoolExecutor

    from seglib.training.saved import keras_predictor

    model = load_model(trained / "run")
    images = np.asarray(open_split(trained / "prepared", "test").images[:6], np.float32)
    eager = model(images, training=False).numpy()
    predict = keras_predictor(model)
    assert np.allclose(predict(images), eager, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:  # one image per call, four at once, as the service calls it
        for i, probs in enumerate(pool.map(lambda i: predict(images[i : i + 1]), range(6))):
            assert np.allclose(probs[0], eager[i], atol=1e-5)


@pytest.mark.tf_lines
def test_a_runs_model_is_loaded_and_traced_once_until_its_file_is_rewritten(trained, tmp_path):
    """What evaluate, the 03 notebook's figures, export and the report share (``run_model``); users'
    ``load_model`` gives a model of their own."""
    import os

    from seglib.training.saved import run_model

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    model, predict = run_model(run / "model.keras")
    assert run_model(run / "model.keras") == (model, predict) and load_model(run) is not model
    images = np.asarray(open_split(trained / "prepared", "test").images[:2], np.float32)
    shutil.copy(run / "model.keras", tmp_path / "new.keras")
    os.replace(tmp_path / "new.keras", run / "model.keras")  # as training writes it: a new file renamed in place
    again, predict_again = run_model(run / "model.keras")
    assert again is not model and np.allclose(predict_again(images), predict(images), atol=1e-6)


@pytest.mark.tf_lines
@pytest.mark.slow
@pytest.mark.parametrize("model_file", ["model.keras", "model_fp32.tflite"])
def test_predict_folder_with_a_corrupt_file(exported_run, trained, tmp_path, model_file, declared_png):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(sorted((trained / "pairs" / "val").glob("*.jpg"))[:2]):
        shutil.copy(f, folder / f"pair{i}.jpg")
    photo = np.asarray(open_split(trained / "prepared", "test").images[0])
    import cv2

    cv2.imwrite(str(folder / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))  # a plain photo, not a pair
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    declared_png(folder / "huge.png", 100_000, 50_000)
    result = predict_paths(exported_run / model_file, folder, tmp_path / "out")
    assert len(result["written"]) == 3
    assert {s["file"].rsplit("/", 1)[-1]: s["reason"].split(" ")[0] for s in result["skipped"]} == \
        {"corrupt.jpg": "not", "huge.png": "image"}
    mask = cv2.imread(str(tmp_path / "out" / "pair0_mask.png"))
    assert mask.shape == (128, 128, 3)  # the photo half of a 256x128 pair, at its own size
    assert cv2.imread(str(tmp_path / "out" / "photo_overlay.png")).shape == (64, 64, 3)


@pytest.mark.slow
def test_predict_leaves_every_file_it_did_not_write_untouched_and_never_reads_its_outputs(trained, tmp_path,
                                                                                        seglib_cli):
    import cv2

    photo = cv2.cvtColor(np.asarray(open_split(trained / "prepared", "test").images[0]), cv2.COLOR_RGB2BGR)
    model = str(trained / "run" / "model.keras")

    def predict(*args):
        return seglib_cli("predict", model, *args)

    pin = tmp_path / "pin"  # the photo and the user's own street_mask.png, predicted into the same folder
    pin.mkdir()
    cv2.imwrite(str(pin / "street.png"), photo)
    (pin / "street_mask.png").write_bytes(b"the user's own mask")
    done = predict(pin, pin)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {pin / 'street_mask.png'}: exists and seglib did not write it; predict into another OUT_DIR, or "
        "replace it with --overwrite")
    assert sorted(p.name for p in pin.iterdir()) == ["street.png", "street_mask.png"]
    assert (pin / "street_mask.png").read_bytes() == b"the user's own mask"
    done = predict(pin, pin, "--overwrite")  # asked for: replaced, and not read back as an input
    assert done.returncode == 0 and "for 1 image(s)" in done.stdout, done.stderr
    assert sorted(p.name for p in pin.iterdir()) == [".seglib", "street.png", "street_mask.png", "street_overlay.png"]
    again = predict(pin, pin)  # its own outputs: replaced without asking, never inputs
    assert again.returncode == 0 and "for 1 image(s)" in again.stdout, again.stderr
    user = tmp_path / "userout"
    user.mkdir()
    (user / "street_overlay.png").write_bytes(b"mine")
    refused = predict(pin / "street.png", user)
    assert refused.returncode == 2 and "street_overlay.png: exists and seglib did not write it" in refused.stderr
    assert sorted(p.name for p in user.iterdir()) == ["street_overlay.png"]
    assert (user / "street_overlay.png").read_bytes() == b"mine"


@pytest.mark.slow
def test_predict_names_outputs_apart_and_refuses_nothing_to_predict(trained, tmp_path, seglib_cli):
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.asarray(open_split(trained / "prepared", "test").images[0])
    cv2.imwrite(str(folder / "1.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "1.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    model = str(trained / "run" / "model.keras")

    def predict(*args):
        return seglib_cli("predict", model, *args)

    done = predict(folder, tmp_path / "out")
    assert done.returncode == 0 and "wrote 4 files (mask and overlay) for 2 image(s)" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".seglib") == [
        "1_jpg_mask.png", "1_jpg_overlay.png", "1_png_mask.png", "1_png_overlay.png"]
    (tmp_path / "notes.txt").write_text("not an image")
    single = predict(tmp_path / "notes.txt", tmp_path / "out2")
    assert single.returncode == 2 and "notes.txt: not a readable image" in single.stderr
    (tmp_path / "empty").mkdir()
    empty = predict(tmp_path / "empty", tmp_path / "out3")
    assert empty.returncode == 2 and "no images" in empty.stderr


@pytest.mark.tf_lines
def test_a_truncated_model_is_called_corrupt_not_missing(trained, tmp_path, seglib_cli):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("*.tflite"))
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 3])
    pair = sorted((trained / "pairs" / "val").glob("*.jpg"))[0]
    done = seglib_cli("predict", run / "model.keras", pair, tmp_path / "out")  # an exception would fail the test
    assert done.returncode == 2 and f"{run / 'model.keras'}: corrupt or not a Keras model file" in done.stderr


@pytest.mark.tf_lines
def test_onnx_export_is_measured_and_predicts(exported_run, trained, tmp_path):
    """Keras' own ONNX exporter, run with onnxruntime: measured like the TFLite models."""
    from seglib.reporting.tables import export as export_table

    info = json.loads((exported_run / "export.json").read_text())
    onnx = info["formats"]["onnx"]
    assert onnx["file"] == "model.onnx" and (exported_run / "model.onnx").stat().st_size == onnx["file_bytes"]
    assert onnx["agreement"] > 0.99 and onnx["runtime"].startswith("onnxruntime ")
    assert onnx["latency_ms"] > 0 and onnx["mean_iou"] == pytest.approx(info["keras"]["mean_iou"], abs=0.02)
    assert "onnx" in export_table(info).index
    photo = sorted((trained / "pairs" / "val").glob("*.jpg"))[0]
    result = predict_paths(exported_run / "model.onnx", photo, tmp_path / "out")
    assert [Path(o).name for o in result["written"][0]["outputs"]] == [f"{photo.stem}_mask.png",
                                                                     f"{photo.stem}_overlay.png"]


def test_a_damaged_history_or_config_or_a_full_disk_is_one_line_naming_it(exported_run, trained, tmp_path,
                                                                          seglib_cli):
    """report with a history.csv or config.json that is not seglib's names the file; export onto a full
    disk (a tmpfs just larger than the run) says so in one line and leaves no SavedModel behind."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("*.tflite", "*.onnx"))  # evaluated already
    (run / "history.csv").write_text("epoch,loss\n0,garbage\n\x00\x01,,,\n")
    done = seglib_cli("report", run, "--report-dir", tmp_path / "report")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {run / 'history.csv'}: not a training history")
    assert len(done.stderr.splitlines()) == 1
    (run / "config.json").write_text((trained / "run" / "config.json").read_text()[:300])  # cut short
    done = seglib_cli("report", run, "--report-dir", tmp_path / "report")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {run / 'config.json'}: not valid JSON")

    disk = tmp_path / "disk"
    disk.mkdir()
    # the run (tinyunet: 1.2 MB) and 512 KB more: less than the SavedModel export writes first (its variables 1 MB)
    size = sum(p.stat().st_size for p in (trained / "run").rglob("*") if p.is_file()) // 2**10 + 512
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(trained / "run", disk / "run")
        done = seglib_cli("export", disk / "run", "--formats", "fp32", "--calibration-images", "4",
                          "--eval-images", "4")
        error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(error) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "no space left" in error[0].lower() and "free some space" in error[0]
        assert not list((disk / "run").glob(".saved_model-*")) and not list((disk / "run").glob(".*.tmp*"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
