"""The figure style, one colour per method, paper-column sizes, and byte-reproducible saving.

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

STYLE_PATH = Path(__file__).resolve().parent.parent / "styles" / "workbench.mplstyle"

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
        fig_ax = plt.subplots(figsize=size, **subplots_kw)
        interactive = mpl.is_interactive()
    # The first figure of a session loads the backend, and IPython's inline backend turns
    # interactive mode on as it loads; leaving the style's rc_context would turn it off again,
    # and a notebook would show no later figure inline.
    mpl.interactive(interactive)
    return fig_ax


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

