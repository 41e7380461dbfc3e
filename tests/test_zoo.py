"""Keras Applications end to end: gate, random hard masks, strip, count.

For one model of every keras.applications family (residual Add, inverted
residuals with depthwise convolutions, dense Concatenate, squeeze-and-
excitation with keras.ops arithmetic, separable convolutions, LayerScale,
Inception's scaled sums) the gates stand where the plan allows, and the
stripped model must compute what the gated one computes
with hard masks, and `count_flops` / `count_params` of the stripped model
must be what `CostModel` predicted from the masks alone. Small inputs keep
it short; most of its time goes to Keras creating variables.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.budget import CostModel
from keras_autopruner.gate import AutoPrunerGate, gates_of


@pytest.mark.parametrize("name", sorted(models.APPLICATION_FAMILIES))
def test_application_strips_exactly_and_costs_as_predicted(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model, size = models.application(name)
    models.spread_statistics(model, rng)
    gated = kap.add_gates(model, 0.5)
    # Gates stand only where the plan allows, and it gates something.
    plan = kap.plan(model, 0.5)
    assert {g.name for g in gates_of(gated)} == {
        f"{layer}_gate" for layer in plan.gated}
    assert plan.gated
    masks = []
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
        masks.append(mask)

    compact = kap.strip(gated, on_collapse="raise")

    assert not [l for l in compact.layers if isinstance(l, AutoPrunerGate)]
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(gated(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    scale = np.max(np.abs(want))
    assert scale > 1e-3, "degenerate: the gated model outputs about zero"
    assert np.max(np.abs(got - want)) <= 1e-4 * scale
    flops = kap.count_flops(compact)
    assert flops == pytest.approx(CostModel(gated, "flops").cost(masks))
    assert kap.count_params(compact) == pytest.approx(
        CostModel(gated, "params").cost(masks))
    assert flops < kap.count_flops(model)
