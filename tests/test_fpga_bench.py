"""bench/fpga.py: which finished runs it reuses, and the figures it sums."""

import copy
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    return importlib.import_module("fpga")


def row(accuracy, luts, latency):
    return {"accuracy": accuracy, "ebops": 1000, "ebops_training": 1010,
            "multiplications": 50, "weight_bits": 400,
            "da4ml": {"luts": luts, "latency": latency, "rows": 10,
                      "bit_exact": 10}}


SETTINGS = {"rate": 0.5, "flow": "qat", "beta": 1e-5, "seed": 0,
            "train_examples": None,
            "epochs": {"full": 20, "prune": 20, "finetune": 10, "qat": 30}}


def finished(**changes):
    result = copy.deepcopy(SETTINGS)
    result.update(full_hgq=row(0.9, 5000, [10, 20]),
                  pruned_hgq=row(0.88, 3000, [8, 18]))
    result.update(changes)
    return result


def test_a_finished_run_is_reused_only_with_the_same_settings(bench):
    assert bench.reusable(finished(), SETTINGS)
    assert not bench.reusable(finished(beta=3e-5), SETTINGS)
    assert not bench.reusable(finished(flow="float"), SETTINGS)
    other = finished()
    other["epochs"]["qat"] = 5
    assert not bench.reusable(other, SETTINGS)
    # A run from before da4ml's figures lacks what the table reports.
    old = finished()
    del old["pruned_hgq"]["da4ml"]
    assert not bench.reusable(old, SETTINGS)


def test_the_summary_holds_da4ml_luts_and_longest_latency(bench):
    results = [finished(seed=0),
               finished(seed=1, pruned_hgq=row(0.86, 2000, [8, 16]))]
    summary = bench.summarise(results)
    luts, n = summary[("pruned_hgq", 1e-5)]["luts"][0::2]
    assert (luts, n) == (2500.0, 2)
    assert summary[("pruned_hgq", 1e-5)]["latency"][0] == 17.0
    assert summary[("full_hgq", 1e-5)]["luts"][:2] == (5000.0, 0.0)
    text = bench.format_summary(summary)
    assert "LUTs (da4ml)" in text and "2,500 ± 500" in text
