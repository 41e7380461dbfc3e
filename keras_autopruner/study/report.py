"""The study's tables and findings: runs.csv, results.csv, results.md."""

import math
import os

from keras_autopruner.study.config import METHOD_LABELS, METHODS
from keras_autopruner.study.plots import (plot_accuracy_vs_flops,
                                          plot_kept_profile)


# Two-sided 95% quantiles of Student's t by degrees of freedom; between
# entries the next smaller df is used (a wider, conservative interval), so
# the report needs no scipy.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df):
    """The two-sided 95% quantile of Student's t with `df` >= 1."""
    return _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.960


def t_interval(values):
    """Mean and 95% t-interval of `values` (over seeds).

    Returns:
        `(mean, low, high)`; low and high are NaN for fewer than 2 values.

    Example:

    >>> mean, low, high = t_interval([0.01, 0.02, 0.03])
    >>> round(mean, 3), round(low, 4), round(high, 4)
    (0.02, -0.0048, 0.0448)
    """
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def runs_frame(runs):
    """One row per run, the columns of `runs.csv`."""
    import pandas as pd

    rows = []
    for r in runs:
        rows.append({
            "method": r["method"], "rate": r["rate"], "seed": r["seed"],
            "accuracy": r["accuracy"], "loss": r["loss"],
            "accuracy_cut": r.get("accuracy_cut"),
            "params": r["params"], "flops": r["flops"],
            "latency_ms": r.get("latency_ms"),
            "throughput": r.get("throughput"), "epochs": r["epochs"],
            "own_epochs": r["own_epochs"], "train_s": r.get("train_s"),
            "prune_epochs": r.get("prune_epochs"),
            "prune_steps": r.get("prune_steps"),
            "converged": r.get("converged"),
            "mac_share": r.get("mac_share"),
            "at_min_units": " ".join(r.get("at_min_units") or []),
            "changed_by_choice": r.get("changed_by_choice"),
            "accuracy_gated_hard": r.get("accuracy_gated_hard"),
            "accuracy_stripped": r.get("accuracy_stripped"),
            "folded_gates": r.get("folded_gates"),
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
    for column in ("accuracy_cut", "latency_ms", "throughput"):
        if column not in df:
            df[column] = float("nan")
        df[column] = pd.to_numeric(df[column], errors="coerce")
    full = df[df["method"] == "full"]
    full_latency = full["latency_ms"].median() if len(full) else float("nan")
    full_throughput = (full["throughput"].median() if len(full)
                       else float("nan"))
    rows = []
    for (method, rate), g in df.groupby(["method", "rate"], sort=False):
        acc = g["accuracy"]
        rows.append({
            "method": method, "rate": rate, "seeds": len(g),
            "accuracy": acc.mean(),
            "accuracy_std": acc.std(ddof=1) if len(g) > 1 else float("nan"),
            "accuracy_min": acc.min(), "accuracy_max": acc.max(),
            "accuracy_cut": g["accuracy_cut"].mean(),
            "params": g["params"].mean(), "flops": g["flops"].mean(),
            "latency_ms": g["latency_ms"].median(),
            "throughput": g["throughput"].median(),
            "speedup_latency": full_latency / g["latency_ms"].median(),
            "speedup_throughput": (g["throughput"].median()
                                   / full_throughput),
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


def paired_frame(runs_df):
    """AutoPruner minus each other method, paired by seed, per rate.

    The full model (no rate) is paired with AutoPruner at every rate.
    Columns: `rate`, `method`, `seeds` (pairs), `diff` (mean of
    AutoPruner's accuracy minus the method's, as a fraction), `low`,
    `high` (its 95% t-interval over the seeds; NaN with one pair) and
    `verdict`: `"beats"` (interval above 0), `"loses to"` (below 0),
    `"ties with"` (it holds 0) or `"one seed"` (no interval).
    """
    import pandas as pd

    df = runs_df
    ap = df[df["method"] == "autopruner"]
    rows = []
    for rate in sorted(set(ap["rate"]), reverse=True):
        mine = ap[ap["rate"] == rate].set_index("seed")["accuracy"]
        for method in METHODS:
            if method == "autopruner":
                continue
            them = df[(df["method"] == method)
                      & ((df["rate"] == rate) if method != "full"
                         else df["rate"].isna())]
            them = them.set_index("seed")["accuracy"]
            seeds = sorted(set(mine.index) & set(them.index))
            if not seeds:
                continue
            diffs = [mine[s] - them[s] for s in seeds]
            mean, low, high = t_interval(diffs)
            if len(seeds) < 2:
                verdict = "one seed"
            elif low > 0:
                verdict = "beats"
            elif high < 0:
                verdict = "loses to"
            else:
                verdict = "ties with"
            rows.append({"rate": rate, "method": method,
                         "seeds": len(seeds), "diff": mean, "low": low,
                         "high": high, "verdict": verdict})
    return pd.DataFrame(rows, columns=["rate", "method", "seeds", "diff",
                                       "low", "high", "verdict"])


def findings(table, paired=None):
    """Plain sentences comparing AutoPruner with each baseline, per rate.

    Verdicts follow the paired 95% interval over seeds (`paired_frame`),
    never the means alone.
    """
    lines = []
    full = table[table["method"] == "full"]
    for rate in sorted(table.loc[table["method"] == "autopruner", "rate"],
                       reverse=True):
        at = table[table["rate"] == rate].set_index("method")
        ap = at.loc["autopruner"]
        if paired is not None and len(paired):
            for _, p in paired[paired["rate"] == rate].iterrows():
                other = p["method"]
                o = (full.iloc[0] if other == "full" else at.loc[other])
                d = 100 * p["diff"]
                head = (f"rate {rate:g}: AutoPruner {p['verdict']} "
                        f"{METHOD_LABELS[other]}: "
                        f"{100 * ap['accuracy']:.2f}% vs "
                        f"{100 * o['accuracy']:.2f}%, paired difference "
                        f"{d:+.2f} pt")
                if p["verdict"] == "one seed":
                    head = (f"rate {rate:g}: AutoPruner vs "
                            f"{METHOD_LABELS[other]}: "
                            f"{100 * ap['accuracy']:.2f}% vs "
                            f"{100 * o['accuracy']:.2f}% ({d:+.2f} pt) on "
                            "one seed: no interval, so no verdict")
                else:
                    head += (f", 95% interval [{100 * p['low']:+.2f}, "
                             f"{100 * p['high']:+.2f}] over "
                             f"{int(p['seeds'])} seeds")
                    if p["seeds"] == 2:
                        head += (" (2 seeds: t has 1 degree of freedom, so "
                                 "the interval is wide)")
                lines.append(head + f"; MACs {ap['flops'] / 1e6:.3f} M vs "
                             f"{o['flops'] / 1e6:.3f} M.")
        if len(full):
            f = full.iloc[0]
            line = (f"rate {rate:g}: AutoPruner keeps "
                    f"{100 * ap['params'] / f['params']:.0f}% of the full "
                    f"model's parameters and "
                    f"{100 * ap['flops'] / f['flops']:.0f}% of its MACs; "
                    f"pruning converged in {int(ap['converged'])} of "
                    f"{int(ap['seeds'])} seeds; pruning + fine-tuning took "
                    f"{ap['own_epochs']:g} epochs on average, "
                    f"{ap['epochs']:g} in all (the full model "
                    f"{f['epochs']:g}).")
            if f["epochs"] < ap["epochs"]:
                line += (" The full model trained fewer epochs, so it is no "
                         "upper bound; full_equal (the full model for "
                         "AutoPruner's total epochs) is.")
            lines.append(line)
    return lines


def _fmt(value, spec, missing="-"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def markdown_table(table):
    """The results table as Markdown."""
    header = ["method", "rate", "seeds", "accuracy %", "spread (pt)",
              "after cut %", "params", "MACs (M)", "latency b=1 (ms)",
              "throughput b=256 (ex/s)", "speed-up b=1 / b=256", "epochs"]
    out = ["| " + " | ".join(header) + " |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        if r["seeds"] > 1:
            spread = (f"±{100 * r['accuracy_std']:.2f} "
                      f"[{100 * r['accuracy_min']:.1f}-"
                      f"{100 * r['accuracy_max']:.1f}]")
        else:
            spread = "n/a (1 seed)"
        cut = r.get("accuracy_cut", float("nan"))
        speedup = (f"{_fmt(r.get('speedup_latency'), '.2f')}x / "
                   f"{_fmt(r.get('speedup_throughput'), '.2f')}x")
        out.append("| " + " | ".join([
            METHOD_LABELS[r["method"]],
            "-" if r["method"] == "full" else f"{r['rate']:g}",
            str(int(r["seeds"])), f"{100 * r['accuracy']:.2f}", spread,
            _fmt(None if cut is None else 100 * cut, ".2f"),
            f"{int(round(r['params'])):,}", f"{r['flops'] / 1e6:.3f}",
            _fmt(r.get("latency_ms"), ".3f"),
            _fmt(r.get("throughput"), ",.0f"), speedup,
            f"{r['epochs']:g}",
        ]) + " |")
    return "\n".join(out)


def paired_table(paired):
    """The paired differences as Markdown."""
    out = ["| rate | AutoPruner minus | seeds | mean (pt) | 95% interval "
           "(pt) | verdict |", "|---:|---|---:|---:|---|---|"]
    for _, p in paired.iterrows():
        interval = ("n/a (1 seed)" if p["seeds"] < 2 else
                    f"[{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]")
        out.append(f"| {p['rate']:g} | {METHOD_LABELS[p['method']]} | "
                   f"{int(p['seeds'])} | {100 * p['diff']:+.2f} | "
                   f"{interval} | "
                   + ("no verdict (1 seed)" if p["verdict"] == "one seed"
                      else f"AutoPruner {p['verdict']}") + " |")
    return "\n".join(out)


def write_report(runs, config, out, data_name="", model_name=None):
    """Write runs.csv, results.csv, paired.csv, results.md and the plots.

    Returns:
        The results table (pandas DataFrame).
    """
    runs_df = runs_frame(runs)
    runs_df.to_csv(os.path.join(out, "runs.csv"), index=False)
    table = results_frame(runs_df)
    table.to_csv(os.path.join(out, "results.csv"), index=False)
    paired = paired_frame(runs_df)
    paired.to_csv(os.path.join(out, "paired.csv"), index=False)
    lines = [
        "# AutoPruner comparison study",
        "",
        f"Model `{model_name or config.model}` on {data_name}; rates "
        f"{', '.join(f'{r:g}' for r in config.rates)}; seeds "
        f"{', '.join(str(s) for s in config.seeds)}. Full model "
        f"{config.full_epochs} epochs; AutoPruner's pruning phase is "
        f"{config.prune_epochs} epochs at the training rate (schedule "
        f"`{config.schedule}`, objective `{config.objective}`"
        + (f" by {config.weighting}" if config.objective == "global" else "")
        + f"; pushing for at most {config.prune_share:.0%} of its steps, "
        "then the exact choice, then the chosen network trained on), then "
        f"it fine-tunes {config.finetune_epochs} at learning rate "
        f"{config.finetune_learning_rate:g}. The criteria's cuts of the "
        "trained full model fine-tune for AutoPruner's epochs after full "
        "training; the networks from scratch (full_equal, scratch, "
        "uniform) train for AutoPruner's total epochs; every method's last "
        f"{config.finetune_epochs} epochs run at that rate. Accuracy on "
        "the test split; 'after cut' is the accuracy right after the cut "
        "(AutoPruner: right after strip), before fine-tuning; MACs per "
        "example; latency is the median batch-1 CPU call, throughput the "
        "median batch-256 call, all models timed side by side; speed-up "
        "is against the full model.",
        "",
        markdown_table(table),
        "",
        "## Paired differences",
        "",
        "AutoPruner's accuracy minus each method's, seed by seed; mean and "
        "95% t-interval over the seeds. AutoPruner beats a method when the "
        "interval lies above 0, loses to it when below, ties when it holds "
        "0.",
        "",
        paired_table(paired),
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {line}" for line in findings(table, paired)]
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
