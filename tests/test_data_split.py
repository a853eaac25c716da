"""workbench.data split into workbench.corpora and workbench.tasks: every public name is still
reachable as data.<name>, and the fingerprints that key the result cache are unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench import cache, corpora, data, tasks
from workbench.models import tiny_tokenizer


def _public(module) -> set[str]:
    """Names a module defines at top level (classes, functions, constants), not underscored."""
    names = set()
    for node in ast.parse(Path(module.__file__).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_data_reexports_every_public_name_of_corpora_and_tasks():
    assert {"PYDOCS_DIR", "HUB_CORPORA", "calibration_set"} <= _public(corpora)
    assert {"GSM8K_DIR", "FEWSHOT", "arith_task"} <= _public(tasks)
    for module in (corpora, tasks):
        names = _public(module)
        for name in names:
            assert getattr(data, name) is getattr(module, name), name
    assert set(data.__all__) >= {"calibration_set", "perplexity_corpus", "arith_task", "gsm8k",
                                 "Corpus", "Task", "TaskItem", "answer_from_text", "check_calib"}
    assert all(hasattr(data, name) for name in data.__all__)


def test_the_two_modules_do_not_depend_on_each_other():
    for module, other in ((corpora, "tasks"), (tasks, "corpora")):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert f"workbench.{other}" not in imported and "workbench.data" not in imported


# Golden values from before the split (the same seeds, the same generator): a change here
# would orphan every cached score computed on these tasks.
GOLDEN_TASKS = {
    ("one_step", "test"): "50684e145cd0ffc9c00e16f05d9768ab3d4dc8c75e1bcccea54b6c9f3e061501",
    ("one_step", "train"): "443245180dcaacc26b53b7ed811b6c01d5922175e2ba4b6b4dcbd0e400a650d7",
    ("two_step", "dev"): "c6bd35fdf1ba7452ad0d20a7ff443909405a8ad027fe910b570c493f100625ad",
}


@pytest.mark.parametrize("kind,split", sorted(GOLDEN_TASKS))
def test_task_fingerprints_are_unchanged(kind, split):
    assert data.arith_task(kind, split, 50, seed=0).fingerprint == GOLDEN_TASKS[kind, split]


def test_calibration_windows_and_corpus_fingerprints_agree_across_the_split():
    tok = tiny_tokenizer()
    calib = corpora.perplexity_corpus("pydoc", "calib")
    assert data.perplexity_corpus("pydoc", "calib").fingerprint == calib.fingerprint
    windows = data.calibration_set(tok, calib, nsamples=4, seqlen=32, seed=3)
    assert cache.fingerprint_data(windows) == cache.fingerprint_data(
        corpora.calibration_set(tok, "pydoc", nsamples=4, seqlen=32, seed=3))
