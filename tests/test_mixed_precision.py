"""Pruning under the `mixed_float16` policy: float16 layers, float32 codes."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import AutoPrunerGate
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

L = keras.layers


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_gate_computes_codes_in_float32(mixed_float16):
    gate = AutoPrunerGate(target_rate=0.5, alpha=30.0, bias_init=0.0)
    x = np.full((4, 3), 0.1, "float16")
    y = gate(x, training=True)
    assert gate.compute_dtype == "float16"
    assert y.dtype == "float16"  # the product is in the layer's dtype
    assert all(w.dtype == "float32" for w in gate.weights)
    code = gate.compute_code(keras.ops.convert_to_tensor(x))
    assert keras.backend.standardize_dtype(code.dtype) == "float32"
    assert keras.backend.standardize_dtype(gate.code.value.dtype) == "float32"


def prune(x, y, xt, yt):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((16,)),
        L.Dense(48, activation="relu", name="h1"),
        L.Dense(48, activation="relu", name="h2"),
        # The softmax in float32, as Keras advises for mixed precision.
        L.Dense(26, activation="softmax", dtype="float32", name="out"),
    ])
    gated = kap.add_gates(model, target_rate=0.5)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    cb = kap.AutoPrunerCallback(objective="layer", stop_when_done=True)
    history = gated.fit(x, y, batch_size=128, epochs=25, verbose=0,
                        callbacks=[cb])
    _, acc = gated.evaluate(xt, yt, verbose=0)
    return gated, cb, history.history, acc


def test_pruning_trains_under_mixed_float16(mixed_float16):
    (x, y), (xt, yt), _ = load_tabular()
    x, y, xt, yt = x[:4096], y[:4096], xt[:1024], yt[:1024]
    gated, cb, history, acc = prune(x, y, xt, yt)
    assert gated.get_layer("h1").compute_dtype == "float16"
    assert isinstance(gated.optimizer, keras.optimizers.LossScaleOptimizer)
    assert cb.done and cb.result["reason"] == "done", history["binary"]
    assert cb.result["kept"] == {"h1_gate": 24, "h2_gate": 24}
    assert np.isfinite(history["loss"]).all()
    assert acc > 0.3, acc  # 26 classes: chance is 0.04
    for gate in gates_of(gated):
        assert gate.moving_code.dtype == "float32"
        # The choice is fixed: codes exactly 0 or 1.
        assert set(np.unique(gate.scores())) <= {0.0, 1.0}
    compact = kap.strip(gated)
    np.testing.assert_allclose(compact.predict(xt[:64], verbose=0),
                               gated.predict(xt[:64], verbose=0), atol=2e-3)
