"""The study's two plots: accuracy against MACs, kept filters per layer."""

import numpy as np

from keras_autopruner.study.config import METHOD_LABELS, METHODS


def plot_accuracy_vs_flops(table, path):
    """Accuracy against MACs, one line per method, seed spread as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = {"autopruner": "o", "full_equal": "P", "l1": "v", "l2": "<",
               "bn": ">", "taylor": "D", "random": "d", "scratch": "s",
               "uniform": "^", "magnitude": "x", "autopruner_stop": "*",
               "autopruner_folded": "h",
               "l1_iterative": "X"}
    for method in METHODS:
        rows = table[table["method"] == method].sort_values("flops")
        if rows.empty:
            continue
        err = 100 * rows["accuracy_std"].fillna(0.0)
        if method == "full":
            ax.axhline(100 * rows["accuracy"].iloc[0], color="grey", ls="--",
                       lw=1)
            ax.errorbar(rows["flops"] / 1e6, 100 * rows["accuracy"], yerr=err,
                        fmt="*", ms=12, color="black",
                        label=METHOD_LABELS[method])
            continue
        ax.errorbar(rows["flops"] / 1e6, 100 * rows["accuracy"], yerr=err,
                    marker=markers.get(method, "."), capsize=3,
                    label=METHOD_LABELS[method])
        if method == "autopruner":
            for _, r in rows.iterrows():
                ax.annotate(f"r={r['rate']:g}", (r["flops"] / 1e6,
                                                 100 * r["accuracy"]),
                            textcoords="offset points", xytext=(4, -10),
                            fontsize=8)
    ax.set_xlabel("MACs per example (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kept_profile(runs, path, target_lines=True):
    """Per-layer kept fraction of AutoPruner's models, a bar group per rate.

    `target_lines` draws each rate as a dotted line: the per-layer budget's
    target for every layer (a MAC budget's rate is not a per-layer one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = [r for r in runs if r["method"] == "autopruner"]
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    if not ap:
        ax.text(0.5, 0.5, "no AutoPruner run", ha="center")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    layers = list(ap[0]["full_widths"])
    rates = sorted({r["rate"] for r in ap})
    width = 0.8 / len(rates)
    for i, rate in enumerate(rates):
        mine = [r for r in ap if r["rate"] == rate]
        kept = np.mean([[r["widths"][n] / r["full_widths"][n] for n in layers]
                        for r in mine], axis=0)
        xs = np.arange(len(layers)) + (i - (len(rates) - 1) / 2) * width
        bars = ax.bar(xs, kept, width, label=f"target {rate:g}")
        if target_lines:
            ax.hlines(rate, xs[0] - width, xs[-1] + width, colors=bars[0]
                      .get_facecolor(), linestyles=":", lw=1)
        counts = np.mean([[r["widths"][n] for n in layers] for r in mine],
                         axis=0)
        for x, k, n in zip(xs, kept, counts):
            ax.text(x, k + 0.01, f"{n:.0f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels([f"{n}\n({ap[0]['full_widths'][n]})" for n in layers],
                       fontsize=8)
    ax.set_ylabel("kept fraction of filters / neurons")
    ax.set_ylim(0, 1.1)
    ax.set_title("Filters AutoPruner kept, per layer (numbers: kept count)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
