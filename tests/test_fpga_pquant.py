"""bench/fpga_pquant.py: the MAC-matched sparsity, and a clear refusal
where PQuantML is not installed (CI does not install it)."""

import importlib
import os
import sys

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    return importlib.import_module("fpga_pquant")


def macs(sizes):
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.12])
def test_matched_sparsity_keeps_the_widest_network_within_the_rate(
        bench, rate):
    s, kept, share = bench.matched_sparsity((64, 32, 32), 16, 26, rate)
    full = macs([16, 64, 32, 32, 26])
    # PDP keeps floor((1 - s) * n) neurons of a layer of n.
    assert kept == [int((1 - s) * w + 1e-9) for w in (64, 32, 32)]
    assert share == macs([16, *kept, 26]) / full <= rate
    # The next wider network PDP can keep (a lower sparsity on the grid)
    # costs more than the rate.
    lower = s - 1e-3
    while [int((1 - lower) * w + 1e-9) for w in (64, 32, 32)] == kept:
        lower -= 1e-3
    wider = [int((1 - lower) * w + 1e-9) for w in (64, 32, 32)]
    assert macs([16, *wider, 26]) / full > rate


def test_without_pquant_the_bench_says_how_to_install_it(bench,
                                                         monkeypatch):
    # `None` in sys.modules makes `import pquant` raise ImportError.
    monkeypatch.setitem(sys.modules, "pquant", None)
    fv = flags.FlagValues()
    bench.define_flags(fv)
    fv(["fpga_pquant"])
    monkeypatch.setattr(bench, "FLAGS", fv)
    with pytest.raises(SystemExit, match="make peers"):
        bench.main([])
