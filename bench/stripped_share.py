"""Share of MACs a stripped Keras Application keeps under random gate masks.

Every gate keeps about `--rate` of its channels, drawn at random (one is
always kept), the gated model is stripped, and the stripped model's MACs
(`count_flops`) are printed as a share of the unpruned model's. A
convolution whose input and output channels are both gated keeps about
rate**2 of its MACs, one gated on one side about rate; a share well above
that means strip cannot remove channels the gates zero (a layer between
the gate and the next convolution turns their zeros into constants).
Untrained weights: only the structure matters here.

    .venv/bin/python bench/stripped_share.py --models=MobileNetV2 --seed=0
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_list("models", ["ResNet50", "MobileNetV2", "EfficientNetB0",
                                 "DenseNet121"],
                      "keras.applications model names", flag_values=fv)
    flags.DEFINE_integer("image_size", 32, "input side", flag_values=fv)
    flags.DEFINE_float("rate", 0.5,
                       "chance that a gate keeps each of its channels",
                       flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the random masks",
                         flag_values=fv)


def stripped_share(name, size, rate, seed):
    """(stripped MACs / full MACs, number of gates) for one application."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10)
    gated = kap.add_gates(model, rate)
    gates = gates_of(gated)
    for gate in gates:
        mask = rng.random(gate.units) < rate
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
    compact = kap.strip(gated, on_collapse="raise")
    full = kap.count_flops(model).total
    return kap.count_flops(compact).total / full, len(gates)


def main(argv):
    del argv
    for name in FLAGS.models:
        share, n_gates = stripped_share(name, FLAGS.image_size, FLAGS.rate,
                                        FLAGS.seed)
        print(f"{name:16s} gates {n_gates:4d}  stripped MAC share "
              f"{share:.3f}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
