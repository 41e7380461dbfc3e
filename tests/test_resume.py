"""A run saved to `.keras`, loaded and continued is the uninterrupted run.

For the schedules that run on a clock of optimizer steps (StepLambda, and
AlphaSchedule with `release=None`), with and without `initial_epoch`, the
lambda and alpha of every optimizer step and the final masks match. The
controller's case is `test_callbacks.test_save_load_resume_is_exact`.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner.datasets import load_tabular
from keras_autopruner.gate import gates_of

L = keras.layers
STEPS_PER_EPOCH = 10
EPOCHS, SPLIT = 4, 2


@pytest.fixture(scope="module")
def data():
    (x, y), _, _ = load_tabular()
    n = 32 * STEPS_PER_EPOCH
    return x[:n].astype("float32"), y[:n]


def gated_net():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((16,)),
        L.Dense(24, activation="relu", name="h1"),
        L.Dense(24, activation="relu", name="h2"),
        L.Dense(26, activation="softmax", name="out"),
    ])
    gated = kap.add_gates(model, target_rate=0.4)
    gated.compile(keras.optimizers.Adam(3e-3),
                  "sparse_categorical_crossentropy")
    return gated


SCHEDULES = {
    # lambda steps up every 7 optimizer steps: an epoch boundary falls
    # between two steps, so a resumed run must know the step count.
    "step": lambda: dict(schedule=kap.StepLambda(every=7, factor=3.0)),
    # alpha doubles on a clock from the first pushing step.
    "alpha_clock": lambda: dict(
        schedule=kap.StepLambda(every=9, factor=2.0),
        alpha=kap.AlphaSchedule(release=None, double_every=5)),
}


class Trace(keras.callbacks.Callback):
    """lambda and alpha as the gates hold them after every step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        gate = gates_of(self.model)[0]
        self.steps.append((float(gate.lam.numpy()),
                           float(gate.alpha.numpy())))


def fit(model, data, schedule, epochs, initial_epoch=0):
    x, y = data
    cb = kap.AutoPrunerCallback(objective="layer", control_every=2,
                                finish_on_train_end=False,
                                **SCHEDULES[schedule]())
    trace = Trace()
    model.fit(x, y, batch_size=32, epochs=epochs, initial_epoch=initial_epoch,
              shuffle=False, verbose=0, callbacks=[cb, trace])
    return trace.steps


@pytest.mark.parametrize("with_initial_epoch", [False, True],
                         ids=["fresh_epochs", "initial_epoch"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_resume_is_exact(schedule, with_initial_epoch, data, tmp_path):
    straight = gated_net()
    whole = fit(straight, data, schedule, EPOCHS)

    first = gated_net()
    before = fit(first, data, schedule, SPLIT)
    path = tmp_path / "run.keras"
    first.save(path)
    loaded = keras.models.load_model(path)
    if with_initial_epoch:
        after = fit(loaded, data, schedule, EPOCHS, initial_epoch=SPLIT)
    else:
        after = fit(loaded, data, schedule, EPOCHS - SPLIT)

    assert len(before + after) == len(whole) == EPOCHS * STEPS_PER_EPOCH
    np.testing.assert_allclose(np.array(before + after), np.array(whole),
                               rtol=1e-6)
    # The schedule did move after the split: the test can tell a resumed
    # run from one that starts over.
    lam_or_alpha_moved = {s for s in whole[SPLIT * STEPS_PER_EPOCH:]} != {
        whole[SPLIT * STEPS_PER_EPOCH - 1]}
    assert lam_or_alpha_moved, whole
    for a, b in zip(gates_of(straight), gates_of(loaded)):
        np.testing.assert_array_equal(a.mask(), b.mask())
        np.testing.assert_allclose(a.scores(), b.scores(), atol=1e-5)
