"""What the callback's NaN/Inf check costs on VGG16.

`AutoPrunerCallback` checks every trainable weight at each control step
(`keras_autopruner.checks.nonfinite_weights`: one `all(isfinite(w))`
reduction per weight). This prints the time of one check, of one training
step of the gated VGG16, and the check's share of the time of
`control_every` steps.

    .venv/bin/python bench/check_cost.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.checks import nonfinite_weights  # noqa: E402


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_integer("image_size", 64, "input side", flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "training batch", flag_values=fv)
    flags.DEFINE_integer("rounds", 5, "timed repetitions", flag_values=fv)
    flags.DEFINE_integer("control_every", 10,
                         "optimizer steps between two checks", flag_values=fv)


def main(argv):
    del argv
    f = flags.FLAGS
    size = f.image_size
    gated = kap.add_gates(keras.applications.VGG16(
        weights=None, input_shape=(size, size, 3), classes=200), 0.5)
    gated.compile("adam", "sparse_categorical_crossentropy")
    params = sum(int(np.prod(w.shape)) for w in gated.trainable_weights)
    x = np.zeros((f.batch_size, size, size, 3), "float32")
    y = np.zeros(f.batch_size)
    nonfinite_weights(gated, trainable_only=True)
    gated.train_on_batch(x, y)  # both traced before timing
    start = time.perf_counter()
    for _ in range(f.rounds):
        nonfinite_weights(gated, trainable_only=True)
    check = (time.perf_counter() - start) / f.rounds
    start = time.perf_counter()
    for _ in range(f.rounds):
        gated.train_on_batch(x, y)
    step = (time.perf_counter() - start) / f.rounds
    print(f"gated VGG16 at {size}x{size}, {params / 1e6:.1f} M trainable "
          f"parameters: check {check * 1e3:.1f} ms, training step "
          f"{step * 1e3:.1f} ms (batch {f.batch_size}); the check is "
          f"{check / (f.control_every * step):.2%} of {f.control_every} "
          "steps")


if __name__ == "__main__":
    define_flags()
    app.run(main)
