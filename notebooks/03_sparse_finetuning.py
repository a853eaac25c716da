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
# # 03 · Sparse fine-tuning: recovering what pruning lost, on the model that runs
#
# The experiment of Kurtic et al. 2023 (arXiv 2310.06927, section 4) on the embedded model:
#
# 1. fine-tune the dense model on the arithmetic task until its dev accuracy stops improving:
#    the **teacher**;
# 2. prune the teacher one-shot with SparseGPT at each sparsity;
# 3. train each pruned model with the mask frozen, once with cross-entropy alone (**CE**) and
#    once with **SquareHead** distillation (per-layer normalized MSE to the teacher's hidden
#    states) plus CE: same data, step cap, dev-plateau rule and seed; keep the best dev step;
# 4. smooth, quantize to W8A8 and pack for the runtime, and score the **packed** model (the
#    one that runs fast) beside the FP32 one: arith test accuracy with its 95% Wilson
#    interval, pydoc perplexity, decode speed-up over dense FP32, size.
#
# `workbench.recovery.run_recovery` runs it with every stage cached and every training run
# resumable. `RECOVERY_SIZE` picks the `RecoveryConfig`: `reproduce` (the `make reproduce`
# size, the default), `full` (the class defaults) or `experiments` (all four sparsities, three
# seeds: what `make experiments` runs through the CLI). `python -m workbench distill --size S`
# builds the same config, so the notebook reads that run back from the cache. A CLI run made
# with more flags than a size is read back by passing them as `DISTILL_ARGS` instead. Quick
# mode uses `RecoveryConfig.quick()` and ignores both.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"
RECOVERY_SIZE = "reproduce"
DISTILL_ARGS = ""

# %%
import matplotlib.pyplot as plt

from workbench import load_model, plots, stats, tables
from workbench.recovery import RecoveryConfig, run_recovery

plots.use_style()
if QUICK:
    config = RecoveryConfig.quick()
elif DISTILL_ARGS:      # a `python -m workbench distill` run with more flags than a size
    from workbench.cli import distill_config

    config = distill_config(f"--model {MODEL} {DISTILL_ARGS}")
else:                   # reproduce, full or experiments
    config = RecoveryConfig.sized(RECOVERY_SIZE)
print(config)
model, tok = load_model(MODEL)
result = run_recovery(model, tok, config)
print("computed now:", result.computed or "nothing (all cached)")
result.table

# %% [markdown]
# ## Accuracy against sparsity, and the speed of the same models
# Each point pools the seeds' test items, with its 95% Wilson interval. The last series is the
# SquareHead + CE model after W8A8 and packing, scored through the runtime itself; the right
# panel is the decode speed-up of those packed models over the dense FP32 model, measured in
# the same run (batch 1).

# %%
fig = plots.recovery_figure(result.table)
plots.save_figure(fig, "recovery_vs_sparsity", config={"model": MODEL, **result.meta["config"]});

# %% [markdown]
# ## Which differences are real
# Two accuracies whose 95% intervals overlap are reported as no difference.

# %%
students = result.table[result.table["stage"] == "student"]
for target, part in students.groupby("target"):
    ce, sh = (part[part["method"] == m] for m in ("CE", "SquareHead+CE"))
    a, b = (stats.pooled_accuracy(p)[1:] for p in (ce, sh))
    verdict = "no difference" if stats.overlap(a, b) else (
        "SquareHead+CE higher" if b[0] > a[1] else "CE higher")
    print(f"{target:.0%}: CE {a[0]:.2f}-{a[1]:.2f}, SquareHead+CE {b[0]:.2f}-{b[1]:.2f}: {verdict}")

# %% [markdown]
# ## Training to a plateau
# Dev accuracy (a split disjoint from train and test) at every evaluation of each run; the
# star marks the step whose weights the run keeps.

# %%
fig = plots.dev_curves_figure(result.dev)
plots.save_figure(fig, "recovery_training_curves", config={"model": MODEL, **result.meta["config"]});

# %%
tables.save_table(result.table, "recovery", caption="Accuracy recovery after SparseGPT, FP32 "
                  "and packed W8A8 (95% Wilson intervals)", label="tab:recovery",
                  float_format=".3g", config=result.meta["config"]);
tables.save_table(result.w8a8, "recovery_w8a8_smoothing", caption="W8A8 perplexity of the "
                  "recovered models by smoothing", label="tab:recovery-w8a8", float_format=".4g",
                  config=result.meta["config"]);
result.summary

# %%
plt.close("all")
