"""Tests for `keras_autopruner.study`: the comparison study and its outputs."""

import json
import math
import os

import keras
import numpy as np
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
    for key in ("full_s0", "autopruner_r0.5_s0", "full_equal_r0.5_s0",
                "l1_r0.5_s0", "random_r0.5_s0", "scratch_r0.5_s0",
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
    assert sorted(runs["method"]) == sorted([
        "autopruner", "autopruner_stop", "full", "full_equal", "l1",
        "l1_iterative", "random", "scratch", "uniform"])
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 9 and list(results["method"]) == list(
        table["method"])
    assert (results["seeds"] == 1).all()
    assert (results["latency_ms"] > 0).all()
    assert (results["throughput"] > 0).all()
    full = results[results["method"] == "full"].iloc[0]
    assert full["speedup_latency"] == pytest.approx(1.0)
    assert full["speedup_throughput"] == pytest.approx(1.0)
    # Accuracy right after the cut: for the methods that cut, only.
    cut = results.set_index("method")["accuracy_cut"]
    assert cut[["autopruner", "l1", "random", "l1_iterative"]].between(
        0, 1).all()
    assert cut[["full", "full_equal", "scratch", "uniform"]].isna().all()
    assert cut["autopruner"] == pytest.approx(
        load(out, "autopruner_r0.5_s0")["accuracy_stripped"])
    paired = pd.read_csv(os.path.join(out, "paired.csv"))
    assert sorted(paired["method"]) == sorted([
        "autopruner_stop", "full", "full_equal", "l1", "l1_iterative",
        "random", "scratch", "uniform"])
    assert (paired["verdict"] == "one seed").all()
    for _, row in runs.iterrows():
        assert 0.0 <= row["accuracy"] <= 1.0
    with open(os.path.join(out, "results.md")) as f:
        text = f.read()
    assert "| AutoPruner (pruned + fine-tuned) | 0.5 | 1 |" in text
    assert "## Paired differences" in text and "## Findings" in text
    assert "on one seed: no interval, so no verdict" in text


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
    # The whole pruning phase runs: pushing for at most prune_share of its
    # steps, the exact choice, then the chosen network trained on at the
    # training rate.
    assert ap["prune_epochs"] == config.prune_epochs
    assert ap["epochs"] == (config.full_epochs + config.prune_epochs
                            + config.finetune_epochs)
    phase = config.prune_epochs * 16  # 512 examples, batch 32
    assert ap["prune_steps"] <= round(config.prune_share * phase)
    assert ap["steps_after_choice"] >= phase - round(
        config.prune_share * phase) - 1
    # The procedure before (kept as autopruner_stop): fitting stops at the
    # end of the choice's epoch, so its phase is no longer than that.
    stop = load(out, "autopruner_stop_r0.5_s0")
    epoch = -(-(stop["prune_steps"] + 1) // 16)
    assert stop["prune_epochs"] == min(epoch, config.prune_epochs)
    assert stop["own_epochs"] == stop["prune_epochs"] + config.finetune_epochs


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


def test_iterative_cut_gets_the_same_epochs_and_budget(tiny_study):
    out, config, _, _, _ = tiny_study
    ap, full = load(out, "autopruner_r0.5_s0"), load(out, "full_s0")
    it = load(out, "l1_iterative_r0.5_s0")
    assert it["own_epochs"] == ap["own_epochs"]
    assert it["epochs"] == ap["epochs"]
    # 4 epochs at the training rate shared over the 3 gaps, then the
    # last at the fine-tuning rate.
    assert it["rounds"] == 3 and it["epochs_between"] == [2, 1, 1]
    lrs = it["history"]["learning_rate"]
    assert lrs == pytest.approx([config.learning_rate]
                                + [config.finetune_learning_rate])
    assert it["flops"] / full["flops"] <= 0.5
    assert any("round 3/3" in n for n in it["notes"])


def test_cuts_and_full_equal_match_autopruner_budget(tiny_study):
    out, config, _, _, _ = tiny_study
    ap, full = load(out, "autopruner_r0.5_s0"), load(out, "full_s0")
    equal = load(out, "full_equal_r0.5_s0")
    # full_equal: the full architecture for AutoPruner's total epochs.
    assert equal["params"] == full["params"]
    assert equal["epochs"] == ap["epochs"]
    assert len(equal["history"]["loss"]) == ap["epochs"]
    for name in ("l1", "random"):
        run = load(out, f"{name}_r0.5_s0")
        # The study's MAC budget, never above it.
        assert run["flops"] <= 0.5 * full["flops"] * 1.001
        assert run["flops"] >= 0.5 * full["flops"] * 0.9
        # Fine-tuned for AutoPruner's epochs after full training.
        assert run["own_epochs"] == ap["own_epochs"]
        assert run["epochs"] == ap["epochs"]
        assert 0.0 <= run["accuracy_cut"] <= 1.0
    c = config
    for run in (equal, load(out, "l1_r0.5_s0")):
        lrs = run["history"]["learning_rate"]
        assert lrs[-c.finetune_epochs:] == pytest.approx(
            [c.finetune_learning_rate] * c.finetune_epochs)
        assert lrs[:-c.finetune_epochs] == pytest.approx(
            [c.learning_rate] * (len(lrs) - c.finetune_epochs))
    # l1 and random cut the same budget but keep other channels: their
    # models' first kernels differ.
    a = keras.saving.load_model(os.path.join(out, "models", "l1_r0.5_s0.keras"))
    b = keras.saving.load_model(
        os.path.join(out, "models", "random_r0.5_s0.keras"))
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])


def test_scratch_and_uniform_are_reinitialised(tiny_study):
    out, _, _, _, _ = tiny_study
    ap = keras.saving.load_model(
        os.path.join(out, "models", "autopruner_r0.5_s0.keras"))
    scratch = keras.saving.load_model(
        os.path.join(out, "models", "scratch_r0.5_s0.keras"))
    assert [w.shape for w in ap.get_weights()] == [
        w.shape for w in scratch.get_weights()]
    assert not np.allclose(ap.get_weights()[0], scratch.get_weights()[0])


def test_uniform_masks_match_the_cost():
    model = models.vgg_small(widths={"block1_conv1": 4, "block1_conv2": 4,
                                     "block2_conv1": 8, "block2_conv2": 8,
                                     "fc1": 16})
    masks = study.uniform_masks({"a": 10, "b": 3}, 0.5)
    assert masks["a"].tolist() == [True] * 5 + [False] * 5
    assert masks["b"].tolist() == [True, True, False]
    assert study.uniform_masks({"a": 4}, 0.01)["a"].sum() == 1
    factor, masks, share = study.match_uniform(model, 0.25, "flops")
    import keras_autopruner as kap
    from keras_autopruner.metrics import count_flops

    compact = kap.strip(model, keep=masks)
    measured = count_flops(compact).total / count_flops(model).total
    assert measured == pytest.approx(share, rel=1e-6)
    assert abs(share - 0.25) < 0.05
    assert models.widths_of(compact)["block2_conv1"] == max(
        1, round(8 * factor))


def test_resume_skips_finished_runs(tiny_study, tmp_path):
    out, config, first, second, _ = tiny_study
    assert first.ran == ["full_s0", "autopruner_r0.5_s0"]
    assert second.skipped == ["full_s0", "autopruner_r0.5_s0"]
    assert second.ran == ["full_equal_r0.5_s0", "autopruner_stop_r0.5_s0",
                          "l1_r0.5_s0", "random_r0.5_s0",
                          "l1_iterative_r0.5_s0", "scratch_r0.5_s0",
                          "uniform_r0.5_s0"]
    before = load(out, "scratch_r0.5_s0")
    third = study.Study(config, out, verbose=0, export=False)
    third.run()
    assert third.ran == []
    assert load(out, "scratch_r0.5_s0") == before
    # One run at a time (what bench/autopruner_ablation.py does).
    third.run_method("scratch", 0.5, 0)
    assert third.ran == [] and third.skipped[-1] == "scratch_r0.5_s0"
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        third.run_method("nope", 0.5, 0)


def test_folded_autopruner_folds_and_spends_the_same(tiny_study, tmp_path):
    import shutil

    from keras_autopruner import folding

    out = str(tmp_path / "study")
    shutil.copytree(tiny_study[0], out)
    config = study.make_config(
        "tiny", methods=("full", "autopruner", "autopruner_folded"))
    folded_study = study.Study(config, out, verbose=0, export=False)
    folded_study.run()
    assert folded_study.ran == ["autopruner_folded_r0.5_s0"]
    ap = load(out, "autopruner_r0.5_s0")
    folded = load(out, "autopruner_folded_r0.5_s0")
    assert ap["folded_gates"] == 0 and folded["folded_gates"] > 0
    for key in ("epochs", "own_epochs", "prune_epochs"):
        assert folded[key] == ap[key]
    assert folded["mac_share"] <= 0.5 + 1e-9
    # Stripped, the folded run is a plain network of the kept widths.
    compact = keras.saving.load_model(
        os.path.join(out, "models", "autopruner_folded_r0.5_s0.keras"))
    assert not folding.is_folded(compact)
    assert count_params(compact) == folded["params"]
    paired = pd.read_csv(os.path.join(out, "paired.csv"))
    assert "autopruner_folded" in set(paired["method"])


def test_other_settings_refuse_the_folder(tiny_study):
    out, _, _, _, _ = tiny_study
    other = study.make_config("tiny", full_epochs=2)
    with pytest.raises(ValueError, match="full_epochs"):
        study.Study(other, out, verbose=0).run()
    with pytest.raises(ValueError, match="full_epochs"):
        study.Study(other, out, verbose=0).prepare()


def test_make_config_validates():
    with pytest.raises(ValueError, match="Unknown preset"):
        study.make_config("huge")
    with pytest.raises(ValueError, match="Unknown methods"):
        study.make_config("tiny", methods=("full", "pruning"))
    for share in (0, 1.5, "0.2", True):
        with pytest.raises(ValueError, match="prune_share"):
            study.make_config("tiny", prune_share=share)
    with pytest.raises(ValueError, match="none of: a builder name"):
        study.make_config("tiny", model="resnet_huge")
    with pytest.raises(ValueError, match="does not exist"):
        study.make_config("tiny", model="missing.keras")
    assert study.make_config("tiny", model="fc_dnn").model == "fc_dnn"
    with pytest.raises(ValueError, match="fraction of filters to keep"):
        study.make_config("tiny", rates=(0.5, 1.5))
    config = study.make_config("demo", seeds=[3])
    assert config.seeds == (3,) and config.rates == (0.25, 0.12)


def test_flags_make_the_config():
    config, out = study.config_from_flags(study.parse_flags(
        ["--preset=demo", "--rates=0.4,0.6", "--seeds=1,2", "--magnitude",
         "--prune_epochs=7"]))
    assert out == os.path.join("runs", "study_demo")
    assert config.rates == (0.4, 0.6) and config.seeds == (1, 2)
    assert config.methods == study.PRESETS["demo"]["methods"] + (
        "magnitude",)
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


def test_findings_follow_the_paired_interval():
    runs = []
    for seed in (0, 1, 2):
        runs.append(fake_run("full", None, seed, 0.90, 4000, 20000))
        runs.append(fake_run("autopruner", 0.5, seed, 0.80 + 0.001 * seed))
        runs.append(fake_run("scratch", 0.5, seed, 0.85 + 0.001 * seed))
        # Mean 0.1 pt above AutoPruner, but the paired interval holds 0.
        runs.append(fake_run("uniform", 0.5, seed, 0.80 + 0.002 * seed))
        # Mean 0.1 pt below AutoPruner on every seed: a tight interval.
        runs.append(fake_run("l1", 0.5, seed, 0.799 + 0.001 * seed))
    df = study.runs_frame(runs)
    table = study.results_frame(df)
    ap = table[table["method"] == "autopruner"].iloc[0]
    assert ap["seeds"] == 3 and math.isclose(ap["accuracy"], 0.801)
    paired = study.paired_frame(df).set_index("method")
    assert paired.loc["scratch", "verdict"] == "loses to"
    assert paired.loc["uniform", "verdict"] == "ties with"
    assert paired.loc["l1", "verdict"] == "beats"
    assert paired.loc["full", "verdict"] == "loses to"
    # uniform: differences 0, -0.1, -0.2 pt: mean -0.1, sd 0.1, t(2) 4.303.
    half = 4.303 * 0.001 / math.sqrt(3)
    assert paired.loc["uniform", "diff"] == pytest.approx(-0.001)
    assert paired.loc["uniform", "low"] == pytest.approx(-0.001 - half)
    assert paired.loc["uniform", "high"] == pytest.approx(-0.001 + half)
    lines = study.findings(table, study.paired_frame(df))
    assert any("AutoPruner loses to AutoPruner's widths, from scratch"
               in line for line in lines)
    assert any("AutoPruner ties with uniform width" in line
               for line in lines)
    assert any("AutoPruner beats L1 filter norm" in line for line in lines)
    assert any("converged in 3 of 3 seeds" in line for line in lines)
    assert not any("interval is wide" in line for line in lines)


def test_two_seeds_say_the_interval_is_wide():
    runs = []
    for seed in (0, 1):
        runs.append(fake_run("autopruner", 0.5, seed, 0.80 + 0.01 * seed))
        runs.append(fake_run("random", 0.5, seed, 0.75 + 0.012 * seed))
    df = study.runs_frame(runs)
    lines = study.findings(study.results_frame(df), study.paired_frame(df))
    assert any("2 seeds" in line and "interval is wide" in line
               for line in lines)
    mean, low, high = study.t_interval([0.05, 0.048])
    assert low == pytest.approx(0.049 - 12.706 * 0.001 * math.sqrt(2)
                                / math.sqrt(2))


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
    assert ("rate 0.3: AutoPruner vs uniform width, matched cost, from "
            "scratch: 80.00% vs 82.00% (-2.00 pt) on one seed: no interval, "
            "so no verdict") in text
    assert "rate 0.7: AutoPruner vs uniform width" in text
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


def test_shards_split_the_units_and_merge_reports(tiny_study, tmp_path,
                                                  capsys):
    config = study.make_config("tiny", seeds=(0, 1, 2), rates=(0.5, 0.25))
    every = [(s, r) for s in (0, 1, 2) for r in (0.5, 0.25)]
    shards = [study.Study(config, str(tmp_path), shard=f"{i}/4").units()
              for i in range(4)]
    assert shards[1] == every[1::4] == [(0, 0.25), (2, 0.25)]
    assert sorted(u for s in shards for u in s) == sorted(every)
    for bad in ("4/4", "1/0", "a/b", "-1/3"):
        with pytest.raises(ValueError, match="shard"):
            study.Study(config, str(tmp_path), shard=bad)
    # A shard whose units are all stored trains nothing and writes no
    # report; --merge writes it from the stored runs alone.
    out, _, _, _, _ = tiny_study
    os.remove(os.path.join(out, "results.md"))
    shard = study.Study(study.make_config("tiny"), out, verbose=0,
                        export=False, shard="0/1")
    assert shard.run() is None and shard.ran == []
    assert not os.path.exists(os.path.join(out, "results.md"))
    assert study.run_from_flags(study.parse_flags(
        ["--merge", f"--out={out}", "--noexport", "--verbose=0"])) == 0
    printed = capsys.readouterr().out
    assert "| random cut + fine-tuned | 0.5 | 1 |" in printed
    assert os.path.exists(os.path.join(out, "results.md"))
    with pytest.raises(FileNotFoundError, match="holds no study"):
        study.Study.from_folder(str(tmp_path / "nothing"))


def _fast(**overrides):
    import dataclasses

    values = dict(full_epochs=1, prune_epochs=2, finetune_epochs=1,
                  latency_runs=2)
    values.update(overrides)
    widths = values.pop("widths", None)
    # The tiny preset's widths are vgg_small's layers; other models keep
    # their own.
    return dataclasses.replace(study.make_config("tiny", **values),
                               widths=widths)


def test_study_on_a_csv_with_the_fc_dnn_default(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    frame["kind"] = np.array(["a", "b", "c"])[y]
    path = tmp_path / "table.csv.gz"
    frame.to_csv(path, index=False)
    config = _fast(dataset=str(path), label="kind", train_examples=None,
                   test_examples=None, methods=("full", "autopruner", "l1"),
                   widths={"dense1": 16, "dense2": 16, "dense3": 8,
                           "dense4": 8})
    s = study.Study(config, str(tmp_path / "out"), verbose=0, export=False)
    s.run()
    assert s.model_spec == "fc_dnn"
    assert s.data.input_shape == (6,) and s.data.num_classes == 3
    assert s.default_widths == {"dense1": 16, "dense2": 16, "dense3": 8,
                                "dense4": 8}
    ap = load(str(tmp_path / "out"), "autopruner_r0.5_s0")
    full = load(str(tmp_path / "out"), "full_s0")
    assert ap["flops"] <= 0.5 * full["flops"] * 1.001
    l1 = load(str(tmp_path / "out"), "l1_r0.5_s0")
    assert l1["flops"] <= 0.5 * full["flops"] * 1.001
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Model `fc_dnn` on table.csv.gz (label 'kind'" in text
    with pytest.raises(ValueError, match="--label"):
        study.Study(_fast(dataset=str(path)), str(tmp_path / "o2")).data


def small_cnn():
    """A user's network that is no builder of the package."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(6, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="c1_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(12, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="users_cnn")


def test_study_on_a_keras_file(tmp_path):
    path = str(tmp_path / "users_cnn.keras")
    small_cnn().save(path)
    config = _fast(model=path, train_examples=128, test_examples=64,
                   methods=("full", "autopruner", "bn", "uniform"))
    out = str(tmp_path / "out")
    s = study.Study(config, out, verbose=0, export=False)
    s.run()
    assert s.builder is None
    assert s.default_widths == {"c1": 6, "c2": 8, "d1": 12}
    full, ap = load(out, "full_s0"), load(out, "autopruner_r0.5_s0")
    assert ap["flops"] <= 0.5 * full["flops"] * 1.001
    assert all(ap["widths"][k] <= s.default_widths[k] for k in ap["widths"])
    uniform = load(out, "uniform_r0.5_s0")
    assert abs(uniform["flops"] - ap["flops"]) / ap["flops"] < 0.15
    # bn ranks only c1 (batch norm behind it); c2 and d1 stay whole.
    bn = load(out, "bn_r0.5_s0")
    assert bn["widths"]["c2"] == 8 and bn["widths"]["d1"] == 12
    assert bn["widths"]["c1"] < 6
    assert bn["flops"] <= 0.5 * full["flops"] * 1.001
    assert "c2, d1 kept whole" in bn["notes"][0]
    # The file gives the architecture; the study trains it from scratch.
    trained = keras.saving.load_model(os.path.join(out, "models",
                                                   "full_s0.keras"))
    assert not np.allclose(trained.get_weights()[0],
                           keras.saving.load_model(path).get_weights()[0])
    assert "Model `" + path + "`" in open(os.path.join(out,
                                                       "results.md")).read()


def test_module_function_models_and_refusals(tmp_path):
    config = _fast(model="keras_autopruner.models:vgg_small")
    s = study.Study(config, str(tmp_path))
    assert s.builder is None
    assert s.default_widths == models.default_widths(models.vgg_small)
    a, b = s.new_model(), s.new_model()
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])
    bad = study.Study(_fast(model="keras_autopruner.models:nothing"),
                      str(tmp_path))
    with pytest.raises(ValueError, match="cannot import 'nothing'"):
        bad.new_model()
    path = str(tmp_path / "wrong.keras")
    models.fc_dnn(input_dim=5, num_classes=3).save(path)
    with pytest.raises(ValueError, match=r"inputs of shape \(5,\)"):
        study.Study(_fast(model=path), str(tmp_path)).new_model()



def test_npz_data_for_the_study(tmp_path):
    from keras_autopruner.datasets import load_study_data

    rng = np.random.default_rng(0)
    path = str(tmp_path / "arrays.npz")
    np.savez(path, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
             y_train=np.arange(20) % 4,
             x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
             y_test=np.arange(6) % 3)
    data = load_study_data(_fast(dataset=path, train_examples=10,
                                 test_examples=None))
    assert data.input_shape == (8, 8, 1) and data.num_classes == 4
    (x, y), _ = data.fit_args(0, 4)
    assert x.shape == (10, 8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    np.savez(str(tmp_path / "bad.npz"), x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="lacks the keys"):
        load_study_data(_fast(dataset=str(tmp_path / "bad.npz")))


# Several local worker processes (`--jobs`, keras_autopruner.study.jobs).

def test_tasks_wait_for_the_runs_they_read():
    from keras_autopruner.study.jobs import tasks

    config = study.make_config(
        "tiny", seeds=(0, 1), rates=(0.5, 0.25),
        methods=("full", "autopruner", "full_equal", "l1", "uniform"))
    every = tasks(study.Study(config, "/tmp/unused"))
    keys = [t.key for t in every]
    assert len(keys) == len(set(keys)) == 2 * (1 + 2 * 4)
    for i, task in enumerate(every):
        assert set(task.needs) <= set(keys[:i]), task  # sequential order
        if task.method == "full":
            assert task.needs == ()
        elif task.method == "autopruner":
            assert task.needs == (f"full_s{task.seed}",)
        else:
            ap = study.run_key("autopruner", task.rate, task.seed)
            assert {f"full_s{task.seed}", ap} <= set(task.needs)
    # The second rate's full_equal may reuse the first's model.
    assert "full_equal_r0.5_s1" in dict(
        (t.key, t.needs) for t in every)["full_equal_r0.25_s1"]
    # A shard's tasks are its units' runs, full models included.
    shard = tasks(study.Study(config, "/tmp/unused", shard="1/2"))
    assert {t.rate for t in shard if t.rate is not None} == {0.25}
    assert {"full_s0", "full_s1"} <= {t.key for t in shard}


def test_jobs_are_checked_and_share_the_cores(tmp_path):
    from keras_autopruner.study.jobs import worker_threads

    assert [worker_threads(j, cores=16) for j in (1, 2, 3, 16, 32)] == [
        16, 8, 5, 1, 1]
    config = study.make_config("tiny")
    for bad in (0, -2, 1.5, "2", None):
        with pytest.raises(ValueError, match="whole number of worker"):
            study.Study(config, str(tmp_path / "a"), verbose=0).run(
                jobs=bad)
    data = study.load_study_data(config)
    with pytest.raises(ValueError, match="cannot hand its data"):
        study.Study(config, str(tmp_path / "b"), verbose=0,
                    data=data).run(jobs=2)
    assert not os.listdir(tmp_path)  # refused before any folder


def test_jobs_train_the_runs_one_process_trains(tiny_study, tmp_path):
    out, _, _, _, _ = tiny_study
    config = study.make_config("tiny", methods=("full", "autopruner",
                                                "full_equal", "l1"))
    parallel = study.Study(config, str(tmp_path), verbose=0, export=False)
    parallel.run(jobs=2)
    assert sorted(parallel.ran) == sorted(
        ["full_s0", "autopruner_r0.5_s0", "full_equal_r0.5_s0",
         "l1_r0.5_s0"])
    assert os.path.exists(tmp_path / "results.md")
    # Each run seeds itself from its key, so the workers (one thread each)
    # train what the sequential study trained, up to the rounding of a
    # different thread count: over the tiny preset's 16-96 steps the losses
    # agreed to 1e-6 (AutoPruner's choice can still flip a channel, so only
    # the runs that do not depend on it are compared).
    for key in ("full_s0", "full_equal_r0.5_s0"):
        assert load(str(tmp_path), key)["loss"] == pytest.approx(
            load(out, key)["loss"], rel=1e-3)
    # A second run in processes trains nothing.
    again = study.Study(config, str(tmp_path), verbose=0, export=False)
    again.run(jobs=2)
    assert again.ran == [] and len(again.skipped) == 4
