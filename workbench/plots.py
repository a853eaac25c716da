"""Paper figures: one style, one colour per method, reproducible PDF/SVG/PNG with provenance.

    from workbench import plots
    plots.use_style()                                  # once, at the top of a notebook
    fig, ax = plots.figure(columns=1)
    for method, part in frame.groupby("method"):
        ax.plot(part.sparsity, part.perplexity, color=plots.method_color(method), label=method)
    plots.save_figure(fig, "ppl-vs-sparsity", config={"model": "smollm2-135m"})

The style (styles/workbench.mplstyle) embeds fonts as TrueType (Type 42), never Type 3, keeps
LaTeX off, and cycles through the Okabe-Ito colour-blind-safe palette (Okabe & Ito, "Color
Universal Design", 2008). `save_figure` writes the same bytes for the same figure on every run:
no creation dates in PDF/SVG and a fixed SVG hash salt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.export import check_name, results_root, write_result_set

STYLE_PATH = Path(__file__).resolve().parent / "styles" / "workbench.mplstyle"

# Okabe-Ito hex codes, in the style file's prop_cycle order (a test keeps the two in step).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")

# One colour per method in every figure. Black is the dense baseline everything is measured
# against; vermillion, the most salient, is ours. No two methods share a colour; grey, the one
# colour outside Okabe-Ito, marks the off-the-shelf torch INT8 baseline.
METHOD_COLORS = {
    "dense": "#000000",
    "ours": "#D55E00",
    "sparsegpt": "#0072B2",
    "wanda": "#E69F00",
    "magnitude": "#56B4E9",
    "ria": "#882255",          # outside Okabe-Ito (Tol's wine): the palette has no colour left
    "squarehead": "#009E73",
    "ce": "#CC79A7",
    "torch-int8": "#999999",
    "llama.cpp": "#F0E442",
}
_ALIASES = {"fp32": "dense", "llama-cpp": "llama.cpp", "llamacpp": "llama.cpp"}

# Column widths in inches: ~3.3 in for one column and ~6.9 in for the full text width of the
# common two-column templates (ICML 3.25/6.75, IEEE 3.5/7.16, ACL 3.03/6.3).
COLUMN_WIDTH = {1: 3.3, 2: 6.9}
_DEFAULT_HEIGHT = {1: 2.1, 2: 2.6}

# Enforced at save time whatever the caller's rcParams: the embedding and reproducibility
# promises of save_figure must not depend on whether use_style() was called.
_SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
            "svg.hashsalt": "workbench"}
PNG_DPI = 200


def use_style() -> None:
    """Apply the workbench style to all later figures (matplotlib's global rcParams)."""
    matplotlib.style.use(STYLE_PATH)


def style_context():
    """`with plots.style_context(): ...` applies the style inside the block only."""
    return matplotlib.style.context(STYLE_PATH)


def method_color(method: str) -> str:
    """The colour of a method, the same in every figure. Case, '_' and spaces do not matter.

    A name not in METHOD_COLORS gets a palette colour chosen by a hash of the name: stable
    across runs and figures, but it may coincide with a known method's colour.
    """
    key = "-".join(method.strip().lower().replace("_", " ").split())
    key = _ALIASES.get(key, key)
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    # hashlib, not hash(): str hashes are salted per process.
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return PALETTE[digest[0] % (len(PALETTE) - 2)]  # neither black (dense) nor faint yellow


def figure(columns: int = 1, height: float | None = None, **subplots_kw: Any):
    """(fig, ax) in the workbench style, as wide as one (3.3 in) or two (6.9 in) paper columns.

    Extra keywords go to plt.subplots (nrows, ncols, sharey, ...); ax is then an array.
    Fonts of legends and tick labels follow the rcParams in force when they are drawn, so call
    use_style() first, or work inside style_context().
    """
    if columns not in COLUMN_WIDTH:
        raise ValueError(f"columns must be 1 or 2, got {columns!r}")
    if height is not None and not height > 0:
        raise ValueError(f"height must be positive inches, got {height!r}")
    size = (COLUMN_WIDTH[columns], height if height is not None else _DEFAULT_HEIGHT[columns])
    with style_context():
        return plt.subplots(figsize=size, **subplots_kw)


def _render(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"format": fmt}
    if fmt == "pdf":
        kwargs["metadata"] = {"CreationDate": None}  # no timestamp: same figure, same bytes
    elif fmt == "svg":
        kwargs["metadata"] = {"Date": None}
    elif fmt == "png":
        kwargs["dpi"] = PNG_DPI
    fig.savefig(buf, **kwargs)
    return buf.getvalue()


def save_figure(
    fig: Figure | Axes,
    name: str,
    results_dir: str | Path | None = None,
    provenance: dict | None = None,
    config: Any = None,
) -> dict[str, Path]:
    """Write results/figures/{name}.pdf, .svg, .png (200 dpi) and the sidecar {name}.json.

    results_dir defaults to $WORKBENCH_RESULTS, else the repository's results/. The sidecar
    holds config (any JSON-able object or dataclass: model, sweep grid, ...), provenance
    (default cache.provenance(): git commit, library versions, CPU), the matplotlib version and
    each file's sha256. All three formats are rendered in memory first, so a failing savefig
    writes nothing. Returns {"pdf", "svg", "png", "json"} -> path. The figure stays open.
    """
    name = check_name(name)
    if isinstance(fig, Axes):
        fig = fig.figure
    directory = results_root(results_dir) / "figures"
    with mpl.rc_context(_SAVE_RC):
        files = {fmt: _render(fig, fmt) for fmt in ("pdf", "svg", "png")}
    width, height = fig.get_size_inches()
    meta = {
        "kind": "figure",
        "size_inches": [float(width), float(height)],
        "png_dpi": PNG_DPI,
        "matplotlib": importlib.metadata.version("matplotlib"),
        "config": config,
    }
    return write_result_set(directory, name, files, meta, provenance)


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


# ---------------------------------------------------------------- the recovery experiment

RECOVERY_STYLE = {   # label, colour, marker, offset along x (bars side by side)
    "sparsegpt": ("one-shot SparseGPT", "sparsegpt", "o", -0.012),
    "CE": ("CE", "ce", "s", -0.004),
    "SquareHead+CE": ("SquareHead + CE", "squarehead", "D", 0.004),
    "packed": ("SquareHead + CE, W8A8 packed", "ours", "^", 0.012),
}


def recovery_figure(table, packed_method: str = "SquareHead+CE"):
    """The paper's figure from run_recovery's table: (a) test accuracy against sparsity for
    the dense teacher (line and band: its interval), one-shot SparseGPT, CE, SquareHead + CE
    and SquareHead + CE as the packed W8A8 model, each point the pooled accuracy over seeds
    with its 95% Wilson interval as an error bar; (b) the decode speed-up of the same packed
    models over the dense FP32 model (batch 1, same run), one marker per seed. Returns fig."""
    from workbench.stats import pooled_accuracy

    fig, (ax, ax_speed) = figure(columns=2, ncols=2, gridspec_kw={"width_ratios": [3, 2]})
    teacher = table[table["stage"] == "teacher"]
    if len(teacher):
        acc, lo, hi = pooled_accuracy(teacher, "acc")
        ax.axhline(acc, color=method_color("dense"), ls="--", lw=0.8, label="dense teacher (SFT)")
        ax.axhspan(lo, hi, color=method_color("dense"), alpha=0.08, lw=0)
    pruned = table[table["stage"].isin(["one-shot", "student"])]
    series = [(m, pruned[pruned["method"] == m], "acc") for m in ("sparsegpt", "CE", "SquareHead+CE")]
    if "packed_acc" in pruned:
        series.append(("packed", pruned[(pruned["method"] == packed_method)
                                        & pruned["packed_acc"].notna()], "packed_acc"))
    for key, part, column in series:
        if not len(part):
            continue
        label, color, marker, dx = RECOVERY_STYLE[key]
        points = [(t, *pooled_accuracy(g, column)) for t, g in part.groupby("target")]
        xs = [p[0] + dx for p in points]
        ys = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(xs, ys, yerr=err, color=method_color(color), marker=marker, ms=3, lw=1,
                    capsize=2, label=label)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("arith test accuracy")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6)
    if "speedup" in table:
        for stage, part in table[table["speedup"].notna()].groupby("stage", sort=False):
            color = method_color("dense" if stage in ("base", "teacher") else "ours")
            ax_speed.plot(part["target"], part["speedup"], marker="^", ms=3, ls="", color=color,
                          label="dense W8A8" if stage in ("base", "teacher") else "sparse W8A8")
        ax_speed.axhline(1.0, color=method_color("dense"), ls=":", lw=0.8)
        ax_speed.set_xlabel("sparsity")
        ax_speed.set_ylabel("decode speed-up over FP32")
        ax_speed.legend(fontsize=6)
    return fig


def dev_curves_figure(dev):
    """Dev accuracy against training step (run_recovery's `dev` frame): the teacher's SFT, then
    per sparsity CE and SquareHead + CE, seed 0 only when there are several; a marker at each
    run's best step, the checkpoint it keeps. Returns fig."""
    dev = dev[dev["seed"] == dev["seed"].min()] if len(dev) else dev
    students = dev[dev["stage"] == "student"]
    sparsities = sorted(students["sparsity"].unique())
    fig, axes = figure(columns=2, ncols=1 + len(sparsities), sharey=True)
    axes = list(axes) if len(sparsities) else [axes]
    runs = [(axes[0], dev[dev["stage"] == "teacher"], "teacher SFT")]
    runs += [(ax, students[students["sparsity"] == s], f"{s:.0%} sparse")
             for ax, s in zip(axes[1:], sparsities, strict=True)]
    for ax, part, title in runs:
        for method, run in part.groupby("method", sort=False):
            color = method_color({"SFT": "dense", "CE": "ce", "SquareHead+CE": "squarehead"}
                                 .get(method, method))
            run = run.sort_values("step")
            ax.plot(run["step"], run["score"], color=color, lw=1,
                    label=RECOVERY_STYLE.get(method, (method,))[0])
            best = run.loc[run["score"].idxmax()]
            ax.plot([best["step"]], [best["score"]], marker="*", ms=5, color=color, ls="")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].set_ylabel("dev accuracy")
    axes[-1].legend(fontsize=6)
    return fig
