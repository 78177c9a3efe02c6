# The README's two commands. Each creates (or reuses) .venv and installs what it needs.
#   make bench   the benchmark suite (python -m bench)
#   make test    the test suite
# The venv sees the system's site-packages, so a machine that already has torch (a GPU box)
# uses that torch; elsewhere torch==2.13.0 is installed (a CPU build where one is on disk).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fusedrnn-installed

# the tests on every core (pytest-xdist; the interpreter runs one core each)
PYTEST_ARGS ?= -n auto

.PHONY: test bench env
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

env: $(STAMP)

# Triton 3.6, what the lent GPU machines run, goes beside the installed one: the compile
# test builds the weight-stationary kernels with it too (skipped, with its reason, without it)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m pip install -q -e ".[export]" || \
		echo "onnx/onnxscript/onnxruntime not installed: the ONNX export tests will be skipped"
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton36 triton==3.6.0 || \
		echo "Triton 3.6 not installed: its compile test will be skipped"
	touch $@
