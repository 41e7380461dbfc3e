"""Every `>>>` example in the package's docstrings runs and shows what it
prints. Examples that need a trained model are plain code blocks instead,
so no docstring shows an output that was not produced."""

import doctest
import importlib
import pkgutil

import pytest

import keras_autopruner
from keras_autopruner import registry

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(keras_autopruner.__path__,
                                          "keras_autopruner.")
    if not m.name.endswith("__main__"))
# Modules that describe an optional package's layers, and that package.
OPTIONAL = {"keras_autopruner.registry.hgq": "hgq"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    saved = registry.registered()
    try:
        result = doctest.testmod(importlib.import_module(name),
                                 optionflags=doctest.ELLIPSIS, report=False)
    finally:
        registry.restore(saved)  # examples may register layer types
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"


def test_the_package_has_examples_that_run():
    # Guards against a walk that finds no module (the test above would
    # then pass vacuously).
    assert {"keras_autopruner.metrics", "keras_autopruner.registry",
            "keras_autopruner.study.config"} <= set(MODULES)
