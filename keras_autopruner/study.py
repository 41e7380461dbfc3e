"""The comparison study: is AutoPruner better than the obvious alternatives?

For every target rate and seed the study trains and evaluates, on the same
data and with the same optimizer:

- `full`: the unpruned network, trained for `full_epochs`;
- `autopruner`: the trained full network of the same seed, gated, pruned
  with `AutoPrunerCallback` for at most `prune_epochs` (as a step budget:
  the run always ends with the exact choice, and the epoch in which it is
  made is finished with the chosen network), stripped, then fine-tuned for
  `finetune_epochs` at `finetune_learning_rate`;
- `scratch`: the architecture AutoPruner selected (same per-layer widths),
  from a fresh random init;
- `uniform`: every prunable layer narrowed by one factor, chosen by
  bisection so that the MACs (global MAC budget) or else the parameter
  count match AutoPruner's model;
- `magnitude` (optional): unstructured magnitude pruning with
  tensorflow-model-optimization on the `tf_keras` twin of the full network,
  to the same number of non-zero parameters.

Epoch budget and learning-rate shape: `scratch` and `uniform` train for as
many epochs as went into AutoPruner's model in total (full training +
pruning epochs actually used + fine-tuning), so that neither side gets more
passes over the data, and their last `finetune_epochs` run at
`finetune_learning_rate`, as AutoPruner's fine-tuning does: no method wins
by its schedule.
`magnitude` starts from the trained full network, like AutoPruner, and
prunes and fine-tunes for the same number of epochs as AutoPruner did.

Every finished run is written to `<out>/runs/<key>.json` (and its model to
`<out>/models/`) as soon as it ends; a rerun with the same `--out` skips
finished runs, so an interrupted study continues where it stopped. Latency
is measured at the end, for all models side by side in one process.

Outputs in `<out>`: `runs.csv` (one row per run), `results.csv` and
`results.md` (mean and spread over seeds), `accuracy_vs_flops.png`,
`kept_profile.png` and one exported SavedModel (`savedmodel_r<rate>_s<seed>`).

Run it with `python -m keras_autopruner.study --preset demo` (what
`make demo` does), or see `python -m keras_autopruner.study --help`.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import zlib

import numpy as np

METHODS = ("full", "autopruner", "scratch", "uniform", "magnitude")
IMAGE_MODELS = ("vgg_small", "vgg16_cub")
METHOD_LABELS = {
    "full": "full model",
    "autopruner": "AutoPruner (pruned + fine-tuned)",
    "scratch": "AutoPruner's widths, from scratch",
    "uniform": "uniform width, matched cost",
    "magnitude": "magnitude pruning (tfmot, unstructured)",
}


@dataclasses.dataclass
class StudyConfig:
    """Everything that decides the study's numbers.

    Args:
        model: an image builder of `keras_autopruner.models`
            (`"vgg_small"` or `"vgg16_cub"`, which needs 32x32 or larger).
        dataset: `"fashion_mnist"` (the subset shipped with the package, or
            the files at `data_path`) or any `tensorflow_datasets` image
            set name (`"cifar10"`, `"caltech_birds2011"`, ...).
        widths: `{layer_name: width}` overriding the builder's default
            widths of the full network (None: the defaults).
        data_path: Fashion-MNIST directory of IDX files or `.npz`.
        image_size: side of the images for tfds data sets.
        train_examples: use only the first this many training examples.
        test_examples: use only the first this many test examples.
        rates: target kept fractions.
        seeds: random seeds; each gives one full model and one run per rate
            and method.
        methods: which of `METHODS` to run; `"full"` and `"autopruner"` are
            always run because the others depend on them.
        full_epochs: epochs for the full model.
        prune_epochs: most epochs of AutoPruner's pruning phase.
        finetune_epochs: epochs of fine-tuning after `strip`.
        batch_size: training batch size.
        learning_rate: Adam's learning rate for training and pruning.
        finetune_learning_rate: Adam's learning rate for the last
            `finetune_epochs` of every method.
        schedule: `"controller"` or `"step"` (AutoPrunerCallback schedule).
        objective: `"layer"` or `"global"` budget.
        weighting: what the global budget counts: `"flops"` (the rate is
            the share of MACs the stripped model keeps), `"params"` or
            `"filters"`.
        latency_runs: timed batch-1 calls per model.
        jit_compile: passed to `compile`. Off by default: on CPU, XLA's
            compile time for these small networks (measured: 14 CPU-s for
            the gated `vgg_small`, against 5 CPU-s without) outweighs what
            it saves per epoch (nothing measurable), and every stage
            compiles a new model.
    """

    model: str = "vgg_small"
    widths: dict = None
    dataset: str = "fashion_mnist"
    data_path: str = None
    image_size: int = 32
    train_examples: int = None
    test_examples: int = None
    rates: tuple = (0.5, 0.25, 0.12)
    seeds: tuple = (0, 1, 2)
    methods: tuple = ("full", "autopruner", "scratch", "uniform")
    full_epochs: int = 15
    prune_epochs: int = 8
    finetune_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    schedule: str = "controller"
    objective: str = "global"
    weighting: str = "flops"
    latency_runs: int = 200
    jit_compile: bool = False

    # Fields that may change between runs sharing an output folder: more
    # rates, seeds or methods extend a study, they do not change its runs.
    EXTENSIBLE = ("rates", "seeds", "methods", "latency_runs")

    def fingerprint(self):
        d = dataclasses.asdict(self)
        for key in self.EXTENSIBLE:
            d.pop(key)
        return d


PRESETS = {
    # `make demo`: keep 50%, 25% and 12% of the MACs, 2 seeds, on 3,000
    # images of the shipped Fashion-MNIST subset (all 2,000 test images),
    # batch 32 (94 optimizer steps an epoch), sized to finish inside 15
    # minutes on 2 CPU cores. Pruning plus fine-tuning (at most 5 + 2
    # epochs) never exceed the full model's 7.
    # AutoPruner's widths from scratch are left to `bench/pruning_pays.py`,
    # which reuses these runs and adds them.
    "demo": dict(rates=(0.5, 0.25, 0.12), seeds=(0, 1), train_examples=3000,
                 full_epochs=7, prune_epochs=5, finetune_epochs=2,
                 methods=("full", "autopruner", "uniform"),
                 latency_runs=50),
    # The same study at a quality worth quoting (3 seeds, 10,000 images).
    "full": dict(rates=(0.5, 0.25, 0.12), seeds=(0, 1, 2), full_epochs=15,
                 prune_epochs=8, finetune_epochs=5),
    # Seconds: for tests of the plumbing, not for numbers.
    "tiny": dict(rates=(0.5,), seeds=(0,), train_examples=512,
                 test_examples=256, batch_size=32, full_epochs=1,
                 prune_epochs=4, finetune_epochs=1, latency_runs=5,
                 widths={"block1_conv1": 4, "block1_conv2": 4,
                         "block2_conv1": 8, "block2_conv2": 8, "fc1": 16}),
}


def make_config(preset=None, **overrides):
    """A `StudyConfig` from a preset name and field overrides (None = keep)."""
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(
                f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}."
            )
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("rates", "seeds", "methods"):
        if key in values:
            values[key] = tuple(values[key])
    config = StudyConfig(**values)
    if config.model not in IMAGE_MODELS:
        raise ValueError(
            f"The study trains image classifiers; model must be one of "
            f"{IMAGE_MODELS}, got {config.model!r}. For the fully connected "
            "network, see examples/fc_dnn.py."
        )
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {METHODS}.")
    from keras_autopruner.gate import check_rate

    for rate in config.rates:
        check_rate(rate, "each of rates")
    return config


def _log(message):
    print(f"[study] {message}", flush=True)


def _rate_tag(rate):
    return f"{float(rate):g}"


def run_key(method, rate, seed):
    """The file stem of a run: `full_s0`, `autopruner_r0.5_s0`, ..."""
    if method == "full":
        return f"full_s{seed}"
    return f"{method}_r{_rate_tag(rate)}_s{seed}"


# -- data -----------------------------------------------------------------


class StudyData:
    """The train and test data of a study, as NumPy arrays or tf.data.

    Attributes:
        name: a label for reports.
        input_shape: shape of one example.
        num_classes: number of classes.
        train_size: number of training examples (None if unknown).
    """

    def __init__(self, name, input_shape, num_classes, train, test,
                 train_size=None):
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self._train = train
        self._test = test
        self.train_size = train_size

    def fit_args(self, seed, batch_size):
        """Positional args and kwargs for `fit` on the training data."""
        if callable(self._train):
            # The pipeline shuffles; Keras's shuffle only warns on datasets.
            return (self._train(seed),), {"shuffle": False}
        x, y = self._train
        return (x, y), {"shuffle": True, "batch_size": batch_size}

    def eval_args(self, batch_size):
        """Positional args and kwargs for `evaluate` on the test data."""
        if callable(self._test):
            return (self._test(),), {}
        x, y = self._test
        return (x, y), {"batch_size": batch_size}


def load_study_data(config):
    """The data named by `config.dataset`, sliced as the config says."""
    if config.dataset == "fashion_mnist":
        from keras_autopruner.datasets import load_fashion_mnist

        (x, y), (xt, yt) = load_fashion_mnist(config.data_path)
        x, y = x[:config.train_examples], y[:config.train_examples]
        xt, yt = xt[:config.test_examples], yt[:config.test_examples]
        prep = lambda a: (a[..., None].astype("float32") / 255.0)  # noqa
        source = config.data_path or "shipped subset"
        return StudyData(f"Fashion-MNIST ({source}, {len(x)} train / "
                         f"{len(xt)} test)", (28, 28, 1), 10,
                         (prep(x), y), (prep(xt), yt), train_size=len(x))
    return _load_tfds_data(config)


def _load_tfds_data(config):
    import tensorflow_datasets as tfds

    from keras_autopruner.datasets import load_tfds_images

    builder = tfds.builder(config.dataset)
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if not hasattr(label, "num_classes"):
        raise ValueError(
            f"tfds data set {config.dataset!r} has no class label feature "
            "named 'label'; the study needs an image classification set."
        )
    num_classes = features["label"].num_classes
    channels = features["image"].shape[-1] or 3
    splits = builder.info.splits
    test_split = "test" if "test" in splits else "validation"

    def sliced(split, n):
        return split if n is None else f"{split}[:{int(n)}]"

    size = int(config.image_size)

    def train(seed):
        return load_tfds_images(
            config.dataset, sliced("train", config.train_examples), size,
            config.batch_size, training=True, seed=seed)

    def test():
        return load_tfds_images(
            config.dataset, sliced(test_split, config.test_examples), size,
            config.batch_size, training=False)

    return StudyData(f"{config.dataset} (tfds, {size}x{size})",
                     (size, size, channels), num_classes, train, test)


# -- one study ------------------------------------------------------------


class Study:
    """Runs the comparison and writes its outputs; see the module docstring.

    Args:
        config: a `StudyConfig`.
        out: the output folder; runs already stored there are skipped.
        verbose: 0 prints a line per stage; 1 (default) also a line per
            pruning epoch; 2 a line per epoch of every stage; 3 Keras's
            progress bar.
        data: a `StudyData` to use instead of `load_study_data(config)`.
        export: export one compact SavedModel.
    """

    def __init__(self, config, out, verbose=1, data=None, export=True):
        self.config = config
        self.out = os.fspath(out)
        self.verbose = int(verbose)
        self.export = bool(export)
        self._data = data
        self.ran, self.skipped = [], []
        from keras_autopruner import models

        self.builder = models.get_builder(config.model)
        self.default_widths = models.default_widths(self.builder)
        self.default_widths.update(config.widths or {})

    # -- files --
    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def _check_config(self):
        os.makedirs(self.path("runs"), exist_ok=True)
        os.makedirs(self.path("models"), exist_ok=True)
        stored = self.path("config.json")
        mine = self.config.fingerprint()
        if os.path.exists(stored):
            with open(stored) as f:
                theirs = json.load(f)
            old = {k: v for k, v in theirs.items()
                   if k not in StudyConfig.EXTENSIBLE}
            if json.loads(json.dumps(mine)) != old:
                diff = sorted(k for k in set(mine) | set(old)
                              if json.loads(json.dumps(mine.get(k)))
                              != old.get(k))
                raise ValueError(
                    f"{self.out} holds a study with other settings "
                    f"({', '.join(diff)} differ), so its runs cannot be "
                    "reused. Pass another output folder, or delete this one "
                    "to start over."
                )
        _write_json(stored, dataclasses.asdict(self.config))

    def load_run(self, key):
        path = self.path("runs", f"{key}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _save_run(self, result):
        _write_json(self.path("runs", f"{result['key']}.json"), result)

    @property
    def data(self):
        if self._data is None:
            self._data = load_study_data(self.config)
        return self._data

    def build_kwargs(self):
        d = self.data
        return {"input_shape": d.input_shape, "num_classes": d.num_classes}

    # -- the loop --
    def run(self):
        """Run every missing (method, rate, seed) and write the outputs.

        Returns:
            The results table as a pandas DataFrame (one row per method and
            rate).
        """
        self._check_config()
        c = self.config
        t0 = time.time()
        _log(f"output folder: {os.path.abspath(self.out)}")
        for seed in c.seeds:
            self._stage("full", None, seed, self._run_full)
            for rate in c.rates:
                self._stage("autopruner", rate, seed, self._run_autopruner)
                for method in ("scratch", "uniform", "magnitude"):
                    if method in c.methods:
                        runner = getattr(self, f"_run_{method}")
                        self._stage(method, rate, seed, runner)
        _log(f"training finished in {time.time() - t0:.0f} s "
             f"({len(self.ran)} runs trained, {len(self.skipped)} reused)")
        if self.export:
            self.export_compact()
        table = self.report()
        _log(f"total {time.time() - t0:.0f} s")
        return table

    def _stage(self, method, rate, seed, runner):
        key = run_key(method, rate, seed)
        where = f"rate={_rate_tag(rate)} " if rate is not None else ""
        prefix = f"{where}seed={seed} method={method}"
        if self.load_run(key) is not None:
            _log(f"{prefix}: done before, reusing {key}.json")
            self.skipped.append(key)
            return
        import keras

        # Each run has its own seed, so a resumed study draws the same
        # numbers as an uninterrupted one.
        keras.utils.set_random_seed(
            (1000003 * int(seed) + zlib.crc32(key.encode())) % (2 ** 31))
        start = time.time()
        result = runner(rate, seed, prefix)
        result.update(key=key, method=method, rate=rate, seed=int(seed),
                      train_s=round(time.time() - start, 1))
        self._save_run(result)
        self.ran.append(key)
        _log(f"{prefix}: accuracy {result['accuracy']:.4f}, params "
             f"{result['params']:,}, MACs {result['flops']:,}, "
             f"{result['epochs']} epochs, {result['train_s']:.0f} s")
        keras.backend.clear_session()

    # -- training helpers --
    def _compile(self, model):
        import keras

        model.compile(
            optimizer=keras.optimizers.Adam(self.config.learning_rate),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
            jit_compile=self.config.jit_compile)

    def _fit(self, model, epochs, seed, prefix, callbacks=(), lines=False,
             low_from=None):
        """Fit for `epochs`; from epoch `low_from` on at the fine-tuning
        learning rate (None: never)."""
        import keras

        if epochs <= 0:
            return {}
        args, kwargs = self.data.fit_args(seed, self.config.batch_size)
        callbacks = list(callbacks)
        if low_from is not None:
            c = self.config
            callbacks.append(keras.callbacks.LearningRateScheduler(
                lambda epoch: (c.finetune_learning_rate if epoch >= low_from
                               else c.learning_rate)))
        keras_verbose = 2 if self.verbose >= 3 else 0
        if self.verbose >= 2 or (lines and self.verbose >= 1):
            callbacks.append(_EpochLine(prefix, epochs))
        history = model.fit(*args, epochs=epochs, verbose=keras_verbose,
                            callbacks=callbacks, **kwargs)
        return {k: [float(v) for v in vals]
                for k, vals in history.history.items()}

    def _evaluate(self, model):
        args, kwargs = self.data.eval_args(self.config.batch_size)
        loss, acc = model.evaluate(*args, verbose=0, **kwargs)[:2]
        return float(loss), float(acc)

    def _describe(self, model):
        from keras_autopruner import models
        from keras_autopruner.metrics import count_flops, count_params

        widths = models.widths_of(model)
        return {
            "params": int(count_params(model)),
            "flops": int(count_flops(model).total),
            "widths": {k: widths[k] for k in self.default_widths},
        }

    def _train_new(self, widths, epochs, seed, prefix, low_epochs=0):
        """A fresh model at `widths`, trained `epochs`, the last
        `low_epochs` of them at the fine-tuning learning rate."""
        from keras_autopruner import models

        model = models.with_widths(self.builder, widths)(**self.build_kwargs())
        self._compile(model)
        _log(f"{prefix}: training {epochs} epochs"
             + (f" ({low_epochs} at the fine-tuning rate)..." if low_epochs
                else "..."))
        history = self._fit(model, epochs, seed, prefix,
                            low_from=epochs - low_epochs if low_epochs
                            else None)
        return model, history

    def _finish(self, model, key, history, **extra):
        loss, acc = self._evaluate(model)
        model.save(self.path("models", f"{key}.keras"))
        result = {"accuracy": acc, "loss": loss, "history": history}
        result.update(self._describe(model))
        result.update(extra)
        return result

    # -- the methods --
    def _run_full(self, rate, seed, prefix):
        c = self.config
        model, history = self._train_new(self.default_widths, c.full_epochs,
                                         seed, prefix)
        return self._finish(model, run_key("full", None, seed), history,
                            epochs=c.full_epochs, own_epochs=c.full_epochs)

    def _full_model(self, seed):
        import keras

        path = self.path("models", f"{run_key('full', None, seed)}.keras")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing although its run is recorded as done. "
                f"Delete {self.path('runs', run_key('full', None, seed))}"
                ".json so that the full model is trained again."
            )
        return keras.saving.load_model(path)

    def _run_autopruner(self, rate, seed, prefix):
        import keras_autopruner as kap
        from keras_autopruner.metrics import count_flops

        c = self.config
        full = self._full_model(seed)
        gated = kap.add_gates(full, target_rate=rate)
        self._compile(gated)
        steps = _steps_per_epoch(self)
        callback = kap.AutoPrunerCallback(
            schedule=c.schedule,
            objective=kap.PruningObjective(c.objective, weighting=c.weighting),
            prune_steps=c.prune_epochs * steps)
        _log(f"{prefix}: pruning (at most {c.prune_epochs} epochs, "
             f"{c.prune_epochs * steps} steps)...")
        # The epoch in which the choice is made counts whole, so its last
        # steps train the chosen network at the training rate (the gates
        # hold the exact masks) instead of being thrown away.
        prune_history = self._fit(
            gated, c.prune_epochs, seed, prefix, lines=True,
            callbacks=[callback, _stop_at_epoch_end(callback)])
        prune_epochs = len(next(iter(prune_history.values()), []))
        done = callback.result
        kept = kap.kept_fraction(gated)
        # After the exact choice the gated model computes what strip
        # builds; its accuracy is the stripped model's (checked below).
        _, hard_acc = self._evaluate(gated)
        compact = kap.strip(gated)
        notes = list(compact.pruning_report.notes)
        if done["reason"] != "done":
            notes.append(f"pruning ended by {done['reason']} after "
                         f"{done['steps']} steps with "
                         f"{done['binary']:.1%} binary codes")
        self._compile(compact)
        _, stripped_acc = self._evaluate(compact)
        mac_share = count_flops(compact).total / count_flops(full).total
        _log(f"{prefix}: {done['reason']} after {done['steps']} steps; "
             f"stripped to {mac_share:.3f} of the MACs (kept "
             f"{kept['overall']:.2f} of filters), accuracy before "
             f"fine-tuning {stripped_acc:.4f}; fine-tuning "
             f"{c.finetune_epochs} epochs...")
        ft_history = self._fit(compact, c.finetune_epochs, seed, prefix,
                               low_from=0)
        key = run_key("autopruner", rate, seed)
        result = self._finish(
            compact, key, {"prune": prune_history, "finetune": ft_history},
            epochs=c.full_epochs + prune_epochs + c.finetune_epochs,
            own_epochs=prune_epochs + c.finetune_epochs,
            prune_epochs=prune_epochs, prune_steps=int(done["steps"]),
            converged=done["reason"] == "done",
            kept_overall=kept["overall"], mac_share=mac_share,
            at_min_units=done["at_min_units"],
            changed_by_choice=done["changed_by_choice"],
            full_widths={k: self.default_widths[k]
                         for k in self.default_widths},
            accuracy_gated_hard=hard_acc, accuracy_stripped=stripped_acc,
            notes=notes)
        return result

    def export_compact(self):
        """Export AutoPruner's model at the rate nearest 0.5, first seed.

        The SavedModel goes to `<out>/savedmodel_r<rate>_s<seed>`, with a
        pruning report against the full model of the same seed. An export
        already there is kept.

        Returns:
            The SavedModel's path, or None when that run has not finished.
        """
        import keras

        import keras_autopruner as kap

        rate = min(self.config.rates, key=lambda r: (abs(r - 0.5), r))
        seed = self.config.seeds[0]
        key = run_key("autopruner", rate, seed)
        run = self.load_run(key)
        target = self.path(f"savedmodel_r{_rate_tag(rate)}_s{seed}")
        if run is None or os.path.exists(target):
            return target if run is not None else None
        _log(f"exporting the compact model of {key} to {target}")
        compact = keras.saving.load_model(self._model_file(run))
        report = kap.summary(self._full_model(seed), compact,
                             notes=run.get("notes", []))
        kap.export(compact, target, report=report)
        return target

    def _autopruner_run(self, rate, seed):
        result = self.load_run(run_key("autopruner", rate, seed))
        if result is None:
            raise RuntimeError(
                f"autopruner rate={rate} seed={seed} has not run; the "
                "baselines need its widths and epoch count."
            )
        return result

    def _run_scratch(self, rate, seed, prefix):
        ap = self._autopruner_run(rate, seed)
        model, history = self._train_new(ap["widths"], ap["epochs"], seed,
                                         prefix, self.config.finetune_epochs)
        return self._finish(model, run_key("scratch", rate, seed), history,
                            epochs=ap["epochs"], own_epochs=ap["epochs"])

    def _run_uniform(self, rate, seed, prefix):
        from keras_autopruner import models

        ap = self._autopruner_run(rate, seed)
        measure = self.uniform_measure
        factor, widths, cost = models.match_cost(
            self.builder, ap[measure], measure, widths=self.default_widths,
            **self.build_kwargs())
        _log(f"{prefix}: width factor {factor:.3f} gives {cost:,} {measure} "
             f"(AutoPruner: {ap[measure]:,})")
        model, history = self._train_new(widths, ap["epochs"], seed, prefix,
                                         self.config.finetune_epochs)
        return self._finish(model, run_key("uniform", rate, seed), history,
                            epochs=ap["epochs"], own_epochs=ap["epochs"],
                            factor=factor)

    @property
    def uniform_measure(self):
        """What the uniform baseline matches: MACs under a MAC budget."""
        c = self.config
        return ("flops" if c.objective == "global" and c.weighting == "flops"
                else "params")

    def _run_magnitude(self, rate, seed, prefix):
        return run_magnitude_baseline(self, rate, seed, prefix)

    # -- outputs --
    def runs(self):
        """Every stored run of this study's rates, seeds and methods."""
        c = self.config
        found = []
        for seed in c.seeds:
            full = self.load_run(run_key("full", None, seed))
            if full is not None:
                found.append(full)
            for rate in c.rates:
                for method in c.methods:
                    if method == "full":
                        continue
                    run = self.load_run(run_key(method, rate, seed))
                    if run is not None:
                        found.append(run)
        return found

    def report(self):
        """Measure latency, write the tables and plots; returns the table."""
        runs = self.runs()
        _log(f"measuring CPU latency of {len(runs)} models side by side...")
        latency = measure_latencies(
            {r["key"]: self._model_file(r) for r in runs},
            self.data.input_shape, runs=self.config.latency_runs)
        for r in runs:
            r["latency_ms"] = latency[r["key"]]
        table = write_report(runs, self.config, self.out, self.data.name)
        return table

    def _model_file(self, run):
        for ext in (".keras", ".h5"):
            path = self.path("models", run["key"] + ext)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(
            f"The model of run {run['key']} is missing from "
            f"{self.path('models')}; delete its JSON in "
            f"{self.path('runs')} to train it again."
        )


def _write_json(path, value):
    # Write then rename, so that an interrupted study never leaves a
    # half-written result that the next run would take as finished.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _epoch_line_class():
    import keras

    class EpochLine(keras.callbacks.Callback):
        def __init__(self, prefix, epochs):
            super().__init__()
            self.prefix, self.epochs = prefix, epochs

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"loss {logs.get('loss', float('nan')):.4f}",
                     f"accuracy {logs.get('accuracy', float('nan')):.4f}"]
            if "kept" in logs:
                parts += [f"kept {logs['kept']:.3f}",
                          f"binary {logs['binary']:.2f}",
                          f"lambda {logs['lambda']:g}",
                          f"alpha {logs['alpha']:g}"]
            _log(f"{self.prefix}:   epoch {epoch + 1}/{self.epochs} "
                 f"({time.time() - self._start:.0f} s) " + ", ".join(parts))

    return EpochLine


def _EpochLine(prefix, epochs):
    return _epoch_line_class()(prefix, epochs)


def _stop_at_epoch_end(pruner):
    """A callback that ends `fit` at the end of the epoch in which `pruner`
    (an AutoPrunerCallback) made its final choice."""
    import keras

    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if pruner.done:
                self.model.stop_training = True

    return StopAtEpochEnd()


# -- the magnitude-pruning baseline ----------------------------------------


def run_magnitude_baseline(study, rate, seed, prefix):
    """Magnitude pruning with tfmot on the `tf_keras` twin of the full model.

    The twin receives the trained full model's weights; its kernels are
    pruned (unstructured, polynomial schedule over AutoPruner's pruning
    epochs, then held while it fine-tunes) to leave as many non-zero
    parameters as AutoPruner's compact model has. The zeros are stored and
    multiplied like any other weight, so dense execution saves no FLOPs and
    no time: the reported FLOPs are the full model's.
    """
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as err:
        raise ImportError(
            "The magnitude baseline needs tensorflow-model-optimization and "
            "tf_keras (pip install -e '.[baselines]'), or leave 'magnitude' "
            "out of --methods."
        ) from err
    from keras_autopruner import models
    from keras_autopruner.metrics import count_params

    ap = study._autopruner_run(rate, seed)
    full = study._full_model(seed)
    twin = models.with_widths(study.builder, study.default_widths)(
        keras_module=tf_keras, **study.build_kwargs())
    weights = full.get_weights()
    if [w.shape for w in weights] != [w.shape for w in twin.get_weights()]:
        raise ValueError(
            f"The tf_keras twin of {study.config.model} does not hold its "
            "weights in the Keras 3 model's order; the magnitude baseline "
            "cannot copy them."
        )
    twin.set_weights(weights)
    full_params = count_params(full)
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in twin.layers
                  if isinstance(layer, (tf_keras.layers.Conv2D,
                                        tf_keras.layers.Dense)))
    sparsity = (full_params - ap["params"]) / kernels
    sparsity = float(np.clip(sparsity, 0.0, 0.98))
    steps = _steps_per_epoch(study)
    prune_epochs = max(1, ap["prune_epochs"])
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
        end_step=max(1, steps * prune_epochs), frequency=max(1, steps // 4))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        twin, pruning_schedule=schedule)
    pruned.compile(
        optimizer=tf_keras.optimizers.Adam(study.config.learning_rate),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = prune_epochs + study.config.finetune_epochs
    _log(f"{prefix}: pruning {sparsity:.1%} of the kernel weights over "
         f"{prune_epochs} epochs, {epochs} epochs in all...")
    args, kwargs = study.data.fit_args(seed, study.config.batch_size)
    history = pruned.fit(*args, epochs=epochs, verbose=0,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
                         **kwargs)
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    final.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    args, kwargs = study.data.eval_args(study.config.batch_size)
    loss, acc = final.evaluate(*args, verbose=0, **kwargs)[:2]
    key = run_key("magnitude", rate, seed)
    final.save(study.path("models", f"{key}.h5"))
    nonzero = int(sum(np.count_nonzero(w) for w in final.get_weights()))
    described = study._describe(full)
    return {
        "accuracy": float(acc), "loss": float(loss),
        "params": nonzero, "flops": described["flops"],
        "widths": described["widths"], "params_stored": int(full_params),
        "sparsity": sparsity,
        "epochs": study.config.full_epochs + epochs, "own_epochs": epochs,
        "history": {k: [float(v) for v in vals]
                    for k, vals in history.history.items()},
        "notes": ["unstructured: params counts non-zero weights; FLOPs "
                  "are those of dense execution (no reduction)"],
    }


def _steps_per_epoch(study):
    size = study.data.train_size
    if size is None:
        return 100
    return max(1, math.ceil(size / study.config.batch_size))


# -- latency ----------------------------------------------------------------


def measure_latencies(model_files, input_shape, runs=100, warmup=10):
    """Median batch-1 CPU latency of each model, in milliseconds.

    All models are loaded in this process and timed in interleaved rounds
    (one call of each model per round), so that load on the machine
    affects them alike and the numbers can be compared with each other.

    Args:
        model_files: `{key: path}` of `.keras` (Keras 3) or `.h5` (tf_keras)
            files.
        input_shape: shape of one example.
        runs: timed calls per model.
        warmup: untimed calls per model first (tracing, caches).

    Returns:
        `{key: milliseconds}`.
    """
    import keras
    import tensorflow as tf

    x = tf.zeros((1,) + tuple(input_shape))
    calls = {}
    for key, path in model_files.items():
        if path.endswith(".h5"):
            import tf_keras

            model = tf_keras.models.load_model(path, compile=False)
        else:
            model = keras.saving.load_model(path, compile=False)
        calls[key] = _serving_call(model)
    for call in calls.values():
        for _ in range(warmup):
            call(x)
    times = {key: [] for key in calls}
    for _ in range(max(1, runs)):
        for key, call in calls.items():
            start = time.perf_counter()
            call(x).numpy()
            times[key].append(time.perf_counter() - start)
    return {key: round(1000 * float(np.median(t)), 4)
            for key, t in times.items()}


def _serving_call(model):
    import tensorflow as tf

    @tf.function
    def call(x):
        return model(x, training=False)

    return call


# -- tables and plots ------------------------------------------------------


def runs_frame(runs):
    """One row per run, the columns of `runs.csv`."""
    import pandas as pd

    rows = []
    for r in runs:
        rows.append({
            "method": r["method"], "rate": r["rate"], "seed": r["seed"],
            "accuracy": r["accuracy"], "loss": r["loss"],
            "params": r["params"], "flops": r["flops"],
            "latency_ms": r.get("latency_ms"), "epochs": r["epochs"],
            "own_epochs": r["own_epochs"], "train_s": r.get("train_s"),
            "prune_epochs": r.get("prune_epochs"),
            "prune_steps": r.get("prune_steps"),
            "converged": r.get("converged"),
            "mac_share": r.get("mac_share"),
            "at_min_units": " ".join(r.get("at_min_units") or []),
            "changed_by_choice": r.get("changed_by_choice"),
            "accuracy_gated_hard": r.get("accuracy_gated_hard"),
            "accuracy_stripped": r.get("accuracy_stripped"),
            "factor": r.get("factor"),
            "widths": " ".join(str(w) for w in r["widths"].values()),
            "notes": "; ".join(r.get("notes", [])),
        })
    return pd.DataFrame(rows)


def results_frame(runs_df):
    """Mean and spread over seeds, one row per (method, rate)."""
    import pandas as pd

    order = {m: i for i, m in enumerate(METHODS)}
    df = runs_df.copy()
    df["rate"] = df["rate"].fillna(1.0)
    rows = []
    for (method, rate), g in df.groupby(["method", "rate"], sort=False):
        acc = g["accuracy"]
        rows.append({
            "method": method, "rate": rate, "seeds": len(g),
            "accuracy": acc.mean(),
            "accuracy_std": acc.std(ddof=1) if len(g) > 1 else float("nan"),
            "accuracy_min": acc.min(), "accuracy_max": acc.max(),
            "params": g["params"].mean(), "flops": g["flops"].mean(),
            "latency_ms": g["latency_ms"].median(),
            "epochs": g["epochs"].mean(),
            "own_epochs": g["own_epochs"].mean(),
            "train_s": g["train_s"].sum(),
            "converged": (None if method != "autopruner"
                          else int(g["converged"].astype(bool).sum())),
        })
    table = pd.DataFrame(rows)
    table["_order"] = table["method"].map(order)
    table = table.sort_values(["rate", "_order"], ascending=[False, True])
    return table.drop(columns="_order").reset_index(drop=True)


def findings(table):
    """Plain sentences comparing AutoPruner with each baseline, per rate."""
    lines = []
    full = table[table["method"] == "full"]
    full_acc = float(full["accuracy"].iloc[0]) if len(full) else None
    for rate in sorted(table.loc[table["method"] == "autopruner", "rate"]):
        at = table[table["rate"] == rate].set_index("method")
        ap = at.loc["autopruner"]
        for other in ("scratch", "uniform", "magnitude"):
            if other not in at.index:
                continue
            o = at.loc[other]
            diff = 100 * (ap["accuracy"] - o["accuracy"])
            spread = 100 * _pooled_std(ap, o)
            if math.isnan(spread):
                verdict = ("beats" if diff > 0 else "does not beat")
                caveat = (" (one seed: no spread known, so small gaps may "
                          "be noise)")
            elif abs(diff) <= spread:
                verdict, caveat = "ties with", (
                    f" (gap within the seed spread of {spread:.2f} pt)")
            else:
                verdict = "beats" if diff > 0 else "does not beat"
                caveat = f" (seed spread {spread:.2f} pt)"
            lines.append(
                f"rate {rate:g}: AutoPruner {verdict} "
                f"{METHOD_LABELS[other]}: {100 * ap['accuracy']:.2f}% vs "
                f"{100 * o['accuracy']:.2f}% ({diff:+.2f} pt){caveat}; MACs "
                f"{ap['flops'] / 1e6:.2f} M vs {o['flops'] / 1e6:.2f} M.")
        if full_acc is not None:
            f = full.iloc[0]
            gap = 100 * (ap["accuracy"] - full_acc)
            line = (f"rate {rate:g}: AutoPruner is {gap:+.2f} pt from the "
                    f"full model with {100 * ap['params'] / f['params']:.0f}% "
                    f"of its parameters and "
                    f"{100 * ap['flops'] / f['flops']:.0f}% of its MACs; "
                    f"pruning converged in {int(ap['converged'])} of "
                    f"{int(ap['seeds'])} seeds; pruning + fine-tuning took "
                    f"{ap['own_epochs']:g} epochs on average, the full "
                    f"model's training {f['epochs']:g}.")
            if gap > 0 and f["epochs"] < ap["epochs"]:
                # Not a sign that pruning helps: the others trained longer.
                line += (f" The full model trained {f['epochs']:g} epochs, "
                         f"AutoPruner's {ap['epochs']:g} in all, so it is no "
                         "upper bound here.")
            lines.append(line)
    return lines


def _pooled_std(a, b):
    if a["seeds"] < 2 or b["seeds"] < 2:
        return float("nan")
    return math.sqrt(a["accuracy_std"] ** 2 / a["seeds"]
                     + b["accuracy_std"] ** 2 / b["seeds"])


def markdown_table(table):
    """The results table as Markdown."""
    header = ["method", "rate", "seeds", "accuracy %", "spread (pt)",
              "params", "MACs (M)", "latency (ms)", "epochs"]
    out = ["| " + " | ".join(header) + " |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        if r["seeds"] > 1:
            spread = (f"±{100 * r['accuracy_std']:.2f} "
                      f"[{100 * r['accuracy_min']:.1f}-"
                      f"{100 * r['accuracy_max']:.1f}]")
        else:
            spread = "n/a (1 seed)"
        ms = r["latency_ms"]
        latency = "-" if ms is None or math.isnan(ms) else f"{ms:.3f}"
        out.append("| " + " | ".join([
            METHOD_LABELS[r["method"]],
            "-" if r["method"] == "full" else f"{r['rate']:g}",
            str(int(r["seeds"])), f"{100 * r['accuracy']:.2f}", spread,
            f"{int(round(r['params'])):,}", f"{r['flops'] / 1e6:.3f}",
            latency, f"{r['epochs']:g}",
        ]) + " |")
    return "\n".join(out)


def write_report(runs, config, out, data_name=""):
    """Write runs.csv, results.csv, results.md and the two plots.

    Returns:
        The results table (pandas DataFrame).
    """
    runs_df = runs_frame(runs)
    runs_df.to_csv(os.path.join(out, "runs.csv"), index=False)
    table = results_frame(runs_df)
    table.to_csv(os.path.join(out, "results.csv"), index=False)
    lines = [
        "# AutoPruner comparison study",
        "",
        f"Model `{config.model}` on {data_name}; rates "
        f"{', '.join(f'{r:g}' for r in config.rates)}; seeds "
        f"{', '.join(str(s) for s in config.seeds)}. Full model "
        f"{config.full_epochs} epochs; AutoPruner prunes for at most "
        f"{config.prune_epochs} epochs (schedule `{config.schedule}`, "
        f"objective `{config.objective}`"
        + (f" by {config.weighting}" if config.objective == "global" else "")
        + f"), then fine-tunes {config.finetune_epochs} at learning rate "
        f"{config.finetune_learning_rate:g}; the baselines train for "
        "AutoPruner's total epochs, the last "
        f"{config.finetune_epochs} at that rate too. Accuracy on the test "
        "split; MACs per example; "
        "latency is the median batch-1 CPU call, all models timed side by "
        "side.",
        "",
        markdown_table(table),
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {line}" for line in findings(table)]
    if "magnitude" in set(table["method"]):
        lines += ["- magnitude pruning is unstructured: its params column "
                  "counts non-zero weights, its model is stored and run "
                  "dense, so its MACs and latency are the full model's."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_accuracy_vs_flops(table, os.path.join(out, "accuracy_vs_flops.png"))
    plot_kept_profile(runs, os.path.join(out, "kept_profile.png"),
                      target_lines=config.objective == "layer")
    return table


def plot_accuracy_vs_flops(table, path):
    """Accuracy against MACs, one line per method, seed spread as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = {"autopruner": "o", "scratch": "s", "uniform": "^",
               "magnitude": "x"}
    for method in METHODS:
        rows = table[table["method"] == method].sort_values("flops")
        if rows.empty:
            continue
        err = 100 * rows["accuracy_std"].fillna(0.0)
        if method == "full":
            ax.axhline(100 * rows["accuracy"].iloc[0], color="grey", ls="--",
                       lw=1)
            ax.errorbar(rows["flops"] / 1e6, 100 * rows["accuracy"], yerr=err,
                        fmt="*", ms=12, color="black",
                        label=METHOD_LABELS[method])
            continue
        ax.errorbar(rows["flops"] / 1e6, 100 * rows["accuracy"], yerr=err,
                    marker=markers[method], capsize=3,
                    label=METHOD_LABELS[method])
        if method == "autopruner":
            for _, r in rows.iterrows():
                ax.annotate(f"r={r['rate']:g}", (r["flops"] / 1e6,
                                                 100 * r["accuracy"]),
                            textcoords="offset points", xytext=(4, -10),
                            fontsize=8)
    ax.set_xlabel("MACs per example (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kept_profile(runs, path, target_lines=True):
    """Per-layer kept fraction of AutoPruner's models, a bar group per rate.

    `target_lines` draws each rate as a dotted line: the per-layer budget's
    target for every layer (a MAC budget's rate is not a per-layer one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = [r for r in runs if r["method"] == "autopruner"]
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    if not ap:
        ax.text(0.5, 0.5, "no AutoPruner run", ha="center")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    layers = list(ap[0]["full_widths"])
    rates = sorted({r["rate"] for r in ap})
    width = 0.8 / len(rates)
    for i, rate in enumerate(rates):
        mine = [r for r in ap if r["rate"] == rate]
        kept = np.mean([[r["widths"][n] / r["full_widths"][n] for n in layers]
                        for r in mine], axis=0)
        xs = np.arange(len(layers)) + (i - (len(rates) - 1) / 2) * width
        bars = ax.bar(xs, kept, width, label=f"target {rate:g}")
        if target_lines:
            ax.hlines(rate, xs[0] - width, xs[-1] + width, colors=bars[0]
                      .get_facecolor(), linestyles=":", lw=1)
        counts = np.mean([[r["widths"][n] for n in layers] for r in mine],
                         axis=0)
        for x, k, n in zip(xs, kept, counts):
            ax.text(x, k + 0.01, f"{n:.0f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels([f"{n}\n({ap[0]['full_widths'][n]})" for n in layers],
                       fontsize=8)
    ax.set_ylabel("kept fraction of filters / neurons")
    ax.set_ylim(0, 1.1)
    ax.set_title("Filters AutoPruner kept, per layer (numbers: kept count)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line ----------------------------------------------------------


def _floats(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def _names(text):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m keras_autopruner.study",
        description="Compare AutoPruner with a full model, its widths "
                    "trained from scratch and a uniformly narrowed model "
                    "(and optionally magnitude pruning).")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from these settings; other flags override")
    p.add_argument("--out", help="output folder (default runs/study_<preset>)")
    p.add_argument("--model", choices=IMAGE_MODELS,
                   help="network builder (default vgg_small)")
    p.add_argument("--dataset", help="'fashion_mnist' (shipped subset) or a "
                   "tensorflow_datasets image set name, e.g. cifar10")
    p.add_argument("--data_path", help="Fashion-MNIST IDX directory or .npz")
    p.add_argument("--image_size", type=int, help="image side for tfds sets")
    p.add_argument("--train_examples", type=int)
    p.add_argument("--test_examples", type=int)
    p.add_argument("--rates", type=_floats, help="e.g. 0.3,0.5,0.7")
    p.add_argument("--seeds", type=_ints, help="e.g. 0,1,2")
    p.add_argument("--methods", type=_names,
                   help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--magnitude", action="store_true",
                   help="add the tfmot magnitude-pruning baseline")
    p.add_argument("--full_epochs", type=int)
    p.add_argument("--prune_epochs", type=int)
    p.add_argument("--finetune_epochs", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--finetune_learning_rate", type=float,
                   help="learning rate of every method's last "
                        "finetune_epochs")
    p.add_argument("--schedule", choices=["controller", "step"])
    p.add_argument("--objective", choices=["layer", "global"])
    p.add_argument("--weighting", choices=["flops", "params", "filters"],
                   help="what the global budget counts (default flops)")
    p.add_argument("--latency_runs", type=int)
    p.add_argument("--verbose", type=int, default=1,
                   help="0 stages, 1 + pruning epochs, 2 + all epochs, "
                        "3 Keras progress bars")
    p.add_argument("--no_export", action="store_true",
                   help="do not export a compact SavedModel")
    return p.parse_args(argv)


def config_from_args(args):
    """The `StudyConfig` and output folder that parsed flags ask for."""
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    preset = args.preset
    methods = (overrides.get("methods")
               or PRESETS.get(preset, {}).get("methods")
               or StudyConfig.methods)
    if args.magnitude and "magnitude" not in methods:
        methods = tuple(methods) + ("magnitude",)
    overrides["methods"] = methods
    config = make_config(preset, **overrides)
    out = args.out or os.path.join("runs", f"study_{preset or 'custom'}")
    return config, out


def main(argv=None):
    args = parse_args(argv)
    config, out = config_from_args(args)
    start = time.time()
    study = Study(config, out, verbose=args.verbose,
                  export=not args.no_export)
    study.run()
    print()
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    print(f"Outputs in {os.path.abspath(out)}:")
    for name in ("results.md", "results.csv", "runs.csv",
                 "accuracy_vs_flops.png", "kept_profile.png"):
        print(f"  {os.path.join(out, name)}")
    for name in sorted(os.listdir(out)):
        if name.startswith("savedmodel_"):
            print(f"  {os.path.join(out, name)}  (compact SavedModel)")
    print(f"Wall time: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
