"""Every notebook executes headless in quick mode (jupytext -> ipynb -> papermill), writing its
figures and tables into a scratch $WORKBENCH_RESULTS so the committed ones stay untouched.

They run in `make test` (and alone in `make test-notebooks`) and share the result cache with
`WORKBENCH_QUICK=1 make reproduce`: after it, each takes seconds; on an empty cache the first
run computes the quick points (a few minutes for all six).
"""

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# notebook -> the figures and tables it must write
EXPECTED = {
    "01_activation_ranges": (["activation_ranges_top10", "activation_ranges_heatmap",
                              "outlier_sensitivity"], ["outlier_rankings"]),
    "02_pruning_sweep": (["sparsity_vs_accuracy", "sparsity_variants"],
                         ["sparsity_sweep", "sparsity_variants"]),
    "03_sparse_finetuning": (["recovery_vs_sparsity", "recovery_training_curves"], ["recovery"]),
    "04_smoothing_int8": (["w8a8_smoothing", "selective_quantization"],
                          ["w8a8_smoothing", "selective_quantization"]),
    "05_tokens_per_sec": (["kernel_roofline"], []),
    "06_explorer": ([], []),
}

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]   # make test-notebooks


def test_every_notebook_is_covered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.py")) == sorted(EXPECTED)


def run_notebook(name: str, tmp_path: Path, monkeypatch):
    """(executed notebook, results dir)."""
    jupytext = pytest.importorskip("jupytext")
    papermill = pytest.importorskip("papermill")
    import nbformat

    results = tmp_path / "results"
    monkeypatch.setenv("WORKBENCH_RESULTS", str(results))
    monkeypatch.setenv("WORKBENCH_QUICK", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    source = tmp_path / f"{name}.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS / f"{name}.py"), source)
    executed = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(source), str(executed), parameters={"QUICK": True},
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               log_output=False)
    return nbformat.read(executed, as_version=4), results


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch):
    nb, results = run_notebook(name, tmp_path, monkeypatch)
    figures, tables = EXPECTED[name]
    for figure in figures:
        for ext in ("pdf", "svg", "png", "json"):
            assert (results / "figures" / f"{figure}.{ext}").is_file(), (figure, ext)
    for table in tables:
        for ext in ("tex", "md", "csv", "json"):
            assert (results / "tables" / f"{table}.{ext}").is_file(), (table, ext)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "WORKBENCH_QUICK" in parameters[0].source
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "QUICK = True" in injected[0].source
    if name == "06_explorer":
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
