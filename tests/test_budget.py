"""CostModel predicts the stripped model's cost; exact_choice meets budgets."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.budget import CostModel, exact_choice
from keras_autopruner.metrics import count_flops, count_params

L = keras.layers


def branchy(dw_bias=False):
    """Conv/BN/ReLU, Add of two gated branches, Concatenate, separable and
    depthwise convolutions, pooling, Flatten -> Dense."""
    x = keras.Input((12, 12, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(x)
    a = L.BatchNormalization(name="a_bn")(a)
    a = L.ReLU(name="a_relu")(a)
    b1 = L.Conv2D(6, 1, activation="relu", name="b1")(a)
    b2 = L.Conv2D(6, 3, padding="same", activation="relu", name="b2")(a)
    s = L.Add(name="add")([b1, b2])
    c = L.SeparableConv2D(10, 3, padding="same", activation="relu", name="sep")(s)
    d = L.DepthwiseConv2D(3, padding="same", use_bias=dw_bias, name="dw")(s)
    cat = L.Concatenate(name="cat")([c, d])
    p = L.MaxPooling2D(2, name="pool")(cat)
    f = L.Flatten(name="flat")(p)
    h = L.Dense(12, activation="relu", name="h")(f)
    y = L.Dense(4, activation="softmax", name="out")(h)
    return keras.Model(x, y)


def set_masks(gates, masks):
    for g, m in zip(gates, masks):
        g.moving_code.assign(np.asarray(m, "float32"))


@pytest.mark.parametrize("build", [
    models.vgg_small, branchy, lambda: branchy(dw_bias=True)])
def test_cost_model_predicts_the_stripped_model_exactly(build):
    model = build()
    gated = kap.add_gates(model, 0.5)
    rng = np.random.default_rng(0)
    flops, params = CostModel(gated, "flops"), CostModel(gated, "params")
    filters = CostModel(gated, "filters")
    assert flops.full == count_flops(model).total
    assert params.full == count_params(model)
    for _ in range(4):
        masks = [rng.random(g.units) < rng.uniform(0.2, 0.9)
                 for g in flops.gates]
        for m in masks:
            m[rng.integers(len(m))] = True  # no collapse: strip would revive
        set_masks(flops.gates, masks)
        compact = kap.strip(gated)
        assert flops.cost(masks) == pytest.approx(count_flops(compact).total)
        assert params.cost(masks) == pytest.approx(count_params(compact))
        # Filters of the gated layers that the stripped model keeps
        # (coupled branches keep the union of their gates' masks).
        widths = [compact.get_layer(g.name[:-len("_gate")]).compute_output_shape(
            (1, 12, 12, 64))[-1] for g in filters.gates]
        assert filters.cost(masks) == sum(widths)


def test_cost_model_keeps_the_union_of_coupled_branches():
    gated = kap.add_gates(branchy(), 0.5)
    cost = CostModel(gated, "flops")
    names = [g.name for g in cost.gates]
    ones = [np.ones(g.units) for g in cost.gates]
    b1, b2 = names.index("b1_gate"), names.index("b2_gate")
    only_b1 = list(ones)
    only_b1[b1] = np.zeros(6)
    # b2 still keeps every channel of the sum: nothing is saved.
    assert cost.cost(only_b1) == pytest.approx(cost.full)
    both = list(only_b1)
    both[b2] = np.zeros(6)
    assert cost.cost(both) < cost.full
    grad = cost.gradient(ones)
    assert grad[b1] == 0 and grad[b2] == 0 and grad.sum() > 0
    # A biased depthwise convolution reads the sum and turns its zero
    # channels into non-zero ones: strip could remove none of them, so the
    # plan gates neither branch.
    plan = kap.plan(branchy(dw_bias=True), 0.5)
    for name in ("b1", "b2"):
        assert not plan.row(name).gated
        assert "'dw' (DepthwiseConv2D) turns their zeros into non-zero" \
            in plan.row(name).reason


def test_layer_budget_keeps_round_r_times_units_by_score():
    gated = kap.add_gates(models.vgg_small(), 0.3, min_units=2)
    gates = kap.gate.gates_of(gated)
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=g.units) for g in gates]
    masks = exact_choice(gates, scores, None)
    for g, s, m in zip(gates, scores, masks):
        k = max(2, round(0.3 * g.units))
        assert m.sum() == k
        assert s[m].min() > s[~m].max()  # the best-scoring ones


@pytest.mark.parametrize("weighting", ["flops", "params"])
@pytest.mark.parametrize("rate", [0.5, 0.25, 0.12])
def test_global_budget_is_met_within_two_percent(weighting, rate):
    model = models.vgg_small()
    gated = kap.add_gates(model, rate, min_units=1)
    cost = CostModel(gated, weighting)
    rng = np.random.default_rng(int(rate * 100))
    for _ in range(3):
        scores = [rng.normal(size=g.units) for g in cost.gates]
        masks = exact_choice(cost.gates, scores, rate, budget="global",
                             cost=cost, tolerance=0.02)
        assert all(m.sum() >= 1 for m in masks)
        set_masks(cost.gates, masks)
        compact = kap.strip(gated)
        full = (count_flops(model).total if weighting == "flops"
                else count_params(model))
        got = (count_flops(compact).total if weighting == "flops"
               else count_params(compact)) / full
        assert rate * 0.98 <= got <= rate * (1 + 1e-9), got


def test_global_budget_below_min_units_is_refused():
    gated = kap.add_gates(models.vgg_small(), 0.01, min_units=4)
    cost = CostModel(gated, "flops")
    scores = [np.zeros(g.units) for g in cost.gates]
    with pytest.raises(ValueError, match="min_units"):
        exact_choice(cost.gates, scores, 0.01, budget="global", cost=cost)


def test_global_objective_gradient_matches_the_global_term():
    gated = kap.add_gates(models.vgg_small(), 0.4)
    obj = kap.PruningObjective("global", weighting="flops", floor=False)
    obj.bind(gated)
    gates = obj.cost.gates
    rng = np.random.default_rng(2)
    codes = [rng.uniform(0.2, 0.9, g.units) for g in gates]
    coefs, centers = obj.terms(gates, weight=3.0, codes=codes)
    means = np.array([c.mean() for c in codes])
    # What each gate's term pushes with, against the derivative of
    # 3 * (K - r)**2 along each gate's mean code (normalised as the
    # objective normalises its weights).
    k = obj.share(gates, codes)
    grad = obj.cost.gradient(codes)
    expected = 3.0 * 2 * (k - 0.4) * grad / grad.sum()
    np.testing.assert_allclose(2 * coefs * (means - centers), expected,
                               rtol=1e-6)
    assert obj.value(gates, codes) == pytest.approx((k - 0.4) ** 2)
    # The early, expensive convolutions weigh more than the dense layer.
    names = [g.name for g in gates]
    assert grad[names.index("block1_conv2_gate")] > grad[names.index("fc1_gate")]


def test_global_choice_keeps_the_allotted_proportions():
    gated = kap.add_gates(models.vgg_small(), 0.25)
    cost = CostModel(gated, "flops")
    rng = np.random.default_rng(4)
    scores = [rng.normal(size=g.units) for g in cost.gates]
    alloc = np.array([0.9, 0.2, 0.5, 0.5, 0.8])
    masks = exact_choice(cost.gates, scores, 0.25, budget="global",
                         cost=cost, allocation=alloc)
    kept = np.array([m.mean() for m in masks])
    # One scale for all gates (up to rounding and the final fill).
    ratio = kept / alloc
    assert ratio.max() - ratio.min() < 0.25
    assert kept[1] < kept[0] and kept[1] > 0
    assert 0.25 * 0.98 <= cost.share(masks) <= 0.25


def test_allocate_meets_the_budget_with_the_gates_proportions():
    gated = kap.add_gates(models.vgg_small(), 0.3)
    obj = kap.PruningObjective("global").bind(gated)
    gates = obj.cost.gates
    assert obj.allocated(gates) is None
    codes = [np.full(g.units, m) for g, m in zip(gates, [0.9, 0.3, 0.6, 0.6,
                                                          0.8])]
    obj.allocate(gates, codes)
    rates = obj.allocated(gates)
    assert rates is not None
    np.testing.assert_allclose(rates / rates[0],
                               np.array([0.9, 0.3, 0.6, 0.6, 0.8]) / 0.9,
                               rtol=1e-6)
    share = obj.cost.share([np.full(g.units, r) for g, r in zip(gates, rates)])
    assert share == pytest.approx(0.3, rel=1e-3)
    # From now on each gate is pulled to its own rate, as in the layer budget.
    _, centers = obj.terms(gates, 1.0, codes)
    np.testing.assert_allclose(centers, rates, rtol=1e-6)
