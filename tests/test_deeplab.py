"""DeepLabV3+: its shapes on the encoders seglib uses, the context each ASPP branch sees, that it
learns, and that a run of it trains, resumes, evaluates, exports and serves like every other arch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from seglib.layout import RunDir


@pytest.mark.tf_lines
@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet34", "efficientnetb0"])
@pytest.mark.parametrize("size", [(64, 128), (96, 96)])
def test_shapes_at_output_stride_16_with_a_stride_4_decoder(backbone, size):
    from seglib.training.model import build_model

    model = build_model("deeplabv3plus", backbone, 5, size, encoder_weights=None)
    head = model.get_layer("deeplabv3plus")
    height, width = size
    assert tuple(model.output.shape) == (None, height, width, 5)
    for branch in ("aspp_1x1", "aspp_rate6", "aspp_rate12", "aspp_rate18", "aspp_pool_up"):
        layer = head.get_layer(branch if branch.endswith("_up") else f"{branch}_relu")
        assert tuple(layer.output.shape) == (None, height // 16, width // 16, 256), branch
    # the stride-16 map is 4x8 or 6x6: an axis no longer than the rate keeps the centre tap alone
    convs = [head.get_layer(f"aspp_rate{r}_conv") for r in (6, 12, 18)]
    expected = {(64, 128): [((1, 3), (1, 6)), ((1, 1), (1, 1)), ((1, 1), (1, 1))],
                (96, 96): [((1, 1), (1, 1))] * 3}[size]
    assert [(c.kernel_size, c.dilation_rate) for c in convs] == expected
    assert tuple(head.get_layer("decoder_low_relu").output.shape) == (None, height // 4, width // 4, 48)
    assert tuple(head.get_layer("decoder_conv2_relu").output.shape) == (None, height // 4, width // 4, 256)
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32), verbose=0)
    assert np.allclose(probs.sum(-1), 1, atol=1e-4)


@pytest.mark.tf_lines
@pytest.mark.parametrize("feature_hw", [(4, 8), (6, 6), (16, 32), (41, 41)])
def test_an_atrous_branch_without_its_dead_taps_computes_the_full_3x3_convolution(feature_hw):
    """The reduced kernel gives what the 3x3 dilated convolution with the same centre taps gives."""
    import keras

    from seglib.training.deeplab import RATES, atrous_kernel

    x = np.random.default_rng(3).normal(size=(2, *feature_hw, 5)).astype(np.float32)
    for rate in RATES:
        kernel, dilation = atrous_kernel(rate, feature_hw)
        assert kernel == tuple(3 if rate < n else 1 for n in feature_hw)
        full = keras.layers.Conv2D(7, 3, padding="same", dilation_rate=rate, use_bias=False)
        full.build(x.shape)
        reduced = keras.layers.Conv2D(7, kernel, padding="same", dilation_rate=dilation, use_bias=False)
        reduced.build(x.shape)
        rows = slice(None) if kernel[0] == 3 else slice(1, 2)
        cols = slice(None) if kernel[1] == 3 else slice(1, 2)
        reduced.kernel.assign(np.asarray(full.kernel)[rows, cols])
        assert np.allclose(np.asarray(reduced(x)), np.asarray(full(x)), atol=1e-5), (rate, feature_hw)


def test_a_size_it_cannot_take_is_refused_with_its_rule():
    from seglib.training.model import check_input_size

    assert check_input_size("deeplabv3plus", (64, 128)) == (64, 128)
    with pytest.raises(ValueError, match=r"deeplabv3plus cannot take 80x128 images: H and W must be multiples of 16 "
                                         r"\(its ASPP runs at 1/16 of the input\) and of 32"):
        check_input_size("deeplabv3plus", (80, 128))


@pytest.mark.tf_lines
def test_each_aspp_branch_sees_its_own_context():
    """How far from a pixel its output in each branch can look: the gradient of one output pixel
    with respect to the input is non-zero only within the branch's reach."""
    import keras
    import tensorflow as tf

    from seglib.training.deeplab import aspp_branches

    side, centre = 41, 20
    inputs = keras.Input((side, side, 4))
    model = keras.Model(inputs, aspp_branches(inputs, filters=8))
    x = tf.Variable(np.random.default_rng(1).normal(size=(2, side, side, 4)).astype(np.float32))
    reach = []
    for branch in range(5):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(model(x, training=False)[branch][:, centre, centre])
        grad = np.abs(tape.gradient(value, x).numpy()).sum(axis=(0, 3))
        rows, cols = np.nonzero(grad > 1e-9)
        reach.append(int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max())))
    assert reach == [0, 6, 12, 18, centre]  # 1x1, rates 6, 12, 18, and image pooling: the whole input


@pytest.mark.tf_lines
def test_it_learns_a_small_task():
    import keras

    from seglib.training.losses import make_loss
    from seglib.training.model import build_model

    rng = np.random.default_rng(2)
    images = np.zeros((16, 64, 64, 3), np.float32)
    labels = np.zeros((16, 64, 64), np.uint8)
    for image, label in zip(images, labels, strict=True):  # a bright box on a dark background
        top, left = rng.integers(0, 32, 2)
        image[top:top + 32, left:left + 32] = 220
        label[top:top + 32, left:left + 32] = 1
    images += rng.normal(0, 10, images.shape).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_model("deeplabv3plus", "mobilenetv2", 2, 64, encoder_weights=None)
    model.compile(keras.optimizers.Adam(2e-3), make_loss("ce", 2), metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=8, epochs=8, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0] and history["accuracy"][-1] > 0.9


@pytest.mark.tf_lines
@pytest.mark.slow
def test_a_deeplab_run_trains_resumes_evaluates_exports_and_serves(tmp_path, seglib_cli, interrupted_run):
    """The command line on 64x128 Cityscapes-shaped data; interrupted after its first epoch, then resumed."""
    from fastapi.testclient import TestClient

    from seglib.data.prepare import prepare
    from seglib.data.synthetic import generate_labelled
    from seglib.inference.serve import create_app
    from seglib.training.config import TrainConfig

    generate_labelled(tmp_path / "cs", count=24, seed=4, size=(64, 128), layout="cityscapes", progress=False)
    prepare(tmp_path / "cs", tmp_path / "prepared", size="64x128", progress=False)
    run_dir = RunDir(tmp_path / "run")
    config = TrainConfig(str(tmp_path / "prepared"), str(run_dir.root), arch="deeplabv3plus", backbone="mobilenetv2",
                         epochs=3, batch_size=4, encoder_weights=None, patience=3)

    interrupted_run(config)
    assert run_dir.backup_epochs() and not run_dir.info.exists()
    done = seglib_cli("train", tmp_path / "prepared", run_dir.root, "--arch", "deeplabv3plus", "--backbone",
                      "mobilenetv2", "--epochs", "3", "--batch-size", "4", "--patience", "3", "--encoder-weights",
                      "none", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "epoch 1/3" not in done.stdout and "epoch 2/3" in done.stdout  # resumed after epoch 1
    info = json.loads(run_dir.info.read_text())
    assert info["epochs_run"] == 3 and info["parameters"] > 1e6
    done = seglib_cli("evaluate", run_dir.root, tmp_path / "prepared")
    assert done.returncode == 0 and "mean IoU" in done.stdout, done.stderr
    done = seglib_cli("export", run_dir.root, "--formats", "fp32,int8,onnx", "--calibration-images", "8")
    assert done.returncode == 0, done.stderr
    exported = json.loads(run_dir.export.read_text())["formats"]
    assert set(exported) == {"fp32", "int8", "onnx"}  # fp16: the same conversion as for every arch
    assert exported["fp32"]["agreement"] > 0.99 and exported["int8"]["agreement"] > 0.8
    photo = next((tmp_path / "cs" / "leftImg8bit" / "val").rglob("*.png"))
    with TestClient(create_app(run_dir.root, model="int8", threads=1)) as client:
        answer = client.post("/predict?output=json", files={"file": ("p.png", photo.read_bytes(), "image/png")})
    assert answer.status_code == 200 and (answer.json()["width"], answer.json()["height"]) == (128, 64)
