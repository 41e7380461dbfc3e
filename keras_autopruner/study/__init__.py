"""The comparison study: is AutoPruner better than the obvious alternatives?

For every target rate and seed the study trains and evaluates, on the same
data and with the same optimizer, the methods of `RUNNERS` (see
`keras_autopruner.study.methods`): the full network, AutoPruner (pruned,
stripped, fine-tuned), the full network for AutoPruner's total epochs
(`full_equal`), one-shot cuts of the trained network by each importance
criterion (`l1`, `l2`, `bn`, `taylor`, `random`) fine-tuned for
AutoPruner's epochs, AutoPruner's widths from scratch, a uniformly
narrowed network of matched cost and, optionally, unstructured magnitude
pruning, on any model (`--model`: builder, `.keras`, `module:function`)
and data (`--dataset`: Fashion-MNIST, CSV, `.npz`, tfds).

Outputs in the study's folder: `runs/<key>.json` and `models/` (one per
finished run; a rerun skips them), `runs.csv` (one row per run),
`results.csv` and `results.md` (mean and spread over seeds, paired 95%
intervals, findings), `paired.csv`,
`accuracy_vs_flops.png`, `kept_profile.png` and one exported SavedModel
(`savedmodel_r<rate>_s<seed>`).

Modules:
- `config`   `StudyConfig`, `PRESETS`, `make_config`, `run_key`
- `runner`   `Study`: the loop, stored runs, helpers the methods use
- `jobs`     the runs and what each reads; `--jobs N` worker processes
- `methods`  one function per method and `RUNNERS`, name -> function
- `report`   tables and findings; `plots`: the two figures
- `latency`  batch-1 latency and batch-256 throughput, side by side
- `cli`      the flags of `python -m keras_autopruner.study`

Run it with `python -m keras_autopruner.study --preset demo` (what
`make demo` does); `--helpfull` lists the flags; `--jobs N` trains N
runs at once on one machine; `--shard i/n` and `--merge` split it over
array jobs.

Example:

>>> from keras_autopruner import study
>>> sorted(study.RUNNERS) == sorted(study.METHODS)
True
"""

from keras_autopruner.study.config import (CRITERIA, IMAGE_MODELS,
                                           METHOD_LABELS, METHODS, PRESETS,
                                           StudyConfig, make_config, run_key)
from keras_autopruner.datasets import StudyData, load_study_data
from keras_autopruner.study.latency import measure_latencies, measure_speed
from keras_autopruner.study.methods import (RUNNERS, match_uniform,
                                            run_magnitude, uniform_masks)
from keras_autopruner.study.plots import (plot_accuracy_vs_flops,
                                          plot_kept_profile)
from keras_autopruner.study.report import (findings, markdown_table,
                                           paired_frame, paired_table,
                                           results_frame, runs_frame,
                                           t_interval, write_report)
from keras_autopruner.study.runner import Study
from keras_autopruner.study.cli import (config_from_flags, define_flags,
                                        parse_flags, run_from_flags)

__all__ = [
    "CRITERIA", "IMAGE_MODELS", "METHOD_LABELS", "METHODS", "PRESETS",
    "RUNNERS", "Study", "StudyConfig", "StudyData", "config_from_flags",
    "define_flags", "findings", "load_study_data", "make_config",
    "markdown_table", "match_uniform", "measure_latencies",
    "measure_speed", "paired_frame", "paired_table", "parse_flags",
    "plot_accuracy_vs_flops", "plot_kept_profile", "results_frame",
    "run_from_flags", "run_key", "run_magnitude", "runs_frame",
    "t_interval", "uniform_masks", "write_report",
]
