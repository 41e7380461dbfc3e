"""Every keras.applications family: the plan, an exact strip, the MAC share.

For one representative of each family, at a small input: how many of its
prunable layers the plan gates, whether `strip` of random half masks (each
gate keeps each channel with probability 1/2) computes what the
hard-masked gated model computes, and the stripped model's share of the
full model's MACs. The figures go in BUILD_NOTES ("issue 15").

    python bench/zoo_plan.py [--models=ResNet50,VGG16] [--seed=0]
"""

import time

from absl import app, flags
import keras
import numpy as np

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.gate import gates_of

flags.DEFINE_list("models", sorted(models.APPLICATION_FAMILIES),
                  "families to run")
flags.DEFINE_integer("seed", 0, "seed of the masks and the weights")
FLAGS = flags.FLAGS


def run(name, seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, size = models.application(name)
    models.spread_statistics(model, rng)
    start = time.time()
    plan = kap.plan(model, 0.5)
    gated = kap.add_gates(model, 0.5)
    for gate in gates_of(gated):
        mask = rng.random(gate.units) < 0.5
        mask[rng.integers(gate.units)] = True
        gate.set_mask(mask)
    compact = kap.strip(gated, on_collapse="raise")
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(gated(x, training=False))
    got = keras.ops.convert_to_numpy(compact(x))
    error = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)),
                                                   1e-12))
    share = int(kap.count_flops(compact)) / int(kap.count_flops(model))
    return {"model": name, "gated": len(plan.gated),
            "prunable": len(plan.rows), "rel_error": error,
            "mac_share": share, "seconds": time.time() - start,
            "unknown": kap.count_flops(model).unknown}


def main(argv):
    del argv
    print("| model | gates / prunable layers | MAC share at random half "
          "masks | max rel. error | uncounted | s |")
    print("|---|---|---|---|---|---|")
    for name in FLAGS.models:
        r = run(name, FLAGS.seed)
        print(f"| {r['model']} | {r['gated']} / {r['prunable']} | "
              f"{r['mac_share']:.3f} | {r['rel_error']:.1e} | "
              f"{len(r['unknown'])} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
