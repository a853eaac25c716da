"""Every notebook executes headless in quick mode through workbench.notebook_run, as `make
notebooks` runs them (jupytext -> ipynb -> papermill), writing its figures and tables into a
scratch $WORKBENCH_RESULTS so the committed ones stay untouched; the executed notebook keeps
its outputs, figures inline as PNG, and none of the run's timings.

They run in `make test` (and alone in `make test-notebooks`; one with `-k 02_pruning`) and
share the result cache with `WORKBENCH_QUICK=1 make reproduce`: after it, each takes seconds;
on an empty cache the first run computes the quick points (a few minutes for all six). The
runner's own logic (where a run is written, what is stripped, which parameters a notebook
takes) is tested without running one.
"""

import json
import logging
from pathlib import Path

import pytest

from workbench import notebook_run

nbformat = pytest.importorskip("nbformat")

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

@pytest.mark.notebooks
def test_every_notebook_is_covered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.py")) == sorted(EXPECTED)


def run_notebook(name: str, tmp_path: Path, monkeypatch):
    """(executed notebook as written to disk, results dir)."""
    pytest.importorskip("jupytext")
    pytest.importorskip("papermill")
    results = tmp_path / "results"
    monkeypatch.setenv("WORKBENCH_RESULTS", str(results))
    monkeypatch.setenv("WORKBENCH_QUICK", "1")
    for key, value in notebook_run.KERNEL_ENV.items():
        monkeypatch.setenv(key, value)
    output = notebook_run.output_path(name, quick=True, build_dir=tmp_path / "build")
    assert output == tmp_path / "build" / f"{name}.ipynb"
    notebook_run.execute(name, output, {"QUICK": True}, raw=tmp_path / f"{name}.out.ipynb")
    assert not (results / "notebooks").exists()          # a quick run never writes there
    return nbformat.read(output, as_version=4), results


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.slow
@pytest.mark.notebooks
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
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    inline = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(inline) >= len(figures)                   # every saved figure is shown too
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert set(nb.metadata["papermill"]) <= set(notebook_run.PAPERMILL_KEPT)
    assert [c.id for c in nb.cells] == [f"cell-{i:03d}" for i in range(len(nb.cells))]
    assert not [o for o in outputs if notebook_run.TQDM_METER.search(
        str(o.get("data", {}).get("text/plain", "")))]
    if name == "06_explorer":
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


# ---------------------------------------------------------------- the runner, without a run

def _widget(model_id: str, text: str):
    return nbformat.v4.new_output("display_data", {
        "application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2,
                                                     "version_minor": 0},
        "text/plain": text})


def _executed(tmp_path: Path):
    """A notebook as papermill leaves it: per-cell timings, run paths, random ids, a tqdm bar
    (widget model aa, its children bb and cc) beside a widget of the notebook's own (dd, ee)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("QUICK = False\nMODEL = 'x'  # a comment",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("QUICK = True", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("1 + 1", outputs=[
                    _widget("aa", "quantize:  40%|####      | 84/210 [00:01<00:02, 60.1it/s]"),
                    nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]),
                nbformat.v4.new_code_cell("explorer", outputs=[_widget("dd", "SparsityExplorer")])]
    model = {"model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0"}
    state = {"aa": {**model, "model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_bb", "IPY_MODEL_cc"]}},
             "bb": {**model, "model_name": "HTMLModel", "state": {"value": "quantize"}},
             "cc": {**model, "model_name": "FloatProgressModel", "state": {"value": 84}},
             "dd": {**model, "model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_ee"]}},
             "ee": {**model, "model_name": "HTMLModel", "state": {"value": "<table>"}}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": state, "version_major": 2, "version_minor": 0}}
    for i, cell in enumerate(nb.cells):
        cell.metadata["papermill"] = {"start_time": f"2026-01-01T00:00:0{i}", "duration": 0.1 * i,
                                      "status": "completed", "exception": False}
        cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    nb.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 3.2,
                                "input_path": str(tmp_path / "in.ipynb"),
                                "output_path": str(tmp_path / "out.ipynb"), "exception": None,
                                "environment_variables": {}, "parameters": {"QUICK": True},
                                "default_parameters": {}, "version": "2.7.0"}
    return nb


def test_stripping_leaves_outputs_tags_and_parameters_only(tmp_path):
    nb = notebook_run.strip_run_metadata(_executed(tmp_path))
    assert [c.metadata for c in nb.cells] == [{"tags": ["parameters"]},
                                              {"tags": ["injected-parameters"]}, {}, {}]
    assert nb.metadata["papermill"] == {"parameters": {"QUICK": True}, "default_parameters": {},
                                        "version": "2.7.0"}
    assert str(tmp_path) not in json.dumps(nb)
    assert [o["data"] for o in nb.cells[2].outputs] == [{"text/plain": "2"}]    # the bar is gone
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == "SparsityExplorer"   # not a bar: kept
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert set(state) == {"dd", "ee"}                   # the bar's models go, the explorer's stay
    assert [c.id for c in nb.cells] == ["cell-000", "cell-001", "cell-002", "cell-003"]
    nbformat.validate(nb)
    again = notebook_run.strip_run_metadata(_executed(tmp_path / "elsewhere"))
    assert nbformat.writes(again) == nbformat.writes(nb)   # two runs, the same file
    only_bars = _executed(tmp_path)
    only_bars.cells = only_bars.cells[:3]
    assert "widgets" not in notebook_run.strip_run_metadata(only_bars).metadata


def test_a_full_run_goes_to_results_a_quick_one_to_build(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_RESULTS", raising=False)
    repo = Path(notebook_run.__file__).resolve().parent.parent
    assert notebook_run.output_path("02_pruning_sweep", quick=False) == \
        repo / "results" / "notebooks" / "02_pruning_sweep.ipynb"
    assert notebook_run.output_path("02_pruning_sweep", quick=True) == \
        repo / "build" / "notebooks" / "02_pruning_sweep.ipynb"
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "r"))
    assert notebook_run.output_path("01_x", quick=False) == tmp_path / "r" / "notebooks" / "01_x.ipynb"
    assert notebook_run.output_path("01_x", quick=True, build_dir=tmp_path / "b") == tmp_path / "b" / "01_x.ipynb"


def test_parameters_are_the_ones_the_parameters_cell_declares(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    assert notebook_run.declared_parameters(_executed(tmp_path)) == {"QUICK", "MODEL"}
    nb03 = jupytext.read(NOTEBOOKS / "03_sparse_finetuning.py")
    assert {"QUICK", "MODEL", "RECOVERY_SIZE", "DISTILL_ARGS"} <= notebook_run.declared_parameters(nb03)
    with pytest.raises(ValueError, match="declares no parameter RECOVERY_SIZE"):
        notebook_run.execute("05_tokens_per_sec", tmp_path / "o.ipynb", {"RECOVERY_SIZE": "full"})
    with pytest.raises(FileNotFoundError, match="no notebook"):
        notebook_run.execute("99_missing", tmp_path / "o.ipynb")
    untagged = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("QUICK = True")])
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters', found 0"):
        notebook_run.declared_parameters(untagged)
    assert not (tmp_path / "o.ipynb").exists()


def test_cli_refuses_a_parameter_no_notebook_takes_before_running_any(capsys):
    pytest.importorskip("jupytext")
    with pytest.raises(SystemExit):
        notebook_run.main(["01_activation_ranges", "05_tokens_per_sec", "-p", "RECOVERY_SIZE", "full"])
    assert "declares RECOVERY_SIZE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        notebook_run.main(["05_tokens_per_sec", "-p", "QUICK", "True"])
    assert "QUICK is set by --quick" in capsys.readouterr().err


def test_papermills_parameter_warnings_are_dropped_only_while_running(tmp_path, caplog):
    # papermill reads only literal assignments, so every notebook's `QUICK = os.environ...`
    # made it warn "Unable to parse line" on each run although execute checks the parameters
    papermill = pytest.importorskip("papermill")
    cell = nbformat.v4.new_code_cell('import os\nQUICK = os.environ.get("WORKBENCH_QUICK") == "1"',
                                     metadata={"tags": ["parameters"]})
    path = tmp_path / "p.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata={
        "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}), path)
    with caplog.at_level("WARNING", logger="papermill"):
        papermill.inspect_notebook(str(path))
        assert "Unable to parse line" in caplog.text
        caplog.clear()
        with notebook_run._quiet_parameter_inference():
            papermill.inspect_notebook(str(path))
            logging.getLogger("papermill").warning("Input notebook does not contain a cell")
        assert "Unable to parse" not in caplog.text and "does not contain a cell" in caplog.text
