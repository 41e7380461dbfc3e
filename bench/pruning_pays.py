"""Does pruning pay? The demo network at each MAC budget and seed.

Runs the comparison study (`keras_autopruner.study`, preset `demo` unless
`--preset` says otherwise) with all four methods: the full model,
AutoPruner (pruned to a MAC budget, stripped, fine-tuned), the uniformly
narrowed model of equal MACs and AutoPruner's widths trained from scratch,
the last two for AutoPruner's total epochs with the same learning-rate
shape. The study is resumable: pointed at the folder `make demo` wrote
(`--out runs/study_demo`), it reuses those runs and only adds the
from-scratch ones.

Printed, per rate and seed: optimizer steps to done, whether pruning
converged (codes binary before the step budget ran out), the exact kept
counts per layer and how many channels the exact choice changed from
the gates' own hard masks, the stripped model's MAC share, layers held at
`min_units`, and the accuracies; then the issue's goals, each with the
measured figure.

    .venv/bin/python bench/pruning_pays.py [--out=runs/study_demo]
"""

import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_autopruner import study as study_lib  # noqa: E402


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_enum("preset", "demo", sorted(study_lib.PRESETS),
                      "the study's settings", flag_values=fv)
    flags.DEFINE_string("out", None,
                        "study folder (default runs/study_<preset>)",
                        flag_values=fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    out = args.out or os.path.join("runs", f"study_{args.preset}")
    config = study_lib.make_config(
        args.preset, methods=("full", "autopruner", "uniform", "scratch"))
    study = study_lib.Study(config, out, verbose=1, export=False)
    study.run()
    runs = study.runs()
    by = {(r["method"], r["rate"], r["seed"]): r for r in runs}

    print("\n| rate | seed | steps to done | converged | changed by the "
          "exact choice | kept per layer | MAC share | at min_units | full "
          "| stripped | fine-tuned | uniform | scratch | epochs AP (full) |")
    print("|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|")
    gaps, full_gaps, epochs_ok, converged = {}, {}, [], []
    for rate in config.rates:
        for seed in config.seeds:
            ap = by[("autopruner", rate, seed)]
            full = by[("full", None, seed)]
            uni = by[("uniform", rate, seed)]
            scr = by[("scratch", rate, seed)]
            kept = " ".join(f"{ap['widths'][k]}/{ap['full_widths'][k]}"
                            for k in ap["full_widths"])
            print(f"| {rate:g} | {seed} | {ap['prune_steps']} | "
                  f"{'yes' if ap['converged'] else 'NO'} | "
                  f"{ap.get('changed_by_choice', '-')} | {kept} | "
                  f"{ap['mac_share']:.4f} | "
                  f"{', '.join(ap['at_min_units']) or 'none'} | "
                  f"{full['accuracy']:.4f} | {ap['accuracy_stripped']:.4f} | "
                  f"{ap['accuracy']:.4f} | {uni['accuracy']:.4f} | "
                  f"{scr['accuracy']:.4f} | {ap['own_epochs']} "
                  f"({full['epochs']}) |")
            gaps.setdefault(rate, []).append(ap["accuracy"] - uni["accuracy"])
            full_gaps.setdefault(rate, []).append(
                ap["accuracy"] - full["accuracy"])
            epochs_ok.append(ap["own_epochs"] <= full["epochs"])
            converged.append(bool(ap["converged"]))

    print("\nGoals (mean over seeds):")
    if 0.25 in full_gaps:
        g = 100 * statistics.mean(full_gaps[0.25])
        print(f"- keep 25% of MACs, fine-tuned within 0.5 pt of the full "
              f"model: {g:+.2f} pt -> {'met' if g >= -0.5 else 'MISSED'}")
    for rate, values in gaps.items():
        g = 100 * statistics.mean(values)
        spread = (100 * statistics.stdev(values) if len(values) > 1
                  else float("nan"))
        print(f"- rate {rate:g}: AutoPruner - uniform (equal MACs, epochs, "
              f"schedule) = {g:+.2f} pt (spread of the gap {spread:.2f} pt) "
              f"-> {'met' if g >= 0 else 'MISSED'}")
    print(f"- pruning + fine-tuning epochs <= full model's: "
          f"{sum(epochs_ok)}/{len(epochs_ok)} runs")
    print(f"- converged without force: {sum(converged)}/{len(converged)} "
          "runs (strip never takes force now; 'converged' = binary codes "
          "before the step budget ran out)")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
