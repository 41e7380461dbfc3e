"""`kap.prune_iteratively`: rounds of cuts with fine-tuning between them."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models

WIDTHS = {"block1_conv1": 8, "block1_conv2": 8, "block2_conv1": 16,
          "block2_conv2": 16, "fc1": 32}


def net(seed=0):
    keras.utils.set_random_seed(seed)
    return models.vgg_small(widths=WIDTHS)


def flops(model):
    return kap.count_flops(model).total


@pytest.mark.parametrize("weighting", ["flops", "params"])
def test_rounds_follow_the_geometric_path_and_meet_the_budget(weighting):
    model = net()
    cost = (flops if weighting == "flops" else kap.count_params)
    full = cost(model)
    seen = []
    x = np.random.default_rng(0).random((64, 28, 28, 1), "float32")
    y = np.arange(64) % 10

    def fine_tune(m, k):
        # Each round's model is a stripped standard model that trains.
        m.compile("adam", "sparse_categorical_crossentropy")
        before = [w.copy() for w in m.get_weights()]
        m.fit(x, y, batch_size=32, epochs=1, verbose=0)
        assert any(not np.array_equal(a, b)
                   for a, b in zip(before, m.get_weights()))
        seen.append((k, cost(m) / full))

    compact = kap.prune_iteratively(
        model, "l1", 0.125, kap.PruningObjective("global",
                                                 weighting=weighting),
        rounds=3, fine_tune=fine_tune)
    assert [k for k, _ in seen] == [1, 2]
    # Round k keeps 0.125 ** (k / 3) of the original: 0.5, then 0.25
    # (within the cut's tolerance, never above).
    for (_, share), goal in zip(seen, (0.5, 0.25)):
        assert goal * 0.9 <= share <= goal + 1e-9
    share = cost(compact) / full
    assert 0.125 * 0.98 <= share <= 0.125
    assert compact.name == model.name + "_pruned"
    assert any("round 3/3" in n for n in compact.pruning_report.notes)
    assert not kap.gate.gates_of(compact)
    # The model passed in is left as it was.
    assert cost(model) == full


def test_one_round_is_prune():
    model = net(1)
    once = kap.prune(model, "l2", 0.3)
    rounds = kap.prune_iteratively(model, "l2", 0.3, rounds=1,
                                   fine_tune=lambda m, k: pytest.fail())
    assert models.widths_of(rounds) == models.widths_of(once)
    x = np.random.default_rng(1).random((4, 28, 28, 1), "float32")
    np.testing.assert_allclose(rounds.predict(x, verbose=0),
                               once.predict(x, verbose=0), atol=1e-6)


def test_without_fine_tune_the_rounds_still_meet_the_budget():
    model = net(2)
    compact = kap.prune_iteratively(model, "random", 0.25, rounds=2)
    assert 0.25 * 0.98 <= flops(compact) / flops(model) <= 0.25


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="layer"), "global budget"),
    (dict(objective=kap.PruningObjective("global", weighting="filters")),
     "global budget"),
    (dict(rounds=0), "rounds"),
    (dict(rounds=True), "rounds"),
    (dict(rounds=1.5), "rounds"),
    (dict(fine_tune="fit"), "fine_tune"),
    (dict(target_rate=0), "target_rate"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kap.prune_iteratively(net(), **{"importance": "l1", **kwargs})


def test_a_gated_model_is_refused():
    gated = kap.add_gates(net(), target_rate=0.5)
    with pytest.raises(ValueError, match="ungated"):
        kap.prune_iteratively(gated, "l1", 0.5)
