"""Gated training compiles with XLA (`jit_compile=True`) and chooses the
same masks as without it.

Runs on the default backend (TensorFlow); the Makefile's JAX pass runs it
again on JAX, where `jit_compile=False` is the un-jitted step.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

L = keras.layers


@pytest.fixture(scope="module")
def data():
    (x, y), _, _ = load_tabular()
    return x[:256].astype("float32"), y[:256]


def prune(data, jit_compile, gate_map):
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
    cb = kap.AutoPrunerCallback(objective="layer", control_every=2,
                                prune_steps=30)
    # Two epochs past the choice: the done phase trains under XLA too.
    gated.fit(*data, batch_size=32, epochs=6, shuffle=False, verbose=0,
              callbacks=[cb])
    assert cb.done
    return gated


@pytest.mark.filterwarnings("ignore:AutoPrunerCallback. pruning ended")
@pytest.mark.parametrize("gate_map", ["full", "low_rank"])
def test_xla_gives_the_same_masks(data, gate_map):
    plain = prune(data, False, gate_map)
    xla = prune(data, True, gate_map)
    for a, b in zip(gates_of(plain), gates_of(xla)):
        np.testing.assert_array_equal(a.mask(), b.mask())
        assert 0 < a.mask().sum() < a.units
    # The done phase trained on under XLA with the fixed mask: the model
    # computes what its stripped network does, and after 48 steps of
    # training it is near the un-jitted run (not equal: XLA reorders float
    # sums, and on JAX the drift over those steps reached 6e-3 once).
    x = data[0][:32]
    out = keras.ops.convert_to_numpy(xla(x))
    np.testing.assert_allclose(
        out, keras.ops.convert_to_numpy(kap.strip(xla)(x)), atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), out, atol=2e-2)
