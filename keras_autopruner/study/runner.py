"""`Study`: runs every (method, rate, seed) once, stores it, reports.

The methods themselves live in `keras_autopruner.study.methods` and reach
the study only through the public helpers here (`new_model`, `fit`,
`train`, `finish`, `full_model`, `autopruner_run`, ...), so every method
works for any model the study is given: a builder, a `.keras` file or a
`module:function`.
"""

import dataclasses
import json
import os
import time
import zlib

import numpy as np

from keras_autopruner.study.config import (DEFAULT_IMAGE_MODEL,
                                           DEFAULT_TABULAR_MODEL,
                                           StudyConfig, log, rate_tag,
                                           run_key)


class Study:
    """Runs the comparison and writes its outputs.

    Every finished run is written to `<out>/runs/<key>.json` (and its model
    to `<out>/models/`) as soon as it ends; a rerun with the same `out`
    skips finished runs, so an interrupted study continues where it
    stopped.

    Args:
        config: a `StudyConfig`.
        out: the output folder; runs already stored there are skipped.
        verbose: 0 prints a line per stage; 1 (default) also a line per
            pruning epoch; 2 a line per epoch of every stage; 3 Keras's
            progress bar.
        data: a `StudyData` to use instead of `load_study_data(config)`.
        export: export one compact SavedModel.
        shard: `(i, n)`: run only every n-th unit of work, starting at the
            i-th (0-based), for array jobs; a unit is one (seed, rate): its
            AutoPruner run and every baseline after it (and the seed's full
            model if no earlier unit stored it). A shard writes no report;
            `Study.report()` (`--merge`) writes it from the stored runs.

    Example:

    >>> from keras_autopruner import study
    >>> s = study.Study(study.make_config("tiny"), "/tmp/study_tiny")
    >>> table = s.run()  # doctest: +SKIP
    """

    def __init__(self, config, out, verbose=1, data=None, export=True,
                 shard=None):
        self.config = config
        self.out = os.fspath(out)
        self.verbose = int(verbose)
        self.export = bool(export)
        self._data = data
        self._given_data = data is not None
        self.shard = check_shard(shard)
        self.ran, self.skipped = [], []
        self._template = None
        self._widths = None

    @classmethod
    def from_folder(cls, out, **kwargs):
        """The study whose settings `<out>/config.json` holds (for merging
        the runs of shards)."""
        path = os.path.join(os.fspath(out), "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: {out} holds no study. Pass the "
                "--out folder the shards wrote to.")
        with open(path) as f:
            stored = json.load(f)
        fields = {f.name for f in dataclasses.fields(StudyConfig)}
        values = {k: v for k, v in stored.items() if k in fields}
        for key in ("rates", "seeds", "methods"):
            values[key] = tuple(values[key])
        return cls(StudyConfig(**values), out, **kwargs)

    # -- the model --
    @property
    def model_spec(self):
        """The study's model: `config.model`, or the default for the data
        (`fc_dnn` for tabular data, `vgg_small` for images)."""
        if self.config.model is not None:
            return self.config.model
        tabular = len(self.data.input_shape) == 1
        return DEFAULT_TABULAR_MODEL if tabular else DEFAULT_IMAGE_MODEL

    @property
    def builder(self):
        """The builder function when the model is a builder name, else None."""
        from keras_autopruner import models

        spec = self.model_spec
        return models.get_builder(spec) if spec in models.BUILDERS else None

    def build_kwargs(self):
        """Input shape and class count for the model builders."""
        from keras_autopruner import models

        d = self.data
        if self.builder is models.fc_dnn:
            if len(d.input_shape) != 1:
                raise ValueError(
                    f"fc_dnn takes rows of features; {d.name} has examples "
                    f"of shape {d.input_shape}. Pick an image model "
                    "(--model vgg_small) or tabular data.")
            return {"input_dim": d.input_shape[0],
                    "num_classes": d.num_classes}
        return {"input_shape": d.input_shape, "num_classes": d.num_classes}

    def new_model(self):
        """A freshly initialised full model (uncompiled)."""
        import keras

        from keras_autopruner import models

        if self.builder is not None:
            widths = models.default_widths(self.builder)
            widths.update(self.config.widths or {})
            return models.with_widths(self.builder, widths)(
                **self.build_kwargs())
        if self._template is None:
            self._template = self._load_template()
        # clone_model builds new layers from their configs, so each call
        # draws new initial weights (the file's weights are not used).
        return keras.models.clone_model(self._template)

    def _load_template(self):
        import importlib

        import keras

        spec = self.model_spec
        if spec.endswith(".keras"):
            model = keras.saving.load_model(spec, compile=False)
        else:
            module, _, function = spec.partition(":")
            try:
                fn = getattr(importlib.import_module(module), function)
            except (ImportError, AttributeError) as err:
                raise ValueError(
                    f"model {spec!r}: cannot import {function!r} from "
                    f"module {module!r} ({err}). Is the module on "
                    "PYTHONPATH?") from None
            model = fn()
        if not isinstance(model, keras.Model):
            raise ValueError(f"model {spec!r} gave a "
                             f"{type(model).__name__}, not a keras.Model.")
        want = tuple(self.data.input_shape)
        have = tuple(model.input_shape[1:])
        if have != want:
            raise ValueError(
                f"model {spec!r} takes inputs of shape {have}; the data "
                f"({self.data.name}) has {want}. Build the model for this "
                "data.")
        classes = model.output_shape[-1]
        if classes != self.data.num_classes:
            raise ValueError(
                f"model {spec!r} has {classes} outputs; the data has "
                f"{self.data.num_classes} classes.")
        return model

    @property
    def default_widths(self):
        """`{layer_name: width}` of the full model's prunable layers: a
        builder's widths, or else the layers `add_gates` gates."""
        if self._widths is None:
            from keras_autopruner import models

            if self.builder is not None:
                widths = models.default_widths(self.builder)
                widths.update(self.config.widths or {})
            else:
                widths = {layer: units for layer, units in
                          self.prunable_units(self.new_model()).items()}
            self._widths = widths
        return self._widths

    @staticmethod
    def prunable_units(model):
        """`{layer_name: units}` of the layers `add_gates` gates in `model`."""
        import keras_autopruner as kap
        from keras_autopruner.gate import gates_of

        gated = kap.add_gates(model, 1.0)
        return {g.name.removesuffix("_gate"): int(g.units)
                for g in gates_of(gated)}

    # -- files --
    def path(self, *parts):
        """A path inside the output folder."""
        return os.path.join(self.out, *parts)

    def prepare(self):
        """Create the study's folders, or check an existing one.

        Raises ValueError when the folder holds a study with other
        settings (its runs could not be reused). `run` calls it first; call
        it yourself before running single methods with `run_method`.
        """
        os.makedirs(self.path("runs"), exist_ok=True)
        os.makedirs(self.path("models"), exist_ok=True)
        stored = self.path("config.json")
        mine = self.config.fingerprint()
        if os.path.exists(stored):
            with open(stored) as f:
                theirs = json.load(f)
            old = {k: v for k, v in theirs.items()
                   if k not in StudyConfig.EXTENSIBLE}
            # A field added since that study was written (absent there)
            # matches its default, None.
            diff = sorted(k for k in set(mine) | set(old)
                          if json.loads(json.dumps(mine.get(k)))
                          != old.get(k))
            if diff:
                raise ValueError(
                    f"{self.out} holds a study with other settings "
                    f"({', '.join(diff)} differ), so its runs cannot be "
                    "reused. Pass another output folder, or delete this one "
                    "to start over."
                )
        write_json(stored, dataclasses.asdict(self.config))

    def load_run(self, key):
        """The stored result of run `key`, or None if it has not finished."""
        path = self.path("runs", f"{key}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _save_run(self, result):
        write_json(self.path("runs", f"{result['key']}.json"), result)

    def model_file(self, run):
        """The stored model file (`.keras`, or `.h5` for tf_keras) of a run."""
        for ext in (".keras", ".h5"):
            path = self.path("models", run["key"] + ext)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(
            f"The model of run {run['key']} is missing from "
            f"{self.path('models')}; delete its JSON in "
            f"{self.path('runs')} to train it again."
        )

    @property
    def data(self):
        """The study's `StudyData`, loaded on first use."""
        if self._data is None:
            from keras_autopruner.datasets import load_study_data

            self._data = load_study_data(self.config)
        return self._data

    def steps_per_epoch(self):
        """Optimizer steps in one epoch of the training data."""
        return self.data.steps_per_epoch(self.config.batch_size)

    # -- the loop --
    def run(self, jobs=1):
        """Run every missing (method, rate, seed) and write the outputs.

        Args:
            jobs: train in this many local worker processes (see
                `keras_autopruner.study.jobs`); 1 trains in this process.
                The report is written here after the last run either way.

        Returns:
            The results table as a pandas DataFrame (one row per method and
            rate), or None for a shard.
        """
        from keras_autopruner.study.jobs import run_in_processes, tasks

        jobs = check_jobs(jobs)
        if jobs > 1 and self._given_data:
            raise ValueError(
                "jobs > 1 starts worker processes that load the data from "
                "the config; a Study given data= cannot hand its data to "
                "them. Use jobs=1, or describe the data in the config "
                "(dataset=..., data_path=...).")
        self.prepare()
        t0 = time.time()
        log(f"output folder: {os.path.abspath(self.out)}")
        if jobs > 1:
            run_in_processes(self, jobs)
        else:
            # AutoPruner always runs: the baselines need its result.
            for task in tasks(self):
                self.run_method(task.method, task.rate, task.seed)
        log(f"training finished in {time.time() - t0:.0f} s "
            f"({len(self.ran)} runs trained, {len(self.skipped)} reused)")
        if self.shard is not None:
            i, n = self.shard
            log(f"shard {i}/{n} done; once every shard is, write the "
                f"report with: python -m keras_autopruner.study --merge "
                f"--out={self.out}")
            return None
        if self.export:
            self.export_compact()
        table = self.report()
        log(f"total {time.time() - t0:.0f} s")
        return table

    def units(self):
        """The (seed, rate) units of work this study (or shard) runs."""
        every = [(seed, rate) for seed in self.config.seeds
                 for rate in self.config.rates]
        if self.shard is None:
            return every
        i, n = self.shard
        return every[i::n]

    def run_method(self, method, rate, seed):
        """Train one run (`method` at `rate` for `seed`) and save it, or
        reuse it when this folder has it already.

        `rate` is None for the full model. The run draws from a seed of its
        own, so a resumed study gets the numbers an uninterrupted one does.
        """
        from keras_autopruner.study.methods import RUNNERS

        if method not in RUNNERS:
            raise ValueError(f"Unknown method {method!r}; choose one of "
                             f"{sorted(RUNNERS)}.")
        runner = RUNNERS[method]
        key = run_key(method, rate, seed)
        where = f"rate={rate_tag(rate)} " if rate is not None else ""
        prefix = f"{where}seed={seed} method={method}"
        if self.load_run(key) is not None:
            log(f"{prefix}: done before, reusing {key}.json")
            self.skipped.append(key)
            return
        import keras

        # Each run has its own seed, so a resumed study draws the same
        # numbers as an uninterrupted one.
        keras.utils.set_random_seed(
            (1000003 * int(seed) + zlib.crc32(key.encode())) % (2 ** 31))
        start = time.time()
        result = runner(self, rate, seed, prefix)
        result.update(key=key, method=method, rate=rate, seed=int(seed),
                      train_s=round(time.time() - start, 1))
        self._save_run(result)
        self.ran.append(key)
        log(f"{prefix}: accuracy {result['accuracy']:.4f}, params "
            f"{result['params']:,}, MACs {result['flops']:,}, "
            f"{result['epochs']} epochs, {result['train_s']:.0f} s")
        keras.backend.clear_session()

    # -- helpers for the methods --
    def compile(self, model):
        """Compile `model` with Adam at the training learning rate."""
        import keras

        model.compile(
            optimizer=keras.optimizers.Adam(self.config.learning_rate),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
            jit_compile=self.config.jit_compile)

    def fit(self, model, epochs, seed, prefix, callbacks=(), lines=False,
            low_from=None):
        """Fit `model` on the training data.

        Args:
            model: a compiled model.
            epochs: epochs to train (0 or less: nothing happens).
            seed: seed of the data pipeline's shuffle.
            prefix: the run's label for progress lines.
            callbacks: more Keras callbacks.
            lines: print a line per epoch at `verbose=1` too.
            low_from: from this epoch on, train at the fine-tuning learning
                rate (None: never).

        Returns:
            The history as `{metric: [float per epoch]}`.
        """
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
            callbacks.append(epoch_line(prefix, epochs))
        history = model.fit(*args, epochs=epochs, verbose=keras_verbose,
                            callbacks=callbacks, **kwargs)
        return {k: [float(v) for v in vals]
                for k, vals in history.history.items()}

    def evaluate(self, model):
        """`(loss, accuracy)` of a compiled model on the test data."""
        args, kwargs = self.data.eval_args(self.config.batch_size)
        loss, acc = model.evaluate(*args, verbose=0, **kwargs)[:2]
        return float(loss), float(acc)

    def describe(self, model):
        """Parameters, MACs and the widths of the study's layers."""
        from keras_autopruner import models
        from keras_autopruner.metrics import count_flops, count_params

        widths = models.widths_of(model)
        return {
            "params": int(count_params(model)),
            "flops": int(count_flops(model).total),
            "widths": {k: widths.get(k, 0) for k in self.default_widths},
        }

    def train(self, model, epochs, seed, prefix, low_epochs=0):
        """Compile and train `model` for `epochs`, the last `low_epochs` of
        them at the fine-tuning learning rate; returns the history."""
        self.compile(model)
        log(f"{prefix}: training {epochs} epochs"
            + (f" ({low_epochs} at the fine-tuning rate)..." if low_epochs
               else "..."))
        return self.fit(model, epochs, seed, prefix,
                        low_from=epochs - low_epochs if low_epochs else None)

    def sample_batches(self, count=4):
        """A few training batches, for criteria that need data (Taylor)."""
        args, _ = self.data.fit_args(0, self.config.batch_size)
        if len(args) == 1:
            return args[0].take(count)
        x, y = args
        n = count * self.config.batch_size
        return x[:n], y[:n]

    def save_model(self, model, key):
        """Store `model` as `models/<key>.keras` in one step."""
        # A shard killed mid-save must not leave a file a rerun takes as
        # the finished model.
        final = self.path("models", f"{key}.keras")
        tmp = self.path("models", f"{key}.{os.getpid()}.tmp.keras")
        model.save(tmp)
        os.replace(tmp, final)

    def finish(self, model, key, history, **extra):
        """Evaluate and store `model`; its result dict with `extra` added."""
        loss, acc = self.evaluate(model)
        self.save_model(model, key)
        result = {"accuracy": acc, "loss": loss, "history": history}
        result.update(self.describe(model))
        result.update(extra)
        return result

    def full_model(self, seed):
        """The stored, trained full model of `seed`."""
        import keras

        path = self.path("models", f"{run_key('full', None, seed)}.keras")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing although its run is recorded as done. "
                f"Delete {self.path('runs', run_key('full', None, seed))}"
                ".json so that the full model is trained again."
            )
        return keras.saving.load_model(path)

    def autopruner_run(self, rate, seed):
        """AutoPruner's stored result at `rate` and `seed`."""
        result = self.load_run(run_key("autopruner", rate, seed))
        if result is None:
            raise RuntimeError(
                f"autopruner rate={rate} seed={seed} has not run; the "
                "baselines need its widths and epoch count."
            )
        return result

    @property
    def uniform_measure(self):
        """What the uniform baseline matches: MACs under a MAC budget."""
        c = self.config
        return ("flops" if c.objective == "global" and c.weighting == "flops"
                else "params")

    # -- outputs --
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
        target = self.path(f"savedmodel_r{rate_tag(rate)}_s{seed}")
        if run is None or os.path.exists(target):
            return target if run is not None else None
        log(f"exporting the compact model of {key} to {target}")
        compact = keras.saving.load_model(self.model_file(run))
        report = kap.summary(self.full_model(seed), compact,
                             notes=run.get("notes", []))
        kap.export(compact, target, report=report)
        return target

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
        """Measure speed, write the tables and plots; returns the table.

        Reads only the stored runs, so it also merges the runs of shards.
        """
        from keras_autopruner.study.latency import measure_speed
        from keras_autopruner.study.report import write_report

        runs = self.runs()
        if not runs:
            raise RuntimeError(
                f"{self.path('runs')} holds no finished run of this study's "
                "rates, seeds and methods; nothing to report.")
        log(f"measuring CPU latency (batch 1) and throughput (batch 256) "
            f"of {len(runs)} models side by side...")
        speed = measure_speed(
            {r["key"]: self.model_file(r) for r in runs},
            self.data.input_shape, runs=self.config.latency_runs)
        for r in runs:
            r.update(speed[r["key"]])
        # What the report was written from, speed included (for benches).
        self.reported_runs = runs
        return write_report(runs, self.config, self.out, self.data.name,
                            model_name=self.model_spec)


def check_jobs(jobs):
    """`jobs` as an int of at least 1, or a ValueError that says so."""
    try:
        value = int(jobs)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or value != jobs:
        raise ValueError(f"jobs={jobs!r}: give a whole number of worker "
                         "processes, at least 1 (1: train in this process).")
    return value


def check_shard(shard):
    """`(i, n)` from `(i, n)`, `"i/n"` or None; refused unless 0 <= i < n."""
    if shard is None:
        return None
    if isinstance(shard, str):
        head, _, tail = shard.partition("/")
        try:
            shard = (int(head), int(tail))
        except ValueError:
            raise ValueError(
                f"shard {shard!r} is not 'i/n' (e.g. 0/4; i from 0 to "
                "n-1).") from None
    i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n "
                         "(SLURM: --shard=$SLURM_ARRAY_TASK_ID/N with "
                         "--array=0-(N-1)).")
    return i, n


def write_json(path, value):
    """Write `value` as JSON to `path` in one step (write, then rename)."""
    # An interrupted study must never leave a half-written result that the
    # next run would take as finished.
    # The process id keeps two shards writing config.json apart.
    tmp = f"{path}.{os.getpid()}.tmp"
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


def epoch_line(prefix, epochs):
    """A Keras callback printing one line per epoch: loss, accuracy and,
    while pruning, kept fraction, binary share, lambda and alpha."""
    import keras

    class EpochLine(keras.callbacks.Callback):
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
            log(f"{prefix}:   epoch {epoch + 1}/{epochs} "
                f"({time.time() - self._start:.0f} s) " + ", ".join(parts))

    return EpochLine()
