"""Does a cheaper gate map choose as well as the published C x C one?

Small on purpose (two CPU cores): `vgg_small` is trained `full_epochs` on
`train_examples` images of the shipped Fashion-MNIST subset, then gated
with each map of `maps` for every layer (`add_gates(gate_map=...)`, rank
`rank` for `"low_rank"`), pruned to the same global MAC budget
(`AutoPrunerCallback`, `stop_when_done`, at most `prune_epochs`), stripped
and fine-tuned `finetune_epochs`. Printed per map: the test accuracy (all
2,000 test images) per seed, their mean, the kept MAC share and the gate
parameters. Same data, epochs and learning rate for every map.

    .venv/bin/python bench/gate_maps.py [--rate=0.25] [--seeds=0,1]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner import models  # noqa: E402
from keras_autopruner.datasets import load_fashion_mnist  # noqa: E402
from keras_autopruner.gate import gates_of  # noqa: E402


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    flags.DEFINE_float("rate", 0.25, "global MAC budget", flag_values=fv)
    flags.DEFINE_list("seeds", ["0", "1"], "seeds", flag_values=fv)
    flags.DEFINE_list("maps", ["full", "low_rank", "diagonal"],
                      "gate maps to compare", flag_values=fv)
    flags.DEFINE_integer("rank", 8, "rank of the low_rank map",
                         flag_values=fv)
    flags.DEFINE_integer("train_examples", 3000, "training images",
                         flag_values=fv)
    flags.DEFINE_integer("full_epochs", 3, "epochs before gating",
                         flag_values=fv)
    flags.DEFINE_integer("prune_epochs", 4, "most pruning epochs",
                         flag_values=fv)
    flags.DEFINE_integer("finetune_epochs", 1, "epochs after strip",
                         flag_values=fv)


def compiled(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    (x, y), (xt, yt) = load_fashion_mnist()
    n = args.train_examples
    x = (x[:n, ..., None] / 255.0).astype("float32")
    y = y[:n]
    xt = (xt[..., None] / 255.0).astype("float32")
    rows = {m: [] for m in args.maps}
    for seed in [int(s) for s in args.seeds]:
        keras.utils.set_random_seed(seed)
        base = compiled(models.vgg_small())
        base.fit(x, y, batch_size=32, epochs=args.full_epochs, verbose=0)
        for gate_map in args.maps:
            keras.utils.set_random_seed(seed)
            gated = compiled(kap.add_gates(base, args.rate,
                                           gate_map=gate_map,
                                           rank=args.rank))
            gate_params = sum(g.count_params() for g in gates_of(gated))
            cb = kap.AutoPrunerCallback(stop_when_done=True)
            gated.fit(x, y, batch_size=32, epochs=args.prune_epochs,
                      verbose=0, callbacks=[cb])
            share = cb.result["cost_share"]
            compact = compiled(kap.strip(gated))
            compact.fit(x, y, batch_size=32, epochs=args.finetune_epochs,
                        verbose=0)
            acc = compact.evaluate(xt, yt, verbose=0)[1]
            rows[gate_map].append((seed, acc, share, cb.result["steps"],
                                   gate_params))
            print(f"seed {seed} {gate_map}: accuracy {acc:.4f}, MAC share "
                  f"{share:.3f}, {cb.result['steps']} pushing steps "
                  f"({cb.result['reason']})", flush=True)
    print(f"\nvgg_small, {n} Fashion-MNIST images, global MAC budget "
          f"{args.rate}, {args.full_epochs}+{args.prune_epochs}(max)+"
          f"{args.finetune_epochs} epochs, low_rank rank {args.rank}")
    print("| gate map | gate params | accuracy per seed | mean | MAC share "
          "| pushing steps |")
    print("|---|---|---|---|---|---|")
    for gate_map, r in rows.items():
        accs = [a for _, a, _, _, _ in r]
        print(f"| {gate_map} | {r[0][4]:,} | "
              f"{', '.join(f'{a:.4f}' for a in accs)} | "
              f"{np.mean(accs):.4f} | "
              f"{', '.join(f'{s:.3f}' for _, _, s, _, _ in r)} | "
              f"{', '.join(str(t) for *_, t, _ in r)} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
