"""bench/gate_overhead.py's folded probe times the function the gated
model computes: the same weights give the same outputs while pushing."""

import importlib
import os
import sys

import keras
import numpy as np

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.gate import gates_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        return importlib.import_module("gate_overhead")
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))


def _layers(model, kinds):
    inner = (getattr(layer, "layer", layer) for layer in model.layers)
    return [layer for layer in inner if isinstance(layer, kinds)]


def test_folded_probe_computes_what_the_pushing_gates_compute():
    bench = _bench()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    gated = kap.add_gates(models.vgg_small(dropout=0.0), 0.5)
    folded = bench.folded_vgg_small()
    assert folded.count_params() == gated.count_params()
    kinds = (keras.layers.Conv2D, keras.layers.Dense,
             keras.layers.BatchNormalization)
    for a, b in zip(_layers(gated, kinds), _layers(folded, kinds),
                    strict=True):
        b.set_weights(a.get_weights())
    for a, b in zip(gates_of(gated), gates_of(folded), strict=True):
        a.phase.assign(1.0)
        # Codes spread well away from 1/2, so that a wrong channel shows.
        a.kernel.assign(rng.normal(0, 0.3, a.kernel.shape))
        b.set_weights(a.get_weights())
    for layer in folded.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    x = rng.random((8, 28, 28, 1)).astype("float32")
    want = keras.ops.convert_to_numpy(gated(x, training=True))
    got = keras.ops.convert_to_numpy(folded(x, training=True))
    np.testing.assert_allclose(got, want, atol=1e-5)
    codes = np.concatenate([keras.ops.convert_to_numpy(g.code)
                            for g in gates_of(folded)])
    assert codes.min() < 0.2 and codes.max() > 0.8
    assert len(folded.losses) == len(gates_of(folded))
