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
# # 03 · Sparse fine-tuning: recovering what pruning lost
#
# The experiment of Kurtic et al. 2023 (arXiv 2310.06927, section 4) on the embedded model:
#
# 1. fine-tune the dense model on the arithmetic task: the **teacher**;
# 2. prune the teacher one-shot with SparseGPT at each sparsity;
# 3. train each pruned model with the mask frozen, once with cross-entropy alone (**CE**) and
#    once with **SquareHead** distillation (per-layer normalized MSE to the teacher's hidden
#    states) plus CE, same data, steps and seed;
# 4. score everything on the untouched arith test split and on pydoc perplexity.
#
# `workbench.recovery.run_recovery` runs it with every stage cached. `DISTILL_ARGS` are
# `python -m workbench distill` arguments: this notebook builds the same `RecoveryConfig`, so
# it reads back a CLI run made with them. The default is sized for `make reproduce` (45
# minutes for every notebook on 2 cores): 20 SFT steps, 8 recovery steps per run, 16 arith test
# items. The larger run in results/distill (30 SFT and 24 recovery steps, 100 items) is
# `make experiments`; pass its arguments here to plot it. Quick mode ignores DISTILL_ARGS.

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"
DISTILL_ARGS = "--sparsities 0.5,0.7 --sft-steps 20 --steps 8 --nsamples 8 --eval-n 16 --max-windows 4"

# %%
import matplotlib.pyplot as plt

from workbench import load_model, plots, tables
from workbench.cli import distill_config
from workbench.recovery import run_recovery

plots.use_style()
config = distill_config(f"--model {MODEL} " + ("--quick" if QUICK else DISTILL_ARGS))
print(config)
model, tok = load_model(MODEL)
result = run_recovery(model, tok, config)
print("computed now:", result.computed or "nothing (all cached)")
result.table

# %% [markdown]
# ## Recovery against sparsity
# Dashed lines: the dense base model and the fine-tuned dense teacher. At each sparsity: the
# one-shot pruned teacher, then the two recovery runs from it.

# %%
table = result.table.copy()
table["target"] = table["sparsity"].round(2)
pruned = table[table["stage"].isin(["one-shot", "student"])]
COLORS = {"sparsegpt": plots.method_color("sparsegpt"), "CE": plots.method_color("ce"),
          "SquareHead+CE": plots.method_color("squarehead")}
LABELS = {"sparsegpt": "one-shot SparseGPT", "CE": "CE", "SquareHead+CE": "SquareHead + CE"}
fig, axes = plots.figure(columns=2, ncols=2)
for ax, column, label in zip(axes, ("arith_acc", "ppl"), ("arith accuracy (1-step)", "perplexity (pydoc)"), strict=False):
    for stage, style in (("base", ":"), ("teacher", "--")):
        value = table.loc[table["stage"] == stage, column].iloc[0]
        ax.axhline(value, color=plots.method_color("dense"), ls=style, lw=0.8,
                   label="dense base" if stage == "base" else "dense teacher (SFT)")
    for method, part in pruned.groupby("method", sort=False):
        part = part.sort_values("target")
        ax.plot(part["target"], part[column], marker="o", ms=3, color=COLORS[method],
                label=LABELS[method])
    ax.set_xlabel("sparsity")
    ax.set_ylabel(label)
axes[1].set_yscale("log")
axes[0].legend()
plots.save_figure(fig, "recovery_vs_sparsity", config={"model": MODEL, **result.meta["config"]});

# %% [markdown]
# ## Training curves
# Cross-entropy on the training batches at every optimizer step: the teacher's fine-tuning, and
# each recovery run (for SquareHead + CE the plotted CE is one term of the loss it minimizes).

# %%
losses = result.losses
students = losses[losses["stage"] == "student"]
fig, axes = plots.figure(columns=2, ncols=1 + students["sparsity"].nunique(), sharey=True)
sft = losses[losses["stage"] == "teacher"]
axes[0].plot(sft["step"], sft["ce"], color=plots.method_color("dense"))
axes[0].set_title("teacher SFT")
axes[0].set_ylabel("cross-entropy")
for ax, (sparsity, part) in zip(axes[1:], students.groupby("sparsity"), strict=False):
    for method, run in part.groupby("method", sort=False):
        ax.plot(run["step"], run["ce"], color=COLORS[method], label=LABELS[method])
    ax.set_title(f"{sparsity:.0%} sparse")
for ax in axes:
    ax.set_xlabel("step")
axes[-1].legend()
plots.save_figure(fig, "recovery_training_curves", config={"model": MODEL, **result.meta["config"]});

# %%
tables.save_table(result.table, "recovery", caption="Accuracy recovery after SparseGPT",
                  label="tab:recovery", float_format=".3g", config=result.meta["config"]);
table.pivot_table(index="target", columns="method", values=["arith_acc", "ppl"])

# %%
plt.close("all")
