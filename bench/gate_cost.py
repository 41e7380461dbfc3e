"""What the gates cost on VGG16: parameters and training-step time.

Two gate variants (see AutoPrunerGate):
- `avg`: global average pool, a C x C map per gate;
- `max`: the authors' 2x2 max pool with every pooled position connected,
  a (C * H/2 * W/2) x C map per gate.

Parameters are counted at the paper's 224x224 input. Training-step time is
measured side by side in one run at a smaller input (default 64x64, batch 8)
for the plain VGG16 and the two gated variants, and printed as ratios to
the plain model.

    .venv/bin/python bench/gate_cost.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402
from keras_autopruner.metrics import count_params  # noqa: E402


def vgg16(size, classes=200):
    return keras.applications.VGG16(weights=None, input_shape=(size, size, 3),
                                    classes=classes)


def gate_params(size, pooling):
    gated = kap.add_gates(vgg16(size), 0.5, pooling=pooling)
    return sum(int(np.prod(g.kernel.shape)) + g.units for g in gates_of(gated))


def step_time(model, size, batch, repeats):
    model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    x = np.random.RandomState(0).rand(batch, size, size, 3).astype("float32")
    y = np.zeros(batch, "int64")
    model.train_on_batch(x, y)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_integer("param_image_size", 224,
                         "input side at which gate parameters are counted",
                         flag_values=fv)
    flags.DEFINE_integer("image_size", 64,
                         "input side at which steps are timed",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "batch size of the timed steps",
                         flag_values=fv)
    flags.DEFINE_integer("rounds", 10, "timed training steps per model",
                         flag_values=fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS

    base = count_params(vgg16(args.param_image_size))
    size = args.param_image_size
    print(f"VGG16 at {size}x{size}, 200 classes: "
          f"{base:,} parameters")
    print("| gate | gate parameters | x VGG16's |")
    print("|---|---|---|")
    for pooling in ("avg", "max"):
        n = gate_params(args.param_image_size, pooling)
        print(f"| {pooling} | {n:,} | {n / base:.3f} |")
        keras.backend.clear_session()

    print(f"\ntraining step at {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, median of {args.rounds} (CPU threads: "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'auto'})")
    plain = step_time(vgg16(args.image_size), args.image_size, args.batch_size,
                      args.rounds)
    rows = [("plain VGG16", plain)]
    for pooling in ("avg", "max"):
        gated = kap.add_gates(vgg16(args.image_size), 0.5, pooling=pooling)
        rows.append((f"gated, {pooling}",
                     step_time(gated, args.image_size, args.batch_size,
                               args.rounds)))
    print("| model | step (ms) | x plain |")
    print("|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {1000 * t:.1f} | {t / plain:.3f} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
