"""The command line of the study: `python -m keras_autopruner.study`."""

import argparse
import dataclasses
import os
import time

from keras_autopruner.study.config import (IMAGE_MODELS, METHODS, PRESETS,
                                           StudyConfig, make_config)
from keras_autopruner.study.runner import Study


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
