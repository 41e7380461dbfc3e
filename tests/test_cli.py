"""One command-line convention: the study, the examples and the benches.

Every script defines absl flags through a `define_flags(fv)` function; these
tests define them into fresh `FlagValues` and check the spelling rules.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from keras_autopruner import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(
    [os.path.join("examples", n) for n in os.listdir(
        os.path.join(ROOT, "examples")) if n.endswith(".py")]
    + [os.path.join("bench", n) for n in os.listdir(
        os.path.join(ROOT, "bench")) if n.endswith(".py")])

# Spellings that name a concept which has one flag name everywhere.
NOT_THESE = {
    "train_size": "train_examples", "test_size": "test_examples",
    "batch": "batch_size", "data": "data_path", "keep": "rate",
    "epochs": "full_epochs", "pretrain_epochs": "full_epochs",
    "max_epochs": "prune_epochs", "no_export": "export",
    "output": "out", "out_dir": "out", "repeats": "rounds",
}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def load_script(relpath):
    name = "script_" + re.sub(r"\W", "_", relpath)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def defined_flags(define):
    fv = flags.FlagValues()
    define(fv)
    return {name: fv[name] for name in fv}


@pytest.fixture(scope="module")
def all_flags():
    found = {"keras_autopruner.study": defined_flags(study.define_flags)}
    for relpath in SCRIPTS:
        found[relpath] = defined_flags(load_script(relpath).define_flags)
    return found


def test_every_script_has_flags(all_flags):
    assert set(all_flags) == {"keras_autopruner.study", *SCRIPTS}
    assert "examples/fc_dnn.py" in all_flags
    assert "bench/strip_latency.py" in all_flags
    for script, found in all_flags.items():
        assert found, f"{script} defines no flags"


def test_names_are_snake_case_and_canonical(all_flags):
    for script, found in all_flags.items():
        for name, flag in found.items():
            assert SNAKE.fullmatch(name), f"{script}: --{name}"
            assert name not in NOT_THESE, (
                f"{script}: --{name} should be --{NOT_THESE[name]}")
            assert flag.help, f"{script}: --{name} has no help text"


def test_one_name_one_type(all_flags):
    kinds = {}
    for script, found in all_flags.items():
        for name, flag in found.items():
            kinds.setdefault(name, {})[script] = flag.flag_type()
    for name, by_script in kinds.items():
        assert len(set(by_script.values())) == 1, (name, by_script)


def test_shared_concepts_are_spelled_alike(all_flags):
    study_flags = all_flags["keras_autopruner.study"]
    for name in ("train_examples", "test_examples", "rates", "seeds", "out",
                 "batch_size", "preset", "full_epochs", "prune_epochs",
                 "finetune_epochs", "export"):
        assert name in study_flags
    for script in ("examples/fc_dnn.py", "examples/vgg16_cub.py"):
        for name in ("train_examples", "test_examples", "out", "batch_size",
                     "full_epochs", "prune_epochs", "finetune_epochs"):
            assert name in all_flags[script], (script, name)
    for name in ("preset", "dataset", "label", "batch_size"):
        assert name in all_flags["bench/pruning_pays.py"], name


def test_study_parse_flags_rejects_unknown_flags():
    with pytest.raises(flags.UnrecognizedFlagError):
        study.parse_flags(["--train-size=5"])
    with pytest.raises(flags.IllegalFlagValueError):
        study.parse_flags(["--preset=huge"])


def test_study_helpfull_lists_its_flags():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "keras_autopruner.study", "--helpfull"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    # absl prints the help to stdout, then exits with status 1.
    assert "keras_autopruner.study.cli:" in done.stdout, done.stderr[-2000:]
    for name in ("--preset", "--train_examples", "--seeds", "--[no]export"):
        assert name in done.stdout
