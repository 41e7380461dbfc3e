"""bench/autopruner_ablation.py's distillation: the soft targets and the
accuracy it reports."""

import importlib
import os

import numpy as np
import pytest

from keras_autopruner import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import sys

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        bench = importlib.import_module("autopruner_ablation")
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    config = study_lib.make_config("tiny", methods=("full",))
    study = study_lib.Study(config, str(tmp_path_factory.mktemp("abl")),
                            verbose=0, export=False)
    study.prepare()
    study.run_method("full", None, 0)
    return bench, study


def test_soft_targets_mix_the_labels_and_the_full_models_probabilities(
        trained):
    bench, study = trained
    x, y = study.data._train
    teacher = study.full_model(0).predict(x, verbose=0)
    labels = bench.Distilled(study, 0, 0.0, 2.0)._train[1]
    np.testing.assert_array_equal(labels, np.eye(teacher.shape[1])[y])
    plain = bench.Distilled(study, 0, 1.0, 1.0)._train[1]
    np.testing.assert_allclose(plain, teacher, atol=1e-5)
    mixed = bench.Distilled(study, 0, 0.5, 2.0)._train[1]
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    soft = np.sqrt(teacher) / np.sqrt(teacher).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mixed, 0.5 * labels + 0.5 * soft, atol=1e-5)


def test_distilled_fit_trains_on_the_targets_and_measures_as_the_study(
        trained):
    bench, study = trained
    distilled = bench.Distilled(study, 0, 0.5, 2.0)
    model = study.full_model(0)
    study.compile(model)
    assert distilled.evaluate(model)[1] == pytest.approx(
        study.evaluate(model)[1], abs=1e-6)
    labels = study.data._train
    history = distilled.train(model, 1, 0, "test")
    # Cross-entropy against soft targets is at least their entropy, which
    # is above 0.1 here; against one-hot labels it could go lower.
    targets = distilled._train[1]
    entropy = -np.mean(np.sum(targets * np.log(np.maximum(targets, 1e-12)),
                              axis=1))
    assert entropy > 0.1 and history["loss"][0] >= entropy - 1e-3
    assert study.data._train is labels


def test_distillation_refuses_a_pipeline(trained):
    bench, study = trained
    data = study.data
    arrays = data._train
    data._train = lambda seed: None
    try:
        with pytest.raises(ValueError, match="as arrays"):
            bench.Distilled(study, 0, 0.5, 2.0)
    finally:
        data._train = arrays


# Widths for the tiny preset's network (4-4-8-8 convolutions, fc1 16).
WIDTHS = {"block1_conv1": 3, "block1_conv2": 2, "block2_conv1": 5,
          "block2_conv2": 4, "fc1": 9, "predictions": 10}


class _Gate:
    def __init__(self, name, units):
        self.name, self.units = name, units


def test_masks_at_widths_keep_each_layers_best_channels(trained):
    bench, _ = trained
    gates = [_Gate("a_gate", 4), _Gate("b_gate", 3)]
    scores = {"a_gate": [0.1, 0.9, 0.5, 0.7], "b_gate": [2.0, 2.0, 1.0]}
    masks = bench.masks_at_widths(gates, scores, {"a": 2, "b": 1})
    np.testing.assert_array_equal(masks["a_gate"], [0, 1, 0, 1])
    np.testing.assert_array_equal(masks["b_gate"], [1, 0, 0])
    with pytest.raises(ValueError, match="no width for 'b'"):
        bench.masks_at_widths(gates, scores, {"a": 2})
    with pytest.raises(ValueError, match="cannot keep 5"):
        bench.masks_at_widths(gates, scores, {"a": 5, "b": 1})


def _untrained(study, monkeypatch):
    """Record the models `study.train` would train, and skip training."""
    trained = []
    monkeypatch.setattr(study, "train",
                        lambda model, *a, **k: trained.append(model))
    return trained


def test_a_criterion_at_another_runs_widths_keeps_its_best_filters(
        trained, monkeypatch):
    bench, study = trained
    models = _untrained(study, monkeypatch)
    r = bench.run_variant(study, "l1_at_fast", 0.5, 0, 1.0,
                          results={"fast|0.5|0": {"widths": WIDTHS}})
    assert r["widths"] == WIDTHS
    full = study.full_model(0)
    kernel = full.get_layer("block1_conv1").kernel.numpy()
    best = np.sort(np.argsort(-np.abs(kernel).sum(axis=(0, 1, 2)),
                              kind="stable")[:3])
    np.testing.assert_array_equal(
        models[0].get_layer("block1_conv1").kernel.numpy(),
        kernel[..., best])


def test_the_gates_cut_at_another_runs_widths(trained, monkeypatch):
    bench, study = trained
    _untrained(study, monkeypatch)
    r = bench.run_variant(study, "fast_at_l1", 0.5, 0, 1.0,
                          results={"l1|0.5|0": {"widths": WIDTHS}})
    assert r["widths"] == WIDTHS
    assert r["epochs"] == study.config.prune_epochs + \
        study.config.finetune_epochs


def test_a_cut_at_widths_needs_its_source_run(trained):
    bench, study = trained
    with pytest.raises(ValueError, match="list 'fast' before"):
        bench.run_variant(study, "random_at_fast", 0.5, 0, 1.0, results={})


def test_bn_at_widths_ranks_by_gamma_and_a_layer_without_batch_norm_by_l1(
        trained, monkeypatch):
    bench, study = trained
    models = _untrained(study, monkeypatch)
    bench.run_variant(study, "bn_at_fast", 0.5, 0, 1.0,
                      results={"fast|0.5|0": {"widths": WIDTHS}})
    full, compact = study.full_model(0), models[0]
    gamma = np.abs(full.get_layer("block1_conv1_bn").gamma.numpy())
    best = np.sort(np.argsort(-gamma, kind="stable")[:3])
    np.testing.assert_array_equal(
        compact.get_layer("block1_conv1").kernel.numpy(),
        full.get_layer("block1_conv1").kernel.numpy()[..., best])
    # fc1 has no batch norm behind it: its 9 neurons of largest L1 norm.
    kernel = full.get_layer("fc1").kernel.numpy()
    best = np.sort(np.argsort(-np.abs(kernel).sum(axis=0),
                              kind="stable")[:9])
    np.testing.assert_array_equal(compact.get_layer("fc1").bias.numpy(),
                                  full.get_layer("fc1").bias.numpy()[best])


def test_the_gates_widths_with_another_selection(trained, monkeypatch):
    bench, study = trained
    _untrained(study, monkeypatch)
    seen = {}
    cut = bench.masks_at_widths

    def spy(gates, scores, widths):
        seen["chosen"] = {g.name.removesuffix("_gate"): int(np.sum(g.mask()))
                          for g in gates}
        seen["asked"] = dict(widths)
        return cut(gates, scores, widths)

    monkeypatch.setattr(bench, "masks_at_widths", spy)
    r = bench.run_variant(study, "fast_then_bn", 0.5, 0, 1.0)
    # The widths the gates chose, kept with other channels: the MAC
    # budget (never above it) holds as for the gates' own choice.
    assert seen["asked"] == seen["chosen"]
    assert {k: r["widths"][k] for k in seen["chosen"]} == seen["chosen"]
    assert r["share"] <= 0.5
    assert r["epochs"] == study.config.prune_epochs + \
        study.config.finetune_epochs
