"""Activation ranges and outlier layers (notebook 01): the widest Linear inputs, the layer x
module map of input ranges, the massive activations of token 0, and the range heuristic against
the measured one-layer W8A8 sensitivity."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes

from workbench.plots.style import method_color


def range_bars(axes, rankings: dict, k: int):
    """The k widest Linear inputs as bars on a log scale, one panel per ranking ({title:
    outliers.OutlierRanking}, in panel order), each titled with its largest / k-th ratio.
    Ticks name `layer.module`. Returns axes."""
    if len(axes) < len(rankings):
        raise ValueError(f"{len(rankings)} rankings need as many axes, got {len(axes)}")
    for ax, (title, ranking) in zip(axes, rankings.items(), strict=False):
        top = ranking.frame.head(k)
        labels = [f"{layer}.{module.split('.')[-1]}"
                  for layer, module in zip(top["layer"], top["module"], strict=True)]
        ax.bar(range(len(top)), top["range"], color=method_color("sparsegpt"))
        ax.set_yscale("log")
        ax.set_xticks(range(len(top)), labels, rotation=60, ha="right")
        ax.set_title(f"{title}: largest / {k}th = {ranking.ratio_top_to_kth:.1f}x")
    axes[0].set_ylabel("input range (max − min)")
    return axes


def range_heatmap(axes, frames: dict):
    """log10 input range of every Linear as a module x layer image, one panel per frame ({title:
    ActivationProfile.to_frame()}: columns module, layer, range), all on one colour scale with
    one colour bar. Returns axes."""
    if len(axes) < len(frames):
        raise ValueError(f"{len(frames)} frames need as many axes, got {len(axes)}")
    grids = {title: f.pivot(index="module", columns="layer", values="range")
             for title, f in frames.items()}
    lo, hi = (np.log10(min(g.min().min() for g in grids.values())),
              np.log10(max(g.max().max() for g in grids.values())))   # one colour scale for all
    for ax, (title, grid) in zip(axes, grids.items(), strict=False):
        image = ax.imshow(np.log10(grid.to_numpy()), aspect="auto", cmap="viridis",
                          vmin=lo, vmax=hi)
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_title(title)
        ax.grid(False)
    axes[0].figure.colorbar(image, ax=axes, label="log10 input range")
    axes[len(grids) - 1].set_xlabel("decoder layer")
    return axes


def massive_activations(ax: Axes, profile) -> Axes:
    """Each decoder block's output absmax at token 0 and at every other position (log scale):
    where the massive activations appear. profile: profiling.ActivationProfile. Returns ax."""
    ax.semilogy(profile.block_output_absmax_first_token, marker="o", ms=2, label="token 0",
                color=method_color("ours"))
    ax.semilogy(profile.block_output_absmax_rest, marker="o", ms=2, label="other tokens",
                color=method_color("sparsegpt"))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("output absmax")
    ax.legend()
    return ax


def sensitivity_scatter(ax: Axes, ranking, measured, agreement: dict) -> Axes:
    """Each Linear's input range (ranking: outliers.OutlierRanking) against its measured loss
    increase when quantized alone (measured: outliers.cached_layer_sensitivity's result; floored
    at 1e-5 for the log scale), titled with compare_rankings' agreement (spearman, overlap) at
    the ranking's k. Returns ax."""
    both = ranking.frame[["name", "range"]].merge(measured.frame[["name", "delta"]], on="name")
    if both.empty:
        raise ValueError("the ranking and the measurement share no layer name")
    ax.scatter(both["range"], both["delta"].clip(lower=1e-5), s=4, color=method_color("sparsegpt"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input range (heuristic)")
    ax.set_ylabel("loss increase when quantized alone")
    k = ranking.k
    ax.set_title(f"Spearman {agreement['spearman']:.2f}; top-{k} overlap {agreement['overlap']}/{k}")
    return ax
