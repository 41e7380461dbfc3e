"""Training-step time of the demo network with gates, against without.

The demo's network (`vgg_small`, default widths, 28x28x1, batch 64 by
default) is timed plain, gated while pushing (the gates compute their codes
and the pruning term), and gated after the exact choice (phase done: the
gates apply a fixed mask). Each model runs its compiled training step
(`train_on_batch` on the same batch); the three are timed in interleaved
rounds, one step of each per round in a random order, so that load on the
machine hits all of them alike. Printed: median step time and the ratio to
the plain model.

    .venv/bin/python bench/gate_overhead.py [--batch_size=64] [--rounds=200]
"""

import os
import random
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner import models  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402


def compiled(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy")
    return model


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_integer("batch_size", 64, "batch size of the timed steps",
                         flag_values=fv)
    flags.DEFINE_integer("rounds", 200, "timed rounds (one step per model)",
                         flag_values=fv)
    flags.DEFINE_integer("warmup", 20, "untimed rounds first",
                         flag_values=fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS

    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.rand(args.batch_size, 28, 28, 1).astype("float32")
    y = rng.randint(0, 10, args.batch_size)

    plain = compiled(models.vgg_small())
    pushing = kap.add_gates(models.vgg_small(), 0.5)
    for g in gates_of(pushing):  # what the callback sets while pushing
        g.phase.assign(1.0)
        g.coef.assign(1.0)
    compiled(pushing)
    done = kap.add_gates(models.vgg_small(), 0.5)
    for g in gates_of(done):
        g.set_mask(np.arange(g.units) % 2 == 0)
        g.phase.assign(2.0)
    compiled(done)
    runs = {"plain": plain, "gated, pushing": pushing, "gated, done": done}
    times = {name: [] for name in runs}
    for _ in range(args.warmup):
        for model in runs.values():
            model.train_on_batch(x, y)
    names = list(runs)
    for _ in range(args.rounds):
        random.shuffle(names)
        for name in names:
            start = time.perf_counter()
            runs[name].train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    base = float(np.median(times["plain"]))
    print(f"vgg_small 28x28x1, batch {args.batch_size}, median of "
          f"{args.rounds} "
          "interleaved rounds")
    print("| model | step (ms) | x plain |")
    print("|---|---|---|")
    for name in runs:
        t = float(np.median(times[name]))
        print(f"| {name} | {1000 * t:.2f} | {t / base:.3f} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
