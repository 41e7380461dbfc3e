"""Graphs users write: gate, prune a few steps, strip; exact and counted.

For each model of `user_graphs`: `add_gates` follows its plan, a short
`fit` with `AutoPrunerCallback` under the global MAC budget ends with the
exact choice, `strip` never refuses, the stripped model computes what the
hard-masked gated model computes, and `count_flops`/`count_params` of the
stripped model are what `CostModel` predicted for the chosen masks.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.budget import CostModel
from keras_autopruner.gate import gates_of

import user_graphs

CASES = {
    "dl1r": (user_graphs.dl1r, {}),
    "deep_sets": (user_graphs.deep_sets, {}),
    "deep_sets_td": (lambda rng: user_graphs.deep_sets(
        rng, time_distributed=True), {}),
    "jets_tracks": (user_graphs.jets_and_tracks,
                    {"exclude": ["track_dense"]}),
    "shared": (user_graphs.shared_layer, {}),
    "lambda": (user_graphs.with_lambda, {}),
    "transformer": (user_graphs.transformer_block, {}),
    "convnext_block": (user_graphs.convnext_block, {}),
    "mobilenet_v3_small": (user_graphs.mobilenet_v3_small, {}),
}

# The layers each plan must gate, and some it must leave alone.
EXPECTED = {
    "dl1r": ({f"dense_{i}" for i in range(8)}, {"out"}),
    "deep_sets": ({"phi_0", "phi_1", "rho"}, {"out"}),
    "deep_sets_td": ({"td_0", "td_1", "rho"}, {"out"}),
    "jets_tracks": ({"jet_dense", "head"}, {"track_dense", "out"}),
    "shared": ({"shared", "head"}, {"out"}),
    "lambda": ({"after"}, {"before"}),
    "transformer": ({"mlp_in"}, {"mlp_out"}),
    "convnext_block": ({"pw1"}, {"stem", "pw2"}),
    "mobilenet_v3_small": ({"expanded_conv_1_expand", "conv_1"},
                           {"expanded_conv_squeeze_excite_conv_1"}),
}


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_graph_prunes_and_strips_exactly(case):
    build, kwargs = CASES[case]
    rng = np.random.default_rng(0)
    model, x, y = build(rng)
    plan = kap.plan(model, 0.5, **kwargs)
    gated_names, ungated_names = EXPECTED[case]
    assert gated_names <= set(plan.gated), plan.table()
    assert not ungated_names & set(plan.gated), plan.table()
    for name in ungated_names:
        assert plan.row(name).reason

    gated = kap.add_gates(model, 0.5, **kwargs)
    assert {g.name for g in gates_of(gated)} == {
        f"{name}_gate" for name in plan.gated}
    gated.compile("adam", "sparse_categorical_crossentropy")
    callback = kap.AutoPrunerCallback(
        objective=kap.PruningObjective("global", weighting="flops"),
        control_every=2, prune_steps=6)
    with pytest.warns(UserWarning, match="soft codes"):
        gated.fit(x, y, batch_size=16, epochs=2, verbose=0,
                  callbacks=[callback])
    assert callback.done

    compact = kap.strip(gated)  # never refuses what add_gates accepted
    assert not gates_of(compact)
    kap.set_hard_masks(gated, True)
    np.testing.assert_allclose(outputs(compact, x), outputs(gated, x),
                               rtol=1e-4, atol=1e-5)
    for weighting, count in (("flops", kap.count_flops),
                             ("params", kap.count_params)):
        cost = CostModel(gated, weighting)
        predicted = cost.cost({g.name: g.mask() for g in cost.gates})
        assert int(count(compact)) == pytest.approx(predicted)
    # The budget holds; how close below it the choice gets depends on how
    # coarse the gated channels are (one channel of the Lambda model's
    # only gate is 5% of its MACs).
    share = int(kap.count_flops(compact)) / int(kap.count_flops(model))
    assert 0.4 <= share <= 0.5 + 1e-9


def test_min_units_is_checked_before_training():
    model, _, _ = user_graphs.dl1r(np.random.default_rng(2))
    with pytest.raises(ValueError, match="at least 1.*constant"):
        kap.add_gates(model, 0.3, min_units=0)
    with pytest.raises(ValueError, match="more than the 6 channels of "
                                         "layer 'dense_7'.*exclude"):
        kap.add_gates(model, 0.3, min_units=8)
    gated = kap.add_gates(model, 0.3, min_units=8, exclude=["dense_7"])
    assert "dense_7_gate" not in [g.name for g in gates_of(gated)]


def test_lambda_is_rebuilt_without_deserialising_it():
    """add_gates and strip reuse a Lambda (it holds no weights) instead of
    rebuilding it from its config, which Keras's safe mode refuses."""
    model, x, _ = user_graphs.with_lambda(np.random.default_rng(3))
    gated = kap.add_gates(model, 0.5)
    gated.get_layer("after_gate").set_mask(np.arange(12) < 5)
    compact = kap.strip(gated)
    assert compact.get_layer("after").units == 5
    kap.set_hard_masks(gated, True)
    np.testing.assert_allclose(outputs(compact, x), outputs(gated, x),
                               rtol=1e-5, atol=1e-6)


def test_shared_layer_has_one_gate_for_both_calls():
    model, x, _ = user_graphs.shared_layer(np.random.default_rng(4))
    gated = kap.add_gates(model, 0.5)
    gate = gated.get_layer("shared_gate")
    assert len(kap.tracing.trace(gated).nodes_of(gate)) == 2
    gate.set_mask(np.arange(16) % 3 == 0)
    gated.get_layer("head_gate").set_mask(np.arange(12) < 7)
    compact = kap.strip(gated)
    assert compact.get_layer("shared").units == 6
    kap.set_hard_masks(gated, True)
    np.testing.assert_allclose(outputs(compact, x), outputs(gated, x),
                               rtol=1e-5, atol=1e-6)


def test_a_shared_layer_whose_calls_cannot_take_one_cut_is_left_out():
    """Each call of the shared Dense is followed by its own batch norm,
    which turns a zero into its shift: no cut could be exact, and the plan
    says so instead of gating it."""
    a, b = keras.Input((6,)), keras.Input((6,))
    shared = keras.layers.Dense(8, name="shared")
    ha = keras.layers.BatchNormalization(name="bn_a")(shared(a))
    hb = keras.layers.BatchNormalization(name="bn_b")(shared(b))
    h = keras.layers.Dense(4, activation="relu", name="head")(
        keras.layers.Concatenate()([ha, hb]))
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(h))
    row = kap.plan(model).row("shared")
    assert not row.gated and "turns their zeros into non-zero" in row.reason
    # The report of the stripped model says so too.
    gated = kap.add_gates(model, 0.5)
    gated.get_layer("head_gate").set_mask(np.array([1, 0, 1, 1], bool))
    notes = " ".join(kap.strip(gated).pruning_report.notes)
    assert "Not gated" in notes and "shared (" in notes
