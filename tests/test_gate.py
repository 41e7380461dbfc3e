"""AutoPrunerGate: arithmetic on known inputs, modes, serialisation."""

import math

import keras
import numpy as np
import pytest

from keras_autopruner import AutoPrunerGate, set_hard_masks


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_gate(shape, **kwargs):
    # speed=1: the formulas below use the stored weights as the logits.
    kwargs.setdefault("speed", 1.0)
    gate = AutoPrunerGate(**kwargs)
    gate.build((None,) + shape)
    return gate


def test_dense_code_matches_formula():
    gate = make_gate((3,), alpha=2.0, momentum=0.0)
    kernel = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.0, 1.0]], "float32")
    bias = np.array([0.1, -0.2, 0.3], "float32")
    gate.kernel.assign(kernel)
    gate.bias.assign(bias)
    x = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]], "float32")
    code = sigmoid(2.0 * (x.mean(axis=0) @ kernel + bias))
    y = keras.ops.convert_to_numpy(gate(x, training=True))
    np.testing.assert_allclose(y, x * code, rtol=1e-5)
    # momentum 0: the moving code is the last code
    np.testing.assert_allclose(gate.scores(), code, rtol=1e-5)


def test_avg_pooling_feature_maps():
    gate = make_gate((4, 4, 2), alpha=1.0, momentum=0.0)
    kernel = np.array([[1.0, -1.0], [2.0, 0.5]], "float32")
    gate.kernel.assign(kernel)
    gate.bias.assign(np.zeros(2, "float32"))
    x = np.random.RandomState(0).rand(3, 4, 4, 2).astype("float32")
    pooled = x.mean(axis=(0, 1, 2))
    code = sigmoid(pooled @ kernel)
    y = keras.ops.convert_to_numpy(gate(x, training=True))
    np.testing.assert_allclose(y, x * code, rtol=1e-5)


def test_max_pooling_connects_every_position():
    gate = make_gate((4, 6, 2), pooling="max", momentum=0.0)
    assert tuple(gate.kernel.shape) == (2 * 3 * 2, 2)
    x = np.random.RandomState(1).rand(2, 4, 6, 2).astype("float32")
    kernel = np.random.RandomState(2).randn(12, 2).astype("float32")
    gate.kernel.assign(kernel)
    gate.bias.assign(np.zeros(2, "float32"))
    m = x.mean(axis=0)  # (4, 6, 2)
    pooled = m.reshape(2, 2, 3, 2, 2).max(axis=(1, 3))  # (2, 3, 2)
    code = sigmoid(pooled.reshape(-1) @ kernel)
    y = keras.ops.convert_to_numpy(gate(x, training=True))
    np.testing.assert_allclose(y, x * code, rtol=1e-5)


def test_max_pooling_needs_static_sizes():
    with pytest.raises(ValueError, match="static spatial sizes"):
        make_gate((None, None, 4), pooling="max")


def test_inference_uses_moving_code_then_hard_mask():
    gate = make_gate((4,))
    gate.moving_code.assign(np.array([0.9, 0.2, 0.6, 0.4], "float32"))
    x = np.ones((2, 4), "float32")
    soft = keras.ops.convert_to_numpy(gate(x, training=False))
    np.testing.assert_allclose(soft[0], [0.9, 0.2, 0.6, 0.4], rtol=1e-6)
    model = keras.Sequential([keras.Input((4,)), gate])
    set_hard_masks(model, True)
    hard = keras.ops.convert_to_numpy(gate(x, training=False))
    np.testing.assert_array_equal(hard[0], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gate.mask(), [True, False, True, False])


def test_moving_code_momentum():
    gate = make_gate((2,), momentum=0.75, bias_init=0.0)
    start = gate.scores().copy()
    np.testing.assert_allclose(start, 0.5)
    gate.kernel.assign(np.zeros((2, 2), "float32"))
    gate.bias.assign(np.array([10.0, -10.0], "float32"))
    gate(np.ones((1, 2), "float32"), training=True)
    code = sigmoid(np.array([10.0, -10.0]))
    np.testing.assert_allclose(gate.scores(), 0.75 * 0.5 + 0.25 * code, rtol=1e-5)


def test_initial_code_is_near_keep_all():
    gate = make_gate((8,), bias_init=2.0, alpha=1.0)
    np.testing.assert_allclose(gate.scores(), sigmoid(2.0), rtol=1e-6)


def test_pruning_loss_is_added_and_trains_the_gate_only():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    gate = AutoPrunerGate(target_rate=0.5, name="g")
    model = keras.Model(inputs, gate(hidden))
    gate.coef.assign(3.0)
    gate.center.assign(0.25)
    x = np.random.RandomState(0).rand(8, 4).astype("float32")
    model(x, training=True)
    (loss,) = model.losses
    mean = float(np.mean(gate.code.numpy()))
    np.testing.assert_allclose(float(loss), 3.0 * (mean - 0.25) ** 2, rtol=1e-5)
    # The code reads the activation through stop_gradient: a step of plain
    # SGD on the pruning loss alone leaves the hidden layer exactly as it
    # was and moves the gate. (A training step, not a GradientTape, so that
    # the check runs on every backend.)
    hidden_before = [w.numpy().copy()
                     for w in model.get_layer("hidden").weights]
    bias_before = gate.bias.numpy().copy()
    model.compile(keras.optimizers.SGD(0.1),
                  lambda y_true, y_pred: 0.0 * keras.ops.mean(y_pred))
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    for before, w in zip(hidden_before,
                         model.get_layer("hidden").weights):
        np.testing.assert_array_equal(w.numpy(), before)
    assert np.abs(gate.bias.numpy() - bias_before).max() > 1e-4


def test_pruning_loss_moves_the_code_towards_the_centre():
    inputs = keras.Input((6,))
    gate = AutoPrunerGate(target_rate=0.5, bias_init=2.0, name="g")
    model = keras.Model(inputs, gate(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    gate.coef.assign(100.0)
    gate.center.assign(0.3)
    x = np.random.RandomState(0).rand(64, 6).astype("float32")
    before = float(np.mean(gate.code.numpy()))
    model.fit(x, x, epochs=200, batch_size=64, verbose=0)
    after = float(np.mean(gate.code.numpy()))
    assert before > 0.8
    assert abs(after - 0.3) < 0.05


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, "half", None])
def test_bad_rate(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        AutoPrunerGate(target_rate=bad)


def test_bad_pooling():
    with pytest.raises(ValueError, match="pooling"):
        AutoPrunerGate(pooling="median")


def test_config_round_trip():
    gate = AutoPrunerGate(target_rate=0.3, pooling="max", alpha=2.0,
                          momentum=0.5, speed=3.0, min_units=2, name="gg")
    clone = AutoPrunerGate.from_config(gate.get_config())
    assert clone.get_config() == gate.get_config()


def test_rank3_dense_input():
    gate = make_gate((5, 3), momentum=0.0)
    x = np.random.RandomState(0).rand(2, 5, 3).astype("float32")
    y = keras.ops.convert_to_numpy(gate(x, training=True))
    code = gate.scores()
    np.testing.assert_allclose(y, x * code, rtol=1e-5)
    assert math.isclose(float(gate.kernel.shape[0]), 3)


def test_speed_scales_the_logits_not_the_starting_codes():
    slow = make_gate((3,), speed=1.0, bias_init=2.0)
    fast = make_gate((3,), speed=10.0, bias_init=2.0)
    np.testing.assert_allclose(fast.scores(), slow.scores(), rtol=1e-6)
    np.testing.assert_allclose(fast.bias.numpy(), slow.bias.numpy() / 10.0,
                               rtol=1e-6)
    for gate in (slow, fast):
        gate.kernel.assign(np.eye(3, dtype="float32"))
        gate.bias.assign(np.zeros(3, "float32"))
    x = np.array([[0.1, -0.2, 0.3]], "float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fast.compute_logits(x)),
        10.0 * keras.ops.convert_to_numpy(slow.compute_logits(x)), rtol=1e-6)


def test_done_gate_applies_its_mask_in_training_and_freezes_it():
    gate = make_gate((4,), momentum=0.5)
    gate.set_mask(np.array([True, False, True, False]))
    gate.phase.assign(2.0)
    x = np.random.RandomState(0).rand(3, 4).astype("float32") + 1.0
    y = keras.ops.convert_to_numpy(gate(x, training=True))
    np.testing.assert_allclose(y, x * np.array([1.0, 0.0, 1.0, 0.0]))
    # The moving code and ranking no longer move.
    np.testing.assert_array_equal(gate.scores(), [1.0, 0.0, 1.0, 0.0])
    gate.hard.assign(0.0)
    y = keras.ops.convert_to_numpy(gate(x, training=False))
    np.testing.assert_allclose(y, x * np.array([1.0, 0.0, 1.0, 0.0]))


def test_moving_logit_keeps_ranking_after_codes_saturate():
    gate = make_gate((3,), momentum=0.0, alpha=1000.0)
    gate.kernel.assign(np.zeros((3, 3), "float32"))
    gate.bias.assign(np.array([0.5, 0.2, -0.3], "float32"))
    gate(np.ones((2, 3), "float32"), training=True)
    np.testing.assert_array_equal(gate.scores(), [1.0, 1.0, 0.0])
    assert list(np.argsort(-gate.ranking())) == [0, 1, 2]
