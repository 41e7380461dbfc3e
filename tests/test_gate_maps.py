"""The cheaper gate maps (`map="low_rank"`, `"diagonal"`) and `gate_map`.

A low-memory gate must be a drop-in for the published C x C one: it
serialises (config and `.keras`), a run saved mid-way and resumed ends with
the masks of the uninterrupted run, and `strip` cuts exactly what it chose.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import AutoPrunerGate, gates_of

L = keras.layers
STEPS_PER_EPOCH = 8


@pytest.fixture(scope="module")
def data():
    (x, y), _, _ = load_tabular()
    n = 32 * STEPS_PER_EPOCH
    return x[:n].astype("float32"), y[:n]


def gated_net(gate_map):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((16,)),
        L.Dense(24, activation="relu", name="h1"),
        L.Dense(24, activation="relu", name="h2"),
        L.Dense(26, activation="softmax", name="out"),
    ])
    gated = kap.add_gates(model, target_rate=0.4, gate_map=gate_map, rank=4)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy")
    return gated


def fit(model, data, epochs):
    x, y = data
    # prune_steps: the run ends with its exact choice after 24 pushing
    # steps, three quarters into the 32 steps, after the resume.
    cb = kap.AutoPrunerCallback(objective="layer", control_every=2,
                                finish_on_train_end=False, prune_steps=24,
                                schedule=kap.StepLambda(every=5, factor=3.0),
                                alpha=kap.AlphaSchedule(release=None,
                                                        double_every=4))
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[cb])
    return cb


@pytest.mark.parametrize("gate_map", ["low_rank", "diagonal"])
def test_weights_are_the_cheaper_map(gate_map):
    gate = AutoPrunerGate(map=gate_map, rank=4)
    gate.build((None, 8, 8, 32))
    full = AutoPrunerGate()
    full.build((None, 8, 8, 32))
    shapes = sorted(tuple(w.shape) for w in gate.trainable_weights)
    expected = {"low_rank": [(4, 32), (32,), (32, 4)],
                "diagonal": [(32,), (32,)]}[gate_map]
    assert shapes == expected
    assert gate.count_params() < full.count_params()


@pytest.mark.parametrize("gate_map", ["low_rank", "diagonal"])
def test_low_memory_gate_serialises(gate_map, tmp_path):
    gated = gated_net(gate_map)
    gate = gates_of(gated)[0]
    clone = AutoPrunerGate.from_config(gate.get_config())
    assert (clone.map, clone.rank) == (gate_map, 4)
    x = np.random.RandomState(0).rand(8, 16).astype("float32")
    gated.fit(x, np.zeros(8), epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    gated.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(gates_of(gated), gates_of(loaded)):
        assert b.map == gate_map
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(va),
                                          keras.ops.convert_to_numpy(vb))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=True)),
        keras.ops.convert_to_numpy(gated(x, training=True)), atol=1e-6)


@pytest.mark.filterwarnings("ignore:AutoPrunerCallback. pruning ended")
@pytest.mark.parametrize("gate_map", ["low_rank", "diagonal"])
def test_low_memory_gate_resumes_exactly_and_strips_exactly(
        gate_map, data, tmp_path):
    straight = gated_net(gate_map)
    fit(straight, data, 4)
    first = gated_net(gate_map)
    fit(first, data, 2)
    path = tmp_path / "run.keras"
    first.save(path)
    loaded = keras.models.load_model(path)
    cb = fit(loaded, data, 2)
    for a, b in zip(gates_of(straight), gates_of(loaded)):
        np.testing.assert_array_equal(a.mask(), b.mask())
        np.testing.assert_allclose(a.ranking(), b.ranking(), rtol=1e-5,
                                   atol=1e-5)
    # The run ended with an exact choice that pruned channels, and strip
    # computes what the gated network computes.
    assert cb.done
    kept = [int(g.mask().sum()) for g in gates_of(loaded)]
    assert kept == [round(0.4 * 24)] * 2
    compact = kap.strip(loaded)
    x = data[0][:16]
    expected = keras.ops.convert_to_numpy(loaded(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    assert np.max(np.abs(expected - got)) <= 1e-5 * np.max(np.abs(expected))


def test_auto_map_goes_low_rank_only_on_wide_layers():
    model = keras.Sequential([
        keras.Input((10,)),
        L.Dense(40, activation="relu", name="narrow"),
        L.Dense(80, activation="relu", name="wide"),
        L.Dense(3, name="out"),
    ])
    gated = kap.add_gates(model, 0.5, wide_units=64, rank=8)
    maps = {g.name: g.map for g in gates_of(gated)}
    assert maps == {"narrow_gate": "full", "wide_gate": "low_rank"}
    assert {g.name: g.map for g in gates_of(
        kap.add_gates(model, 0.5, gate_map="full", wide_units=64))} == {
            "narrow_gate": "full", "wide_gate": "full"}


def test_vgg16_gates_add_at_most_five_percent():
    # Counted without building VGG16's 135 M weights: one gate per width.
    widths = models.VGG16_WIDTHS
    convs = [w for n, w in widths.items() if n.startswith("block")]
    params, cin = 0, 3
    for w in convs:
        params += 9 * cin * w + w
        cin = w
    params += 7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096
    params += 4096 * 200 + 200
    assert abs(params - 135.08e6) < 0.01e6  # the VGG16 of the issue

    def gate_params(width, gate_map):
        gate = AutoPrunerGate(map=gate_map)
        gate.build((None, width))
        return gate.count_params()

    auto = sum(gate_params(w, "low_rank" if w > 1024 else "full")
               for w in widths.values())
    full = sum(gate_params(w, "full") for w in widths.values())
    assert auto / params <= 0.05
    assert full / params > 0.25  # what the published map costs


@pytest.mark.parametrize("kwargs, match", [
    (dict(map="dense"), "map must be one of"),
    (dict(map="diagonal", pooling="max"), "needs pooling='avg'"),
    (dict(map="low_rank", rank=0), "rank must be"),
])
def test_bad_map_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoPrunerGate(**kwargs)


def test_add_gates_bad_map_arguments():
    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="d"),
                              L.Dense(2)])
    with pytest.raises(ValueError, match="gate_map must be"):
        kap.add_gates(model, 0.5, gate_map="lowrank")
    with pytest.raises(ValueError, match="gate_map="):
        kap.add_gates(model, 0.5, map="full")
    with pytest.raises(ValueError, match="wide_units"):
        kap.add_gates(model, 0.5, wide_units=0)
