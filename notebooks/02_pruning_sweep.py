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
# # 02 · Pruning sweep: SparseGPT vs Wanda vs magnitude, then OWL, RIA and DSnoT
#
# One-shot pruning of every decoder Linear at increasing sparsity, scored on bounded-window
# pydoc perplexity and one-step arithmetic accuracy (3-shot chat, greedy). SparseGPT solves a
# layer-wise reconstruction with the inverse Hessian of the calibration inputs (Frantar &
# Alistarh 2023); Wanda scores weights by |W|·‖X‖ (Sun et al. 2023); magnitude needs no data.
# N:M patterns (2:4, 4:8) are the structured variants hardware can exploit.
#
# The second half goes beyond the paper with three training-free methods published since:
# OWL's per-layer sparsities, RIA's score and DSnoT's mask refinement.
#
# Every point is cached (pruned weights and each score, with the `eval` CLI's keys), so an
# interrupted sweep resumes and a re-run only reads. The explorer of notebook 06 reads the
# table this notebook writes.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"

# %% [markdown]
# ## The grid
# `SweepConfig` holds the grid, the calibration and the scores; notebook 06's explorer uses
# the same one, so it reads these points from the cache. The grid is sized to fit
# `make reproduce` in 45 minutes on 2 cores: SparseGPT (~50 s a point) and Wanda (~20 s) cost
# mostly the forward passes over the 8 calibration windows of 512 tokens, magnitude seconds,
# and each point's scores about 27 s (8 perplexity windows; 16 three-shot arith items).
# Larger runs: `python -m workbench prune` (see `make experiments`). Quick mode is a smoke test.

# %%
import dataclasses

import matplotlib.pyplot as plt

from workbench import load_model, plots, tables
from workbench.pruning import PruneConfig, prune_, variant_label
from workbench.sweep import SweepConfig, prune_sweep

plots.use_style()
config = SweepConfig.quick() if QUICK else SweepConfig()
grid = config.grid()
print(f"{len(grid)} pruned points + dense; calibration {config.nsamples} x {config.seqlen} tokens")
dataclasses.asdict(config)

# %% [markdown]
# ## The step: `prune_`
# One block pruned by hand: SparseGPT at 50% on the seven matrices of the first decoder block,
# with one calibration window so that the cell takes seconds. `prune_` walks the blocks in
# order, feeding each the outputs of the pruned blocks before it; its report has a row per
# matrix: the zeros reached (the target, exactly) and SparseGPT's relative reconstruction
# error ||(W − Ŵ)X||² / ||WX||². The sweep below makes this call on every block with all the
# windows, for each point of the grid, through the cache.

# %%
model, tok = load_model(MODEL)
calib = config.calibration(tok)
report = prune_(model, calib[:1], PruneConfig(method="sparsegpt", sparsity=0.5,
                                               targets=("model.layers.0.*",)))
print(f"{report.sparsity:.2%} zeros over {len(report.layers)} matrices in {report.seconds:.1f} s")
del model
report.to_frame()[["name", "numel", "zeros", "sparsity", "rel_error"]]

# %% [markdown]
# ## The sweep
# Every point of the grid: pruned weights and scores each read from the cache when there.

# %%
sweep = prune_sweep(MODEL, grid, calib, config.tasks)
sweep

# %% [markdown]
# ## Accuracy against sparsity
# Lines join the unstructured points of each method; open squares are N:M patterns (their
# sparsity is N/M). The dashed line is the dense model. Perplexity is on a log scale.

# %%
fig, (ax_ppl, ax_acc) = plots.figure(columns=2, ncols=2)
plots.sparsity_curves(ax_ppl, sweep, "ppl", "perplexity (pydoc)", logy=True)
plots.sparsity_curves(ax_acc, sweep, "arith", "arith accuracy (1-step)")
ax_ppl.legend()
meta = {"model": MODEL, "quick": QUICK, **config.to_dict()}
plots.save_figure(fig, "sparsity_vs_accuracy", config=meta);

# %% [markdown]
# ## The table
# `target` is the requested sparsity, `sparsity` the fraction of zeros reached over all pruned
# matrices; `prune_s` the time the pruning took when it was computed.

# %%
table = sweep[["method", "structure", "target", "sparsity", "ppl", "arith", "prune_s"]]
tables.save_table(table, "sparsity_sweep", caption="One-shot pruning of SmolLM2-135M",
                  label="tab:sparsity-sweep", float_format=".3g", config=meta);
wide = sweep[sweep.structure.isin(["unstructured", "-"])].pivot_table(
    index="target", columns="method", values="ppl")
wide

# %% [markdown]
# ## Beyond the paper: OWL, RIA and DSnoT
# Three one-shot methods that need no training, all in the same sequential driver
# (`PruneConfig` options):
#
# - **OWL** (Yin et al. 2023, arXiv 2310.05175), `layer_sparsity="owl"`: each block's sparsity
#   from its outlier ratio, the fraction of its Wanda scores |W|·‖X‖ above M = 5 times the block
#   mean; spread over ±λ = 0.08 around the target, mean kept exact.
# - **RIA** (Zhang et al., ICLR 2024), `method="ria"`: score (|W_ij|/Σ_row|W| + |W_ij|/Σ_col|W|)
#   · ‖X_j‖^0.5, one threshold per matrix.
# - **DSnoT** (Zhang et al. 2023, arXiv 2310.08915), `refine="dsnot"`: after any pruner, swaps a
#   pruned and a kept weight in a row while that lowers the layer's reconstruction error; no
#   weight update.
#
# Each method at 50-80%, uniform and with OWL, with and without DSnoT; λ and M are the papers'
# defaults at every sparsity (not tuned). Scored on the same perplexity windows as above.

# %%
beyond = prune_sweep(MODEL, config.beyond_grid(), calib, config.beyond_tasks)
fig, axes = plots.figure(columns=2, ncols=len(config.beyond_methods), sharey=True, squeeze=False)
plots.variant_curves(list(axes[0]), beyond, "ppl", "perplexity (pydoc)")
axes[0][-1].legend(fontsize="x-small")
plots.save_figure(fig, "sparsity_variants", config=meta);

# %% [markdown]
# The table puts the papers' own WikiText2 numbers beside ours where they report the same
# setting (OWL: LLaMA-1-7B at 70%; RIA: LLaMA-3-8B at 50%). Their models and corpus are not
# ours, so compare `ppl_vs_dense` (perplexity over the dense model's), not raw perplexity.

# %%
from workbench.published import beside_published

beside = beside_published(beyond)
beside["variant"] = [variant_label(a, b) for a, b in zip(beside.layer_sparsity, beside.refine, strict=True)]
columns = ["method", "variant", "target", "sparsity", "ppl", "ppl_vs_dense", "paper",
           "paper_model", "paper_ppl", "paper_vs_dense", "prune_s"]
tables.save_table(beside[columns], "sparsity_variants",
                  caption="OWL, RIA and DSnoT on SmolLM2-135M, with published numbers",
                  label="tab:sparsity-variants", float_format=".3g", config=meta);
beside.pivot_table(index=["method", "target"], columns="variant", values="ppl", sort=False)

# %% [markdown]
# SparseGPT's weight update keeps perplexity close to dense up to about 50% and degrades
# gracefully after; Wanda follows it at moderate sparsity, and magnitude pruning collapses
# early. N:M patterns cost more than the same unstructured sparsity.
#
# Beyond the paper, in the committed run (the same 8 windows, 4,088 predicted tokens, for every
# point; no interval is computed, so read differences under ~10% as unresolved): at 50-60% the
# four variants stay within 3% of each other for SparseGPT and 8% for Wanda. The methods pay off
# where this model collapses: at 80%, OWL takes SparseGPT from 415 to 326 and Wanda from 16,760
# to 6,820, DSnoT takes them to 296 and 3,420, and OWL + DSnoT gives SparseGPT's best, 292. At
# 70% OWL helps Wanda (466 -> 360) but not SparseGPT (72 -> 74) and hurts RIA (476 -> 557),
# while DSnoT helps Wanda (-39%) and RIA (-29%). RIA does not beat Wanda here (60%: 68.6 vs
# 55.1), unlike its LLaMA-3-8B result. OWL's 70% gains on LLaMA-7B (-26% for SparseGPT, -71% for
# Wanda) show up on this 135M model only at 80%, and nothing brings 70% near the dense 10.9.

# %%
plt.close("all")
