"""Figures and tables: what lands in results/, font embedding, byte reproducibility, escaping,
round trips, and that a failure leaves no partial file."""

import hashlib
import json
import math
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from workbench import cache, export, plots, tables  # noqa: E402

OKABE_ITO = {"#000000", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00",
             "#cc79a7"}
PROV = {"source": "test"}  # skips git and CPU probing where provenance is not under test


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _line_plot():
    fig, ax = plots.figure(columns=1)
    for method in ("dense", "sparsegpt", "wanda"):
        ax.plot([0.0, 0.5, 0.7], [10.0, 12.5, 20.0], marker="o", label=method,
                color=plots.method_color(method))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(r"perplexity $\downarrow$")
    ax.set_title("SmolLM2_135M & friends")
    ax.legend()
    return fig


# ---------------------------------------------------------------- style and colours

def test_style_is_colour_blind_safe_and_embeds_truetype():
    with plots.style_context():
        rc = matplotlib.rcParams
        colors = [to_hex(c["color"]) for c in rc["axes.prop_cycle"]]
        assert rc["pdf.fonttype"] == 42 and rc["ps.fonttype"] == 42
        assert rc["svg.fonttype"] == "none" and rc["svg.hashsalt"] == "workbench"
        assert rc["text.usetex"] is False
    assert colors == [c.lower() for c in plots.PALETTE]  # style file and module agree
    assert set(colors) == OKABE_ITO
    assert plots.STYLE_PATH.is_file() and plots.STYLE_PATH.parent.name == "styles"
    with matplotlib.rc_context():  # use_style() is global; keep it from leaking into other tests
        plots.use_style()
        assert to_hex(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0]) == "#0072b2"
        assert matplotlib.rcParams["pdf.fonttype"] == 42


def test_method_colors_are_stable_distinct_and_safe():
    assert len(set(plots.METHOD_COLORS.values())) == len(plots.METHOD_COLORS)
    # outside Okabe-Ito: grey (torch INT8) and Tol's wine (RIA), the palette being used up
    assert set(plots.METHOD_COLORS.values()) <= {c.upper() for c in OKABE_ITO} | {"#999999", "#882255"}
    for name in ("sparsegpt", "wanda", "magnitude", "dense", "squarehead", "ce", "torch-int8",
                 "llama.cpp", "ours"):
        assert name in plots.METHOD_COLORS
    assert plots.method_color("SparseGPT") == plots.METHOD_COLORS["sparsegpt"]
    assert plots.method_color("torch_int8") == plots.method_color("Torch INT8")
    assert plots.method_color("llama-cpp") == plots.METHOD_COLORS["llama.cpp"]
    unknown = plots.method_color("my-new-pruner")
    assert unknown == plots.method_color("My_New_Pruner") and unknown in plots.PALETTE[:6]


def test_figure_widths_match_paper_columns():
    fig1, _ = plots.figure(columns=1)
    fig2, axes = plots.figure(columns=2, height=2.0, ncols=2)
    assert fig1.get_size_inches()[0] == pytest.approx(3.3)
    assert tuple(fig2.get_size_inches()) == pytest.approx((6.9, 2.0))
    assert len(axes) == 2
    with pytest.raises(ValueError, match="columns"):
        plots.figure(columns=3)


def test_figure_keeps_interactive_mode_a_backend_turned_on(monkeypatch):
    """IPython's inline backend turns interactive mode on when the first figure loads it;
    leaving the style context must not turn it off, or no later figure shows inline."""
    subplots = plt.subplots

    def loading_backend(*args, **kwargs):
        matplotlib.interactive(True)
        return subplots(*args, **kwargs)

    with matplotlib.rc_context():
        matplotlib.interactive(False)
        monkeypatch.setattr(plt, "subplots", loading_backend)
        plots.figure(columns=1)
        assert matplotlib.is_interactive()
        monkeypatch.setattr(plt, "subplots", subplots)
        matplotlib.interactive(False)
        plots.figure(columns=1)
        assert not matplotlib.is_interactive()


# ---------------------------------------------------------------- save_figure

def test_save_figure_writes_pdf_svg_png_and_provenance(tmp_path):
    paths = plots.save_figure(_line_plot(), "ppl-vs-sparsity", results_dir=tmp_path,
                              config={"model": "tiny", "sparsities": (0.0, 0.5, 0.7)})
    assert set(paths) == {"pdf", "svg", "png", "json"}
    for ext, path in paths.items():
        assert path == tmp_path / "figures" / f"ppl-vs-sparsity.{ext}" and path.is_file()
    assert _all_files(tmp_path) == sorted(paths.values())  # no temp files left

    pdf = paths["pdf"].read_bytes()
    assert b"/FontFile2" in pdf  # embedded TrueType program (Type 42)
    assert b"/Type3" not in pdf
    assert b"/CreationDate" not in pdf

    png = paths["png"].read_bytes()
    width_px, height_px = struct.unpack(">II", png[16:24])  # IHDR
    assert width_px == round(3.3 * plots.PNG_DPI)

    sidecar = json.loads(paths["json"].read_text())
    assert sidecar["kind"] == "figure" and sidecar["name"] == "ppl-vs-sparsity"
    assert sidecar["config"] == {"model": "tiny", "sparsities": [0.0, 0.5, 0.7]}
    prov = sidecar["provenance"]
    assert {"git_commit", "libraries", "cpu", "workbench"} <= set(prov)
    assert sidecar["matplotlib"] == matplotlib.__version__
    for ext in ("pdf", "svg", "png"):
        assert sidecar["sha256"][ext] == hashlib.sha256(paths[ext].read_bytes()).hexdigest()


def test_same_figure_gives_identical_pdf_and_svg_bytes(tmp_path):
    first = plots.save_figure(_line_plot(), "a", results_dir=tmp_path, provenance=PROV)
    pdf_a, svg_a = first["pdf"].read_bytes(), first["svg"].read_bytes()
    second = plots.save_figure(_line_plot(), "b", results_dir=tmp_path, provenance=PROV)
    again = plots.save_figure(_line_plot(), "a", results_dir=tmp_path, provenance=PROV)
    assert second["pdf"].read_bytes() == pdf_a and again["pdf"].read_bytes() == pdf_a
    assert second["svg"].read_bytes() == svg_a and again["svg"].read_bytes() == svg_a


def test_save_figure_accepts_axes_and_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "env"))
    _, ax = plots.figure()
    paths = plots.save_figure(ax, "from-axes", provenance=PROV)
    assert paths["pdf"] == tmp_path / "env" / "figures" / "from-axes.pdf"
    monkeypatch.delenv("WORKBENCH_RESULTS")
    assert export.results_root() == Path(export.__file__).resolve().parent.parent / "results"


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "../up", "a\\b", ".hidden", " pad", None, 3])
def test_bad_names_raise_before_writing(tmp_path, bad):
    fig, _ = plots.figure()
    with pytest.raises(ValueError, match="name"):
        plots.save_figure(fig, bad, results_dir=tmp_path, provenance=PROV)
    with pytest.raises(ValueError, match="name"):
        tables.save_table(pd.DataFrame({"x": [1]}), bad, results_dir=tmp_path, provenance=PROV)
    assert _all_files(tmp_path) == []


def test_failing_savefig_leaves_old_files_and_no_temp(tmp_path, monkeypatch):
    fig = _line_plot()
    paths = plots.save_figure(fig, "fig", results_dir=tmp_path, provenance=PROV)
    before = {p: p.read_bytes() for p in _all_files(tmp_path)}

    calls = []

    def broken_savefig(fname, **kwargs):
        calls.append(kwargs.get("format"))
        if kwargs.get("format") == "svg":  # after the PDF rendered fine
            raise RuntimeError("disk on fire")
        return type(fig).savefig(fig, fname, **kwargs)

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    fig.axes[0].set_title("changed")
    with pytest.raises(RuntimeError, match="disk on fire"):
        plots.save_figure(fig, "fig", results_dir=tmp_path, provenance=PROV)
    assert calls == ["pdf", "svg"]
    assert {p: p.read_bytes() for p in _all_files(tmp_path)} == before  # untouched, no temps
    with pytest.raises(RuntimeError):
        plots.save_figure(fig, "new", results_dir=tmp_path, provenance=PROV)
    assert not (paths["pdf"].parent / "new.pdf").exists()


def test_unserializable_config_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        plots.save_figure(_line_plot(), "fig", results_dir=tmp_path, provenance=PROV,
                          config={"f": object()})
    assert _all_files(tmp_path) == []


# ---------------------------------------------------------------- save_table

def _frame():
    return pd.DataFrame({
        "method": ["sparsegpt", "wanda_v2", "a & b", "50% #1"],
        "sparsity": [0.5, 0.5, 0.7, 0.0],
        "ppl": [0.1 + 0.2, 12.3456789, 1e-05, float("nan")],
        "layers": [30, 30, 12, 0],
    })


def _body(tex: str) -> list[str]:
    lines = tex.splitlines()
    return lines[lines.index(r"\midrule") + 1: lines.index(r"\bottomrule")]


def test_latex_uses_booktabs_and_escapes_specials(tmp_path):
    df = _frame().rename(columns={"ppl": "ppl_%"})
    paths = tables.save_table(df, "t", results_dir=tmp_path, caption="Perplexity at 50% sparsity",
                              label="tab:ppl", float_format=".2f", provenance=PROV)
    tex = paths["tex"].read_text()
    assert [ln for ln in tex.splitlines() if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"\begin{tabular}{lrrr}" in tex
    assert r"\caption{Perplexity at 50\% sparsity}" in tex and r"\label{tab:ppl}" in tex
    assert r"method & sparsity & ppl\_\% & layers \\" in tex
    body = _body(tex)
    assert body[0] == r"sparsegpt & 0.50 & 0.30 & 30 \\"
    assert body[1].startswith(r"wanda\_v2 &") and body[2].startswith(r"a \& b &")
    assert body[3] == r"50\% \#1 & 0.00 & -- & 0 \\"
    # With every escape removed, no bare special character is left in the cells.
    for line in body:
        stripped = line.removesuffix(r" \\")
        for escaped in (r"\&", r"\%", r"\_", r"\#"):
            stripped = stripped.replace(escaped, "")
        assert not set("%_#$") & set(stripped) and stripped.count("&") == 3
    assert tables.latex_escape("a\\b{c}~^") == r"a\textbackslash{}b\{c\}\textasciitilde{}\textasciicircum{}"

    bare = tables.to_latex(df)
    assert r"\begin{table}" not in bare and bare.splitlines()[1].startswith(r"\begin{tabular}")


def test_csv_and_markdown_round_trip_the_values(tmp_path):
    df = _frame()
    paths = tables.save_table(df, "roundtrip", results_dir=tmp_path, provenance=PROV)
    assert set(paths) == {"tex", "md", "csv", "json"}
    assert _all_files(tmp_path) == sorted(paths.values())

    back = pd.read_csv(paths["csv"])
    pd.testing.assert_frame_equal(back, df)  # exact: floats at full precision

    lines = paths["md"].read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(df.columns)
    rule = [c.strip() for c in lines[1].strip("|").split("|")]
    assert [(c[0], c[-1]) for c in rule] == [(":", "-"), ("-", ":"), ("-", ":"), ("-", ":")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert len(rows) == len(df)
    for cells, (_, expected) in zip(rows, df.iterrows(), strict=True):
        assert cells[0] == expected["method"]
        assert float(cells[1]) == expected["sparsity"]
        if math.isnan(expected["ppl"]):
            assert cells[2] == ""
        else:
            assert float(cells[2]) == expected["ppl"]
        assert int(cells[3]) == expected["layers"]

    sidecar = json.loads(paths["json"].read_text())
    assert sidecar["kind"] == "table" and sidecar["columns"] == list(df.columns)
    assert sidecar["rows"] == 4 and sidecar["provenance"] == PROV


def test_float_format_shapes_views_not_the_csv(tmp_path):
    df = pd.DataFrame({"acc": [0.123456, 0.5]}, index=pd.Index(["a", "b"], name="method"))
    paths = tables.save_table(df, "fmt", results_dir=tmp_path, float_format="{:.1%}",
                              config={"grid": [1, 2]}, provenance=PROV)
    assert "12.3\\%" in paths["tex"].read_text()
    assert "| a        | 12.3% |" in paths["md"].read_text()
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == ["method", "acc"]  # the named index is written as a column
    assert back["acc"].tolist() == [0.123456, 0.5]
    assert json.loads(paths["json"].read_text())["config"] == {"grid": [1, 2]}
    unnamed = pd.DataFrame({"x": [1.0, 2.0, 3.0]}).iloc[[0, 2]]  # gapped, unnamed index
    assert tables.to_csv(unnamed) == "x\n1.0\n3.0\n"


def test_table_rejects_bad_label_and_non_frames(tmp_path):
    with pytest.raises(ValueError, match="label"):
        tables.save_table(_frame(), "t", results_dir=tmp_path, label="tab:{x}", provenance=PROV)
    with pytest.raises(TypeError):
        tables.save_table([[1, 2]], "t", results_dir=tmp_path, provenance=PROV)
    assert _all_files(tmp_path) == []


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("simulated crash at rename")

    monkeypatch.setattr(cache.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        tables.save_table(_frame(), "t", results_dir=tmp_path, provenance=PROV)
    assert _all_files(tmp_path) == []


def _variant_sweep():
    rows = [{"method": "dense", "layer_sparsity": "-", "refine": "-", "target": 0.0,
             "sparsity": 0.0, "ppl": 10.0}]
    for method in ("sparsegpt", "ria"):
        for (ls, rf), bump in zip((("uniform", "none"), ("owl", "none"), ("uniform", "dsnot"),
                                   ("owl", "dsnot")), (4.0, 3.0, 2.0, 1.0), strict=True):
            for target in (0.5, 0.7):
                rows.append({"method": method, "layer_sparsity": ls, "refine": rf,
                             "target": target, "sparsity": target, "ppl": 10 + bump * target * 10})
    return pd.DataFrame(rows)


def test_variant_curves_draw_a_line_per_variant_in_each_method_panel():
    from workbench.pruning import variant_label

    fig, axes = plt.subplots(1, 2)
    plots.variant_curves(list(axes), _variant_sweep(), "ppl")
    for ax, method in zip(axes, ("sparsegpt", "ria"), strict=True):
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["dense", "uniform", "OWL", "DSnoT", "OWL + DSnoT"]
        assert ax.get_title() == method and ax.get_yscale() == "log"
        assert {to_hex(line.get_color()) for line in ax.get_lines()[1:]} == {plots.method_color(method).lower()}
    assert variant_label("owl", "dsnot") == "OWL + DSnoT" and variant_label("uniform", "none") == "uniform"
    with pytest.raises(ValueError, match="2 methods need as many axes"):
        plots.variant_curves([axes[0]], _variant_sweep(), "ppl")
    plt.close(fig)


def test_published_numbers_sit_beside_the_matching_settings_only():
    from workbench.published import PUBLISHED_PPL, beside_published

    frame = _variant_sweep()
    frame.loc[frame.method == "ria", "method"] = "wanda"
    out = beside_published(frame)
    assert len(out) == len(frame) - 1                    # one row per point, dense dropped
    hit = out[(out.method == "wanda") & (out.layer_sparsity == "owl") & (out.refine == "none")
              & (out.target == 0.7)]
    assert float(hit.paper_ppl.iloc[0]) == 24.55 and hit.paper.iloc[0] == "OWL README"
    assert float(hit.paper_vs_dense.iloc[0]) == pytest.approx(24.55 / 5.68)
    assert float(hit.ppl_vs_dense.iloc[0]) == pytest.approx(float(hit.ppl.iloc[0]) / 10.0)
    assert out[out.refine == "dsnot"].paper_ppl.isna().all()   # no paper quoted for DSnoT
    # sparsegpt and wanda x uniform and OWL at 70% (OWL), sparsegpt and wanda at 50% (RIA)
    assert out.paper_ppl.notna().sum() == 4 + 2
    assert len(PUBLISHED_PPL) == 7


# ---------------------------------------------------------------- the notebooks' figures

def _ranking(seed: float, k: int = 4):
    """outliers.OutlierRanking's fields on 2 layers x 3 modules."""
    from types import SimpleNamespace

    rows = [{"name": f"model.layers.{layer}.{module}", "layer": layer, "module": module,
             "range": seed * (1 + 3 * layer + j) ** 2}
            for layer in range(2) for j, module in enumerate(("self_attn.q_proj", "mlp.up_proj",
                                                               "mlp.down_proj"))]
    frame = pd.DataFrame(rows).sort_values("range", ascending=False).reset_index(drop=True)
    return SimpleNamespace(frame=frame, k=k, ratio_top_to_kth=frame["range"][0] / frame["range"][k - 1])


def test_range_bars_draw_the_top_k_with_their_ratio():
    rankings = {"with first token": _ranking(10.0), "without": _ranking(1.0)}
    fig, axes = plt.subplots(1, 2)
    plots.range_bars(axes, rankings, k=4)
    for ax, (title, ranking) in zip(axes, rankings.items(), strict=True):
        top = ranking.frame.head(4)
        assert [b.get_height() for b in ax.patches] == pytest.approx(list(top["range"]))
        assert [t.get_text() for t in ax.get_xticklabels()] == \
            [f"{layer}.{m.split('.')[-1]}" for layer, m in zip(top["layer"], top["module"], strict=True)]
        assert ax.get_yscale() == "log"
        assert ax.get_title() == f"{title}: largest / 4th = {ranking.ratio_top_to_kth:.1f}x"
    assert axes[0].get_ylabel() == "input range (max − min)" and axes[1].get_ylabel() == ""
    with pytest.raises(ValueError, match="2 rankings need as many axes"):
        plots.range_bars([axes[0]], rankings, k=4)


def test_range_heatmap_shares_one_log_colour_scale():
    import numpy as np

    frames = {"a": _ranking(10.0).frame, "b": _ranking(0.5).frame}
    fig, axes = plt.subplots(2, 1)
    plots.range_heatmap(axes, frames)
    everything = np.log10(pd.concat(frames.values())["range"])
    for ax, frame in zip(axes, frames.values(), strict=True):
        grid = frame.pivot(index="module", columns="layer", values="range")
        image = ax.get_images()[0]
        assert np.allclose(image.get_array(), np.log10(grid.to_numpy()))
        assert image.get_clim() == pytest.approx((everything.min(), everything.max()))
        assert [t.get_text() for t in ax.get_yticklabels()] == list(grid.index)
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "log10 input range"   # one colour bar
    assert axes[1].get_xlabel() == "decoder layer"


def test_massive_activations_draw_token_zero_against_the_rest():
    from types import SimpleNamespace

    profile = SimpleNamespace(block_output_absmax_first_token=[1.0, 300.0, 250.0],
                              block_output_absmax_rest=[1.0, 2.0, 3.0])
    fig, ax = plt.subplots()
    plots.massive_activations(ax, profile)
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"token 0": [1.0, 300.0, 250.0], "other tokens": [1.0, 2.0, 3.0]}
    assert ax.get_yscale() == "log" and ax.get_legend() is not None


def test_sensitivity_scatter_pairs_layers_by_name():
    from types import SimpleNamespace

    import numpy as np

    ranking = _ranking(1.0, k=3)
    names = list(ranking.frame["name"])[::-1]                         # another order
    measured = SimpleNamespace(frame=pd.DataFrame({"name": names,
                                                   "delta": [-0.1, *np.linspace(0.01, 0.05, 5)]}))
    fig, ax = plt.subplots()
    plots.sensitivity_scatter(ax, ranking, measured, {"spearman": 0.4321, "overlap": 2})
    points = {tuple(p) for p in ax.collections[0].get_offsets()}
    delta = dict(zip(measured.frame["name"], measured.frame["delta"], strict=True))
    assert points == {(r, max(delta[n], 1e-5)) for n, r in zip(ranking.frame["name"],
                                                                 ranking.frame["range"], strict=True)}
    assert ax.get_title() == "Spearman 0.43; top-3 overlap 2/3"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="share no layer"):
        plots.sensitivity_scatter(ax, ranking, SimpleNamespace(frame=pd.DataFrame(
            {"name": ["x"], "delta": [1.0]})), {"spearman": 0.0, "overlap": 0})


def _w8a8():
    rows = []
    for sparsity in (0.0, 0.5):
        rows.append({"sparsity": sparsity, "smoothing": "fp32", "activations": "-",
                     "perplexity": 10 + 10 * sparsity})
        for i, smoothing in enumerate(("none", "smoothquant:0.8", "smoothquant:0.3", "lae")):
            for j, act in enumerate(("per_token", "per_tensor")):
                rows.append({"sparsity": sparsity, "smoothing": smoothing, "activations": act,
                             "perplexity": 11 + 10 * sparsity + i + 5 * j})
    return pd.DataFrame(rows)


def test_smoothing_curves_draw_the_alpha_sweep_beside_each_reference():
    w8a8 = _w8a8()
    fig, axes = plt.subplots(1, 2)
    plots.smoothing_curves(axes, w8a8)
    for ax, act in zip(axes, ("per_token", "per_tensor"), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for sparsity in (0.0, 0.5):
            at = w8a8[w8a8.sparsity == sparsity]
            sq = lines[f"SmoothQuant, {sparsity:.0%} sparse"]
            assert list(sq.get_xdata()) == [0.3, 0.8]                  # sorted by alpha
            expected = [at[(at.smoothing == f"smoothquant:{a}") & (at.activations == act)]
                        .perplexity.iloc[0] for a in ("0.3", "0.8")]
            assert list(sq.get_ydata()) == expected
            for smoothing, label in (("none", "no smoothing"), ("lae", "LAE")):
                value = at[(at.smoothing == smoothing) & (at.activations == act)].perplexity.iloc[0]
                assert list(lines[f"{label}, {sparsity:.0%}"].get_ydata()) == [value, value]
            assert lines[f"FP32, {sparsity:.0%}"].get_ydata()[0] == 10 + 10 * sparsity
        assert ax.get_title() == f"activations {act.replace('_', '-')}"
    assert axes[1].get_legend() is not None and axes[0].get_ylabel() == "perplexity (pydoc)"
    with pytest.raises(ValueError, match="no row for lae per_tensor at sparsity 0.0"):
        plots.smoothing_curves(axes, w8a8[~((w8a8.smoothing == "lae") & (w8a8.activations == "per_tensor"))])
    third = w8a8[w8a8.sparsity == 0.5].assign(sparsity=0.7)
    with pytest.raises(ValueError, match="at most 2 sparsities"):
        plots.smoothing_curves(axes, pd.concat([w8a8, third]))


def test_selective_curves_draw_each_order_against_k():
    w8a8 = _w8a8()
    selective = pd.DataFrame([{"label": label, "k": k, "perplexity": 30 - k - i}
                              for i, label in enumerate(("range heuristic", "measured"))
                              for k in (0, 1, 3)])
    fig, ax = plt.subplots()
    plots.selective_curves(ax, selective, w8a8)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["top-k by measured"].get_xdata()) == [0, 1, 3]
    assert list(lines["top-k by measured"].get_ydata()) == [29, 28, 26]
    assert lines["FP32"].get_ydata()[0] == 10.0
    assert lines["W8A8 per-token"].get_ydata()[0] == 11.0           # dense, no smoothing
    assert ax.get_xscale() == "symlog"
    with pytest.raises(ValueError, match="at most 2 orders"):
        plots.selective_curves(ax, pd.concat([selective, selective.assign(label="third")]), w8a8)


def _kernels():
    rows = []
    for out_f, in_f in ((576, 576), (1536, 576)):
        for s in (0.7, 0.5, 0.0):                                 # unsorted on purpose
            rows.append({"out": out_f, "in": in_f, "sparsity": s, "torch_fp32_ms": 1.0,
                         "x_vs_torch_fp32": 1 + 5 * s, "ours_dense_int8_ms": 0.4,
                         "torch_int8_ms": 0.5})
    return pd.DataFrame(rows)


def test_kernel_roofline_figure_has_a_panel_per_shape_under_its_ceilings():
    import numpy as np

    from workbench.roofline import speedup_ceiling

    fig = plots.kernel_roofline_figure(_kernels())
    assert [ax.get_title() for ax in fig.axes] == ["576x576", "1536x576"]
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        ceiling = lines["sparse ceiling 4/(0.125+d)"]
        assert np.allclose(ceiling.get_ydata(), [speedup_ceiling("sparse", s) for s in ceiling.get_xdata()])
        assert list(lines["INT8 ceiling 4"].get_ydata()) == [4.0, 4.0]
        assert list(lines["ours, sparse INT8"].get_xdata()) == [0.0, 0.5, 0.7]
        assert list(lines["ours, sparse INT8"].get_ydata()) == [1.0, 3.5, 4.5]
        assert list(lines["ours, dense INT8"].get_ydata()) == [2.5] * 3
        assert list(lines["torch dynamic INT8"].get_ydata()) == [2.0] * 3
        assert ax.get_ylim() == (0, 12)
    assert fig.axes[0].get_ylabel() == "speed-up over torch FP32" and len(fig.legends) == 1
    with pytest.raises(ValueError, match="torch_int8_ms"):
        plots.kernel_roofline_figure(_kernels().drop(columns="torch_int8_ms"))


def test_decode_speedup_figure_has_a_panel_per_thread_count_at_batch_one():
    rows = []
    for threads in (1, 2):
        for batch in (1, 4):
            for system, sparsity, speedup in (("ours-sparse-50", 0.5, 3.0), ("ours-sparse-70", 0.7, 4.0),
                                              ("ours-torch-sparse-50", 0.5, 1.5), ("ours-int8", 0.0, 2.0),
                                              ("hf-int8", 0.0, 1.2), ("llamabench-q8_0", 0.0, 2.5)):
                rows.append({"threads": threads, "batch": batch, "system": system,
                             "sparsity": sparsity, "speedup": speedup * threads * batch})
    fig = plots.decode_speedup_figure(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes] == ["1 thread(s)", "2 thread(s)"]
    for ax, threads in zip(fig.axes, (1, 2), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["ours, sparse INT8 (native engine)"].get_ydata()) == [3.0 * threads, 4.0 * threads]
        assert list(lines["ours, sparse INT8 (torch loop)"].get_ydata()) == [1.5 * threads]
        for system, value in (("ours-int8", 2.0), ("hf-int8", 1.2), ("llamabench-q8_0", 2.5)):
            assert lines[system].get_ydata()[0] == pytest.approx(value * threads)   # batch 4 left out
        assert "llamacpp-q4_0" not in lines                         # absent systems: no line
    assert fig.axes[0].get_ylabel() == "decode tokens/s over HF FP32"
    with pytest.raises(ValueError, match="speedup"):
        plots.decode_speedup_figure(pd.DataFrame(rows).drop(columns="speedup"))


def test_shape_speedup_figure_has_a_panel_per_model():
    rows = []
    for model, source in (("llama-2-7b", "fitted"), ("tinyllama-1.1b", "timed")):
        for threads in (1, 2):
            for system, sparsity, speedup in (("ours-sparse-70", 0.7, 5.0), ("ours-sparse-50", 0.5, 4.0),
                                              ("ours-int8", 0.0, 3.0)):
                rows.append({"model": model, "threads": threads, "system": system, "sparsity": sparsity,
                             "speedup": speedup + threads, "fp32_source": source})
    fig = plots.shape_speedup_figure(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes] == ["llama-2-7b (random weights), FP32 fitted",
                                                   "tinyllama-1.1b (random weights), FP32 timed"]
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["sparse INT8, 2 thread(s)"].get_xdata()) == [0.5, 0.7]
        assert list(lines["sparse INT8, 2 thread(s)"].get_ydata()) == [6.0, 7.0]
        assert lines["sparse INT8, 2 thread(s)"].get_linestyle() == "--"
        assert lines["dense INT8, 1 thread(s)"].get_ydata()[0] == 4.0
    with pytest.raises(ValueError, match="fp32_source"):
        plots.shape_speedup_figure(pd.DataFrame(rows).drop(columns="fp32_source"))
