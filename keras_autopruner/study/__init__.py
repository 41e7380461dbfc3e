"""The comparison study: is AutoPruner better than the obvious alternatives?

For every target rate and seed the study trains and evaluates, on the same
data and with the same optimizer, the methods of `RUNNERS` (see
`keras_autopruner.study.methods`): the full network, AutoPruner (pruned,
stripped, fine-tuned), AutoPruner's widths from scratch, a uniformly
narrowed network of matched cost and, optionally, unstructured magnitude
pruning.

Outputs in the study's folder: `runs/<key>.json` and `models/` (one per
finished run; a rerun skips them), `runs.csv` (one row per run),
`results.csv` and `results.md` (mean and spread over seeds),
`accuracy_vs_flops.png`, `kept_profile.png` and one exported SavedModel
(`savedmodel_r<rate>_s<seed>`).

Modules:
- `config`   `StudyConfig`, `PRESETS`, `make_config`, `run_key`
- `runner`   `Study`: the loop, stored runs, helpers the methods use
- `methods`  one function per method and `RUNNERS`, name -> function
- `report`   tables and findings; `plots`: the two figures
- `latency`  batch-1 CPU latency of stored models, side by side
- `cli`      the flags of `python -m keras_autopruner.study`

Run it with `python -m keras_autopruner.study --preset demo` (what
`make demo` does); `--helpfull` lists the flags.

Example:

>>> from keras_autopruner import study
>>> sorted(study.RUNNERS) == sorted(study.METHODS)
True
"""

from keras_autopruner.study.config import (IMAGE_MODELS, METHOD_LABELS,
                                           METHODS, PRESETS, StudyConfig,
                                           make_config, run_key)
from keras_autopruner.datasets import StudyData, load_study_data
from keras_autopruner.study.latency import measure_latencies
from keras_autopruner.study.methods import RUNNERS, run_magnitude
from keras_autopruner.study.plots import (plot_accuracy_vs_flops,
                                          plot_kept_profile)
from keras_autopruner.study.report import (findings, markdown_table,
                                           results_frame, runs_frame,
                                           write_report)
from keras_autopruner.study.runner import Study
from keras_autopruner.study.cli import (config_from_flags, define_flags,
                                        parse_flags, run_from_flags)

__all__ = [
    "IMAGE_MODELS", "METHOD_LABELS", "METHODS", "PRESETS", "RUNNERS",
    "Study", "StudyConfig", "StudyData", "config_from_flags",
    "define_flags", "findings", "load_study_data", "make_config",
    "markdown_table", "measure_latencies", "parse_flags",
    "plot_accuracy_vs_flops", "plot_kept_profile", "results_frame",
    "run_from_flags", "run_key", "run_magnitude", "runs_frame",
    "write_report",
]
