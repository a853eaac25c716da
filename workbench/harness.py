"""Bridge to the lm-evaluation-harness (lm-eval 0.4.x) for a live model.

`lm_eval_tasks(model, tokenizer, ["wb_arith_one_step", "wb_gsm8k", ...])` wraps the model in
`HFLM(pretrained=model, device="cpu")` (nothing is reloaded; a workbench PackedModel through
its HF face, workbench.packed_lm) and runs:
- the workbench's local tasks, whose data is written as JSONL at run time and whose YAMLs
  name those files by absolute path (lm-eval resolves `data_files` against the working
  directory): wb_arith_one_step / wb_arith_two_step (chat format, multi-turn few-shot) and
  wb_gsm8k (plain "Question:/Answer:" format, GSM8K from the local copy when offline);
- any built-in lm-eval task by name, which needs the hub for its dataset.
Chat-template and plain tasks run in separate harness calls, as the harness applies the chat
template to every task of a call.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.hub import require_hub
from workbench.packed_lm import as_causal_lm

# answer-extraction shared by all local tasks: "... The answer is 24."
_ANSWER_REGEX = r"answer is \$?\**(-?[0-9][0-9.,]*)"
_IGNORE = [",", "\\$", "(?s).*answer is ", "\\.$", "\\*"]

LOCAL_TASKS = {
    "wb_arith_one_step": {"source": "arith", "kind": "one_step", "chat": True},
    "wb_arith_two_step": {"source": "arith", "kind": "two_step", "chat": True},
    "wb_gsm8k": {"source": "gsm8k", "chat": False},
}


@dataclass
class HarnessResult:
    metrics: dict[str, dict] = field(default_factory=dict)   # task -> {metric,filter: value}
    n_samples: dict[str, int] = field(default_factory=dict)
    limit: int | float | None = None
    num_fewshot: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _write_task_data(name: str, spec: dict, workdir: Path, n_test: int, n_train: int) -> dict:
    """Write train/test JSONL for a local task; returns {split: absolute path}."""
    from workbench.data import arith_task, gsm8k

    if spec["source"] == "arith":
        splits = {"test": arith_task(spec["kind"], "test", n=n_test),
                  "train": arith_task(spec["kind"], "train", n=n_train)}
    else:
        splits = {"test": gsm8k("test"), "train": gsm8k("train")}
    files = {}
    for split, task in splits.items():
        path = (workdir / f"{name}_{split}.jsonl").resolve()
        with open(path, "w") as f:
            for item in task:
                f.write(json.dumps({"question": item.question, "solution": item.solution,
                                    "answer": item.answer}) + "\n")
        files[split] = str(path)
    return files


def _task_config(name: str, spec: dict, files: dict, max_gen_toks: int | None) -> dict:
    chat = spec["chat"]
    if max_gen_toks is None:
        max_gen_toks = 64 if spec["source"] == "arith" else 320
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "generate_until",
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "test",
        "doc_to_text": "{{question}}" if chat else "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{solution}}",
        "target_delimiter": "" if chat else " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": 3,
        "generation_kwargs": {"until": ["<|im_end|>", "Question:", "\n\n"], "do_sample": False,
                              "max_gen_toks": max_gen_toks},
        "filter_list": [{"name": "strict-match", "filter": [
            {"function": "regex", "regex_pattern": _ANSWER_REGEX},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "regexes_to_ignore": _IGNORE}],
        "metadata": {"version": 1.0},
    }


def lm_eval_tasks(model, tokenizer, tasks, limit: int | float | None = None, batch_size: int = 8,
                  num_fewshot: int | None = None, n_test: int = 200, n_train: int = 200,
                  max_gen_toks: int | None = None,
                  workdir: str | Path | None = None) -> HarnessResult:
    """Run lm-eval tasks on a live model; returns metrics per task.

    tasks: names from LOCAL_TASKS and/or built-in lm-eval task names (those need the hub).
    limit: lm-eval's per-task limit (an int count, or a fraction), for quick runs.
    max_gen_toks: generation budget of the local tasks (default 64 for arith, 320 for GSM8K).
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("lm_eval_tasks needs lm-eval: pip install -e '.[eval]'") from err
    import yaml

    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("tasks is empty")
    builtin = [t for t in tasks if t not in LOCAL_TASKS]
    if builtin:
        require_hub(f"lm-eval tasks {builtin}",
                    hint=f"Local tasks that work offline: {', '.join(LOCAL_TASKS)}.")
    result = HarnessResult(limit=limit, num_fewshot=num_fewshot)
    start = time.perf_counter()
    # a packed model gets its HF face; its generate stops at the chat end-of-turn or EOS
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    model = as_causal_lm(model, eos_token_id=[t for t in eos if isinstance(t, int)
                                              and t != tokenizer.unk_token_id],
                         pad_token_id=tokenizer.pad_token_id)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="wb-lm-eval-", dir=workdir) as tmp:
        tmpdir = Path(tmp)
        for name in tasks:
            if name in LOCAL_TASKS:
                spec = LOCAL_TASKS[name]
                files = _write_task_data(name, spec, tmpdir, n_test, n_train)
                (tmpdir / f"{name}.yaml").write_text(yaml.safe_dump(_task_config(name, spec, files, max_gen_toks)))
        manager = TaskManager(include_path=str(tmpdir), include_defaults=bool(builtin))
        groups = {True: [t for t in tasks if LOCAL_TASKS.get(t, {}).get("chat")],
                  False: [t for t in tasks if not LOCAL_TASKS.get(t, {}).get("chat")]}
        for chat, names in groups.items():
            if not names:
                continue
            out = lm_eval.simple_evaluate(
                model=lm, tasks=names, task_manager=manager, limit=limit,
                num_fewshot=num_fewshot, apply_chat_template=chat, fewshot_as_multiturn=chat,
                log_samples=False, bootstrap_iters=0, random_seed=0,
            )
            for name in names:
                metrics = out["results"].get(name, {})
                result.metrics[name] = {k: float(v) for k, v in metrics.items()
                                        if isinstance(v, (int, float)) and k != "alias"}
                n = out.get("n-samples", {}).get(name, {})
                result.n_samples[name] = int(n.get("effective", n.get("original", 0)) or 0)
    result.seconds = time.perf_counter() - start
    return result
