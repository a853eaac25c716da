# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Tokens per second against the bytes roofline
#
# Batch-1 decoding streams every weight once per token, so it is memory-bound: the bytes per
# weight set the ceiling on the speed-up over dense FP32 (4 bytes/weight). Our sparse format
# stores a 1-bit mask per weight plus the INT8 nonzeros, 0.125 + density bytes/weight, so its
# ceiling is 4 / (0.125 + density): 6.4x at 50%, 9.4x at 70%, 12.3x at 80%. Dense INT8's is 4x.
#
# This notebook does not run the benchmarks (the kernel benchmark takes ~25 minutes on an idle
# machine: `make bench-kernels`); it reads what they wrote: `results/kernels/kernels.csv` and,
# when the decode benchmark of the packed runtime has written them, `results/decode/*.csv`.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"

# %%
import json

import matplotlib.pyplot as plt

from workbench import plots, roofline, tables
from workbench.export import find_result

plots.use_style()
kernels = roofline.kernel_results()
meta = json.loads(find_result("kernels/kernels.json").read_text())
print(f"CPU {meta['cpu']['cpu']}, kernel path {meta['cpu']['isa']}, read probe "
      + ", ".join(f"{t} thread(s) {gb:.1f} GB/s" for t, gb in meta["read_probe_GBps"].items()))
kernels.head()

# %% [markdown]
# ## Kernel speed-up over torch FP32, batch 1, one thread
# Vermillion: our sparse INT8 kernel; the dotted curve above it is its bytes ceiling. Black
# dashes: our dense INT8 kernel; grey: torch's dynamic INT8 Linear. Both dense INT8 baselines
# stream 1 byte/weight, so the bar a sparse kernel must clear is theirs, not FP32's.

# %%
b1 = kernels[(kernels.batch == 1) & (kernels.threads == 1)]
fig = plots.kernel_roofline_figure(b1)
plots.save_figure(fig, "kernel_roofline", config={"source": "results/kernels/kernels.csv",
                                                   "batch": 1, "threads": 1, "cpu": meta["cpu"]});

# %% [markdown]
# How close each kernel gets to its ceiling, and whether the sparse kernel beats dense INT8:

# %%
summary = b1.assign(ceiling=[roofline.speedup_ceiling("sparse", s) for s in b1.sparsity],
                    of_ceiling=lambda f: f.x_vs_torch_fp32 / f.ceiling)
summary[["out", "in", "sparsity", "x_vs_torch_fp32", "ceiling", "of_ceiling",
         "x_vs_ours_dense_int8", "x_vs_torch_int8", "of_probe"]].round(2)

# %% [markdown]
# ## End to end: decode tokens/s of the packed runtime
# When `results/decode/*.csv` exists (the decode benchmark, `python -m workbench bench decode`),
# the decode speed-up of each system over Hugging Face FP32 measured in the same run, batch 1:
# the packed model on the native engine (one C call per token) against sparsity, the same
# model on the torch loop (`engine="torch"`, the reference) as crosses, and the dense systems
# as lines: ours, HF with torch's dynamic INT8, and llama.cpp's own `llama-bench` (tg at the
# prompt's depth) on GGUF Q8_0 / Q4_0 of the same weights. Until then this section says so.

# %%
decode = roofline.decode_results()
try:
    speed = roofline.decode_speedups(decode) if decode is not None else None
except ValueError as err:        # a decode table without the columns this plot needs
    print(f"results/decode/*.csv cannot be plotted here: {err}")
    speed = None
if speed is None:
    print("no decode speed-ups to show (results/decode/*.csv): only the kernel benchmark is shown")
else:
    fig = plots.decode_speedup_figure(speed)
    plots.save_figure(fig, "tokens_per_sec", config={"source": "results/decode", "batch": 1});

# %% [markdown]
# ## Llama-2-7B and TinyLlama-1.1B shapes (random weights)
# Speed depends on shapes and density, not on the weights' values, so these are random-weight
# models with the real shapes, magnitude-pruned, built and packed one layer at a time (only
# the packed copy is held). The packed systems are timed at the full depth; FP32 7B (27 GB)
# does not fit in memory, so its ms/token comes from timings at 2, 4 and 8 layers and a line
# fitted through them (the fit table below); FP32 TinyLlama is timed at full depth.

# %%
fits = roofline.decode_fits()
shapes = None
if decode is not None and "layers" in decode:
    shapes = roofline.shape_speedups(decode, fits)
if shapes is None or shapes.empty:
    print("no shape-model rows in results/decode (python -m workbench bench decode)")
else:
    fig = plots.shape_speedup_figure(shapes)
    plots.save_figure(fig, "tokens_per_sec_shapes", config={"source": "results/decode", "batch": 1});
    tables.save_table(shapes.round(3), "tokens_per_sec_shapes", float_format=".3g",
                      caption="Decode ms/token of random-weight shape models against FP32",
                      label="tab:shapes", config={"source": "results/decode"});
shapes

# %%
fits

# %%
plt.close("all")
