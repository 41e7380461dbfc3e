"""The same pruning run on TensorFlow, JAX and PyTorch gives the same masks.

Keras fixes its backend when it is first imported, so each other backend
runs `tests/backend_checks.py` in one subprocess (several checks per
process: starting one is the slow part). The run on the backend of this
process is the reference.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import backend_checks

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
# Probabilities of the same network trained for a few dozen Adam steps on
# two backends: float32 sums in another order, nothing more.
OUTPUT_ATOL = 2e-3


OTHERS = [b for b in BACKENDS if b != keras.backend.backend()]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The other backends' runs, started at once so that they overlap."""
    out_dir = tmp_path_factory.mktemp("backends")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for backend in OTHERS:
        out = out_dir / f"{backend}.json"
        # A file, not a pipe, for the log: a full pipe would stall the
        # child while this process computes the reference.
        log = open(out_dir / f"{backend}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "backend_checks.py"),
             f"--out={out}"], env=dict(env, KERAS_BACKEND=backend),
            stdout=log, stderr=subprocess.STDOUT)
        runs[backend] = (proc, out, log)
    yield runs
    for proc, _, log in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def result_of(started, backend):
    proc, out, log = started[backend]
    proc.wait()
    log.flush()
    assert proc.returncode == 0, (
        f"backend_checks.py failed on KERAS_BACKEND={backend}; is "
        f"{backend} installed (`make venv` installs it)?\n"
        + open(log.name).read()[-4000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(started):
    return backend_checks.run_checks()


def assert_same_run(ref, other):
    name = f"{ref['backend']} vs {other['backend']}"
    assert set(other["schedules"]) == set(backend_checks.SCHEDULES)
    for schedule, a in ref["schedules"].items():
        b = other["schedules"][schedule]
        where = f"{name}, schedule {schedule}"
        assert b["masks"] == a["masks"], where
        assert b["lambda"] == pytest.approx(a["lambda"], rel=1e-6), where
        assert b["alpha"] == pytest.approx(a["alpha"], rel=1e-6), where
        assert (b["reason"], b["kept_units"]) == (
            a["reason"], a["kept_units"]), where
        # strip builds the network the gates computed, on every backend.
        assert b["strip_max_diff"] < 1e-5, where
        np.testing.assert_allclose(b["outputs"], a["outputs"],
                                   atol=OUTPUT_ATOL, err_msg=where)
    a, b = ref["conv"], other["conv"]
    assert b["masks"] == a["masks"], name
    assert b["loaded_masks_equal"], name
    assert max(b["strip_max_diff"], b["loaded_max_diff"],
               b["compact_loaded_max_diff"]) < 1e-5, name
    assert b["flops_share"] == a["flops_share"] and b["params"] == a["params"]
    np.testing.assert_allclose(b["outputs"], a["outputs"], atol=OUTPUT_ATOL,
                               err_msg=name)


@pytest.mark.parametrize("backend", OTHERS)
def test_other_backend_gives_the_same_masks(backend, started, reference):
    other = result_of(started, backend)
    assert other["backend"] == backend
    assert_same_run(reference, other)
    assert_folded(other)
    if backend == "jax":
        # Keras exports a JAX model to a SavedModel through jax2tf; ONNX
        # would need jax2onnx, and export says so.
        assert other["export"] == "ok"
        assert "jax2onnx" in other["onnx"]
    else:
        # No SavedModel from PyTorch: export says what to do instead, and
        # ONNX (through torch.onnx) serves the compact model's outputs.
        assert "KERAS_BACKEND=tensorflow" in other["export"]
        assert "format='onnx'" in other["export"]
        assert other["onnx"] < 1e-5 * np.max(np.abs(other["conv"]["outputs"]))


def assert_folded(run):
    folded = run["folded"]
    # c2 reads c1's gate through a max pool, the classifier (its name
    # depends on the layers made before it) c2's through a global pool.
    assert len(folded["wrapped"]) == 2 and "c2" in folded["wrapped"], folded
    assert folded["weights_max_diff"] < 1e-4, folded
    assert folded["strip_max_diff"] < 1e-5, folded


def test_reference_prunes_and_exports(reference):
    assert_folded(reference)
    for schedule, run in reference["schedules"].items():
        kept = sum(sum(m) for m in run["masks"].values())
        total = sum(len(m) for m in run["masks"].values())
        assert kept < total, schedule
    if keras.backend.backend() != "torch":
        assert reference["export"] == "ok"
    if keras.backend.backend() == "tensorflow":
        assert reference["onnx"] < 1e-5 * np.max(
            np.abs(reference["conv"]["outputs"]))
