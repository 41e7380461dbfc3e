# Developer entry points. `make test` is what CI runs (see .ci/run).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make demo` needs only the package itself (TensorFlow, Keras, pandas,
# matplotlib): no test, deploy, JAX or PyTorch extras.
DEMO_VENV := .venv-demo
DEMO_PY := $(DEMO_VENV)/bin/python
DEMO_STAMP := $(DEMO_VENV)/.installed
# Benchmark script names under bench/, without ".py"; override on the
# command line, e.g. `make bench BENCH=fashion_mnist`.
BENCH ?= $(basename $(notdir $(wildcard bench/*.py)))

PEERS_STAMP := $(VENV)/.peers

.PHONY: venv demo-venv peers test demo bench clean

# PyTorch for the backend tests: this CPU build is on the CI machines' local
# wheel directory (plain `torch` from PyPI is a multi-GB CUDA build). Set
# TORCH= to skip it; tests/test_backends.py then fails and says so.
TORCH ?= torch==2.13.0
# Tests that run a second time with KERAS_BACKEND=jax (the backend is fixed
# at import), less the one that needs tf.distribute. tests/test_backends.py
# and tests/test_distribution.py run the rest of the core path on JAX and
# PyTorch in subprocesses.
JAX_TESTS := tests/test_gate.py tests/test_schedules.py tests/test_callbacks.py \
	tests/test_surgery.py \
	tests/test_resume.py tests/test_gate_maps.py tests/test_xla.py \
	tests/test_folding.py
# (MobileNetV3's fold check takes a minute on JAX, for what TensorFlow's
# pass and tests/test_folding.py's smaller graphs on JAX already show.)
JAX_SKIP := mirrored_strategy or mobilenet_v3_small

venv: $(STAMP)

# The stamp only goes stale when setup.py changes, so repeated `make test`
# runs skip pip entirely.
$(STAMP): setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e ".[test,baselines,deploy,jax,fpga]"
	test -z "$(TORCH)" || $(VPY) -m pip install "$(TORCH)"
	touch $(STAMP)

# PQuantML, the peer that bench/fpga_pquant.py runs, into the test venv.
peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP)
	$(VPY) -m pip install -e ".[peers]"
	touch $(PEERS_STAMP)

demo-venv: $(DEMO_STAMP)

$(DEMO_STAMP): setup.py
	test -x $(DEMO_PY) || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_PY) -m pip install --upgrade pip
	$(DEMO_PY) -m pip install -e .
	touch $(DEMO_STAMP)

test: venv
	TF_CPP_MIN_LOG_LEVEL=2 $(VPY) -m pytest -q tests
	KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=2 $(VPY) -m pytest -q $(JAX_TESTS) \
		-k "not ($(JAX_SKIP))"

# Training processes at once: the demo's small network keeps about one core
# busy per process (BUILD_NOTES: "--jobs"), so 2 fits 2 cores.
DEMO_JOBS ?= 2

demo: demo-venv
	TF_CPP_MIN_LOG_LEVEL=2 $(DEMO_PY) -m keras_autopruner.study --preset demo --jobs=$(DEMO_JOBS)

bench: venv peers
	@test -n "$(BENCH)" || { echo "no scripts under bench/; nothing to run"; exit 1; }
	for b in $(BENCH); do \
		TF_CPP_MIN_LOG_LEVEL=2 $(VPY) bench/$$b.py || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info out runs .pytest_cache .hypothesis
	find . \( -path ./$(VENV) -o -path ./$(DEMO_VENV) \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
