"""Where training runs: one device, the GPUs of one machine, several machines or a TPU, through
TensorFlow's own ``tf.distribute`` strategies.

``auto`` (the default) takes a TPU when a TPU runtime is present (Colab's TPU runtime), a
``MirroredStrategy`` when more than one GPU is visible, and TensorFlow's default strategy (one
device) otherwise. ``multiworker`` is a ``MultiWorkerMirroredStrategy`` over the cluster that
``TF_CONFIG`` describes (every worker runs the same ``train`` command; only the chief writes).

``cpu_devices=N`` (``--cpu-devices``) splits the CPU into N logical devices before TensorFlow starts,
so the mirrored path runs on a machine without GPUs (tests, ``bench/distribute.py``); it shows the
overhead, not a speed-up.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


@dataclass
class Placement:
    """A strategy and what it spans: ``replicas`` in sync, their ``devices``, and whether this
    process is the ``chief`` (the one that writes the run's files)."""

    strategy: object
    name: str
    replicas: int
    devices: list[str]
    chief: bool = True
    task: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "chief": self.chief,  # devices: in "device"
                **({"task": self.task} if self.task else {})}


def split_cpu(count: int) -> None:
    """Make ``count`` logical CPU devices (must happen before TensorFlow initialises its devices)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as exc:
        raise RuntimeError(f"--cpu-devices {count}: TensorFlow's devices were already initialised in this "
                           "process; set it before anything runs TensorFlow") from exc


def tpu_present() -> bool:
    """A TPU runtime: Colab's (COLAB_TPU_ADDR), a named TPU (TPU_NAME) or a TPU VM's accelerators."""
    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")) or os.path.exists("/dev/accel0")


def cluster() -> dict:
    """``TF_CONFIG`` read and checked: ``{"cluster": {...}, "task": {"type": ..., "index": ...}}``."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--strategy multiworker needs TF_CONFIG: the cluster's workers and this process's task, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                         '"index": 0}} (see the README)')
    try:
        config = json.loads(raw)
        workers = config["cluster"]
        task = config["task"]
        if task["type"] not in workers or not 0 <= int(task["index"]) < len(workers[task["type"]]):
            raise KeyError("task")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG is not a cluster with this task in it ({exc}): {raw[:200]}") from None
    return config


def is_chief(config: dict) -> bool:
    """The chief: the ``chief`` task, or worker 0 when the cluster has no chief."""
    task = config["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and int(task["index"]) == 0
                                       and "chief" not in config["cluster"])


_WATCHDOG = """
import os, select, signal, sys, time
parent, timeout, what, noted = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own session already; a Ctrl-C is the waiting process's


def stop(why):
    sys.stderr.write(f"error: stopped ({why}) while waiting for {what}\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
    sys.exit(0)


end = time.monotonic() + timeout
while time.monotonic() < end:
    if select.select([noted], [], [], 0.2)[0]:  # a signal a Python handler took (Ray installs one)
        got = os.read(noted, 64)
        if signal.SIGTERM in got or signal.SIGINT in got:
            stop("SIGTERM" if signal.SIGTERM in got else "Ctrl-C")
    if os.getppid() != parent:
        sys.exit(sys.stderr.write(f"error: stopped while waiting for {what}\\n") and 0)
    try:
        status = open(f"/proc/{parent}/status").read()
    except OSError:  # no /proc (macOS)
        continue
    pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("ShdPnd", "SigPnd"))]
    if any(bits & 1 << signal.SIGTERM - 1 for bits in pending):  # blocked, so TensorFlow's notifier cannot take it
        stop("SIGTERM")
sys.stderr.write(f"error: {what}: no answer after {timeout:.0f} s; check the addresses and that every one is "
                 "started, or wait longer (--wait-timeout)\\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


def bounded_wait(what: str, call, timeout: float):
    """``call()``, a wait on something outside this process (other workers, a TPU, a cluster), said
    first and bounded: TensorFlow and Ray wait in C++ holding the interpreter lock, so neither a
    Python thread nor a Python signal handler runs meanwhile. A watchdog process ends this one after
    ``timeout`` seconds with a one-line error, and at once on Ctrl-C or SIGTERM: SIGINT and SIGTERM
    are the default (fatal) meanwhile; SIGTERM is also blocked, so that TensorFlow's preemption
    notifier (a multi-worker set-up installs one) cannot take it, and the watchdog, seeing it
    pending, ends this process (Linux: it reads /proc; library threads leave SIGTERM to the main
    thread, :func:`seglib.quiet.sigterm_to_main_thread`); a signal taken by a Python handler
    installed during the call (Ray's) reaches the watchdog through :func:`signal.set_wakeup_fd`. The
    watchdog runs in its own session, so a signal to the process group (a terminal's Ctrl-C,
    ``timeout``, a container's stop) ends the wait and not the watchdog. Ended by the watchdog (time
    out or SIGTERM) the process exits with status 137 (it is killed: the wait holds it), on Ctrl-C
    with 130. Nothing has been written yet."""
    import signal
    import subprocess
    import sys

    print(f"waiting for {what} (at most {timeout:.0f} s: --wait-timeout)", flush=True)
    noted, note = os.pipe()
    os.set_blocking(note, False)
    from seglib.quiet import real_stderr

    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), what, str(noted)],
                                pass_fds=(noted,), start_new_session=True,  # a signal to the group is not its end
                                stderr=real_stderr())  # heard after it kills this process
    os.close(noted)
    handlers = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGINT)}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    wakeup = signal.set_wakeup_fd(note, warn_on_full_buffer=False)
    try:
        return call()
    finally:
        signal.set_wakeup_fd(wakeup)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        watchdog.kill()
        watchdog.wait()
        os.close(note)


def make_strategy(name: str = "auto", wait_timeout: float = 600, cpu_devices: int = 0) -> Placement:
    """The strategy ``name`` asks for on this machine (see the module docstring); the other workers
    or the TPU are waited for at most ``wait_timeout`` seconds (:func:`bounded_wait`); ``cpu_devices``
    logical CPUs first when more than 1."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if cpu_devices > 1:
        split_cpu(cpu_devices)
    if name == "multiworker":  # before anything starts TensorFlow's runtime: it sets up collective ops
        config = cluster()
        others = [a for kind, hosts in config["cluster"].items() for i, a in enumerate(hosts)
                  if (kind, i) != (config["task"]["type"], int(config["task"]["index"]))]
        strategy = bounded_wait(f"the other workers of TF_CONFIG ({', '.join(others)})",
                                tf.distribute.MultiWorkerMirroredStrategy, wait_timeout)
        patch_keras_for_multiworker()
        return Placement(strategy, "multiworker", strategy.num_replicas_in_sync,
                         list(strategy.extended.worker_devices), is_chief(config), config["task"])
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        name = "tpu" if tpu_present() else "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return Placement(tf.distribute.get_strategy(), "default", 1, gpus[:1] or ["/device:CPU:0"])
    if name == "mirrored":
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        return Placement(tf.distribute.MirroredStrategy(devices), "mirrored", len(devices), devices)
    # a TPU VM's own chips ("local"), a named TPU, or the TPU node Colab's older runtime connects to
    where = os.environ.get("TPU_NAME") or ("local" if os.path.exists("/dev/accel0") else "")
    if not tpu_present():
        raise ValueError("--strategy tpu: no TPU here (no TPU runtime, no /dev/accel0, TPU_NAME not set); on Colab "
                         "choose a TPU runtime, elsewhere set TPU_NAME, or use --strategy auto")
    def connect():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=where)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)

    strategy = bounded_wait(f"the TPU {where or '(Colab)'}", connect, wait_timeout)
    return Placement(strategy, "tpu", strategy.num_replicas_in_sync,
                     [d.name for d in tf.config.list_logical_devices("TPU")])


def patch_keras_for_multiworker() -> None:
    """Keras 3 (3.8 to 3.15 at least; keras-team/keras#20585) cannot ``fit`` under a
    MultiWorkerMirroredStrategy: it averages each replica's scalar logs with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars. Averaging them with ``axis=None``
    (what the single-machine strategies do) is the fix; applied only in a multi-worker process."""
    import keras
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "seglib_patched", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if trainer._is_per_replica_instance(v) else v, values)
        return original(values, strategy, reduction)

    reduce_per_replica.seglib_patched = True
    trainer.reduce_per_replica = reduce_per_replica


def build_for_multiworker(model, placement: Placement, dataset) -> None:
    """Keras 3 builds a compiled model's metrics and optimizer on the first batch at ``fit``,
    averaging that batch over the workers first, which fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585). Build them here on one local batch instead, inside the scope, and
    let ``fit`` skip its own build."""
    if placement.name != "multiworker":
        return
    images, labels = next(iter(dataset))
    with placement.strategy.scope():
        model._symbolic_build(data_batch=(images, labels, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
