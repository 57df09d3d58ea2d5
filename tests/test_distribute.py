"""Training under tf.distribute without GPUs: MirroredStrategy over two logical CPU devices, a
MultiWorkerMirroredStrategy over two local processes, and waits for workers that never come. (Batches
spread over processes and Ray: tests/test_spread.py.)"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from seglib.layout import RunDir

ARGS = ["--arch", "tinyunet", "--backbone", "base8", "--batch-size", "4", "--encoder-weights", "none",
        "--patience", "9", "--quiet"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """26 train images (3 global batches of 8 and one of 2) and 7 val: a batch of 7 two replicas cannot split
    evenly (Keras fails on it), so one is left out."""
    from seglib.data.prepare import prepare
    from seglib.data.synthetic import generate

    root = tmp_path_factory.mktemp("distribute")
    generate(root / "pairs", count=41, seed=4, size=64, progress=False)
    prepare(root / "pairs", root / "prepared", size=64, sample_pixels=20_000, progress=False)
    return root / "prepared"


def train_command(prepared, run_dir, *extra, epochs=2) -> list[str]:
    return [sys.executable, "-m", "seglib", "train", str(prepared), str(run_dir), "--epochs", str(epochs), *ARGS,
            *extra]


def environment(**extra) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def history(run_dir) -> list[dict]:
    with open(RunDir(run_dir).history, newline="") as f:
        return list(csv.DictReader(f))


def wait_for(path, *processes, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        assert all(p.poll() is None for p in processes), "a training process ended early"
        time.sleep(0.2)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_every_batch_splits_evenly_across_the_replicas_leaving_out_other_rows_each_epoch(prepared):
    import numpy as np

    from seglib.training.pipeline import make_dataset

    ds = make_dataset(prepared, "train", 8, shuffle=True, multiple_of=3)
    epochs = [[np.asarray(images) for images, _ in ds] for _ in range(4)]
    assert [[len(batch) for batch in epoch] for epoch in epochs] == [[8, 8, 8]] * 4  # 26 rows: 24 taken
    seen = [{batch[i].tobytes() for batch in epoch for i in range(len(batch))} for epoch in epochs]
    assert all(len(rows) == 24 for rows in seen) and len(set.union(*seen)) > 24  # other rows left out each epoch
    assert [len(batch) for batch, _ in make_dataset(prepared, "val", 8, multiple_of=2)] == [6]
    with pytest.raises(ValueError, match=r"/val: 7 images, fewer than the 8 devices each batch is split across"):
        make_dataset(prepared, "val", 8, multiple_of=8)


def test_a_split_smaller_than_the_replicas_is_refused_before_the_run_folder_is_made(prepared, tmp_path, monkeypatch):
    """The replicas are known only once the strategy is made (after the other checks): 8 of them (a stand-in
    placement; the strategy itself is never reached) and 7 val images give one line, and no run folder."""
    from seglib.training import distribute
    from seglib.training.config import TrainConfig
    from seglib.training.train import train

    placement = distribute.Placement(strategy=None, name="mirrored", replicas=8, devices=[f"CPU:{i}" for i in range(8)])
    monkeypatch.setattr(distribute, "make_strategy", lambda *args: placement)
    config = TrainConfig(str(prepared), str(tmp_path / "run"), arch="tinyunet", backbone="base8", encoder_weights=None)
    with pytest.raises(ValueError, match=r"/val: 7 images, fewer than the 8 devices each batch is split across"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_matches_the_default_strategy_and_resumes_after_a_kill(prepared, tmp_path):
    """A MirroredStrategy run (2 replicas x 4 images a step) beside a default-strategy run (8 a step),
    in two processes at once. The mirrored one is killed (SIGKILL) after its second epoch's backup and
    started again: it continues after the last backed-up epoch. Its first two epochs, from before
    the kill, match the default run's (the same global batch and data order). Its 7 val images: 6 (3 + 3)."""
    default = subprocess.Popen(train_command(prepared, tmp_path / "default", "--strategy", "default", "--batch-size",
                                             "8"), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    run_dir = tmp_path / "mirrored"
    mirrored = train_command(prepared, run_dir, "--strategy", "mirrored", "--cpu-devices", "2", epochs=3)
    first = subprocess.Popen(mirrored, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_for(RunDir(run_dir).backup_epoch(2).state, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not RunDir(run_dir).info.exists()
    done_before = len(history(run_dir))
    assert done_before == 2
    second = subprocess.run(mirrored, env=environment(), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    out, err = default.communicate(timeout=600)
    assert default.returncode == 0, err

    steps = history(run_dir)
    assert [int(row["epoch"]) for row in steps] == [0, 1, 2]  # after the kill's last epoch; nothing repeated
    info = json.loads(RunDir(run_dir).info.read_text())
    assert info["stop_reason"] == "finished" and info["epochs_run"] == 3
    assert info["strategy"] == "mirrored" and info["replicas"] == 2
    assert not RunDir(run_dir).backup.exists()
    # the best epoch is the best of all three, before and after the kill, not of the resumed part only
    val_loss = [float(row["val_loss"]) for row in steps]
    assert info["best_epoch"] == val_loss.index(min(val_loss)) + 1
    assert info["best_val_loss"] == pytest.approx(min(val_loss))
    config = json.loads(RunDir(run_dir).config.read_text())
    assert config["distribution"]["strategy"] == "mirrored" and config["distribution"]["replicas"] == 2
    assert [d.split("/")[-1] for d in config["device"]["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert config["global_batch_size"] == 8 and config["batch_size"] == 4
    reference = history(tmp_path / "default")
    assert [row["epoch"] for row in reference] == ["0", "1"]
    for ours, theirs in zip(steps[:2], reference, strict=True):  # the same global batch, the same data order
        # measured: within 0.5% on Keras 3.15 (TF 2.21), within 6% on Keras 3.8 (TF 2.18)
        assert float(ours["loss"]) == pytest.approx(float(theirs["loss"]), rel=0.1)


@pytest.mark.slow
def test_multiworker_on_two_processes_writes_only_on_the_chief_and_resumes_after_losing_a_worker(prepared, tmp_path):
    run = tmp_path / "run"

    def start(index: int, ports: list[int], tmp: str) -> subprocess.Popen:
        (tmp_path / tmp).mkdir(exist_ok=True)
        cluster = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        return subprocess.Popen(train_command(prepared, run, "--strategy", "multiworker", epochs=3),
                                env=environment(TF_CONFIG=json.dumps(cluster), TMPDIR=str(tmp_path / tmp)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    ports = free_ports(2)
    chief, worker = start(0, ports, "tmp0"), start(1, ports, "tmp1")
    wait_for(RunDir(run).backup_epoch(1).state, chief, worker)
    os.killpg(worker.pid, signal.SIGKILL)
    out, err = chief.communicate(timeout=180)
    worker.communicate()
    assert chief.returncode == 2, err
    lost = [line for line in err.splitlines() if "a worker of this multi-worker run was lost" in line]
    assert lost and "start every worker again with the same command: training continues after epoch" in lost[0]
    assert RunDir(run).backup_epochs()  # resumable

    ports = free_ports(2)
    chief, worker = start(0, ports, "tmp0"), start(1, ports, "again1")
    (out, err), (out1, err1) = chief.communicate(timeout=300), worker.communicate(timeout=300)
    assert chief.returncode == 0 and worker.returncode == 0, err + err1
    assert "finished; 3 epochs" in out and "epoch 3/3" in out1  # both trained to the end, in step
    assert [row["epoch"] for row in history(run)] == ["0", "1", "2"]
    config = json.loads(RunDir(run).config.read_text())
    assert config["distribution"]["strategy"] == "multiworker" and config["distribution"]["replicas"] == 2
    assert config["distribution"]["chief"] and config["global_batch_size"] == 8
    assert sorted(p.name for p in run.iterdir()) == [".seglib", ".seglib.lock", "config.json", "history.csv",
                                                       "model.keras", "palette.json", "run.json"]
    assert list((tmp_path / "again1").glob("seglib-worker-*")) == []  # the other worker's temp folder, removed


def test_the_strategy_is_chosen_for_the_machine_and_tf_config_is_checked(monkeypatch):
    from seglib.training.distribute import cluster, is_chief, make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    for variable in ("COLAB_TPU_ADDR", "TPU_NAME"):
        monkeypatch.delenv(variable, raising=False)
    auto = make_strategy("auto")  # no GPU and no TPU here: one device
    assert auto.name == "default" and auto.replicas == 1 and auto.chief
    with pytest.raises(ValueError, match="unknown strategy 'horovod'"):
        make_strategy("horovod")
    with pytest.raises(ValueError, match="--strategy multiworker needs TF_CONFIG"):
        cluster()
    outside = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(outside))
    with pytest.raises(ValueError, match="TF_CONFIG is not a cluster with this task in it"):
        cluster()
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief({"cluster": workers, "task": {"type": "worker", "index": 0}})
    assert not is_chief({"cluster": workers, "task": {"type": "worker", "index": 1}})
    with_chief = {"chief": ["c:1"], **workers}
    assert is_chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})
    assert not is_chief({"cluster": with_chief, "task": {"type": "worker", "index": 0}})


@pytest.mark.slow
def test_a_wait_for_workers_that_never_come_ends_with_an_error_in_its_time_on_ctrl_c_and_on_sigterm(prepared, tmp_path):
    """Worker 0 of a two-worker TF_CONFIG whose worker 1 never starts (loopback ports only)."""
    ports = free_ports(2)
    config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}
    env = environment(TF_CONFIG=json.dumps(config))
    started = time.monotonic()
    done = subprocess.run(train_command(prepared, tmp_path / "run", "--strategy", "multiworker", "--wait-timeout",
                                        "8"), capture_output=True, text=True, env=env, timeout=240)
    took = time.monotonic() - started
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == (
        f"error: the other workers of TF_CONFIG (127.0.0.1:{ports[1]}): no answer after 8 s; check the addresses "
        "and that every one is started, or wait longer (--wait-timeout)")
    assert f"waiting for the other workers of TF_CONFIG (127.0.0.1:{ports[1]}) (at most 8 s" in done.stdout
    assert took < 120 and not (tmp_path / "run").exists()
    # Ctrl-C in a terminal: SIGINT to the process group, the watchdog's too were it in the group
    waiting = subprocess.Popen(train_command(prepared, tmp_path / "run2", "--strategy", "multiworker"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    line = waiting.stdout.readline()
    assert line.startswith("waiting for the other workers"), line
    time.sleep(3)
    os.killpg(waiting.pid, signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == -signal.SIGINT and "error: stopped while waiting for the other workers" in stderr
    assert "Traceback" not in stderr
    # SIGTERM to the group (timeout, a container's stop), which TensorFlow's preemption notifier would swallow
    waiting = subprocess.Popen(train_command(prepared, tmp_path / "run3", "--strategy", "multiworker"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    assert waiting.stdout.readline().startswith("waiting for the other workers")
    time.sleep(5)
    started = time.monotonic()
    os.killpg(waiting.pid, signal.SIGTERM)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == -signal.SIGKILL and time.monotonic() - started < 10  # 137 in a shell
    assert "error: stopped (SIGTERM) while waiting for the other workers" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


