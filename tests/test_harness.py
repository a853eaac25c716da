"""The lm-eval bridge: task files, offline behaviour and a run on a tiny model."""

import json

import pytest
import yaml

from workbench import harness
from workbench.hub import HubUnreachableError


def test_task_files_use_absolute_paths(tmp_path):
    spec = harness.LOCAL_TASKS["wb_arith_one_step"]
    files = harness._write_task_data("wb_arith_one_step", spec, tmp_path, n_test=5, n_train=7)
    for split, n in (("test", 5), ("train", 7)):
        path = files[split]
        assert path.startswith("/")
        rows = [json.loads(line) for line in open(path)]
        assert len(rows) == n and rows[0]["solution"].endswith(f"The answer is {rows[0]['answer']}.")
    cfg = yaml.safe_load(yaml.safe_dump(harness._task_config("wb_arith_one_step", spec, files, None)))
    assert cfg["dataset_kwargs"]["data_files"] == files
    assert cfg["generation_kwargs"]["max_gen_toks"] == 64


def test_answer_regex_agrees_with_the_workbench_parser():
    import re

    from workbench.data import answer_from_text

    for text in ["5 x 3 = 15. The answer is 15.", "so the answer is $1,200.", "The answer is -4."]:
        match = re.search(harness._ANSWER_REGEX, text).group(1)
        for rx in harness._IGNORE:
            match = re.sub(rx, "", match)
        assert float(match) == answer_from_text(text)


def test_builtin_tasks_need_the_hub(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = tiny
    with pytest.raises(HubUnreachableError, match="hellaswag"):
        harness.lm_eval_tasks(model, tok, ["hellaswag"])
    with pytest.raises(ValueError, match="empty"):
        harness.lm_eval_tasks(model, tok, [])


def test_runs_local_tasks_on_a_tiny_model(tiny):
    model, tok = tiny
    res = harness.lm_eval_tasks(model, tok, "wb_arith_one_step,wb_gsm8k", limit=2, batch_size=2,
                                max_gen_toks=4, n_test=10, n_train=10)
    assert set(res.metrics) == {"wb_arith_one_step", "wb_gsm8k"}
    assert res.n_samples == {"wb_arith_one_step": 2, "wb_gsm8k": 2}
    # a random model does not solve word problems
    assert res.metrics["wb_arith_one_step"]["exact_match,strict-match"] == 0.0
