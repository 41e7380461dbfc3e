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

On the fully connected tagger (`fc_dnn` on the Letter Recognition
table, BUILD_NOTES issue 17 part 8) the bench found AutoPruner above
the random cut at both budgets (+1.45 pt [+0.80, +2.10] at 25% of the
MACs over 5 seeds), because the gates choose other widths than the
near-uniform ones every criterion keeps. The task here: the default
`fc_dnn` (256-128-64-32), 8,000 of the shipped table's rows, batch 128,
5 epochs of full training, then 4 at the training rate (the pushing
paced to 60% of them, 150 steps, as in the bench) and 1 at a tenth.
`measure(seed, TAGGER)` over seeds 0-5 gave, AutoPruner minus random:
+4.70, +3.85, +5.10, +4.25, +4.15, +7.00 pt (5 of 6 converged); the test
asserts the mean over seeds 0-2 (+4.55 measured) is above 2 pt. The
batch-norm cut at the criteria's widths was 1.45-4.40 pt below
AutoPruner there too, and the bench's |gamma| cut beat random by 0.8 pt:
a learned allocation that fell back to uniform widths would lose most
of the margin.
"""

import dataclasses

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.datasets import load_fashion_mnist, load_tabular


@dataclasses.dataclass(frozen=True)
class Task:
    build: object
    load: object
    rate: float
    batch: int
    full_epochs: int
    phase_epochs: int
    low_epochs: int
    push_share: float


def _images():
    (x, y), (xt, yt) = load_fashion_mnist()
    x = x[:2000, ..., None].astype("float32") / 255.0
    xt = xt[:1000, ..., None].astype("float32") / 255.0
    return x, y[:2000].astype("int32"), xt, yt[:1000].astype("int32")


def _table():
    (x, y), (xt, yt), _ = load_tabular()
    return x[:8000], y[:8000], xt[:2000], yt[:2000]


CONV = Task(
    build=lambda: models.vgg_small(widths={
        "block1_conv1": 8, "block1_conv2": 8, "block2_conv1": 16,
        "block2_conv2": 16, "fc1": 32}),
    load=_images, rate=0.25, batch=32, full_epochs=3, phase_epochs=3,
    low_epochs=1, push_share=0.2)
TAGGER = Task(build=models.fc_dnn, load=_table, rate=0.25, batch=128,
              full_epochs=5, phase_epochs=4, low_epochs=1, push_share=0.6)


def _compile(model, lr):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _acc(model, xt, yt):
    return float(model.evaluate(xt, yt, batch_size=256, verbose=0)[1])


def measure(seed, task=CONV):
    """Accuracies of AutoPruner and a random cut at equal epochs."""
    x, y, xt, yt = task.load()
    batch = task.batch
    keras.utils.set_random_seed(seed)
    full = task.build()
    _compile(full, 1e-3)
    full.fit(x, y, batch_size=batch, epochs=task.full_epochs, verbose=0)
    steps = -(-len(x) // batch)

    keras.utils.set_random_seed(seed + 100)
    gated = kap.add_gates(full, target_rate=task.rate)
    _compile(gated, 1e-3)
    callback = kap.AutoPrunerCallback(prune_steps=max(
        1, round(task.push_share * task.phase_epochs * steps)))
    gated.fit(x, y, batch_size=batch, epochs=task.phase_epochs, verbose=0,
              callbacks=[callback])
    ap = kap.strip(gated)
    _compile(ap, 1e-4)
    ap_cut = _acc(ap, xt, yt)
    ap.fit(x, y, batch_size=batch, epochs=task.low_epochs, verbose=0)

    keras.utils.set_random_seed(seed + 100)
    cut = kap.prune(full, importance=kap.RandomImportance(seed=seed),
                    target_rate=task.rate)
    _compile(cut, 1e-3)
    random_cut = _acc(cut, xt, yt)
    cut.fit(x, y, batch_size=batch, epochs=task.phase_epochs, verbose=0)
    cut.optimizer.learning_rate.assign(1e-4)
    cut.fit(x, y, batch_size=batch, epochs=task.low_epochs, verbose=0)
    return {"ap_cut": ap_cut, "random_cut": random_cut,
            "ap": _acc(ap, xt, yt), "random": _acc(cut, xt, yt),
            "ap_share": kap.cost_share(gated, "flops")}


@pytest.fixture(scope="module")
def measured():
    return [measure(seed) for seed in (0, 1, 2)]


def test_the_learned_choice_is_far_better_right_after_the_cut(measured):
    for m in measured:
        assert m["ap_share"] <= CONV.rate + 1e-9
        assert m["ap_cut"] - m["random_cut"] > 0.20, m


def test_after_equal_epochs_autopruner_is_not_below_random(measured):
    diffs = [m["ap"] - m["random"] for m in measured]
    assert np.mean(diffs) > -0.01, diffs


def test_on_the_tagger_autopruner_beats_random_at_equal_epochs():
    measured = [measure(seed, TAGGER) for seed in (0, 1, 2)]
    for m in measured:
        assert m["ap_share"] <= TAGGER.rate + 1e-9, m
    diffs = [m["ap"] - m["random"] for m in measured]
    assert np.mean(diffs) > 0.02, diffs
