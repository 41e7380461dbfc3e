"""The plan: gates only where strip cuts exactly, whatever the masks.

The property test draws small graphs of the kinds users write (Dense on
feature vectors and on track sets, masks, `keras.ops` arithmetic and
reductions, merges, shared layers, and layers strip cannot narrow:
LayerNormalization and Lambda). For each, whatever `add_gates` gated,
`strip` of random masks never refuses and equals the hard-masked model.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import ops

import keras_autopruner as kap
from keras_autopruner.gate import gates_of

L = keras.layers


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def dense_block(data, h, name):
    units = data.draw(st.integers(2, 6), label="units")
    act = data.draw(st.sampled_from([None, "relu", "tanh", "sigmoid"]))
    h = L.Dense(units, activation=act, name=name)(h)
    if data.draw(st.booleans(), label="bn"):
        h = L.BatchNormalization()(h)
    return h


def step(data, tensors, i, shared):
    """One more tensor, from one drawn kind of operation."""
    src = tensors[data.draw(st.integers(0, len(tensors) - 1))]
    kind = data.draw(st.sampled_from(
        ["dense", "add", "concat", "op_scalar", "op_unary", "shared",
         "layer_norm", "lambda", "multiply"]), label="kind")
    name = f"d{i}"
    if kind == "dense":
        return dense_block(data, src, name)
    if kind == "add":
        other = L.Dense(src.shape[-1], activation="relu", name=name)(src)
        return L.Add()([src, other])
    if kind == "multiply":
        other = L.Dense(src.shape[-1], activation="sigmoid", name=name)(src)
        return L.Multiply()([src, other])
    if kind == "concat":
        return L.Concatenate()([src, dense_block(data, src, name)])
    if kind == "op_scalar":
        c = data.draw(st.sampled_from([0.0, 0.5, 3.0]))
        fn = data.draw(st.sampled_from(["add", "multiply", "maximum"]))
        return getattr(ops, fn)(src, c)
    if kind == "op_unary":
        return data.draw(st.sampled_from([ops.relu, ops.tanh, ops.abs]))(src)
    if kind == "shared":
        # The shared Dense is called again on what it read before, when
        # the width fits; a shared layer needs the same input width.
        layer = shared.get(src.shape[-1])
        if layer is None:
            layer = shared[src.shape[-1]] = L.Dense(
                4, activation="relu", name=f"shared{i}")
        return layer(src)
    if kind == "layer_norm":
        return L.LayerNormalization()(src)
    return L.Lambda(lambda t: t * 0.5)(src)


def random_model(data):
    tracks = data.draw(st.booleans(), label="tracks")
    if tracks:
        x = keras.Input((4, 3))
        h = L.Masking()(x)
    else:
        x = keras.Input((5,))
        h = x
    tensors = [dense_block(data, h, "d0")]
    shared = {}
    for i in range(data.draw(st.integers(1, 4), label="steps")):
        tensors.append(step(data, tensors, i + 1, shared))
    h = tensors[-1]
    if tracks:
        if data.draw(st.booleans(), label="op_pool"):
            h = ops.sum(h, axis=1)
        else:
            h = L.GlobalAveragePooling1D()(h)
    h = L.Dense(4, activation="relu", name="head")(h)
    out = L.Dense(3, bias_initializer="random_normal", name="out")
    return keras.Model(x, out(h)), tracks


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_whatever_add_gates_gates_strip_cuts_exactly(data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, tracks = random_model(data)
    plan = kap.plan(model, 0.5)
    if not plan.gated:
        with pytest.raises(ValueError, match="no prunable layer to gate"):
            kap.add_gates(model, 0.5)
        assert all(row.reason for row in plan.rows)
        return
    gated = kap.add_gates(model, 0.5)
    assert {g.name for g in gates_of(gated)} == {
        f"{name}_gate" for name in plan.gated}
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
    compact = kap.strip(gated)
    shape = (6, 4, 3) if tracks else (6, 5)
    x = rng.normal(size=shape).astype("float32")
    if tracks:
        x[:3, 2:] = 0.0  # padded tracks
    kap.set_hard_masks(gated, True)
    np.testing.assert_allclose(outputs(compact, x), outputs(gated, x),
                               rtol=1e-4, atol=1e-5)
    assert kap.count_flops(compact) <= kap.count_flops(model)


def test_plan_table_lists_every_prunable_layer_with_a_reason():
    x = keras.Input((8,))
    h = L.Dense(6, activation="relu", name="kept")(x)
    h = L.LayerNormalization(name="norm")(L.Dense(5, name="normed")(h))
    model = keras.Model(x, L.Dense(2, name="out")(h))
    plan = kap.plan(model, 0.5)
    assert [r.layer for r in plan.rows] == ["kept", "normed", "out"]
    assert plan.gated == ["kept"]
    table = plan.table()
    for row in plan.rows:
        assert row.layer in table
    assert "'norm' (LayerNormalization)" in table
    assert "1 of 3 prunable layers gated" in table
    assert plan.row("kept").macs_share > 0
    with pytest.raises(ValueError, match="no prunable layer 'nope'"):
        plan.row("nope")


def test_including_a_layer_the_plan_refuses_fails_before_training():
    x = keras.Input((8,))
    h = L.LayerNormalization(name="norm")(L.Dense(5, name="normed")(x))
    model = keras.Model(x, L.Dense(2, name="out")(h))
    with pytest.raises(ValueError, match="include names layer 'normed'.*"
                                         "'norm'"):
        kap.add_gates(model, 0.5, include=["normed"])
