"""Training on a tiny synthetic set (64 px, random encoder weights: no downloads here)."""
import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from seglib.data.prepare import prepare
from seglib.data.splits import open_split
from seglib.training.checks import validate
from seglib.training.config import TrainConfig
from seglib.training.losses import LOSSES, class_weights
from seglib.training.train import load_model, train


@pytest.fixture(scope="module")
def small_prepared(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("p64") / "prepared"
    prepare(synth_dir, out, size=64, progress=False)
    return out


STARTUP_NOISE = ("absl::InitializeLog", "I0000", "E0000", "W0000", "oneDNN", "cuInit", "cudart")


def startup_lines(stderr: str) -> list[str]:
    """TensorFlow's and absl's start-up lines in ``stderr``; oneDNN's notice that it falls back to
    Eigen for int32 (once, when training first runs, not at start-up) is left to the user."""
    return [line for line in stderr.splitlines() if any(n in line for n in STARTUP_NOISE)
            and "oneDNN supports DT_INT32 only on platforms with AVX-512" not in line]


@pytest.mark.tf_lines
@pytest.mark.slow
def test_commands_into_a_file_print_their_own_lines_one_per_epoch_and_debug_shows_tensorflows(small_prepared,
                                                                                            tmp_path):
    """Fresh processes with stdout a file (not a terminal): no progress bar updates, not one line of
    TensorFlow's, absl's or Keras' on stderr (start-up, the first epoch's oneDNN notice, Keras' input
    structure warning), nothing but seglib's own; --debug shows TensorFlow's."""
    cli = [sys.executable, "-m", "seglib"]
    done = subprocess.run([*cli, "prepare", str(tmp_path / "synth"), str(tmp_path / "prepared"), "--synth-count", "12",
                           "--size", "64", "--sample-pixels", "5000"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no progress bars into a file
    assert [line.split(" ")[0] for line in done.stdout.splitlines()][:2] == ["generated", "prepared"], done.stdout
    with open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run([*cli, "train", str(small_prepared), str(tmp_path / "run"), "--epochs", "2",
                               "--arch", "tinyunet", "--backbone", "base8", "--encoder-weights", "none"], stdout=out,
                              stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    printed = (tmp_path / "out.txt").read_text()
    assert "\r" not in printed and "━" not in printed
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("epoch ")] == ["epoch 1/2",
                                                                                                   "epoch 2/2"]
    assert not startup_lines(done.stderr), done.stderr
    # TensorFlow's INFO lines on, as users have them (the suite's 2 leaves at most a cuInit error, which TF 2.20
    # prints or not as the machine's CUDA stub answers): dropped, and shown with --debug
    verbose = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    for command in (["evaluate", str(tmp_path / "run"), str(small_prepared)],
                    ["--debug", "evaluate", str(tmp_path / "run"), str(small_prepared)]):
        done = subprocess.run([*cli, *command], capture_output=True, text=True, env=verbose)
        assert done.returncode == 0 and "mean IoU" in done.stdout, done.stderr
        assert bool(startup_lines(done.stderr)) == (command[0] == "--debug"), done.stderr
        assert command[0] == "--debug" or done.stderr == "", done.stderr


@pytest.mark.tf_lines
def test_train_writes_a_complete_run(trained):
    """The ``trained`` fixture's run, as train() left it (the fixture is read-only)."""
    run_dir = trained / "run"
    assert {p.name for p in run_dir.iterdir()} == {".seglib", ".seglib.lock", "config.json", "palette.json",
                                                  "history.csv", "model.keras", "run.json"}
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 8 and losses[-1] < losses[0]
    assert {"val_loss", "pixel_accuracy", "mean_iou", "val_mean_iou"} <= set(rows[0])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "tinyunet" and config["num_classes"] == 10 and config["device"]["kind"] == "cpu"
    assert {"tensorflow", "keras", "seglib"} <= set(config["versions"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["stop_reason"] == "finished" and info["epochs_run"] == 8 and len(info["seconds_per_epoch"]) == 8
    assert info["train_images_per_second"] > 0
    model = load_model(run_dir)
    test = open_split(trained / "prepared", "test")
    probs = model.predict(np.asarray(test.images[:2], np.float32), verbose=0)
    assert probs.shape == (2, 64, 64, 10) and np.allclose(probs.sum(-1), 1, atol=1e-3)


@pytest.mark.parametrize("change, message", [
    ({"backbone": "resnet999"}, "unknown backbone"),
    ({"batch_size": 0}, r"BATCH_SIZE \(--batch-size\): must be at least 1, got 0"),
    ({"prepared_dir": "/nonexistent/prepared"}, "not a prepared dataset"),
    ({"loss": "hinge"}, r"LOSS \(--loss\): unknown value 'hinge'; choose one of ce, "),
    ({"arch": "tinyunet", "backbone": "base8", "encoder_weights": "imagenet"},
     r"ENCODER_WEIGHTS \(--encoder-weights\): tinyunet takes none \(random init\), got imagenet$"),
    ({"arch": "tinyunet"}, "unknown backbone 'resnet34' for tinyunet; choose one of: base8, base16, base32"),
])
def test_bad_parameters_fail_before_training(small_prepared, tmp_path, change, message):
    config = TrainConfig(str(small_prepared), str(tmp_path / "run"), encoder_weights=None)
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validate(config)
    assert not (tmp_path / "run").exists()


def test_the_registries_give_the_choices_and_an_unknown_name_lists_the_known_ones():
    from seglib.training.losses import make_loss
    from seglib.training.model import ARCHITECTURES, _sm, architecture

    choices = {f.name: f.metadata.get("choices") for f in fields(TrainConfig)}
    assert choices["arch"] == tuple(ARCHITECTURES) and choices["loss"] == tuple(LOSSES)
    # the encoders --backbone is checked against before TensorFlow is imported: segmentation-models' own
    assert ARCHITECTURES["unet"].encoders() == sorted(_sm().Backbones.models_names())
    with pytest.raises(ValueError, match="unknown architecture 'segnet'; choose one of unet, fpn, linknet, pspnet, "
                                         "deeplabv3plus"):
        architecture("segnet")
    with pytest.raises(ValueError, match="unknown loss 'hinge'; choose one of ce, weighted_ce, dice, ce_dice, ohem"):
        make_loss("hinge", 4)


def test_palette_mismatch_is_refused(small_prepared, synth_dir, tmp_path):
    other = tmp_path / "k8"
    prepare(synth_dir, other, size=64, clusters=8, progress=False)
    from seglib.fsutil import write_marker

    run_dir = tmp_path / "run"  # an unfinished run trained on K=8 data, to be resumed on K=10 data
    (run_dir / "backup" / "epoch-0001").mkdir(parents=True)
    (run_dir / "backup" / "epoch-0001" / "state.json").write_text('{"epoch": 1}')
    write_marker(run_dir, "run")
    (run_dir / "palette.json").write_bytes((other / "palette.json").read_bytes())
    with pytest.raises(ValueError, match="K=8"):
        validate(TrainConfig(str(small_prepared), str(run_dir), encoder_weights=None))


def test_class_weights_favour_rare_classes():
    weights = class_weights([0.7, 0.2, 0.1])
    assert weights[2] > weights[1] > weights[0]
    assert np.isclose((weights * np.array([0.7, 0.2, 0.1])).sum(), 1.0)


def test_cli_train_rejects_unknown_backbone(small_prepared, tmp_path, seglib_cli):
    done = seglib_cli("train", small_prepared, tmp_path / "r", "--backbone", "nope", "--encoder-weights", "none")
    assert done.returncode == 2 and "unknown backbone 'nope'" in done.stderr


@pytest.mark.tf_lines
def test_backup_keeps_the_callbacks_state_and_survives_a_failed_write(tmp_path):
    """Unit check of what survives a restart (the kill test cannot force the best epoch to fall
    before the kill), and of a backup that cannot be written (a full disk): the previous one stays."""
    import errno

    import keras

    from seglib.layout import RunDir
    from seglib.training.callbacks import atomic_checkpoint, epoch_backup
    from seglib.training.checks import latest_backup

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    folder = tmp_path / "backup"

    def fresh(restored=None):
        checkpoint = atomic_checkpoint(tmp_path / "model.keras", "val_loss")
        early = keras.callbacks.EarlyStopping("val_loss", patience=5)
        early.on_train_begin()
        backup = epoch_backup(RunDir(tmp_path), checkpoint, early, restored)
        backup.set_model(model)
        return checkpoint, early, backup

    checkpoint, early, backup = fresh()
    backup.on_epoch_end(0)  # before any value was seen (EarlyStopping's best is still None)
    checkpoint.best, checkpoint.best_epoch = 0.25, 2
    early.best, early.wait, early.best_epoch = 0.25, 3, 1
    backup.on_epoch_end(3)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0004"]  # older backups removed
    (folder / "epoch-0005").mkdir()  # a backup killed half-way has no state.json: not used
    found, state = latest_backup(tmp_path)
    assert found.root.name == "epoch-0004" and state["epoch"] == 4

    checkpoint, early, backup = fresh(state)  # a restarted process
    assert checkpoint.best == math.inf and early.wait == 0 and early.best is None
    backup.on_train_begin()
    assert (checkpoint.best, checkpoint.best_epoch) == (0.25, 2)
    assert (early.best, early.wait, early.best_epoch) == (0.25, 3, 1)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    model.save_weights = full_disk
    with pytest.raises(OSError, match="could not write the training backup .*No space left.*after epoch 5"):
        backup.on_epoch_end(5)
    assert latest_backup(tmp_path)[1]["epoch"] == 4  # the last complete backup is still there
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no half-written temp folder


@pytest.mark.tf_lines
@pytest.mark.slow
def test_a_finished_run_is_replaced_only_when_asked_a_corrupt_backup_is_named_and_a_nan_run_stops_cleanly(
        trained, tmp_path, seglib_cli, interrupted_run):
    import shutil

    from seglib.fsutil import write_marker

    prepared = trained / "prepared"
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)  # a finished run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="holds a finished run .*--overwrite"):
        train(TrainConfig(str(prepared), str(run_dir), epochs=2, encoder_weights=None), verbose=0)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # untouched
    done = seglib_cli("train", prepared, run_dir, "--encoder-weights", "none")
    assert done.returncode == 2 and "holds a finished run" in done.stderr

    # an unfinished run whose backup is damaged: named, with the way to start over, which --overwrite takes
    broken = tmp_path / "broken"
    epoch = broken / "backup" / "epoch-0002"
    epoch.mkdir(parents=True)
    (epoch / "state.json").write_text(json.dumps({"epoch": 2, "checkpoint_best": 1.0, "checkpoint_best_epoch": 2,
                                                  "early_best": 1.0, "early_wait": 0, "early_best_epoch": 1}))
    (epoch / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n damaged")
    write_marker(broken, "run")
    config = TrainConfig(str(prepared), str(broken), backbone="mobilenet", epochs=3, encoder_weights=None)
    with pytest.raises(ValueError, match=r"epoch-0002/model.weights.h5: corrupt training backup .*--overwrite"):
        train(config, verbose=0)
    config.overwrite = True
    interrupted_run(config, at="start")  # the run starts over: the damaged backup is not read again
    assert not (broken / "backup").exists()

    for stale in ("metrics.json", "confusion.npy", "model_int8.tflite", "export.json"):  # from the earlier model
        (run_dir / stale).write_text("old")
    (run_dir / "notes.md").write_text("mine")
    done = seglib_cli("train", prepared, run_dir, "--arch", "tinyunet", "--backbone", "base8", "--epochs", "3",
                      "--lr", "1e12", "--encoder-weights", "none", "--overwrite", "--quiet")
    info = json.loads((run_dir / "run.json").read_text())  # no model, no success: a script or a batch sees it
    assert done.returncode == 2 and "no finite epoch: no model saved" in done.stderr, done.stderr
    assert "nothing to evaluate or export" in done.stderr and "Traceback" not in done.stderr
    assert info["stop_reason"].startswith("nan") and not (run_dir / "model.keras").exists()
    assert info["epochs_run"] <= 3  # the new run's own history only
    assert not [
        p for p in ("metrics.json", "confusion.npy", "model_int8.tflite", "export.json") if (run_dir / p).exists()
    ]
    assert (run_dir / "notes.md").read_text() == "mine"  # the user's file stays


def test_a_run_folder_has_one_writer_a_resume_with_other_flags_changes_nothing_and_stale_temporaries_go(
        trained, tmp_path, seglib_cli):
    """A second command into a run folder another process writes is refused naming the holder; an
    unfinished run resumed with other flags is refused naming them, before anything is written; the
    temporaries a killed command left in a run folder are removed by the next one that writes there."""
    import shutil

    prepared, run_dir = trained / "prepared", tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom seglib.fsutil import writer_lock\n"
                               "from seglib.layout import RunDir\nwith writer_lock(sys.argv[1], RunDir):\n"
                               "    print('held', flush=True)\n    time.sleep(120)\n", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = seglib_cli("train", prepared, run_dir, "--backbone", "mobilenet", "--encoder-weights", "none")
        assert done.returncode == 2 and f"another seglib command is writing here (pid {holder.pid} on" in done.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".seglib.lock"]
    finally:
        holder.kill()
        holder.wait()

    shutil.rmtree(run_dir)
    shutil.copytree(trained / "run", run_dir)  # an unfinished run: a backup, no run.json
    (run_dir / "run.json").unlink()
    (run_dir / "backup" / "epoch-0001").mkdir(parents=True)
    (run_dir / "backup" / "epoch-0001" / "state.json").write_text(json.dumps({"epoch": 1}))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    done = seglib_cli("train", prepared, run_dir, "--arch", "tinyunet", "--backbone", "base16", "--encoder-weights",
                      "none", "--epochs", "8", "--patience", "8", "--lr", "0.5", "--batch-size", "4")
    assert done.returncode == 2 and "an unfinished run started with other parameters: --backbone base16 (the run " \
        "has base8); --batch-size 4 (the run has 8); --lr 0.5 (the run has 0.001)" in done.stderr, done.stderr
    assert "config.json" in done.stderr and "--overwrite" in done.stderr and "corrupt" not in done.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing rewritten

    (run_dir / "run.json").write_bytes((trained / "run" / "run.json").read_bytes())  # finished again
    shutil.rmtree(run_dir / "backup")
    (run_dir / ".saved_model-1234abcd" / "variables").mkdir(parents=True)  # a killed export's SavedModel
    (run_dir / ".saved_model-1234abcd" / "variables" / "variables.data").write_bytes(b"\0" * 1000)
    (run_dir / ".model.keras.tmp-x1y2.keras").write_bytes(b"half")  # a checkpoint cut by Ctrl-C
    (run_dir / "notes.md").write_text("mine")
    assert seglib_cli("evaluate", run_dir).returncode == 0
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".seglib", ".seglib.lock"]
    assert (run_dir / "notes.md").read_text() == "mine"


def test_a_run_dir_that_is_not_a_seglib_run_is_refused(small_prepared, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a seglib run"):
        validate(TrainConfig(str(small_prepared), str(tmp_path / "run"), encoder_weights=None))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["thesis.docx"]


@pytest.mark.parametrize("damage, message", [
    ("label_in_row_20", "row 20 .* has class id 12, the palette has K=10"),
    ("float_images", "expected uint8 images"),
    ("no_channel_axis", "expected uint8 images"),
    ("missing_rows_in_files", "rows but .* source files"),
])
def test_bad_prepared_arrays_are_refused_before_run_dir_is_made(small_prepared, tmp_path, damage, message):
    import shutil

    bad = tmp_path / "prepared"
    shutil.copytree(small_prepared, bad)
    train_split = bad / "train"
    if damage == "label_in_row_20":
        labels = np.load(train_split / "labels.npy")
        labels[20, 5, 5] = 12
        np.save(train_split / "labels.npy", labels)
    elif damage == "float_images":
        np.save(train_split / "images.npy", np.load(train_split / "images.npy").astype(np.float32))
    elif damage == "no_channel_axis":
        np.save(train_split / "images.npy", np.load(train_split / "images.npy")[..., 0])
    else:
        lines = (train_split / "files.txt").read_text().splitlines()
        (train_split / "files.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=message):
        validate(TrainConfig(str(bad), str(tmp_path / "run"), encoder_weights=None))
    assert not (tmp_path / "run").exists()


@pytest.mark.tf_lines
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_are_finite_differentiable_and_prefer_the_truth(name):
    import tensorflow as tf

    from seglib.training.losses import make_loss

    rng = np.random.default_rng(0)
    y_true = tf.constant(rng.integers(0, 4, (2, 8, 8)), tf.uint8)
    loss = make_loss(name, 4, class_weights([0.5, 0.3, 0.15, 0.05]))
    logits = tf.Variable(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = loss(y_true, tf.nn.softmax(logits))
    grad = tape.gradient(value, logits)
    assert np.isfinite(float(value)) and np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0
    perfect = tf.one_hot(tf.cast(y_true, tf.int32), 4) * 0.97 + 0.01
    assert float(loss(y_true, perfect)) < float(value)


@pytest.mark.tf_lines
def test_ohem_keeps_the_hard_pixels_and_at_least_its_share_and_averages_their_cross_entropy():
    from seglib.training.losses import make_loss, ohem_mask

    # one image of 2x4 pixels, 2 classes; the last pixel is ignored (255)
    p_true = np.array([0.9, 0.8, 0.6, 0.3, 0.95, 0.75, 0.5, 0.1], np.float32)
    truth = np.array([[0, 1, 0, 1], [0, 1, 0, 255]], np.uint8)[None]
    probs = np.where(truth[..., None] == np.arange(2), p_true.reshape(1, 2, 4, 1), 1 - p_true.reshape(1, 2, 4, 1))
    probs[0, 1, 3] = [0.5, 0.5]  # whatever is predicted where the label is ignored
    valid = (truth != 255).astype(np.float32)
    p = np.take_along_axis(probs, np.where(truth == 255, 0, truth)[..., None].astype(int), -1)[..., 0]
    cases = [  # threshold, min share of the 7 valid pixels -> the pixels kept, by hand
        (0.7, 1 / 16, [0.6, 0.3, 0.5]),  # below 0.7; 1/16 of 7 rounds down to the one hardest, already in
        (0.7, 5 / 7, [0.8, 0.6, 0.3, 0.75, 0.5]),  # at least 5: the two next-hardest join
        (0.2, 1 / 16, [0.3]),  # nothing below 0.2: the hardest one still trains
    ]
    for threshold, share, kept in cases:
        mask = np.asarray(ohem_mask(p, valid, threshold, share))
        assert sorted(p[mask > 0].tolist()) == pytest.approx(sorted(kept))
        loss = make_loss("ohem", 2, ignore_index=255, ohem_threshold=threshold, ohem_min_kept=share)
        assert float(loss(truth, probs)) == pytest.approx(float(np.mean(-np.log(kept))), rel=1e-5)


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_it_resumes_after_space_is_freed(small_prepared, tmp_path,
                                                                                     seglib_cli):
    """RUN_DIR on a small tmpfs: the first epoch's model and backup fit, the next backup does not.
    (The same failure without a mount: test_backup_keeps_the_callbacks_state_and_survives_a_failed_write.)"""
    disk = tmp_path / "disk"
    disk.mkdir()
    # tinyunet/base8: its model.keras is 1.1 MB, a backup (weights and optimizer state) 3 MB, and a write needs
    # 8 MB free besides (callbacks.ensure_space): epoch 1 needs 12.3 MB, epoch 2's backup 15.3
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=14m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run_dir = disk / "run"
        cmd = ["train", small_prepared, run_dir, "--arch", "tinyunet", "--backbone", "base8", "--epochs", "4",
               "--patience", "4", "--encoder-weights", "none"]
        full = seglib_cli(*cmd)
        assert full.returncode == 2, full.stderr[-3000:]
        error = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and full.stderr.strip().endswith(error[0]) and "Traceback" not in full.stderr
        assert "No space left on device" in error[0] and "free some space and run again" in error[0]
        assert not [p for p in run_dir.rglob(".*") if p.name not in (".seglib", ".seglib.lock")]  # no temp file
        assert load_model(run_dir) is not None and (run_dir / "backup").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = seglib_cli(*cmd)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        with open(run_dir / "history.csv") as f:
            assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2, 3]
        assert json.loads((run_dir / "run.json").read_text())["stop_reason"] == "finished"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
