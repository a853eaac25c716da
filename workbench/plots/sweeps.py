"""Sparsity sweeps (notebooks 02 and 06): a metric against sparsity per method, and the OWL /
RIA / DSnoT variants one panel per method."""

from __future__ import annotations

from matplotlib.axes import Axes

from workbench.plots.style import method_color


def sparsity_curves(ax: Axes, frame, metric: str, ylabel: str | None = None,
                    highlight: tuple[str, float] | None = None, logy: bool = False) -> Axes:
    """metric against sparsity from a sweep frame (columns method, structure, sparsity, metric:
    sweep.prune_sweep's): a line per method over its unstructured points, N:M points as open
    markers labelled with their pattern, the dense value as a dashed black line. highlight:
    (method, sparsity) ringed, for the explorer. Returns ax."""
    dense = frame[frame["method"] == "dense"]
    if len(dense):
        ax.axhline(float(dense[metric].iloc[0]), color=method_color("dense"), ls="--", lw=0.8,
                   label="dense")
    for method, part in frame[frame["method"] != "dense"].groupby("method", sort=False):
        color = method_color(method)
        line = part[part["structure"] == "unstructured"].sort_values("sparsity")
        ax.plot(line["sparsity"], line[metric], marker="o", ms=3, color=color, label=method)
        for _, row in part[part["structure"] != "unstructured"].iterrows():
            ax.plot(row["sparsity"], row[metric], marker="s", ms=4, mfc="none", color=color, ls="")
            ax.annotate(row["structure"], (row["sparsity"], row[metric]), fontsize=5,
                        xytext=(3, 2), textcoords="offset points", color=color)
    if highlight is not None:
        method, sparsity = highlight
        hit = frame[(frame["method"] == method) & ((frame["sparsity"] - sparsity).abs() < 0.02)]
        if len(hit):
            ax.plot(hit["sparsity"], hit[metric], marker="o", ms=10, mfc="none", mew=1.5,
                    color=method_color("ours"), ls="", zorder=5)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel(ylabel or metric)
    return ax


VARIANT_STYLE = {   # (layer sparsity, refinement) variant -> line style, marker
    "uniform": ("-", "o"),
    "OWL": ("--", "s"),
    "DSnoT": (":", "^"),
    "OWL + DSnoT": ("-.", "D"),
}


def variant_curves(axes, frame, metric: str = "ppl", ylabel: str | None = None,
                   logy: bool = True):
    """One panel per method of a variant sweep (sweep.variant_grid's rows: method,
    layer_sparsity, refine, sparsity, metric): a line per variant (uniform, OWL, DSnoT,
    OWL + DSnoT) in the method's colour, told apart by line style and marker; the dense value
    dashed black in every panel. axes: one Axes per method, in frame order. Returns axes."""
    from workbench.pruning import variant_label

    dense = frame[frame["method"] == "dense"]
    methods = list(dict.fromkeys(frame.loc[frame["method"] != "dense", "method"]))
    if len(axes) < len(methods):
        raise ValueError(f"{len(methods)} methods need as many axes, got {len(axes)}")
    for ax, method in zip(axes, methods, strict=False):   # spare axes stay empty
        part = frame[frame["method"] == method].copy()
        part["variant"] = [variant_label(a, b) for a, b in
                           zip(part["layer_sparsity"], part["refine"], strict=True)]
        if len(dense):
            ax.axhline(float(dense[metric].iloc[0]), color=method_color("dense"), ls="--", lw=0.8,
                       label="dense")
        for variant, (ls, marker) in VARIANT_STYLE.items():
            line = part[part["variant"] == variant].sort_values("sparsity")
            if len(line):
                ax.plot(line["sparsity"], line[metric], ls=ls, marker=marker, ms=3,
                        color=method_color(method), label=variant)
        if logy:
            ax.set_yscale("log")
        ax.set_title(method, fontsize="small")
        ax.set_xlabel("sparsity")
    axes[0].set_ylabel(ylabel or metric)
    return axes
