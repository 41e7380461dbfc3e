"""Fewer neurons and fewer bits: prune a tagger, quantise it with HGQ2, run
it through hls4ml bit-exact.

Networks that go into FPGAs (trigger systems, the hls4ml community) are
shrunk two ways at once. HGQ2 (`pip install hgq2`) learns a bit-width for
every weight and every input channel during training and counts EBOPs,
its estimate of the logic the network needs; a weight whose bit-width
reaches 0 is gone, but a neuron only goes when all its weights do.
AutoPruner removes whole neurons first, and `strip` hands HGQ2 a smaller
network. This script compares, on the same data and with the same number
of epochs after the full network's training:

- "HGQ2 alone": the full network quantised and trained with HGQ2;
- "ours + HGQ2", `--flow=qat` (the default): the full network's HGQ2 twin
  is gated, pruned (AutoPrunerCallback) and stripped during
  quantisation-aware training, and the compact HGQ2 model trains on;
- "ours + HGQ2", `--flow=float`: the full float network is pruned,
  stripped and fine-tuned, then quantised and trained with HGQ2 for the
  epochs left.

At matched EBOPs the qat flow was the more accurate one here (BUILD_NOTES,
"Issue 18"): its bit-widths learn for as many epochs as HGQ2 alone's, and
its gates choose neurons under quantisation.

The network is shaped like the hls4ml jet-tagging benchmark, 16 inputs and
Dense 64-32-32 with ReLU (`--widths`), on the shipped UCI Letter Recognition
table by default (16 features, 26 classes) or on `--data_path`/`--label`.
Each quantised model is calibrated with HGQ2's `trace_minmax`, converted
with hls4ml's Keras 3 frontend, compiled to its C++ emulation with g++, and
compared with Keras on every test row. Each is also traced with da4ml, the
compiler behind hls4ml's distributed-arithmetic strategy (`hls4ml[da]`),
which estimates, without vendor tools, the logic a fully unrolled,
multiplier-free implementation needs: LUTs (the adders' bits) and latency
(adder levels); its own emulation is compared with Keras on every test row
too.

    python examples/fc_dnn_hgq.py
    python examples/fc_dnn_hgq.py --flow=float --rate=0.3 --beta=3e-5

It prints, for full and pruned, float and quantised: accuracy, EBOPs
(HGQ2's count, after `trace_minmax`), multiplications (MACs; for a
quantised model, those whose weight keeps at least one bit), the weight
bits in total, and the test rows where the emulation is bit-exact. hls4ml's
resource and latency estimates need the HLS tool's synthesis (Vivado/Vitis
HLS), which is not run here.

Needs `pip install 'keras_autopruner[fpga]'` (hgq2, hls4ml) and g++.
"""

import json
import os
import sys
import time

WIDTHS = (64, 32, 32)


def float_tagger(input_dim, num_classes, widths=WIDTHS):
    """The float tagger: Dense layers with ReLU, then logits.

    Args:
        input_dim: number of input features.
        num_classes: number of classes (the logits).
        widths: hidden widths.

    Returns:
        A functional `keras.Model`.

    Example:

        model = float_tagger(16, 26)   # 16 -> 64 -> 32 -> 32 -> 26
    """
    import keras

    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, units in enumerate(widths):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes,
                                                  name="logits")(x))


def to_hgq(model, beta=1e-5):
    """The HGQ2 twin of a Dense tagger, with its float weights.

    Every `Dense` becomes an HGQ2 `QDense` of the same width and
    activation, with HGQ2's default quantisers (a learned fixed-point
    bit-width per input channel and per weight) and the EBOPs loss
    weighted by `beta`.

    Args:
        model: a functional model of `Dense` layers (such as `float_tagger`,
            or its stripped version).
        beta: HGQ2's EBOPs-loss weight (`beta0` of every layer).

    Returns:
        A functional `keras.Model` of `QDense` layers.

    Example:

        qmodel = to_hgq(kap.strip(gated), beta=1e-5)
    """
    import keras
    from hgq.config import LayerConfigScope
    from hgq.layers import QDense

    dense = [layer for layer in model.layers
             if isinstance(layer, keras.layers.Dense)]
    with LayerConfigScope(beta0=beta):
        inputs = keras.Input(model.input.shape[1:], name="features")
        x = inputs
        for layer in dense:
            x = QDense(layer.units, activation=layer.activation,
                       name=layer.name)(x)
        qmodel = keras.Model(inputs, x)
    for layer in dense:
        qlayer = qmodel.get_layer(layer.name)
        kernel, bias = layer.get_weights()
        qlayer.kernel.assign(kernel)
        qlayer.bias.assign(bias)
    return qmodel


def set_beta(model, beta):
    """Sets HGQ2's EBOPs-loss weight of every layer of `model`.

    Args:
        model: an HGQ2 model.
        beta: the new weight.

    Example:

        set_beta(qmodel, 3e-6)
    """
    for layer in model.layers:
        if getattr(layer, "_beta", None) is not None:
            layer._beta.assign(beta)


def quantised_figures(model, x_calibration):
    """Calibrates an HGQ2 model and counts what its hardware holds.

    Runs HGQ2's `trace_minmax` on `x_calibration` (it sets the integer bits
    of the WRAP-mode activation quantisers from the data), then counts.

    Args:
        model: an HGQ2 model of `QDense` layers.
        x_calibration: inputs for `trace_minmax` (the training rows).

    Returns:
        A dict: `ebops` (HGQ2's count), `ebops_training` (HGQ2's count at
        the last training step, before calibration), `multiplications`
        (kernel entries
        whose quantised value is not zero), `weight_bits` (the bits of
        every kernel entry and bias, as quantised) and `zero_bit_weights`
        (kernel entries HGQ2 pruned to 0 bits).

    Example:

        figures = quantised_figures(qmodel, x_train)
    """
    import keras
    import numpy as np
    from hgq.layers import QDense
    from hgq.utils import trace_minmax

    # The EBOPs of the last training step, from the learned bit-widths
    # before calibration: the basis a tool without `trace_minmax` (such as
    # PQuantML, bench/fpga_pquant.py) counts on.
    trained = sum(float(keras.ops.convert_to_numpy(layer.ebops))
                  for layer in model.layers if isinstance(layer, QDense))
    ebops = trace_minmax(model, x_calibration, batch_size=4096)
    mults = bits = zero = 0
    for layer in model.layers:
        if not isinstance(layer, QDense):
            continue
        qkernel = keras.ops.convert_to_numpy(layer.qkernel)
        kbits = keras.ops.convert_to_numpy(
            layer.kq.bits_(keras.ops.shape(layer.kernel)))
        mults += int(np.count_nonzero(qkernel))
        zero += int(np.sum(kbits <= 0))
        bits += float(np.sum(np.maximum(kbits, 0)))
        if layer.bias is not None:
            bbits = keras.ops.convert_to_numpy(
                layer.bq.bits_(keras.ops.shape(layer.bias)))
            bits += float(np.sum(np.maximum(bbits, 0)))
    return {"ebops": int(ebops), "ebops_training": int(round(trained)),
            "multiplications": mults,
            "weight_bits": int(round(bits)), "zero_bit_weights": zero}


def da4ml_figures(model, x):
    """da4ml's estimate of the logic an HGQ2 model needs, and its check.

    HGQ2's tracer turns the calibrated model into fixed-point operations
    and da4ml (the compiler behind hls4ml's distributed-arithmetic
    strategy) rewrites every constant matrix-vector product as a shared
    adder graph, with no multipliers. Its cost counts the adders' bits,
    about one LUT each on a Xilinx FPGA; its latency counts adder levels
    on the longest path (a combinational depth, not clock cycles). No
    vendor tool runs: these are estimates, not synthesis results.

    Args:
        model: a calibrated HGQ2 model (after `trace_minmax`).
        x: inputs on which da4ml's own emulation is compared with Keras.

    Returns:
        A dict: `luts` (da4ml's cost, rounded), `latency` ([shortest,
        longest] adder levels over the outputs), and `bit_exact_rows`'s
        comparison of da4ml's emulation with Keras (`rows`, `bit_exact`,
        ...).

    Example:

        da4ml_figures(qmodel, x_test)["luts"]
    """
    import keras
    from da4ml.converter import trace_model
    from da4ml.trace import comb_trace

    # da4ml picks its tracer by the model class's module: a stripped model
    # is a `PrunedModel`, so it is traced as a plain functional model over
    # the same layers.
    plain = keras.Model(model.inputs, model.outputs)
    inputs, outputs = trace_model(plain)
    logic = comb_trace(inputs, outputs)
    shortest, longest = logic.latency
    return {"luts": int(round(logic.cost)),
            "latency": [int(shortest), int(longest)],
            **bit_exact_rows(model, logic, x)}


def convert(model, out_dir):
    """Converts an HGQ2 model with hls4ml and compiles its C++ emulation.

    hls4ml's Keras 3 frontend reads every quantiser's bit-widths and
    propagates exact fixed-point types through the network (`bit_exact`),
    so the emulation should compute what Keras computes, to the bit.

    Args:
        model: a calibrated HGQ2 model (after `trace_minmax`).
        out_dir: folder for the generated HLS project.

    Returns:
        The compiled hls4ml model.

    Example:

        hls_model = convert(qmodel, "runs/hgq/hls")
    """
    import hls4ml

    hls_model = hls4ml.converters.convert_from_keras_model(
        model, output_dir=out_dir, backend="Vivado", bit_exact=True,
        hls_config={"Model": {"Precision": "fixed<16,6>",
                              "ReuseFactor": 1, "Strategy": "Latency"}})
    hls_model.compile()
    return hls_model


def bit_exact_rows(model, emulation, x):
    """Test rows on which an emulation of `model` equals Keras to the bit.

    Args:
        model: the Keras model.
        emulation: anything with `predict(x)`: its compiled hls4ml model,
            or da4ml's logic for it.
        x: inputs.

    Returns:
        A dict: `rows`, `bit_exact` (rows whose every output is equal),
        `argmax_agree` (rows with the same top class) and `max_abs_diff`.

    Example:

        bit_exact_rows(qmodel, convert(qmodel, "runs/h"), x_test)
    """
    import numpy as np

    x = np.ascontiguousarray(x, dtype="float32")
    expected = np.asarray(model.predict(x, batch_size=4096, verbose=0),
                          dtype="float64")
    got = np.asarray(emulation.predict(x), dtype="float64").reshape(
        expected.shape)
    return {"rows": int(len(x)),
            "bit_exact": int(np.sum(np.all(got == expected, axis=-1))),
            "argmax_agree": int(np.sum(got.argmax(-1) == expected.argmax(-1))),
            "max_abs_diff": float(np.max(np.abs(got - expected)))}


def run(data_path=None, label=None, out="runs/fc_dnn_hgq", rate=0.5,
        widths=WIDTHS, flow="qat", full_epochs=20, prune_epochs=20,
        finetune_epochs=10, qat_epochs=30, beta=1e-5, batch_size=256,
        learning_rate=3e-3, train_examples=None, test_examples=None,
        hls4ml=True, da4ml=True, seed=0, verbose=1):
    """Train, prune, quantise and convert; return the comparison.

    After `full_epochs` of the float network, both arms get the same
    `prune_epochs + finetune_epochs + qat_epochs` epochs: HGQ2 alone
    trains the quantised full network for all of them; ours prunes for
    up to `prune_epochs` (the unused ones go to fine-tuning), fine-tunes
    the stripped float network, and trains its HGQ2 twin for `qat_epochs`
    (`flow="float"`), or prunes and fine-tunes the HGQ2 model itself
    (`flow="qat"`).

    Args:
        data_path: a CSV/`.npz`/`.npy` table (see `load_tabular`), or None
            for the shipped Letter Recognition table.
        label: the label column.
        out: output folder (`results.json`, the HLS projects).
        rate: target kept share of the MACs (AutoPruner's global budget).
        widths: hidden widths.
        flow: `"qat"` (prune the HGQ2 network during quantisation-aware
            training) or `"float"` (prune the float network, then HGQ2).
        full_epochs: epochs of the full float network.
        prune_epochs: most epochs of pruning.
        finetune_epochs: epochs of fine-tuning after `strip`.
        qat_epochs: epochs of HGQ2 training of the pruned network.
        beta: HGQ2's EBOPs-loss weight.
        batch_size: batch size.
        learning_rate: Adam's learning rate (constant, both arms).
        train_examples: use only the first this many training rows.
        test_examples: use only the first this many test rows.
        hls4ml: convert the quantised models and count bit-exact rows.
        da4ml: estimate the quantised models' LUTs and latency with da4ml
            (`da4ml_figures`).
        seed: random seed.
        verbose: 0 silent, 1 progress lines.

    Returns:
        A dict with a row per model: `full_float`, `pruned_float`,
        `full_hgq` (HGQ2 alone), `pruned_hgq` (ours + HGQ2).

    Example:

        result = run(full_epochs=2, prune_epochs=2, qat_epochs=2)
        result["pruned_hgq"]["ebops"] < result["full_hgq"]["ebops"]
    """
    import keras
    import numpy as np

    import keras_autopruner as kap
    from keras_autopruner.datasets import load_tabular

    if flow not in ("float", "qat"):
        raise ValueError(f"flow must be 'float' or 'qat', got {flow!r}.")
    start = time.time()
    say = print if verbose else (lambda *a, **k: None)
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(seed)
    (x, y), (xt, yt), class_names = load_tabular(data_path, label=label,
                                               seed=seed)
    x, y = x[:train_examples], y[:train_examples]
    xt, yt = xt[:test_examples], yt[:test_examples]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compile_(model):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=loss, metrics=["accuracy"], jit_compile=False)

    def fit(model, epochs, callbacks=()):
        if epochs <= 0:
            return 0
        history = model.fit(x, y, batch_size=batch_size, epochs=epochs,
                            verbose=0, callbacks=list(callbacks))
        return len(history.history.get("loss", []))

    def accuracy(model):
        logits = model.predict(xt, batch_size=4096, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == yt))

    def float_row(model):
        macs = kap.count_flops(model).total
        return {"accuracy": accuracy(model), "ebops": None,
                "multiplications": int(macs),
                "weight_bits": 32 * int(kap.count_params(model)),
                "widths": _widths(model)}

    def hgq_row(model, name):
        row = quantised_figures(model, x)
        row.update(accuracy=accuracy(model), widths=_widths(model),
                   macs=int(kap.count_flops(model).total))
        if da4ml:
            row["da4ml"] = da4ml_figures(model, xt)
        if hls4ml:
            begin = time.time()
            hls_model = convert(model, os.path.join(out, name))
            row["hls4ml"] = bit_exact_rows(model, hls_model, xt)
            row["hls4ml"]["compile_s"] = round(time.time() - begin, 1)
        return row

    full = float_tagger(x.shape[1], len(class_names), widths)
    compile_(full)
    say(f"[hgq] full float network {_widths(full)}, {full_epochs} epochs")
    fit(full, full_epochs)
    result = {"flow": flow, "rate": rate, "beta": beta, "seed": seed,
              "train_examples": train_examples,
              "epochs": {"full": full_epochs, "prune": prune_epochs,
                         "finetune": finetune_epochs, "qat": qat_epochs}}
    result["full_float"] = float_row(full)

    after_full = prune_epochs + finetune_epochs + qat_epochs
    say(f"[hgq] HGQ2 alone: {after_full} epochs of quantisation-aware "
        "training")
    full_q = to_hgq(full, beta)
    compile_(full_q)
    fit(full_q, after_full)
    result["full_hgq"] = hgq_row(full_q, "full_hgq")

    say(f"[hgq] ours: pruning to {rate:g} of the MACs, then HGQ2 "
        f"({flow} flow)")
    source = full if flow == "float" else to_hgq(full, beta)
    gated = kap.add_gates(source, target_rate=rate)
    compile_(gated)
    callback = kap.AutoPrunerCallback(objective="global",
                                      stop_when_done=True)
    used = fit(gated, prune_epochs, [callback])
    compact = kap.strip(gated)
    compile_(compact)
    if flow == "float":
        fit(compact, finetune_epochs + prune_epochs - used)
        result["pruned_float"] = float_row(compact)
        pruned_q = to_hgq(compact, beta)
        compile_(pruned_q)
        fit(pruned_q, qat_epochs)
    else:
        # The stripped model is an HGQ2 model: it goes on training as one.
        fit(compact, finetune_epochs + qat_epochs + prune_epochs - used)
        pruned_q = compact
        result["pruned_float"] = None
    result["prune"] = {"epochs_used": used,
                       "reason": callback.result["reason"],
                       "cost_share": callback.result["cost_share"]}
    result["pruned_hgq"] = hgq_row(pruned_q, "pruned_hgq")
    result["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    say("")
    say(format_table(result))
    say(f"Outputs in {os.path.abspath(out)} ({result['seconds']:.0f} s)")
    return result


ROWS = (("full_float", "full, float"), ("pruned_float", "pruned, float"),
        ("full_hgq", "full, HGQ2 (HGQ2 alone)"),
        ("pruned_hgq", "pruned, HGQ2 (ours + HGQ2)"))


def format_table(result):
    """The four models of `run`'s result as aligned plain text."""
    header = ["model", "neurons", "accuracy", "EBOPs", "multiplications",
              "weight bits", "LUTs (da4ml)", "latency (adder levels)",
              "bit-exact rows (da4ml)", "bit-exact rows (hls4ml)"]
    lines = []
    for key, name in ROWS:
        row = result.get(key)
        if row is None:
            continue
        exact, da = row.get("hls4ml"), row.get("da4ml")
        lines.append([
            name, "-".join(str(w) for w in row["widths"]),
            f"{row['accuracy']:.4f}",
            "-" if row["ebops"] is None else f"{row['ebops']:,}",
            f"{row['multiplications']:,}", f"{row['weight_bits']:,}",
            f"{da['luts']:,}" if da else "-",
            "{}-{}".format(*da["latency"]) if da else "-",
            f"{da['bit_exact']}/{da['rows']}" if da else "-",
            f"{exact['bit_exact']}/{exact['rows']}" if exact else "-"])
    widths = [max(len(r[i]) for r in [header] + lines)
              for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + lines)


def _widths(model):
    import keras

    return [layer.units for layer in model.layers
            if isinstance(layer, keras.layers.Dense)]


def main(argv):
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    label = f.label
    if (label is not None and f.data_path
            and f.data_path.lower().endswith(".npy")):
        label = int(label)
    run(data_path=f.data_path, label=label, out=f.out, rate=f.rate,
        widths=[int(w) for w in f.widths], flow=f.flow,
        full_epochs=f.full_epochs, prune_epochs=f.prune_epochs,
        finetune_epochs=f.finetune_epochs, qat_epochs=f.qat_epochs,
        beta=f.beta, batch_size=f.batch_size,
        learning_rate=f.learning_rate, train_examples=f.train_examples,
        test_examples=f.test_examples, hls4ml=f.hls4ml, da4ml=f.da4ml,
        seed=f.seed,
        verbose=f.verbose)


def define_flags(fv=None):
    """Define the example's flags in `fv` (absl's global `FLAGS` if None)."""
    from absl import flags

    fv = flags.FLAGS if fv is None else fv
    kw = {"flag_values": fv}
    flags.DEFINE_string("data_path", None, "CSV/.npz/.npy table; default: "
                        "the shipped UCI Letter Recognition data", **kw)
    flags.DEFINE_string("label", None, "label column (index for .npy)", **kw)
    flags.DEFINE_string("out", "runs/fc_dnn_hgq", "output folder", **kw)
    flags.DEFINE_float("rate", 0.5, "target kept share of the MACs", **kw)
    flags.DEFINE_list("widths", [str(w) for w in WIDTHS], "hidden widths",
                      **kw)
    flags.DEFINE_enum("flow", "qat", ["float", "qat"],
                      "prune the float network then quantise, or prune "
                      "during quantisation-aware training", **kw)
    flags.DEFINE_integer("full_epochs", 20, "epochs of the full float "
                         "network", **kw)
    flags.DEFINE_integer("prune_epochs", 20, "most epochs of pruning", **kw)
    flags.DEFINE_integer("finetune_epochs", 10,
                         "epochs of fine-tuning after strip", **kw)
    flags.DEFINE_integer("qat_epochs", 30, "epochs of HGQ2 training of the "
                         "pruned network", **kw)
    flags.DEFINE_float("beta", 1e-5, "HGQ2's EBOPs-loss weight", **kw)
    flags.DEFINE_integer("batch_size", 256, "training batch size", **kw)
    flags.DEFINE_float("learning_rate", 3e-3, "Adam's learning rate", **kw)
    flags.DEFINE_integer("train_examples", None,
                         "use only the first this many training rows", **kw)
    flags.DEFINE_integer("test_examples", None,
                         "use only the first this many test rows", **kw)
    flags.DEFINE_bool("hls4ml", True, "convert with hls4ml and count "
                      "bit-exact test rows (--nohls4ml: skip)", **kw)
    flags.DEFINE_bool("da4ml", True, "estimate LUTs and latency with da4ml "
                      "and count its bit-exact test rows (--noda4ml: skip)",
                      **kw)
    flags.DEFINE_integer("seed", 0, "random seed", **kw)
    flags.DEFINE_integer("verbose", 1, "0 silent, 1 progress lines", **kw)


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    define_flags()
    app.run(main)
