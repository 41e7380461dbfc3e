"""Gates behind depthwise stages: inverted residual blocks strip their
expansion channels; depth multipliers above 1 and lone zero padding keep
the gate where it was."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.gate import AutoPrunerGate, gates_of

L = keras.layers


def gate_inputs(model):
    """gate name -> name of the layer whose output it reads."""
    return {layer.name: layer.input._keras_history[0].name
            for layer in model.layers if isinstance(layer, AutoPrunerGate)}


def spread_batch_norms(model, rng):
    """Non-trivial shifts, so that a batch norm turns a zero into a
    constant and a wrongly removed channel shows in the outputs."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([
                rng.uniform(0.8, 1.6, v.shape) if v.name in
                ("gamma", "moving_variance") else rng.uniform(-0.5, 0.5,
                                                             v.shape)
                for v in layer.weights])


def set_masks(gated, rng):
    masks = {}
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
        masks[gate.name[:-len("_gate")]] = mask
    return masks


def assert_same_outputs(gated, compact, x):
    want = keras.ops.convert_to_numpy(gated(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    scale = float(np.max(np.abs(want)))
    assert scale > 1e-3, "degenerate test: the gated model outputs zeros"
    assert np.max(np.abs(got - want)) <= 1e-5 * scale


def inverted_residual(multiplier=1):
    """A MobileNetV2 start: a stem whose output a depthwise conv reads, a
    strided block (zero padding, valid depthwise conv) and a residual one."""
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.ReLU(6.0, name="stem_relu")(h)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False,
                          name="b0_dw")(h)
    h = L.BatchNormalization(name="b0_dw_bn")(h)
    h = L.ReLU(6.0, name="b0_dw_relu")(h)
    h = L.Conv2D(8, 1, use_bias=False, name="b0_project")(h)
    h = L.BatchNormalization(name="b0_project_bn")(h)
    e = L.Conv2D(24, 1, use_bias=False, name="b1_expand")(h)
    e = L.BatchNormalization(name="b1_expand_bn")(e)
    e = L.ReLU(6.0, name="b1_expand_relu")(e)
    e = L.ZeroPadding2D(((0, 1), (0, 1)), name="b1_pad")(e)
    e = L.DepthwiseConv2D(3, strides=2, use_bias=False,
                          depth_multiplier=multiplier, name="b1_dw")(e)
    e = L.BatchNormalization(name="b1_dw_bn")(e)
    e = L.ReLU(6.0, name="b1_dw_relu")(e)
    h = L.Conv2D(8, 1, use_bias=False, name="b1_project")(e)
    h = L.BatchNormalization(name="b1_project_bn")(h)
    e = L.Conv2D(24, 1, use_bias=False, name="b2_expand")(h)
    e = L.BatchNormalization(name="b2_expand_bn")(e)
    e = L.ReLU(6.0, name="b2_expand_relu")(e)
    e = L.DepthwiseConv2D(3, padding="same", use_bias=False,
                          name="b2_dw")(e)
    e = L.BatchNormalization(name="b2_dw_bn")(e)
    e = L.ReLU(6.0, name="b2_dw_relu")(e)
    e = L.Conv2D(8, 1, use_bias=False, name="b2_project")(e)
    e = L.BatchNormalization(name="b2_project_bn")(e)
    h = L.Add(name="b2_add")([h, e])
    y = L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y, name=f"inverted_residual_{multiplier}")


def test_gate_goes_behind_the_depthwise_stage():
    gated = kap.add_gates(inverted_residual(), 0.5)
    points = gate_inputs(gated)
    assert points["stem_gate"] == "b0_dw_relu"
    assert points["b1_expand_gate"] == "b1_dw_relu"
    assert points["b2_expand_gate"] == "b2_dw_relu"
    assert points["b1_project_gate"] == "b1_project_bn"


def test_expansion_channels_are_removed_by_strip():
    rng = np.random.default_rng(3)
    model = inverted_residual()
    spread_batch_norms(model, rng)
    gated = kap.add_gates(model, 0.5)
    masks = set_masks(gated, rng)
    compact = kap.strip(gated, on_collapse="raise")
    assert_same_outputs(gated, compact,
                        rng.normal(size=(4, 10, 10, 3)).astype("float32"))
    for block in ("b1", "b2"):
        kept = int(masks[f"{block}_expand"].sum())
        assert kept < 24
        assert compact.get_layer(f"{block}_expand").filters == kept
        assert compact.get_layer(f"{block}_dw").kernel.shape[-2] == kept
        for bn in (f"{block}_expand_bn", f"{block}_dw_bn"):
            assert compact.get_layer(bn).gamma.shape[0] == kept
    assert compact.get_layer("stem").filters == int(masks["stem"].sum())
    assert kap.count_flops(compact).total == pytest.approx(
        kap.budget.CostModel(gated, "flops").cost(
            [masks[g.name[:-len("_gate")]] for g in gates_of(gated)]))


def test_depth_multiplier_above_one_keeps_the_gate_before_it():
    rng = np.random.default_rng(4)
    model = inverted_residual(multiplier=2)
    spread_batch_norms(model, rng)
    # The multiplier-2 stage turns a zero channel into two channels its
    # bias and batch norm make non-zero: nothing the gate zeroes could go,
    # so the plan leaves the expansion ungated.
    assert "turns their zeros into non-zero" in kap.plan(model).row(
        "b1_expand").reason
    gated = kap.add_gates(model, 0.5)
    assert "b1_expand_gate" not in gate_inputs(gated)
    set_masks(gated, rng)
    compact = kap.strip(gated)
    assert_same_outputs(gated, compact,
                        rng.normal(size=(2, 10, 10, 3)).astype("float32"))


def test_zero_padding_alone_does_not_move_the_gate():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, name="conv")(x)
    h = L.ReLU(name="relu")(h)
    h = L.ZeroPadding2D(1, name="pad")(h)
    h = L.MaxPooling2D(name="pool")(h)
    y = L.Dense(2, name="out")(L.Flatten()(h))
    gated = kap.add_gates(keras.Model(x, y), 0.5)
    assert gate_inputs(gated) == {"conv_gate": "relu"}


def depthwise_without_batch_norm():
    """A gated depthwise stage added to a branch that keeps every channel:
    the zeros the gate makes must be folded into the depthwise conv."""
    x = keras.Input((8, 8, 4))
    a = L.Conv2D(6, 1, activation="relu", name="expand")(x)
    a = L.DepthwiseConv2D(3, padding="same", activation="relu",
                          name="dw")(a)
    b = L.Conv2D(6, 1, name="side")(x)
    h = L.Add(name="add")([a, b])
    y = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


def test_a_zeroed_channel_kept_by_another_branch_is_folded_into_the_depthwise_conv():
    rng = np.random.default_rng(5)
    model = depthwise_without_batch_norm()
    dw = model.get_layer("dw")
    dw.set_weights([w + rng.uniform(0.1, 0.5, w.shape)
                    for w in dw.get_weights()])  # biased: 0 -> non-zero
    # With the side branch ungated nothing expand zeroes could ever go, so
    # the plan gates it only when side is gated too.
    assert not kap.plan(model, exclude=["side"]).row("expand").gated
    gated = kap.add_gates(model, 0.5)
    assert gate_inputs(gated)["expand_gate"] == "dw"
    mask = np.array([1, 0, 1, 0, 0, 1], bool)
    gated.get_layer("expand_gate").set_mask(mask)
    gated.get_layer("side_gate").set_mask(np.ones(6, bool))
    compact = kap.strip(gated)
    # The side branch keeps all six channels of the sum.
    assert compact.get_layer("expand").filters == 6
    assert_same_outputs(gated, compact,
                        rng.normal(size=(2, 8, 8, 4)).astype("float32"))
    # Soft codes fold too (relu commutes with a positive scale).
    codes = np.array([1.0, 0.3, 0.7, 0.0, 1.0, 0.6], "float32")
    gate = gated.get_layer("expand_gate")
    gate.moving_code.assign(codes)
    gate.code.assign(codes)
    gate.phase.assign(0.0)  # soft again: set_mask had fixed the choice
    compact = kap.strip(gated, force=True)
    # The reference: soft codes, those at or below the threshold at 0.
    gate.moving_code.assign(np.where(codes > 0.5, codes, 0.0))
    kap.set_hard_masks(gated, False)
    assert_same_outputs(gated, compact,
                        rng.normal(size=(2, 8, 8, 4)).astype("float32"))


def mobile_inverted_bottleneck():
    """An EfficientNet block: expansion, depthwise stage, squeeze-and-
    excitation read from the depthwise output, projection."""
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.Activation("swish", name="stem_act")(h)
    e = L.Conv2D(32, 1, use_bias=False, name="expand")(h)
    e = L.BatchNormalization(name="expand_bn")(e)
    e = L.Activation("swish", name="expand_act")(e)
    e = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(e)
    e = L.BatchNormalization(name="dw_bn")(e)
    e = L.Activation("swish", name="dw_act")(e)
    s = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(e)
    s = L.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
    s = L.Conv2D(32, 1, activation="sigmoid", name="se_expand")(s)
    e = L.Multiply(name="excite")([e, s])
    e = L.Conv2D(8, 1, use_bias=False, name="project")(e)
    e = L.BatchNormalization(name="project_bn")(e)
    h = L.Add(name="add")([h, e])
    y = L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y, name="mbconv")


def test_squeeze_and_excitation_block_loses_expansion_channels_as_costed():
    rng = np.random.default_rng(6)
    model = mobile_inverted_bottleneck()
    spread_batch_norms(model, rng)
    gated = kap.add_gates(model, 0.5)
    assert gate_inputs(gated)["expand_gate"] == "dw_act"
    masks = set_masks(gated, rng)
    compact = kap.strip(gated, on_collapse="raise")
    assert_same_outputs(gated, compact,
                        rng.normal(size=(4, 8, 8, 3)).astype("float32"))
    kept = int(masks["expand"].sum())
    assert kept < 32
    assert compact.get_layer("expand").filters == kept
    assert compact.get_layer("se_expand").filters == kept
    # The excitation's channels go with the features they scale: the cost
    # model must not count them as kept.
    ordered = [masks[g.name[:-len("_gate")]] for g in gates_of(gated)]
    assert kap.count_flops(compact).total == pytest.approx(
        kap.budget.CostModel(gated, "flops").cost(ordered))
    assert kap.count_params(compact) == pytest.approx(
        kap.budget.CostModel(gated, "params").cost(ordered))
