"""End-to-end runs of the examples on small real or mock data."""

import gzip
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from keras_autopruner import models
from keras_autopruner.datasets import LETTER_RECOGNITION_CSV
from keras_autopruner.metrics import count_params

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples")
PNG = b"\x89PNG\r\n\x1a\n"


def load_example(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vgg_smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vgg16_cub"))
    results = load_example("vgg16_cub").run(out=out, smoke=True, verbose=0)
    return out, results


def test_vgg16_cub_smoke_writes_everything(vgg_smoke):
    out, results = vgg_smoke
    assert [r["model"] for r in results] == ["full", "autopruner"]
    table = pd.read_csv(os.path.join(out, "results.csv"))
    assert list(table["model"]) == ["full", "autopruner"]
    full, pruned = results
    # Pruning ran to its end (binary codes within the budget) and removed
    # filters: fewer parameters and MACs than the full model.
    assert pruned["converged"] is True
    assert pruned["params"] < full["params"]
    assert pruned["macs"] < full["macs"]
    assert pruned["epochs"] == full["epochs"] + pruned["prune_epochs"] + 1
    assert "| autopruner | 0.5 |" in open(os.path.join(out,
                                                       "results.md")).read()
    assert os.path.isfile(os.path.join(out, "full_model.keras"))
    folder = os.path.join(out, "rate_0.5")
    with open(os.path.join(folder, "curves.png"), "rb") as f:
        assert f.read(8) == PNG
    history = pd.read_csv(os.path.join(folder, "history.csv"))
    assert list(history["stage"].unique()) == ["full", "prune", "finetune"]
    assert {"loss", "val_accuracy", "kept", "lambda"} <= set(history.columns)


def test_vgg16_cub_smoke_kept_filters_match_the_export(vgg_smoke):
    import tensorflow as tf

    out, results = vgg_smoke
    folder = os.path.join(out, "rate_0.5")
    kept = pd.read_csv(os.path.join(folder, "kept_filters.csv"))
    # 13 convolutions, fc1, fc2 and the 200-way output layer.
    assert len(kept) == 16
    assert kept.iloc[-1]["filters_after"] == 200
    # The per-layer budget at rate 0.5: every gated layer keeps exactly
    # round(0.5 * filters); the output layer is not gated.
    gated = kept.iloc[:-1]
    assert list(gated["filters_after"]) == [
        round(0.5 * n) for n in gated["filters_before"]]
    assert np.allclose(kept["kept_fraction"],
                       kept["filters_after"] / kept["filters_before"])
    # The full model the run started from has the "before" widths.
    import keras

    full = keras.saving.load_model(os.path.join(out, "full_model.keras"))
    assert list(models.widths_of(full).values()) == list(
        kept["filters_before"])
    # The exported model has the "after" widths and runs on its own.
    with open(os.path.join(folder, "savedmodel",
                           "pruning_report.json")) as f:
        report = json.load(f)
    after = {row["layer"]: row["filters_after"] for row in report["rows"]
             if row["filters_after"] is not None}
    assert [after[n] for n in kept["layer"]] == list(kept["filters_after"])
    assert report["totals"]["params_after"] == results[1]["params"]
    served = tf.saved_model.load(os.path.join(folder, "savedmodel"))
    y = served.serve(tf.zeros((1, 32, 32, 3)))
    assert y.shape == (1, 200)
    assert np.isclose(float(tf.reduce_sum(y)), 1.0, atol=1e-4)


def test_fc_dnn_on_a_user_csv(tmp_path):
    # The user path: a CSV with its own label column name, here a real
    # slice of the shipped Letter Recognition table.
    with gzip.open(LETTER_RECOGNITION_CSV, "rt") as f:
        table = pd.read_csv(f).iloc[:2500]
    table = table.rename(columns={"lettr": "letter"})
    path = tmp_path / "letters.csv"
    table.to_csv(path, index=False)

    example = load_example("fc_dnn")
    out = str(tmp_path / "out")
    result = example.run(data_path=str(path), label="letter", out=out,
                         full_epochs=2, prune_epochs=14, finetune_epochs=1,
                         verbose=0, export=False)
    layers = pd.read_csv(os.path.join(out, "layers.csv"))
    assert list(layers["layer"]) == list(models.FC_DNN_WIDTHS)
    assert list(layers["neurons"]) == list(models.FC_DNN_WIDTHS.values())
    assert (layers["kept_after_strip"] >= layers["min_units"]).all()
    assert (layers["kept_after_strip"] >= layers["kept_by_gate"]).all()
    assert (layers["kept_after_strip"] <= layers["neurons"]).all()
    assert layers["collapse_policy"].notna().all()
    # The widths in the table rebuild a model of the reported size.
    widths = dict(zip(layers["layer"], layers["kept_after_strip"]))
    n_classes = table["letter"].nunique()
    rebuilt = models.fc_dnn(input_dim=16, num_classes=n_classes,
                            widths=widths)
    assert count_params(rebuilt) == result["params_compact"]
    # Pruning converged and met the global MAC budget (rate 0.5, the
    # callback's tolerance 0.02); the compact model still classifies far
    # above chance (26 letters: about 4%).
    assert result["converged"] is True
    assert result["params_compact"] < result["params_full"]
    share = result["macs_compact"] / result["macs_full"]
    assert abs(share - 0.5) <= 0.02
    assert result["accuracy_finetuned"] > 0.5
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["layers"] == result["layers"]
    assert os.path.isfile(os.path.join(out, "pruning_report.md"))
