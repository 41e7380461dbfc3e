"""Data-parallel pruning with `keras.distribution` on JAX: same masks.

Two CPU devices in one process (XLA's forced host device count), and two
processes on localhost joined by `jax.distributed`, each prune the same
batches as one device and must end with the same masks and the same lambda
and alpha. JAX fixes its devices when it starts, so the runs are
subprocesses of `tests/distribution_checks.py`. (TensorFlow's
MirroredStrategy is `test_callbacks.test_inside_mirrored_strategy`.)
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "distribution_checks.py")


def jax_env(**extra):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def finish(proc, what):
    proc.wait(timeout=600)
    with open(proc.log_path) as f:
        log = f.read()
    assert proc.returncode == 0, f"{what} failed:\n{log[-4000:]}"


def start(args, env, log_path):
    # The log goes to a file: the two processes of a job wait for each
    # other, and one stalled on a full pipe would stall both.
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, SCRIPT] + args, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-host run and the two-process run, started together."""
    out = tmp_path_factory.mktemp("distribution")
    one_host = start([f"--out={out / 'one_host.json'}"], jax_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        out / "one_host.log")
    port = free_port()
    workers = [start([f"--out={out / f'process{i}.json'}",
                      "--num_processes=2", f"--process_id={i}",
                      f"--coordinator=localhost:{port}"], jax_env(),
                     out / f"process{i}.log")
               for i in range(2)]
    try:
        finish(one_host, "two devices in one process")
        for i, w in enumerate(workers):
            finish(w, f"process {i} of the jax.distributed job")
    finally:
        for p in [one_host] + workers:
            if p.poll() is None:
                p.kill()
                p.wait()
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    return read("one_host.json"), [read(f"process{i}.json") for i in (0, 1)]


def assert_same_pruning(a, b):
    assert b["masks"] == a["masks"]
    assert b["lambda"] == pytest.approx(a["lambda"], rel=1e-6)
    assert b["alpha"] == pytest.approx(a["alpha"], rel=1e-6)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_data_parallel_on_two_devices_matches_one_device(runs):
    one_host, _ = runs
    assert one_host["devices"] == 2
    assert one_host["one_device"]["weight_devices"] == 1
    assert one_host["data_parallel"]["weight_devices"] == 2
    assert_same_pruning(one_host["one_device"], one_host["data_parallel"])
    # The run pruned: the comparison is about a real choice.
    masks = one_host["one_device"]["masks"]
    assert all(0 < sum(m) < len(m) for m in masks.values())


def test_two_processes_match_one_device(runs):
    one_host, processes = runs
    for p in processes:
        assert p["devices"] == 2  # one CPU each, seen by both
        assert p["data_parallel"]["weight_devices"] == 2
        assert_same_pruning(one_host["one_device"], p["data_parallel"])
