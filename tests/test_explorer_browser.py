"""The notebooks in a real browser, headless Chromium (Debian's package, /usr/bin/chromium)
driven by Playwright:

- the sparsity explorer: Voilà serves a notebook that builds it on a synthetic sweep, the test
  moves the slider, and the numbers on the page change;
- `make lab`: JupyterLab started by the Makefile's own recipe, where a double click on
  notebooks/02_pruning_sweep.py opens it as a notebook (cells), not in the text editor, while
  the same server without the project's jupyter/ config opens it as text.

Needs `apt-get install -y chromium` (system-wide) and the Python packages voila, jupyterlab,
jupytext and playwright (the notebooks and dev extras), and make for the second. Without them
the tests are skipped with a warning that says so.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # voila starts a kernel that imports torch: ~30 s to 2 min

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

NOTEBOOK_SOURCE = '''
import pandas as pd
from workbench.widgets import SparsityExplorer
rows = [{"method": "dense", "sparsity": 0.0, "ppl": 11.0, "arith": 0.35}]
rows += [{"method": "sparsegpt", "structure": "unstructured", "sparsity": s,
          "ppl": 11.0 + 40 * s * s, "arith": 0.35 - s / 3} for s in (0.3, 0.5, 0.7, 0.9)]
explorer = SparsityExplorer(pd.DataFrame(rows), n_weights=106_168_320)
explorer
'''


REPO = Path(__file__).resolve().parent.parent
LAB_NOTEBOOK = "02_pruning_sweep.py"


def _missing(modules=("playwright", "voila")) -> str | None:
    """Why a browser test cannot run here, or None."""
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        return "no Chromium on PATH: install it with `apt-get install -y chromium` (as root)"
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"Python package {module} is missing: pip install -e '.[dev,notebooks]'"
    return None


def _skip_loudly(reason: str) -> None:
    message = f"BROWSER TEST NOT RUN: {reason}"
    warnings.warn(message, stacklevel=2)
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60, what: str = "voila") -> None:
    """Until the server listens. Not an HTTP GET: voila runs the notebook in a new kernel for
    every page request, and the page only arrives once it has run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not listen on port {port} within {seconds} s")


def _launch(p):
    chromium = next(shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n))
    return p.chromium.launch(
        executable_path=chromium, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"])


@pytest.fixture
def served_explorer(tmp_path):
    reason = _missing()
    if reason:
        _skip_loudly(reason)
    notebook = tmp_path / "explorer.ipynb"
    notebook.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                   "source": NOTEBOOK_SOURCE}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    port = _free_port()
    env = {**os.environ, "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    log = (tmp_path / "voila.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--ServerApp.open_browser=False"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _number(page, label: str) -> str:
    row = page.locator("table.wb-numbers tr", has_text=label)
    return row.locator("td.wb-value").inner_text()


def test_moving_the_slider_changes_the_numbers(served_explorer):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page.goto(served_explorer, timeout=120_000)
            page.wait_for_selector("table.wb-numbers", timeout=120_000)
            assert _number(page, "perplexity") == "11.00"            # 0%: the dense model
            assert _number(page, "decoder weights") == "424.7 MB"     # FP32, 4 B/weight
            handle = page.locator(".noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")                                 # 0% -> 30%
            page.wait_for_function(
                "() => !document.querySelector('table.wb-numbers').innerText.includes('11.00')",
                timeout=30_000)
            assert _number(page, "perplexity") == "14.60"
            assert _number(page, "arith accuracy") == "25.0%"
            handle.press("ArrowRight")                                 # 30% -> 50%
            page.wait_for_function(
                "() => document.querySelector('table.wb-numbers').innerText.includes('21.00')",
                timeout=30_000)
            page.get_by_text("INT8", exact=True).click()               # size: packed INT8
            page.wait_for_function(
                "() => document.querySelector('table.wb-numbers').innerText.includes('0.625')",
                timeout=30_000)
            assert _number(page, "decoder weights") == "66.4 MB"
        finally:
            browser.close()


# ---------------------------------------------------------------- make lab

def _lab_command(tmp_path: Path, port: int, project_config: bool) -> tuple[list[str], dict]:
    """`make lab` itself (its setup prerequisite skipped: -o setup), on a free port without a
    token, for the project config; the bare `jupyter lab notebooks/` as the control. Both get
    empty user config, settings and workspace dirs, so nothing of this machine's own JupyterLab
    setup takes part."""
    lab_args = [f"--port={port}", "--no-browser", "--ServerApp.ip=127.0.0.1",
                "--IdentityProvider.token=", "--ServerApp.password=",
                "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:            # containers and CI: jupyter refuses root without it
        lab_args.append("--allow-root")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JUPYTERLAB"))}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "run"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               MPLBACKEND="Agg", TQDM_DISABLE="1")
    bin_dir = Path(sys.executable).parent
    if project_config:
        return ["make", "-s", "-o", "setup", "lab", f"BIN={bin_dir}",
                "LAB_ARGS=" + " ".join(lab_args)], env
    return [str(bin_dir / "jupyter"), "lab", "notebooks/", *lab_args], env


@pytest.fixture
def lab_server(tmp_path, request):
    """(url, log) of a JupyterLab on notebooks/: request.param True for `make lab`, False for
    the same server without the project's config."""
    reason = _missing(("playwright", "jupyterlab", "jupytext"))
    if reason is None and not shutil.which("make"):
        reason = "no make on PATH: the test runs the Makefile's lab recipe"
    if reason:
        _skip_loudly(reason)
    port = _free_port()
    cmd, env = _lab_command(tmp_path, port, request.param)
    log_path = tmp_path / "lab.log"
    with log_path.open("w") as log:
        # its own process group: make's shell and jupyter go down together
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for_port(port, proc, seconds=120, what="jupyter lab")
            yield f"http://127.0.0.1:{port}/lab", log_path
        finally:
            with contextlib.suppress(ProcessLookupError):     # gone already when it failed
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _double_click_notebook(url: str, log_path: Path):
    """Open JupyterLab, double-click LAB_NOTEBOOK in the file browser; (notebook cells shown,
    text editors shown, the main area's first markdown heading or None)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page.goto(url, timeout=120_000)
            item = page.locator(".jp-DirListing-item", has_text=LAB_NOTEBOOK)
            item.wait_for(timeout=120_000)
            item.dblclick()
            page.wait_for_selector(".jp-MainAreaWidget .jp-Notebook .jp-Cell, "
                                   ".jp-MainAreaWidget .jp-FileEditor .cm-content", timeout=60_000)
            page.wait_for_timeout(1000)     # let a second widget appear if one were coming
            cells = page.locator(".jp-MainAreaWidget .jp-Notebook .jp-Cell").count()
            editors = page.locator(".jp-MainAreaWidget .jp-FileEditor").count()
            heading = page.locator(".jp-MainAreaWidget .jp-MarkdownCell h1").first
            title = heading.inner_text(timeout=10_000) if cells else None
            return cells, editors, title
        except Exception as err:
            raise AssertionError(f"{err}\n--- jupyter lab log:\n{log_path.read_text()[-3000:]}") from err
        finally:
            browser.close()


@pytest.mark.parametrize("lab_server", [True], indirect=True, ids=["make-lab"])
def test_make_lab_opens_a_notebook_as_a_notebook_on_double_click(lab_server):
    cells, editors, title = _double_click_notebook(*lab_server)
    assert editors == 0, "the .py opened in the text editor: the default viewer is not jupytext's"
    assert cells >= 3
    assert title is not None and title.startswith("02 · Pruning sweep")


@pytest.mark.parametrize("lab_server", [False], indirect=True, ids=["without-project-config"])
def test_without_the_project_config_a_double_click_opens_text(lab_server):
    """The control: the notebook view above is the project's setting, not JupyterLab's default."""
    cells, editors, _ = _double_click_notebook(*lab_server)
    assert cells == 0 and editors == 1
