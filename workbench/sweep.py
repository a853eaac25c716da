"""Grids of compression configs on one model -> cached records -> a pandas DataFrame.

A pruned model is expensive (SparseGPT on the embedded model takes minutes), so its weights are
cached as safetensors under $WORKBENCH_CACHE/models/pruned/, keyed by the prune config, the base
model's fingerprint and the calibration data's fingerprint. Every evaluated grid point is a
ResultCache record; an interrupted sweep resumes without recomputing finished points.

    grid = prune_grid({"sparsegpt": [0.5, 0.7], "magnitude": [0.5]}, structures=("2:4",))
    frame = prune_sweep("smollm2-135m", grid, calib, {"ppl": {"seqlen": 512, "max_windows": 16}})

Evaluation records (`evaluate_cached`) have the `eval` CLI's keys: a model scored once by the
CLI, a sweep or the recovery driver is never scored again with the same settings.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from dataclasses import dataclass, field

import torch

from workbench import cache
from workbench.executor import ExecutorConfig, Point, as_executor, run_points, worker_model
from workbench.models import load_model
from workbench.points import Lazy, cached_model
from workbench.pruning import PruneConfig, prune_
from workbench.stats import add_intervals

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def base_fingerprint(model: torch.nn.Module) -> str:
    """cache.fingerprint_model, remembered per model object until one of its tensors is
    changed in place (torch counts in-place writes in each tensor's _version): a sweep or an
    explorer asks for its base model's fingerprint at every point, and hashing 0.5 GB of
    weights takes a second or two."""
    versions = tuple(t._version for t in model.state_dict().values())
    seen = _FINGERPRINTS.get(model)
    if seen is None or seen[0] != versions:
        seen = (versions, cache.fingerprint_model(model))
        _FINGERPRINTS[model] = seen
    return seen[1]


def pruned_model(model_name: str, config: PruneConfig | None, calib: torch.Tensor,
                 store: cache.ResultCache | None = None, base=None):
    """(model, tokenizer, summary) pruned by `config` (None or sparsity 0: the dense model).

    The pruned weights are a cached model point (workbench.points); summary holds the prune
    report without masks. base: an already loaded (model, tokenizer) of `model_name` to copy
    instead of loading it again (it is never modified).
    """
    store = store or cache.ResultCache()
    model, tok = base if base else load_model(model_name)
    if config is None or (config.structure == "unstructured" and config.sparsity == 0):
        return (copy.deepcopy(model) if base else model), tok, {"sparsity": 0.0, "seconds": 0.0,
                                                                "config": None}
    pruned, summary, _ = cached_model(
        store, "prune-weights", {"prune": config.to_dict()}, model,
        lambda m, _: prune_(m, calib, config).to_dict(), model_fp=base_fingerprint(model),
        data_fp=cache.fingerprint_data(calib), kind="pruned")
    return pruned, tok, summary


@dataclass(frozen=True)
class SmoothingChoice:
    """A row of the smoothing axis: "none", "smoothquant:0.5", "lae" ..."""
    label: str

    def config(self):
        from workbench.smoothing import SmoothConfig

        if self.label == "none":
            return None
        method, _, alpha = self.label.partition(":")
        return SmoothConfig(method=method, alpha=float(alpha) if alpha else 0.5)


_PREPARED: dict = {}       # the last (pruned model, tokenizer, activation profile) w8a8_point used


def _prepared(model_name, prune, calib, profile_samples, store, base):
    """The pruned model of a W8A8 row and its activation profile (computed on first need),
    kept for the next row with the same pruning: a table has a dozen rows per sparsity."""
    key = (id(base[0]), base_fingerprint(base[0]), cache.hash_json(prune.to_dict() if prune else None),
           cache.fingerprint_data(calib), profile_samples)
    if key not in _PREPARED:
        _PREPARED.clear()
        model, tok, _ = pruned_model(model_name, prune, calib, store, base=base)
        _PREPARED[key] = {"model": model, "tok": tok, "profile": None}
    return _PREPARED[key]


def w8a8_point(model_name: str, prune: PruneConfig | None, smoothing: str, activations: str,
               calib: torch.Tensor, corpus, seqlen: int = 512, max_windows: int | None = 16,
               profile_samples: int = 32, store: cache.ResultCache | None = None, base=None,
               compute: bool = True) -> dict | None:
    """One W8A8 perplexity record: prune (cached weights), smooth (smoothing: "fp32" for the
    unquantized row, "none", "smoothquant:0.5", "lae" ...), fake-quantize W8A8 with per-channel
    weights and `activations` granularity, score. compute=False: None when not cached."""
    store = store or cache.ResultCache()
    base = base or load_model(model_name)
    point = {"step": "w8a8-ppl", "prune": prune.to_dict() if prune else None,
             "smoothing": smoothing, "activations": activations, "seqlen": seqlen,
             "max_windows": max_windows, "profile_samples": profile_samples}
    model_fp = base_fingerprint(base[0])
    data_fp = cache.fingerprint_data([cache.fingerprint_data(calib), corpus.fingerprint])
    if not compute:
        return store.get(store.key(point, model_fp=model_fp, data_fp=data_fp))

    def compute_record() -> dict:
        from workbench.evaluate import perplexity
        from workbench.profiling import profile_activations
        from workbench.quant import QuantConfig, quantize_
        from workbench.smoothing import smooth_

        prepared = _prepared(model_name, prune, calib, profile_samples, store, base)
        m = copy.deepcopy(prepared["model"])
        if smoothing != "fp32":
            choice = SmoothingChoice(smoothing).config()
            if choice is not None:
                if prepared["profile"] is None:
                    prepared["profile"] = profile_activations(prepared["model"],
                                                              calib[:profile_samples])
                smooth_(m, prepared["profile"], choice)
            static = activations == "per_tensor_static"
            quantize_(m, QuantConfig(activations=activations),
                      calib=calib[:profile_samples] if static else None)
        res = perplexity(m, prepared["tok"], corpus, seqlen=seqlen, max_windows=max_windows)
        return {**point, "perplexity": res.perplexity, "n_tokens": res.n_tokens}

    return store.get_or_compute(point, compute_record, model_fp=model_fp, data_fp=data_fp)


def _w8a8_point_task(model_name: str, *args, **kwargs) -> dict:
    """w8a8_point in a worker process, on the worker's own copy of the base model."""
    return w8a8_point(model_name, *args, base=worker_model(model_name), **kwargs)


def w8a8_table(model_name: str, calib: torch.Tensor, corpus, sparsities=(0.0, 0.5),
               smoothings=("none", "smoothquant:0.5", "smoothquant:0.8", "lae"),
               activations=("per_token", "per_tensor"), prune_method: str = "sparsegpt",
               seqlen: int = 512, max_windows: int | None = 16, profile_samples: int = 32,
               store: cache.ResultCache | None = None,
               executor: ExecutorConfig | str | None = None):
    """Perplexity of W8A8 (per-channel weights) for smoothing x activation granularity x sparsity,
    with an FP32 row per sparsity. Returns a DataFrame; every point (w8a8_point) is cached and
    runs where executor says (see prune_sweep)."""
    import pandas as pd

    store = store or cache.ResultCache()
    base = load_model(model_name)
    labels, points = [], []
    for sparsity in sparsities:
        prune = PruneConfig(method=prune_method, sparsity=sparsity) if sparsity else None
        for smoothing in ("fp32", *smoothings):
            for act in (("-",) if smoothing == "fp32" else activations):
                labels.append({"sparsity": sparsity, "smoothing": smoothing, "activations": act})
                points.append(Point(
                    label=f"w8a8 {sparsity:g} {smoothing} {act}", fn=_w8a8_point_task,
                    args=(model_name, prune, smoothing, act, calib, corpus),
                    kwargs={"seqlen": seqlen, "max_windows": max_windows,
                            "profile_samples": profile_samples, "store": store}))
    if as_executor(executor).kind == "local":
        points = [dataclasses.replace(p, fn=w8a8_point, kwargs={**p.kwargs, "base": base})
                  for p in points]
    records = run_points(points, executor, store=store, desc="W8A8 table",
                         lookup=lambda p: w8a8_point(*p.args, **{**p.kwargs, "base": base},
                                                     compute=False))
    _PREPARED.clear()
    return pd.DataFrame([{**label, "perplexity": record["perplexity"]}
                         for label, record in zip(labels, records, strict=True)])


def selective_w8a8_table(model_name: str, calib: torch.Tensor, corpus, order: list[str],
                         ks=(0, 1, 3, 10), sparsity: float = 0.0, smoothing: str = "none",
                         activations: str = "per_tensor", label: str = "",
                         prune_method: str = "sparsegpt", seqlen: int = 512,
                         max_windows: int | None = 16, profile_samples: int = 32,
                         store: cache.ResultCache | None = None):
    """W8A8 perplexity when the first k layers of `order` (e.g. an outlier ranking) stay FP32,
    for each k in ks. k = 0 is the fully quantized model: the same cached point as w8a8_table's.
    Returns a DataFrame (k, label, kept, perplexity); every point is cached."""
    import pandas as pd

    from workbench.evaluate import perplexity
    from workbench.profiling import profile_activations
    from workbench.quant import QuantConfig, quantize_
    from workbench.smoothing import smooth_

    if any(k < 0 or k > len(order) for k in ks):
        raise ValueError(f"every k must lie in [0, {len(order)}], got {list(ks)}")
    store = store or cache.ResultCache()
    base = load_model(model_name)
    base_fp = cache.fingerprint_model(base[0])
    data_fp = cache.fingerprint_data([cache.fingerprint_data(calib), corpus.fingerprint])
    prune = PruneConfig(method=prune_method, sparsity=sparsity) if sparsity else None
    model = tok = profile = None
    rows = []
    for k in ks:
        point = {"step": "w8a8-ppl", "prune": prune.to_dict() if prune else None,
                 "smoothing": smoothing, "activations": activations, "seqlen": seqlen,
                 "max_windows": max_windows, "profile_samples": profile_samples}
        if k:   # absent for k = 0, so that point is w8a8_table's
            point["keep_fp32"] = list(order[:k])

        def compute(point=point, k=k):
            nonlocal model, tok, profile
            if model is None:
                model, tok, _ = pruned_model(model_name, prune, calib, store, base=base)
            m = copy.deepcopy(model)
            choice = SmoothingChoice(smoothing).config()
            if choice is not None:
                if profile is None:
                    profile = profile_activations(model, calib[:profile_samples])
                smooth_(m, profile, choice)
            quantize_(m, QuantConfig(activations=activations), plan=order[:k],
                      calib=calib[:profile_samples] if activations == "per_tensor_static" else None)
            res = perplexity(m, tok, corpus, seqlen=seqlen, max_windows=max_windows)
            return {**point, "perplexity": res.perplexity, "n_tokens": res.n_tokens}

        record = store.get_or_compute(point, compute, model_fp=base_fp, data_fp=data_fp)
        rows.append({"k": k, "label": label, "kept": ", ".join(order[:k]),
                     "perplexity": record["perplexity"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- scored models

def task_inputs(task: str, settings: dict):
    """The corpus or task a score is computed on (cheap to build; its fingerprint keys the cache).
    task: "ppl" (pydoc eval split), "arith" / "arith2" (settings["kind"], settings["n"] test
    items) or "gsm8k" (settings["n"] test items)."""
    from workbench import data

    if task == "ppl":
        return data.perplexity_corpus("pydoc", "eval")
    if task in ("arith", "arith2"):
        return data.arith_task(settings["kind"], "test", n=settings["n"])
    if task == "gsm8k":
        return data.gsm8k("test", n=settings["n"])
    raise ValueError(f"unknown task {task!r}; choose from ppl, arith, arith2, gsm8k")


def evaluate_cached(store: cache.ResultCache, model, tokenizer, model_fp: str, task: str,
                    settings: dict, refresh: bool = False) -> tuple[dict, bool]:
    """(record, cached): the score of the model with fingerprint model_fp on task. The record
    is {"metric", "value", "detail", "config", "data_fingerprint"}; the CLI, the sweep and the
    recovery driver all score through here. model may be a packed model (evaluate.*) or a
    points.Lazy of one, built only if the score is not cached."""
    from workbench import evaluate

    config = {"step": "eval", "task": task, "settings": settings}
    inputs = task_inputs(task, settings)

    def compute() -> dict:
        m = model.get() if isinstance(model, Lazy) else model
        if task == "ppl":
            r = evaluate.perplexity(m, tokenizer, inputs, seqlen=settings["seqlen"],
                                    max_windows=settings["max_windows"])
            result = {"metric": "perplexity", "value": r.perplexity, "detail": r.to_dict()}
        else:
            r = evaluate.task_accuracy(m, tokenizer, inputs, fewshot=settings["fewshot"])
            result = {"metric": "accuracy", "value": r.accuracy, "detail": r.to_dict()}
        return {**result, "config": config, "data_fingerprint": inputs.fingerprint}

    return store.fetch(config, compute, model_fp=model_fp, data_fp=inputs.fingerprint,
                       refresh=refresh)


# ---------------------------------------------------------------- the sparsity sweep

@dataclass(frozen=True)
class SweepConfig:
    """The sparsity sweep of notebooks 02 and 06: per-method unstructured sparsities, N:M
    structures, calibration windows and scores ({task: settings}, see evaluate_cached).

    The paper's grid is 13 pruned points (N:M for SparseGPT and Wanda), 8 calibration windows
    of 512 tokens (SparseGPT's two block passes per layer over them dominate its ~40-50 s a
    point), and each point's scores about 27 s (8 perplexity windows, 16 three-shot arith
    items); the beyond-the-paper grid adds 48 perplexity-only points. Notebook 02 took 67 min
    on a fresh cache on 2 cores (2026-12-03, about 20 of them sharing the CPU), over the
    45 minutes the paper's grid alone was sized for. `quick()` is the smoke-test grid of
    `make test`."""
    levels: dict = field(default_factory=lambda: {
        "sparsegpt": [0.5, 0.7, 0.9], "wanda": [0.5, 0.7, 0.9],
        "magnitude": [0.5, 0.7, 0.9]})
    structures: tuple[str, ...] = ("2:4", "4:8")
    nsamples: int = 8
    seqlen: int = 512
    tasks: dict = field(default_factory=lambda: {
        "ppl": {"seqlen": 512, "max_windows": 8},
        "arith": {"kind": "one_step", "n": 16, "fewshot": 3}})
    # N:M structures are run for these methods only (all when None)
    structure_methods: tuple[str, ...] | None = ("sparsegpt", "wanda")
    # Beyond the paper: each method uniform and with OWL's layer sparsities, each with and
    # without DSnoT, at these sparsities; scored on beyond_tasks (perplexity: the papers' metric)
    beyond_methods: tuple[str, ...] = ("sparsegpt", "wanda", "ria")
    beyond_levels: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)
    beyond_tasks: dict = field(default_factory=lambda: {"ppl": {"seqlen": 512, "max_windows": 8}})

    @classmethod
    def quick(cls) -> SweepConfig:
        """Minutes on a fresh cache: SparseGPT and magnitude at 50%, magnitude 2:4, 4
        perplexity windows and 8 arith items; beyond the paper, magnitude at 50% in its four
        variants."""
        return cls(levels={"sparsegpt": [0.5], "magnitude": [0.5]},
                   structures=("2:4",), structure_methods=("magnitude",), nsamples=8,
                   tasks={"ppl": {"seqlen": 512, "max_windows": 4},
                          "arith": {"kind": "one_step", "n": 8, "fewshot": 3}},
                   beyond_methods=("magnitude",), beyond_levels=(0.5,),
                   beyond_tasks={"ppl": {"seqlen": 512, "max_windows": 4}})

    def grid(self) -> list[PruneConfig]:
        grid = prune_grid(self.levels)
        methods = self.structure_methods or tuple(self.levels)
        return grid + prune_grid({m: [] for m in methods}, self.structures)

    def beyond_grid(self) -> list[PruneConfig]:
        """Every beyond_method x beyond_level x {uniform, OWL} x {no refinement, DSnoT}."""
        return variant_grid(self.beyond_methods, self.beyond_levels)

    def calibration(self, tokenizer) -> torch.Tensor:
        from workbench import data

        return data.calibration_set(tokenizer, "pydoc", nsamples=self.nsamples, seqlen=self.seqlen)

    def to_dict(self) -> dict:
        return {"levels": self.levels, "structures": list(self.structures),
                "structure_methods": list(self.structure_methods or self.levels),
                "nsamples": self.nsamples, "seqlen": self.seqlen, "tasks": self.tasks,
                "beyond_methods": list(self.beyond_methods),
                "beyond_levels": list(self.beyond_levels), "beyond_tasks": self.beyond_tasks}

    @classmethod
    def from_dict(cls, d: dict) -> SweepConfig:
        """to_dict's inverse (its lists back to tuples); an unknown key is a ValueError. The
        CLI's prune command has its own sizes: run_configs.PruneGridConfig."""
        unknown = set(d) - set(cls().to_dict())
        if unknown:
            raise ValueError(f"unknown SweepConfig keys: {', '.join(sorted(unknown))}")
        tuples = ("structures", "structure_methods", "beyond_methods", "beyond_levels")
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in d.items()})


def prune_grid(levels: dict[str, list[float]], structures=()) -> list[PruneConfig]:
    """PruneConfigs: each method at its unstructured sparsities, then at each N:M structure.
    levels: {"sparsegpt": [0.5, 0.7], "magnitude": [0.1, 0.3]}; a method with an empty list
    still gets the structures. Sparsity 0 is left out: the dense row is always there."""
    grid = [PruneConfig(method=m, sparsity=float(s)) for m, ss in levels.items() for s in ss if s]
    grid += [PruneConfig(method=m, structure=st) for m in levels for st in structures]
    return grid


VARIANTS = (("uniform", "none"), ("owl", "none"), ("uniform", "dsnot"), ("owl", "dsnot"))


def variant_grid(methods, levels, variants=VARIANTS) -> list[PruneConfig]:
    """PruneConfigs of each method at each unstructured level in each (layer_sparsity, refine)
    variant: uniform, OWL, DSnoT, OWL + DSnoT by default."""
    return [PruneConfig(method=m, sparsity=float(s), layer_sparsity=ls, refine=rf)
            for m in methods for s in levels for ls, rf in variants]


def _scored_model(model_name: str, config: PruneConfig | None, calib: torch.Tensor,
                  store: cache.ResultCache, base, quant=None):
    """(model, tokenizer, prune summary): pruned (cached weights), then W8A8 fake-quantized
    when quant (a QuantConfig) is given."""
    model, tok, summary = pruned_model(model_name, config, calib, store, base=base)
    if quant is not None:
        from workbench.quant import quantize_

        quantize_(model, quant, calib=calib[:32] if quant.static else None)
    model.eval()
    return model, tok, summary


def prune_point(model_name: str, config: PruneConfig | None, calib: torch.Tensor, tasks: dict,
                store: cache.ResultCache | None = None, base=None, quant=None,
                compute: bool = True) -> dict | None:
    """One row of the sparsity sweep: prune (or read the cached weights), optionally W8A8
    fake-quantize (quant: a QuantConfig), score on every task of tasks ({task: settings}).
    config None is the dense model. The whole row is cached, and so is each score; the
    `prune` CLI asks for the same rows. Accuracy tasks get {task}_lo / {task}_hi: the 95%
    Wilson interval over their settings["n"] items. compute=False: None when not cached."""
    store = store or cache.ResultCache()
    base = base or load_model(model_name)
    base_fp = base_fingerprint(base[0])
    calib_fp = cache.fingerprint_data(calib)
    qdict = quant.to_dict() if quant is not None else None
    spec = {"step": "prune-sweep", "prune": config.to_dict() if config else None,
            "tasks": tasks, "quant": qdict}
    if not compute:
        record = store.get(store.key(spec, model_fp=base_fp, data_fp=calib_fp))
        return None if record is None else _sweep_row(config, quant, tasks, record)

    def compute_record() -> dict:
        model, tok, summary = _scored_model(model_name, config, calib, store, base, quant)
        model_fp = cache.fingerprint_model(model)
        metrics = {task: evaluate_cached(store, model, tok, model_fp, task, settings)[0]["value"]
                   for task, settings in tasks.items()}
        errors = [r["rel_error"] for r in summary.get("layers", []) if r["rel_error"] is not None]
        return {"sparsity": summary["sparsity"], "prune_s": summary["seconds"],
                "mean_rel_error": sum(errors) / len(errors) if errors else None,
                "model_fingerprint": model_fp, "metrics": metrics}

    record = store.get_or_compute(spec, compute_record, model_fp=base_fp, data_fp=calib_fp)
    return _sweep_row(config, quant, tasks, record)


def _sweep_row(config: PruneConfig | None, quant, tasks: dict, record: dict) -> dict:
    import pandas as pd

    row = {"method": config.method if config else "dense",
           "structure": config.structure if config else "-",
           "layer_sparsity": config.layer_sparsity if config else "-",
           "refine": config.refine if config else "-",
           "target": config.sparsity if config else 0.0, "sparsity": record["sparsity"],
           "quant": "int8" if quant is not None else "fp32", **record["metrics"],
           "prune_s": record["prune_s"], "mean_rel_error": record["mean_rel_error"]}
    for task, settings in tasks.items():        # 95% Wilson interval of each accuracy
        if task != "ppl":
            frame = add_intervals(pd.DataFrame([row]), acc=task, n=settings["n"])
            row[f"{task}_lo"], row[f"{task}_hi"] = frame[f"{task}_lo"][0], frame[f"{task}_hi"][0]
    return row


def _prune_point_task(model_name: str, config, calib, tasks, store, quant=None) -> dict:
    """prune_point in a worker process, on the worker's own copy of the base model."""
    return prune_point(model_name, config, calib, tasks, store, base=worker_model(model_name),
                       quant=quant)


def sweep_points(model_name: str, grid: list[PruneConfig | None], calib: torch.Tensor,
                 tasks: dict, store: cache.ResultCache, quant=None, base=None) -> list[Point]:
    """The executor points of prune_sweep: prune_point of each config (None: dense). With base
    (a loaded model of model_name) the points use it: for running in this process."""
    points = [Point(label=f"prune {i}: {c.method} {c.structure} {c.sparsity:g}" if c else "dense",
                    fn=_prune_point_task, args=(model_name, c, calib, tasks, store),
                    kwargs={"quant": quant})
              for i, c in enumerate(grid)]
    if base is not None:
        points = [dataclasses.replace(p, fn=prune_point, kwargs={**p.kwargs, "base": base})
                  for p in points]
    return points


def prune_sweep(model_name: str, grid: list[PruneConfig], calib: torch.Tensor, tasks: dict,
                store: cache.ResultCache | None = None, quant=None, on_row=None,
                executor: ExecutorConfig | str | None = None, base=None):
    """The dense row, then prune_point for every config of grid: a DataFrame with columns
    method, structure, target, sparsity (reached), quant, one per task, prune_s, mean_rel_error.
    on_row(row) is called as each row is ready (for progress). executor: where the points that
    are not cached run ("local", "ray" or an ExecutorConfig; see workbench.executor); the rows
    are the same and in grid order either way. base: model_name already loaded, (model,
    tokenizer), never modified."""
    import pandas as pd

    store = store or cache.ResultCache()
    base = base or load_model(model_name)
    local = as_executor(executor).kind == "local"   # then the loaded base serves every point
    points = sweep_points(model_name, [None, *grid], calib, tasks, store, quant,
                          base=base if local else None)
    rows = run_points(points, executor, store=store, desc="sparsity sweep",
                      lookup=lambda p: prune_point(*p.args, quant=quant, base=base, compute=False),
                      on_result=(lambda _, row: on_row(row)) if on_row is not None else None)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- a sample generation

def generation_sample(model_name: str, config: PruneConfig | None, calib: torch.Tensor,
                      prompt: str, max_new_tokens: int = 48, quant=None,
                      store: cache.ResultCache | None = None, base=None,
                      compute: bool = True) -> str | None:
    """The greedy chat completion of prompt by the model of one sweep point (pruned weights
    from the cache, W8A8 when quant is given). Cached per point and prompt; compute=False
    returns None instead of generating when it is not cached yet."""
    store = store or cache.ResultCache()
    base = base or load_model(model_name)
    spec = {"step": "sample", "prune": config.to_dict() if config else None, "prompt": prompt,
            "max_new_tokens": max_new_tokens, "quant": quant.to_dict() if quant else None}
    model_fp, data_fp = base_fingerprint(base[0]), cache.fingerprint_data(calib)
    if not compute:
        record = store.get(store.key(spec, model_fp=model_fp, data_fp=data_fp))
        return None if record is None else record["completion"]

    def generate() -> dict:
        model, tok, _ = _scored_model(model_name, config, calib, store, base, quant)
        text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids   # [1, L]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                                 top_k=None)                                        # [1, L + new]
        return {**spec, "completion": tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}

    return store.get_or_compute(spec, generate, model_fp=model_fp, data_fp=data_fp)["completion"]
