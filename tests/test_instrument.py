"""add_gates: where gates go, what is excluded, weights kept, bad input."""

import keras
import numpy as np
import pytest

from keras_autopruner import AutoPrunerGate, add_gates
from keras_autopruner.gate import gates_of

L = keras.layers


def open_gates(model):
    """Codes of 1 everywhere: the gated model must equal the original."""
    for gate in gates_of(model):
        gate.moving_code.assign(np.ones(gate.units, "float32"))


def assert_same_function(original, gated, x):
    open_gates(gated)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gated(x, training=False)),
        keras.ops.convert_to_numpy(original(x, training=False)),
        rtol=1e-5, atol=1e-5,
    )


def gate_inputs(model):
    """gate name -> name of the layer whose output it reads."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, AutoPrunerGate):
            out[layer.name] = layer.input._keras_history[0].name
    return out


def convnet():
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(8, 3, name="c1"),
        L.BatchNormalization(name="bn1"),
        L.ReLU(name="r1"),
        L.Conv2D(8, 3, activation="relu", name="c2"),
        L.MaxPooling2D(name="pool"),
        L.Flatten(name="flat"),
        L.Dense(16, name="d1"),
        L.Activation("relu", name="a1"),
        L.Dropout(0.2, name="drop"),
        L.Dense(5, activation="softmax", name="out"),
    ], name="convnet")


def test_sequential_gates_after_bn_and_activation():
    model = convnet()
    gated = add_gates(model, 0.5)
    assert gate_inputs(gated) == {
        "c1_gate": "r1", "c2_gate": "c2", "d1_gate": "a1"}
    x = np.random.RandomState(0).rand(2, 12, 12, 3).astype("float32")
    assert_same_function(model, gated, x)


def test_user_model_untouched():
    model = convnet()
    before = [w.copy() for w in model.get_weights()]
    n_layers = len(model.layers)
    gated = add_gates(model, 0.5)
    gated.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.RandomState(0).rand(8, 12, 12, 3).astype("float32")
    gated.fit(x, np.arange(8) % 5, epochs=1, verbose=0)
    assert len(model.layers) == n_layers
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_functional_add_and_concatenate():
    x = keras.Input((10, 10, 4))
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(6, 1, padding="same", name="b")(x)
    b = L.BatchNormalization(name="b_bn")(b)
    s = L.Add(name="add")([a, b])
    c = L.Conv2D(5, 3, padding="same", activation="relu", name="c")(s)
    cat = L.Concatenate(name="cat")([s, c])
    y = L.GlobalAveragePooling2D(name="gap")(cat)
    y = L.Dense(3, name="out")(y)
    model = keras.Model(x, y)
    gated = add_gates(model, 0.5)
    assert gate_inputs(gated) == {
        "a_gate": "a", "b_gate": "b_bn", "c_gate": "c"}
    data = np.random.RandomState(1).rand(2, 10, 10, 4).astype("float32")
    assert_same_function(model, gated, data)


def test_nested_vgg16():
    vgg = keras.applications.VGG16(weights=None, include_top=False,
                                   input_shape=(32, 32, 3))
    x = keras.Input((32, 32, 3))
    y = L.Flatten()(vgg(x))
    y = L.Dense(16, activation="relu", name="fc")(y)
    y = L.Dense(4, activation="softmax", name="pred")(y)
    model = keras.Model(x, y)
    gated = add_gates(model, 0.6)
    names = [g.name for g in gates_of(gated)]
    assert len(names) == 14  # 13 convolutions + fc; pred is the output
    assert "block5_conv3_gate" in names and "fc_gate" in names
    assert "pred_gate" not in names
    assert all(g.target_rate == 0.6 for g in gates_of(gated))
    data = np.random.RandomState(2).rand(1, 32, 32, 3).astype("float32")
    assert_same_function(model, gated, data)


def test_output_reaching_through_global_pool_is_excluded():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="feat")(x)
    y = L.GlobalAveragePooling2D()(h)
    model = keras.Model(x, [y, L.Dense(2, name="side")(h)])
    with pytest.raises(ValueError, match="no prunable layer"):
        add_gates(model, 0.5)
    gated = add_gates(model, 0.5, include_output=True)
    assert [g.name for g in gates_of(gated)] == ["feat_gate", "side_gate"]


def test_include_exclude_and_rates():
    model = convnet()
    gated = add_gates(model, 0.5, exclude=["c2"], rates={"d1": 0.25})
    rates = {g.name: g.target_rate for g in gates_of(gated)}
    assert rates == {"c1_gate": 0.5, "d1_gate": 0.25}
    gated = add_gates(model, 0.5, include=lambda layer: layer.name.startswith("c"))
    assert sorted(g.name for g in gates_of(gated)) == ["c1_gate", "c2_gate"]


def test_min_units_and_gate_kwargs_reach_the_gates():
    gated = add_gates(convnet(), 0.5, min_units=3, pooling="max", momentum=0.5)
    for gate in gates_of(gated):
        assert gate.min_units == 3
        assert gate.pooling == "max"
        assert gate.momentum == 0.5


def test_gated_model_trains_under_tf_function():
    gated = add_gates(convnet(), 0.5)
    gated.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
    x = np.random.RandomState(0).rand(16, 12, 12, 3).astype("float32")
    history = gated.fit(x, np.arange(16) % 5, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# -- bad input ---------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 1.01, -1, "x"])
def test_rate_outside_range(rate):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        add_gates(convnet(), rate)


def test_rates_dict_checked():
    with pytest.raises(ValueError, match="rates"):
        add_gates(convnet(), 0.5, rates={"c1": 2.0})


def test_not_a_model():
    with pytest.raises(TypeError, match="keras.Model"):
        add_gates(L.Dense(3), 0.5)


def test_no_prunable_layer():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    with pytest.raises(ValueError, match="no prunable layer"):
        add_gates(model, 0.5)
    pooled = keras.Sequential([keras.Input((4, 4, 1)), L.MaxPooling2D()])
    with pytest.raises(ValueError, match="no prunable layer"):
        add_gates(pooled, 0.5)


def test_unknown_layer_name():
    with pytest.raises(ValueError, match="'nope'.*not in the model"):
        add_gates(convnet(), 0.5, exclude=["nope"])


def test_unsupported_layer_named():
    with pytest.raises(ValueError, match="MaxPooling2D.*cannot be gated"):
        add_gates(convnet(), 0.5, include=["pool"])


def test_string_instead_of_list():
    with pytest.raises(TypeError, match=r"\['c1'\]"):
        add_gates(convnet(), 0.5, include="c1")


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.ones((1, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed.*functional"):
        add_gates(net, 0.5)


def test_unbuilt_sequential():
    with pytest.raises(ValueError, match="not built"):
        add_gates(keras.Sequential([L.Dense(3), L.Dense(2)]), 0.5)


def test_channels_first_rejected():
    model = keras.Sequential([
        keras.Input((3, 8, 8)),
        L.Conv2D(4, 3, data_format="channels_first", name="cf"),
        L.Flatten(), L.Dense(2)])
    with pytest.raises(ValueError, match="channels_first"):
        add_gates(model, 0.5)


def test_gating_a_gated_model_says_what_to_do():
    gated = add_gates(convnet(), 0.5)
    with pytest.raises(ValueError, match="already gated.*strip it first"):
        add_gates(gated, 0.5)
    # Also when the gated model is nested in another one.
    x = keras.Input((12, 12, 3))
    with pytest.raises(ValueError, match="already gated"):
        add_gates(keras.Model(x, gated(x)), 0.5)


def test_keras_ops_calls_in_the_graph():
    # MobileNetV3 builds hard-swish from keras.ops arithmetic on tensors,
    # which the functional graph holds as bare operations (no weights).
    x = keras.Input((6,))
    h = keras.layers.Dense(8, name="d")(x)
    h = h * keras.ops.relu(h + 3.0)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    gated = add_gates(model)
    assert [g.name for g in gates_of(gated)] == ["d_gate"]
    for gate in gates_of(gated):
        gate.set_mask(np.ones(gate.units, bool))
    data = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gated(data, training=False)),
        keras.ops.convert_to_numpy(model(data)), rtol=1e-6, atol=1e-6)
