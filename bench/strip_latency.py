"""CPU latency of VGG16 before and after `strip`, side by side in one run.

VGG16 (32x32 input, 10 classes, random weights) is gated, every gate keeps
exactly half of its filters (random choice), and the gated model is
stripped. A third model, the ceiling, is VGG16 written out by hand at the
stripped widths: a stripped model should run as fast as it. The three are
timed in turns (one call of each per round, in a random order, so that a
change in machine load hits all three alike) at batch 1 and batch 64, and
the script prints the median latencies, the measured speed-up, the FLOP
ratio, and the speed-up as a share of the FLOP ratio.

Usage (`make bench BENCH=strip_latency`, or from a checkout):

    PYTHONPATH=. .venv/bin/python bench/strip_latency.py
    PYTHONPATH=. .venv/bin/python bench/strip_latency.py --rounds=300 \\
        --rounds_batch64=40 --rate=0.5
"""

import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import keras  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402

L = keras.layers

# VGG16's convolution blocks: filters of each conv layer.
BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512],
          [512, 512, 512]]


def vgg16():
    return keras.applications.VGG16(weights=None, input_shape=(32, 32, 3),
                                    classes=10)


def half_masks(gated, keep, seed):
    """Each gate keeps exactly round(keep * units) filters."""
    rng = np.random.default_rng(seed)
    for gate in gates_of(gated):
        mask = np.zeros(gate.units, dtype="float32")
        mask[rng.choice(gate.units, round(keep * gate.units),
                        replace=False)] = 1.0
        gate.moving_code.assign(mask)
    kap.set_hard_masks(gated, True)


def ceiling(widths):
    """VGG16 written by hand with the given layer widths."""
    layers = [keras.Input((32, 32, 3))]
    for b, block in enumerate(BLOCKS, start=1):
        for i in range(1, len(block) + 1):
            name = f"block{b}_conv{i}"
            layers.append(L.Conv2D(widths[name], 3, padding="same",
                                   activation="relu", name=name))
        layers.append(L.MaxPooling2D(name=f"block{b}_pool"))
    layers += [
        L.Flatten(),
        L.Dense(widths["fc1"], activation="relu", name="fc1"),
        L.Dense(widths["fc2"], activation="relu", name="fc2"),
        L.Dense(10, activation="softmax", name="predictions"),
    ]
    return keras.Sequential(layers, name="vgg16_ceiling")


def widths_of(model):
    return {layer.name: getattr(layer, "filters", None) or layer.units
            for layer in model.layers
            if isinstance(layer, (L.Conv2D, L.Dense))}


def timed_calls(models, batch, rounds, warmup=5):
    """Median seconds per call of each model, timed in turns."""
    x = tf.constant(np.random.default_rng(0).normal(
        size=(batch, 32, 32, 3)).astype("float32"))
    calls = []
    for model in models:
        fn = tf.function(lambda t, m=model: m(t, training=False))
        for _ in range(warmup):
            fn(x).numpy()
        calls.append(fn)
    times = [[] for _ in models]
    order = np.random.default_rng(1)
    for _ in range(rounds):
        # A call runs slower right after a bigger model has flushed the
        # caches; a fresh order each round shares that out evenly.
        for k in order.permutation(len(calls)):
            start = time.perf_counter()
            calls[k](x).numpy()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_float("rate", 0.5, "fraction of filters each gate keeps",
                       flag_values=fv)
    flags.DEFINE_integer("rounds", 300, "timed rounds at batch 1",
                         flag_values=fv)
    flags.DEFINE_integer("rounds_batch64", 40, "timed rounds at batch 64",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed", flag_values=fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    tf.config.set_visible_devices([], "GPU")  # The benchmark is about the CPU.
    args = flags.FLAGS

    keras.utils.set_random_seed(args.seed)
    full = vgg16()
    gated = kap.add_gates(full, args.rate)
    half_masks(gated, args.rate, args.seed)
    compact = kap.strip(gated)
    roof = ceiling(widths_of(compact))
    assert widths_of(roof) == widths_of(compact)

    flops = [kap.count_flops(m).total for m in (full, compact, roof)]
    params = [kap.count_params(m) for m in (full, compact, roof)]
    flop_ratio = flops[0] / flops[1]
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average at start {os.getloadavg()[0]:.1f} (other processes "
          "on this machine slow every model alike; the models are timed in "
          "turns)")
    print(f"VGG16 32x32, 10 classes; each gate keeps {args.rate:.0%} of its "
          "filters")
    print(f"MACs   full {flops[0]:,}  stripped {flops[1]:,}  ceiling "
          f"{flops[2]:,}  (FLOP ratio x{flop_ratio:.2f})")
    print(f"params full {params[0]:,}  stripped {params[1]:,}  ceiling "
          f"{params[2]:,}")
    print()
    header = (f"{'batch':>5}  {'full ms':>9}  {'stripped ms':>11}  "
              f"{'ceiling ms':>10}  {'speed-up':>8}  {'FLOP ratio':>10}  "
              f"{'speed-up/FLOP':>13}  {'stripped/ceiling':>16}")
    print(header)
    for batch, rounds in zip((1, 64), (args.rounds, args.rounds_batch64)):
        t_full, t_compact, t_roof = timed_calls(
            [full, compact, roof], batch, rounds)
        speedup = t_full / t_compact
        print(f"{batch:>5}  {1e3 * t_full:>9.2f}  {1e3 * t_compact:>11.2f}  "
              f"{1e3 * t_roof:>10.2f}  {speedup:>7.2f}x  "
              f"{flop_ratio:>9.2f}x  {speedup / flop_ratio:>12.0%}  "
              f"{t_compact / t_roof:>15.2f}x")


if __name__ == "__main__":
    define_flags()
    app.run(main)
