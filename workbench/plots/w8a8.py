"""W8A8 fake quantization (notebook 04): perplexity against the SmoothQuant α beside no smoothing,
LAE and FP32, and selective quantization with the top-k outlier layers kept in FP32."""

from __future__ import annotations

from matplotlib.axes import Axes

from workbench.plots.style import method_color

ACTIVATIONS = ("per_token", "per_tensor")


def _perplexity(rows, what: str) -> float:
    if not len(rows):
        raise ValueError(f"the W8A8 table has no row for {what}")
    return float(rows["perplexity"].iloc[0])


def smoothing_curves(axes, w8a8, activations=ACTIVATIONS):
    """One panel per activation granularity, from sweep.w8a8_table's frame (columns sparsity,
    smoothing, activations, perplexity): perplexity against α of its "smoothquant:α" rows, with
    the no-smoothing (dotted), LAE (dash-dot) and FP32 (faint dashed) values as lines; black
    for the first sparsity, SparseGPT blue for the second. Returns axes."""
    sparsities = list(dict.fromkeys(w8a8["sparsity"]))
    colors = (method_color("dense"), method_color("sparsegpt"))
    if len(sparsities) > len(colors):
        raise ValueError(f"at most {len(colors)} sparsities fit these panels, got {sparsities}")
    if len(axes) < len(activations):
        raise ValueError(f"{len(activations)} activation granularities need as many axes, "
                         f"got {len(axes)}")
    sq = w8a8[w8a8["smoothing"].str.startswith("smoothquant")].assign(
        alpha=lambda f: f["smoothing"].str.split(":").str[1].astype(float))
    for ax, act in zip(axes, activations, strict=False):
        for sparsity, color in zip(sparsities, colors, strict=False):
            at = w8a8[w8a8["sparsity"] == sparsity]
            part = sq[(sq["sparsity"] == sparsity) & (sq["activations"] == act)].sort_values("alpha")
            ax.plot(part["alpha"], part["perplexity"], marker="o", ms=3, color=color,
                    label=f"SmoothQuant, {sparsity:.0%} sparse")
            for smoothing, style in (("none", ":"), ("lae", "-.")):
                value = _perplexity(at[(at["smoothing"] == smoothing) & (at["activations"] == act)],
                                    f"{smoothing} {act} at sparsity {sparsity}")
                ax.axhline(value, color=color, ls=style, lw=0.8,
                           label=f"{'no smoothing' if smoothing == 'none' else 'LAE'}, {sparsity:.0%}")
            ax.axhline(_perplexity(at[at["smoothing"] == "fp32"], f"FP32 at sparsity {sparsity}"),
                       color=color, ls="--", lw=0.5, alpha=0.6, label=f"FP32, {sparsity:.0%}")
        ax.set_title(f"activations {act.replace('_', '-')}")
        ax.set_xlabel("SmoothQuant α")
    axes[0].set_ylabel("perplexity (pydoc)")
    axes[len(activations) - 1].legend(fontsize=5, ncol=2)
    return axes


def selective_curves(ax: Axes, selective, w8a8) -> Axes:
    """W8A8 per-tensor perplexity against k, the layers kept in FP32, one line per order
    (sweep.selective_w8a8_table's frames: label, k, perplexity; at most two), with the dense
    FP32 (dashed) and W8A8 per-token (dotted) values of w8a8 (sweep.w8a8_table's frame) as
    lines; k on a symlog scale, as k = 0 is the fully quantized model. Returns ax."""
    orders = selective.groupby("label", sort=False)
    colors = (method_color("sparsegpt"), method_color("ours"))
    if orders.ngroups > len(colors):
        raise ValueError(f"at most {len(colors)} orders fit this plot, got {orders.ngroups}")
    for (label, part), color in zip(orders, colors, strict=False):
        ax.plot(part["k"], part["perplexity"], marker="o", ms=3, color=color,
                label=f"top-k by {label}")
    dense = w8a8[w8a8["sparsity"] == 0]
    ax.axhline(_perplexity(dense[dense["smoothing"] == "fp32"], "dense FP32"),
               color=method_color("dense"), ls="--", lw=0.8, label="FP32")
    per_token = dense[(dense["smoothing"] == "none") & (dense["activations"] == "per_token")]
    ax.axhline(_perplexity(per_token, "dense W8A8 per-token without smoothing"),
               color=method_color("dense"), ls=":", lw=0.8, label="W8A8 per-token")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("layers kept in FP32 (k)")
    ax.set_ylabel("perplexity, W8A8 per-tensor")
    ax.legend()
    return ax
