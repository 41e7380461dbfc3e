"""Tests for `keras_autopruner.study`: the comparison study and its outputs."""

import json
import math
import os

import keras
import pandas as pd
import pytest

from keras_autopruner import models, study
from keras_autopruner.metrics import count_params

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny preset, run as an interrupted study and then resumed."""
    out = str(tmp_path_factory.mktemp("study"))
    config = study.make_config("tiny")
    first = study.Study(
        study.make_config("tiny", methods=("full", "autopruner")), out,
        verbose=0)
    first.run()
    second = study.Study(config, out, verbose=0)
    table = second.run()
    return out, config, first, second, table


def load(out, key):
    with open(os.path.join(out, "runs", f"{key}.json")) as f:
        return json.load(f)


def test_every_output_file(tiny_study):
    out, _, _, _, _ = tiny_study
    for key in ("full_s0", "autopruner_r0.5_s0", "scratch_r0.5_s0",
                "uniform_r0.5_s0"):
        assert os.path.isfile(os.path.join(out, "runs", f"{key}.json"))
        assert os.path.isfile(os.path.join(out, "models", f"{key}.keras"))
    for name in ("accuracy_vs_flops.png", "kept_profile.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG
    exported = os.path.join(out, "savedmodel_r0.5_s0")
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    with open(os.path.join(exported, "pruning_report.json")) as f:
        assert json.load(f)["totals"]["params_after"] == load(
            out, "autopruner_r0.5_s0")["params"]


def test_tables_parse_and_agree(tiny_study):
    out, _, _, _, table = tiny_study
    runs = pd.read_csv(os.path.join(out, "runs.csv"))
    assert sorted(runs["method"]) == ["autopruner", "full", "scratch",
                                      "uniform"]
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 4 and list(results["method"]) == list(
        table["method"])
    assert (results["seeds"] == 1).all()
    assert (results["latency_ms"] > 0).all()
    for _, row in runs.iterrows():
        assert 0.0 <= row["accuracy"] <= 1.0
    with open(os.path.join(out, "results.md")) as f:
        text = f.read()
    assert "| AutoPruner (pruned + fine-tuned) | 0.5 | 1 |" in text
    assert "## Findings" in text
    assert "rate 0.5: AutoPruner" in text


def test_autopruner_model_is_smaller_and_matches_its_record(tiny_study):
    out, config, _, _, _ = tiny_study
    full, ap = load(out, "full_s0"), load(out, "autopruner_r0.5_s0")
    assert ap["params"] < full["params"]
    assert ap["flops"] < full["flops"]
    assert ap["widths"] != ap["full_widths"]
    assert ap["full_widths"] == config.widths
    assert all(ap["widths"][k] <= ap["full_widths"][k] for k in config.widths)
    compact = keras.saving.load_model(
        os.path.join(out, "models", "autopruner_r0.5_s0.keras"))
    assert count_params(compact) == ap["params"]
    assert {k: v for k, v in models.widths_of(compact).items()
            if k in config.widths} == ap["widths"]
    assert ap["epochs"] == (config.full_epochs + ap["prune_epochs"]
                            + config.finetune_epochs)
    assert 1 <= ap["prune_epochs"] <= config.prune_epochs


def test_baselines_follow_autopruner(tiny_study):
    out, _, _, _, _ = tiny_study
    ap = load(out, "autopruner_r0.5_s0")
    scratch, uniform = load(out, "scratch_r0.5_s0"), load(out,
                                                          "uniform_r0.5_s0")
    # Same architecture, same epoch budget.
    assert scratch["widths"] == ap["widths"]
    assert scratch["params"] == ap["params"]
    assert scratch["epochs"] == uniform["epochs"] == ap["epochs"]
    # One factor for every layer, MACs close to AutoPruner's (the tiny
    # preset budgets MACs).
    assert abs(uniform["flops"] - ap["flops"]) / ap["flops"] < 0.1
    # The budget: the stripped model keeps at most half of the MACs, and
    # its record says so (the tiny preset's 4-filter layers move the cost
    # in steps of several percent, so "within 2%" is for real networks).
    full = load(out, "full_s0")
    assert 0.45 <= ap["flops"] / full["flops"] <= 0.5
    assert ap["mac_share"] == pytest.approx(ap["flops"] / full["flops"])
    # The same learning-rate shape: every method's last finetune_epochs at
    # the fine-tuning rate, the epochs before at the training rate.
    c = study.make_config("tiny")
    for run in (scratch, uniform):
        lrs = run["history"]["learning_rate"]
        assert lrs[-c.finetune_epochs:] == pytest.approx(
            [c.finetune_learning_rate] * c.finetune_epochs)
        assert lrs[:-c.finetune_epochs] == pytest.approx(
            [c.learning_rate] * (len(lrs) - c.finetune_epochs))
    assert ap["history"]["finetune"]["learning_rate"] == pytest.approx(
        [c.finetune_learning_rate] * c.finetune_epochs)
    assert uniform["widths"] == models.scale_widths(
        ap["full_widths"], uniform["factor"])


def test_resume_skips_finished_runs(tiny_study, tmp_path):
    out, config, first, second, _ = tiny_study
    assert first.ran == ["full_s0", "autopruner_r0.5_s0"]
    assert second.skipped == ["full_s0", "autopruner_r0.5_s0"]
    assert second.ran == ["scratch_r0.5_s0", "uniform_r0.5_s0"]
    before = load(out, "scratch_r0.5_s0")
    third = study.Study(config, out, verbose=0, export=False)
    third.run()
    assert third.ran == []
    assert load(out, "scratch_r0.5_s0") == before


def test_other_settings_refuse_the_folder(tiny_study):
    out, _, _, _, _ = tiny_study
    other = study.make_config("tiny", full_epochs=2)
    with pytest.raises(ValueError, match="full_epochs"):
        study.Study(other, out, verbose=0).run()


def test_make_config_validates():
    with pytest.raises(ValueError, match="Unknown preset"):
        study.make_config("huge")
    with pytest.raises(ValueError, match="Unknown methods"):
        study.make_config("tiny", methods=("full", "pruning"))
    with pytest.raises(ValueError, match="image classifiers"):
        study.make_config("tiny", model="fc_dnn")
    with pytest.raises(ValueError, match="fraction of filters to keep"):
        study.make_config("tiny", rates=(0.5, 1.5))
    config = study.make_config("demo", seeds=[3])
    assert config.seeds == (3,) and config.rates == (0.5, 0.25, 0.12)


def test_flags_make_the_config():
    config, out = study.config_from_flags(study.parse_flags(
        ["--preset=demo", "--rates=0.4,0.6", "--seeds=1,2", "--magnitude",
         "--prune_epochs=7"]))
    assert out == os.path.join("runs", "study_demo")
    assert config.rates == (0.4, 0.6) and config.seeds == (1, 2)
    assert config.methods == ("full", "autopruner", "uniform", "magnitude")
    assert config.prune_epochs == 7
    assert config.train_examples == study.PRESETS["demo"]["train_examples"]


def fake_run(method, rate, seed, accuracy, params=1000, flops=5000):
    widths = {"a": 8, "b": 4}
    return {"key": study.run_key(method, rate, seed), "method": method,
            "rate": rate, "seed": seed, "accuracy": accuracy, "loss": 0.5,
            "params": params, "flops": flops, "latency_ms": 1.0,
            "epochs": 10, "own_epochs": 5, "train_s": 1.0,
            "widths": widths, "full_widths": {"a": 16, "b": 8},
            "converged": True, "prune_epochs": 3}


def test_findings_say_when_autopruner_loses():
    runs = []
    for seed in (0, 1, 2):
        runs.append(fake_run("full", None, seed, 0.90, 4000, 20000))
        runs.append(fake_run("autopruner", 0.5, seed, 0.80 + 0.001 * seed))
        runs.append(fake_run("scratch", 0.5, seed, 0.85 + 0.001 * seed))
        runs.append(fake_run("uniform", 0.5, seed, 0.80 + 0.002 * seed))
    table = study.results_frame(study.runs_frame(runs))
    ap = table[table["method"] == "autopruner"].iloc[0]
    assert ap["seeds"] == 3 and math.isclose(ap["accuracy"], 0.801)
    lines = study.findings(table)
    assert any("AutoPruner does not beat AutoPruner's widths, from scratch"
               in line for line in lines)
    assert any("AutoPruner ties with uniform width" in line
               for line in lines)
    assert any("converged in 3 of 3 seeds" in line for line in lines)


def test_write_report_without_training(tmp_path):
    runs = [fake_run("full", None, 0, 0.9, 4000, 20000),
            fake_run("autopruner", 0.3, 0, 0.8, 1000, 5000),
            fake_run("autopruner", 0.7, 0, 0.85, 3000, 12000),
            fake_run("uniform", 0.3, 0, 0.82, 1000, 4000),
            fake_run("uniform", 0.7, 0, 0.84, 3000, 11000)]
    config = study.make_config("tiny", rates=(0.3, 0.7),
                               methods=("full", "autopruner", "uniform"))
    table = study.write_report(runs, config, str(tmp_path), "fake data")
    assert list(table["rate"]) == [1.0, 0.7, 0.7, 0.3, 0.3]
    text = (tmp_path / "results.md").read_text()
    assert "n/a (1 seed)" in text
    assert "rate 0.3: AutoPruner does not beat uniform width" in text
    assert "rate 0.7: AutoPruner beats uniform width" in text
    for name in ("accuracy_vs_flops.png", "kept_profile.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_main_prints_the_table(tiny_study, capsys):
    out, _, _, _, _ = tiny_study
    assert study.run_from_flags(study.parse_flags(
        ["--preset=tiny", f"--out={out}", "--verbose=0", "--noexport",
         "--latency_runs=2"])) == 0
    printed = capsys.readouterr().out
    assert "| method | rate | seeds | accuracy %" in printed
    assert "done before, reusing scratch_r0.5_s0.json" in printed
    assert "accuracy_vs_flops.png" in printed

