"""The sparsity explorer in a real browser: Voilà serves a notebook that builds it on a
synthetic sweep, headless Chromium (Debian's package, /usr/bin/chromium) driven by Playwright
moves the slider, and the numbers on the page change.

Needs `apt-get install -y chromium` (system-wide) and the Python packages voila and playwright
(the notebooks and dev extras). Without them the test is skipped with a warning that says so.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings

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


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        return "no Chromium on PATH: install it with `apt-get install -y chromium` (as root)"
    for module in ("playwright", "voila"):
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


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    """Until voila listens. Not an HTTP GET: voila runs the notebook in a new kernel for every
    page request, and the page only arrives once it has run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"voila did not listen on port {port} within {seconds} s")


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

    chromium = next(shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
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
