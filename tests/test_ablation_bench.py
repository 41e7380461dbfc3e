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
