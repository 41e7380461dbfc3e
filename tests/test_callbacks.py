"""AutoPrunerCallback on a small real task: target reached, logs, resume."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_autopruner as kap
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

L = keras.layers
LOG_KEYS = {"kept", "pruning_loss", "lambda", "mu", "alpha", "binary"}


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
    cb = kap.AutoPrunerCallback(stop_when_done=True, per_gate_logs=True)
    history = gated.fit(x, y, batch_size=256, epochs=60, verbose=0,
                        validation_data=(xt, yt), callbacks=[cb])
    kept = kap.kept_fraction(gated)
    assert cb.done, history.history["kept"]
    assert abs(kept["overall"] - 0.5) <= 0.02
    assert history.history["binary"][-1] >= 0.99
    assert len(history.history["loss"]) < 60  # stopped when done
    assert LOG_KEYS <= set(history.history)
    assert {"kept_h1_gate", "kept_h2_gate"} <= set(history.history)
    assert history.history["kept"][-1] == pytest.approx(kept["overall"])
    # Pruning started after the loss settled, not at epoch 0.
    assert history.history["lambda"][0] == 0.0
    # Validation ran with hard masks: it matches a hard-mask evaluation.
    kap.set_hard_masks(gated, True)
    _, acc = gated.evaluate(xt, yt, verbose=0)
    assert acc == pytest.approx(history.history["val_accuracy"][-1], abs=1e-6)
    assert acc > 0.5  # 26 classes: chance is 0.04


def test_step_schedule_starts_pushing_at_once(letters):
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(schedule=kap.StepLambda(every=2))
    history = gated.fit(x, y, batch_size=512, epochs=4, verbose=0, callbacks=[cb])
    assert history.history["lambda"] == [1.0, 1.0, 10.0, 10.0]


def test_global_budget_by_flops(letters):
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(objective=kap.PruningObjective(
        "global", weighting="flops"), stop_when_done=True)
    gated.fit(x, y, batch_size=256, epochs=60, verbose=0, callbacks=[cb])
    assert cb.done
    gates = gates_of(gated)
    shares = cb.objective.shares(gates)
    kept = sum(s * g.mask().mean() for s, g in zip(shares, gates))
    assert abs(kept - 0.5) <= 0.02


def test_save_load_resume(letters, tmp_path):
    x, y, _, _ = letters
    gated = compiled(kap.add_gates(fc_net(), target_rate=0.5))
    cb = kap.AutoPrunerCallback(schedule=kap.LambdaController(max_warmup=1))
    gated.fit(x, y, batch_size=256, epochs=3, verbose=0, callbacks=[cb])
    assert cb.state.phase == 1 and cb.state.lam > 0
    path = tmp_path / "gated.keras"
    gated.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(gates_of(gated), gates_of(loaded)):
        for var in ("alpha", "lam", "mu", "phase", "moving_code", "code", "coef"):
            np.testing.assert_array_equal(getattr(a, var).numpy(),
                                          getattr(b, var).numpy())
    np.testing.assert_allclose(loaded.predict(x[:64], verbose=0),
                               gated.predict(x[:64], verbose=0), atol=1e-6)
    # A fresh callback resumes from the gates' state, not from scratch.
    cb2 = kap.AutoPrunerCallback(schedule=kap.LambdaController(max_warmup=1))
    history = loaded.fit(x, y, batch_size=256, epochs=1, verbose=0,
                         callbacks=[cb2])
    assert history.history["lambda"][0] == pytest.approx(cb.state.lam)
    assert history.history["mu"][0] != 1.0
    assert cb2.state.phase >= 1


def test_nested_gated_model(letters):
    x, y, _, _ = letters
    gated = kap.add_gates(fc_net(), target_rate=0.5)
    inputs = keras.Input((16,))
    outer = compiled(keras.Model(inputs, gated(inputs)))
    cb = kap.AutoPrunerCallback(schedule="step")
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


def test_callback_config_round_trip():
    cb = kap.AutoPrunerCallback(schedule=kap.StepLambda(every=5),
                                objective="global", tolerance=0.05,
                                stop_when_done=True)
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
