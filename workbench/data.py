"""Offline data, deterministic by seed, in one namespace: `from workbench import data`.

  workbench.corpora  perplexity corpora (pydoc, pydocs-prose, wikitext2, c4), their token
                     streams, and SparseGPT's calibration windows (`calibration_set`)
  workbench.tasks    GSM8K and the generated arithmetic task: items, few-shot pools, splits,
                     and the "The answer is N" format they are scored by

Every public name of both modules is re-exported here, so `data.calibration_set(...)` and
`data.arith_task(...)` read the same as they always have.
"""

from __future__ import annotations

from workbench.corpora import (
    CORPORA,
    HUB_CORPORA,
    PYDOCS_DIR,
    Corpus,
    HubCorpus,
    calibration_set,
    check_calib,
    perplexity_corpus,
    token_stream,
)
from workbench.tasks import (
    CONTAINERS,
    FEWSHOT,
    GSM8K_DIR,
    NAMES,
    OBJECTS,
    REPO_ROOT,
    Task,
    TaskItem,
    answer_from_text,
    arith_task,
    format_number,
    gsm8k,
)

__all__ = [
    "CONTAINERS", "CORPORA", "FEWSHOT", "GSM8K_DIR", "HUB_CORPORA", "NAMES", "OBJECTS",
    "PYDOCS_DIR", "REPO_ROOT", "Corpus", "HubCorpus", "Task", "TaskItem", "answer_from_text",
    "arith_task", "calibration_set", "check_calib", "format_number", "gsm8k",
    "perplexity_corpus", "token_stream",
]
