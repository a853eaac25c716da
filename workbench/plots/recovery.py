"""The recovery experiment (notebook 03, recovery.run_recovery): accuracy against sparsity with
Wilson intervals and the packed models' speed-up, and the dev curves of every training run."""

from __future__ import annotations

from workbench.plots.style import figure, method_color

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
