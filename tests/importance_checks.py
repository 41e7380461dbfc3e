"""Taylor scores and prune's choice on the backend this process runs.

Run as `KERAS_BACKEND=jax python tests/importance_checks.py`: prints one
JSON line, compared by tests/test_importance_backends.py with the run on
the test process's backend. Weights and data come from NumPy, so every
backend prunes the same network.
"""

import json

import keras
import numpy as np

import keras_autopruner as kap

L = keras.layers


def network():
    rng = np.random.default_rng(0)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(10, activation="relu", name="fc")(h)
    model = keras.Model(x, L.Dense(3, activation="softmax", name="out")(h))
    for layer in model.layers:
        if layer.weights and not isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.normal(0, .3, w.shape).astype("float32")
                               for w in layer.get_weights()])
    xs = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    ys = rng.integers(0, 3, 32)
    return model, xs, ys


def run():
    model, xs, ys = network()
    gated = kap.add_gates(model, 0.5)
    taylor = kap.Taylor("sparse_categorical_crossentropy", batches=2,
                        batch_size=16)
    scores = taylor.scores(gated, kap.gate.gates_of(gated), (xs, ys))
    compact = kap.prune(model, taylor, 0.5, "layer", data=(xs, ys))
    return {"backend": keras.backend.backend(),
            "scores": {k: v.tolist() for k, v in scores.items()},
            "widths": {n: int(compact.get_layer(n).output.shape[-1])
                       for n in ("c1", "fc")}}


if __name__ == "__main__":
    print(json.dumps(run()))
