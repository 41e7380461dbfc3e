"""Compare AutoPruner with a full model, its widths trained from scratch
and a uniformly narrowed model of equal cost (optionally magnitude pruning).

Usage: python -m keras_autopruner.study --preset=demo [--flag=value ...]
Flags left out keep the preset's values; `--helpfull` lists every flag.
"""

from keras_autopruner.study.cli import run_app

# `--jobs` workers are spawned processes, which import this module again
# under another name: only the command line itself may run the study.
if __name__ == "__main__":
    run_app()
