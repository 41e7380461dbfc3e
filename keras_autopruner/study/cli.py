"""The command line of the study: `python -m keras_autopruner.study`.

Flags are absl flags; `--helpfull` lists them. Every flag left out keeps
the preset's value (or `StudyConfig`'s default without `--preset`).

Example:

    python -m keras_autopruner.study --preset=demo --seeds=0,1,2 \\
        --out=runs/demo_3_seeds
    python -m keras_autopruner.study --model=my_net.keras \\
        --dataset=table.csv --label=class --out=runs/mine
    # array jobs: each shard trains every n-th (seed, rate) unit ...
    python -m keras_autopruner.study --preset=demo --shard=$I/4 --out=runs/x
    # ... then one job writes the report from the stored runs
    python -m keras_autopruner.study --merge --out=runs/x
"""

import dataclasses
import os
import time

from absl import app, flags

from keras_autopruner.study.config import (METHODS, PRESETS, StudyConfig,
                                           make_config)


def define_flags(fv=flags.FLAGS):
    """Define the study's flags in `fv` (absl's global `FLAGS` by default)."""
    flags.DEFINE_enum("preset", None, sorted(PRESETS),
                      "start from these settings; other flags override",
                      flag_values=fv)
    flags.DEFINE_string("out", None,
                        "output folder (default runs/study_<preset>)",
                        flag_values=fv)
    flags.DEFINE_string("model", None,
                        "a builder (vgg_small, vgg16_cub, fc_dnn), a .keras "
                        "file or module:function returning an uncompiled "
                        "model (default vgg_small for images, fc_dnn for "
                        "tabular data)", flag_values=fv)
    flags.DEFINE_string("dataset", None,
                        "'fashion_mnist' (shipped subset), a .csv/.csv.gz "
                        "(with --label), an .npz with x_train, y_train, "
                        "x_test, y_test, or a tensorflow_datasets image set "
                        "name, e.g. cifar10", flag_values=fv)
    flags.DEFINE_string("label", None, "label column of a CSV dataset",
                        flag_values=fv)
    flags.DEFINE_string("shard", None,
                        "i/n: run only every n-th (seed, rate) unit from "
                        "the i-th (0-based), for array jobs; no report",
                        flag_values=fv)
    flags.DEFINE_integer("jobs", 1,
                         "train in this many local worker processes at "
                         "once (each gets cores/jobs threads); each run is "
                         "seeded as with 1, but another thread count "
                         "rounds differently", flag_values=fv)
    flags.DEFINE_bool("merge", False,
                      "train nothing: write the report from the runs "
                      "stored in --out (after the shards)", flag_values=fv)
    flags.DEFINE_string("data_path", None,
                        "Fashion-MNIST IDX directory or .npz", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "image side for tfds sets",
                         flag_values=fv)
    flags.DEFINE_integer("train_examples", None,
                         "use only the first this many training examples",
                         flag_values=fv)
    flags.DEFINE_integer("test_examples", None,
                         "use only the first this many test examples",
                         flag_values=fv)
    flags.DEFINE_list("rates", None, "target kept fractions, e.g. 0.3,0.5",
                      flag_values=fv)
    flags.DEFINE_list("seeds", None, "random seeds, e.g. 0,1,2",
                      flag_values=fv)
    flags.DEFINE_list("methods", None,
                      f"methods to run, from {','.join(METHODS)}",
                      flag_values=fv)
    flags.DEFINE_bool("magnitude", False,
                      "add the tfmot magnitude-pruning baseline",
                      flag_values=fv)
    flags.DEFINE_integer("full_epochs", None, "epochs of the full model",
                         flag_values=fv)
    flags.DEFINE_integer("prune_epochs", None,
                         "epochs of AutoPruner's pruning phase (pushing, "
                         "choice, the chosen network trained on)",
                         flag_values=fv)
    flags.DEFINE_float("prune_share", None,
                       "most share of the pruning phase's steps spent "
                       "pushing before the exact choice", flag_values=fv)
    flags.DEFINE_integer("finetune_epochs", None,
                         "epochs of fine-tuning after strip", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "training batch size",
                         flag_values=fv)
    flags.DEFINE_float("learning_rate", None,
                       "Adam's learning rate for training and pruning",
                       flag_values=fv)
    flags.DEFINE_float("finetune_learning_rate", None,
                       "learning rate of every method's last "
                       "finetune_epochs", flag_values=fv)
    flags.DEFINE_enum("schedule", None, ["controller", "step"],
                      "AutoPrunerCallback's lambda schedule", flag_values=fv)
    flags.DEFINE_enum("objective", None, ["layer", "global"],
                      "one budget per layer or one global budget",
                      flag_values=fv)
    flags.DEFINE_enum("weighting", None, ["flops", "params", "filters"],
                      "what the global budget counts (default flops)",
                      flag_values=fv)
    flags.DEFINE_integer("latency_runs", None,
                         "timed batch-1 calls per model", flag_values=fv)
    flags.DEFINE_integer("verbose", 1,
                         "0 stages, 1 + pruning epochs, 2 + all epochs, "
                         "3 Keras progress bars", flag_values=fv)
    flags.DEFINE_bool("export", True,
                      "export one compact SavedModel (--noexport: skip)",
                      flag_values=fv)


def parse_flags(argv):
    """Parse `argv` (without the program name) into fresh FlagValues.

    Example:

    >>> fv = parse_flags(["--preset=tiny", "--seeds=1,2"])
    >>> fv.seeds
    ['1', '2']
    """
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["study"] + list(argv))
    return fv


def config_from_flags(fv):
    """The `StudyConfig` and output folder that parsed flags ask for."""
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    overrides = {name: fv[name].value for name in fields if name in fv}
    for key, kind in (("rates", float), ("seeds", int), ("methods", str)):
        if overrides.get(key) is not None:
            overrides[key] = tuple(kind(v) for v in overrides[key])
    preset = fv.preset
    methods = (overrides.get("methods")
               or PRESETS.get(preset, {}).get("methods")
               or StudyConfig.methods)
    if fv.magnitude and "magnitude" not in methods:
        methods = tuple(methods) + ("magnitude",)
    overrides["methods"] = methods
    config = make_config(preset, **overrides)
    out = fv.out or os.path.join("runs", f"study_{preset or 'custom'}")
    return config, out


def run_from_flags(fv):
    """Run the study the flags describe and print its table; returns 0."""
    from keras_autopruner.study.runner import Study

    start = time.time()
    if fv.merge:
        if fv.out is None:
            raise ValueError("--merge needs --out: the folder the shards "
                             "wrote to.")
        out = fv.out
        study = Study.from_folder(out, verbose=fv.verbose, export=fv.export)
        if study.export:
            study.export_compact()
        study.report()
    else:
        config, out = config_from_flags(fv)
        study = Study(config, out, verbose=fv.verbose, export=fv.export,
                      shard=fv.shard)
        study.run(jobs=fv.jobs)
        if study.shard is not None:
            print(f"Shard {fv.shard} done in {time.time() - start:.0f} s; "
                  f"runs in {os.path.abspath(os.path.join(out, 'runs'))}.")
            return 0
    print()
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    print(f"Outputs in {os.path.abspath(out)}:")
    for name in ("results.md", "results.csv", "paired.csv", "runs.csv",
                 "accuracy_vs_flops.png", "kept_profile.png"):
        print(f"  {os.path.join(out, name)}")
    for name in sorted(os.listdir(out)):
        if name.startswith("savedmodel_"):
            print(f"  {os.path.join(out, name)}  (compact SavedModel)")
    print(f"Wall time: {time.time() - start:.0f} s")
    return 0


def main(argv):
    """absl entry point: runs with the global `FLAGS`."""
    from absl import logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # TensorFlow's SavedModel writer logs every step at INFO through absl.
    logging.set_verbosity(logging.WARNING)
    return run_from_flags(flags.FLAGS)


def run_app():
    """Define the flags in `FLAGS` and run `main` under absl."""
    define_flags()
    app.run(main)
