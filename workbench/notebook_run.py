"""Run the notebooks headless and keep what a reader needs: `make notebooks` and
tests/test_notebooks.py both run notebooks/*.py through `execute`.

    python -m workbench.notebook_run 02_pruning_sweep 04_smoothing_int8 [--quick] [-p NAME VALUE]

jupytext turns the percent-format .py into a notebook, papermill runs it in notebooks/ with
QUICK (and any -p parameter the notebook's `parameters` cell declares) injected, and the
executed notebook is written with its outputs, figures inline as PNG. A full run goes to
results/notebooks/NAME.ipynb (or $WORKBENCH_RESULTS/notebooks), where it is committed; a quick
run (--quick or WORKBENCH_QUICK=1) to build/notebooks/, so it never replaces the committed one.
What changes on every run and says nothing about the results is left out: papermill's per-cell
timings and paths, nbclient's execution timestamps, the random cell ids and tqdm's progress bars.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from workbench.cache import write_text_atomic
from workbench.export import results_root

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
BUILD = REPO / "build" / "notebooks"
# the kernel's environment: figures as inline PNG outputs, and no text tqdm bars
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": "1"}
# notebook-level papermill metadata that stays: what the run was given
PAPERMILL_KEPT = ("default_parameters", "parameters", "version")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# tqdm's meter, the text of its notebook widget: "desc:  40%|####      | 4/10 [00:01<00:02, 3.1it/s]"
TQDM_METER = re.compile(r"\d+%\|.*\|\s*\S+/\S+\s*\[.*\]\s*$")


def _is_progress_bar(output) -> bool:
    """A tqdm.auto bar of a kernel: a widget view whose text is tqdm's meter. tqdm.notebook
    ignores TQDM_DISABLE, and without its widget state a saved bar renders as nothing."""
    data = output.get("data", {})
    return WIDGET_VIEW in data and bool(TQDM_METER.search(str(data.get("text/plain", ""))))


class _PapermillParameterNoise(logging.Filter):
    """Drops papermill's parameter-inference warnings: it parses literal assignments only, so
    `QUICK = os.environ.get(...)` reads to it as unparsable and QUICK as unknown, while
    execute has already checked every parameter against the cell (declared_parameters)."""

    NOISE = ("Unable to parse line", "Passed unknown parameter")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


@contextlib.contextmanager
def _quiet_parameter_inference():
    loggers = [logging.getLogger("papermill"), logging.getLogger("papermill.translators")]
    noise = _PapermillParameterNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def output_path(name: str, quick: bool, results_dir: str | Path | None = None,
                build_dir: str | Path = BUILD) -> Path:
    """Where the executed notebook goes: results/notebooks/NAME.ipynb for a full run (results/
    as export.results_root resolves it), build_dir/NAME.ipynb for a quick one."""
    if quick:
        return Path(build_dir) / f"{name}.ipynb"
    return results_root(results_dir) / "notebooks" / f"{name}.ipynb"


def declared_parameters(nb) -> set[str]:
    """The names the notebook's cell tagged `parameters` assigns at the top level."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"a notebook needs exactly one cell tagged 'parameters', found {len(cells)}")
    return set(re.findall(r"^([A-Za-z_]\w*)\s*=", cells[0].source, flags=re.M))


def _prune_widget_state(nb) -> None:
    """Keep the saved widget models that a remaining output shows (its view's model and every
    model that one references, as "IPY_MODEL_<id>"); drop the widget metadata when none is."""
    saved = nb.metadata.get("widgets", {}).get(WIDGET_STATE)
    if saved is None:
        return
    models = saved.get("state", {})
    todo = [o["data"][WIDGET_VIEW]["model_id"] for c in nb.cells for o in c.get("outputs", [])
            if WIDGET_VIEW in o.get("data", {})]
    kept: set[str] = set()
    while todo:
        model_id = todo.pop()
        if model_id in kept or model_id not in models:
            continue
        kept.add(model_id)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(models[model_id]))
    if kept:
        saved["state"] = {k: v for k, v in models.items() if k in kept}
    else:
        del nb.metadata["widgets"]


def strip_run_metadata(nb):
    """nb without what differs between two runs of the same notebook (in place; returns nb):
    per-cell papermill and execution metadata, papermill's timings, paths and exception flag,
    random cell ids (renumbered in order) and tqdm's progress-bar widgets with their saved
    state. Every other output, the state of the widgets they show, and the tags are kept."""
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if not _is_progress_bar(o)]
        if "id" in cell:
            cell["id"] = f"cell-{i:03d}"
    run = nb.metadata.get("papermill")
    if run is not None:
        nb.metadata["papermill"] = {k: run[k] for k in PAPERMILL_KEPT if k in run}
    _prune_widget_state(nb)
    return nb


def execute(name: str, output: str | Path, parameters: dict | None = None, *,
            raw: str | Path | None = None, notebooks: str | Path = NOTEBOOKS,
            log_output: bool = False):
    """Run notebooks/NAME.py with papermill (kernel python3, working directory notebooks/) and
    write it, executed and stripped of run metadata, to output (atomically: a failed run leaves
    the previous file). parameters: {name: value} injected after the `parameters` cell; each
    must be one it declares. raw: where papermill saves as it goes, which keeps the traceback
    of a failed run (default a temporary file). Returns the written notebook."""
    import jupytext
    import nbformat
    import papermill

    source = Path(notebooks) / f"{name}.py"
    if not source.is_file():
        raise FileNotFoundError(f"no notebook {source}")
    nb = jupytext.read(source)
    unknown = sorted(set(parameters or {}) - declared_parameters(nb))
    if unknown:
        raise ValueError(f"{name} declares no parameter {', '.join(unknown)} in its 'parameters' cell")
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / f"{name}.ipynb"
        raw = Path(raw) if raw is not None else Path(tmp) / f"{name}.out.ipynb"
        raw.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(nb, converted)
        with _quiet_parameter_inference():
            papermill.execute_notebook(str(converted), str(raw), parameters=parameters or {},
                                       cwd=str(source.parent), kernel_name="python3",
                                       progress_bar=False, log_output=log_output)
        executed = strip_run_metadata(nbformat.read(raw, as_version=4))
    write_text_atomic(output, nbformat.writes(executed) + "\n")
    return executed


def _parameters_for(nb_name: str, given: dict, notebooks: Path) -> dict:
    """The -p parameters a notebook declares (the others are for other notebooks)."""
    import jupytext

    declared = declared_parameters(jupytext.read(notebooks / f"{nb_name}.py"))
    return {k: v for k, v in given.items() if k in declared}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.notebook_run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="notebooks/NAME.py to run, in order")
    parser.add_argument("--quick", action="store_true",
                        help="QUICK=True, written to --build (also with WORKBENCH_QUICK=1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="a string parameter, injected into the notebooks that declare it")
    parser.add_argument("--build", type=Path, default=BUILD,
                        help="quick runs and papermill's raw outputs (default build/notebooks)")
    parser.add_argument("--log-output", action="store_true", help="stream the cells' output")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WORKBENCH_QUICK") == "1"
    given = dict(args.parameter)
    if "QUICK" in given:
        parser.error("QUICK is set by --quick (or WORKBENCH_QUICK=1), not by -p")
    takers = {n: _parameters_for(n, given, NOTEBOOKS) for n in args.names}
    unused = sorted(set(given) - {k for p in takers.values() for k in p})
    if unused:
        parser.error(f"no notebook among {args.names} declares {', '.join(unused)}")
    os.environ.update(KERNEL_ENV)          # the kernels inherit this process's environment
    for name in args.names:
        start = time.perf_counter()
        output = output_path(name, quick, build_dir=args.build)
        execute(name, output, {"QUICK": quick, **takers[name]},
                raw=args.build / f"{name}.out.ipynb", log_output=args.log_output)
        print(f"notebook {name}: {time.perf_counter() - start:.0f} s -> {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
