"""HGQ2 alone against our pruning followed by HGQ2, in FPGA units.

For each seed and each HGQ2 EBOPs-loss weight `beta`, runs
`examples/fc_dnn_hgq.py` (without the hls4ml conversion, which the example
does): the 16-input tagger (Dense 64-32-32, ReLU) on the shipped Letter
Recognition table, trained as a float network, then either quantised and
trained with HGQ2 for the remaining epochs ("HGQ2 alone", which prunes by
driving bit-widths to 0), or pruned to `--rate` of the MACs with
AutoPruner and stripped ("ours + HGQ2": during HGQ2 training with
`--flow=qat`, the default; before it, on the float network, with
`--flow=float`). Both arms get the same epochs after the full float
training, the same constant learning rate and the same data.

It prints, per arm and beta, the mean and spread (standard deviation over
seeds) of test accuracy, EBOPs (HGQ2's count after `trace_minmax`), EBOPs
in training (HGQ2's count at the last training step, before calibration:
the basis of PQuantML's count in `bench/fpga_pquant.py`),
multiplications (kernel entries whose quantised value is not zero),
weight bits, da4ml's LUT estimate and longest latency in adder levels
(`examples/fc_dnn_hgq.py`, `da4ml_figures`; estimates, no vendor tool),
and then which (arm, beta) points are beaten on both accuracy
and EBOPs by a point of the other arm. A larger beta trades accuracy for
EBOPs, so the betas give each arm a curve; compare at matched accuracy or
matched EBOPs along it.

    .venv/bin/python bench/fpga.py
    .venv/bin/python bench/fpga.py --flow=float --seeds=0,1,2
"""

import importlib.util
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FLAGS = flags.FLAGS
ARMS = (("full_hgq", "HGQ2 alone"), ("pruned_hgq", "ours + HGQ2"))
FIGURES = ("accuracy", "ebops", "ebops_training", "multiplications",
           "weight_bits", "luts", "latency")


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    kw = {"flag_values": fv}
    flags.DEFINE_list("seeds", ["0", "1"], "seeds", **kw)
    flags.DEFINE_list("betas", ["1e-5", "3e-5"], "HGQ2 EBOPs-loss weights",
                      **kw)
    flags.DEFINE_float("rate", 0.5, "kept share of the MACs (ours)", **kw)
    flags.DEFINE_enum("flow", "qat", ["float", "qat"],
                      "ours: prune the float network then quantise, or "
                      "prune during quantisation-aware training", **kw)
    flags.DEFINE_integer("full_epochs", 20, "epochs of the full float "
                         "network", **kw)
    flags.DEFINE_integer("prune_epochs", 20, "most epochs of pruning", **kw)
    flags.DEFINE_integer("finetune_epochs", 10, "float fine-tuning epochs",
                         **kw)
    flags.DEFINE_integer("qat_epochs", 30, "HGQ2 epochs of the pruned "
                         "network (HGQ2 alone gets all the epochs after the "
                         "full float training)", **kw)
    flags.DEFINE_integer("train_examples", None, "training rows", **kw)
    flags.DEFINE_string("out", "runs/bench_fpga", "output folder", **kw)


def load_example():
    path = os.path.join(ROOT, "examples", "fc_dnn_hgq.py")
    spec = importlib.util.spec_from_file_location("fc_dnn_hgq", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summarise(results):
    """(arm, beta) -> figure -> (mean, std, n) over seeds."""
    table = {}
    for result in results:
        for arm, _ in ARMS:
            entry = table.setdefault((arm, result["beta"]), {})
            row = dict(result[arm])
            row["luts"] = row["da4ml"]["luts"]
            row["latency"] = row["da4ml"]["latency"][1]
            for figure in FIGURES:
                entry.setdefault(figure, []).append(row[figure])
    return {key: {f: (float(np.mean(v)), float(np.std(v)), len(v))
                  for f, v in entry.items()} for key, entry in table.items()}


def format_summary(summary):
    """The summary as aligned plain text, one line per (arm, beta)."""
    header = ["arm", "beta", "accuracy", "EBOPs", "EBOPs in training",
              "multiplications", "weight bits", "LUTs (da4ml)",
              "latency (adder levels)", "seeds"]
    lines = []
    names = dict(ARMS)
    for (arm, beta), entry in sorted(summary.items(),
                                     key=lambda kv: (kv[0][1], kv[0][0])):
        acc, ebops = entry["accuracy"], entry["ebops"]
        mults, bits = entry["multiplications"], entry["weight_bits"]
        trained = entry["ebops_training"]
        luts, latency = entry["luts"], entry["latency"]
        lines.append([names[arm], f"{beta:g}",
                      f"{acc[0]:.4f} ± {acc[1]:.4f}",
                      f"{ebops[0]:,.0f} ± {ebops[1]:,.0f}",
                      f"{trained[0]:,.0f} ± {trained[1]:,.0f}",
                      f"{mults[0]:,.0f} ± {mults[1]:,.0f}",
                      f"{bits[0]:,.0f} ± {bits[1]:,.0f}",
                      f"{luts[0]:,.0f} ± {luts[1]:,.0f}",
                      f"{latency[0]:.1f} ± {latency[1]:.1f}", str(acc[2])])
    widths = [max(len(r[i]) for r in [header] + lines)
              for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + lines)


def dominated(summary):
    """Lines naming each point beaten on mean accuracy and mean EBOPs."""
    names = dict(ARMS)
    lines = []
    for (arm, beta), entry in summary.items():
        for (other, obeta), oentry in summary.items():
            if other == arm:
                continue
            if (oentry["accuracy"][0] >= entry["accuracy"][0]
                    and oentry["ebops"][0] <= entry["ebops"][0]):
                lines.append(
                    f"{names[arm]} at beta {beta:g} is beaten by "
                    f"{names[other]} at beta {obeta:g}: accuracy "
                    f"{oentry['accuracy'][0]:.4f} >= "
                    f"{entry['accuracy'][0]:.4f}, EBOPs "
                    f"{oentry['ebops'][0]:,.0f} <= {entry['ebops'][0]:,.0f}")
    return lines or ["no point is beaten on both accuracy and EBOPs"]


def reusable(finished, wanted):
    """Whether a finished run's results.json matches `wanted` settings and
    holds every figure this bench reports."""
    if any(finished.get(key) != value for key, value in wanted.items()):
        return False
    return all("da4ml" in (finished.get(arm) or {}) for arm, _ in ARMS)


def main(argv):
    del argv
    try:
        import hgq  # noqa: F401
    except ImportError:
        raise SystemExit("bench/fpga.py needs hgq2: pip install "
                         "'keras_autopruner[fpga]'")
    example = load_example()
    os.makedirs(FLAGS.out, exist_ok=True)
    results = []
    for beta in (float(b) for b in FLAGS.betas):
        for seed in (int(s) for s in FLAGS.seeds):
            print(f"[fpga] beta {beta:g}, seed {seed}", flush=True)
            out = os.path.join(FLAGS.out, f"beta{beta:g}_seed{seed}")
            done = os.path.join(out, "results.json")
            wanted = {"rate": FLAGS.rate, "flow": FLAGS.flow, "beta": beta,
                      "seed": seed, "train_examples": FLAGS.train_examples,
                      "epochs": {"full": FLAGS.full_epochs,
                                 "prune": FLAGS.prune_epochs,
                                 "finetune": FLAGS.finetune_epochs,
                                 "qat": FLAGS.qat_epochs}}
            if os.path.exists(done):
                with open(done) as f:
                    finished = json.load(f)
                if reusable(finished, wanted):
                    # A rerun in the same folder reuses the runs it
                    # finished with the same settings.
                    results.append(finished)
                    print(example.format_table(finished), flush=True)
                    continue
                print(f"[fpga] {done} was run with other settings (or "
                      "without da4ml's figures): running it again",
                      flush=True)
            result = example.run(
                out=out,
                rate=FLAGS.rate, flow=FLAGS.flow,
                full_epochs=FLAGS.full_epochs,
                prune_epochs=FLAGS.prune_epochs,
                finetune_epochs=FLAGS.finetune_epochs,
                qat_epochs=FLAGS.qat_epochs, beta=beta,
                train_examples=FLAGS.train_examples, hls4ml=False,
                da4ml=True, seed=seed, verbose=0)
            results.append(result)
            print(example.format_table(result), flush=True)
    summary = summarise(results)
    with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print()
    after = FLAGS.prune_epochs + FLAGS.finetune_epochs + FLAGS.qat_epochs
    print(f"rate {FLAGS.rate:g}, flow {FLAGS.flow}; epochs after the full "
          f"float training: {after} for each arm; mean ± std over seeds")
    print(format_summary(summary))
    print()
    for line in dominated(summary):
        print(line)


if __name__ == "__main__":
    define_flags()
    app.run(main)
