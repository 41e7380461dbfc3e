"""PQuantML's structured pruning on the tagger of `bench/fpga.py`.

The peer arm of issue 18's comparison. PQuantML (`pquant-ml` on PyPI,
Keras 3 + HGQ2) replaces each `Dense` with its own quantised layer and
prunes with a mask inside it; with `structured_pruning` its PDP method
masks whole neurons of every layer at one sparsity, ramped up epoch by
epoch, and the masked neurons stay in the model as zeros.

For each seed and EBOPs-loss weight `beta` this script trains the same
float tagger as `examples/fc_dnn_hgq.py` (same seed, data, widths, epochs
and learning rate), then hands it to PQuantML with HGQ quantisation on and
trains it for the same epochs after the float network as the other arms
(`prune_epochs` of PDP pruning, its sparsity ramped to the target by 2/3
of them as in PQuantML's default config, then the rest with the final
mask). The sparsity is the one whose kept widths cost `--rate` of the
full network's MACs, so the arm is matched to ours in MACs.

It prints, per beta, the mean and spread over seeds of test accuracy,
EBOPs (PQuantML's own count, from its learned bit-widths; HGQ2's count in
`bench/fpga.py` comes from `trace_minmax` on HGQ2 models, so the two are
the same formula on differently obtained bit-widths, not one measurement),
the same sum over the weights between kept neurons only (PQuantML's count
keeps the weights from pruned neurons, whose output is a constant),
multiplications (kernel entries between kept neurons whose quantised
value is not zero), weight bits (kernel and bias bits of those entries and
neurons), MACs of the kept widths, and the kept widths (logits last).

PQuantML is not a dependency of the package: install it with
`make peers` (`pip install -e '.[peers]'` into `.venv`).

    .venv/bin/python bench/fpga_pquant.py --seeds=0,1 --betas=3e-6,1e-5,3e-5
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FLAGS = flags.FLAGS
FIGURES = ("accuracy", "ebops", "ebops_kept", "multiplications",
           "weight_bits", "macs")


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    kw = {"flag_values": fv}
    flags.DEFINE_list("seeds", ["0", "1"], "seeds", **kw)
    flags.DEFINE_list("betas", ["3e-6", "1e-5", "3e-5"],
                      "HGQ EBOPs-loss weights", **kw)
    flags.DEFINE_float("rate", 0.5, "kept share of the MACs the sparsity "
                       "is matched to", **kw)
    flags.DEFINE_integer("full_epochs", 20, "epochs of the full float "
                         "network", **kw)
    flags.DEFINE_integer("prune_epochs", 20, "epochs of PDP pruning", **kw)
    flags.DEFINE_integer("after_epochs", 60, "epochs after the float "
                         "network in all (as bench/fpga.py's arms: 20 + 10 "
                         "+ 30)", **kw)
    flags.DEFINE_integer("batch_size", 256, "batch size", **kw)
    flags.DEFINE_float("learning_rate", 3e-3, "Adam's constant rate", **kw)
    flags.DEFINE_integer("train_examples", None, "first rows only", **kw)
    flags.DEFINE_string("out", "runs/fpga_pquant", "folder of the runs' "
                        "json files (a rerun reuses them)", **kw)


def load_example():
    """examples/fc_dnn_hgq.py, the float tagger the other arms start from."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import fc_dnn_hgq

    return fc_dnn_hgq


def matched_sparsity(widths, input_dim, num_classes, rate):
    """The neuron sparsity whose kept widths cost `rate` of the MACs.

    PDP keeps `floor((1 - s) * n)` of each layer's `n` neurons (the output
    layer is not pruned here). Returns `(s, kept_widths, mac_share)` for the
    `s` on a 1/1000 grid with the MAC share closest to `rate` from below.

    Example:

        s, kept, share = matched_sparsity((64, 32, 32), 16, 26, 0.5)
    """
    def macs(ws):
        sizes = [input_dim] + list(ws) + [num_classes]
        return sum(a * b for a, b in zip(sizes, sizes[1:]))

    full = macs(widths)
    best = None
    for s in np.arange(0, 1, 1e-3):
        kept = [max(1, int((1 - s) * w + 1e-9)) for w in widths]
        share = macs(kept) / full
        if share <= rate and (best is None or share > best[2]):
            best = (float(round(s, 3)), kept, share)
    return best


def pquant_run(seed, beta, sparsity):
    """One PQuantML run; returns its figures."""
    import keras
    import pquant
    from pquant.core.keras.train import PQuantCallback

    from keras_autopruner.datasets import load_tabular

    example = load_example()

    keras.utils.set_random_seed(seed)
    (x, y), (xt, yt), _ = load_tabular(None, seed=seed)
    x, y = x[:FLAGS.train_examples], y[:FLAGS.train_examples]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compile_(model):
        model.compile(keras.optimizers.Adam(FLAGS.learning_rate), loss=loss,
                      metrics=["accuracy"], jit_compile=False)

    model = example.float_tagger(x.shape[1], int(y.max()) + 1)
    compile_(model)
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.full_epochs,
              verbose=0)

    config = pquant.pdp_config()
    p = config.pruning_parameters
    p.structured_pruning = True
    p.sparsity = sparsity
    # PQuantML's default ramps the sparsity to its target over 2/3 of the
    # pruning epochs (epsilon 0.015 of 100); the same shape over ours.
    p.epsilon = 1.5 / FLAGS.prune_epochs
    # The logits are the classes, not neurons to prune.
    p.disable_pruning_for_layers = ["logits"]
    q = config.quantization_parameters
    q.use_high_granularity_quantization = True
    q.hgq_beta = beta
    # PQuantML's config defaults data to unsigned with 0 integer bits,
    # which clips the standardised inputs (-5.4 to 5.7) to [0, 1): test
    # accuracy 0.60-0.68 at beta 1e-5. Start where HGQ2's defaults start
    # (signed, 2 integer and 6 fractional bits, bit-widths learned), with
    # one more integer bit for data: HGQ2's data quantisers wrap and get
    # their integer bits from `trace_minmax`, PQuantML's saturate and are
    # not calibrated.
    q.default_weight_keep_negatives = 1.0
    q.default_weight_integer_bits = 2.0
    q.default_weight_fractional_bits = 6.0
    q.default_data_keep_negatives = 1.0
    q.default_data_integer_bits = 3.0
    q.default_data_fractional_bits = 6.0
    qmodel = pquant.add_compression_layers(model, config,
                                           input_shape=(1, x.shape[1]))
    compile_(qmodel)

    class Callback(PQuantCallback):
        # PQuantML logs its stage as a string, which Keras's epoch logs
        # cannot average; drop it.
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if logs is not None:
                logs.pop("stage", None)

    callback = Callback(config, pretraining_epochs=0,
                        epochs=FLAGS.prune_epochs,
                        fine_tuning_epochs=FLAGS.after_epochs
                        - FLAGS.prune_epochs)
    assert callback.total_epochs == FLAGS.after_epochs
    qmodel.fit(x, y, batch_size=FLAGS.batch_size,
               epochs=callback.total_epochs, verbose=0, callbacks=[callback])

    logits = qmodel.predict(xt, batch_size=4096, verbose=0)
    row = kept_figures(qmodel, x.shape[1])
    row["accuracy"] = float(np.mean(np.argmax(logits, -1) == yt))
    row["ebops"] = float(keras.ops.convert_to_numpy(pquant.get_ebops(qmodel)))
    return row


def kept_figures(qmodel, input_dim):
    """Multiplications, weight bits, EBOPs, MACs and widths of a trained
    PQuantML tagger, counted between the neurons it keeps."""
    import keras
    from pquant.core.keras.layers import PQDense

    row = {"ebops_kept": 0.0, "multiplications": 0, "weight_bits": 0.0,
           "macs": 0, "widths": []}
    # PDP masks a neuron's weights, not its bias: a pruned neuron outputs
    # a constant, which a later layer's bias could absorb. Counted here as
    # removed (the generous reading), so only kept inputs' weights count.
    keep_in = np.ones(input_dim, bool)
    for layer in qmodel.layers:
        if not isinstance(layer, PQDense):
            continue
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        # A neuron is kept when any of its quantised weights is not zero.
        keep = np.any(kernel != 0, axis=0)
        bw = layer.weight_quantizer.get_total_bits(
            keras.ops.shape(layer._kernel))
        if layer.enable_pruning:
            mask = keras.ops.convert_to_numpy(
                layer.pruning_layer.get_hard_mask()).reshape(-1) > 0.5
            keep &= mask
            bw = layer._masked_weight_bits(bw)
        bw = np.maximum(keras.ops.convert_to_numpy(bw), 0)[keep_in][:, keep]
        bias_bits = np.broadcast_to(np.maximum(keras.ops.convert_to_numpy(
            layer.bias_quantizer.get_total_bits(
                keras.ops.shape(layer._bias))), 0), keep.shape)
        bw_in = np.maximum(keras.ops.convert_to_numpy(
            layer.input_quantizer.get_total_bits(layer.input_shape)), 0)
        bw_in = np.broadcast_to(bw_in.reshape(-1), keep_in.shape)[keep_in]
        row["ebops_kept"] += float(bw_in @ bw.sum(axis=1))
        row["multiplications"] += int(np.count_nonzero(
            kernel[keep_in][:, keep]))
        row["weight_bits"] += float(bw.sum() + bias_bits[keep].sum())
        row["widths"].append(int(keep.sum()))
        row["macs"] += int(keep_in.sum()) * int(keep.sum())
        keep_in = keep
    row["weight_bits"] = int(round(row["weight_bits"]))
    row["ebops_kept"] = int(round(row["ebops_kept"]))
    return row


def main(argv):
    del argv
    from keras_autopruner.datasets import load_tabular

    try:
        import pquant  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"bench/fpga_pquant.py needs PQuantML ({e}); "
                         "run `make peers` first.")
    (x, y), _, _ = load_tabular(None)
    example = load_example()
    sparsity, kept, share = matched_sparsity(
        example.WIDTHS, x.shape[1], int(y.max()) + 1, FLAGS.rate)
    print(f"sparsity {sparsity}: widths {kept}, MAC share {share:.4f} "
          f"(target {FLAGS.rate})", flush=True)
    os.makedirs(FLAGS.out, exist_ok=True)
    results = {}
    for beta in FLAGS.betas:
        for seed in FLAGS.seeds:
            path = os.path.join(FLAGS.out, f"beta{beta}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    row = json.load(f)
            else:
                row = pquant_run(int(seed), float(beta), sparsity)
                with open(path, "w") as f:
                    json.dump(row, f)
            print(f"beta {beta} seed {seed}: {row}", flush=True)
            results.setdefault(beta, []).append(row)
    print("\n| arm | beta | accuracy | EBOPs (PQuantML's count) | "
          "EBOPs, kept weights only | multiplications | weight bits | MACs "
          "| kept widths |")
    print("|---|---|---|---|---|---|---|---|---|")
    for beta, rows in results.items():
        cells = []
        for key in FIGURES:
            v = np.array([r[key] for r in rows], float)
            fmt = "{:.4f} ± {:.4f}" if key == "accuracy" else "{:,.0f} ± {:,.0f}"
            cells.append(fmt.format(v.mean(), v.std()))
        widths = "; ".join("-".join(map(str, r["widths"])) for r in rows)
        print(f"| PQuantML PDP, structured | {beta} | " + " | ".join(cells)
              + f" | {widths} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
