"""`python -m workbench ...`: scripted runs of the workbench steps.

    python -m workbench eval --model smollm2-135m --tasks ppl,arith [--quick]

prints a table and writes results/eval/<model>[-quick].{json,md}. Every task result goes
through the content-hashed cache, so a re-run with the same model and settings is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

QUICK_ENV = "WORKBENCH_QUICK"


def quick_mode(flag: bool = False) -> bool:
    """--quick, or WORKBENCH_QUICK set to a true value."""
    return flag or os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# task name -> (description, settings for full and quick runs)
EVAL_TASKS = {
    "ppl": ("pydoc eval-split perplexity, seqlen 512",
            {"seqlen": 512, "max_windows": None}, {"seqlen": 512, "max_windows": 8}),
    "arith": ("one-step arith accuracy, 3-shot chat, greedy",
              {"kind": "one_step", "n": 200, "fewshot": 3}, {"kind": "one_step", "n": 32, "fewshot": 3}),
    "arith2": ("two-step arith accuracy, 3-shot chat, greedy",
               {"kind": "two_step", "n": 200, "fewshot": 3}, {"kind": "two_step", "n": 32, "fewshot": 3}),
    "gsm8k": ("GSM8K test accuracy, 3-shot chat, greedy",
              {"n": 200, "fewshot": 3}, {"n": 16, "fewshot": 3}),
}


def _task_data(task: str, settings: dict):
    """The corpus or task a result is computed on (cheap to build; its fingerprint keys the cache)."""
    from workbench import data

    if task == "ppl":
        return data.perplexity_corpus("pydoc", "eval")
    if task in ("arith", "arith2"):
        return data.arith_task(settings["kind"], "test", n=settings["n"])
    return data.gsm8k("test", n=settings["n"])


def _run_task(task: str, settings: dict, model, tokenizer, inputs) -> dict:
    from workbench import evaluate

    if task == "ppl":
        r = evaluate.perplexity(model, tokenizer, inputs, seqlen=settings["seqlen"],
                                max_windows=settings["max_windows"])
        return {"metric": "perplexity", "value": r.perplexity, "detail": r.to_dict()}
    r = evaluate.task_accuracy(model, tokenizer, inputs, fewshot=settings["fewshot"])
    return {"metric": "accuracy", "value": r.accuracy, "detail": r.to_dict()}


def cmd_eval(args) -> int:
    import pandas as pd

    from workbench import cache, load_model

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown or not tasks:
        print(f"error: unknown task(s) {unknown}; choose from {', '.join(EVAL_TASKS)}", file=sys.stderr)
        return 2
    quick = quick_mode(args.quick)
    model, tokenizer = load_model(args.model)
    model_fp = cache.fingerprint_model(model)
    store = cache.ResultCache()
    rows, records = [], {}
    for task in tasks:
        desc, full, fast = EVAL_TASKS[task]
        settings = fast if quick else full
        config = {"step": "eval", "task": task, "settings": settings}
        inputs = _task_data(task, settings)
        key = store.key(config, model_fp=model_fp, data_fp=inputs.fingerprint)
        record = None if args.refresh else store.get(key)
        cached = record is not None
        if record is None:
            record = {**_run_task(task, settings, model, tokenizer, inputs), "config": config,
                      "data_fingerprint": inputs.fingerprint}
            store.put(key, record)
        records[task] = record
        rows.append({"task": task, "description": desc, "metric": record["metric"],
                     "value": record["value"], "n": record["detail"].get("n", record["detail"].get("n_tokens")),
                     "cached": cached})
    frame = pd.DataFrame(rows)
    print(f"model: {args.model}  fingerprint: {model_fp[:16]}  quick: {quick}")
    print(frame.to_string(index=False))
    out_dir = Path(args.results) / "eval"
    stem = args.model.replace("/", "__") + ("-quick" if quick else "")
    payload = {"model": args.model, "model_fingerprint": model_fp, "quick": quick,
               "tasks": records, "provenance": cache.provenance()}
    cache.write_json_atomic(out_dir / f"{stem}.json", payload)
    cache.write_text_atomic(out_dir / f"{stem}.md", frame.to_markdown(index=False) + "\n")
    print(f"wrote {out_dir / (stem + '.json')} and .md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate a model: perplexity and task accuracy")
    ev.add_argument("--model", default="smollm2-135m", help="embedded name, local path or hub id")
    ev.add_argument("--tasks", default="ppl,arith", help=f"comma list of {', '.join(EVAL_TASKS)}")
    ev.add_argument("--quick", action="store_true", help=f"small settings (also ${QUICK_ENV}=1)")
    ev.add_argument("--refresh", action="store_true", help="recompute even if cached")
    ev.add_argument("--results", default="results", help="directory for the written record")
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
