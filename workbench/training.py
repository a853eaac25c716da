"""The training loop shared by supervised fine-tuning (finetune.py) and SquareHead distillation
(distill.py): AdamW with linear warm-up and decay, frozen sparsity masks, mixed precision,
early stopping on a dev score, and checkpoints that resume a run exactly.

- Masks: every decoder Linear's zeros at the start are its pruning mask (True = pruned). The
  mask is applied to the gradient before clipping and to the weight after every optimizer step,
  so AdamW's weight decay and moments can never revive a pruned weight (Kurtic et al. 2023,
  arXiv 2310.06927, fine-tune with the sparsity pattern held fixed).
- Precision: "bf16" runs the forward passes (student and teacher) under torch.autocast in
  bfloat16; the weights, gradients, optimizer state and every loss stay FP32 (the loss
  functions upcast their inputs), the usual mixed-precision recipe (Micikevicius et al. 2018,
  arXiv 1710.03740, with bf16's FP32 range needing no loss scaling). "bf16-teacher" (the
  default) runs only the frozen teacher's forward in bf16: on SmolLM2-135M a 50%-pruned
  student's recovery loss fell measurably slower with a bf16 student (results/training),
  while a bf16 teacher left it within 1e-3 of FP32. "fp32" is the reference.
- Work: `outputs="needed"` lets the loss functions run the LM head only where a weighted loss
  reads logits and skip teacher passes no weighted loss reads; "all" computes and logs every
  output (the reference path; same loss, more work). Length-bucketed batches (batching.py) cut
  padding. A fused AdamW does the update in one kernel per parameter.
- Plateau: with an evaluator, the model is scored on a dev set before training, every
  `eval_every` steps and at the end; a run stops after `patience` evaluations without a new
  best (plateau.py) or at `steps`, and hands back the best evaluated weights.
- Determinism: torch's global RNG is seeded inside `fork_rng` (the caller's stream is left
  alone) and the data order comes from its own seeded torch.Generator.
- Checkpoints (workbench.checkpoint) hold the weights and every piece of loop state:
  optimizer, scheduler, data order, RNG, step, losses, dev curve and best weights, so resumed
  == uninterrupted, bit for bit (same machine, same thread count).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.arch import layer_linears
from workbench.batching import IGNORE, Example, ExampleSampler, collate
from workbench.cache import fingerprint_data
from workbench.checkpoint import (
    BestWeights,
    check_resumable,
    drop_stale_best,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from workbench.configs import Serializable, check_choice, check_number
from workbench.plateau import Plateau

__all__ = ["IGNORE", "Example", "ExampleSampler", "collate", "PRECISIONS", "OUTPUTS",
           "BATCHINGS", "TrainConfig", "TrainReport", "lr_factor", "make_optimizer",
           "autocast", "decoder_sparsity", "train_loop", "check_number", "check_choice"]

PRECISIONS = ("fp32", "bf16-teacher", "bf16")
OUTPUTS = ("needed", "all")
BATCHINGS = ("length", "random")


@dataclass(frozen=True)
class TrainConfig(Serializable):
    """Optimizer, schedule, batching, precision, early stopping and checkpointing of a run.
    grad_clip: max global gradient norm, 0 = no clipping. warmup: steps of linear warm-up,
    then linear decay to 0 at `steps` (also the step cap when stopping early). batch_size is
    per micro-batch; an optimizer step sees batch_size * grad_accum examples. precision,
    outputs, batching, fused_adamw: see the module docstring ("fp32", "all", "random", False
    is the reference path). eval_every: steps between dev evaluations (0 = none; they need an
    evaluator, see train_loop); patience: evaluations without a new best before stopping
    (0 = run to `steps`); dev_fewshot: shots of the dev prompts. checkpoint_every: steps
    between checkpoints (0 = only the last step); needs checkpoint_dir. resume: continue the
    run saved in checkpoint_dir (a fresh start when it holds none); without it, an existing
    run there is an error."""
    lr: float = 1e-4
    steps: int = 100
    batch_size: int = 8
    seqlen: int = 512
    warmup: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    precision: str = "bf16-teacher"
    outputs: str = "needed"
    batching: str = "length"
    fused_adamw: bool = True
    eval_every: int = 0
    patience: int = 0
    dev_fewshot: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False

    def __post_init__(self):
        check_number("lr", self.lr, 0, strict=True)
        for name in ("steps", "batch_size", "grad_accum"):
            check_number(name, getattr(self, name), 1, strict=False, integer=True)
        check_number("seqlen", self.seqlen, 2, strict=False, integer=True)
        for name in ("warmup", "checkpoint_every", "seed", "eval_every", "patience", "dev_fewshot"):
            check_number(name, getattr(self, name), 0, strict=False, integer=True)
        if self.warmup >= self.steps:
            raise ValueError(f"warmup must be < steps ({self.steps}), got {self.warmup}")
        check_number("grad_clip", self.grad_clip, 0, strict=False)
        check_number("weight_decay", self.weight_decay, 0, strict=False)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("outputs", self.outputs, OUTPUTS)
        check_choice("batching", self.batching, BATCHINGS)
        if not isinstance(self.fused_adamw, bool):
            raise ValueError(f"fused_adamw must be True or False, got {self.fused_adamw!r}")
        if self.patience and not self.eval_every:
            raise ValueError("patience needs eval_every > 0 (early stopping needs dev evaluations)")
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", str(self.checkpoint_dir))  # JSON-able
        elif self.resume or self.checkpoint_every:
            raise ValueError("resume and checkpoint_every need checkpoint_dir")


@dataclass
class TrainReport(Serializable):
    config: dict
    losses: list[dict] = field(default_factory=list)   # per optimizer step: step, loss, parts, lr, grad_norm
    steps: int = 0                  # optimizer steps of the whole run, resumed ones included
    sparsity_before: float = 0.0    # zeros / weights over decoder Linears
    sparsity_after: float = 0.0
    seconds: float = 0.0            # wall time of this call
    resumed_from: int = 0           # step restored from a checkpoint; 0 = fresh start
    n_examples: int = 0
    data_fingerprint: str = ""
    dev_curve: list[dict] = field(default_factory=list)  # per evaluation: step, score, n, correct
    best_step: int | None = None    # step whose weights the model holds at the end (with dev)
    best_score: float | None = None
    stopped_early: bool = False     # patience ran out before the step cap

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.losses)


# ---------------------------------------------------------------- optimizer and schedule

def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warm-up over
    `warmup` steps, then linear decay; no step runs at lr 0 (the last at 1/(steps-warmup))."""
    return min((step + 1) / (warmup + 1), (steps - step) / (steps - warmup))


def make_optimizer(model: nn.Module, config: TrainConfig):
    """AdamW over the trainable parameters, weight decay on matrices only (not norms or
    biases), and its LambdaLR schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                  fused=True if config.fused_adamw else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup, config.steps))
    return optimizer, scheduler


def _frozen_masks(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, weight, mask) for every decoder Linear with a zero; mask True = pruned."""
    out = []
    for name, lin in layer_linears(model).items():
        mask = lin.weight.detach() == 0
        if mask.any():
            out.append((name, lin.weight, mask))
    return out


def decoder_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all decoder Linear weights."""
    weights = [lin.weight for lin in layer_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def autocast(precision: str, device: torch.device):
    """The forward-pass context of a precision: bf16 autocast, or nothing for fp32 (the
    student's forward under "bf16-teacher" is FP32; distill.py casts the teacher's)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- the loop

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]
# evaluator(model) -> {"score": dev accuracy, ...}: called in FP32 with no autocast
Evaluator = Callable[[nn.Module], dict]


def train_loop(model: nn.Module, examples: Sequence[Example], config: TrainConfig,
               loss_fn: LossFn, *, evaluator: Evaluator | None = None, desc: str = "train",
               report_cls=TrainReport) -> TrainReport:
    """Train model in place for up to config.steps optimizer steps on loss_fn(model, batch) ->
    (loss, {component: value}); pruned decoder weights stay exactly zero. With an evaluator
    and config.eval_every, the model ends holding its best evaluated weights."""
    start = time.perf_counter()
    if not examples:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    if config.eval_every and evaluator is None:
        raise ValueError("eval_every > 0 needs a dev set to evaluate on")
    evaluate = evaluator if config.eval_every else None
    masks = _frozen_masks(model)
    zeros = {name: int(m.sum()) for name, _, m in masks}
    data_fp = fingerprint_data([[e.input_ids, e.labels] for e in examples])
    report = report_cls(config=config.to_dict(), sparsity_before=decoder_sparsity(model),
                        n_examples=len(examples), data_fingerprint=data_fp)
    optimizer, scheduler = make_optimizer(model, config)
    lengths = [len(e.input_ids) for e in examples] if config.batching == "length" else None
    sampler = ExampleSampler(len(examples), config.batch_size, config.seed, lengths)
    plateau, best = Plateau(config.patience), BestWeights(config.checkpoint_dir)
    device = next(model.parameters()).device
    step, was_training = 0, model.training

    def dev_eval() -> None:
        result = dict(evaluate(model))
        model.train()
        if plateau.update(step, float(result.pop("score")), **result):
            best.save(model, step)

    def checkpoint() -> None:
        save_checkpoint(config.checkpoint_dir, model, {
            "step": step, "losses": report.losses, "config": report.config,
            "data_fingerprint": data_fp, "zeros": zeros,
            "sparsity_before": report.sparsity_before, "plateau": plateau.state_dict(),
            "best": best.path.name if best.path else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(), "rng": torch.get_rng_state()})
        drop_stale_best(config.checkpoint_dir, best.path)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        ckpt = latest_checkpoint(config.checkpoint_dir) if config.checkpoint_dir else None
        if ckpt is not None and not config.resume:
            raise FileExistsError(f"{config.checkpoint_dir} holds a run (at {ckpt.name}); pass "
                                  "resume=True to continue it, or use another checkpoint_dir")
        if ckpt is not None:
            state = load_checkpoint(ckpt, model)
            check_resumable(state, report.config, data_fp, zeros)
            if any(bool((w[m] != 0).any()) for _, w, m in masks):
                raise ValueError(f"cannot resume: {ckpt} has nonzero pruned weights")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.load_state_dict(state["sampler"])
            plateau.load_state_dict(state["plateau"])
            if state["best"]:
                best.path = ckpt.parent / state["best"]
            torch.set_rng_state(state["rng"])
            step, report.losses = state["step"], state["losses"]
            report.resumed_from, report.sparsity_before = step, state["sparsity_before"]
        model.train()
        if evaluate is not None and step == 0:
            dev_eval()                                  # the starting point can be the best
        bar = tqdm(total=config.steps, initial=step, desc=desc, leave=False)
        try:
            while step < config.steps and not plateau.stop:
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                total, parts = 0.0, {}
                for _ in range(config.grad_accum):
                    batch = collate([examples[i] for i in sampler.next()], device)
                    with autocast(config.precision, device):
                        loss, components = loss_fn(model, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{desc} loss is {loss.item()} at step {step + 1}")
                    (loss / config.grad_accum).backward()
                    total += loss.item() / config.grad_accum
                    for k, v in components.items():
                        parts[k] = parts.get(k, 0.0) + v / config.grad_accum
                for _, w, m in masks:
                    if w.grad is not None:
                        w.grad.masked_fill_(m, 0.0)     # pruned weights get no update ...
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    for _, w, m in masks:
                        w.masked_fill_(m, 0.0)          # ... and AdamW decay cannot move them
                step += 1
                report.losses.append({"step": step, "loss": total, **parts, "lr": lr,
                                      "grad_norm": float(grad_norm)})
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in {"loss": total, **parts}.items()})
                if evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                    dev_eval()
                every = config.checkpoint_every or config.steps
                if config.checkpoint_dir and (step % every == 0 or step == config.steps
                                              or plateau.stop):
                    checkpoint()
        finally:
            bar.close()
            model.zero_grad(set_to_none=True)           # hand back no gradient memory
            model.train(was_training)
    if evaluate is not None:
        if plateau.best_step != step:
            best.restore(model)
        report.dev_curve, report.best_step = plateau.curve, plateau.best_step
        report.best_score, report.stopped_early = plateau.best_score, plateau.stop
    report.steps = step
    report.sparsity_after = decoder_sparsity(model)
    report.seconds = time.perf_counter() - start
    return report
