"""The study's tables and findings: runs.csv, results.csv, results.md."""

import math
import os

from keras_autopruner.study.config import METHOD_LABELS, METHODS
from keras_autopruner.study.plots import (plot_accuracy_vs_flops,
                                          plot_kept_profile)


def runs_frame(runs):
    """One row per run, the columns of `runs.csv`."""
    import pandas as pd

    rows = []
    for r in runs:
        rows.append({
            "method": r["method"], "rate": r["rate"], "seed": r["seed"],
            "accuracy": r["accuracy"], "loss": r["loss"],
            "params": r["params"], "flops": r["flops"],
            "latency_ms": r.get("latency_ms"), "epochs": r["epochs"],
            "own_epochs": r["own_epochs"], "train_s": r.get("train_s"),
            "prune_epochs": r.get("prune_epochs"),
            "prune_steps": r.get("prune_steps"),
            "converged": r.get("converged"),
            "mac_share": r.get("mac_share"),
            "at_min_units": " ".join(r.get("at_min_units") or []),
            "changed_by_choice": r.get("changed_by_choice"),
            "accuracy_gated_hard": r.get("accuracy_gated_hard"),
            "accuracy_stripped": r.get("accuracy_stripped"),
            "factor": r.get("factor"),
            "widths": " ".join(str(w) for w in r["widths"].values()),
            "notes": "; ".join(r.get("notes", [])),
        })
    return pd.DataFrame(rows)


def results_frame(runs_df):
    """Mean and spread over seeds, one row per (method, rate)."""
    import pandas as pd

    order = {m: i for i, m in enumerate(METHODS)}
    df = runs_df.copy()
    df["rate"] = df["rate"].fillna(1.0)
    rows = []
    for (method, rate), g in df.groupby(["method", "rate"], sort=False):
        acc = g["accuracy"]
        rows.append({
            "method": method, "rate": rate, "seeds": len(g),
            "accuracy": acc.mean(),
            "accuracy_std": acc.std(ddof=1) if len(g) > 1 else float("nan"),
            "accuracy_min": acc.min(), "accuracy_max": acc.max(),
            "params": g["params"].mean(), "flops": g["flops"].mean(),
            "latency_ms": g["latency_ms"].median(),
            "epochs": g["epochs"].mean(),
            "own_epochs": g["own_epochs"].mean(),
            "train_s": g["train_s"].sum(),
            "converged": (None if method != "autopruner"
                          else int(g["converged"].astype(bool).sum())),
        })
    table = pd.DataFrame(rows)
    table["_order"] = table["method"].map(order)
    table = table.sort_values(["rate", "_order"], ascending=[False, True])
    return table.drop(columns="_order").reset_index(drop=True)


def findings(table):
    """Plain sentences comparing AutoPruner with each baseline, per rate."""
    lines = []
    full = table[table["method"] == "full"]
    full_acc = float(full["accuracy"].iloc[0]) if len(full) else None
    for rate in sorted(table.loc[table["method"] == "autopruner", "rate"]):
        at = table[table["rate"] == rate].set_index("method")
        ap = at.loc["autopruner"]
        for other in ("scratch", "uniform", "magnitude"):
            if other not in at.index:
                continue
            o = at.loc[other]
            diff = 100 * (ap["accuracy"] - o["accuracy"])
            spread = 100 * _pooled_std(ap, o)
            if math.isnan(spread):
                verdict = ("beats" if diff > 0 else "does not beat")
                caveat = (" (one seed: no spread known, so small gaps may "
                          "be noise)")
            elif abs(diff) <= spread:
                verdict, caveat = "ties with", (
                    f" (gap within the seed spread of {spread:.2f} pt)")
            else:
                verdict = "beats" if diff > 0 else "does not beat"
                caveat = f" (seed spread {spread:.2f} pt)"
            lines.append(
                f"rate {rate:g}: AutoPruner {verdict} "
                f"{METHOD_LABELS[other]}: {100 * ap['accuracy']:.2f}% vs "
                f"{100 * o['accuracy']:.2f}% ({diff:+.2f} pt){caveat}; MACs "
                f"{ap['flops'] / 1e6:.2f} M vs {o['flops'] / 1e6:.2f} M.")
        if full_acc is not None:
            f = full.iloc[0]
            gap = 100 * (ap["accuracy"] - full_acc)
            line = (f"rate {rate:g}: AutoPruner is {gap:+.2f} pt from the "
                    f"full model with {100 * ap['params'] / f['params']:.0f}% "
                    f"of its parameters and "
                    f"{100 * ap['flops'] / f['flops']:.0f}% of its MACs; "
                    f"pruning converged in {int(ap['converged'])} of "
                    f"{int(ap['seeds'])} seeds; pruning + fine-tuning took "
                    f"{ap['own_epochs']:g} epochs on average, the full "
                    f"model's training {f['epochs']:g}.")
            if gap > 0 and f["epochs"] < ap["epochs"]:
                # Not a sign that pruning helps: the others trained longer.
                line += (f" The full model trained {f['epochs']:g} epochs, "
                         f"AutoPruner's {ap['epochs']:g} in all, so it is no "
                         "upper bound here.")
            lines.append(line)
    return lines


def _pooled_std(a, b):
    if a["seeds"] < 2 or b["seeds"] < 2:
        return float("nan")
    return math.sqrt(a["accuracy_std"] ** 2 / a["seeds"]
                     + b["accuracy_std"] ** 2 / b["seeds"])


def markdown_table(table):
    """The results table as Markdown."""
    header = ["method", "rate", "seeds", "accuracy %", "spread (pt)",
              "params", "MACs (M)", "latency (ms)", "epochs"]
    out = ["| " + " | ".join(header) + " |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        if r["seeds"] > 1:
            spread = (f"±{100 * r['accuracy_std']:.2f} "
                      f"[{100 * r['accuracy_min']:.1f}-"
                      f"{100 * r['accuracy_max']:.1f}]")
        else:
            spread = "n/a (1 seed)"
        ms = r["latency_ms"]
        latency = "-" if ms is None or math.isnan(ms) else f"{ms:.3f}"
        out.append("| " + " | ".join([
            METHOD_LABELS[r["method"]],
            "-" if r["method"] == "full" else f"{r['rate']:g}",
            str(int(r["seeds"])), f"{100 * r['accuracy']:.2f}", spread,
            f"{int(round(r['params'])):,}", f"{r['flops'] / 1e6:.3f}",
            latency, f"{r['epochs']:g}",
        ]) + " |")
    return "\n".join(out)


def write_report(runs, config, out, data_name=""):
    """Write runs.csv, results.csv, results.md and the two plots.

    Returns:
        The results table (pandas DataFrame).
    """
    runs_df = runs_frame(runs)
    runs_df.to_csv(os.path.join(out, "runs.csv"), index=False)
    table = results_frame(runs_df)
    table.to_csv(os.path.join(out, "results.csv"), index=False)
    lines = [
        "# AutoPruner comparison study",
        "",
        f"Model `{config.model}` on {data_name}; rates "
        f"{', '.join(f'{r:g}' for r in config.rates)}; seeds "
        f"{', '.join(str(s) for s in config.seeds)}. Full model "
        f"{config.full_epochs} epochs; AutoPruner prunes for at most "
        f"{config.prune_epochs} epochs (schedule `{config.schedule}`, "
        f"objective `{config.objective}`"
        + (f" by {config.weighting}" if config.objective == "global" else "")
        + f"), then fine-tunes {config.finetune_epochs} at learning rate "
        f"{config.finetune_learning_rate:g}; the baselines train for "
        "AutoPruner's total epochs, the last "
        f"{config.finetune_epochs} at that rate too. Accuracy on the test "
        "split; MACs per example; "
        "latency is the median batch-1 CPU call, all models timed side by "
        "side.",
        "",
        markdown_table(table),
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {line}" for line in findings(table)]
    if "magnitude" in set(table["method"]):
        lines += ["- magnitude pruning is unstructured: its params column "
                  "counts non-zero weights, its model is stored and run "
                  "dense, so its MACs and latency are the full model's."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_accuracy_vs_flops(table, os.path.join(out, "accuracy_vs_flops.png"))
    plot_kept_profile(runs, os.path.join(out, "kept_profile.png"),
                      target_lines=config.objective == "layer")
    return table
