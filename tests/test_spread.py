"""Batches spread out: runs at once in processes of their own here (--parallel), and as tasks on
a Ray cluster (--ray), with waits for a cluster that is not there or never answers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

# exports are tested elsewhere (tests/test_export.py, the batch in tests/test_batch.py): none here
TINY = {"SIZE": 64, "SAMPLE_PIXELS": 20_000, "EPOCHS": 1, "ENCODER_WEIGHTS": None, "ARCH": "tinyunet",
        "BACKBONE": "base8", "FORMATS": "", "EXAMPLES": 2}


def environment(**extra) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


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
    assert any(line.startswith("[1/2] good: finished in") for line in lines)
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
    assert any(line.startswith("[1/2] a: FAILED in 01_prepare_data") for line in lines)
    assert any(line.startswith("batch nodata: 0 runs on 2 processes") for line in lines)


@pytest.mark.slow
def test_a_ray_address_with_nothing_there_is_a_one_line_error(tmp_path):
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
        waiting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                   start_new_session=True)
        while not (line := waiting.stdout.readline()).startswith("waiting for the Ray cluster"):
            assert line, waiting.communicate(timeout=30)
        time.sleep(3)
        sent = time.monotonic()
        os.killpg(waiting.pid, signal.SIGTERM)  # to the group, as `timeout` and a container's stop send it
        _, stderr = waiting.communicate(timeout=30)
        assert time.monotonic() - sent < 5 and waiting.returncode == -signal.SIGKILL  # 137 in a shell (documented)
        assert f"error: stopped (SIGTERM) while waiting for the Ray cluster {address}" in stderr, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        silent.close()
