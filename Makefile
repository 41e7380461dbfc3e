# Developer entry points. `make test` is what CI runs (see .ci/run).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Benchmark script names under bench/, without ".py"; override on the
# command line, e.g. `make bench BENCH=fashion_mnist`.
BENCH ?= $(basename $(notdir $(wildcard bench/*.py)))

.PHONY: venv test demo bench clean

venv: $(STAMP)

# The stamp only goes stale when setup.py changes, so repeated `make test`
# runs skip pip entirely.
$(STAMP): setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e ".[test,baselines,deploy]"
	touch $(STAMP)

test: venv
	TF_CPP_MIN_LOG_LEVEL=2 $(VPY) -m pytest -q tests

demo: venv
	TF_CPP_MIN_LOG_LEVEL=2 $(VPY) -m keras_autopruner.study --preset demo

bench: venv
	@test -n "$(BENCH)" || { echo "no scripts under bench/; nothing to run"; exit 1; }
	for b in $(BENCH); do \
		TF_CPP_MIN_LOG_LEVEL=2 $(VPY) bench/$$b.py || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info out runs .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
