"""Lambda/alpha schedules and the pruning objective, on known states."""

import keras
import numpy as np
import pytest

from keras_autopruner import (AlphaSchedule, AutoPrunerGate, LambdaController,
                              PruningObjective, StepLambda, kept_fraction)
from keras_autopruner.schedules import DONE, PUSHING, WARMUP, PruneState


def test_step_lambda_counts_steps():
    s = StepLambda(every=100)
    assert [s.value(t) for t in (0, 99, 100, 199, 200, 10 ** 6)] == [
        1.0, 1.0, 10.0, 10.0, 100.0, 1e7]
    assert s.initial() == 1.0
    assert s.update(PruneState(step=250)) == 100.0


def test_step_lambda_bad_args():
    with pytest.raises(ValueError, match="StepLambda"):
        StepLambda(factor=0.5)


def test_controller_raises_only_on_stall_and_holds_at_target():
    c = LambdaController(growth=10.0, min_progress=0.3)
    state = PruneState(phase=PUSHING, lam=1.0, tolerance=0.02)
    state.soft_miss = state.miss = 0.40
    assert c.update(state) == 1.0  # first control step: nothing to compare
    assert state.ref_miss == pytest.approx(0.40)
    state.soft_miss = state.miss = 0.39  # stalled
    assert c.update(state) == 10.0
    state.lam = 10.0
    state.soft_miss = state.miss = 0.20  # closing fast: hold
    assert c.update(state) == 10.0
    state.soft_miss = 0.01  # within tolerance: hold though it barely moved
    state.miss = 0.2  # a hard miss is alpha's job, not lambda's
    assert c.update(state) == 10.0
    state.soft_miss, state.miss = 0.2, 0.0  # and the other way round
    assert c.update(state) == 10.0


def test_controller_respects_max_lambda():
    c = LambdaController(max_lambda=50.0, growth=2.0)
    state = PruneState(phase=PUSHING, lam=40.0, soft_miss=0.3, miss=0.3,
                       ref_miss=0.3)
    assert c.update(state) == 50.0


def test_schedules_round_trip_through_keras_serialization():
    for s in (StepLambda(every=7), LambdaController(growth=3.0),
              AlphaSchedule(double_every=5, release=None)):
        clone = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(s))
        assert type(clone) is type(s)
        assert clone.get_config() == s.get_config()


def test_alpha_holds_until_close_then_doubles_per_steps_until_binary():
    a = AlphaSchedule(double_every=20, release=0.05, max_alpha=8.0)
    state = PruneState(phase=PUSHING, alpha=1.0, soft_miss=0.2, miss=0.2,
                       interval=10)
    assert a.update(state) == 1.0
    state.soft_miss, state.miss = 0.03, 0.3  # soft means on target: sharpen
    assert a.update(state) == pytest.approx(2 ** 0.5)  # 10 of 20 steps
    state.alpha, state.soft_miss, state.miss = 1.0, 0.3, 0.0  # hard on target
    assert a.update(state) == pytest.approx(2 ** 0.5)
    state.alpha, state.soft_miss, state.miss = 1.5, 0.3, 0.3
    assert a.update(state) == 1.5  # the miss grew again: held
    state.alpha = 8.0
    assert a.update(state) == 8.0  # capped
    state.alpha, state.binary = 2.0, 1.0
    assert a.update(state) == 2.0  # all binary: nothing to sharpen
    state.binary, state.phase = 0.5, WARMUP
    assert a.update(state) == 2.0
    state.phase = DONE
    assert a.update(state) == 2.0


def test_alpha_released_by_max_lambda_or_half_the_step_budget():
    a = AlphaSchedule(double_every=10, release=0.05)
    c = LambdaController(max_lambda=100.0)
    state = PruneState(phase=PUSHING, alpha=1.0, soft_miss=0.3, miss=0.3,
                       interval=10, lam=50.0)
    assert a.update(state, c) == 1.0
    state.lam = 100.0  # lambda can do no more: sharpening takes over
    assert a.update(state, c) == 2.0
    state.lam, state.budget_used = 1.0, 0.5
    assert a.update(state, c) == 2.0


def test_alpha_reaches_its_top_within_a_short_step_budget():
    a = AlphaSchedule(double_every=12, release=None, max_alpha=256.0,
                      finish_by=0.7)
    # No budget, or one long enough: one doubling per 12 steps.
    state = PruneState(phase=PUSHING, alpha=1.0, interval=12, step=12)
    assert a.update(state) == pytest.approx(2.0)
    state.budget_steps = 10_000
    assert a.update(state) == pytest.approx(2.0)
    # A 100-step budget: the 8 doublings are spread over the steps left
    # before 70 of them, so alpha is at its top by step 70, not step 96.
    state.budget_steps, state.interval = 100, 10
    alphas = []
    for step in range(10, 101, 10):
        state.step = step
        state.alpha = a.update(state)
        alphas.append(state.alpha)
    assert alphas[6] == pytest.approx(256.0)  # step 70
    assert alphas[5] < 256.0
    assert all(b >= c for b, c in zip(alphas[1:], alphas))
    # Released late (past finish_by): straight to the top.
    state = PruneState(phase=PUSHING, alpha=2.0, interval=10, step=80,
                       budget_steps=100)
    assert a.update(state) == pytest.approx(256.0)
    for bad in (0, 1.5, True, "0.7"):
        with pytest.raises(ValueError, match="finish_by"):
            AlphaSchedule(finish_by=bad)
    assert AlphaSchedule(**a.get_config()).finish_by == 0.7


def test_alpha_on_a_clock_ignores_the_miss():
    a = AlphaSchedule(double_every=10, release=None)
    state = PruneState(phase=PUSHING, alpha=1.0, soft_miss=0.5, miss=0.5,
                       interval=10)
    assert a.update(state) == 2.0
    assert AlphaSchedule(**a.get_config()).release is None
    with pytest.raises(ValueError, match="release >= 0"):
        AlphaSchedule(release=-0.1)


def gates_with_codes(codes, rates):
    gates = []
    for i, (code, rate) in enumerate(zip(codes, rates)):
        g = AutoPrunerGate(target_rate=rate, min_units=1, name=f"g{i}")
        g.build((None, len(code)))
        g.code.assign(np.asarray(code, "float32"))
        g.moving_code.assign(np.asarray(code, "float32"))
        gates.append(g)
    return gates


def test_layer_objective_value_and_terms():
    gates = gates_with_codes([[1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], [0.5, 0.25])
    obj = PruningObjective("layer")
    assert obj.value(gates) == pytest.approx(((0.5 - 0.5) ** 2 + 0.75 ** 2) / 2)
    coefs, centers = obj.terms(gates, weight=4.0)
    np.testing.assert_allclose(coefs, [2.0, 2.0])
    np.testing.assert_allclose(centers, [0.5, 0.25])


def test_floor_keeps_centres_above_min_units():
    gates = gates_with_codes([[0.2, 0.1, 0.1, 0.1]], [0.25])
    gates[0].min_units = 2
    _, centers = PruningObjective("layer", floor=True).terms(gates, 1.0)
    assert centers[0] == pytest.approx(0.5)
    _, centers = PruningObjective("layer", floor=False).terms(gates, 1.0)
    assert centers[0] == pytest.approx(0.25)


def test_soft_miss_is_the_worst_mean_code():
    gates = gates_with_codes([[0.6, 0.5, 0.4, 0.5], [0.9, 0.9]], [0.5, 0.5])
    assert PruningObjective("layer").soft_miss(gates) == pytest.approx(0.4)


def test_miss_allows_half_a_unit_per_layer():
    gates = gates_with_codes([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], [0.25])
    assert PruningObjective("layer").miss(gates) == pytest.approx(0.0)
    gates = gates_with_codes([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], [0.25])
    assert PruningObjective("layer").miss(gates) == pytest.approx(0.1)


def test_kept_fraction():
    gates = gates_with_codes([[0.9, 0.1, 0.8, 0.2], [0.7, 0.6]], [0.5, 0.5])
    kept = kept_fraction(gates)
    assert kept["overall"] == pytest.approx(4 / 6)
    assert kept["per_gate"] == {"g0": 0.5, "g1": 1.0}
    assert (kept["kept"], kept["total"]) == (4, 6)


def test_kept_fraction_without_gates():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="add_gates"):
        kept_fraction(model)


def test_global_objective_needs_the_model():
    gates = gates_with_codes([[0.6, 0.5]], [0.5])
    with pytest.raises(ValueError, match="bind"):
        PruningObjective("global").value(gates)


def test_objective_bad_args():
    with pytest.raises(ValueError, match="budget"):
        PruningObjective("everything")
    with pytest.raises(ValueError, match="weighting"):
        PruningObjective("global", weighting="bytes")


def test_objective_assign_writes_gate_variables():
    gates = gates_with_codes([[1.0, 0.0]], [0.5])
    PruningObjective("layer").assign(gates, 3.0)
    assert float(gates[0].coef.numpy()) == 3.0
    assert float(gates[0].center.numpy()) == 0.5
    assert isinstance(gates[0].coef, keras.Variable)
    assert keras.ops.is_tensor(gates[0].coef.value)
