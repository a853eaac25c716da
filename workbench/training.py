"""The training loop shared by supervised fine-tuning (finetune.py) and SquareHead distillation
(distill.py): batching, AdamW with linear warm-up and decay, frozen sparsity masks, and
checkpoints that resume a run exactly.

- Masks: every decoder Linear's zeros at the start are its pruning mask (True = pruned). The
  mask is applied to the gradient before clipping and to the weight after every optimizer step,
  so AdamW's weight decay and moments can never revive a pruned weight (Kurtic et al. 2023,
  arXiv 2310.06927, fine-tune with the sparsity pattern held fixed).
- Determinism: torch's global RNG is seeded inside `fork_rng` (the caller's stream is left
  alone) and the data order comes from its own seeded torch.Generator.
- Checkpoints (workbench.checkpoint) hold the weights and every piece of loop state:
  optimizer, scheduler, data order, RNG, step and losses, so resumed == uninterrupted, bit
  for bit (same machine, same thread count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.arch import layer_linears
from workbench.cache import fingerprint_data
from workbench.checkpoint import (
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

IGNORE = -100       # label of tokens that carry no loss (prompt, padding): torch's ignore_index


def check_number(name: str, value, low: float, *, strict: bool, integer: bool = False) -> None:
    """Raise ValueError naming the field unless value is a number >= low (> low if strict)."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and (
        value > low if strict else value >= low)        # also False for NaN
    if not ok:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} "
                         f"{'>' if strict else '>='} {low}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, batching and checkpointing of a training run.
    grad_clip: max global gradient norm, 0 = no clipping. warmup: steps of linear warm-up,
    then linear decay to 0 at `steps`. batch_size is per micro-batch; an optimizer step sees
    batch_size * grad_accum examples. checkpoint_every: steps between checkpoints (0 = only
    the last step); needs checkpoint_dir. resume: continue the run saved in checkpoint_dir
    (a fresh start when it holds none); without it, an existing run there is an error."""
    lr: float = 1e-4
    steps: int = 100
    batch_size: int = 8
    seqlen: int = 512
    warmup: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False

    def __post_init__(self):
        check_number("lr", self.lr, 0, strict=True)
        for name in ("steps", "batch_size", "grad_accum"):
            check_number(name, getattr(self, name), 1, strict=False, integer=True)
        check_number("seqlen", self.seqlen, 2, strict=False, integer=True)
        for name in ("warmup", "checkpoint_every", "seed"):
            check_number(name, getattr(self, name), 0, strict=False, integer=True)
        if self.warmup >= self.steps:
            raise ValueError(f"warmup must be < steps ({self.steps}), got {self.warmup}")
        check_number("grad_clip", self.grad_clip, 0, strict=False)
        check_number("weight_decay", self.weight_decay, 0, strict=False)
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", str(self.checkpoint_dir))  # JSON-able
        elif self.resume or self.checkpoint_every:
            raise ValueError("resume and checkpoint_every need checkpoint_dir")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainReport:
    config: dict
    losses: list[dict] = field(default_factory=list)   # per optimizer step: step, loss, parts, lr, grad_norm
    steps: int = 0                  # optimizer steps of the whole run, resumed ones included
    sparsity_before: float = 0.0    # zeros / weights over decoder Linears
    sparsity_after: float = 0.0
    seconds: float = 0.0            # wall time of this call
    resumed_from: int = 0           # step restored from a checkpoint; 0 = fresh start
    n_examples: int = 0
    data_fingerprint: str = ""

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.losses)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- batches

@dataclass(frozen=True)
class Example:
    """One training sequence: token ids [T] and labels [T] (IGNORE where no loss is taken).
    labels[t] is the token at t itself; the loss shifts it (position t-1 predicts it)."""
    input_ids: torch.Tensor
    labels: torch.Tensor


def collate(examples: Sequence[Example], device=None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels, each [B, T]. The pad
    id is 0; padded positions are masked out of attention and carry label IGNORE."""
    T = max(len(e.input_ids) for e in examples)
    batch = {"input_ids": torch.zeros(len(examples), T, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), T, dtype=torch.long),
             "labels": torch.full((len(examples), T), IGNORE, dtype=torch.long)}
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        batch["input_ids"][row, :n] = e.input_ids
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = e.labels
    return {k: v.to(device) for k, v in batch.items()}


class ExampleSampler:
    """Indices of the next batch: shuffled passes over the examples from a seeded generator,
    drawing a new permutation when one runs out, so every batch is full. Its state (generator,
    current permutation, position) is checkpointed."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.pos == len(self.order):
                self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = self.order[self.pos: self.pos + self.batch_size - len(out)]
            out += take.tolist()
            self.pos += len(take)
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"].clone(), int(state["pos"])


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
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
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


# ---------------------------------------------------------------- the loop

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


def train_loop(model: nn.Module, examples: Sequence[Example], config: TrainConfig,
               loss_fn: LossFn, *, desc: str = "train", report_cls=TrainReport) -> TrainReport:
    """Train model in place for config.steps optimizer steps on loss_fn(model, batch) ->
    (loss, {component: value}); pruned decoder weights stay exactly zero."""
    start = time.perf_counter()
    if not examples:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    masks = _frozen_masks(model)
    zeros = {name: int(m.sum()) for name, _, m in masks}
    data_fp = fingerprint_data([[e.input_ids, e.labels] for e in examples])
    report = report_cls(config=config.to_dict(), sparsity_before=decoder_sparsity(model),
                        n_examples=len(examples), data_fingerprint=data_fp)
    optimizer, scheduler = make_optimizer(model, config)
    sampler = ExampleSampler(len(examples), config.batch_size, config.seed)
    device = next(model.parameters()).device
    step, was_training = 0, model.training
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
            torch.set_rng_state(state["rng"])
            step, report.losses = state["step"], state["losses"]
            report.resumed_from, report.sparsity_before = step, state["sparsity_before"]
        model.train()
        bar = tqdm(total=config.steps, initial=step, desc=desc, leave=False)
        try:
            while step < config.steps:
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                total, parts = 0.0, {}
                for _ in range(config.grad_accum):
                    batch = collate([examples[i] for i in sampler.next()], device)
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
                every = config.checkpoint_every or config.steps
                if config.checkpoint_dir and (step % every == 0 or step == config.steps):
                    save_checkpoint(config.checkpoint_dir, model, {
                        "step": step, "losses": report.losses, "config": report.config,
                        "data_fingerprint": data_fp, "zeros": zeros,
                        "sparsity_before": report.sparsity_before,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "sampler": sampler.state_dict(), "rng": torch.get_rng_state()})
        finally:
            bar.close()
            model.zero_grad(set_to_none=True)           # hand back no gradient memory
            model.train(was_training)
    report.steps = step
    report.sparsity_after = decoder_sparsity(model)
    report.seconds = time.perf_counter() - start
    return report
