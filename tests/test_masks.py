"""Masks without gates: strip(model, keep=...), gate.set_mask held in
training, and cost_share / kept_fraction reporting the MACs and params."""

import warnings

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.gate import gates_of

L = keras.layers


def conv_net(widths=(6, 10, 12)):
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(widths[0], 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(widths[1], 3, padding="same", activation="relu",
                 name="c2")(h)
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(widths[2], activation="relu", name="fc")(h)
    return keras.Model(x, L.Dense(3, name="out")(h), name="conv_net")


def randomised(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, .5, n),
                               rng.normal(0, .5, n), rng.uniform(.5, 2, n)])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.4, w.shape)
                               for w in layer.get_weights()])
    return model


def inputs(model, n=5, seed=1):
    shape = (n,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_strip_with_keep_equals_a_hand_built_slice():
    model = randomised(conv_net())
    m1 = np.array([1, 0, 1, 1, 0, 1], bool)
    m2 = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], bool)
    m3 = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0], bool)
    compact = kap.strip(model, keep={"c1": m1, "c2": m2, "fc": m3})

    narrow = conv_net((int(m1.sum()), int(m2.sum()), int(m3.sum())))
    w = {layer.name: layer.get_weights() for layer in model.layers}
    k1, b1 = w["c1"]
    narrow.get_layer("c1").set_weights([k1[..., m1], b1[m1]])
    narrow.get_layer("bn1").set_weights([v[m1] for v in w["bn1"]])
    k2, b2 = w["c2"]
    narrow.get_layer("c2").set_weights([k2[:, :, m1][..., m2], b2[m2]])
    # Flatten reads (4, 4, channels) in row-major order.
    kf, bf = w["fc"]
    kf = kf.reshape(4, 4, 10, 12)[:, :, m2, :].reshape(-1, 12)
    narrow.get_layer("fc").set_weights([kf[:, m3], bf[m3]])
    ko, bo = w["out"]
    narrow.get_layer("out").set_weights([ko[m3], bo])

    x = inputs(model)
    np.testing.assert_allclose(out(compact, x), out(narrow, x), rtol=1e-5,
                               atol=1e-5)
    assert [layer.name for layer in compact.layers] == [
        layer.name for layer in model.layers]
    assert kap.count_params(compact) == kap.count_params(narrow)
    # The user's model is untouched and has no gates.
    assert model.get_layer("c1").filters == 6 and not gates_of(model)


def branches():
    x = keras.Input((6, 6, 4))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(8, 1, activation="relu", name="b")(x)
    s = L.Add(name="add")([a, b])
    h = L.GlobalAveragePooling2D(name="gap")(s)
    return keras.Model(x, L.Dense(2, name="out")(h), name="branches")


def zeroed(model, **masks):
    """The model with each named conv's dropped filters zeroed (relu
    keeps them at 0): what the pruned model must compute."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, mask in masks.items():
        k, b = copy.get_layer(name).get_weights()
        k[..., ~mask], b[~mask] = 0.0, 0.0
        copy.get_layer(name).set_weights([k, b])
    return copy


def test_coupled_layers_keep_the_union():
    model = randomised(branches())
    ma = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    mb = np.array([0, 1, 1, 0, 0, 0, 0, 0], bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # as asked: no warning
        compact = kap.strip(model, keep={"a": ma, "b": mb})
    union = int((ma | mb).sum())
    assert compact.get_layer("a").filters == union
    assert compact.get_layer("b").filters == union
    x = inputs(model)
    np.testing.assert_allclose(out(compact, x), out(zeroed(model, a=ma, b=mb),
                                                    x), rtol=1e-5, atol=1e-6)


def test_a_layer_coupled_to_an_unnamed_one_is_refused_with_the_reason():
    # b is not named, so it keeps every channel of the sum: none of a's
    # could go, and the plan's reason says so before anything is cut.
    model = randomised(branches())
    ma = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    with pytest.raises(ValueError, match="'a'.*none of its channels could "
                                         "go"):
        kap.strip(model, keep={"a": ma})


def test_an_output_layer_can_be_named():
    model = randomised(conv_net())
    mask = np.array([1, 0, 1], bool)
    with pytest.warns(UserWarning, match="out.*model output"):
        compact = kap.strip(model, keep={"out": mask})
    y = out(compact, inputs(model))
    # The output keeps its width; the dropped output is zero.
    assert y.shape == (5, 3) and np.all(y[:, 1] == 0)
    np.testing.assert_allclose(y[:, mask], out(model, inputs(model))[:, mask],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep, match", [
    ({"nope": np.ones(6, bool)}, "no layer 'nope'.*Layers:"),
    ({"bn1": np.ones(6, bool)}, "keep names layer 'bn1'.*BatchNormalization"),
    ({"c1": np.ones(5, bool)}, "'c1' has 6 output channels.*5 entries"),
    ({"c1": np.ones(6, "int32")}, "'c1' must be a 1-D bool.*int32"),
    ({"c1": np.zeros(6, bool)}, "'c1' keeps no channel"),
    ({}, "non-empty dict"),
])
def test_bad_keep_is_refused_naming_the_layer(keep, match):
    with pytest.raises(ValueError, match=match):
        kap.strip(conv_net(), keep=keep)


def test_keep_on_a_gated_model_is_refused():
    gated = kap.add_gates(conv_net(), 0.5)
    with pytest.raises(ValueError, match="without gates.*set_mask"):
        kap.strip(gated, keep={"c1": np.ones(6, bool)})


# set_mask holds in training.

def fit(model, steps, callbacks=()):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16 * steps, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 16 * steps)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=list(callbacks))


def masks_for(gated, seed=0):
    rng = np.random.default_rng(seed)
    found = {}
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.4
        mask[0] = True
        found[gate.name] = mask
    return found


def test_set_mask_survives_a_plain_fit_and_strips_without_force():
    gated = kap.add_gates(randomised(conv_net()), 0.5)
    chosen = masks_for(gated)
    for gate in gates_of(gated):
        gate.set_mask(chosen[gate.name])
    fit(gated, steps=25)
    for gate in gates_of(gated):
        np.testing.assert_array_equal(gate.mask(), chosen[gate.name])
        np.testing.assert_array_equal(gate.scores(),
                                      chosen[gate.name].astype("float32"))
    compact = kap.strip(gated)  # no SoftCodesError, no force
    for gate in gates_of(gated):
        layer = compact.get_layer(gate.name.removesuffix("_gate"))
        assert layer.output.shape[-1] == chosen[gate.name].sum()


def test_the_callback_leaves_set_masks_alone():
    gated = kap.add_gates(randomised(conv_net()), 0.5)
    chosen = masks_for(gated, seed=1)
    for gate in gates_of(gated):
        gate.set_mask(chosen[gate.name])
    callback = kap.AutoPrunerCallback()
    fit(gated, steps=15, callbacks=[callback])
    assert callback.done
    for gate in gates_of(gated):
        np.testing.assert_array_equal(gate.mask(), chosen[gate.name])


def test_the_callback_refuses_a_mix_of_set_and_learning_gates():
    gated = kap.add_gates(randomised(conv_net()), 0.5)
    gated.get_layer("c2_gate").set_mask(np.ones(10, bool))
    with pytest.raises(ValueError, match="c2_gate.*every gate"):
        fit(gated, steps=2, callbacks=[kap.AutoPrunerCallback()])


def test_set_mask_refuses_a_wrong_length():
    gated = kap.add_gates(conv_net(), 0.5)
    with pytest.raises(ValueError, match="'c1_gate' has 6 channels"):
        gated.get_layer("c1_gate").set_mask(np.ones(4, bool))


# cost_share.

def test_cost_share_matches_the_stripped_model():
    model = randomised(conv_net())
    gated = kap.add_gates(model, 0.5)
    chosen = masks_for(gated, seed=2)
    for gate in gates_of(gated):
        gate.set_mask(chosen[gate.name])
    compact = kap.strip(gated)
    share = kap.cost_share(gated)
    assert share["flops"] == pytest.approx(
        kap.count_flops(compact).total / kap.count_flops(model).total)
    assert share["params"] == pytest.approx(
        kap.count_params(compact) / kap.count_params(model))
    widths = sum(compact.get_layer(n).output.shape[-1] for n in ("c1", "c2",
                                                                 "fc"))
    assert share["filters"] == pytest.approx(widths / (6 + 10 + 12))
    assert kap.cost_share(gated, "flops") == share["flops"]
    # kept_fraction reports the same beside the filter share.
    kept = kap.kept_fraction(gated)
    assert kept["flops"] == share["flops"] and kept["params"] == share["params"]
    assert kept["overall"] == pytest.approx(
        sum(m.sum() for m in chosen.values()) / 28)
    # Masks passed in are what is costed, by gate name.
    ones = {name: np.ones_like(m) for name, m in chosen.items()}
    assert kap.cost_share(gated, masks=ones) == {
        "filters": 1.0, "flops": 1.0, "params": 1.0}


def test_cost_share_refuses_clearly():
    with pytest.raises(ValueError, match="no AutoPrunerGate"):
        kap.cost_share(conv_net())
    gated = kap.add_gates(conv_net(), 0.5)
    with pytest.raises(ValueError, match="weighting"):
        kap.cost_share(gated, "macs")
    with pytest.raises(ValueError, match="'c9_gate'.*Gates:"):
        kap.cost_share(gated, masks={"c9_gate": np.ones(3, bool)})
    with pytest.raises(ValueError, match="'c1_gate' has 6 channels"):
        kap.cost_share(gated, masks={"c1_gate": np.ones(3, bool)})


def test_no_warning_when_masks_are_removed_as_given():
    model = randomised(conv_net())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kap.strip(model, keep={"c2": np.arange(10) < 4})
