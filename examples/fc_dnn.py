"""Neuron-level pruning of a fully connected tagger on tabular data.

The network is the kind used for jet flavour tagging: Dense layers, each
followed by batch normalization, ReLU and dropout, on a table of
high-level features. AutoPruner removes neurons: a gate behind every hidden
layer learns which of them the classifier needs.

By default the data is the UCI Letter Recognition table shipped with the
package (16 features, 26 classes, no download). Point `--data` at your own
CSV (or `.npz`/`.npy`) and name the label column with `--label`, e.g. a
jet-tagging table:

    python examples/fc_dnn.py --data_path=jets.csv.gz --label=flavour

The script trains the full network, prunes it, strips it, fine-tunes it and
prints, per layer, the neurons the gate kept, the neurons `strip` kept, and
what the layer-collapse policy did (a layer whose gate keeps no neuron would
vanish; `--on_collapse=keep_best` keeps its best-scoring `--min_units`
neurons instead, `raise` stops). Outputs go to `--out`: `layers.csv`,
`results.json`, the pruning report and the compact SavedModel.
"""

import json
import os
import sys
import time


def run(data_path=None, label=None, out="runs/fc_dnn", rate=0.5,
        objective="global", min_units=1, on_collapse="keep_best",
        train_examples=None, test_examples=None, full_epochs=10,
        prune_epochs=30,
        finetune_epochs=5, batch_size=256, learning_rate=1e-3, seed=0,
        verbose=1, export=True):
    """Train, prune, strip and fine-tune `fc_dnn`; write and return a report.

    Args:
        data_path: a CSV/`.npz`/`.npy` file (see `load_tabular`), or None
            for the shipped Letter Recognition table.
        label: the label column (name for CSV, index for `.npy`).
        out: output folder.
        rate: target kept fraction of neurons.
        objective: `"global"` (one budget over all layers, so layers keep
            different fractions) or `"layer"` (every layer keeps `rate`).
        min_units: fewest neurons a gate may keep.
        on_collapse: `strip`'s layer-collapse policy, `"keep_best"` or
            `"raise"`.
        train_examples: use only the first this many training rows.
        test_examples: use only the first this many test rows.
        full_epochs: epochs for the full network.
        prune_epochs: most epochs of pruning.
        finetune_epochs: epochs of fine-tuning after `strip`.
        batch_size: batch size.
        learning_rate: Adam's learning rate.
        seed: random seed.
        verbose: 0 silent, 1 a line per epoch, 2 Keras progress bars.
        export: write the compact SavedModel.

    Returns:
        A dict with the accuracies, sizes and the per-layer table.
    """
    import keras

    import keras_autopruner as kap
    from keras_autopruner import models
    from keras_autopruner.datasets import load_tabular
    from keras_autopruner.gate import gates_of

    start = time.time()
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(seed)
    (x, y), (xt, yt), class_names = load_tabular(data_path, label=label,
                                               seed=seed)
    x, y = x[:train_examples], y[:train_examples]
    xt, yt = xt[:test_examples], yt[:test_examples]
    say = print if verbose else (lambda *a, **k: None)
    say(f"[fc_dnn] {len(x)} train / {len(xt)} test rows, {x.shape[1]} "
        f"features, {len(class_names)} classes")

    def compile_(model):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=False)

    def fit(model, n, callbacks=()):
        return model.fit(x, y, batch_size=batch_size, epochs=n,
                         validation_data=(xt, yt), callbacks=list(callbacks),
                         verbose={0: 0, 1: 2}.get(verbose, 1)).history

    def accuracy(model):
        return float(model.evaluate(xt, yt, batch_size=batch_size,
                                    verbose=0)[1])

    full = models.fc_dnn(input_dim=x.shape[1], num_classes=len(class_names))
    compile_(full)
    say(f"[fc_dnn] training the full network ({full_epochs} epochs)...")
    fit(full, full_epochs)
    full_acc = accuracy(full)

    gated = kap.add_gates(full, target_rate=rate, min_units=min_units)
    compile_(gated)
    callback = kap.AutoPrunerCallback(objective=objective,
                                      stop_when_done=True)
    say(f"[fc_dnn] pruning to {rate:g} of the neurons ({objective} budget, "
        f"at most {prune_epochs} epochs)...")
    prune_history = fit(gated, prune_epochs, [callback])
    gate_kept = {g.name[:-len("_gate")]: int(g.mask().sum())
                 for g in gates_of(gated)}
    gate_min = {g.name[:-len("_gate")]: g.min_units for g in gates_of(gated)}
    # The callback always ends with an exact choice (at the latest when fit
    # returns), so strip never needs force.
    compact = kap.strip(gated, on_collapse=on_collapse)
    converged = callback.result["reason"] == "done"
    compile_(compact)
    stripped_acc = accuracy(compact)
    say(f"[fc_dnn] fine-tuning the compact network ({finetune_epochs} "
        "epochs)...")
    fit(compact, finetune_epochs)
    final_acc = accuracy(compact)

    after = models.widths_of(compact)
    before = models.widths_of(full)
    rows = []
    for layer_name, units in before.items():
        if layer_name not in gate_kept:
            continue  # The output layer is never gated.
        by_gate, kept = gate_kept[layer_name], after[layer_name]
        if by_gate == 0:
            policy = (f"collapse: gate kept 0, {on_collapse} kept "
                      f"{kept} best-scoring")
        elif kept > by_gate:
            policy = f"{kept - by_gate} brought back"
        else:
            policy = "none needed"
        rows.append({"layer": layer_name, "neurons": units,
                     "kept_by_gate": by_gate, "kept_after_strip": kept,
                     "kept_fraction": kept / units,
                     "min_units": gate_min[layer_name],
                     "collapse_policy": policy})

    report = compact.pruning_report
    result = {
        "data": data_path or "UCI Letter Recognition (shipped)",
        "rate": rate, "objective": objective, "on_collapse": on_collapse,
        "converged": converged, "prune_steps": callback.result["steps"],
        "prune_epochs": len(prune_history.get("loss", [])),
        "accuracy_full": full_acc, "accuracy_stripped": stripped_acc,
        "accuracy_finetuned": final_acc,
        "params_full": kap.count_params(full),
        "params_compact": kap.count_params(compact),
        "macs_full": kap.count_flops(full).total,
        "macs_compact": kap.count_flops(compact).total,
        "layers": rows, "notes": list(report.notes),
    }
    _write_layers_csv(rows, os.path.join(out, "layers.csv"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "pruning_report.md"), "w") as f:
        f.write(report.to_markdown())
    if export:
        result["export"] = os.path.abspath(os.path.join(out, "savedmodel"))
        kap.export(compact, result["export"], overwrite=True)

    say("")
    say(format_layers(rows))
    say("")
    if not any(r["kept_by_gate"] == 0 for r in rows):
        say(f"Layer-collapse policy ({on_collapse}): not triggered; every "
            f"gate kept at least one neuron (min_units={min_units}).")
    for note in report.notes:
        say(f"Note: {note}")
    if not converged:
        say(f"Pruning did not converge in {prune_epochs} epochs; the exact "
            "choice was made from the gates' scores when fit returned.")
    say(f"Accuracy: full {full_acc:.4f}, stripped {stripped_acc:.4f}, "
        f"fine-tuned {final_acc:.4f}")
    say(f"Parameters: {result['params_full']:,} -> "
        f"{result['params_compact']:,}; MACs: {result['macs_full']:,} -> "
        f"{result['macs_compact']:,}")
    say(f"Outputs in {os.path.abspath(out)} ({time.time() - start:.0f} s)")
    return result


def format_layers(rows):
    """The per-layer table as aligned plain text."""
    header = ["layer", "neurons", "gate kept", "after strip", "kept",
              "collapse policy"]
    lines = [[r["layer"], str(r["neurons"]), str(r["kept_by_gate"]),
              str(r["kept_after_strip"]), f"{r['kept_fraction']:.0%}",
              r["collapse_policy"]] for r in rows]
    widths = [max(len(row[i]) for row in [header] + lines)
              for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths))
                     .rstrip() for row in [header] + lines)


def _write_layers_csv(rows, path):
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


def main(argv):
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # TensorFlow's SavedModel writer logs every step at INFO through absl.
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    label = f.label
    if (label is not None and f.data_path
            and f.data_path.lower().endswith(".npy")):
        label = int(label)
    run(data_path=f.data_path, label=label, out=f.out, rate=f.rate,
        objective=f.objective, min_units=f.min_units,
        on_collapse=f.on_collapse, train_examples=f.train_examples,
        test_examples=f.test_examples, full_epochs=f.full_epochs,
        prune_epochs=f.prune_epochs, finetune_epochs=f.finetune_epochs,
        batch_size=f.batch_size, learning_rate=f.learning_rate, seed=f.seed,
        verbose=f.verbose, export=f.export)


def define_flags(fv=None):
    """Define the example's flags in `fv` (absl's global `FLAGS` if None)."""
    from absl import flags

    fv = flags.FLAGS if fv is None else fv
    kw = {"flag_values": fv}
    flags.DEFINE_string("data_path", None, "CSV/.npz/.npy table; default: "
                        "the shipped UCI Letter Recognition data", **kw)
    flags.DEFINE_string("label", None, "label column (index for .npy)", **kw)
    flags.DEFINE_string("out", "runs/fc_dnn", "output folder", **kw)
    flags.DEFINE_float("rate", 0.5, "target kept fraction of neurons", **kw)
    flags.DEFINE_enum("objective", "global", ["global", "layer"],
                      "one budget over all layers, or one per layer", **kw)
    flags.DEFINE_integer("min_units", 1, "fewest neurons a layer may keep",
                         **kw)
    flags.DEFINE_enum("on_collapse", "keep_best", ["keep_best", "raise"],
                      "what strip does when a gate keeps no neuron", **kw)
    flags.DEFINE_integer("train_examples", None,
                         "use only the first this many training rows", **kw)
    flags.DEFINE_integer("test_examples", None,
                         "use only the first this many test rows", **kw)
    flags.DEFINE_integer("full_epochs", 10, "epochs of the full network",
                         **kw)
    flags.DEFINE_integer("prune_epochs", 30, "most epochs of pruning", **kw)
    flags.DEFINE_integer("finetune_epochs", 5,
                         "epochs of fine-tuning after strip", **kw)
    flags.DEFINE_integer("batch_size", 256, "training batch size", **kw)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate", **kw)
    flags.DEFINE_integer("seed", 0, "random seed", **kw)
    flags.DEFINE_integer("verbose", 1, "0 silent, 1 a line per epoch, "
                         "2 Keras progress bars", **kw)
    flags.DEFINE_bool("export", True,
                      "write the compact SavedModel (--noexport: skip)", **kw)


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    define_flags()
    app.run(main)
