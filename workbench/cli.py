"""`python -m workbench ...`: scripted runs of the workbench steps.

    python -m workbench eval --model smollm2-135m --tasks ppl,arith [--quick]
    python -m workbench prune --methods sparsegpt --sparsities 0.5,0.7 [--save DIR]
    python -m workbench distill [--size reproduce|full|experiments] [--quick] [--save DIR]
    python -m workbench generate --model PATH --prompt TEXT [--runtime int8|fp32|hf] [--sample]
    python -m workbench chat --model PATH [--system TEXT] [--max-new-tokens N]

eval prints a table and writes results/eval/<model>[-quick].{json,md}; distill writes
results/distill/<model>[-quick].{md,json,csv} and its training curves, dev curves, W8A8
comparison and seed summary in <...>-{losses,dev,w8a8,summary}.*.
generate and chat stream tokens to stdout and a prefill / decode tok/s line to stderr; --model
is a packed directory, a Hugging Face directory, a .gguf file, a compressed-tensors directory
or the embedded model (workbench.formats.open_model).
Every result goes through the content-hashed cache, so a re-run with the same model and
settings is instant.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

QUICK_ENV = "WORKBENCH_QUICK"
# bench.SHAPE_MODELS, named here so that parsing arguments does not import torch
SHAPE_MODEL_NAMES = ("llama2-7b-shape", "tinyllama-1.1b-shape")


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


def _stem(args, quick: bool) -> str:
    """File stem of a written table: --name or the model, with -quick for quick runs (so a quick
    run never overwrites the full results)."""
    base = getattr(args, "name", None) or args.model.replace("/", "__")
    return base + ("-quick" if quick else "")


class UsageError(ValueError):
    """Bad command-line input: reported on stderr with exit status 2."""


def _check_tasks(spec: str) -> list[str]:
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown or not tasks:
        raise UsageError(f"unknown task(s) {unknown}; choose from {', '.join(EVAL_TASKS)}")
    return tasks


def _evaluate(store, model, tokenizer, model_fp: str, tasks: list[str], quick: bool,
              refresh: bool) -> tuple[list[dict], dict]:
    """(table rows, records) for each task; each task result is cached on its own."""
    from workbench.stats import wilson_interval
    from workbench.sweep import evaluate_cached

    rows, records = [], {}
    for task in tasks:
        desc, full, fast = EVAL_TASKS[task]
        record, cached = evaluate_cached(store, model, tokenizer, model_fp, task,
                                         fast if quick else full, refresh=refresh)
        records[task] = record
        lo = hi = None
        if record["metric"] == "accuracy":      # 95% Wilson interval
            lo, hi = wilson_interval(record["detail"]["correct"], record["detail"]["n"])
        rows.append({"task": task, "description": desc, "metric": record["metric"],
                     "value": record["value"], "acc_lo": lo, "acc_hi": hi,
                     "n": record["detail"].get("n", record["detail"].get("n_tokens")),
                     "cached": cached})
    return rows, records


def cmd_eval(args) -> int:
    import pandas as pd

    from workbench import cache, load_model

    tasks = _check_tasks(args.tasks)
    quick = quick_mode(args.quick)
    model, tokenizer = load_model(args.model)
    model_fp = cache.fingerprint_model(model)
    rows, records = _evaluate(cache.ResultCache(), model, tokenizer, model_fp, tasks, quick,
                              args.refresh)
    frame = pd.DataFrame(rows)
    print(f"model: {args.model}  fingerprint: {model_fp[:16]}  quick: {quick}")
    print(frame.to_string(index=False))
    out_dir = Path(args.results) / "eval"
    stem = _stem(args, quick)
    payload = {"model": args.model, "model_fingerprint": model_fp, "quick": quick,
               "tasks": records, "provenance": cache.provenance()}
    cache.write_json_atomic(out_dir / f"{stem}.json", payload)
    cache.write_text_atomic(out_dir / f"{stem}.md", frame.to_markdown(index=False) + "\n")
    print(f"wrote {out_dir / (stem + '.json')} and .md")
    return 0


def cmd_prune(args) -> int:
    """Grid of pruning configs; each point: load, prune, evaluate. Every row is the sweep's
    own cached point (sweep.prune_point), so a notebook asking for it reads this run's."""
    import pandas as pd

    from workbench import cache, data, load_model
    from workbench.pruning import PruneConfig
    from workbench.sweep import prune_point

    tasks = _check_tasks(args.tasks)
    quick = quick_mode(args.quick)
    settings = {t: EVAL_TASKS[t][2 if quick else 1] for t in tasks}
    nsamples = min(args.nsamples, 16) if quick else args.nsamples
    grid = []
    for method in args.methods.split(","):
        for structure in args.structures.split(","):
            levels = [0.0] if structure != "unstructured" else [float(x) for x in args.sparsities.split(",")]
            for sparsity in levels:
                for layer_sparsity in args.layer_sparsities.split(","):
                    for refine in args.refines.split(","):
                        if layer_sparsity.strip() == "owl" and structure.strip() != "unstructured":
                            continue                 # OWL sets unstructured sparsities only
                        try:
                            grid.append(PruneConfig(method=method.strip(), sparsity=sparsity,
                                                    structure=structure.strip(),
                                                    layer_sparsity=layer_sparsity.strip(),
                                                    refine=refine.strip()))
                        except ValueError as err:
                            raise UsageError(str(err)) from None
    store = cache.ResultCache()
    base = load_model(args.model)
    calib = data.calibration_set(base[1], "pydoc", nsamples=nsamples, seqlen=args.seqlen)
    rows = []
    for config in [None, *grid]:
        rows.append(prune_point(args.model, config, calib, settings, store, base=base))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    frame = pd.DataFrame(rows)
    out_dir = Path(args.results) / "pruning"
    stem = _stem(args, quick)
    cache.write_text_atomic(out_dir / f"{stem}.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out_dir / f"{stem}.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    cache.write_json_atomic(out_dir / f"{stem}.json", {
        "model": args.model, "base_fingerprint": cache.fingerprint_model(base[0]),
        "calib_fingerprint": cache.fingerprint_data(calib), "nsamples": nsamples,
        "seqlen": args.seqlen, "tasks": settings, "rows": rows, "provenance": cache.provenance()})
    print(f"wrote {out_dir / stem}.{{csv,md,json}}")
    if args.save:
        _save_pruned(Path(args.save), args.model, grid, calib, store, base)
    return 0


def _write_frame(frame, out_dir: Path, stem: str, meta: dict) -> None:
    from workbench import cache

    cache.write_text_atomic(out_dir / f"{stem}.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out_dir / f"{stem}.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    cache.write_json_atomic(out_dir / f"{stem}.json", {**meta, "rows": frame.to_dict("records"),
                                                      "provenance": cache.provenance()})
    print(f"wrote {out_dir / stem}.{{csv,md,json}}")


def cmd_quant(args) -> int:
    """W8A8 perplexity: smoothing x activation granularity x SparseGPT sparsity."""
    from workbench import data
    from workbench.models import load_model
    from workbench.sweep import w8a8_table

    quick = quick_mode(args.quick)
    _, tok = load_model(args.model)
    calib = data.calibration_set(tok, "pydoc", nsamples=16 if quick else args.nsamples, seqlen=args.seqlen)
    corpus = data.perplexity_corpus("pydoc", "eval")
    windows = 4 if quick else args.max_windows
    frame = w8a8_table(args.model, calib, corpus,
                       sparsities=[float(x) for x in args.sparsities.split(",")],
                       smoothings=args.smoothings.split(","), activations=args.activations.split(","),
                       max_windows=windows)
    wide = frame.pivot_table(index=["smoothing", "activations"], columns="sparsity",
                             values="perplexity", sort=False).reset_index()
    wide.columns = [c if isinstance(c, str) else f"ppl @ {c:.0%} sparse" for c in wide.columns]
    print(wide.to_string(index=False))
    stem = _stem(args, quick)
    _write_frame(wide, Path(args.results) / "w8a8", stem,
                 {"model": args.model, "max_windows": windows, "seqlen": args.seqlen,
                  "calib_nsamples": int(calib.shape[0]), "weights": "per_channel"})
    return 0


def cmd_outliers(args) -> int:
    """Top-k outlier layers by input range (with and without the first token), the measured
    one-layer-at-a-time W8A8 sensitivity, and how the two rankings agree."""
    from workbench import cache, data
    from workbench.models import load_model
    from workbench.outliers import cached_layer_sensitivity, compare_rankings, rank_outlier_layers
    from workbench.profiling import cached_profile
    from workbench.quant import QuantConfig

    quick = quick_mode(args.quick)
    model, tok = load_model(args.model)
    model_fp = cache.fingerprint_model(model)
    store = cache.ResultCache()
    calib = data.calibration_set(tok, "pydoc", nsamples=4 if quick else args.nsamples, seqlen=args.seqlen)
    out_dir = Path(args.results) / "outliers"
    stem = _stem(args, quick)
    rankings, summary = {}, {"model": args.model, "calib_nsamples": int(calib.shape[0]),
                             "seqlen": args.seqlen, "metric": args.metric, "k": args.k}
    for first in (True, False):
        profile = cached_profile(model, calib, include_first_token=first, model_fp=model_fp,
                                 store=store)
        ranking = rank_outlier_layers(profile, k=args.k, metric=args.metric)
        label = "with_first_token" if first else "without_first_token"
        rankings[label] = ranking
        summary[f"ratio_top_to_kth_{label}"] = ranking.ratio_top_to_kth
        top = ranking.frame.head(args.k)
        print(f"top-{args.k} by {args.metric}, {label.replace('_', ' ')}: "
              f"largest/{args.k}th = {ranking.ratio_top_to_kth:.1f}x")
        print(top.to_string(index=False))
        _write_frame(top, out_dir, f"{stem}-top{args.k}-{label}", summary)
    if args.measure:
        sens_calib = calib[: 2 if quick else args.measure_samples]
        measured = cached_layer_sensitivity(model, sens_calib,
                                            QuantConfig(activations=args.activations),
                                            model_fp=model_fp, store=store)
        _write_frame(measured.frame, out_dir, f"{stem}-measured-{args.activations}",
                     {**summary, "activations": args.activations,
                      "baseline_loss": measured.baseline_loss})
        for label, ranking in rankings.items():
            agreement = compare_rankings(ranking, measured, k=args.k)
            summary[f"agreement_{label}"] = agreement
            print(f"heuristic ({label}) vs measured: top-{args.k} overlap {agreement['overlap']}, "
                  f"Spearman {agreement['spearman']:.3f}")
        cache.write_json_atomic(out_dir / f"{stem}-summary.json", {**summary, "provenance": cache.provenance()})
    return 0


RECOVERY_SIZES = ("quick", "reproduce", "full", "experiments")


def _recovery_config(args, quick: bool):
    """RecoveryConfig from the distill arguments: the size's classmethod (quick with --quick or
    WORKBENCH_QUICK=1), then whatever was given on the command line. Raises UsageError before
    anything is loaded."""
    import dataclasses

    from workbench.recovery import RecoveryConfig

    size = "quick" if quick else args.size
    base = {"quick": RecoveryConfig.quick, "reproduce": RecoveryConfig.reproduce,
            "full": RecoveryConfig, "experiments": RecoveryConfig.experiments}[size]()

    def schedule(config, steps, lr):
        changes = {"steps": steps, "warmup": steps // 10} if steps is not None else {}
        given = {"lr": lr, "batch_size": args.batch_size}
        return dataclasses.replace(config, **changes, **{k: v for k, v in given.items() if v is not None})

    given = {"train_n": args.train_n, "nsamples": args.nsamples, "calib_seqlen": args.seqlen,
             "eval_n": args.eval_n, "dev_n": args.dev_n}
    if args.max_windows is not None:
        given["ppl_max_windows"] = args.max_windows or None     # 0: the whole eval split
    try:
        if args.sparsities is not None:
            given["sparsities"] = tuple(float(x) for x in args.sparsities.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--sparsities must be a comma list of numbers, got {args.sparsities!r}") from None
    if args.seeds is not None:
        given["seeds"] = tuple(_int_list(args.seeds, "--seeds", low=0))
    try:
        return dataclasses.replace(
            base, sft=schedule(base.sft, args.sft_steps, args.sft_lr),
            train=schedule(base.train, args.steps, args.lr),
            **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from None


def distill_config(argv: str | list[str] = ()):
    """The RecoveryConfig that `python -m workbench distill ARGV` runs (quick with --quick or
    WORKBENCH_QUICK=1), so a notebook given the same arguments reads that run's cache."""
    import shlex

    argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
    args = build_parser().parse_args(["distill", *argv])
    return _recovery_config(args, quick_mode(args.quick))


def cmd_distill(args) -> int:
    """SFT teacher, SparseGPT one-shot, CE vs SquareHead+CE recovery to a dev plateau at each
    sparsity, then W8A8 + pack, scored on the packed model (workbench.recovery)."""
    import pandas as pd

    from workbench import load_model
    from workbench.recovery import run_recovery

    quick = quick_mode(args.quick)
    config = _recovery_config(args, quick)
    model, tok = load_model(args.model)
    print(f"model: {args.model}  size: {'quick' if quick else args.size}  sparsities: "
          f"{list(config.sparsities)}  seeds: {list(config.seeds)}  step caps: SFT "
          f"{config.sft.steps}, recovery {config.train.steps}")
    shown = []

    def show(row):
        shown.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(shown) == 1), flush=True)

    result = run_recovery(model, tok, config, on_row=show)
    print(result.table.to_string(index=False))
    out_dir = Path(args.results) / "distill"
    stem = _stem(args, quick)
    _write_frame(result.table, out_dir, stem, {
        "model": args.model, "quick": quick, **result.meta, "weights": result.weights,
        "computed": result.computed})
    for part in ("losses", "dev", "w8a8", "summary"):
        _write_frame(getattr(result, part), out_dir, f"{stem}-{part}", {"model": args.model})
    if args.save:
        _save_students(Path(args.save), args.model, model, tok, result, config)
    return 0


def _int_list(text: str, what: str, low: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) < low:
        raise UsageError(f"{what} must be integers >= {low}, got {text!r}")
    return values


def cmd_bench(args) -> int:
    """Speed: `decode` (tokens/s of whole models, one run) or `kernels` (benchmarks/kernels.py)."""
    import pandas as pd

    from workbench import bench

    if args.what == "kernels":
        script = Path(__file__).resolve().parent.parent / "benchmarks" / "kernels.py"
        if not script.is_file():
            raise UsageError(f"{script} not found: run from a source checkout")
        return subprocess.call([sys.executable, str(script)] + (["--quick"] if args.quick else []))
    quick = quick_mode(args.quick)
    if args.what == "agreement":
        rows = pd.DataFrame(bench.agreement_table(args.model, n_prompts=4 if quick else 20,
                                                  n_tokens=8 if quick else 32,
                                                  engine_tokens=8 if quick else 64))
        rows["identical"] = rows["common_prefix"] == rows["n_tokens"]
        summary = rows.groupby("comparison", sort=False).agg(
            prompts=("prompt", "size"), equal_tokens=("equal_tokens", "sum"),
            tokens=("n_tokens", "sum"), identical_prompts=("identical", "sum"),
            mean_common_prefix=("common_prefix", "mean"),
            max_rel_logit_diff=("rel_logit_diff", "max")).reset_index()
        summary["token_agreement"] = summary["equal_tokens"] / summary["tokens"]
        print(summary.to_string(index=False))
        stem = _stem(args, quick)
        _write_frame(summary, Path(args.results) / "decode", f"{stem}-agreement",
                     {"model": args.model, "quick": quick, "per_prompt": rows.to_dict("records")})
        return 0
    threads = _int_list(args.threads, "--threads")
    batches = _int_list(args.batches, "--batches")
    systems = tuple(args.systems.split(",")) if args.systems else (
        ("ours-fp32", "ours-int8", "ours-sparse-0.7") if quick else bench.EMBEDDED_SYSTEMS)
    if not args.systems and not quick:
        from workbench import peers

        if peers.llamacpp_available():
            systems += bench.LLAMACPP_SYSTEMS
        else:
            print("llama.cpp peer not installed (`make peers`): its systems are skipped")
        if peers.llama_bench_path() is not None:
            systems += bench.LLAMABENCH_SYSTEMS
        else:
            print("llama-bench not built (`make peers`): its systems are skipped")
    layers = _int_list(args.shape_layers, "--shape-layers") if args.shape_layers else []
    shape_models = tuple(m for m in args.shape_models.split(",") if m.strip())
    bad = [m for m in shape_models if m not in SHAPE_MODEL_NAMES]
    if bad:
        raise UsageError(f"unknown shape model {bad[0]!r}: choose from {', '.join(SHAPE_MODEL_NAMES)}")
    for kind in systems:
        try:
            bench.check_system(kind)
        except ValueError as err:
            raise UsageError(str(err)) from None
    result = bench.run_decode(
        args.model, systems, batches=[1] if quick else batches, threads=threads,
        prompt_len=16 if quick else args.prompt_len, new_tokens=16 if quick else args.new_tokens,
        repeats=1 if quick else args.repeats, shape_models=() if quick else shape_models,
        shape_layers=layers)
    out_dir = Path(args.results) / "decode"
    stem = _stem(args, quick)
    _write_frame(pd.DataFrame(result["rows"]), out_dir, stem, {"model": args.model, "quick": quick})
    if result["fits"]:
        _write_frame(pd.DataFrame(result["fits"]), out_dir, f"{stem}-shape-fit",
                     {"note": "random-weight shape models; decode ms/token extrapolated to the "
                              "full depth by a least-squares line over the measured depths"})
    return 0


# generation.RUNTIMES, named here so that parsing arguments does not import torch
RUNTIME_NAMES = ("int8", "fp32", "hf")


def _sampling(args) -> dict:
    """stream_tokens' decoding arguments from generate / chat's flags; UsageError before
    anything is loaded."""
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                      ("--seed", args.seed)) if value is not None]
    if given and not args.sample:
        raise UsageError(f"{', '.join(given)} need --sample (decoding is greedy without it)")
    if args.temperature is not None and not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}")
    for flag, value in (("--top-k", args.top_k), ("--max-new-tokens", args.max_new_tokens),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    return {"do_sample": args.sample, "temperature": args.temperature or 1.0,
            "top_k": args.top_k, "seed": args.seed}


def _open_runner(args):
    """(runner, tokenizer, stop ids, stats label) of --model on --runtime."""
    import torch

    from workbench import formats, generation

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model, tok, kind = formats.open_model(args.model)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot open --model {args.model}: {err}") from None
    if tok is None:
        raise UsageError(f"{args.model} was saved without a tokenizer: generation needs one")
    try:
        runner, runtime = generation.prepare(model, args.runtime, n_threads=args.threads)
    except ValueError as err:
        raise UsageError(f"{args.model}: {err}") from None
    return runner, tok, generation.stop_ids(model, tok), f"{runtime} runtime, {kind}"


def _reply(runner, tok, ids, args, stop, sampling) -> str:
    """Stream the continuation of ids [1, T] to stdout, then the stats line to stderr; the text."""
    from workbench import generation

    stream = generation.stream_tokens(runner, ids, args.max_new_tokens, stop_ids=stop, **sampling)
    pieces = []
    for piece in generation.stream_text(tok, stream):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    print(f"{stream.stats.summary()} ({args.label})", file=sys.stderr, flush=True)
    return "".join(pieces)


def cmd_generate(args) -> int:
    """Stream one completion of --prompt (in the chat template when the tokenizer has one)."""
    from workbench import generation

    sampling = _sampling(args)
    runner, tok, stop, args.label = _open_runner(args)
    template = args.chat_template if args.chat_template is not None else bool(tok.chat_template)
    try:
        ids = generation.prompt_ids(tok, args.prompt, chat_template=template)
        _reply(runner, tok, ids, args, stop, sampling)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return 0


def cmd_chat(args) -> int:
    """A conversation in the tokenizer's chat template: each turn re-reads the whole history."""
    from workbench import generation

    sampling = _sampling(args)
    runner, tok, stop, args.label = _open_runner(args)
    if not tok.chat_template:
        raise UsageError(f"{args.model}: the tokenizer has no chat template")
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print("/reset clears the history, /exit (or end of input) ends the chat", file=sys.stderr)
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(start)
            continue
        if text:
            history.append({"role": "user", "content": text})
            try:
                reply = _reply(runner, tok, generation.prompt_ids(tok, history), args, stop, sampling)
            except ValueError as err:       # the history outgrew the model's positions
                history.pop()
                print(f"error: {err}; /reset starts over", file=sys.stderr)
                continue
            history.append({"role": "assistant", "content": reply})


def _point_label(config) -> str:
    """Directory name of a prune point: sparsegpt-0.5, wanda-2of4, ria-0.6-owl-dsnot."""
    level = (f"{config.sparsity:g}" if config.structure == "unstructured"
             else config.structure.replace(":", "of"))
    variant = [v for v in (config.layer_sparsity, config.refine) if v not in ("uniform", "none")]
    return "-".join([config.method, level, *variant])


def _save_pruned(out: Path, model_name: str, grid, calib, store, base) -> None:
    """Each pruned model of the grid as a Hugging Face checkpoint out/<point label>, from the
    cached pruned weights (sweep.pruned_model: recomputed only if they left the cache)."""
    from workbench import formats
    from workbench.sweep import pruned_model

    for config in grid:
        model, tok, _ = pruned_model(model_name, config, calib, store, base=base)
        formats.to_hf(model, tok, out / _point_label(config),
                      recipe=[{"step": "load", "config": {"model": model_name}},
                              {"step": "prune", "config": config.to_dict()}])
        del model
    print(f"saved {len(grid)} pruned models under {out}")


def _save_students(out: Path, model_name: str, base, tokenizer, result, config) -> None:
    """Each recovered student as a Hugging Face checkpoint out/<method>-<sparsity>-seed<seed>:
    the base architecture with the student's cached weights (result.weights, keyed
    "<method>@<sparsity>/seed<seed>"), which run_recovery wrote or read; nothing is trained."""
    import copy

    from workbench import formats
    from workbench.checkpoint import load_weights
    from workbench.pruning import PruneConfig

    for label, path in result.weights.items():
        point, seed = label.rsplit("/seed", 1)
        method, sparsity = point.rsplit("@", 1)
        student = copy.deepcopy(base)
        if not load_weights(student, path):
            raise RuntimeError(f"the cached weights of {label} ({path}) do not load")
        steps = [{"step": "load", "config": {"model": model_name}},
                 {"step": "sft", "config": {**config.sft.to_dict(), "seed": int(seed)}},
                 {"step": "prune", "config": PruneConfig(method=config.prune_method,
                                                         sparsity=float(sparsity)).to_dict()},
                 {"step": "distill", "config": {**config.distill_config(method, int(seed)).to_dict(),
                                                "method": method}}]
        formats.to_hf(student, tokenizer, out / f"{method}-{sparsity}-seed{seed}", recipe=steps)
        del student
    print(f"saved {len(result.weights)} students under {out}")


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
    pr = sub.add_parser("prune", help="prune with a grid of configs and evaluate each point")
    pr.add_argument("--model", default="smollm2-135m")
    pr.add_argument("--methods", default="sparsegpt,wanda,magnitude", help="comma list: sparsegpt, wanda, magnitude, ria")
    pr.add_argument("--sparsities", default="0.5", help="comma list, for unstructured")
    pr.add_argument("--structures", default="unstructured", help="comma list: unstructured, 2:4, 4:8")
    pr.add_argument("--layer-sparsities", default="uniform",
                    help="comma list: uniform, owl (OWL's per-block sparsities)")
    pr.add_argument("--refines", default="none", help="comma list: none, dsnot")
    pr.add_argument("--tasks", default="ppl")
    pr.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    pr.add_argument("--seqlen", type=int, default=512)
    pr.add_argument("--quick", action="store_true")
    pr.add_argument("--name", default=None, help="stem of the written table")
    pr.add_argument("--results", default="results")
    pr.add_argument("--save", default=None, metavar="DIR",
                    help="also write each pruned model as a Hugging Face checkpoint DIR/<point> "
                         "(method-sparsity[-owl][-dsnot], N:M as 2of4), from the cached pruned "
                         "weights; a point whose weights left the cache is pruned again")
    pr.set_defaults(func=cmd_prune)
    qu = sub.add_parser("quant", help="W8A8 perplexity across smoothing, activations, sparsity")
    qu.add_argument("--model", default="smollm2-135m")
    qu.add_argument("--sparsities", default="0,0.5", help="SparseGPT sparsity levels")
    qu.add_argument("--smoothings", default="none,smoothquant:0.5,smoothquant:0.8,lae")
    qu.add_argument("--activations", default="per_token,per_tensor")
    qu.add_argument("--nsamples", type=int, default=128)
    qu.add_argument("--seqlen", type=int, default=512)
    qu.add_argument("--max-windows", type=int, default=16, help="perplexity windows of seqlen")
    qu.add_argument("--quick", action="store_true")
    qu.add_argument("--name", default=None)
    qu.add_argument("--results", default="results")
    qu.set_defaults(func=cmd_quant)
    ou = sub.add_parser("outliers", help="outlier-layer ranking, with and without the first token")
    ou.add_argument("--model", default="smollm2-135m")
    ou.add_argument("--metric", default="range", choices=["range", "absmax", "p99", "n_outliers"])
    ou.add_argument("--k", type=int, default=10)
    ou.add_argument("--nsamples", type=int, default=32, help="calibration windows to profile")
    ou.add_argument("--seqlen", type=int, default=512)
    ou.add_argument("--measure", action="store_true", help="also measure one-layer W8A8 loss deltas")
    ou.add_argument("--measure-samples", type=int, default=4)
    ou.add_argument("--activations", default="per_tensor", help="activation quantizer when measuring")
    ou.add_argument("--quick", action="store_true")
    ou.add_argument("--name", default=None)
    ou.add_argument("--results", default="results")
    ou.set_defaults(func=cmd_outliers)
    di = sub.add_parser("distill", help="SFT teacher, SparseGPT, CE vs SquareHead+CE recovery, "
                                         "W8A8 + pack, scored on the packed model")
    di.add_argument("--model", default="smollm2-135m")
    di.add_argument("--size", default="reproduce", choices=RECOVERY_SIZES,
                    help="RecoveryConfig.quick / reproduce / the full defaults / experiments (3 seeds)")
    di.add_argument("--sparsities", default=None, help="comma list of SparseGPT sparsities")
    di.add_argument("--steps", type=int, default=None, help="recovery step cap (each method)")
    di.add_argument("--lr", type=float, default=None, help="recovery learning rate")
    di.add_argument("--sft-steps", type=int, default=None, help="teacher SFT step cap")
    di.add_argument("--sft-lr", type=float, default=None)
    di.add_argument("--batch-size", type=int, default=None, help="SFT and recovery batch")
    di.add_argument("--seeds", default=None, help="comma list: data-order seeds of SFT and recovery")
    di.add_argument("--train-n", type=int, default=None, help="arith one-step train examples")
    di.add_argument("--dev-n", type=int, default=None, help="arith one-step dev items")
    di.add_argument("--nsamples", type=int, default=None, help="calibration windows")
    di.add_argument("--seqlen", type=int, default=None, help="calibration window length")
    di.add_argument("--eval-n", type=int, default=None, help="arith one-step test items")
    di.add_argument("--max-windows", type=int, default=None, help="perplexity windows (0: all)")
    di.add_argument("--quick", action="store_true", help="a smoke run of the whole pipeline")
    di.add_argument("--name", default=None)
    di.add_argument("--results", default="results")
    di.add_argument("--save", default=None, metavar="DIR",
                    help="also write each recovered student as a Hugging Face checkpoint "
                         "DIR/<method>-<sparsity>-seed<seed> (its cached weights; nothing is "
                         "trained again)")
    di.set_defaults(func=cmd_distill)
    for name, func, text in (("generate", cmd_generate, "stream one completion of --prompt"),
                             ("chat", cmd_chat, "an interactive chat in the model's template")):
        ge = sub.add_parser(name, help=text)
        ge.add_argument("--model", default="smollm2-135m",
                        help="packed dir, Hugging Face dir, .gguf, compressed-tensors dir, or an "
                             "embedded name")
        if name == "generate":
            ge.add_argument("--prompt", required=True)
            ge.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                            help="wrap the prompt in the chat template (default: when there is one)")
        else:
            ge.add_argument("--system", default=None, help="a system message opening the chat")
        ge.add_argument("--max-new-tokens", type=int, default=64 if name == "generate" else 256)
        ge.add_argument("--runtime", default=None, choices=RUNTIME_NAMES,
                        help="int8 (pack: the default), fp32 (same loop, FP32 linears), hf "
                             "(transformers); a packed dir runs as packed")
        ge.add_argument("--sample", action="store_true", help="sample instead of greedy")
        ge.add_argument("--temperature", type=float, default=None, help="with --sample (1.0)")
        ge.add_argument("--top-k", type=int, default=None, help="with --sample: the k most likely")
        ge.add_argument("--seed", type=int, default=None, help="with --sample: of each reply")
        ge.add_argument("--threads", type=int, default=None,
                        help="threads (default: $WORKBENCH_NUM_THREADS, else torch's)")
        ge.set_defaults(func=func)
    be = sub.add_parser("bench", help="speed: decode tokens/s of whole models, or the kernels")
    be.add_argument("what", choices=("decode", "kernels", "agreement"))
    be.add_argument("--model", default="smollm2-135m")
    be.add_argument("--systems", default=None, help="comma list (default: all; see workbench.bench)")
    be.add_argument("--threads", default="1,2")
    be.add_argument("--batches", default="1,8")
    be.add_argument("--prompt-len", type=int, default=128)
    be.add_argument("--new-tokens", type=int, default=128)
    be.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    be.add_argument("--shape-layers", default="2,4,8",
                    help="decoder layers at which FP32 / dense INT8 shape models are timed for "
                         "the depth fit")
    be.add_argument("--shape-models", default=",".join(SHAPE_MODEL_NAMES),
                    help="random-weight shape models ('' to skip)")
    be.add_argument("--quick", action="store_true")
    be.add_argument("--name", default=None)
    be.add_argument("--results", default="results")
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
