"""keras.applications models: the plan, an exact strip, the MAC share.

For one representative of each family (`--models=all`: every model
`keras.applications` exports), at a small input: how many of its
prunable layers the plan gates, whether `strip` of random half masks (each
gate keeps each channel with probability 1/2) computes what the
hard-masked gated model computes, whether the stripped model's
`count_flops` and `count_params` are what `CostModel` predicts from the
masks, and its share of the full model's MACs. The figures go in
BUILD_NOTES ("issue 15", "users' graphs, part 5").

    python bench/zoo_plan.py [--models=ResNet50,VGG16|all] [--rate=0.5] \
        [--seed=0]
"""

import time

from absl import app, flags
import keras
import numpy as np

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.budget import CostModel
from keras_autopruner.gate import gates_of

FLAGS = flags.FLAGS


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_list("models", sorted(models.APPLICATION_FAMILIES),
                      "keras.applications model names, or all",
                      flag_values=fv)
    flags.DEFINE_float("rate", 0.5,
                       "chance that a gate keeps each of its channels",
                       flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the masks and the weights",
                         flag_values=fv)


def run(name, rate, seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, size = models.application(name)
    models.spread_statistics(model, rng)
    start = time.time()
    gated = kap.add_gates(model, rate)
    plan = gated.pruning_plan
    masks = []
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < rate
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
        masks.append(mask)
    compact = kap.strip(gated, on_collapse="raise")
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(gated(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    error = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)),
                                                   1e-12))
    flops, params = kap.count_flops(compact), kap.count_params(compact)
    predicted = all(
        abs(count - CostModel(gated, w).cost(masks)) <= 1e-6 * count
        for count, w in ((flops, "flops"), (params, "params")))
    full = kap.count_flops(model)
    return {"model": name, "gated": len(plan.gated), "predicted": predicted,
            "prunable": len(plan.rows), "rel_error": error,
            "mac_share": int(flops) / int(full),
            "seconds": time.time() - start, "unknown": full.unknown}


def main(argv):
    del argv
    names = (models.application_names() if FLAGS.models == ["all"]
             else FLAGS.models)
    print("| model | gates / prunable layers | MAC share at random half "
          "masks | max rel. error | MACs, params as predicted | uncounted "
          "| s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = run(name, FLAGS.rate, FLAGS.seed)
        print(f"| {r['model']} | {r['gated']} / {r['prunable']} | "
              f"{r['mac_share']:.3f} | {r['rel_error']:.1e} | "
              f"{'yes' if r['predicted'] else 'NO'} | "
              f"{len(r['unknown'])} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
