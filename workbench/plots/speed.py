"""Speed against the bytes roofline (notebook 05): kernel speed-ups per matrix shape, decode
speed-ups of the packed runtime and its peers, and the random-weight shape models.

The ceilings are roofline.speedup_ceiling: batch-1 decoding streams every weight once per token,
so bytes per weight bound the speed-up over FP32's 4."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from workbench.plots.style import figure, method_color
from workbench.roofline import speedup_ceiling

SPARSITY_AXIS = np.linspace(0, 0.95, 96)     # where the ceiling curves are drawn

# the dense systems drawn as horizontal lines: system -> (line style, METHOD_COLORS key)
DECODE_LINES = {
    "ours-int8": ("--", "dense"), "hf-int8": ("-", "torch-int8"), "ours-fp32": ("-.", "dense"),
    "llamacpp-q8_0": ("--", "llama.cpp"), "llamacpp-q4_0": (":", "llama.cpp"),
    "llamabench-q8_0": ("--", "llama.cpp"), "llamabench-q4_0": (":", "llama.cpp"),
}


def _require(frame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{what} needs the columns {missing}; it has {list(frame.columns)}")
    if not len(frame):
        raise ValueError(f"{what} got an empty frame")


def kernel_roofline_figure(kernels):
    """One panel per matrix shape (out x in) from roofline.kernel_results' rows at one batch and
    thread count: the speed-up over torch FP32 of our sparse INT8 kernel against sparsity under
    its bytes ceiling 4 / (0.125 + density) (dotted), our dense INT8 kernel (dashed), torch's
    dynamic INT8 (grey) and the INT8 ceiling 4; y capped at 12x. Returns fig."""
    _require(kernels, ["out", "in", "sparsity", "x_vs_torch_fp32", "torch_fp32_ms",
                       "ours_dense_int8_ms", "torch_int8_ms"], "kernel_roofline_figure")
    shapes = list(dict.fromkeys(zip(kernels["out"], kernels["in"], strict=True)))
    fig, axes = figure(columns=2, height=2.4, ncols=len(shapes), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (out_f, in_f) in zip(axes, shapes, strict=True):
        part = kernels[(kernels["out"] == out_f) & (kernels["in"] == in_f)].sort_values("sparsity")
        ax.plot(SPARSITY_AXIS, [speedup_ceiling("sparse", s) for s in SPARSITY_AXIS], ":",
                color=method_color("ours"), lw=0.8, label="sparse ceiling 4/(0.125+d)")
        ax.axhline(speedup_ceiling("int8"), color=method_color("dense"), ls=":", lw=0.8,
                   label="INT8 ceiling 4")
        ax.plot(part["sparsity"], part["x_vs_torch_fp32"], marker="o", ms=3,
                color=method_color("ours"), label="ours, sparse INT8")
        ax.plot(part["sparsity"], part["torch_fp32_ms"] / part["ours_dense_int8_ms"], "--",
                color=method_color("dense"), label="ours, dense INT8")
        ax.plot(part["sparsity"], part["torch_fp32_ms"] / part["torch_int8_ms"], "-",
                color=method_color("torch-int8"), label="torch dynamic INT8")
        ax.set_title(f"{out_f}x{in_f}", fontsize=7)
        ax.set_xlabel("sparsity")
        ax.set_ylim(0, 12)            # the sparse ceiling runs on to 23x at 95%
        ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
    axes[0].set_ylabel("speed-up over torch FP32")
    fig.legend(*axes[-1].get_legend_handles_labels(), loc="outside upper center", ncol=5,
               fontsize=5)
    return fig


def decode_speedup_figure(speed):
    """One panel per thread count from roofline.decode_speedups' frame (its batch-1 rows): the
    decode speed-up over Hugging Face FP32 of the packed sparse model on the native engine
    against sparsity, under the bytes ceiling (dotted), the same model on the torch loop as
    crosses, and each dense system of DECODE_LINES present as a horizontal line. Returns fig."""
    _require(speed, ["system", "sparsity", "speedup"], "decode_speedup_figure")
    speed = speed[speed["batch"] == 1] if "batch" in speed else speed
    threads = sorted(speed["threads"].unique()) if "threads" in speed else [None]
    fig, axes = figure(columns=2 if len(threads) > 1 else 1, ncols=len(threads), sharey=True,
                       squeeze=False)
    for ax, t in zip(axes[0], threads, strict=True):
        part = speed[speed["threads"] == t] if t is not None else speed
        ax.plot(SPARSITY_AXIS, [speedup_ceiling("auto", s) for s in SPARSITY_AXIS], ":",
                color=method_color("ours"), lw=0.8, label="bytes ceiling")
        sparse = part[part["system"].str.startswith("ours-sparse-")].sort_values("sparsity")
        ax.plot(sparse["sparsity"], sparse["speedup"], marker="o", ms=3, color=method_color("ours"),
                label="ours, sparse INT8 (native engine)")
        torch_loop = part[part["system"].str.startswith("ours-torch-sparse-")]
        ax.plot(torch_loop["sparsity"], torch_loop["speedup"], marker="x", ms=4, ls="",
                color=method_color("ours"), label="ours, sparse INT8 (torch loop)")
        for system, (style, color) in DECODE_LINES.items():
            row = part[part["system"] == system]
            if len(row):
                ax.axhline(row["speedup"].iloc[0], ls=style, lw=0.8, label=system,
                           color=method_color(color))
        ax.set_title(f"{t} thread(s)" if t is not None else "")
        ax.set_xlabel("sparsity")
    axes[0][0].set_ylabel("decode tokens/s over HF FP32")
    axes[0][-1].legend(fontsize=5)
    return fig


def shape_speedup_figure(shapes):
    """One panel per shape model from roofline.shape_speedups' frame (model, threads, system,
    sparsity, speedup, fp32_source): the decode speed-up over FP32 of the packed sparse model
    against sparsity and of dense INT8 as a line, solid for 1 thread and dashed for 2; the
    title says where the FP32 time comes from (timed or fitted). Returns fig."""
    _require(shapes, ["model", "threads", "system", "sparsity", "speedup", "fp32_source"],
             "shape_speedup_figure")
    models = shapes.groupby("model", sort=False)
    fig, axes = figure(columns=2, ncols=models.ngroups, sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (model, part) in zip(axes, models, strict=True):
        for t, style in ((1, "-"), (2, "--")):
            sub = part[part["threads"] == t].sort_values("sparsity")
            sparse = sub[sub["system"].str.contains("-sparse-")]
            ax.plot(sparse["sparsity"], sparse["speedup"], style, marker="o", ms=3,
                    color=method_color("ours"), label=f"sparse INT8, {t} thread(s)")
            dense = sub[sub["system"] == "ours-int8"]
            if len(dense):
                ax.axhline(dense["speedup"].iloc[0], ls=style, lw=0.8, color=method_color("dense"),
                           label=f"dense INT8, {t} thread(s)")
        ax.set_title(f"{model} (random weights), FP32 {part['fp32_source'].iloc[0]}")
        ax.set_xlabel("sparsity")
    axes[0].set_ylabel("decode speed-up over FP32")
    axes[-1].legend(fontsize=5)
    return fig
