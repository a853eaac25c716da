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
# # 01 · Activation ranges and outlier layers
#
# INT8 activation quantization fails where a layer's input spans a huge range: one scale must
# cover both the outliers and the ordinary values. This notebook profiles every decoder Linear
# of the model on calibration text, ranks the layers by input range, compares that cheap
# heuristic with the slow measurement it replaces (quantize one layer at a time and watch the
# loss), and ends with the `QuantPlan` that keeps the worst layers in FP32.
#
# Every expensive step goes through the cache with the `python -m workbench outliers --measure`
# keys, so after `make reproduce` this notebook only reads.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"
K = 10

# %%
import matplotlib.pyplot as plt
import pandas as pd

from workbench import cache, data, load_model, plots, tables
from workbench.outliers import cached_layer_sensitivity, compare_rankings, rank_outlier_layers
from workbench.profiling import cached_profile
from workbench.quant import QuantConfig

plots.use_style()
# 16 pydoc windows of 512 tokens (4 in quick mode; the outliers CLI takes 32), and the first
# of them, cut to 256 tokens (128 in quick mode), for the measured sensitivity: 210 one-layer
# W8A8 losses, each a forward pass from the changed layer on, LM head included (the CLI takes
# 2 whole windows). The first windows are the same in every mode.
NSAMPLES, MEASURE_TOKENS = (4, 128) if QUICK else (16, 256)
model, tok = load_model(MODEL)
model_fp = cache.fingerprint_model(model)
calib = data.calibration_set(tok, "pydoc", nsamples=NSAMPLES, seqlen=512)
calib.shape

# %% [markdown]
# ## Profile
# One forward pass over the calibration windows with hooks on every Linear input (running
# per-channel min / max / absmax; no activation is stored). Twice: with every token, and without
# token position 0, which carries the "massive activations" of the residual stream.

# %%
profiles = {first: cached_profile(model, calib, include_first_token=first, model_fp=model_fp)
            for first in (True, False)}
rankings = {first: rank_outlier_layers(profiles[first], k=K, metric="range")
            for first in (True, False)}
LABEL = {True: "with first token", False: "without first token"}
rankings[True].frame.head(K)

# %% [markdown]
# ## The ten widest inputs
# Bars on a log scale; the title gives the ratio of the largest range to the K-th. Without the
# first token the ratio collapses: the outliers live on one position.

# %%
fig, axes = plots.figure(columns=2, height=2.8, ncols=2, sharey=True)
plots.range_bars(axes, {LABEL[first]: rankings[first] for first in (True, False)}, k=K)
plots.save_figure(fig, "activation_ranges_top10", config={"model": MODEL, "nsamples": NSAMPLES, "k": K});

# %% [markdown]
# ## Layer x module
# The input range of every Linear (log colour scale). Projections fed by one norm (q/k/v,
# gate/up) share their input, so their rows are equal; `down_proj` inputs, which no norm
# precedes, hold the extremes — smoothing cannot reach them.

# %%
fig, axes = plots.figure(columns=2, height=3.0, nrows=2, sharex=True)
plots.range_heatmap(axes, {LABEL[first]: profiles[first].to_frame() for first in (True, False)})
plots.save_figure(fig, "activation_ranges_heatmap", config={"model": MODEL, "nsamples": NSAMPLES});

# %% [markdown]
# The block outputs show where the massive activations appear: the absmax of each decoder
# block's output at token 0 against every other position.

# %%
fig, ax = plots.figure(columns=1)
plots.massive_activations(ax, profiles[True])
plots.save_figure(fig, "massive_activations", config={"model": MODEL, "nsamples": NSAMPLES});

# %% [markdown]
# ## Heuristic vs measured sensitivity
# The measurement quantizes one Linear at a time to W8A8 (per-tensor activations, where
# outliers hurt most), measures the next-token loss on part of a calibration window, restores
# it: 210 forward passes (each from the changed layer on). The heuristic needs none. How well
# do they agree?

# %%
measured = cached_layer_sensitivity(model, calib[:1, :MEASURE_TOKENS],
                                    QuantConfig(activations="per_tensor"), model_fp=model_fp)
agreement = {LABEL[first]: compare_rankings(rankings[first], measured, k=K) for first in (True, False)}
{label: (a["overlap"], round(a["spearman"], 3)) for label, a in agreement.items()}

# %%
fig, ax = plots.figure(columns=1)
plots.sensitivity_scatter(ax, rankings[True], measured, agreement[LABEL[True]])
plots.save_figure(fig, "outlier_sensitivity", config={"model": MODEL, "measure_tokens": MEASURE_TOKENS});

# %%
side = pd.DataFrame({"rank": list(range(1, K + 1)),
        "heuristic (range, with first token)": rankings[True].top,
        "heuristic (range, without first token)": rankings[False].top,
        "measured (W8A8 loss increase)": measured.top(K)})
tables.save_table(side, "outlier_rankings", caption=f"Top-{K} outlier layers: heuristic vs measured",
                  label="tab:outliers", config={"model": MODEL, "nsamples": NSAMPLES})
side

# %% [markdown]
# ## The QuantPlan
# The plan keeps the top-K layers by input range in FP32; `quantize_(model, config, plan)` and
# `runtime.pack(model, plan=plan)` quantize the rest. Notebook 04 sweeps K.

# %%
plan = rankings[True].plan()
plan.to_dict()

# %%
plt.close("all")
