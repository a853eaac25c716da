"""Accuracy recovery of pruned models: the SquareHead experiment of Kurtic et al. 2023
("Sparse Fine-tuning for Inference Acceleration of Large Language Models", arXiv 2310.06927,
section 4) as one cached driver.

    base ──SFT──▶ teacher ──SparseGPT at s──▶ one-shot ──CE──────────────▶ student
                     │                            └──SquareHead + CE─────▶ student
                     └──────────── teacher of both ────────────────────────┘

1. SFT: the dense base is fine-tuned on the arith one-step train split in the chat format
   (finetune.py); the result is the teacher.
2. SparseGPT one-shot prunes the teacher at every sparsity, calibrated on pydoc windows as the
   `prune` CLI is (sweep.pruned_model).
3. Each pruned teacher is trained twice with the same data, steps, lr, batch and seed: with
   cross-entropy alone (squarehead=0, ce=1) and with SquareHead + CE (squarehead=1, ce=1); the
   mask is held fixed (distill.py).
4. Every model is scored on the untouched arith test split (3-shot chat, greedy, as the `eval`
   CLI) and on pydoc eval-split perplexity over the first `ppl_max_windows` windows.

Weights of every trained or pruned model are cached as safetensors under $WORKBENCH_CACHE/models,
keyed by the content hash of what made them (starting weights, config, data); every score is a
ResultCache record keyed like the eval CLI's, so the CLI and this driver share them. An
interrupted run resumes at the stage it was in.

    result = run_recovery(*load_model("smollm2-135m"), RecoveryConfig())
    result.table      # stage, sparsity, method, steps, arith_acc, ppl, train_min
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn

from workbench import cache, data
from workbench.distill import DistillConfig, distill_
from workbench.evaluate import perplexity, task_accuracy
from workbench.finetune import SFTConfig, finetune_
from workbench.pruning import PruneConfig
from workbench.sweep import pruned_model
from workbench.training import TrainConfig, TrainReport, check_number, decoder_sparsity

__all__ = ["RECOVERY_METHODS", "COLUMNS", "LOSS_COLUMNS", "RecoveryConfig", "RecoveryResult",
           "run_recovery"]

# method label -> loss weights of DistillConfig; both runs share every other setting.
RECOVERY_METHODS = {"CE": {"squarehead": 0.0, "ce": 1.0, "kd": 0.0},
                    "SquareHead+CE": {"squarehead": 1.0, "ce": 1.0, "kd": 0.0}}
COLUMNS = ["stage", "sparsity", "method", "steps", "arith_acc", "ppl", "train_min"]
LOSS_COLUMNS = ["stage", "method", "sparsity", "step", "loss", "squarehead", "ce", "kd", "lr",
                "grad_norm"]


@dataclass(frozen=True)
class RecoveryConfig:
    """The whole experiment. sft trains the teacher, train each recovery run (its loss weights
    come from RECOVERY_METHODS). Calibration: nsamples pydoc windows of calib_seqlen tokens.
    Scores: eval_n arith test items at `fewshot` shots; perplexity over at most
    ppl_max_windows windows of ppl_seqlen tokens (None: the whole eval split)."""
    sparsities: tuple[float, ...] = (0.5, 0.7)
    train_n: int = 2000
    # The committed results/distill run: 2.9 min of SFT and ~3.8 min per recovery run on 2 cores
    # with SmolLM2-135M (6 s per SFT step, 8-10 s per recovery step with the teacher's forward,
    # batch 8 of ~73-token chat examples). A short fixed budget, the same for both methods.
    sft: SFTConfig = SFTConfig(lr=1e-4, steps=30, batch_size=8, seqlen=256, warmup=3)
    train: TrainConfig = TrainConfig(lr=1e-4, steps=24, batch_size=8, seqlen=256, warmup=2)
    prune_method: str = "sparsegpt"
    nsamples: int = 64
    calib_seqlen: int = 512
    eval_n: int = 100
    fewshot: int = 3
    ppl_seqlen: int = 512
    ppl_max_windows: int | None = 8

    def __post_init__(self):
        object.__setattr__(self, "sparsities", tuple(float(s) for s in self.sparsities))
        if not self.sparsities or any(not 0.0 < s < 1.0 for s in self.sparsities):
            raise ValueError(f"sparsities must be a non-empty list in (0, 1), got {self.sparsities}")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"sparsities must be distinct, got {self.sparsities}")
        if not isinstance(self.sft, SFTConfig) or type(self.train) is not TrainConfig:
            raise TypeError("sft must be an SFTConfig and train a TrainConfig")
        for name in ("train_n", "nsamples", "eval_n"):
            check_number(name, getattr(self, name), 1, strict=False, integer=True)
        for name in ("calib_seqlen", "ppl_seqlen"):
            check_number(name, getattr(self, name), 2, strict=False, integer=True)
        check_number("fewshot", self.fewshot, 0, strict=False, integer=True)
        if self.ppl_max_windows is not None:
            check_number("ppl_max_windows", self.ppl_max_windows, 1, strict=False, integer=True)
        PruneConfig(method=self.prune_method)           # rejects an unknown method

    @classmethod
    def quick(cls, **overrides) -> RecoveryConfig:
        """A smoke run of the whole pipeline: a few steps, windows and items."""
        small = dict(train_n=32, nsamples=4, eval_n=4, ppl_max_windows=1,
                     sft=SFTConfig(lr=1e-4, steps=2, batch_size=2, seqlen=256),
                     train=TrainConfig(lr=1e-4, steps=2, batch_size=2, seqlen=256))
        return cls(**{**small, **overrides})

    def distill_config(self, method: str) -> DistillConfig:
        return DistillConfig(**self.train.to_dict(), **RECOVERY_METHODS[method])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class RecoveryResult:
    table: pd.DataFrame                   # one row per model, COLUMNS
    losses: pd.DataFrame                  # per optimizer step of every training run
    weights: dict[str, Path] = field(default_factory=dict)   # label -> cached safetensors
    computed: list[str] = field(default_factory=list)        # labels trained or scored now
                                          # (pruning has its own cache: sweep.pruned_model)
    meta: dict = field(default_factory=dict)                 # fingerprints, prune seconds


# ---------------------------------------------------------------- cached weights

def _weights_path(kind: str, key: str) -> Path:
    return cache.cache_root() / "models" / kind / f"{key}.safetensors"


def _save_weights(model: nn.Module, path: Path) -> None:
    """safetensors of the model (tied weights once), written beside path and renamed into it."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_weights(model: nn.Module, path: Path) -> bool:
    from safetensors.torch import load_model

    if not path.is_file():
        return False
    try:
        load_model(model, str(path), strict=True)
    except Exception:       # damaged or from another architecture: retrain, never trust it
        return False
    return True


def _trained(store: cache.ResultCache, kind: str, key: str, start: nn.Module,
             train: Callable[[nn.Module], TrainReport]) -> tuple[nn.Module, dict, bool]:
    """(model, report record, cached): a copy of start trained by train(), or its cached
    weights and record. Weights are written before the record, so a record means weights."""
    path = _weights_path(kind, key)
    record = store.get(key)
    if record is not None:
        model = copy.deepcopy(start)
        if _load_weights(model, path):
            return model, record, True
    model = copy.deepcopy(start)
    report = train(model)
    _save_weights(model, path)
    record = cache.to_jsonable(report.to_dict())
    store.put(key, record)
    return model, record, False


# ---------------------------------------------------------------- scores

def _scores(store: cache.ResultCache, model: nn.Module, model_fp: str, tokenizer,
            config: RecoveryConfig, test: data.Task, corpus: data.Corpus) -> tuple[dict, bool]:
    """({"arith_acc", "ppl"}, all cached). Keys and records have the eval CLI's shape."""
    points = {
        "arith": ({"kind": "one_step", "n": config.eval_n, "fewshot": config.fewshot}, test),
        "ppl": ({"seqlen": config.ppl_seqlen, "max_windows": config.ppl_max_windows}, corpus),
    }
    values, all_cached = {}, True
    for task, (settings, inputs) in points.items():
        spec = {"step": "eval", "task": task, "settings": settings}
        key = store.key(spec, model_fp=model_fp, data_fp=inputs.fingerprint)
        record = store.get(key)
        if record is None:
            all_cached = False
            if task == "arith":
                r = task_accuracy(model, tokenizer, inputs, fewshot=config.fewshot)
                result = {"metric": "accuracy", "value": r.accuracy, "detail": r.to_dict()}
            else:
                r = perplexity(model, tokenizer, inputs, seqlen=config.ppl_seqlen,
                               max_windows=config.ppl_max_windows)
                result = {"metric": "perplexity", "value": r.perplexity, "detail": r.to_dict()}
            record = {**result, "config": spec, "data_fingerprint": inputs.fingerprint}
            store.put(key, record)
        values[task] = record["value"]
    return {"arith_acc": values["arith"], "ppl": values["ppl"]}, all_cached


def _curve(record: dict, stage: str, method: str, sparsity: float) -> list[dict]:
    return [{"stage": stage, "method": method, "sparsity": sparsity, **row}
            for row in record["losses"]]


def _curves_frame(curves: list[dict]) -> pd.DataFrame:
    """One column order whether the rows came fresh or from the cache (stored key-sorted)."""
    frame = pd.DataFrame(curves)
    rest = sorted(c for c in frame.columns if c not in LOSS_COLUMNS)
    return frame[[c for c in LOSS_COLUMNS if c in frame.columns] + rest]


# ---------------------------------------------------------------- the driver

def run_recovery(model: nn.Module, tokenizer, config: RecoveryConfig | None = None,
                 store: cache.ResultCache | None = None,
                 on_row: Callable[[dict], None] | None = None) -> RecoveryResult:
    """Run (or read back from the cache) the experiment of the module docstring on a dense
    model; model itself is not modified. on_row(row) is called as each table row is ready."""
    config = config or RecoveryConfig()
    store = store or cache.ResultCache()
    train_set = data.arith_task("one_step", "train", n=config.train_n)
    test_set = data.arith_task("one_step", "test", n=config.eval_n)
    corpus = data.perplexity_corpus("pydoc", "eval")
    rows, curves, weights, computed = [], [], {}, []
    name = str(getattr(model.config, "name_or_path", ""))

    def add(label: str, stage: str, method: str, m: nn.Module, steps: int, record, cached: bool,
            model_fp: str | None = None):
        model_fp = model_fp or cache.fingerprint_model(m)
        scores, scored = _scores(store, m, model_fp, tokenizer, config, test_set, corpus)
        if not (cached and scored):
            computed.append(label)
        seconds = record["seconds"] if record else None
        rows.append({"stage": stage, "sparsity": decoder_sparsity(m), "method": method,
                     "steps": steps, **scores, "train_min": seconds / 60 if seconds else None})
        if on_row is not None:
            on_row(rows[-1])

    base_fp = cache.fingerprint_model(model)
    add("base", "base", "dense", model, 0, None, True, base_fp)

    sft_key = store.key({"step": "sft-weights", "sft": config.sft.to_dict()}, model_fp=base_fp,
                        data_fp=train_set.fingerprint)
    teacher, sft_record, cached = _trained(
        store, "sft", sft_key, model,
        lambda m: finetune_(m, train_set, config.sft, tokenizer=tokenizer))
    teacher.eval()
    weights["teacher"] = _weights_path("sft", sft_key)
    curves += _curve(sft_record, "teacher", "SFT", 0.0)
    teacher_fp = cache.fingerprint_model(teacher)
    add("teacher", "teacher", "SFT", teacher, config.sft.steps, sft_record, cached, teacher_fp)

    calib = data.calibration_set(tokenizer, "pydoc", nsamples=config.nsamples,
                                 seqlen=config.calib_seqlen)
    prune_seconds = {}
    for sparsity in config.sparsities:
        prune = PruneConfig(method=config.prune_method, sparsity=sparsity)
        # pruned_model deep-copies the teacher, prunes it and caches the weights (or loads them).
        pruned, _, summary = pruned_model(name, prune, calib, store, base=(teacher, tokenizer))
        pruned.eval()
        prune_seconds[str(sparsity)] = summary["seconds"]
        pruned_fp = cache.fingerprint_model(pruned)
        add(f"{config.prune_method}@{sparsity}", "one-shot", config.prune_method, pruned, 0,
            None, True, pruned_fp)
        for method in RECOVERY_METHODS:
            distill = config.distill_config(method)
            key = store.key({"step": "distill-weights", "distill": distill.to_dict()},
                            model_fp=pruned_fp,
                            data_fp=cache.fingerprint_data([train_set.fingerprint, teacher_fp]))
            student, record, cached = _trained(
                store, "distill", key, pruned,
                lambda m, d=distill: distill_(m, teacher, train_set, d, tokenizer=tokenizer))
            student.eval()
            label = f"{method}@{sparsity}"
            weights[label] = _weights_path("distill", key)
            curves += _curve(record, "student", method, sparsity)
            add(label, "student", method, student, distill.steps, record, cached)
            del student
        del pruned
    meta = {"base_fingerprint": base_fp, "teacher_fingerprint": teacher_fp,
            "calib_fingerprint": cache.fingerprint_data(calib),
            "train_fingerprint": train_set.fingerprint, "test_fingerprint": test_set.fingerprint,
            "corpus_fingerprint": corpus.fingerprint, "prune_seconds": prune_seconds,
            "config": cache.to_jsonable(config.to_dict())}
    return RecoveryResult(table=pd.DataFrame(rows, columns=COLUMNS), losses=_curves_frame(curves),
                          weights=weights, computed=computed, meta=meta)

