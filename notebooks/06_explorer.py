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
# # 06 · Sparsity explorer
#
# Drag the sparsity slider (it snaps to the sweep's grid), pick a pruning method and FP32 or
# INT8 weights: the explorer shows the point's perplexity and arithmetic accuracy, the bytes of
# the decoder weights in the packed format (FP32 4 B/weight, dense INT8 1, sparse INT8
# 0.125 + density), rings the point on the curves, and shows a sample generation of the
# pruned model. The controls only read notebook 02's sweep; a point or a sample the cache
# lacks is computed by the button, once, through the same cached functions.
#
# Serve it as an app with `voila notebooks/06_explorer.ipynb` (after `jupytext --to ipynb`).

# %% tags=["parameters"]
import os

QUICK = os.environ.get("WORKBENCH_QUICK") == "1"
MODEL = "smollm2-135m"
PROMPT = "Ava has 12 boxes with 7 marbles in each box. How many marbles does Ava have?"

# %%
import json

import pandas as pd

from workbench import load_model, plots
from workbench.export import find_result
from workbench.sweep import SweepConfig, prune_sweep
from workbench.widgets import SparsityExplorer

plots.use_style()
config = SweepConfig.quick() if QUICK else SweepConfig()
base = load_model(MODEL)
calib = config.calibration(base[1])

# %% [markdown]
# The sweep table notebook 02 wrote, if it was made with this configuration; otherwise the
# sweep itself, read from the cache (computed only for points nobody has computed yet).

# %%
table = find_result("tables/sparsity_sweep.csv")
written = json.loads(table.with_suffix(".json").read_text())["config"] if table else {}
if table and {k: written.get(k) for k in config.to_dict()} == json.loads(json.dumps(config.to_dict())):
    frame = pd.read_csv(table)
else:
    frame = prune_sweep(MODEL, config.grid(), calib, config.tasks)
frame

# %%
explorer = SparsityExplorer.for_sweep(frame, MODEL, config, calib, base, PROMPT)
explorer
