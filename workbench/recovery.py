"""Accuracy recovery of pruned models, the experiment of Kurtic et al. 2023 ("Sparse Fine-tuning
for Inference Acceleration of Large Language Models", arXiv 2310.06927, section 4), run end to
end to the model that runs fast, as one cached driver.

    base ──SFT──▶ teacher ──SparseGPT at s──▶ one-shot ──CE──────────▶ student ─┐
                     │                            └──SquareHead + CE─▶ student ─┤
                     └──────────── teacher of both ─────────────────────────────┘
    every model of packed_methods ──smooth, W8A8, runtime.pack──▶ packed (deploy.py)

1. SFT: the dense base is fine-tuned on the arith one-step train split (chat format,
   finetune.py) until the dev split stops improving (training.py); the result is the teacher.
2. SparseGPT one-shot prunes the teacher at every sparsity (calibrated on pydoc windows).
3. Each pruned teacher is trained with cross-entropy alone (squarehead=0) and with SquareHead
   + CE (squarehead=1), same data, step cap, lr, batch, seed and dev-plateau rule; the mask is
   held fixed (distill.py). Each run keeps its best dev checkpoint.
4. Every model is scored on the untouched arith test split (eval_n items, `fewshot` shots,
   greedy, with a 95% Wilson interval) and on pydoc eval perplexity; then smoothed, W8A8'd,
   packed and scored again as a PackedModel, with its decode speed and size (deploy.py).
5. All of it once per seed (the data order of SFT and recovery); `summary` aggregates seeds.

Every point is cached through one mechanism (cache.ResultCache.fetch, points.cached_model)
with the keys the CLI and the sweep use, so a score the `eval` CLI made is not made again.
Training runs checkpoint under $WORKBENCH_CACHE/checkpoints: an interrupted run resumes at
its last training checkpoint, finished stages are read back.

    result = run_recovery(*load_model("smollm2-135m"), RecoveryConfig.reproduce())
    result.table      # one row per (seed, sparsity, method): COLUMNS
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from torch import nn

from workbench import cache, data, points
from workbench.checkpoint import RESUME_KEYS
from workbench.deploy import DeployConfig, deploy, w8a8_comparison
from workbench.distill import DistillConfig, distill_
from workbench.executor import ExecutorConfig, Point, as_executor, run_points, worker_model
from workbench.finetune import SFTConfig, finetune_
from workbench.pruning import PruneConfig
from workbench.run_configs import RECOVERY_SIZES as SIZES
from workbench.stats import add_intervals, seed_summary
from workbench.sweep import base_fingerprint, evaluate_cached, pruned_model
from workbench.training import TrainConfig, check_number, decoder_sparsity

__all__ = ["RECOVERY_METHODS", "COLUMNS", "LOSS_COLUMNS", "RecoveryConfig", "RecoveryResult",
           "run_recovery"]

# method label -> loss weights of DistillConfig; both runs share every other setting.
RECOVERY_METHODS = {"CE": {"squarehead": 0.0, "ce": 1.0, "kd": 0.0},
                    "SquareHead+CE": {"squarehead": 1.0, "ce": 1.0, "kd": 0.0}}
METHODS = ("dense", "SFT", "sparsegpt", *RECOVERY_METHODS)
COLUMNS = ["seed", "stage", "sparsity", "target", "method", "steps", "best_step", "stopped_early", "n",
           "acc", "acc_lo", "acc_hi", "ppl", "packed_acc", "packed_acc_lo", "packed_acc_hi",
           "packed_ppl", "decode_tok_s", "fp32_decode_tok_s", "speedup", "size_mb", "train_min"]
LOSS_COLUMNS = ["seed", "stage", "method", "sparsity", "step", "loss", "squarehead", "ce", "kd",
                "lr", "grad_norm"]


def _plateau(steps: int, eval_every: int, patience: int, **kw) -> dict:
    return dict(lr=1e-4, steps=steps, batch_size=8, seqlen=256, warmup=max(1, steps // 30),
                eval_every=eval_every, patience=patience, **kw)


@dataclass(frozen=True)
class RecoveryConfig:
    """The whole experiment. sft trains the teacher, train each recovery run (its loss weights
    come from RECOVERY_METHODS); their `steps` are caps, eval_every / patience the dev-plateau
    rule on dev_n dev items; their seeds are replaced by each of `seeds`. Calibration: nsamples
    pydoc windows of calib_seqlen tokens. Scores: eval_n arith test items at `fewshot` shots;
    perplexity over at most ppl_max_windows windows of ppl_seqlen tokens (None: the whole eval
    split). fewshot is 0: every compared model is fine-tuned in the chat format, and dev
    (the plateau rule) and test are scored in that format alike. packed_methods: the rows also run as packed W8A8 models (deploy.py, `deploy`).
    checkpoint_every: training steps between resumable checkpoints (not part of any key).
    executor: where the training runs go ("local", "ray" or an ExecutorConfig, see
    workbench.executor); like checkpoint_every it changes no result and is not in to_dict."""
    sparsities: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)
    seeds: tuple[int, ...] = (0,)
    train_n: int = 2000
    dev_n: int = 64
    sft: SFTConfig = SFTConfig(**_plateau(600, 25, 4, precision="bf16"))
    train: TrainConfig = TrainConfig(**_plateau(600, 25, 4))
    prune_method: str = "sparsegpt"
    nsamples: int = 64
    calib_seqlen: int = 512
    eval_n: int = 200
    fewshot: int = 0
    ppl_seqlen: int = 512
    ppl_max_windows: int | None = 16
    packed_methods: tuple[str, ...] = METHODS[1:]
    deploy: DeployConfig = DeployConfig()
    checkpoint_every: int = 10
    executor: ExecutorConfig | str = "local"

    def __post_init__(self):
        object.__setattr__(self, "sparsities", tuple(float(s) for s in self.sparsities))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "packed_methods", tuple(self.packed_methods))
        if not self.sparsities or any(not 0.0 < s < 1.0 for s in self.sparsities):
            raise ValueError(f"sparsities must be a non-empty list in (0, 1), got {self.sparsities}")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"sparsities must be distinct, got {self.sparsities}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds}")
        if not isinstance(self.sft, SFTConfig) or type(self.train) is not TrainConfig:
            raise TypeError("sft must be an SFTConfig and train a TrainConfig")
        if not isinstance(self.deploy, DeployConfig):
            raise TypeError("deploy must be a workbench.deploy.DeployConfig")
        for name in ("train_n", "dev_n", "nsamples", "eval_n", "checkpoint_every"):
            check_number(name, getattr(self, name), 1, strict=False, integer=True)
        for name in ("calib_seqlen", "ppl_seqlen"):
            check_number(name, getattr(self, name), 2, strict=False, integer=True)
        check_number("fewshot", self.fewshot, 0, strict=False, integer=True)
        if self.ppl_max_windows is not None:
            check_number("ppl_max_windows", self.ppl_max_windows, 1, strict=False, integer=True)
        unknown = [m for m in self.packed_methods if m not in METHODS]
        if unknown:
            raise ValueError(f"packed_methods must be among {METHODS}, got {unknown}")
        PruneConfig(method=self.prune_method)           # rejects an unknown method
        as_executor(self.executor)                      # rejects an unknown executor

    @classmethod
    def quick(cls, **overrides) -> RecoveryConfig:
        """A smoke run of the whole chain: a few steps, windows and items; proves the wiring,
        measures nothing."""
        small = dict(sparsities=(0.5,), train_n=32, dev_n=4, nsamples=4, eval_n=4,
                     ppl_max_windows=1, checkpoint_every=1,
                     sft=SFTConfig(**_plateau(2, 1, 0), precision="bf16"),
                     train=TrainConfig(**_plateau(2, 1, 0)),
                     deploy=DeployConfig(smoothings=("none", "lae"), profile_samples=2,
                                         w8a8_windows=1, speed_prompt=8, speed_new_tokens=8,
                                         speed_repeats=1))
        return cls(**{**small, **overrides})

    @classmethod
    def reproduce(cls, **overrides) -> RecoveryConfig:
        """`make reproduce`'s size, set by a 60-minute budget for the whole target on 2 cores
        (notebook 03 took 36 of the 109 minutes measured on 2026-12-03): one seed, 50 and 70%,
        200 test items, SFT capped at 100 steps and each recovery run at 50 (a recovery step is ~4 s, a 64-item dev check ~10-25 s), dev checks every 10 steps
        with patience 2, 16 calibration windows, packed rows for the teacher and SquareHead+CE."""
        small = dict(sparsities=(0.5, 0.7), nsamples=16, ppl_max_windows=8,
                     sft=SFTConfig(**_plateau(100, 10, 2), precision="bf16"),
                     train=TrainConfig(**_plateau(50, 10, 2)),
                     packed_methods=("SFT", "SquareHead+CE"))
        return cls(**{**small, **overrides})

    @classmethod
    def experiments(cls, **overrides) -> RecoveryConfig:
        """`make experiments`: the full protocol (the defaults) over three seeds."""
        return cls(**{"seeds": (0, 1, 2), **overrides})

    @classmethod
    def sized(cls, size: str, **overrides) -> RecoveryConfig:
        """The named size: one of SIZES (quick, reproduce, full = the defaults, experiments)."""
        if size not in SIZES:
            raise ValueError(f"recovery size must be one of {', '.join(SIZES)}, got {size!r}")
        return cls(**overrides) if size == "full" else getattr(cls, size)(**overrides)

    def sft_config(self, seed: int) -> SFTConfig:
        return dataclasses.replace(self.sft, seed=seed)

    def distill_config(self, method: str, seed: int | None = None) -> DistillConfig:
        seed = self.train.seed if seed is None else seed
        return DistillConfig(**{**self.train.to_dict(), "seed": seed}, **RECOVERY_METHODS[method])

    def tasks(self) -> dict:
        """The scores of every row, as sweep.evaluate_cached (and the eval CLI) key them."""
        return {"arith": {"kind": "one_step", "n": self.eval_n, "fewshot": self.fewshot},
                "ppl": {"seqlen": self.ppl_seqlen, "max_windows": self.ppl_max_windows}}

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "executor"}


@dataclass
class RecoveryResult:
    table: pd.DataFrame                   # one row per (seed, model): COLUMNS
    losses: pd.DataFrame                  # per optimizer step of every training run
    dev: pd.DataFrame                     # per dev evaluation: seed, stage, method, sparsity, step, ...
    w8a8: pd.DataFrame                    # W8A8 fake-quant perplexity per model and smoothing
    summary: pd.DataFrame                 # mean and spread over seeds per (stage, sparsity, method)
    weights: dict[str, str] = field(default_factory=dict)    # label -> cached safetensors
    computed: list[str] = field(default_factory=list)        # labels trained or scored now
    meta: dict = field(default_factory=dict)                 # fingerprints, prune seconds


def _key_dict(config: TrainConfig) -> dict:
    """A training config as it enters a key: where checkpoints go does not change the model."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUME_KEYS}


def _resumable(config, ckpt_dir, every: int):
    return dataclasses.replace(config, checkpoint_dir=str(ckpt_dir), checkpoint_every=every,
                               resume=True)


def _rows(record: dict, key: str, **labels) -> list[dict]:
    return [{**labels, **row} for row in (record or {}).get(key, [])]


def _run_part(model_name: str, base_fp: str, config: RecoveryConfig, store, part) -> dict:
    """One task of a distributed run (see run_recovery's part), on the worker's own copy of
    the base model, which must be the driver's."""
    model, tokenizer = worker_model(model_name)
    if base_fingerprint(model) != base_fp:
        raise ValueError(f"the worker's {model_name!r} is not the driver's model (fingerprint "
                         f"{base_fingerprint(model)[:12]} != {base_fp[:12]}): every node needs "
                         f"the same checkpoint at the same path")
    result = run_recovery(model, tokenizer, config, store, part=part)
    return {"computed": result.computed}


def _distribute(model, config: RecoveryConfig, store, executor: ExecutorConfig,
                model_name: str | None) -> None:
    """Compute every cached point of the run as tasks on executor: per seed the teacher, then
    per sparsity its one-shot model, then each recovery run, each after the one it starts from."""
    name = model_name or str(getattr(model.config, "name_or_path", ""))
    if not name:
        raise ValueError("a distributed recovery run needs model_name (what workers load)")
    base_fp = base_fingerprint(model)
    points = []
    for seed in config.seeds:
        one = dataclasses.replace(config, seeds=(seed,), executor="local")
        teacher = len(points)
        points.append(Point(f"teacher/seed{seed}", _run_part, (name, base_fp, one, store, (None, ()))))
        for sparsity in config.sparsities:
            pruned = len(points)
            points.append(Point(f"{config.prune_method}@{sparsity}/seed{seed}", _run_part,
                                (name, base_fp, one, store, (sparsity, ())), after=(teacher,)))
            points += [Point(f"{m}@{sparsity}/seed{seed}", _run_part,
                             (name, base_fp, one, store, (sparsity, (m,))), after=(pruned,))
                       for m in RECOVERY_METHODS]
    run_points(points, executor, store=store, desc="recovery runs",
               cached=lambda r: not r["computed"])


def run_recovery(model: nn.Module, tokenizer, config: RecoveryConfig | None = None,
                 store: cache.ResultCache | None = None,
                 on_row: Callable[[dict], None] | None = None, *,
                 executor: ExecutorConfig | str | None = None, model_name: str | None = None,
                 part: tuple | None = None) -> RecoveryResult:
    """Run (or read back from the cache) the experiment of the module docstring on a dense
    model; model itself is not modified. on_row(row) is called as each table row is ready.

    executor (default: config.executor): "ray" first computes the training runs as Ray tasks
    (model_name, default model.config.name_or_path, is what the workers load), then builds the
    table here from the cache. part: (None, ()) only the base and teacher rows; (s, methods)
    those plus sparsity s's one-shot row and its runs of methods (one task of a distributed run)."""
    config = config or RecoveryConfig()
    store = store or cache.ResultCache()
    chosen = as_executor(executor if executor is not None else config.executor)
    if chosen.kind != "local" and part is None:
        _distribute(model, config, store, chosen, model_name)
    sparsities = config.sparsities if part is None else tuple(s for s in part[:1] if s is not None)
    methods = tuple(RECOVERY_METHODS) if part is None else tuple(part[1])
    train_set = data.arith_task("one_step", "train", n=config.train_n)
    dev_set = data.arith_task("one_step", "dev", n=config.dev_n)
    corpus = data.perplexity_corpus("pydoc", "eval")
    calib = data.calibration_set(tokenizer, "pydoc", nsamples=config.nsamples,
                                 seqlen=config.calib_seqlen)
    tasks, name = config.tasks(), str(getattr(model.config, "name_or_path", ""))
    rows, losses, devs, w8a8, weights, computed = [], [], [], [], {}, []
    base_fp = base_fingerprint(model)
    meta = {"base_fingerprint": base_fp, "calib_fingerprint": cache.fingerprint_data(calib),
            "train_fingerprint": train_set.fingerprint, "dev_fingerprint": dev_set.fingerprint,
            "corpus_fingerprint": corpus.fingerprint, "teacher_fingerprints": {},
            "prune_seconds": {}, "config": cache.to_jsonable(config.to_dict())}

    def add(seed, label, stage, method, m, record, cached, teacher, teacher_fp, fp=None):
        fp = fp or cache.fingerprint_model(m)
        scores = {t: evaluate_cached(store, m, tokenizer, fp, t, s) for t, s in tasks.items()}
        row = {"seed": seed, "stage": stage, "sparsity": decoder_sparsity(m), "method": method,
               "steps": (record or {}).get("steps", 0), "best_step": (record or {}).get("best_step"),
               "stopped_early": (record or {}).get("stopped_early"), "n": config.eval_n,
               "acc": scores["arith"][0]["value"], "ppl": scores["ppl"][0]["value"],
               "train_min": record["seconds"] / 60 if record else None}
        fresh = not (cached and all(c for _, c in scores.values()))
        if method in config.packed_methods:
            w8a8.extend({"seed": seed, "stage": stage, "method": method,
                         "sparsity": row["sparsity"], **r} for r in w8a8_comparison(
                store, m, tokenizer, fp, calib, corpus, config.deploy, config.ppl_seqlen))
            packed, p_cached = deploy(store, m, tokenizer, fp, calib, tasks, teacher, teacher_fp,
                                      config.deploy)
            fresh = fresh or not p_cached
            row.update(packed_acc=packed["scores"]["arith"]["value"],
                       packed_ppl=packed["scores"]["ppl"]["value"],
                       **{k: packed[k] for k in ("decode_tok_s", "fp32_decode_tok_s", "speedup",
                                                 "size_mb")})
        if fresh:
            computed.append(f"{label}/seed{seed}")
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for seed in config.seeds:
        add(seed, "base", "base", "dense", model, None, True, model, base_fp, base_fp)
        sft = config.sft_config(seed)
        teacher, sft_record, cached = points.cached_model(
            store, "sft-weights", {"sft": _key_dict(sft), "dev": dev_set.fingerprint}, model,
            lambda m, ckpt, sft=sft: finetune_(
                m, train_set, _resumable(sft, ckpt, config.checkpoint_every),
                tokenizer=tokenizer, dev=dev_set).to_dict(),
            model_fp=base_fp, data_fp=train_set.fingerprint, kind="sft")
        teacher.eval()
        teacher_fp = cache.fingerprint_model(teacher)
        meta["teacher_fingerprints"][str(seed)] = teacher_fp
        labels = {"seed": seed, "stage": "teacher", "method": "SFT", "sparsity": 0.0}
        losses += _rows(sft_record, "losses", **labels)
        devs += _rows(sft_record, "dev_curve", **labels)
        add(seed, "teacher", "teacher", "SFT", teacher, sft_record, cached, teacher, teacher_fp,
            teacher_fp)
        for sparsity in sparsities:
            prune = PruneConfig(method=config.prune_method, sparsity=sparsity)
            pruned, _, summary = pruned_model(name, prune, calib, store, base=(teacher, tokenizer))
            pruned.eval()
            meta["prune_seconds"][f"{seed}:{sparsity}"] = summary["seconds"]
            pruned_fp = cache.fingerprint_model(pruned)
            add(seed, f"{config.prune_method}@{sparsity}", "one-shot", config.prune_method, pruned,
                None, True, teacher, teacher_fp, pruned_fp)
            for method in methods:
                distill = config.distill_config(method, seed)
                settings = {"distill": _key_dict(distill), "dev": dev_set.fingerprint}
                data_fp = cache.fingerprint_data([train_set.fingerprint, teacher_fp])
                student, record, cached = points.cached_model(
                    store, "distill-weights", settings, pruned,
                    lambda m, ckpt, d=distill, t=teacher: distill_(
                        m, t, train_set, _resumable(d, ckpt, config.checkpoint_every),
                        tokenizer=tokenizer, dev=dev_set).to_dict(),
                    model_fp=pruned_fp, data_fp=data_fp, kind="distill")
                student.eval()
                label = f"{method}@{sparsity}"
                key = points.model_key(store, "distill-weights", settings, pruned_fp, data_fp)
                weights[f"{label}/seed{seed}"] = str(points.weights_path("distill", key))
                labels = {"seed": seed, "stage": "student", "method": method, "sparsity": sparsity}
                losses += _rows(record, "losses", **labels)
                devs += _rows(record, "dev_curve", **labels)
                add(seed, label, "student", method, student, record, cached, teacher, teacher_fp)
                del student
            del pruned
        del teacher
    return _result(rows, losses, devs, w8a8, weights, computed, meta, config)


def _result(rows, losses, devs, w8a8, weights, computed, meta, config) -> RecoveryResult:
    table = add_intervals(pd.DataFrame(rows), acc="acc", n="n")
    if "packed_acc" in table:
        table = add_intervals(table, acc="packed_acc", n="n")
    table = table.reindex(columns=[c for c in COLUMNS if c != "target"])
    frame = pd.DataFrame(losses)
    rest = sorted(c for c in frame.columns if c not in LOSS_COLUMNS)
    frame = frame[[c for c in LOSS_COLUMNS if c in frame.columns] + rest]
    dev = pd.DataFrame(devs)
    if len(dev):
        dev = add_intervals(dev, acc="score", n="n", prefix="score")
    # the configured sparsity of each row (the reached one differs by rounding), for grouping
    table.insert(3, "target", [0.0 if stage in ("base", "teacher") else
                               min(config.sparsities, key=lambda t, s=s: abs(t - s))
                               for stage, s in zip(table["stage"], table["sparsity"], strict=True)])
    summary = seed_summary(table, ["stage", "target", "method"],
                           ["acc", "ppl", "packed_acc", "packed_ppl", "speedup"])
    return RecoveryResult(table=table, losses=frame, dev=dev, w8a8=pd.DataFrame(w8a8),
                          summary=summary, weights=weights, computed=computed, meta=meta)
