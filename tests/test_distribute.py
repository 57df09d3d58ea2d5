"""Training under tf.distribute without GPUs (MirroredStrategy over two logical CPU devices, a
MultiWorkerMirroredStrategy over two local processes), and batches spread over processes and Ray."""
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

ARGS = ["--backbone", "mobilenet", "--batch-size", "4", "--encoder-weights", "none", "--patience", "9", "--quiet"]
# exports are tested elsewhere (tests/test_export.py, the batch in tests/test_batch.py): none here
TINY = {"SIZE": 64, "SAMPLE_PIXELS": 20_000, "EPOCHS": 1, "ENCODER_WEIGHTS": None, "BACKBONE": "mobilenet",
        "FORMATS": "", "N_EXAMPLES": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from seglib.data.prepare import prepare
    from seglib.data.synthetic import generate

    root = tmp_path_factory.mktemp("distribute")
    generate(root / "pairs", count=40, seed=4, size=64, progress=False)
    prepare(root / "pairs", root / "prepared", size=64, sample_pixels_count=20_000, progress=False)
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


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_matches_the_default_strategy_and_resumes_after_a_kill(prepared, tmp_path):
    """A MirroredStrategy run (2 replicas x 4 images a step) beside a default-strategy run (8 a step),
    in two processes at once. The mirrored one is killed (SIGKILL) after its second epoch's backup and
    started again: it continues after the last backed-up epoch. Its first two epochs, from before
    the kill, match the default run's (the same global batch and data order)."""
    default = subprocess.Popen(train_command(prepared, tmp_path / "default", "--strategy", "default", "--batch-size",
                                             "8"), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    run_dir = tmp_path / "mirrored"
    mirrored = train_command(prepared, run_dir, "--strategy", "mirrored", epochs=4)
    first = subprocess.Popen(mirrored, env=environment(SEGLIB_CPU_DEVICES="2"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_for(RunDir(run_dir).backup_epoch(2).state, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not RunDir(run_dir).info.exists()
    done_before = len(history(run_dir))
    assert 2 <= done_before < 4
    second = subprocess.run(mirrored, env=environment(SEGLIB_CPU_DEVICES="2"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    out, err = default.communicate(timeout=600)
    assert default.returncode == 0, err

    steps = history(run_dir)
    assert [int(row["epoch"]) for row in steps] == [0, 1, 2, 3]  # after the kill's last epoch; nothing repeated
    info = json.loads(RunDir(run_dir).info.read_text())
    assert info["stop_reason"] == "finished" and info["epochs_run"] == 4
    assert info["strategy"] == "mirrored" and info["replicas"] == 2
    assert not RunDir(run_dir).backup.exists()
    # the best epoch is the best of all four, before and after the kill, not of the resumed part only
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
    assert sorted(p.name for p in run.iterdir()) == [".seglib", "config.json", "history.csv", "model.keras",
                                                       "palette.json", "run.json"]
    assert list((tmp_path / "again1").glob("seglib-worker-*")) == []  # the other worker's temp folder, removed


def tiny_batch(tmp_path, synth_dir, runs, name) -> dict:
    return {"name": name, "parameters": {**TINY, "DATA_DIR": str(synth_dir)}, "runs": runs}


@pytest.mark.slow
def test_a_parallel_batch_runs_at_once_each_pinned_and_a_failing_run_does_not_stop_the_other(synth_dir, tmp_path,
                                                                                            capfd):
    from seglib.runs.batch import run_batch

    lines = []
    config = tiny_batch(tmp_path, synth_dir, [{"name": "good"}, {"name": "broken", "BACKBONE": "nosuchnet"}], "par")
    index = run_batch(config, tmp_path, parallel=2, echo=lines.append)
    good, broken = (json.loads((tmp_path / "reports" / "par" / name / "status.json").read_text())
                    for name in ("good", "broken"))
    assert good["status"] == "finished" and broken["status"] == "failed" and "nosuchnet" in broken["error"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert good["placement"] == broken["placement"] == f"{threads} CPU threads"
    assert len({good["pid"], broken["pid"], os.getpid()}) == 3  # each run in its own process
    assert good["started"] < broken["finished"] and broken["started"] < good["finished"]  # at the same time
    assert any(line.startswith("batch par: 2 runs on 2 processes") for line in lines)
    assert lines[-1] == f"batch par: {index}"
    assert any(line.startswith("good: finished in") for line in lines)
    assert f"good [{threads} CPU threads]: epoch 1/1" in capfd.readouterr().out
    html = index.read_text()
    assert ">good<" in html and ">broken<" in html and "nosuchnet" in html


@pytest.mark.slow
def test_a_batch_runs_as_tasks_on_a_local_ray_instance(synth_dir, tmp_path):
    import ray

    from seglib.runs.batch import run_batch

    # two tasks, one of which fails as it starts training: one training is enough to show a run finish there
    config = tiny_batch(tmp_path, synth_dir, [{"name": "lr1", "LR": 1e-3}, {"name": "broken", "BACKBONE": "nosuchnet"}],
                        "onray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        lines = []
        index = run_batch(config, tmp_path, ray="auto", echo=lines.append)
    finally:
        ray.shutdown()
    good, broken = (json.loads((tmp_path / "reports" / "onray" / name / "status.json").read_text())
                    for name in ("lr1", "broken"))
    assert good["status"] == "finished" and good["pid"] != os.getpid(), good
    assert (tmp_path / "artifacts" / "onray" / "lr1" / "metrics.json").exists()  # 03_evaluate_export ran there
    assert broken["status"] == "failed" and "nosuchnet" in broken["error"] and broken["pid"] not in (os.getpid(), None)
    assert any("2 runs on Ray cluster auto" in line for line in lines)
    assert index.exists() and ">lr1<" in index.read_text() and ">broken<" in index.read_text()


def test_parallel_runs_get_a_gpu_each_or_share_one_taking_memory_as_needed_or_a_cpu_share():
    from seglib.runs.batch import run_placements

    own = run_placements(2, gpus=2)
    assert [(p["CUDA_VISIBLE_DEVICES"], p["pinned"]) for p in own] == [("0", "GPU 0"), ("1", "GPU 1")]
    assert not any("TF_FORCE_GPU_ALLOW_GROWTH" in p for p in own)
    shared = run_placements(3, gpus=2)
    assert [p["CUDA_VISIBLE_DEVICES"] for p in shared] == ["0", "1", "0"]
    assert all(p["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and p["pinned"].endswith("(shared)") for p in shared)
    threads = max(1, (os.cpu_count() or 1) // 2)
    cpu = run_placements(2, gpus=0)
    assert [p["TF_NUM_INTRAOP_THREADS"] for p in cpu] == [str(threads)] * 2
    assert not any("CUDA_VISIBLE_DEVICES" in p for p in cpu)


def test_the_strategy_is_chosen_for_the_machine_and_tf_config_is_checked(monkeypatch):
    from seglib.training.distribute import cluster, is_chief, make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    for variable in ("COLAB_TPU_ADDR", "TPU_NAME", "SEGLIB_CPU_DEVICES"):
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


def test_a_parallel_batch_whose_data_cannot_be_prepared_marks_its_runs_failed_here(tmp_path):
    from seglib.runs.batch import run_batch

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pairs here")
    config = {"name": "nodata", "parameters": {**TINY, "DATA_DIR": str(tmp_path / "empty")},
              "runs": [{"name": "a"}, {"name": "b", "LR": 2e-3}]}
    lines = []
    run_batch(config, tmp_path, parallel=2, echo=lines.append)
    for name in ("a", "b"):
        status = json.loads((tmp_path / "reports" / "nodata" / name / "status.json").read_text())
        assert status["status"] == "failed" and status["step"] == "01_prepare_data"
        assert status["pid"] == os.getpid()  # never sent to a run process
    assert any(line.startswith("a: FAILED in 01_prepare_data") for line in lines)
    assert any(line.startswith("batch nodata: 0 runs on 2 processes") for line in lines)


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
    waiting = subprocess.Popen(train_command(prepared, tmp_path / "run2", "--strategy", "multiworker"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = waiting.stdout.readline()
    assert line.startswith("waiting for the other workers"), line
    time.sleep(3)
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode != 0 and "error: stopped while waiting for the other workers" in stderr
    # SIGTERM to the process alone (not its group), which TensorFlow's preemption notifier would swallow
    waiting = subprocess.Popen(train_command(prepared, tmp_path / "run3", "--strategy", "multiworker"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert waiting.stdout.readline().startswith("waiting for the other workers")
    time.sleep(5)
    waiting.send_signal(signal.SIGTERM)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode != 0 and "error: stopped (SIGTERM) while waiting for the other workers" in stderr
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


@pytest.mark.slow
def test_a_ray_address_with_nothing_there_is_a_one_line_error(prepared, tmp_path):
    (tmp_path / "b.yaml").write_text(json.dumps({"name": "b", "parameters": {**TINY, "DATA_DIR": str(tmp_path)},
                                                 "runs": [{"name": "a"}]}))
    done = subprocess.run([sys.executable, "-m", "seglib", "batch", str(tmp_path / "b.yaml"), "--root", str(tmp_path),
                           "--ray", "127.0.0.1:1", "--wait-timeout", "10"], capture_output=True, text=True,
                          timeout=300, env=environment())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there")


@pytest.mark.slow
def test_a_ray_cluster_that_never_answers_ends_the_wait_in_its_time_and_on_sigterm(synth_dir, tmp_path):
    """A loopback port that accepts connections and never speaks Ray (Ray keeps to loopback when
    clusters are off: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    (tmp_path / "b.yaml").write_text(json.dumps(tiny_batch(tmp_path, synth_dir, [{"name": "a"}], "b")))
    env = environment(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    command = [sys.executable, "-m", "seglib", "batch", str(tmp_path / "b.yaml"), "--root", str(tmp_path), "--ray",
               address]
    try:
        done = subprocess.run([*command, "--wait-timeout", "15"], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == (
            f"error: the Ray cluster {address}: no answer after 15 s; check the addresses and that every one is "
            "started, or wait longer (--wait-timeout)"), done.stderr
        waiting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        while not (line := waiting.stdout.readline()).startswith("waiting for the Ray cluster"):
            assert line, waiting.communicate(timeout=30)
        time.sleep(3)
        sent = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        _, stderr = waiting.communicate(timeout=30)
        assert time.monotonic() - sent < 5
        assert waiting.returncode != 0 and f"error: stopped (SIGTERM) while waiting for the Ray cluster {address}" in \
            stderr, stderr
    finally:
        silent.close()
