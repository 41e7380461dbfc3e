"""What the pruning-pays bench established, guarded on a small task.

`bench/pruning_pays.py` (BUILD_NOTES, issue 17) found, at 25% of the MACs
on the demo network:
- right after the cut, AutoPruner's network is far more accurate than a
  one-shot random or L1 cut (tens of points): its pruning phase trains
  the network into the chosen widths;
- after the same epochs and learning-rate shape, with the study's
  procedure (push for a fifth of the phase, then train the chosen network
  on), AutoPruner is level with or above the random cut; the old
  procedure (stop at the choice) lost to it.

The task here is the same network, narrower, on 2,000 of the shipped
Fashion-MNIST images, 3 epochs of full training, then 3 epochs at the
training rate and 1 at a tenth of it for both methods. `measure(seed)`
over seeds 0-5 (BUILD_NOTES, issue 17 part 4: the pushing paced to its
38-step budget) gave:
- accuracy right after the cut, AutoPruner minus random: +56.8, +62.8,
  +52.6, +56.2, +58.3, +55.7 pt; the test asserts more than 20 pt;
- final accuracy, AutoPruner minus random: -2.9, +0.3, +10.4, +7.2,
  +1.5, +0.1 pt (mean +2.8; the random cut sometimes collapses on these
  narrow layers, AutoPruner never did). A single seed can go either way,
  so the test asserts the mean over seeds 0-2 (+2.6 measured) is above
  -1 pt: a procedure that loses to random cuts on average, as the old
  one did on the held-out run (by 1.6 and 2.7 pt), fails it.
"""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.datasets import load_fashion_mnist

WIDTHS = {"block1_conv1": 8, "block1_conv2": 8, "block2_conv1": 16,
          "block2_conv2": 16, "fc1": 32}
RATE = 0.25
BATCH = 32
FULL_EPOCHS, PHASE_EPOCHS, LOW_EPOCHS = 3, 3, 1


def _data():
    (x, y), (xt, yt) = load_fashion_mnist()
    x = x[:2000, ..., None].astype("float32") / 255.0
    xt = xt[:1000, ..., None].astype("float32") / 255.0
    return x, y[:2000].astype("int32"), xt, yt[:1000].astype("int32")


def _compile(model, lr):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _acc(model, xt, yt):
    return float(model.evaluate(xt, yt, batch_size=256, verbose=0)[1])


def measure(seed):
    """Accuracies of AutoPruner and a random cut at equal epochs."""
    x, y, xt, yt = _data()
    keras.utils.set_random_seed(seed)
    full = models.vgg_small(widths=WIDTHS)
    _compile(full, 1e-3)
    full.fit(x, y, batch_size=BATCH, epochs=FULL_EPOCHS, verbose=0)
    steps = -(-len(x) // BATCH)

    keras.utils.set_random_seed(seed + 100)
    gated = kap.add_gates(full, target_rate=RATE)
    _compile(gated, 1e-3)
    callback = kap.AutoPrunerCallback(
        prune_steps=max(1, round(0.2 * PHASE_EPOCHS * steps)))
    gated.fit(x, y, batch_size=BATCH, epochs=PHASE_EPOCHS, verbose=0,
              callbacks=[callback])
    ap = kap.strip(gated)
    _compile(ap, 1e-4)
    ap_cut = _acc(ap, xt, yt)
    ap.fit(x, y, batch_size=BATCH, epochs=LOW_EPOCHS, verbose=0)

    keras.utils.set_random_seed(seed + 100)
    cut = kap.prune(full, importance=kap.RandomImportance(seed=seed),
                    target_rate=RATE)
    _compile(cut, 1e-3)
    random_cut = _acc(cut, xt, yt)
    cut.fit(x, y, batch_size=BATCH, epochs=PHASE_EPOCHS, verbose=0)
    cut.optimizer.learning_rate.assign(1e-4)
    cut.fit(x, y, batch_size=BATCH, epochs=LOW_EPOCHS, verbose=0)
    return {"ap_cut": ap_cut, "random_cut": random_cut,
            "ap": _acc(ap, xt, yt), "random": _acc(cut, xt, yt),
            "ap_share": kap.cost_share(gated, "flops")}


@pytest.fixture(scope="module")
def measured():
    return [measure(seed) for seed in (0, 1, 2)]


def test_the_learned_choice_is_far_better_right_after_the_cut(measured):
    for m in measured:
        assert m["ap_share"] <= RATE + 1e-9
        assert m["ap_cut"] - m["random_cut"] > 0.20, m


def test_after_equal_epochs_autopruner_is_not_below_random(measured):
    diffs = [m["ap"] - m["random"] for m in measured]
    assert np.mean(diffs) > -0.01, diffs
