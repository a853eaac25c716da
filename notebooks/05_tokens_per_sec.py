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
import numpy as np
from matplotlib.ticker import FormatStrFormatter

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
shapes = list(dict.fromkeys(zip(b1["out"], b1["in"], strict=False)))
s_fine = np.linspace(0, 0.95, 96)
fig, axes = plots.figure(columns=2, height=2.4, ncols=len(shapes), sharey=True)
for ax, (out_f, in_f) in zip(np.atleast_1d(axes), shapes, strict=False):
    part = b1[(b1["out"] == out_f) & (b1["in"] == in_f)].sort_values("sparsity")
    ax.plot(s_fine, [roofline.speedup_ceiling("sparse", s) for s in s_fine], ":",
            color=plots.method_color("ours"), lw=0.8, label="sparse ceiling 4/(0.125+d)")
    ax.axhline(roofline.speedup_ceiling("int8"), color=plots.method_color("dense"), ls=":", lw=0.8,
               label="INT8 ceiling 4")
    ax.plot(part.sparsity, part.x_vs_torch_fp32, marker="o", ms=3, color=plots.method_color("ours"),
            label="ours, sparse INT8")
    ax.plot(part.sparsity, part.torch_fp32_ms / part.ours_dense_int8_ms, "--",
            color=plots.method_color("dense"), label="ours, dense INT8")
    ax.plot(part.sparsity, part.torch_fp32_ms / part.torch_int8_ms, "-",
            color=plots.method_color("torch-int8"), label="torch dynamic INT8")
    ax.set_title(f"{out_f}x{in_f}", fontsize=7)
    ax.set_xlabel("sparsity")
    ax.set_ylim(0, 12)            # the sparse ceiling runs on to 23x at 95%
    ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
np.atleast_1d(axes)[0].set_ylabel("speed-up over torch FP32")
fig.legend(*np.atleast_1d(axes)[-1].get_legend_handles_labels(), loc="outside upper center",
           ncol=5, fontsize=5)
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
    speed = speed[speed["batch"] == 1] if "batch" in speed else speed
    threads = sorted(speed["threads"].unique()) if "threads" in speed else [None]
    fig, axes = plots.figure(columns=2 if len(threads) > 1 else 1, ncols=len(threads), sharey=True,
                             squeeze=False)
    for ax, t in zip(axes[0], threads, strict=False):
        part = speed[speed["threads"] == t] if t is not None else speed
        ax.plot(s_fine, [roofline.speedup_ceiling("auto", s) for s in s_fine], ":",
                color=plots.method_color("ours"), lw=0.8, label="bytes ceiling")
        sparse = part[part.system.str.startswith("ours-sparse-")].sort_values("sparsity")
        ax.plot(sparse.sparsity, sparse.speedup, marker="o", ms=3, color=plots.method_color("ours"),
                label="ours, sparse INT8 (native engine)")
        torch_loop = part[part.system.str.startswith("ours-torch-sparse-")]
        ax.plot(torch_loop.sparsity, torch_loop.speedup, marker="x", ms=4, ls="",
                color=plots.method_color("ours"), label="ours, sparse INT8 (torch loop)")
        for system, style in (("ours-int8", "--"), ("hf-int8", "-"), ("ours-fp32", "-."),
                              ("llamacpp-q8_0", "--"), ("llamacpp-q4_0", ":"),
                              ("llamabench-q8_0", "--"), ("llamabench-q4_0", ":")):
            row = part[part.system == system]
            if len(row):
                color = ("torch-int8" if system == "hf-int8" else
                         "llama.cpp" if system.startswith("llama") else "dense")
                ax.axhline(row.speedup.iloc[0], ls=style, lw=0.8, label=system,
                           color=plots.method_color(color))
        ax.set_title(f"{t} thread(s)" if t is not None else "")
        ax.set_xlabel("sparsity")
    axes[0][0].set_ylabel("decode tokens/s over HF FP32")
    axes[0][-1].legend(fontsize=5)
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
    fig, axes = plots.figure(columns=2, ncols=2, sharey=True)
    for ax, (model, part) in zip(axes, shapes.groupby("model", sort=False), strict=False):
        for t, style in ((1, "-"), (2, "--")):
            sub = part[part.threads == t].sort_values("sparsity")
            sparse = sub[sub.system.str.contains("-sparse-")]
            ax.plot(sparse.sparsity, sparse.speedup, style, marker="o", ms=3,
                    color=plots.method_color("ours"), label=f"sparse INT8, {t} thread(s)")
            dense = sub[sub.system == "ours-int8"]
            if len(dense):
                ax.axhline(dense.speedup.iloc[0], ls=style, lw=0.8, color=plots.method_color("dense"),
                           label=f"dense INT8, {t} thread(s)")
        ax.set_title(f"{model} (random weights), FP32 {part.fp32_source.iloc[0]}")
        ax.set_xlabel("sparsity")
    axes[0].set_ylabel("decode speed-up over FP32")
    axes[-1].legend(fontsize=5)
    plots.save_figure(fig, "tokens_per_sec_shapes", config={"source": "results/decode", "batch": 1});
    tables.save_table(shapes.round(3), "tokens_per_sec_shapes", float_format=".3g",
                      caption="Decode ms/token of random-weight shape models against FP32",
                      label="tab:shapes", config={"source": "results/decode"});
shapes

# %%
fits

# %%
plt.close("all")
