"""File size and CPU latency of the full and the stripped tagger in each
deployment format.

The fully connected tagger (`models.fc_dnn`, 16 features, 26 classes) is
gated, every gate keeps `--rate` of its neurons (a random choice: latency
does not depend on what the weights learned), and the gated model is
stripped. Give `--models_dir` (a folder with `full.keras` and
`compact.keras`, as `examples/fc_dnn_hls4ml.py` writes) to measure trained
models instead.

Each model is written as `.keras`, as a SavedModel and as ONNX (through
`keras_autopruner.export`), and run in each runtime: Keras (the model
called in a `tf.function`), the SavedModel reloaded with
`tf.saved_model.load`, the ONNX file in onnxruntime (CPU), and, with
`--hls4ml`, hls4ml's C++ emulation. The emulation computes in bit-accurate
fixed point on the CPU: its time says nothing about the FPGA's latency.
Calls are timed in turns (one of each per round, in a random order) and the
median is printed, at batch 1 and at `--batch_size`.

Usage:

    PYTHONPATH=. .venv/bin/python bench/deploy_formats.py
    PYTHONPATH=. .venv/bin/python bench/deploy_formats.py --rounds=200 \\
        --batch_size=256 --hls4ml
"""

import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_float("rate", 0.5, "fraction of neurons each gate keeps",
                       flag_values=fv)
    flags.DEFINE_integer("rounds", 200, "timed rounds per batch size",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "the larger batch size timed",
                         flag_values=fv)
    flags.DEFINE_bool("hls4ml", False, "also time hls4ml's C++ emulation "
                      "(compiles each model with g++, about half a minute each)",
                      flag_values=fv)
    flags.DEFINE_string("models_dir", None, "folder with full.keras and "
                        "compact.keras to measure instead of random weights",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "where to write the artifacts (default: "
                        "a temporary folder, removed at the end)",
                        flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed",
                         flag_values=fv)


FLAGS = flags.FLAGS


def size_of(path):
    """Bytes of a file, or of everything under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def build_models(keep, seed):
    import keras
    import numpy as np

    import keras_autopruner as kap
    from keras_autopruner import models
    from keras_autopruner.gate import gates_of

    keras.utils.set_random_seed(seed)
    full = models.fc_dnn(input_dim=16, num_classes=26)
    gated = kap.add_gates(full, keep)
    rng = np.random.default_rng(seed)
    for gate in gates_of(gated):
        mask = np.zeros(gate.units, dtype="float32")
        mask[rng.choice(gate.units, max(1, round(keep * gate.units)),
                        replace=False)] = 1.0
        gate.moving_code.assign(mask)
    kap.set_hard_masks(gated, True)
    return full, kap.strip(gated)


def have_onnx():
    import importlib.util

    return all(importlib.util.find_spec(name)
               for name in ("onnx", "tf2onnx", "onnxruntime"))


def runners(model, folder, use_hls4ml):
    """Write `model` in each format; return ({runtime: fn(x)}, {format:
    bytes})."""
    import tensorflow as tf

    import keras_autopruner as kap

    os.makedirs(folder, exist_ok=True)
    paths = {"keras": os.path.join(folder, "model.keras"),
             "saved_model": os.path.join(folder, "saved_model")}
    model.save(paths["keras"])
    kap.export(model, paths["saved_model"], overwrite=True)
    keras_call = tf.function(lambda t: model(t, training=False))
    served = tf.saved_model.load(paths["saved_model"])
    calls = {
        "Keras": lambda x: keras_call(tf.constant(x)).numpy(),
        "SavedModel": lambda x: served.serve(tf.constant(x)).numpy(),
    }
    if have_onnx():
        import onnxruntime as ort

        paths["onnx"] = os.path.join(folder, "model.onnx")
        kap.export(model, paths["onnx"], format="onnx", overwrite=True)
        session = ort.InferenceSession(paths["onnx"],
                                       providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        calls["onnxruntime"] = (
            lambda x: session.run(None, {input_name: x})[0])
    sizes = {k: size_of(p) for k, p in paths.items()}
    if use_hls4ml:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "fc_dnn_hls4ml", os.path.join(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))), "examples", "fc_dnn_hls4ml.py"))
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        start = time.time()
        hls_model = example.convert(model, os.path.join(folder, "hls4ml"))
        logging.warning("hls4ml compile of %s: %.0f s", model.name,
                        time.time() - start)
        calls["hls4ml C++ emulation"] = hls_model.predict
    return calls, sizes


def timed(calls, x, rounds, seed, warmup=5):
    """Median seconds per call of each entry of `calls`, timed in turns."""
    import numpy as np

    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key](x)
    times = {key: [] for key in keys}
    order = np.random.default_rng(seed)
    for _ in range(rounds):
        for k in order.permutation(len(keys)):
            start = time.perf_counter()
            calls[keys[k]](x)
            times[keys[k]].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # The benchmark is about CPUs.
    import keras_autopruner as kap

    if FLAGS.models_dir:
        full = keras.models.load_model(
            os.path.join(FLAGS.models_dir, "full.keras"))
        compact = keras.models.load_model(
            os.path.join(FLAGS.models_dir, "compact.keras"))
    else:
        full, compact = build_models(FLAGS.rate, FLAGS.seed)
    out = FLAGS.out or tempfile.mkdtemp(prefix="deploy_formats-")
    models = {"full": full, "compact": compact}
    calls, sizes = {}, {}
    for key, model in models.items():
        calls[key], sizes[key] = runners(model, os.path.join(out, key),
                                         FLAGS.hls4ml)

    if have_onnx():
        import onnxruntime as ort

        versions = f", onnxruntime {ort.__version__}"
    else:
        versions = (" (no ONNX: pip install 'keras_autopruner[deploy]' to "
                    "time onnxruntime)")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
          f"{versions}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}")
    widths = {k: "-".join(str(layer.units) for layer in m.layers
                          if isinstance(layer, keras.layers.Dense))
              for k, m in models.items()}
    for key, model in models.items():
        print(f"{key:8s} Dense widths {widths[key]}, params "
              f"{kap.count_params(model):,}, MACs "
              f"{kap.count_flops(model).total:,}")
    print()
    print(f"{'format':12s} {'full KiB':>9s} {'compact KiB':>12s} "
          f"{'ratio':>6s}")
    for fmt in sizes["full"]:
        a, b = sizes["full"][fmt] / 1024, sizes["compact"][fmt] / 1024
        print(f"{fmt:12s} {a:9.1f} {b:12.1f} {a / b:6.2f}")
    print()
    rng = np.random.default_rng(FLAGS.seed)
    print(f"{'runtime':22s} {'batch':>5s} {'full ms':>9s} "
          f"{'compact ms':>10s} {'speed-up':>8s}")
    for batch in (1, FLAGS.batch_size):
        x = rng.normal(size=(batch, 16)).astype("float32")
        # Full and compact of one runtime are timed in the same rounds.
        merged = {(k, r): fn for k in models for r, fn in calls[k].items()}
        medians = timed(merged, x, FLAGS.rounds, FLAGS.seed)
        for runtime in calls["full"]:
            a = medians[("full", runtime)]
            b = medians[("compact", runtime)]
            print(f"{runtime:22s} {batch:5d} {1e3 * a:9.3f} "
                  f"{1e3 * b:10.3f} {a / b:7.2f}x")
    if not FLAGS.out:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
