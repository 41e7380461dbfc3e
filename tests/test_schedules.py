"""Lambda/alpha schedules and the pruning objective, on known states."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_autopruner import (AlphaSchedule, AutoPrunerGate, LambdaController,
                              PruningObjective, StepLambda, kept_fraction)
from keras_autopruner.schedules import DONE, PUSHING, WARMUP, PruneState


def test_step_lambda_published_schedule():
    s = StepLambda()
    assert [s.value(e) for e in (0, 19, 20, 39, 40, 140, 500)] == [
        1.0, 1.0, 10.0, 10.0, 100.0, 1e7, 1e7]
    state = PruneState()
    assert s.begin(state) == 1.0 and state.phase == PUSHING
    assert s.update(19, state) == 10.0  # lambda for epoch 20


def test_step_lambda_bad_args():
    with pytest.raises(ValueError, match="StepLambda"):
        StepLambda(factor=0.5)


def test_controller_waits_for_the_loss_to_settle():
    c = LambdaController(warmup=1, max_warmup=10, settle=0.05, flat=0.005,
                         start=2.0)
    state = PruneState()
    assert c.begin(state) == 0.0
    for loss in (2.0, 1.5, 1.2):  # still dropping by > 5% per epoch
        state.task_losses.append(loss)
        assert c.update(0, state) == 0.0 and state.phase == WARMUP
    state.task_losses.append(1.19)  # settled
    assert c.update(0, state) == 2.0 and state.phase == PUSHING


def test_controller_settle_is_the_knee_or_a_flat_loss():
    c = LambdaController(settle=0.25, flat=0.05)
    assert not c.settled([2.0])
    assert c.settled([0.5, 0.48])  # pre-trained: flat from the start
    assert not c.settled([0.5, 0.45])
    assert not c.settled([2.0, 1.0, 0.7])  # drop 0.3 > 0.25 * 1.0
    assert c.settled([2.0, 1.0, 0.8])  # drop 0.2 <= 0.25


def test_controller_starts_after_max_warmup_anyway():
    c = LambdaController(warmup=0, max_warmup=3)
    state = PruneState()
    for i in range(3):
        state.task_losses.append(10.0 - 3 * i)
        lam = c.update(i, state)
    assert state.phase == PUSHING and lam == c.start


def test_controller_raises_only_on_stall_and_holds_at_target():
    c = LambdaController(growth=10.0, min_progress=0.3)
    state = PruneState(phase=PUSHING, lam=1.0, tolerance=0.02)
    state.choice_misses = [0.40, 0.39]  # stalled
    state.soft_miss = state.miss = 0.39
    assert c.update(0, state) == 10.0
    state.lam = 10.0
    state.choice_misses = [0.39, 0.20]  # closing fast: hold
    state.soft_miss = state.miss = 0.20
    assert c.update(1, state) == 10.0
    state.choice_misses = [0.20, 0.19]
    state.soft_miss = 0.01  # within tolerance: hold even though it barely moved
    state.miss = 0.2  # a hard miss is alpha's job, not lambda's
    assert c.update(2, state) == 10.0
    state.soft_miss, state.miss = 0.2, 0.0  # and the other way round
    assert c.update(3, state) == 10.0


def test_controller_stops_raising_when_a_raise_buys_nothing():
    c = LambdaController(growth=10.0, min_progress=0.3)
    alpha = AlphaSchedule(release=0.05)
    state = PruneState(phase=PUSHING, lam=10.0, tolerance=0.02)
    state.choice_misses = [0.075, 0.067]  # stalled: raise
    state.soft_miss = state.miss = 0.067
    assert c.update(0, state) == 100.0 and state.raised
    state.lam = 100.0
    assert alpha.update(0, state) == 1.0  # still choosing: alpha held
    state.choice_misses.append(0.068)  # the raise did nothing
    state.soft_miss = state.miss = 0.068
    assert c.update(1, state) == 100.0  # held, not 1000
    assert state.stuck and not state.raised
    assert alpha.update(1, state) == 2.0  # sharpening takes over
    state.choice_misses.append(0.068)
    assert c.update(2, state) == 100.0  # and lambda stays held
    # Far from the target a slow epoch after a raise is not "stuck": with
    # few optimizer steps per epoch the gates just move slowly.
    far = PruneState(phase=PUSHING, lam=10.0, raised=True, soft_miss=0.3,
                     miss=0.3, choice_misses=[0.31, 0.30])
    assert c.update(0, far) == 100.0 and not far.stuck


def test_controller_respects_max_lambda():
    c = LambdaController(max_lambda=50.0)
    state = PruneState(phase=PUSHING, lam=40.0, soft_miss=0.3, miss=0.3,
                       choice_misses=[0.3, 0.3])
    assert c.update(0, state) == 50.0
    state.lam, state.raised = 50.0, False
    state.soft_miss = state.miss = 0.08
    state.choice_misses.append(0.08)
    state.choice_misses.append(0.08)
    assert c.update(1, state) == 50.0
    assert state.stuck  # no more lambda to come: alpha takes over


def test_alpha_holds_until_close_then_grows_until_binary():
    a = AlphaSchedule(factor=2.0, release=0.05, max_alpha=8.0)
    state = PruneState(phase=PUSHING, alpha=1.0, soft_miss=0.2, miss=0.2)
    assert a.update(0, state) == 1.0
    state.soft_miss, state.miss = 0.03, 0.3  # soft means on target: sharpen
    assert a.update(0, state) == 2.0
    state.alpha, state.soft_miss, state.miss = 1.0, 0.3, 0.0  # hard on target
    assert a.update(0, state) == 2.0
    state.alpha = 8.0
    assert a.update(0, state) == 8.0  # capped
    state.alpha, state.binary = 2.0, 1.0
    assert a.update(0, state) == 2.0  # all binary: nothing to sharpen
    state.binary, state.phase = 0.5, WARMUP
    assert a.update(0, state) == 2.0
    state.phase = DONE
    assert a.update(0, state) == 2.0


def test_alpha_on_a_clock_ignores_the_miss():
    a = AlphaSchedule(factor=2.0, release=None)
    state = PruneState(phase=PUSHING, alpha=1.0, soft_miss=0.5, miss=0.5)
    assert a.update(0, state) == 2.0
    assert AlphaSchedule(**a.get_config()).release is None
    with pytest.raises(ValueError, match="release >= 0"):
        AlphaSchedule(release=-0.1)


def gates_with_codes(codes, rates, unit_costs=None):
    gates = []
    for i, (code, rate) in enumerate(zip(codes, rates)):
        g = AutoPrunerGate(target_rate=rate, unit_cost=(unit_costs or [1] * 9)[i],
                           min_units=1, name=f"g{i}")
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


def test_global_objective_gradient_matches_the_global_term():
    codes = [np.array([0.9, 0.8, 0.1, 0.7]), np.array([0.6, 0.9])]
    gates = gates_with_codes(codes, [0.5, 0.5], unit_costs=[1.0, 3.0])
    obj = PruningObjective("global", weighting="flops", floor=False)
    shares = obj.shares(gates)
    np.testing.assert_allclose(shares, [4 / 10, 6 / 10])
    coefs, centers = obj.terms(gates, weight=2.0)
    means = np.array([c.mean() for c in codes])
    # gradient of per-gate terms == gradient of 2 * (K - r)**2 at the codes
    k = float(np.dot(shares, means))
    expected = 2.0 * 2 * (k - 0.5) * shares
    got = 2 * coefs * (means - centers)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert obj.value(gates) == pytest.approx((k - 0.5) ** 2)


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
    assert PruningObjective("global").soft_miss(gates) == pytest.approx(
        abs((4 * 0.5 + 2 * 0.9) / 6 - 0.5))


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
    assert tf.is_tensor(gates[0].coef.value)
