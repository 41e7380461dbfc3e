"""AutoPruner on VGG16 for CUB-200-2011, the paper's main experiment.

VGG16 (13 convolutions, 3 fully connected layers) with a 200-way softmax,
no average pooling after the convolutions and dropout in the fully
connected block. Data comes from tensorflow-datasets `caltech_birds2011`
(its `train` and `test` splits), resized, randomly cropped and flipped in a
`tf.data` pipeline. With ImageNet weights in the Keras cache (or a path to
them) the convolutions start pretrained.

The script trains the full model (or starts from `--full_model`, or from
`<out>/full_model.keras` left by an earlier run), then for every target rate:
adds gates, prunes with `AutoPrunerCallback`, strips, fine-tunes and exports
the compact SavedModel. It writes, in `--out`:

- `results.md` / `results.csv`: accuracy, parameters, MACs, epochs;
- `rate_<r>/kept_filters.csv`: filters kept per layer;
- `rate_<r>/history.csv` and `rate_<r>/curves.png`: training curves of the
  full, pruning and fine-tuning stages;
- `rate_<r>/savedmodel/`: the compact model with its pruning report.

Examples:

    # The paper's setting (needs the data set and hours on a GPU):
    python examples/vgg16_cub.py --rates=0.5,0.4 --schedule=step \\
        --full_epochs=30 --prune_epochs=60 --finetune_epochs=30

    # The whole path in seconds, on tfds mock data:
    python examples/vgg16_cub.py --smoke
"""

import contextlib
import json
import os
import sys
import time

# Settings of `--smoke`: every stage runs, on random mock images, with the
# network narrowed 16x so that a CPU gets through it in seconds.
SMOKE = dict(image_size=32, batch_size=8, width_multiplier=1 / 16,
             full_epochs=1, prune_epochs=40, finetune_epochs=1, step_every=1,
             pretrained="none", mock_examples=64)


def run(out="runs/vgg16_cub", dataset="caltech_birds2011", data_dir=None,
        image_size=224, batch_size=32, rates=(0.5,), schedule="step",
        step_every=20, full_epochs=30, full_model=None, prune_epochs=60,
        finetune_epochs=30, optimizer="sgd", learning_rate=1e-3,
        pretrained="auto", width_multiplier=1.0, batchnorm=False,
        dropout=0.5, train_examples=None, test_examples=None, seed=0,
        verbose=1, smoke=False, mock_examples=16):
    """Train, prune, strip, fine-tune and export VGG16 on CUB-200-2011.

    Args:
        out: output folder.
        dataset: tfds name of the data set.
        data_dir: tfds data directory.
        image_size: side of the square input images.
        batch_size: batch size.
        rates: target kept fractions; each is pruned from the same full
            model.
        schedule: `"step"` (the published lambda schedule, x10 every
            `step_every` epochs) or `"controller"`.
        step_every: epochs between lambda steps of the step schedule.
        full_epochs: epochs to train the full model (when not loaded).
        full_model: path of a trained full model (`.keras`) to start from.
        prune_epochs: most epochs of pruning per rate.
        finetune_epochs: fine-tuning epochs per rate.
        optimizer: `"sgd"` (momentum 0.9, as in the paper) or `"adam"`.
        learning_rate: learning rate of every stage.
        pretrained: `"auto"` (ImageNet weights if in the Keras cache, else
            random init), `"none"`, `"imagenet"` (may download) or a path to
            the VGG16 notop `.h5` file.
        width_multiplier: scale every layer's width (1 = VGG16).
        batchnorm: add batch normalization after each convolution.
        dropout: dropout rate in the fully connected block.
        train_examples: use only the first this many training images.
        test_examples: use only the first this many test images.
        seed: random seed.
        verbose: 0 quiet, 1 a line per epoch, 2 Keras progress bars.
        smoke: run every stage in seconds on `tfds.testing.mock_data`,
            with the `SMOKE` settings.
        mock_examples: examples per split of the mock data (smoke only).

    Returns:
        A list of result rows (dicts), as in `results.csv`.
    """
    if smoke:
        settings = dict(SMOKE)
        mock_examples = settings.pop("mock_examples")
        image_size = settings["image_size"]
        batch_size = settings["batch_size"]
        width_multiplier = settings["width_multiplier"]
        full_epochs = settings["full_epochs"]
        prune_epochs = settings["prune_epochs"]
        finetune_epochs = settings["finetune_epochs"]
        step_every = settings["step_every"]
        pretrained = settings["pretrained"]
    context = _mock_data(mock_examples) if smoke else contextlib.nullcontext()
    with context:
        return _run(out, dataset, data_dir, image_size, batch_size,
                    tuple(rates), schedule, step_every, full_epochs,
                    full_model, prune_epochs, finetune_epochs, optimizer,
                    learning_rate, pretrained, width_multiplier, batchnorm,
                    dropout, train_examples, test_examples, seed, verbose)


def _mock_data(num_examples):
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _steps_per_epoch(dataset):
    steps = int(dataset.cardinality())
    if steps < 1:
        raise ValueError(
            "The step schedule counts optimizer steps, but this training "
            "set's length is unknown; use --schedule=controller.")
    return steps


def _say(message):
    print(f"[vgg16_cub] {message}", flush=True)


def _run(out, dataset, data_dir, image_size, batch_size, rates, schedule,
         step_every, full_epochs, full_model, prune_epochs, finetune_epochs,
         optimizer, learning_rate, pretrained, width_multiplier, batchnorm,
         dropout, train_examples, test_examples, seed, verbose):
    import keras
    import tensorflow_datasets as tfds

    import keras_autopruner as kap
    from keras_autopruner import models
    from keras_autopruner.datasets import load_tfds_images

    start = time.time()
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(seed)

    weights = _pretrained_weights(pretrained, width_multiplier, batchnorm)
    normalization = "imagenet" if weights else "unit"
    num_classes = tfds.builder(dataset, data_dir=data_dir).info.features[
        "label"].num_classes

    def split(name, n):
        return name if n is None else f"{name}[:{int(n)}]"

    def train_data():
        return load_tfds_images(dataset, split("train", train_examples),
                                image_size, batch_size, training=True,
                                channels=3, normalization=normalization,
                                seed=seed, data_dir=data_dir)

    test_data = load_tfds_images(dataset, split("test", test_examples),
                                 image_size, batch_size, training=False,
                                 channels=3, normalization=normalization,
                                 data_dir=data_dir)

    def compile_(model):
        if optimizer == "sgd":
            opt = keras.optimizers.SGD(learning_rate, momentum=0.9)
        else:
            opt = keras.optimizers.Adam(learning_rate)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])

    def fit(model, epochs, stage, callbacks=()):
        if epochs <= 0:
            return []
        # The pipeline shuffles; Keras's own shuffle only warns on datasets.
        history = model.fit(train_data(), epochs=epochs, shuffle=False,
                            validation_data=test_data,
                            callbacks=list(callbacks),
                            verbose={0: 0, 1: 2}.get(verbose, 1))
        return _rows(history.history, stage)

    def evaluate(model):
        return float(model.evaluate(test_data, verbose=0)[1])

    # -- the full model --
    saved_full = os.path.join(out, "full_model.keras")
    full_curves = []
    if full_model or os.path.exists(saved_full):
        path = full_model or saved_full
        _say(f"starting from the trained full model {path}")
        full = keras.saving.load_model(path)
        # A model from elsewhere comes without a record of its epochs.
        record = {} if full_model else _read_json(
            os.path.join(out, "full.json"))
        full_epochs_spent = record.get("epochs", 0)
    else:
        widths = models.scale_widths(models.VGG16_WIDTHS, width_multiplier)
        full = models.vgg16_cub(num_classes=num_classes,
                                input_shape=(image_size, image_size, 3),
                                widths=widths, dropout=dropout,
                                batchnorm=batchnorm, weights=weights)
        _say(f"VGG16: {kap.count_params(full):,} params, "
             f"{kap.count_flops(full).total / 1e9:.3f} GMACs per image; "
             f"{'ImageNet' if weights else 'random'} init; training "
             f"{full_epochs} epochs...")
        compile_(full)
        full_curves = fit(full, full_epochs, "full")
        full.save(saved_full)
        full_epochs_spent = full_epochs
        _write_json(os.path.join(out, "full.json"),
                    {"epochs": full_epochs, "curves": full_curves})
    if not full_curves and os.path.exists(os.path.join(out, "full.json")):
        full_curves = _read_json(os.path.join(out, "full.json"))["curves"]
    compile_(full)
    full_acc = evaluate(full)
    results = [{
        "model": "full", "rate": 1.0, "accuracy": full_acc,
        "params": kap.count_params(full), "macs": kap.count_flops(full).total,
        "epochs": full_epochs_spent, "converged": None,
    }]
    _say(f"full model: test accuracy {full_acc:.4f}")

    # -- one pruning run per rate --
    for rate in rates:
        folder = os.path.join(out, f"rate_{rate:g}")
        os.makedirs(folder, exist_ok=True)
        gated = kap.add_gates(full, target_rate=rate)
        compile_(gated)
        lam = (kap.StepLambda(every=step_every * _steps_per_epoch(
            train_data())) if schedule == "step" else schedule)
        callback = kap.AutoPrunerCallback(schedule=lam, objective="layer",
                                          stop_when_done=True,
                                          per_gate_logs=True)
        _say(f"rate {rate:g}: pruning, at most {prune_epochs} epochs "
             f"({schedule} schedule)...")
        prune_curves = fit(gated, prune_epochs, "prune", [callback])
        if callback.result["reason"] != "done":
            _say(f"rate {rate:g}: codes still soft after {prune_epochs} "
                 "epochs; the exact choice was made from the gates' scores")
        compact = kap.strip(gated)
        _say(f"rate {rate:g}: stripped\n{compact.pruning_report}")
        compile_(compact)
        stripped_acc = evaluate(compact)
        _say(f"rate {rate:g}: accuracy after strip {stripped_acc:.4f}; "
             f"fine-tuning {finetune_epochs} epochs...")
        ft_curves = fit(compact, finetune_epochs, "finetune")
        acc = evaluate(compact)
        kap.export(compact, os.path.join(folder, "savedmodel"),
                   overwrite=True)

        kept_rows = _kept_filters(full, compact)
        _write_csv(kept_rows, os.path.join(folder, "kept_filters.csv"))
        curves = full_curves + prune_curves + ft_curves
        _write_csv(curves, os.path.join(folder, "history.csv"))
        plot_curves(curves, os.path.join(folder, "curves.png"),
                    title=f"VGG16, target rate {rate:g}")
        prune_used = len(prune_curves)
        results.append({
            "model": "autopruner", "rate": rate, "accuracy": acc,
            "accuracy_stripped": stripped_acc,
            "params": kap.count_params(compact),
            "macs": kap.count_flops(compact).total,
            "epochs": full_epochs_spent + prune_used + finetune_epochs,
            "prune_epochs": prune_used,
            "converged": callback.result["reason"] == "done",
        })
        _say(f"rate {rate:g}: test accuracy {acc:.4f}; outputs in {folder}")
        keras.backend.clear_session()

    _write_csv(results, os.path.join(out, "results.csv"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(results_markdown(results) + "\n")
    print(results_markdown(results))
    _say(f"done in {time.time() - start:.0f} s; outputs in "
         f"{os.path.abspath(out)}")
    return results


def _pretrained_weights(pretrained, width_multiplier, batchnorm):
    """The `weights` argument for `vgg16_cub`, or None for random init."""
    from keras_autopruner import models

    if pretrained == "none":
        return None
    fits = width_multiplier == 1.0 and not batchnorm
    if pretrained == "auto":
        cached = models.cached_vgg16_weights()
        if cached and fits:
            return cached
        why = ("the network is narrowed or has batchnorm" if cached else
               f"{models.VGG16_NOTOP_FILE} is not in the Keras cache")
        _say(f"no ImageNet weights ({why}); random init")
        return None
    if not fits:
        raise ValueError(
            "Pretrained VGG16 weights need --width_multiplier=1 and "
            "--nobatchnorm; pass --pretrained=none to train from scratch."
        )
    return pretrained


def _rows(history, stage):
    n = len(next(iter(history.values()), []))
    return [dict({"stage": stage, "epoch": i + 1},
                 **{k: float(v[i]) for k, v in history.items()})
            for i in range(n)]


def _kept_filters(full, compact):
    from keras_autopruner import models

    before, after = models.widths_of(full), models.widths_of(compact)
    return [{"layer": name, "filters_before": n,
             "filters_after": after[name], "kept_fraction": after[name] / n}
            for name, n in before.items()]


def results_markdown(results):
    lines = ["| model | rate | top-1 accuracy % | params | GMACs | epochs "
             "| converged |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['rate']:g} | {100 * r['accuracy']:.2f} | "
            f"{r['params']:,} | {r['macs'] / 1e9:.4f} | {r['epochs']} | "
            f"{'-' if r['converged'] is None else r['converged']} |")
    return "\n".join(lines)


def plot_curves(rows, path, title=""):
    """Loss, accuracy and kept fraction over all stages, stages marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = list(range(1, len(rows) + 1))
    for ax, key in zip(axes[:2], ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            ys = [r.get(prefix + key, float("nan")) for r in rows]
            ax.plot(xs, ys, style, label=(prefix + key).replace("_", " "))
        ax.set_title(key)
        if key == "loss":
            ax.set_yscale("log")
    kept = [r.get("kept", float("nan")) for r in rows]
    binary = [r.get("binary", float("nan")) for r in rows]
    axes[2].plot(xs, kept, label="kept fraction")
    axes[2].plot(xs, binary, ":", label="binary codes")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("pruning")
    for ax in axes:
        previous = None
        for x, r in zip(xs, rows):
            if previous is not None and r["stage"] != previous:
                ax.axvline(x - 0.5, color="grey", lw=0.8)
            previous = r["stage"]
        ax.set_xlabel("epoch (full | prune | fine-tune)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_csv(rows, path):
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


def _read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def define_flags(fv=None):
    """Define the example's flags in `fv` (absl's global `FLAGS` if None)."""
    from absl import flags

    kw = {"flag_values": flags.FLAGS if fv is None else fv}
    flags.DEFINE_string("out", "runs/vgg16_cub", "output folder", **kw)
    flags.DEFINE_string("dataset", "caltech_birds2011", "tfds data set", **kw)
    flags.DEFINE_string("data_dir", None, "tfds data directory", **kw)
    flags.DEFINE_integer("image_size", 224, "input side in pixels", **kw)
    flags.DEFINE_integer("batch_size", 32, "training batch size", **kw)
    flags.DEFINE_list("rates", ["0.5"], "target kept fractions, e.g. 0.5,0.4",
                      **kw)
    flags.DEFINE_enum("schedule", "step", ["step", "controller"],
                      "lambda schedule: published step or adaptive", **kw)
    flags.DEFINE_integer("step_every", 20, "epochs per x10 lambda step", **kw)
    flags.DEFINE_integer("full_epochs", 30, "epochs of the full model", **kw)
    flags.DEFINE_string("full_model", None, "start from this .keras model",
                        **kw)
    flags.DEFINE_integer("prune_epochs", 60, "most epochs of pruning per rate",
                         **kw)
    flags.DEFINE_integer("finetune_epochs", 30,
                         "epochs of fine-tuning after strip", **kw)
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "optimizer", **kw)
    flags.DEFINE_float("learning_rate", 1e-3, "learning rate", **kw)
    flags.DEFINE_string("pretrained", "auto",
                        "auto, none, imagenet or a notop .h5 path", **kw)
    flags.DEFINE_float("width_multiplier", 1.0, "scale all widths", **kw)
    flags.DEFINE_bool("batchnorm", False, "batch norm after each conv", **kw)
    flags.DEFINE_float("dropout", 0.5, "dropout in the dense block", **kw)
    flags.DEFINE_integer("train_examples", None,
                         "use only the first this many training images", **kw)
    flags.DEFINE_integer("test_examples", None,
                         "use only the first this many test images", **kw)
    flags.DEFINE_integer("seed", 0, "random seed", **kw)
    flags.DEFINE_integer("verbose", 1, "0 quiet, 1 a line per epoch, "
                         "2 Keras progress bars", **kw)
    flags.DEFINE_bool("smoke", False, "every stage in seconds on mock data",
                      **kw)


def main(argv):
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # TensorFlow's SavedModel writer logs every step at INFO through absl.
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    run(out=f.out, dataset=f.dataset, data_dir=f.data_dir,
        image_size=f.image_size, batch_size=f.batch_size,
        rates=[float(r) for r in f.rates], schedule=f.schedule,
        step_every=f.step_every, full_epochs=f.full_epochs,
        full_model=f.full_model, prune_epochs=f.prune_epochs,
        finetune_epochs=f.finetune_epochs, optimizer=f.optimizer,
        learning_rate=f.learning_rate, pretrained=f.pretrained,
        width_multiplier=f.width_multiplier, batchnorm=f.batchnorm,
        dropout=f.dropout, train_examples=f.train_examples,
        test_examples=f.test_examples, seed=f.seed, verbose=f.verbose,
        smoke=f.smoke)


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    define_flags()
    app.run(main)
