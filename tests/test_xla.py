"""Gated training compiles with XLA (`jit_compile=True`) and computes what
it computes without XLA.

Runs on the default backend (TensorFlow); the Makefile's JAX pass runs it
again on JAX, where `jit_compile=False` is the un-jitted step.

The steps are compared with the pruning state held fixed
(`held_state.py` says why), pushing and done, within a tolerance
relative to how far each value moved (`held_state.assert_same_step`). The
jitted run under the callback is checked on its own: it converges,
meets its budget, and trains on with the mask that strip cuts.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

from held_state import (PHASES, assert_phase_trained, assert_same_step,
                        hold_state)

L = keras.layers
GATE_MAPS = ["full", "low_rank"]


@pytest.fixture(scope="module")
def data():
    (x, y), _, _ = load_tabular()
    return x[:256].astype("float32"), y[:256]


def gated_model(jit_compile, gate_map):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((16,)),
        L.Dense(20, activation="relu", name="h1"),
        L.Dense(20, activation="relu", name="h2"),
        L.Dense(26, activation="softmax", name="out"),
    ])
    gated = kap.add_gates(model, target_rate=0.5, gate_map=gate_map, rank=4)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy", jit_compile=jit_compile)
    return gated


def callback(**kwargs):
    return kap.AutoPrunerCallback(objective="layer", control_every=2,
                                  prune_steps=30, **kwargs)


def values(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("gate_map", GATE_MAPS)
def test_jitted_steps_compute_the_plain_steps(data, gate_map, phase):
    plain = gated_model(False, gate_map)
    xla = gated_model(True, gate_map)
    for m in (plain, xla):
        hold_state(m, phase)
    start = values(plain)
    for m in (plain, xla):
        # One epoch, 8 steps: the network and (pushing) the gates and their
        # moving state learn; nothing discrete decides anything.
        m.fit(*data, batch_size=32, epochs=1, shuffle=False, verbose=0)
    names = [v.path for v in plain.weights]
    moved = []
    for name, s, a, b in zip(names, start, values(plain), values(xla)):
        assert_same_step(name, s, a, b)
        if not np.allclose(s, a, rtol=1e-3, atol=1e-3):
            moved.append(name)
    # The network's six kernels and biases; pushing, the gates' too.
    assert_phase_trained(phase, moved, network=6, gates=8)
    if phase == "pushing":
        for g in gates_of(xla):
            assert not np.allclose(g.scores(), g.scores()[0])


@pytest.mark.filterwarnings("ignore:AutoPrunerCallback. pruning ended")
@pytest.mark.parametrize("gate_map", GATE_MAPS)
def test_jitted_run_chooses_and_trains_on_its_mask(data, gate_map):
    xla = gated_model(True, gate_map)
    cb = callback()
    # Two epochs past the choice: the done phase trains under XLA too.
    xla.fit(*data, batch_size=32, epochs=6, shuffle=False, verbose=0,
            callbacks=[cb])
    assert cb.done
    for g in gates_of(xla):
        # objective="layer" at 0.5: each 20-neuron layer keeps 10.
        assert g.mask().sum() == 10, (g.name, g.mask().sum())
    x = data[0][:32]
    out = keras.ops.convert_to_numpy(xla(x))
    np.testing.assert_allclose(
        out, keras.ops.convert_to_numpy(kap.strip(xla)(x)), atol=1e-5)
