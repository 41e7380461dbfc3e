"""The bad-input table of BUILD_NOTES.md (`bench/bad_inputs.py`): each case
ends as recorded, and none touches the user's models or files unless it
says so."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_bad_inputs", os.path.join(ROOT, "bench", "bad_inputs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bad_inputs = _load()


@pytest.fixture(scope="module")
def sandbox():
    with bad_inputs.sandboxed() as s:
        yield s


def test_the_table_has_at_least_30_cases():
    assert len(bad_inputs.CASES) >= 30


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c[0] for c in
                                                        bad_inputs.CASES])
def test_bad_input(case, sandbox):
    shown, fn, expected, untouched = case[:4]
    kind, text, same = bad_inputs.run_case(sandbox, fn)
    # Never a raw error from inside the package.
    assert kind not in (AttributeError, KeyError, IndexError), text
    if isinstance(expected, str):
        assert kind == expected, (kind, text)
    else:
        assert kind is expected, (kind, text)
    assert text, "a refusal says why"
    assert same == untouched
