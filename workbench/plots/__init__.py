"""Paper figures: one style, one colour per method, reproducible PDF/SVG/PNG with provenance.

    from workbench import plots
    plots.use_style()                                  # once, at the top of a notebook
    fig, ax = plots.figure(columns=1)
    for method, part in frame.groupby("method"):
        ax.plot(part.sparsity, part.perplexity, color=plots.method_color(method), label=method)
    plots.save_figure(fig, "ppl-vs-sparsity", config={"model": "smollm2-135m"})

`style` holds the style, the colours, `figure` and `save_figure`; the other modules hold each
notebook's figures, so a notebook cell reads `plots.sparsity_curves(ax, sweep, "ppl")`: an
axes-level function where the notebook fixes the panels, a `*_figure(frame)` where the data
decides how many there are. Everything is importable from `workbench.plots` itself.
"""

from workbench.plots.activations import (
    massive_activations,
    range_bars,
    range_heatmap,
    sensitivity_scatter,
)
from workbench.plots.recovery import RECOVERY_STYLE, dev_curves_figure, recovery_figure
from workbench.plots.speed import (
    DECODE_LINES,
    SPARSITY_AXIS,
    decode_speedup_figure,
    kernel_roofline_figure,
    shape_speedup_figure,
)
from workbench.plots.style import (
    COLUMN_WIDTH,
    METHOD_COLORS,
    PALETTE,
    PNG_DPI,
    STYLE_PATH,
    figure,
    method_color,
    save_figure,
    style_context,
    use_style,
)
from workbench.plots.sweeps import VARIANT_STYLE, sparsity_curves, variant_curves
from workbench.plots.w8a8 import selective_curves, smoothing_curves

__all__ = [
    "COLUMN_WIDTH", "DECODE_LINES", "METHOD_COLORS", "PALETTE", "PNG_DPI", "RECOVERY_STYLE",
    "SPARSITY_AXIS", "STYLE_PATH", "VARIANT_STYLE", "decode_speedup_figure", "dev_curves_figure",
    "figure", "kernel_roofline_figure", "massive_activations", "method_color", "range_bars",
    "range_heatmap", "recovery_figure", "save_figure", "selective_curves", "sensitivity_scatter",
    "shape_speedup_figure", "smoothing_curves", "sparsity_curves", "style_context", "use_style",
    "variant_curves",
]
