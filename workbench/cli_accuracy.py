"""The accuracy commands: eval (scores of one model), prune (a grid of pruned models, each
scored), quant (W8A8 perplexity) and outliers (which layers INT8 activations hurt).

Each builds its run_configs config (quick() with --quick or WORKBENCH_QUICK=1, else the
defaults), replaces the fields given as flags, then calls the library; every point is cached.
"""

from __future__ import annotations

from pathlib import Path

from workbench.cli_common import (
    UsageError,
    executor_from,
    float_list,
    names,
    quick_mode,
    stem,
    with_flags,
    write_frame,
)
from workbench.run_configs import (
    EVAL_TASKS,
    EvalConfig,
    OutlierConfig,
    PruneGridConfig,
    W8A8Config,
    task_settings,
)


def check_tasks(spec: str) -> list[str]:
    """The task names of a --tasks comma list; UsageError for an unknown one."""
    tasks = list(names(spec))
    try:
        task_settings(tasks)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return tasks


def eval_config(args, quick: bool) -> EvalConfig:
    tasks = check_tasks(args.tasks) if args.tasks is not None else None
    make = EvalConfig.quick if quick else EvalConfig.full
    return make() if tasks is None else make(tasks)


def evaluate_rows(store, model, tokenizer, model_fp: str, config: EvalConfig,
                  refresh: bool) -> tuple[list[dict], dict]:
    """(table rows, records) for each task of config; each task result is cached on its own."""
    from workbench.stats import wilson_interval
    from workbench.sweep import evaluate_cached

    rows, records = [], {}
    for task, settings in config.tasks.items():
        record, cached = evaluate_cached(store, model, tokenizer, model_fp, task, settings,
                                         refresh=refresh)
        records[task] = record
        lo = hi = None
        if record["metric"] == "accuracy":      # 95% Wilson interval
            lo, hi = wilson_interval(record["detail"]["correct"], record["detail"]["n"])
        rows.append({"task": task, "description": EVAL_TASKS[task][0], "metric": record["metric"],
                     "value": record["value"], "acc_lo": lo, "acc_hi": hi,
                     "n": record["detail"].get("n", record["detail"].get("n_tokens")),
                     "cached": cached})
    return rows, records


def cmd_eval(args) -> int:
    import pandas as pd

    from workbench import cache, load_model

    quick = quick_mode(args.quick)
    config = eval_config(args, quick)
    model, tokenizer = load_model(args.model)
    model_fp = cache.fingerprint_model(model)
    rows, records = evaluate_rows(cache.ResultCache(), model, tokenizer, model_fp, config,
                                  args.refresh)
    frame = pd.DataFrame(rows)
    print(f"model: {args.model}  fingerprint: {model_fp[:16]}  quick: {quick}")
    print(frame.to_string(index=False))
    out_dir = Path(args.results) / "eval"
    name = stem(args, quick)
    payload = {"model": args.model, "model_fingerprint": model_fp, "quick": quick,
               "tasks": records, "provenance": cache.provenance()}
    cache.write_json_atomic(out_dir / f"{name}.json", payload)
    cache.write_text_atomic(out_dir / f"{name}.md", frame.to_markdown(index=False) + "\n")
    print(f"wrote {out_dir / (name + '.json')} and .md")
    return 0


def prune_config(args, quick: bool) -> PruneGridConfig:
    """PruneGridConfig of the prune arguments; UsageError before anything is loaded."""
    base = PruneGridConfig.quick() if quick else PruneGridConfig()
    tasks = task_settings(check_tasks(args.tasks), quick) if args.tasks is not None else None
    return with_flags(base, methods=names(args.methods),
                      sparsities=float_list(args.sparsities, "--sparsities"),
                      structures=names(args.structures),
                      layer_sparsities=names(args.layer_sparsities), refines=names(args.refines),
                      nsamples=args.nsamples, seqlen=args.seqlen, tasks=tasks)


def cmd_prune(args) -> int:
    """Grid of pruning configs; each point: load, prune, evaluate. Every row is the sweep's
    own cached point (sweep.prune_point), so a notebook asking for it reads this run's."""
    import pandas as pd

    from workbench import cache, data, load_model
    from workbench.sweep import prune_sweep

    quick = quick_mode(args.quick)
    config = prune_config(args, quick)
    executor = executor_from(args)
    try:
        grid = config.grid()
    except ValueError as err:
        raise UsageError(str(err)) from None
    store = cache.ResultCache()
    base = load_model(args.model)
    calib = data.calibration_set(base[1], "pydoc", nsamples=config.nsamples, seqlen=config.seqlen)
    shown = []

    def show(row):
        shown.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(shown) == 1), flush=True)

    frame = prune_sweep(args.model, grid, calib, config.tasks, store, on_row=show,
                        executor=executor, base=base)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")   # NaN -> null
    out_dir = Path(args.results) / "pruning"
    name = stem(args, quick)
    cache.write_text_atomic(out_dir / f"{name}.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out_dir / f"{name}.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    cache.write_json_atomic(out_dir / f"{name}.json", {
        "model": args.model, "base_fingerprint": cache.fingerprint_model(base[0]),
        "calib_fingerprint": cache.fingerprint_data(calib), "nsamples": config.nsamples,
        "seqlen": config.seqlen, "tasks": config.tasks, "rows": rows,
        "provenance": cache.provenance()})
    print(f"wrote {out_dir / name}.{{csv,md,json}}")
    if args.save:
        from workbench.cli_save import save_pruned

        save_pruned(Path(args.save), args.model, grid, calib, store, base)
    return 0


def quant_config(args, quick: bool) -> W8A8Config:
    base = W8A8Config.quick() if quick else W8A8Config()
    return with_flags(base, sparsities=float_list(args.sparsities, "--sparsities"),
                      smoothings=names(args.smoothings), activations=names(args.activations),
                      nsamples=args.nsamples, seqlen=args.seqlen, max_windows=args.max_windows)


def cmd_quant(args) -> int:
    """W8A8 perplexity: smoothing x activation granularity x SparseGPT sparsity."""
    from workbench import data
    from workbench.models import load_model
    from workbench.sweep import w8a8_table

    quick = quick_mode(args.quick)
    config = quant_config(args, quick)
    executor = executor_from(args)
    _, tok = load_model(args.model)
    calib = data.calibration_set(tok, "pydoc", nsamples=config.nsamples, seqlen=config.seqlen)
    corpus = data.perplexity_corpus("pydoc", "eval")
    frame = w8a8_table(args.model, calib, corpus, sparsities=list(config.sparsities),
                       smoothings=list(config.smoothings), activations=list(config.activations),
                       max_windows=config.max_windows, executor=executor)
    wide = frame.pivot_table(index=["smoothing", "activations"], columns="sparsity",
                             values="perplexity", sort=False).reset_index()
    wide.columns = [c if isinstance(c, str) else f"ppl @ {c:.0%} sparse" for c in wide.columns]
    print(wide.to_string(index=False))
    write_frame(wide, Path(args.results) / "w8a8", stem(args, quick),
                {"model": args.model, "max_windows": config.max_windows, "seqlen": config.seqlen,
                 "calib_nsamples": int(calib.shape[0]), "weights": "per_channel"})
    return 0


def outlier_config(args, quick: bool) -> OutlierConfig:
    base = OutlierConfig.quick() if quick else OutlierConfig()
    return with_flags(base, metric=args.metric, k=args.k, nsamples=args.nsamples,
                      seqlen=args.seqlen, measure_samples=args.measure_samples,
                      activations=args.activations)


def cmd_outliers(args) -> int:
    """Top-k outlier layers by input range (with and without the first token), the measured
    one-layer-at-a-time W8A8 sensitivity, and how the two rankings agree."""
    from workbench import cache, data
    from workbench.models import load_model
    from workbench.outliers import cached_layer_sensitivity, compare_rankings, rank_outlier_layers
    from workbench.profiling import cached_profile
    from workbench.quant import QuantConfig

    quick = quick_mode(args.quick)
    config = outlier_config(args, quick)
    try:
        quant = QuantConfig(activations=config.activations) if args.measure else None
    except ValueError as err:
        raise UsageError(f"--activations: {err}") from None
    k, metric = config.k, config.metric
    model, tok = load_model(args.model)
    model_fp = cache.fingerprint_model(model)
    store = cache.ResultCache()
    calib = data.calibration_set(tok, "pydoc", nsamples=config.nsamples, seqlen=config.seqlen)
    out_dir = Path(args.results) / "outliers"
    name = stem(args, quick)
    rankings, summary = {}, {"model": args.model, "calib_nsamples": int(calib.shape[0]),
                             "seqlen": config.seqlen, "metric": metric, "k": k}
    for first in (True, False):
        profile = cached_profile(model, calib, include_first_token=first, model_fp=model_fp,
                                 store=store)
        ranking = rank_outlier_layers(profile, k=k, metric=metric)
        label = "with_first_token" if first else "without_first_token"
        rankings[label] = ranking
        summary[f"ratio_top_to_kth_{label}"] = ranking.ratio_top_to_kth
        top = ranking.frame.head(k)
        print(f"top-{k} by {metric}, {label.replace('_', ' ')}: "
              f"largest/{k}th = {ranking.ratio_top_to_kth:.1f}x")
        print(top.to_string(index=False))
        write_frame(top, out_dir, f"{name}-top{k}-{label}", summary)
    if args.measure:
        measured = cached_layer_sensitivity(model, calib[: config.measure_samples], quant,
                                            model_fp=model_fp, store=store)
        write_frame(measured.frame, out_dir, f"{name}-measured-{config.activations}",
                    {**summary, "activations": config.activations,
                     "baseline_loss": measured.baseline_loss})
        for label, ranking in rankings.items():
            agreement = compare_rankings(ranking, measured, k=k)
            summary[f"agreement_{label}"] = agreement
            print(f"heuristic ({label}) vs measured: top-{k} overlap {agreement['overlap']}, "
                  f"Spearman {agreement['spearman']:.3f}")
        cache.write_json_atomic(out_dir / f"{name}-summary.json", {**summary, "provenance": cache.provenance()})
    return 0
