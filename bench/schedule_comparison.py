"""Published step schedule vs the adaptive controller, side by side.

All runs start from the same trained VGG-style convnet on Fashion-MNIST,
gate it with target 0.5, and prune with AutoPrunerCallback until the kept
fraction is within 0.02 of the target with binary codes. Runs:

- `step`: the published lambda schedule `StepLambda()` (x10 every 20 epochs
  from 1 to 1e7, pushing from epoch 0) with our `AlphaSchedule()` (alpha held
  until the gates have chosen);
- `controller`: `LambdaController()` (the default) with the same alpha, so
  that step vs controller isolates lambda;
- `step_clock`: the study's setting, `StepLambda()` with alpha sharpening on
  a clock from epoch 0 (`AlphaSchedule(release=None)`), capped at
  `--clock_prune_epochs`;
- `fastest`: lambda = 1e4 from epoch 0 with our alpha: no lambda schedule
  pushes harder, so its epochs are a floor for any lambda schedule on this
  task (the gates move at most one Adam step per batch).

Printed for each: epochs until done, final test accuracy of the pruned
(hard-mask) network, the ratios, and (since runs that stop early have
trained less) the test accuracy after fine-tuning each finished run's
stripped network up to `--equal_epochs` epochs in all. Goal: the controller needs at most a
quarter of the step schedule's epochs, with accuracy no worse by more than
one point.

    .venv/bin/python bench/schedule_comparison.py  # Debian files if there
    .venv/bin/python bench/schedule_comparison.py --data_path=embedded
    .venv/bin/python bench/schedule_comparison.py --runs=step,controller
"""

import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import keras_autopruner as kap  # noqa: E402
from keras_autopruner.datasets import (default_fashion_mnist_path,  # noqa: E402
                                       load_fashion_mnist)

L = keras.layers


def small_vgg():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dropout(0.3),
        L.Dense(10, activation="softmax"),
    ], name="small_vgg")


def compile_model(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def runs(steps_per_epoch):
    """name -> (lambda schedule, alpha schedule).

    The published schedule multiplies lambda by 10 every 20 epochs; the
    schedules count optimizer steps, so that is 20 epochs' worth of steps.
    """
    every = 20 * steps_per_epoch
    return {
        "step": (kap.StepLambda(every=every), kap.AlphaSchedule()),
        "controller": (kap.LambdaController(), kap.AlphaSchedule()),
        "step_clock": (kap.StepLambda(every=every),
                       kap.AlphaSchedule(release=None)),
        "fastest": (kap.StepLambda(start=1e4, factor=1.0, stop=1e4),
                    kap.AlphaSchedule()),
    }


def prune(full_weights, schedule, alpha, data, args, max_epochs):
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(args.seed)
    full = small_vgg()
    full.set_weights(full_weights)
    gated = compile_model(kap.add_gates(full, target_rate=args.rate))
    cb = kap.AutoPrunerCallback(schedule=schedule, alpha=alpha,
                                objective="layer",
                                stop_when_done=True, tolerance=0.02)
    start = time.time()
    history = gated.fit(x, y, batch_size=args.batch_size,
                        epochs=max_epochs, verbose=0,
                        validation_data=(xt, yt), callbacks=[cb])
    h = history.history
    converged = cb.result["reason"] == "done"
    kap.set_hard_masks(gated, True)
    _, acc = gated.evaluate(xt, yt, verbose=0)
    equal = None
    if converged and args.equal_epochs > len(h["loss"]):
        # A run that stops early has trained less; fine-tune its stripped
        # network up to the common budget so accuracies compare at equal
        # training, the way a user would go on after pruning.
        compact = compile_model(kap.strip(gated))
        compact.fit(x, y, batch_size=args.batch_size, verbose=0,
                    epochs=args.equal_epochs - len(h["loss"]))
        equal = float(compact.evaluate(xt, yt, verbose=0)[1])
    elif len(h["loss"]) == args.equal_epochs:
        equal = float(acc)
    return {
        "done": converged,
        "epochs": len(h["loss"]),
        "kept": kap.kept_fraction(gated)["overall"],
        "binary": h["binary"][-1],
        "test_accuracy": float(acc),
        "accuracy_at_equal_epochs": equal,
        "lambda_final": h["lambda"][-1],
        "seconds": time.time() - start,
        "trace": {k: [round(float(v), 4) for v in h[k]]
                  for k in ("kept", "lambda", "alpha", "binary", "val_accuracy")},
    }


def define_flags(fv=flags.FLAGS):
    """Define the benchmark's flags in `fv`."""
    kw = {"flag_values": fv}
    flags.DEFINE_string("data_path", "auto",
                        "'auto' (Debian files if installed, else embedded), "
                        "'embedded', or a path to the IDX directory / .npz",
                        **kw)
    flags.DEFINE_integer("train_examples", 10000,
                         "training images (a random draw)", **kw)
    flags.DEFINE_integer("full_epochs", 5, "epochs of the full model", **kw)
    flags.DEFINE_integer("prune_epochs", 150, "most epochs of pruning", **kw)
    flags.DEFINE_integer("batch_size", 128, "training batch size", **kw)
    flags.DEFINE_float("rate", 0.5, "target kept fraction", **kw)
    flags.DEFINE_integer("clock_prune_epochs", 60,
                         "most epochs of pruning for the step_clock run, "
                         "which may never finish", **kw)
    flags.DEFINE_integer("equal_epochs", 60,
                         "fine-tune each finished run's stripped network up "
                         "to this many epochs in all and report that "
                         "accuracy too (0: skip)", **kw)
    flags.DEFINE_list("runs", ["step", "controller", "step_clock", "fastest"],
                      "subset of: " + ",".join(runs(1)), **kw)
    flags.DEFINE_integer("seed", 0, "random seed", **kw)
    flags.DEFINE_string("json", None, "also write the results to this file",
                        **kw)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    path = {"auto": default_fashion_mnist_path(), "embedded": None}.get(
        args.data_path, args.data_path)
    (x, y), (xt, yt) = load_fashion_mnist(path)
    rng = np.random.RandomState(args.seed)
    idx = rng.permutation(len(x))[: args.train_examples]
    x = (x[idx, ..., None] / 255.0).astype("float32")
    y = y[idx]
    xt = (xt[..., None] / 255.0).astype("float32")
    source = path or "embedded subset"
    print(f"data: {source}, {len(x)} train / {len(xt)} test images")

    keras.utils.set_random_seed(args.seed)
    full = compile_model(small_vgg())
    full.fit(x, y, batch_size=args.batch_size, epochs=args.full_epochs,
             verbose=0)
    _, full_acc = full.evaluate(xt, yt, verbose=0)
    print(f"full model after {args.full_epochs} epochs: "
          f"test accuracy {full_acc:.4f}")

    wanted = [r for r in args.runs if r]
    table = runs(math.ceil(len(x) / args.batch_size))
    unknown = sorted(set(wanted) - set(table))
    if unknown:
        raise app.UsageError(
            f"unknown runs {unknown}; choose from {sorted(table)}")
    results = {}
    for name in wanted:
        schedule, alpha = table[name]
        cap = (args.clock_prune_epochs if name == "step_clock"
               else args.prune_epochs)
        r = prune(full.get_weights(), schedule, alpha, ((x, y), (xt, yt)),
                  args, cap)
        results[name] = r
        print(f"{name:>10}: done={r['done']} epochs={r['epochs']} "
              f"kept={r['kept']:.3f} binary={r['binary']:.3f} "
              f"test_acc={r['test_accuracy']:.4f} lambda={r['lambda_final']:g} "
              f"({r['seconds']:.0f} s)", flush=True)

    print()
    equal = (f"accuracy at {args.equal_epochs} epochs" if args.equal_epochs
             else "accuracy at equal epochs (off)")
    print(f"| run | lambda | alpha | done | epochs | kept | test accuracy | "
          f"{equal} |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        schedule, alpha = table[name]
        lam = type(schedule).__name__
        if name == "fastest":
            lam = "1e4 constant"
        hold = "on a clock" if alpha.release is None else "held"
        eq = r["accuracy_at_equal_epochs"]
        eq = "-" if eq is None else f"{eq:.4f}"
        print(f"| {name} | {lam} | {hold} | {r['done']} | {r['epochs']} | "
              f"{r['kept']:.3f} | {r['test_accuracy']:.4f} | {eq} |")
    print()
    c = results.get("controller")
    for base in ("step", "step_clock"):
        b = results.get(base)
        if not (b and c):
            continue
        bound = "" if b["done"] else " (upper bound: baseline not done)"
        print(f"epochs controller/{base} = {c['epochs'] / b['epochs']:.3f}"
              f"{bound} (goal <= 0.25); accuracy controller - {base} = "
              f"{100 * (c['test_accuracy'] - b['test_accuracy']):+.2f} "
              f"points (goal >= -1.00)")
        ce, be = c["accuracy_at_equal_epochs"], b["accuracy_at_equal_epochs"]
        if ce is not None and be is not None:
            print(f"  at {args.equal_epochs} epochs of training each: "
                  f"controller - {base} = {100 * (ce - be):+.2f} points")
    fast, b = results.get("fastest"), results.get("step")
    if fast and b and fast["done"] and b["done"]:
        print(f"floor for any lambda schedule: fastest/step = "
              f"{fast['epochs'] / b['epochs']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"full_accuracy": full_acc, "results": results,
                       "flags": args.flag_values_dict()}, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
