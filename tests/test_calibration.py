"""recalibrate_batch_norm: statistics re-measured, nothing else touched."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap


def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


def _net(dropout_before_bn=False, nested=False):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    if dropout_before_bn:
        x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    if nested:
        inner_in = keras.Input((6, 6, 4))
        inner = keras.Model(
            inner_in, keras.layers.BatchNormalization(name="bn2")(inner_in),
            name="inner")
        x = inner(x)
    else:
        x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _norms(model):
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            out[layer.name] = layer
        elif isinstance(layer, keras.Model):
            out.update(_norms(layer))
    return out


def _input_stats(model, name, x):
    """Mean and variance over batch and space of what norm `name` sees at
    inference, computed by hand with a probe model."""
    conv = {"bn1": "conv1", "bn2": "conv2"}[name]
    probe = keras.Model(model.inputs, model.get_layer(conv).output)
    v = np.asarray(probe(x, training=False), "float64")
    return v.mean(axis=(0, 1, 2)), v.var(axis=(0, 1, 2))


@pytest.mark.parametrize("kind", ["plain", "dropout", "nested"])
def test_statistics_are_those_of_the_network_at_inference(kind):
    model = _net(dropout_before_bn=kind == "dropout", nested=kind == "nested")
    x = np.random.default_rng(0).normal(2.0, 3.0, (48, 6, 6, 2)).astype(
        "float32")
    trainable = [_np(w) for w in model.trainable_weights]
    # One batch: every norm then normalises in training mode with exactly
    # the statistics it stores, so each norm's input at inference has the
    # mean and variance it stored (dropout off, as at inference).
    assert kap.recalibrate_batch_norm(model, x, batch_size=48) == 2
    for name, norm in _norms(model).items():
        mean, var = _input_stats(model, name, x)
        np.testing.assert_allclose(_np(norm.moving_mean), mean,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(_np(norm.moving_variance), var,
                                   rtol=1e-3, atol=1e-4)
        assert norm.momentum == 0.99
    for before, w in zip(trainable, model.trainable_weights):
        np.testing.assert_array_equal(before, _np(w))
    if kind == "dropout":
        assert model.get_layer("drop").rate == 0.5


def test_several_batches_give_the_running_average():
    model = _net()
    x = np.random.default_rng(1).normal(size=(64, 6, 6, 2)).astype(
        "float32")
    kap.recalibrate_batch_norm(model, x, batch_size=16, max_batches=3)
    # bn1 sees the input's convolution only, whatever the other norms do:
    # the mean of its three batch statistics.
    probe = keras.Model(model.inputs, model.get_layer("bn1").input)
    v = np.asarray(probe(x[:48]), "float64").reshape(3, 16, 6, 6, 5)
    np.testing.assert_allclose(
        _np(model.get_layer("bn1").moving_mean),
        v.mean(axis=(1, 2, 3)).mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        _np(model.get_layer("bn1").moving_variance),
        v.var(axis=(1, 2, 3)).mean(axis=0), rtol=1e-4, atol=1e-5)


def test_dataset_of_pairs_and_tuple():
    import tensorflow as tf

    model = _net()
    x = np.random.default_rng(2).normal(size=(32, 6, 6, 2)).astype(
        "float32")
    y = np.zeros(32, "int32")
    kap.recalibrate_batch_norm(model, (x, y), batch_size=32)
    expected = _np(model.get_layer("bn1").moving_mean)
    other = _net()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    kap.recalibrate_batch_norm(other, ds)
    np.testing.assert_allclose(_np(other.get_layer("bn1").moving_mean),
                               expected, rtol=1e-5, atol=1e-6)


def test_a_gated_model_keeps_its_gate_state():
    keras.utils.set_random_seed(0)
    model = _net()
    gated = kap.add_gates(model, target_rate=0.5)
    gate = [l for l in gated.layers if isinstance(l, kap.AutoPrunerGate)][0]
    before = [_np(v) for v in gate.non_trainable_variables]
    x = np.random.default_rng(3).normal(size=(32, 6, 6, 2)).astype(
        "float32")
    kap.recalibrate_batch_norm(gated, x)
    for b, v in zip(before, gate.non_trainable_variables):
        np.testing.assert_array_equal(b, _np(v))


def test_refusals_and_no_batch_norm():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert kap.recalibrate_batch_norm(plain, np.ones((4, 3))) == 0
    model = _net()
    with pytest.raises(ValueError, match="no batch"):
        kap.recalibrate_batch_norm(model, np.zeros((0, 6, 6, 2), "float32"))
    with pytest.raises(ValueError, match="positive whole"):
        kap.recalibrate_batch_norm(model, np.zeros((4, 6, 6, 2)),
                                   batch_size=0)


def test_bad_data_leaves_the_statistics_as_they_were():
    model = _net()
    norms = [l for l in model.layers
             if isinstance(l, keras.layers.BatchNormalization)]
    before = [_np(v) for n in norms
              for v in (n.moving_mean, n.moving_variance)]
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype("float32")
    x[40] = np.nan  # the third batch of 16
    with pytest.raises(kap.NonFiniteError, match="left as they were"):
        kap.recalibrate_batch_norm(model, x, batch_size=16)
    after = [_np(v) for n in norms for v in (n.moving_mean, n.moving_variance)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)

    def batches():  # a good batch, then one the model cannot take
        yield x[:16]
        yield np.zeros((16, 5, 5, 2), "float32")

    with pytest.raises(ValueError):
        kap.recalibrate_batch_norm(model, batches())
    for a, n in zip(before[::2], norms):
        np.testing.assert_array_equal(a, _np(n.moving_mean))
    with pytest.raises(ValueError, match="needs input examples"):
        kap.recalibrate_batch_norm(model, None)


def _two_input_net():
    keras.utils.set_random_seed(4)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    x = keras.layers.Concatenate()([keras.layers.Dense(5, name="da")(a),
                                    keras.layers.Dense(5, name="db")(b)])
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model([a, b], keras.layers.Dense(2)(x))


@pytest.mark.parametrize("form", ["list", "dict", "tuple_of_list"])
def test_a_multi_input_model_takes_its_inputs_as_fit_does(form):
    rng = np.random.default_rng(5)
    xa = rng.normal(size=(40, 4)).astype("float32")
    xb = rng.normal(3.0, 2.0, size=(40, 3)).astype("float32")
    model = _two_input_net()
    data = {"list": [xa, xb], "dict": {"a": xa, "b": xb},
            "tuple_of_list": ([xa, xb], np.zeros(40, "int32"))}[form]
    kap.recalibrate_batch_norm(model, data, batch_size=40)
    probe = keras.Model(model.inputs,
                        model.get_layer("bn").input)
    seen = np.asarray(probe([xa, xb], training=False), "float64")
    # Both inputs reached the batch norm: its statistics are those of the
    # concatenation of both branches over all 40 examples.
    np.testing.assert_allclose(_np(model.get_layer("bn").moving_mean),
                               seen.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(model.get_layer("bn").moving_variance),
                               seen.var(axis=0), rtol=1e-3, atol=1e-4)


def test_multi_input_arrays_of_different_lengths_are_refused():
    model = _two_input_net()
    with pytest.raises(ValueError, match="as many examples"):
        kap.recalibrate_batch_norm(
            model, [np.zeros((4, 4), "float32"), np.zeros((5, 3), "float32")])
