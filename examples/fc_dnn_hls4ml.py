"""Prune the fully connected tagger, then run it through hls4ml.

FC-DNN taggers are often deployed on FPGAs with hls4ml, which turns a Keras
model into HLS C++ where every multiplication is a piece of hardware: a
neuron that `strip` removes is logic that is never synthesised. This
script trains the `fc_dnn` tagger of `examples/fc_dnn.py` on a table (the
shipped UCI Letter Recognition data by default), prunes and strips it,
converts both the full and the compact network with hls4ml's Keras
frontend, compiles hls4ml's bit-accurate C++ emulation with g++, and
compares its predictions with Keras's.

    python examples/fc_dnn_hls4ml.py
    python examples/fc_dnn_hls4ml.py --precision='ap_fixed<16,6>'

It prints, for the full and the compact network: the neurons per layer,
the multiplications per example (with ReuseFactor 1 each one is a
multiplier in hardware), the argmax agreement and the largest output
difference between the C++ emulation and Keras. hls4ml's resource
estimate (DSPs, LUTs, latency) comes from the HLS tool's synthesis report
(Vivado/Vitis HLS), so it is printed only where `--synthesize` is given and
such a tool is on the PATH.

Needs `pip install hls4ml` (or `keras_autopruner[deploy]`) and g++.
"""

import json
import os
import sys
import time

# 16 bits, 6 of them integer bits with the sign: range [-32, 32), step
# 2**-10. Rounding to nearest (AP_RND_CONV) rather than hls4ml's default
# truncation, which biases every product and sum downwards; saturation
# rather than wrap-around on overflow.
DEFAULT_PRECISION = "ap_fixed<16,6,AP_RND_CONV,AP_SAT>"


def convert(model, out_dir, precision=DEFAULT_PRECISION, granularity="model",
            reuse_factor=1, accum_precision=None, backend="Vivado"):
    """Convert a Keras model with hls4ml and compile its C++ emulation.

    Args:
        model: a Keras 3 functional model of standard layers (the stripped
            tagger, or the full one).
        out_dir: folder for the generated HLS project.
        precision: hls4ml's default precision for weights, biases,
            results and sums, e.g. `"ap_fixed<16,6>"` (16 bits, 6 of them
            integer bits with the sign: range [-32, 32), step 2**-10);
            default `DEFAULT_PRECISION`, the same with rounding and
            saturation.
        granularity: `"model"` (one precision for every layer) or `"name"`
            (a config entry per layer, with hls4ml's inferred types). With
            `"name"`, hls4ml infers a wide type for the last Dense's result,
            and its table softmax then gives the same output for every
            input; set that layer's `Precision["result"]` in the config.
        reuse_factor: hls4ml's ReuseFactor (1: one multiplier per weight).
        accum_precision: optional precision of the sums inside each layer
            (hls4ml's `accum`), e.g. `"ap_fixed<24,10>"`; by default the
            sums use `precision` too.
        backend: hls4ml backend whose C++ is generated.

    Returns:
        The compiled `hls4ml` model; `predict(x)` runs the emulation.

    Example:

    >>> hls_model = convert(compact, "runs/hls/compact")
    >>> y = hls_model.predict(x.astype("float32"))
    """
    import hls4ml

    config = hls4ml.utils.config_from_keras_model(
        model, granularity=granularity, default_precision=precision,
        default_reuse_factor=reuse_factor, backend=backend)
    if accum_precision:
        if granularity != "model":
            raise ValueError("accum_precision is only applied with "
                             "granularity='model'; set it per layer in the "
                             "config for other granularities.")
        config["Model"]["Precision"] = {"default": precision,
                                        "accum": accum_precision}
    hls_model = hls4ml.converters.convert_from_keras_model(
        model, hls_config=config, output_dir=out_dir, backend=backend)
    hls_model.compile()
    return hls_model


def compare(model, hls_model, x):
    """Agreement of hls4ml's emulation with Keras on `x`.

    Args:
        model: the Keras model.
        hls_model: its compiled hls4ml model (from `convert`).
        x: a float array of inputs.

    Returns:
        A dict: `argmax_agreement` (share of rows with the same top class),
        `max_abs_diff` (largest output difference), `median_row_diff` (the
        median over rows of each row's largest difference) and
        `output_scale` (the largest |Keras output|). hls4ml computes
        softmax from lookup tables, so its probabilities can differ from
        Keras's by much more than its logits do; the argmax is what a
        classifier uses.

    Example:

    >>> compare(compact, convert(compact, "runs/hls/c"), x_test[:1000])
    """
    import numpy as np

    x = np.ascontiguousarray(x, dtype="float32")
    expected = np.asarray(model.predict(x, verbose=0))
    got = np.asarray(hls_model.predict(x)).reshape(expected.shape)
    return {
        "argmax_agreement": float(np.mean(
            got.argmax(-1) == expected.argmax(-1))),
        "max_abs_diff": float(np.max(np.abs(got - expected))),
        "median_row_diff": float(np.median(
            np.max(np.abs(got - expected), axis=-1))),
        "output_scale": float(np.max(np.abs(expected))),
    }


def largest_activation(model, x):
    """Largest |value| at the input and at any layer output of `model` on
    `x`: it must stay below the fixed-point range (32 for ap_fixed<16,6>).

    Args:
        model: a functional Keras model.
        x: inputs.

    Returns:
        A float.

    Example:

    >>> largest_activation(compact, x_test[:1000]) < 32
    """
    import keras
    import numpy as np

    probe = keras.Model(model.input, [layer.output
                                      for layer in model.layers[1:]])
    outputs = probe.predict(x, verbose=0)
    return float(max([np.max(np.abs(x))]
                     + [np.max(np.abs(o)) for o in outputs]))


def synthesis_report(hls_model):
    """hls4ml's resource estimate, or None where no HLS tool is installed.

    Runs C synthesis (`hls_model.build(csim=False, synth=True)`), which
    needs Vivado or Vitis HLS on the PATH; without one there is no estimate
    to read.

    Args:
        hls_model: a model from `convert`.

    Returns:
        The report dict `hls_model.build` returns, or None.

    Example:

    >>> synthesis_report(convert(compact, "runs/hls/compact"))
    """
    import shutil

    if not (shutil.which("vivado_hls") or shutil.which("vitis_hls")
            or shutil.which("vivado")):
        return None
    return hls_model.build(csim=False, synth=True, export=False)


def run(data=None, label=None, out="runs/fc_dnn_hls4ml", rate=0.5,
        widths=None, epochs=10, prune_epochs=30, finetune_epochs=5,
        train_examples=None, compare_examples=2000, batch_size=256,
        precision=DEFAULT_PRECISION, granularity="model", reuse_factor=1,
        synthesize=False, models_dir=None, seed=0, verbose=1):
    """Train, prune and strip `fc_dnn`; compare hls4ml and Keras on both.

    Args:
        data: a CSV/`.npz`/`.npy` table (see `load_tabular`), or None for
            the shipped Letter Recognition table.
        label: the label column.
        out: output folder: `full.keras`, `compact.keras`, the HLS
            projects and `hls4ml.json`.
        rate: target kept fraction of neurons.
        widths: hidden widths of `fc_dnn` (list of 4), default its own.
        epochs: epochs for the full network.
        prune_epochs: most epochs of pruning.
        finetune_epochs: epochs of fine-tuning after `strip`.
        train_examples: use only the first this many training rows.
        compare_examples: test rows run through the C++ emulation.
        batch_size: batch size.
        precision: hls4ml default precision (see `convert`).
        granularity: hls4ml config granularity, `"model"` or `"name"`.
        reuse_factor: hls4ml ReuseFactor.
        synthesize: also run HLS synthesis for a resource estimate (needs
            Vivado/Vitis HLS).
        models_dir: a folder with `full.keras` and `compact.keras` (as
            this function writes to `out`) to convert instead of training.
        seed: random seed.
        verbose: 0 silent, 1 progress lines.

    Returns:
        A dict with, for `"full"` and `"compact"`: widths, MACs, Keras test
        accuracy, the comparison from `compare`, compile seconds and the
        synthesis report (None without an HLS tool).

    Example:

    >>> result = run(epochs=2, prune_epochs=5, finetune_epochs=1)
    >>> result["compact"]["hls4ml"]["argmax_agreement"]
    """
    import keras

    import keras_autopruner as kap
    from keras_autopruner import models
    from keras_autopruner.datasets import load_tabular

    say = print if verbose else (lambda *a, **k: None)
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(seed)
    (x, y), (xt, yt), class_names = load_tabular(data, label=label, seed=seed)
    x, y = x[:train_examples], y[:train_examples]
    xc = xt[:compare_examples]

    def compile_(model):
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=False)

    def fit(model, n, callbacks=()):
        model.fit(x, y, batch_size=batch_size, epochs=n, verbose=0,
                  callbacks=list(callbacks))

    if models_dir:
        full = keras.models.load_model(os.path.join(models_dir, "full.keras"))
        compact = keras.models.load_model(
            os.path.join(models_dir, "compact.keras"))
    else:
        full = models.fc_dnn(input_dim=x.shape[1],
                             num_classes=len(class_names), widths=widths)
        compile_(full)
        say(f"[hls4ml] training the full network ({epochs} epochs)...")
        fit(full, epochs)
        gated = kap.add_gates(full, target_rate=rate)
        compile_(gated)
        say(f"[hls4ml] pruning to {rate:g} of the neurons...")
        fit(gated, prune_epochs,
            [kap.AutoPrunerCallback(objective="global", stop_when_done=True)])
        compact = kap.strip(gated)
        compile_(compact)
        fit(compact, finetune_epochs)
        full.save(os.path.join(out, "full.keras"))
        compact.save(os.path.join(out, "compact.keras"))

    result = {"precision": precision, "granularity": granularity,
              "reuse_factor": reuse_factor,
              "compare_examples": int(len(xc))}
    for key, model in (("full", full), ("compact", compact)):
        start = time.time()
        hls_model = convert(model, os.path.join(out, key), precision,
                            granularity, reuse_factor)
        compile_s = time.time() - start
        result[key] = {
            "widths": models.widths_of(model),
            "macs": kap.count_flops(model).total,
            "params": kap.count_params(model),
            "keras_accuracy": float(model.evaluate(xt, yt, verbose=0)[1]),
            "largest_activation": largest_activation(model, xc),
            "hls4ml": compare(model, hls_model, xc),
            "compile_s": round(compile_s, 1),
            "synthesis": synthesis_report(hls_model) if synthesize else None,
        }
        say(f"[hls4ml] {key}: {_line(result[key])}")
    with open(os.path.join(out, "hls4ml.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    if result["compact"]["synthesis"] is None:
        say("[hls4ml] no resource estimate: it needs HLS synthesis "
            "(--synthesize with Vivado/Vitis HLS on the PATH). Multipliers "
            "with ReuseFactor 1 = MACs above.")
    return result


def _line(entry):
    h = entry["hls4ml"]
    widths = "-".join(str(w) for w in entry["widths"].values())
    return (f"neurons {widths}, MACs {entry['macs']:,}, Keras accuracy "
            f"{entry['keras_accuracy']:.4f}, hls4ml/Keras argmax agreement "
            f"{h['argmax_agreement']:.4f}, |diff| max {h['max_abs_diff']:.2e}"
            f" median row {h['median_row_diff']:.2e}"
            f" (outputs up to {h['output_scale']:.2f}), largest activation "
            f"{entry['largest_activation']:.1f}, C++ build "
            f"{entry['compile_s']:.0f} s")


def main(argv):
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    widths = [int(w) for w in f.widths] if f.widths else None
    run(data=f.data_path, label=f.label, out=f.out, rate=f.rate, widths=widths,
        epochs=f.full_epochs, prune_epochs=f.prune_epochs,
        finetune_epochs=f.finetune_epochs, train_examples=f.train_examples,
        compare_examples=f.compare_examples, batch_size=f.batch_size,
        precision=f.precision, granularity=f.granularity,
        reuse_factor=f.reuse_factor, synthesize=f.synthesize,
        models_dir=f.models_dir, seed=f.seed,
        verbose=f.verbose)


def define_flags(fv=None):
    """Define the example's flags in `fv` (default: absl's global flags)."""
    from absl import flags

    fv = flags.FLAGS if fv is None else fv

    flags.DEFINE_string("data_path", None, "CSV/.npz/.npy table; default: the "
                        "shipped UCI Letter Recognition data",
                        flag_values=fv)
    flags.DEFINE_string("label", None, "label column",
                        flag_values=fv)
    flags.DEFINE_string("out", "runs/fc_dnn_hls4ml", "output folder",
                        flag_values=fv)
    flags.DEFINE_float("rate", 0.5, "target kept fraction of neurons",
                       flag_values=fv)
    flags.DEFINE_list("widths", None, "4 hidden widths (default fc_dnn's)",
                      flag_values=fv)
    flags.DEFINE_integer("full_epochs", 10, "epochs for the full network",
                         flag_values=fv)
    flags.DEFINE_integer("prune_epochs", 30, "most epochs of pruning",
                         flag_values=fv)
    flags.DEFINE_integer("finetune_epochs", 5, "fine-tuning epochs",
                         flag_values=fv)
    flags.DEFINE_integer("train_examples", None, "use this many train rows",
                         flag_values=fv)
    flags.DEFINE_integer("compare_examples", 2000,
                         "test rows run through the C++ emulation",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "batch size",
                         flag_values=fv)
    flags.DEFINE_string("precision", DEFAULT_PRECISION,
                        "hls4ml default precision",
                        flag_values=fv)
    flags.DEFINE_enum("granularity", "model", ["model", "name"],
                      "hls4ml config granularity",
                      flag_values=fv)
    flags.DEFINE_integer("reuse_factor", 1, "hls4ml ReuseFactor",
                         flag_values=fv)
    flags.DEFINE_bool("synthesize", False, "run HLS synthesis for a "
                      "resource estimate (needs Vivado/Vitis HLS)",
                      flag_values=fv)
    flags.DEFINE_string("models_dir", None, "folder with full.keras and "
                        "compact.keras to convert instead of training",
                        flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed",
                         flag_values=fv)
    flags.DEFINE_integer("verbose", 1, "0 or 1",
                         flag_values=fv)


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    define_flags()
    app.run(main)
