"""Importance criteria and kap.prune: every criterion meets every budget,
and each criterion ranks channels as it says."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import importance as imp
from keras_autopruner.pruning import select_masks

L = keras.layers


def conv_net():
    """Conv/BN/ReLU twice, pooling, Flatten, Dense: with the last Dense
    wide and cheap, so one channel is a small step of the MAC budget."""
    x = keras.Input((12, 12, 3))
    h = L.Conv2D(16, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="c1_bn")(h)
    h = L.ReLU(name="c1_relu")(h)
    h = L.Conv2D(24, 3, padding="same", name="c2")(h)
    h = L.BatchNormalization(name="c2_bn")(h)
    h = L.ReLU(name="c2_relu")(h)
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.Flatten(name="flat")(h)
    h = L.Dense(48, name="fc")(h)
    h = L.BatchNormalization(name="fc_bn")(h)
    h = L.ReLU(name="fc_relu")(h)
    return keras.Model(x, L.Dense(5, activation="softmax", name="out")(h),
                       name="conv_net")


def dense_net():
    x = keras.Input((20,))
    h = L.Dense(64, name="h1")(x)
    h = L.BatchNormalization(name="h1_bn")(h)
    h = L.ReLU(name="h1_relu")(h)
    h = L.Dense(48, name="h2")(h)
    h = L.BatchNormalization(name="h2_bn")(h)
    h = L.ReLU(name="h2_relu")(h)
    return keras.Model(x, L.Dense(4, activation="softmax", name="out")(h),
                       name="dense_net")


def randomised(model, seed=0):
    """Weights and batch-norm statistics from NumPy: every backend then
    prunes the same network, and gamma differs between channels."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 2.0, n), rng.normal(0, .1, n),
                               rng.normal(0, .1, n), rng.uniform(.5, 2, n)])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape)
                               for w in layer.get_weights()])
    return model


def data_for(model, n=48, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], n)
    return x, y


_TRAINED = {}


def trained_gates(model, x, y):
    """A gated model whose gates have seen a few batches (ranking differs
    between channels), for the 'autopruner' criterion. One per network:
    prune copies a gated model, so tests can share it."""
    if model.name in _TRAINED:
        return _TRAINED[model.name]
    gated = _TRAINED[model.name] = kap.add_gates(model, 0.5)
    gated.compile("adam", "sparse_categorical_crossentropy")
    gated.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return gated


CRITERIA = ["autopruner", "l1", "l2", "bn", "taylor", "random"]
BUDGETS = [("layer", None, None), ("global", "flops", "uniform"),
           ("global", "params", "uniform"), ("global", "flops", "threshold"),
           ("global", "params", "threshold")]
GATED = {"conv_net": ("c1", "c2", "fc"), "dense_net": ("h1", "h2")}


@pytest.mark.parametrize("build", [conv_net, dense_net])
@pytest.mark.parametrize("budget, weighting, allocation", BUDGETS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_meets_every_budget(build, budget, weighting,
                                            allocation, criterion):
    model = randomised(build())
    x, y = data_for(model)
    source = trained_gates(model, x, y) if criterion == "autopruner" \
        else model
    importance = (imp.Taylor("sparse_categorical_crossentropy", batches=2,
                             batch_size=24)
                  if criterion == "taylor" else criterion)
    rate = 0.3
    objective = (kap.PruningObjective("layer") if budget == "layer" else
                 kap.PruningObjective("global", weighting=weighting))
    before = [g.scores() for g in kap.gate.gates_of(source)]
    compact = kap.prune(source, importance, rate, objective, data=(x, y),
                        allocation=allocation or "uniform")
    # A gated model passed in is copied, not changed.
    for g, b in zip(kap.gate.gates_of(source), before):
        np.testing.assert_array_equal(g.scores(), b)
    if budget == "layer":
        for name in GATED[model.name]:
            units = model.get_layer(name).output.shape[-1]
            assert compact.get_layer(name).output.shape[-1] == max(
                1, round(rate * units))
    else:
        count = kap.count_flops if weighting == "flops" else kap.count_params
        share = float(count(compact)) / float(count(model))
        assert rate * 0.98 <= share <= rate * (1 + 1e-9), share
    assert compact.count_params() < model.count_params()
    assert model.get_layer(GATED[model.name][0]).output.shape[-1] in (16, 64)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_filter_norms_drop_the_smallest_filters(criterion):
    model = randomised(dense_net())
    h1 = model.get_layer("h1")
    kernel, bias = h1.get_weights()
    tiny = [3, 10, 11, 40, 63]
    kernel[:, tiny] *= 1e-3
    h1.set_weights([kernel, bias])
    # Layer budget: h1 keeps 59 of 64, so exactly the tiny ones go.
    compact = kap.prune(model, criterion, 59 / 64, "layer", include=["h1"])
    kept = np.setdiff1d(np.arange(64), tiny)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(compact.get_layer("h1").kernel),
        kernel[:, kept])
    # The criterion's scores are the norms themselves.
    gated = kap.add_gates(model, 0.5, include=["h1"])
    gate = kap.gate.gates_of(gated)[0]
    order = 1 if criterion == "l1" else 2
    np.testing.assert_allclose(
        imp.get(criterion).scores(gated, [gate])[gate.name],
        np.linalg.norm(kernel, ord=order, axis=0), rtol=1e-6)


def test_conv_filter_norms_are_per_output_channel():
    model = randomised(conv_net())
    gated = kap.add_gates(model, 0.5)
    gate = gated.get_layer("c2_gate")
    kernel = keras.ops.convert_to_numpy(model.get_layer("c2").kernel)
    np.testing.assert_allclose(
        imp.L1Norm().scores(gated, [gate])[gate.name],
        np.abs(kernel).sum(axis=(0, 1, 2)), rtol=1e-6)


def test_filter_norms_read_a_wrapped_layer_through_its_wrapper():
    x = keras.Input((10, 4))
    h = keras.layers.TimeDistributed(keras.layers.Dense(6), name="td")(x)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    gated = kap.add_gates(model, 0.5)
    gate = gated.get_layer("td_gate")
    kernel = keras.ops.convert_to_numpy(model.get_layer("td").layer.kernel)
    np.testing.assert_allclose(
        imp.L1Norm().scores(gated, [gate])[gate.name],
        np.abs(kernel).sum(axis=0), rtol=1e-6)


def test_batch_norm_scale_is_abs_gamma_and_refuses_layers_without_one():
    model = randomised(conv_net())
    bn = model.get_layer("c1_bn")
    weights = bn.get_weights()
    weights[0][[2, 5]] *= -1  # |gamma|, not gamma
    bn.set_weights(weights)
    gated = kap.add_gates(model, 0.5)
    gate = gated.get_layer("c1_gate")
    np.testing.assert_allclose(
        imp.BatchNormScale().scores(gated, [gate])[gate.name],
        np.abs(weights[0]), rtol=1e-6)
    x = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="no_bn")(x)
    plain = keras.Model(x, L.Dense(2, name="out")(h))
    with pytest.raises(ValueError, match="'no_bn'.*BatchNormalization"):
        kap.prune(plain, "bn", 0.5)


def test_random_is_reproducible_and_differs_by_seed():
    gated = kap.add_gates(randomised(conv_net()), 0.5)
    gates = kap.gate.gates_of(gated)
    a = imp.RandomImportance(seed=3).scores(gated, gates)
    b = imp.RandomImportance(seed=3).scores(gated, list(reversed(gates)))
    c = imp.RandomImportance(seed=4).scores(gated, gates)
    for g in gates:
        np.testing.assert_array_equal(a[g.name], b[g.name])
        assert not np.allclose(a[g.name], c[g.name])
    masks = [select_masks(gated, imp.RandomImportance(seed=s), "global", 0.4)
             for s in (3, 3, 4)]
    assert all(np.array_equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert any(not np.array_equal(masks[0][n], masks[2][n]) for n in masks[0])


def test_taylor_is_activation_times_gradient_and_zero_for_a_dead_channel():
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the hand computation uses tf.GradientTape")
    x = keras.Input((10,))
    h = L.Dense(12, activation="relu", name="h")(x)
    model = keras.Model(x, L.Dense(3, activation="softmax", name="out")(h))
    randomised(model, seed=2)
    kernel, bias = model.get_layer("h").get_weights()
    kernel[:, 4], bias[4] = 0.0, 0.0  # channel 4's activation is 0
    model.get_layer("h").set_weights([kernel, bias])
    xs, ys = data_for(model, n=40, seed=3)

    gated = kap.add_gates(model, 0.5, include=["h"])
    gate = gated.get_layer("h_gate")
    taylor = imp.Taylor("sparse_categorical_crossentropy", batches=2,
                        batch_size=20)
    score = taylor.scores(gated, [gate], (xs, ys))[gate.name]
    assert score[4] == 0.0
    assert np.all(np.delete(score, 4) > 0)

    # By hand: |sum over the batch of a * dL/da| for the activation a of
    # the network without gates, averaged over the two batches.
    expected = np.zeros(12)
    for i in (0, 20):
        a = keras.Model(model.input, model.get_layer("h").output)(
            xs[i:i + 20])
        with tf.GradientTape() as tape:
            tape.watch(a)
            pred = model.get_layer("out")(a)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
                ys[i:i + 20], pred))
        g = tape.gradient(loss, a)
        expected += np.abs(np.sum(a.numpy() * g.numpy(), axis=0)) / 2
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-7)


def test_taylor_needs_data_and_a_loss():
    model = randomised(dense_net())
    with pytest.raises(ValueError, match="needs data"):
        kap.prune(model, "taylor", 0.5)
    with pytest.raises(ValueError, match="needs a loss"):
        kap.prune(model, "taylor", 0.5, data=data_for(model))
    # An iterable of (x, y) batches gives what the same batches as arrays do.
    x, y = data_for(model)
    gated = kap.add_gates(model, 0.5)
    gates = kap.gate.gates_of(gated)
    taylor = imp.Taylor("sparse_categorical_crossentropy", batches=2,
                        batch_size=16)
    from_arrays = taylor.scores(gated, gates, (x, y))
    from_batches = taylor.scores(gated, gates, iter(
        [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]))
    for g in gates:
        np.testing.assert_allclose(from_batches[g.name], from_arrays[g.name],
                                   rtol=1e-5)
    # The compiled model's loss is used when Taylor has none.
    model.compile("adam", "sparse_categorical_crossentropy")
    compact = kap.prune(model, "taylor", 0.5, data=data_for(model))
    assert kap.count_flops(compact) <= 0.5 * kap.count_flops(model)


class HighestIndex(kap.Importance):
    """Keeps the channels with the highest index."""

    def scores(self, gated, gates, data=None):
        return {g.name: np.arange(g.units, dtype=float) + 1 for g in gates}


def test_a_user_criterion_works_through_prune():
    model = randomised(dense_net())
    compact = kap.prune(model, HighestIndex(), 0.25, "layer")
    kernel = model.get_layer("h1").get_weights()[0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(compact.get_layer("h1").kernel),
        kernel[:, 48:])
    # And under a global budget, where a layer keeps its highest indices.
    compact = kap.prune(model, HighestIndex(), 0.3,
                        kap.PruningObjective("global", weighting="params"))
    share = kap.count_params(compact) / kap.count_params(model)
    assert 0.3 * 0.98 <= share <= 0.3
    width = compact.get_layer("h1").output.shape[-1]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(compact.get_layer("h1").kernel),
        kernel[:, 64 - width:])


def test_bad_criteria_are_refused_clearly():
    model = randomised(dense_net())
    with pytest.raises(ValueError, match="Unknown importance.*'l1'"):
        kap.prune(model, "l3", 0.5)

    class Short(kap.Importance):
        def scores(self, gated, gates, data=None):
            return {g.name: np.ones(3) for g in gates}

    with pytest.raises(ValueError, match="h1_gate.*64 finite"):
        kap.prune(model, Short(), 0.5)

    class Negative(kap.Importance):
        def scores(self, gated, gates, data=None):
            return {g.name: -np.ones(g.units) for g in gates}

    with pytest.raises(ValueError, match="negative.*override normalise"):
        kap.prune(model, Negative(), 0.5)
    with pytest.raises(NotImplementedError, match="must implement scores"):
        kap.prune(model, kap.Importance(), 0.5)


@pytest.mark.parametrize("criterion", [
    imp.AutoPrunerImportance(), imp.L1Norm(), imp.L2Norm(),
    imp.BatchNormScale(), imp.Taylor("mse", batches=3, batch_size=8),
    imp.Taylor(keras.losses.MeanSquaredError()), imp.RandomImportance(7)])
def test_criteria_round_trip_through_their_config(criterion):
    again = type(criterion).from_config(criterion.get_config())
    assert again.get_config() == criterion.get_config()
    ser = keras.saving.serialize_keras_object(criterion)
    assert imp.get(ser).get_config() == criterion.get_config()


def test_normalisation_compares_layers_by_their_own_best_channel():
    # Layer h2's scores are 1000 times h1's: without normalising a global
    # budget would keep h2 whole and cut h1 to its floor.
    class Scaled(kap.Importance):
        def scores(self, gated, gates, data=None):
            rng = np.random.default_rng(0)
            return {g.name: rng.uniform(0.5, 1.0, g.units)
                    * (1000.0 if g.name == "h2_gate" else 1.0)
                    for g in gates}

    gated = kap.add_gates(randomised(dense_net()), 0.5)
    masks = select_masks(gated, Scaled(), kap.PruningObjective(
        "global", weighting="filters"), 0.5, allocation="threshold")
    kept = {n: m.mean() for n, m in masks.items()}
    assert 0.3 < kept["h1_gate"] < 0.7 and 0.3 < kept["h2_gate"] < 0.7


def test_a_budget_whole_channels_cannot_meet_is_met_from_below_and_said():
    import importance_checks

    # One filter of c1 is 14% of this network's MACs.
    model = importance_checks.network()[0]
    with pytest.warns(UserWarning, match="keep 0.48.*below the budget 0.5"):
        compact = kap.prune(model, "l1", 0.5)
    assert kap.count_flops(compact) <= 0.5 * kap.count_flops(model)


def test_uniform_allocation_keeps_the_same_share_of_every_layer():
    gated = kap.add_gates(randomised(conv_net()), 0.5)
    masks = select_masks(gated, "l1", "global", 0.4)
    kept = np.array([m.mean() for m in masks.values()])
    # One share for all (up to rounding and the channels that fill the
    # budget), where a global threshold on L1 norms would not be.
    assert kept.max() - kept.min() < 0.15
    with pytest.raises(ValueError, match="allocation must be one of"):
        select_masks(gated, "l1", "global", 0.4, allocation="greedy")


def test_prune_arguments():
    model = randomised(dense_net())
    # Per-layer rates pass through to add_gates under the layer budget.
    compact = kap.prune(model, "l1", 0.5, "layer", rates={"h2": 0.25})
    assert compact.get_layer("h1").output.shape[-1] == 32
    assert compact.get_layer("h2").output.shape[-1] == 12
    with pytest.raises(ValueError, match="global budget has one rate"):
        kap.prune(model, "l1", 0.5, "global", rates={"h2": 0.25})
    gated = kap.add_gates(model, 0.5)
    with pytest.raises(ValueError, match="already gated.*min_units"):
        kap.prune(gated, "l1", 0.5, min_units=2)
    with pytest.raises(ValueError, match="allocation must be one of"):
        kap.prune(model, "l1", 0.5, "layer", allocation="greedy")
    with pytest.raises(ValueError, match="objective must be"):
        kap.prune(model, "l1", 0.5, objective=3)


def residual_net():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = keras.layers.Conv2D(8, 3, padding="same", name="branch_a")(stem)
    b = keras.layers.Conv2D(8, 1, name="branch_b")(inputs)
    x = keras.layers.Add()([a, b])
    x = keras.layers.Conv2D(6, 3, padding="same", name="head")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_coupled_gates_rank_by_the_group_and_keep_the_same_channels():
    from keras_autopruner.budget import CostModel
    from keras_autopruner.pruning import coupled_scores

    gated = kap.add_gates(randomised(residual_net()), 0.5)
    names = {g.name for g in gated.layers
             if isinstance(g, kap.AutoPrunerGate)}
    assert {"branch_a_gate", "branch_b_gate"} <= names
    # The two branches rank their (coupled) channels in opposite orders:
    # per gate they would keep disjoint halves and the union would be all.
    rising = np.arange(1, 9, dtype=float)

    class Opposite(kap.Importance):
        def scores(self, gated, gates, data=None):
            out = {}
            for g in gates:
                if g.name == "branch_a_gate":
                    out[g.name] = rising
                elif g.name == "branch_b_gate":
                    out[g.name] = rising[::-1] * 10.0
                else:
                    out[g.name] = np.linspace(1, 2, g.units)
            return out

    cost = CostModel(gated, "flops")
    per_gate = Opposite().normalise(Opposite().scores(gated, cost.gates))
    grouped = coupled_scores(cost, per_gate)
    # One score per coupled channel: the mean of the two gates', the group
    # divided by its largest; an uncoupled gate's scores are untouched.
    np.testing.assert_allclose(grouped["branch_a_gate"],
                               grouped["branch_b_gate"])
    mean = (rising / 8 + rising[::-1] / 8) / 2
    np.testing.assert_allclose(grouped["branch_a_gate"], mean / mean.max())
    np.testing.assert_allclose(grouped["head_gate"], per_gate["head_gate"])
    for objective in ("layer", kap.PruningObjective("global",
                                                    weighting="flops")):
        masks = select_masks(gated, Opposite(), objective, 0.5)
        np.testing.assert_array_equal(masks["branch_a_gate"],
                                      masks["branch_b_gate"])
    # Through prune, the stripped Add keeps what each branch keeps, not
    # the union of two different halves.
    compact = kap.prune(randomised(residual_net()), importance=Opposite(),
                        target_rate=0.5, objective="layer")
    assert compact.get_layer("branch_a").filters == 4
    assert compact.get_layer("branch_b").filters == 4
