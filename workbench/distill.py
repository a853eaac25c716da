"""SquareHead distillation: recover a pruned student towards its dense teacher with the
sparsity pattern held fixed (Kurtic et al. 2023, "Sparse Fine-tuning for Inference
Acceleration of Large Language Models", arXiv 2310.06927, section 3).

    loss = squarehead * Σ_l SH_l  +  ce * CE(student, labels)  +  kd * T² KL(p_t ‖ p_s)

    SH_l = mean((h_s,l − h_t,l)²) / (mean(h_t,l²) + eps)        (paper, eq. 1)

over the non-padding tokens and all features of every decoder-block output l. The block
outputs are `hidden_states[1:]` of the Hugging Face forward; by its convention the last one is
taken after the final norm. Normalising by the teacher's energy puts every layer on the same
scale whatever its magnitude. KD (Hinton et al. 2015, arXiv 1503.02531) is scaled by T² so its
gradients keep their size across temperatures. Only components with a weight > 0 carry
gradients. With outputs="all" (the reference path) all three are computed and logged every
step; with "needed" a component is computed only when weighted or free: CE is always logged
(the LM head at the answer positions costs little), SquareHead only when the teacher runs
anyway, KD only when weighted; the teacher runs without its LM head unless KD is on, and not
at all when no weighted loss reads it. The teacher is frozen: eval mode, no_grad.

    report = distill_(student, teacher, data.arith_task("one_step", "train", n=2000),
                      DistillConfig(squarehead=1.0, ce=1.0, steps=500), tokenizer=tokenizer)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench import recipe
from workbench.arch import get_arch
from workbench.configs import check_number
from workbench.data import Task
from workbench.finetune import as_examples, dev_evaluator, lm_forward, lm_loss
from workbench.training import TrainConfig, TrainReport, autocast, train_loop

LOSSES = ("squarehead", "ce", "kd")
_SAME = ("num_hidden_layers", "hidden_size", "vocab_size")   # teacher and student must agree


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Loss weights (>= 0, not all 0) on SquareHead, cross-entropy on the labels and
    KL(teacher ‖ student) at `temperature`; eps keeps SH_l finite for a silent teacher layer.
    The other fields are workbench.training.TrainConfig's."""
    squarehead: float = 1.0
    ce: float = 1.0
    kd: float = 0.0
    temperature: float = 1.0
    eps: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        for name in LOSSES:
            check_number(name, getattr(self, name), 0, strict=False)
        if not any(getattr(self, name) > 0 for name in LOSSES):
            raise ValueError(f"at least one loss weight of {', '.join(LOSSES)} must be > 0")
        check_number("temperature", self.temperature, 0, strict=True)
        check_number("eps", self.eps, 0, strict=False)


@dataclass
class DistillReport(TrainReport):
    """TrainReport whose loss rows carry squarehead, ce and kd beside the weighted total."""


# ---------------------------------------------------------------- pure math

def squarehead_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                    attention_mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Σ_l mean((h_s − h_t)²) / (mean(h_t²) + eps) over tokens with attention_mask 1 and all
    features. hidden: one [B, T, H] tensor per layer; attention_mask [B, T] or None (all)."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student layers vs {len(teacher_hidden)} teacher layers")
    total = torch.zeros((), device=student_hidden[0].device)
    for h_s, h_t in zip(student_hidden, teacher_hidden, strict=True):
        if h_s.shape != h_t.shape:
            raise ValueError(f"hidden shapes differ: {tuple(h_s.shape)} vs {tuple(h_t.shape)}")
        h_s, h_t = h_s.float(), h_t.float()
        w = (torch.ones(h_t.shape[:-1], device=h_t.device) if attention_mask is None
             else attention_mask.to(h_t.device, torch.float32))[..., None]   # [B, T, 1]
        n = w.sum() * h_t.shape[-1]                 # entries that count: tokens × features
        mse = (w * (h_s - h_t).square()).sum() / n
        energy = (w * h_t.square()).sum() / n
        total = total + mse / (energy + eps)        # Kurtic et al. 2023, eq. 1
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            attention_mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over the vocabulary and averaged over
    tokens with attention_mask 1. logits [B, T, V], attention_mask [B, T] or None."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)   # [B, T]
    if attention_mask is None:
        return kl.mean() * temperature ** 2
    w = attention_mask.to(kl.dtype)
    return (kl * w).sum() / w.sum() * temperature ** 2


# ---------------------------------------------------------------- the step

def check_pair(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student must be distinct models of one architecture and shape."""
    if student is teacher:
        raise ValueError("student and teacher are the same object: distill from a frozen copy")
    get_arch(student), get_arch(teacher)
    s, t = student.config, teacher.config
    for key in ("model_type", *_SAME):
        if getattr(s, key, None) != getattr(t, key, None):
            raise ValueError(f"teacher and student differ in {key}: teacher "
                             f"{getattr(t, key, None)}, student {getattr(s, key, None)}")


def distill_(student: nn.Module, teacher: nn.Module, data, config: DistillConfig | None = None,
             *, tokenizer=None, dev: Task | None = None) -> DistillReport:
    """Distill teacher into student in place with SquareHead (+ CE, KD); the student's pruned
    decoder weights stay exactly zero. data: an arith Task (needs tokenizer), a LongTensor of
    token ids [N, T], or a list of workbench.training.Example. dev: the Task of the dev
    evaluations (early stopping, see training.py).

    The step shape is (model, data, config) with the teacher before data: the teacher is a
    second model the loss reads, not data (it is not consumed batch by batch, and it must match
    the student's architecture, which check_pair verifies first)."""
    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
    check_pair(student, teacher)
    examples = as_examples(data, tokenizer, config.seqlen)
    evaluator = dev_evaluator(tokenizer, dev, config.dev_fewshot) if dev is not None else None
    weights = {name: getattr(config, name) for name in LOSSES}
    every = config.outputs == "all"
    full_logits = every or weights["kd"] > 0                    # KD reads every position
    run_teacher = every or weights["squarehead"] > 0 or weights["kd"] > 0
    teacher_device = next(teacher.parameters()).device

    def loss_fn(student, batch):
        mask = batch["attention_mask"]
        t = None
        if run_teacher:
            teacher_precision = "fp32" if config.precision == "fp32" else "bf16"
            with torch.no_grad(), autocast(teacher_precision, teacher_device):
                t = lm_forward(teacher, {k: v.to(teacher_device) for k, v in batch.items()},
                               hidden_states=True, logits=full_logits)
        s = lm_forward(student, batch, hidden_states=t is not None, logits=full_logits)
        compute = {"ce": lambda: lm_loss(student, s, batch["labels"])}
        if t is not None:
            compute["squarehead"] = lambda: squarehead_loss(
                s.hidden, [h.to(mask.device) for h in t.hidden], mask, config.eps)
        if full_logits:
            compute["kd"] = lambda: kd_loss(s.logits, t.logits.to(mask.device), mask,
                                            config.temperature)
        total, parts = torch.zeros((), device=mask.device), {}
        for name in LOSSES:
            if name not in compute:
                continue
            if weights[name] > 0:
                value = compute[name]()
                total = total + weights[name] * value
            else:                                   # logged only: keep it out of the graph
                with torch.no_grad():
                    value = compute[name]()
            parts[name] = value.item()
        return total, parts

    was_training = teacher.training
    teacher.eval()
    try:
        report = train_loop(student, examples, config, loss_fn, evaluator=evaluator,
                            desc="squarehead", report_cls=DistillReport)
    finally:
        teacher.train(was_training)
    recipe.record(student, "distill", config.to_dict())
    return report
