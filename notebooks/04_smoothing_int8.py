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
# # 04 · Smoothing and INT8: SmoothQuant, LAE and selective quantization
#
# W8A8 fake-quantization (per-channel INT8 weights; per-token or per-tensor INT8 activations)
# of the dense and the 50% SparseGPT model. Smoothing moves activation range into the weights
# through the preceding norm, leaving the function unchanged: SmoothQuant with scale
# s = max|X|^α / max|W|^(1−α) (Xiao et al. 2023), LAE with a logarithmic equalization. Then the
# cheaper fix for what smoothing cannot reach (the `down_proj` inputs, see notebook 01): keep the
# top-k outlier layers in FP32.
#
# The grid contains `python -m workbench quant`'s points (a `make reproduce` step), which are
# read from the cache; full mode adds more SmoothQuant α values.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd

from workbench import cache, data, load_model, plots, tables
from workbench.evaluate import perplexity
from workbench.outliers import cached_layer_sensitivity, rank_outlier_layers
from workbench.profiling import cached_profile
from workbench.quant import QuantConfig, quantize_
from workbench.smoothing import SmoothConfig, smooth_
from workbench.sweep import selective_w8a8_table, w8a8_table

plots.use_style()
# 8 calibration windows (notebook 02's, so its 50% SparseGPT point is read from the cache) and
# 8 perplexity windows (4 quick), sized for `make reproduce`; the quant CLI (`make experiments`)
# takes 128 and 16.
NSAMPLES, WINDOWS = (8, 4) if QUICK else (8, 8)
ALPHAS = [0.5] if QUICK else [0.3, 0.5, 0.8]
SPARSITIES = [0.0, 0.5]
KS = [0, 3] if QUICK else [0, 1, 3, 10]
model, tok = load_model(MODEL)
calib = data.calibration_set(tok, "pydoc", nsamples=NSAMPLES, seqlen=512)
corpus = data.perplexity_corpus("pydoc", "eval")

# %% [markdown]
# ## The two steps: `smooth_`, then `quantize_`
# One model by hand, as SmoothQuant's own demo does it: FP32, naive W8A8 and SmoothQuant W8A8
# (α = 0.5), per-tensor activations, on one perplexity window. `smooth_` divides each input
# channel by its scale s and folds s into the preceding norm and the weights, so alone it
# changes no output; `quantize_` then swaps every decoder Linear for a W8A8Linear. The profile
# is notebook 01's (read from the cache). Every row of the tables below runs these two steps
# on its own copy of the model, cached.

# %%
model_fp = cache.fingerprint_model(model)
profile_calib = data.calibration_set(tok, "pydoc", nsamples=4 if QUICK else 16, seqlen=512)
profile = cached_profile(model, profile_calib, model_fp=model_fp)
naive, smoothed = copy.deepcopy(model), copy.deepcopy(model)
quantize_(naive, calib, QuantConfig(activations="per_tensor"))
smoothing = smooth_(smoothed, profile, SmoothConfig(method="smoothquant", alpha=0.5))
quantization = quantize_(smoothed, calib, QuantConfig(activations="per_tensor"))
print(f"smooth_: {len(smoothing.groups)} norm groups, scales "
      f"{min(g['min'] for g in smoothing.groups.values()):.3g} to "
      f"{max(g['max'] for g in smoothing.groups.values()):.3g}; "
      f"{len(smoothing.not_smoothable)} Linears no norm feeds left alone")
print(f"quantize_: {len(quantization.quantized)} Linears to W8A8, "
      f"{len(quantization.kept_fp32)} kept in FP32")
print(smoothed.get_submodule(quantization.quantized[0]))
one_window = {label: round(perplexity(m, tok, corpus, seqlen=512, max_windows=1).perplexity, 2)
              for label, m in (("FP32", model), ("W8A8", naive), ("SmoothQuant W8A8", smoothed))}
del naive, smoothed
one_window

# %% [markdown]
# ## None vs SmoothQuant (α sweep) vs LAE
# Each point: prune (cached weights), profile, smooth, fake-quantize, perplexity.

# %%
smoothings = ["none", *(f"smoothquant:{a}" for a in ALPHAS), "lae"]
w8a8 = w8a8_table(MODEL, calib, corpus, sparsities=SPARSITIES, smoothings=smoothings,
                  activations=["per_token", "per_tensor"], max_windows=WINDOWS)
wide = w8a8.pivot_table(index=["smoothing", "activations"], columns="sparsity",
                        values="perplexity", sort=False)
wide.columns = [f"ppl @ {c:.0%} sparse" for c in wide.columns]
config = {"model": MODEL, "calib_nsamples": NSAMPLES, "max_windows": WINDOWS,
          "weights": "per_channel", "prune": "sparsegpt"}
tables.save_table(wide, "w8a8_smoothing", caption="W8A8 perplexity with and without smoothing",
                  label="tab:w8a8", float_format=".2f", config=config);
wide

# %%
fig, axes = plots.figure(columns=2, ncols=2, sharey=False)
plots.smoothing_curves(axes, w8a8)
plots.save_figure(fig, "w8a8_smoothing", config=config);

# %% [markdown]
# ## Selective quantization: keep the top-k outlier layers in FP32
# Per-tensor activations without smoothing, where the outliers hurt most. Two orders: the range
# heuristic from notebook 01's profile and the measured one-layer sensitivity (both cached:
# notebook 01 computed them on the same windows). k = 0 is the fully quantized model.

# %%
heuristic = rank_outlier_layers(profile, k=10)
measured = cached_layer_sensitivity(model, profile_calib[:1, :128 if QUICK else 256],
                                    QuantConfig(activations="per_tensor"),
                                    model_fp=model_fp)
orders = {"range heuristic": list(heuristic.frame["name"]), "measured": measured.top(len(measured.frame))}
selective = pd.concat([selective_w8a8_table(MODEL, calib, corpus, order, ks=KS,
                                            activations="per_tensor", max_windows=WINDOWS,
                                            label=label)
                       for label, order in orders.items()], ignore_index=True)
selective.pivot_table(index="k", columns="label", values="perplexity")

# %%
fig, ax = plots.figure(columns=1)
plots.selective_curves(ax, selective, w8a8)
plots.save_figure(fig, "selective_quantization", config={**config, "ks": KS});
tables.save_table(selective[["label", "k", "perplexity"]], "selective_quantization", float_format=".2f",
                  caption="W8A8 (per-tensor) perplexity with the top-k outlier layers in FP32",
                  label="tab:selective", config={**config, "ks": KS});

# %%
plt.close("all")
