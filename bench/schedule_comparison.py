"""Published step schedule vs the adaptive controller, side by side.

Both runs start from the same trained VGG-style convnet on Fashion-MNIST,
gate it with target 0.5, and prune with AutoPrunerCallback until the kept
fraction is within 0.02 of the target with binary codes. The only
difference is the lambda schedule: `StepLambda()` (x10 every 20 epochs from
1 to 1e7, pushing from epoch 0) or `LambdaController()` (the default).
Alpha follows the same `AlphaSchedule` in both, so the comparison isolates
lambda.

Printed for each: epochs until done, final test accuracy of the pruned
(hard-mask) network, and the ratio of epochs. Goal: the controller needs at
most a quarter of the step schedule's epochs, with accuracy no worse by more
than one point.

    .venv/bin/python bench/schedule_comparison.py            # Debian files if installed
    .venv/bin/python bench/schedule_comparison.py --data embedded
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
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


def prune(full_weights, schedule, data, args):
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(args.seed)
    full = small_vgg()
    full.set_weights(full_weights)
    gated = compile_model(kap.add_gates(full, target_rate=args.rate))
    cb = kap.AutoPrunerCallback(schedule=schedule, stop_when_done=True,
                                tolerance=0.02)
    start = time.time()
    history = gated.fit(x, y, batch_size=args.batch_size,
                        epochs=args.max_epochs, verbose=0,
                        validation_data=(xt, yt), callbacks=[cb])
    h = history.history
    kap.set_hard_masks(gated, True)
    _, acc = gated.evaluate(xt, yt, verbose=0)
    return {
        "done": cb.done,
        "epochs": len(h["loss"]),
        "kept": kap.kept_fraction(gated)["overall"],
        "binary": h["binary"][-1],
        "test_accuracy": float(acc),
        "lambda_final": h["lambda"][-1],
        "seconds": time.time() - start,
        "trace": {k: [round(float(v), 4) for v in h[k]]
                  for k in ("kept", "lambda", "alpha", "binary", "val_accuracy")},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="auto",
                   help="'auto' (Debian files if installed, else embedded), "
                        "'embedded', or a path to the IDX directory / .npz")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write results here")
    args = p.parse_args()

    path = {"auto": default_fashion_mnist_path(), "embedded": None}.get(
        args.data, args.data)
    (x, y), (xt, yt) = load_fashion_mnist(path)
    rng = np.random.RandomState(args.seed)
    idx = rng.permutation(len(x))[: args.train_size]
    x = (x[idx, ..., None] / 255.0).astype("float32")
    y = y[idx]
    xt = (xt[..., None] / 255.0).astype("float32")
    source = path or "embedded subset"
    print(f"data: {source}, {len(x)} train / {len(xt)} test images")

    keras.utils.set_random_seed(args.seed)
    full = compile_model(small_vgg())
    full.fit(x, y, batch_size=args.batch_size, epochs=args.pretrain_epochs,
             verbose=0)
    _, full_acc = full.evaluate(xt, yt, verbose=0)
    print(f"full model after {args.pretrain_epochs} epochs: "
          f"test accuracy {full_acc:.4f}")

    results = {}
    for name, schedule in (("step", kap.StepLambda()),
                           ("controller", kap.LambdaController())):
        r = prune(full.get_weights(), schedule, ((x, y), (xt, yt)), args)
        results[name] = r
        print(f"{name:>10}: done={r['done']} epochs={r['epochs']} "
              f"kept={r['kept']:.3f} binary={r['binary']:.3f} "
              f"test_acc={r['test_accuracy']:.4f} lambda={r['lambda_final']:g} "
              f"({r['seconds']:.0f} s)", flush=True)

    s, c = results["step"], results["controller"]
    ratio = c["epochs"] / s["epochs"]
    print()
    print("| schedule | done | epochs to target | kept | test accuracy |")
    print("|---|---|---|---|---|")
    for name in ("step", "controller"):
        r = results[name]
        print(f"| {name} | {r['done']} | {r['epochs']} | {r['kept']:.3f} | "
              f"{r['test_accuracy']:.4f} |")
    print(f"\nepochs controller/step = {ratio:.3f} (goal <= 0.25); "
          f"accuracy controller - step = "
          f"{100 * (c['test_accuracy'] - s['test_accuracy']):+.2f} points "
          f"(goal >= -1.00)")
    if not s["done"]:
        print(f"note: the step schedule did not finish within "
              f"{args.max_epochs} epochs; the ratio is an upper bound.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"full_accuracy": full_acc, "results": results,
                       "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
