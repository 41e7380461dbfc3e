"""AutoPrunerCallback on a small real task: target reached, logs, resume."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_autopruner as kap
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of
from keras_autopruner.metrics import count_flops

L = keras.layers
LOG_KEYS = {"kept", "pruning_loss", "lambda", "mu", "alpha", "binary",
            "prune_step"}


@pytest.fixture(scope="module")
def letters():
    """UCI Letter Recognition (embedded): 16 features, 26 classes."""
    (x, y), (xt, yt), _ = load_tabular()
    return x[:8000], y[:8000], xt[:2000], yt[:2000]


def fc_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,)),
        L.Dense(64, activation="relu", name="h1"),
        L.Dense(64, activation="relu", name="h2"),
        L.Dense(26, activation="softmax", name="out"),
    ])


def compiled(model):
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_callback_reaches_the_target_on_a_real_task(letters):
    x, y, xt, yt = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(objective="layer", stop_when_done=True,
                                per_gate_logs=True)
    history = gated.fit(x, y, batch_size=256, epochs=30, verbose=0,
                        validation_data=(xt, yt), callbacks=[cb])
    assert cb.done and cb.result["reason"] == "done", history.history["kept"]
    # The exact choice: round(0.5 * 64) units in each layer.
    assert cb.result["kept"] == {"h1_gate": 32, "h2_gate": 32}
    assert kap.kept_fraction(gated)["overall"] == 0.5
    assert len(history.history["loss"]) < 30  # stopped when done
    assert LOG_KEYS <= set(history.history)
    assert {"kept_h1_gate", "kept_h2_gate"} <= set(history.history)
    # A trained (or not) model is pushed from the first epoch by default.
    assert history.history["lambda"][0] > 0
    assert history.history["prune_step"][0] == 31  # 32 steps, the first sets mu
    # Validation ran with hard masks: it matches a hard-mask evaluation.
    _, acc = gated.evaluate(xt, yt, verbose=0)
    assert acc == pytest.approx(history.history["val_accuracy"][-1], abs=1e-6)
    assert acc > 0.5  # 26 classes: chance is 0.04
    # Done means the gated model already computes what strip builds.
    compact = kap.strip(gated)
    np.testing.assert_allclose(compact.predict(xt[:64], verbose=0),
                               gated.predict(xt[:64], verbose=0), atol=1e-5)


def test_trained_model_default_pushes_in_the_first_epoch(letters):
    x, y, _, _ = letters
    model = compiled(fc_net())
    model.fit(x, y, batch_size=256, epochs=2, verbose=0)
    gated = compiled(kap.add_gates(model, target_rate=0.5))
    cb = kap.AutoPrunerCallback(objective="layer")
    gated.fit(x[:2560], y[:2560], batch_size=256, epochs=1, verbose=0,
              callbacks=[cb], )
    # Ten steps: one to measure mu, nine pushed; the run was not done, so
    # fit's end made the exact choice.
    assert cb.result["steps"] == 9
    assert cb.result["kept"] == {"h1_gate": 32, "h2_gate": 32}
    mu = float(gates_of(gated)[0].mu.numpy())
    assert mu != 1.0


def prune_for_steps(x, y, epochs, **cb_kwargs):
    gated = compiled(kap.add_gates(fc_net(seed=3), target_rate=0.4))
    cb = kap.AutoPrunerCallback(objective="layer", control_every=4,
                                **cb_kwargs)
    history = gated.fit(x, y, batch_size=64, epochs=epochs, shuffle=False,
                        verbose=0, callbacks=[cb])
    return gated, cb, history


def test_same_steps_same_masks_whatever_the_epoch_length(letters):
    x, y, _, _ = letters
    x, y = x[:640], y[:640]  # 10 steps an epoch
    short, cb_short, _ = prune_for_steps(x, y, 12, finish_on_train_end=False)
    # The same batches in the same order, 30 steps an epoch.
    x3, y3 = np.concatenate([x] * 3), np.concatenate([y] * 3)
    long, cb_long, _ = prune_for_steps(x3, y3, 4, finish_on_train_end=False)
    assert cb_short._steps == cb_long._steps > 40
    assert cb_short.result == cb_long.result
    assert cb_short.state.lam == cb_long.state.lam
    assert cb_short.state.alpha == cb_long.state.alpha
    for a, b in zip(gates_of(short), gates_of(long)):
        np.testing.assert_array_equal(a.mask(), b.mask())
        np.testing.assert_allclose(a.scores(), b.scores(), atol=1e-5)


def test_global_budget_by_flops_is_met_by_the_stripped_model(letters):
    x, y, _, _ = letters
    model = fc_net()
    gated = compiled(kap.add_gates(model, target_rate=0.4))
    cb = kap.AutoPrunerCallback(objective=kap.PruningObjective(
        "global", weighting="flops"), stop_when_done=True)
    gated.fit(x, y, batch_size=256, epochs=30, verbose=0, callbacks=[cb])
    assert cb.done
    compact = kap.strip(gated)
    share = count_flops(compact).total / count_flops(model).total
    assert 0.4 * 0.98 <= share <= 0.4
    assert cb.result["cost_share"] == pytest.approx(share)


def test_run_stopped_early_still_gets_an_exact_choice(letters):
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.1, min_units=3))
    cb = kap.AutoPrunerCallback(objective="layer", prune_steps=5)
    with pytest.warns(UserWarning, match="soft codes"):
        gated.fit(x[:2048], y[:2048], batch_size=256, epochs=2, verbose=0,
                  callbacks=[cb])
    assert cb.done and cb.result["reason"] == "budget of steps spent"
    assert cb.result["steps"] == 5
    assert cb.result["kept"] == {"h1_gate": 6, "h2_gate": 6}  # round(6.4)
    compact = kap.strip(gated)  # no force needed, nothing collapsed
    assert [l.units for l in compact.layers[1:]] == [6, 6, 26]


def test_step_schedule_counts_steps(letters):
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(schedule=kap.StepLambda(every=20),
                                objective="layer", control_every=1, finish_on_train_end=False)
    history = gated.fit(x[:4096], y[:4096], batch_size=512, epochs=4,
                        verbose=0, callbacks=[cb])
    # 8 steps an epoch; pushing starts after step 1.
    assert history.history["lambda"] == [1.0, 1.0, 10.0, 10.0]


def test_save_load_resume_is_exact(letters, tmp_path):
    x, y, _, _ = letters
    x, y = x[:1280], y[:1280]  # 20 steps an epoch

    def fresh():
        return kap.AutoPrunerCallback(control_every=3,
                                      finish_on_train_end=False)

    def fit(model, epochs):
        cb = fresh()
        h = model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False,
                      verbose=0, callbacks=[cb])
        return cb, h.history

    straight = compiled(kap.add_gates(fc_net(seed=5), target_rate=0.3))
    _, whole = fit(straight, 4)

    first = compiled(kap.add_gates(fc_net(seed=5), target_rate=0.3))
    _, before = fit(first, 2)
    path = tmp_path / "gated.keras"
    first.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(gates_of(first), gates_of(loaded)):
        for var in ("alpha", "lam", "mu", "phase", "step", "ref_miss",
                    "moving_code", "moving_logit", "code", "coef", "center"):
            np.testing.assert_array_equal(getattr(a, var).numpy(),
                                          getattr(b, var).numpy())
    # A fresh callback, no initial_epoch: it continues from the gates.
    _, after = fit(loaded, 2)
    for key in ("lambda", "alpha", "kept", "prune_step"):
        np.testing.assert_allclose(before[key] + after[key], whole[key],
                                   rtol=1e-5, err_msg=key)
    for a, b in zip(gates_of(straight), gates_of(loaded)):
        np.testing.assert_array_equal(a.mask(), b.mask())


def test_nested_gated_model(letters):
    x, y, _, _ = letters
    gated = kap.add_gates(fc_net(), target_rate=0.5)
    inputs = keras.Input((16,))
    outer = compiled(keras.Model(inputs, gated(inputs)))
    # The global budget needs the flat model; the layer budget does not.
    cb = kap.AutoPrunerCallback(schedule="step", objective="layer")
    history = outer.fit(x, y, batch_size=512, epochs=2, verbose=0, callbacks=[cb])
    assert len(cb.gates) == 2
    assert LOG_KEYS <= set(history.history)


def test_inside_mirrored_strategy(letters):
    x, y, _, _ = letters
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest declares two logical CPUs"
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    with strategy.scope():
        gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(schedule="step")
    history = gated.fit(x, y, batch_size=512, epochs=2, verbose=0, callbacks=[cb])
    assert LOG_KEYS <= set(history.history)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["pruning_loss"][-1] < history.history["pruning_loss"][0] + 1e-3
    # The moving codes moved away from their initial value in both replicas.
    start = 1 / (1 + np.exp(-2.0))
    assert any(np.abs(g.scores() - start).max() > 1e-3 for g in cb.gates)


def test_no_gates_is_an_error(letters):
    x, y, _, _ = letters
    model = compiled(fc_net())
    with pytest.raises(ValueError, match="add_gates"):
        model.fit(x[:64], y[:64], epochs=1, verbose=0,
                  callbacks=[kap.AutoPrunerCallback()])


@pytest.mark.parametrize("objective", ["global", "layer"])
def test_a_short_step_budget_still_ends_with_binary_codes(letters, objective):
    # 90 pushing steps: at the unbudgeted pace (a control update every 10
    # steps, alpha doubling every 12) the run ended with 98% / 95% binary
    # codes and a forced choice; paced to the budget it converged after
    # 81 / 84 steps.
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(objective=objective, prune_steps=90)
    assert cb.interval == 3  # 90 // MIN_CONTROLS
    gated.fit(x, y, batch_size=256, epochs=3, verbose=0, callbacks=[cb])
    assert cb.result["reason"] == "done", cb.result
    assert cb.result["steps"] < 90 and cb.result["binary"] >= 0.99
    if objective == "layer":
        assert cb.result["kept"] == {"h1_gate": 32, "h2_gate": 32}
    else:
        assert 0.5 * 0.98 <= cb.result["cost_share"] <= 0.5


def test_gates_cut_dead_neurons_first(letters):
    # A trained network with 16 of each hidden layer's 64 neurons zeroed
    # (kernel column and bias): they output nothing, so only the pruning
    # term moves their gates and the classification term holds up the
    # others. At a per-layer budget of 32 the dead ones are all cut and
    # ranked last. Gates blind to the loss (the gated output not
    # multiplied by the code) kept 8 of the first layer's 16.
    x, y, _, _ = letters
    model = compiled(fc_net())
    model.fit(x, y, batch_size=256, epochs=3, verbose=0)
    dead = np.random.RandomState(0).choice(64, 16, replace=False)
    for name in ("h1", "h2"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, dead] = 0
        bias[dead] = 0
        model.get_layer(name).set_weights([kernel, bias])
    gated = compiled(kap.add_gates(model, target_rate=0.5))
    cb = kap.AutoPrunerCallback(objective="layer", prune_steps=300)
    gated.fit(x, y, batch_size=256, epochs=12, verbose=0, callbacks=[cb])
    assert cb.result["reason"] == "done", cb.result
    for g in cb.gates:
        assert g.mask().sum() == 32
        assert not g.mask()[dead].any(), g.name
        last = np.argsort(g.ranking())[:16]
        assert set(last) == set(dead), g.name


def test_control_interval_follows_the_step_budget():
    assert kap.AutoPrunerCallback().interval == 10
    assert kap.AutoPrunerCallback(prune_steps=1000).interval == 10
    assert kap.AutoPrunerCallback(prune_steps=90).interval == 3
    assert kap.AutoPrunerCallback(prune_steps=20).interval == 1
    cb = kap.AutoPrunerCallback(control_every=4, prune_steps=60)
    assert cb.interval == 2
    clone = kap.AutoPrunerCallback.from_config(cb.get_config())
    assert clone.control_every == 4 and clone.interval == 2


def test_callback_config_round_trip():
    cb = kap.AutoPrunerCallback(schedule=kap.StepLambda(every=5),
                                objective="global", tolerance=0.05,
                                control_every=7, warmup_steps=3,
                                prune_steps=100, stop_when_done=True)
    clone = kap.AutoPrunerCallback.from_config(cb.get_config())
    assert clone.get_config() == cb.get_config()
    assert isinstance(clone.schedule, kap.StepLambda)


def test_callback_bad_args():
    with pytest.raises(ValueError, match="schedule"):
        kap.AutoPrunerCallback(schedule="fast")
    with pytest.raises(TypeError, match="objective"):
        kap.AutoPrunerCallback(objective=3)
    with pytest.raises(ValueError, match="tolerance"):
        kap.AutoPrunerCallback(tolerance=0)
    with pytest.raises(ValueError, match="control_every"):
        kap.AutoPrunerCallback(control_every=0)
    with pytest.raises(ValueError, match="prune_steps"):
        kap.AutoPrunerCallback(prune_steps=2.5)
    with pytest.raises(TypeError, match="AlphaSchedule"):
        kap.AutoPrunerCallback(alpha=kap.StepLambda())
