"""One-shot pruning by each importance criterion (`kap.prune`), on vgg_small.

Trains `vgg_small` briefly on the embedded Fashion-MNIST subset, then for
each criterion and rate prunes it in one shot to keep `rate` of the MACs
(`PruningObjective("global", weighting="flops")`), and prints the MAC and
parameter shares of the stripped model (from `count_flops`/`count_params`),
its test accuracy straight after pruning and after `--finetune_epochs`,
and the seconds `kap.prune` took ('bn' leaves fc1, which has no batch
norm, whole). The learned AutoPruner criterion needs a
gated training run and is the study's business (`python -m
keras_autopruner.study`), not this one-shot table's.

    .venv/bin/python bench/criteria.py --train_examples=3000 --full_epochs=2
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner import models  # noqa: E402
from keras_autopruner.datasets.fashion_mnist import (  # noqa: E402
    load_fashion_mnist)

FLAGS = flags.FLAGS


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_list("criteria", ["l1", "l2", "bn", "taylor", "random"],
                      "importance criteria", flag_values=fv)
    flags.DEFINE_list("rates", ["0.5", "0.25"], "shares of the MACs to keep",
                      flag_values=fv)
    flags.DEFINE_integer("train_examples", 3000, "training images",
                         flag_values=fv)
    flags.DEFINE_integer("full_epochs", 2, "epochs of the full model",
                         flag_values=fv)
    flags.DEFINE_integer("finetune_epochs", 1, "epochs after pruning",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "batch size", flag_values=fv)
    flags.DEFINE_list("allocations", ["threshold"],
                      "how a global budget splits over layers (prune's "
                      "allocation=)", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of weights and data order",
                         flag_values=fv)


def compiled(model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    (x, y), (xt, yt) = load_fashion_mnist()
    x = (x[:FLAGS.train_examples, ..., None] / 255.0).astype("float32")
    y = y[:FLAGS.train_examples]
    xt = (xt[..., None] / 255.0).astype("float32")
    model = compiled(models.vgg_small(), 1e-3)
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.full_epochs,
              verbose=0)
    full_acc = model.evaluate(xt, yt, verbose=0)[1]
    flops, params = kap.count_flops(model).total, kap.count_params(model)
    print(f"full model: {flops} MACs, {params} params, test accuracy "
          f"{full_acc:.4f}", flush=True)
    print("criterion  allocation rate   MACs    params  acc     acc_ft  "
          "prune_s")
    for rate, allocation, name in [
            (float(r), a, c) for r in FLAGS.rates for a in FLAGS.allocations
            for c in FLAGS.criteria]:
        importance = (kap.Taylor("sparse_categorical_crossentropy",
                                 batches=8, batch_size=FLAGS.batch_size)
                      if name == "taylor" else name)
        start = time.perf_counter()
        # fc1 has no batch norm behind it: 'bn' cannot rank it.
        extra = {"exclude": ["fc1"]} if name == "bn" else {}
        compact = kap.prune(model, importance, rate, kap.PruningObjective(
            "global", weighting="flops"), data=(x, y),
            allocation=allocation, **extra)
        seconds = time.perf_counter() - start
        compiled(compact, 1e-4)
        acc = compact.evaluate(xt, yt, verbose=0)[1]
        compact.fit(x, y, batch_size=FLAGS.batch_size,
                    epochs=FLAGS.finetune_epochs, verbose=0)
        acc_ft = compact.evaluate(xt, yt, verbose=0)[1]
        print(f"{name:10s} {allocation:10s} {rate:.2f}  "
              f"{kap.count_flops(compact).total / flops:.4f}  "
              f"{kap.count_params(compact) / params:.4f}  {acc:.4f}  "
              f"{acc_ft:.4f}  {seconds:.2f}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
