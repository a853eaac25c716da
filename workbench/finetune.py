"""Supervised fine-tuning (SFT): the loss on answer tokens only. It makes the dense teacher
that SquareHead distillation (distill.py) recovers a pruned student towards.

Data, turned into `Example`s by `as_examples`:
  Task          each item becomes one conversation in the model's chat format: the prompt is
                exactly what evaluate.build_prompt gives at 0 shots (so training and scoring see
                the same text), the answer is the item's worked solution ("4 x 6 = 24. The
                answer is 24.") and the template's end-of-turn tokens. Prompt tokens get label
                -100. Without a chat template, the plain "Question: ...\\nAnswer:" format.
  LongTensor    token ids [N, T]: rows longer than seqlen are cut into windows of seqlen
                tokens (remainder dropped); the LM loss is taken on every token.

    report = finetune_(model, data.arith_task("one_step", "train", n=2000),
                       SFTConfig(lr=1e-4, steps=500), tokenizer=tokenizer)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.data import Task, check_calib
from workbench.evaluate import build_prompt
from workbench.training import IGNORE, Example, TrainConfig, TrainReport, train_loop

__all__ = ["SFTConfig", "TrainReport", "Example", "chat_examples", "window_examples",
           "as_examples", "causal_lm_loss", "finetune_"]


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: the fields of workbench.training.TrainConfig (lr, steps,
    batch_size, seqlen, warmup, grad_accum, grad_clip, weight_decay, seed, checkpointing)."""


# ---------------------------------------------------------------- data

def _sft_texts(tokenizer, task: Task, question: str, solution: str, chat: bool) -> tuple[str, str]:
    """(prompt, answer) texts of one worked example; prompt + answer is the whole sequence."""
    prompt = build_prompt(tokenizer, task, question, fewshot=0, chat=chat)
    if not chat:
        return prompt, f" {solution}{tokenizer.eos_token or ''}"
    messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not render a conversation as its "
                         "generation prompt followed by the answer; cannot mask the prompt")
    return prompt, full[len(prompt):]


def chat_examples(tokenizer, task: Task, chat: bool | None = None) -> list[Example]:
    """One Example per task item: prompt tokens labelled IGNORE, answer tokens labelled with
    themselves. Prompt and answer are tokenized apart, as at generation time, so the model
    learns to continue exactly the tokens evaluate.task_accuracy feeds it."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a workbench.data.Task, got {type(task).__name__}")
    chat = bool(tokenizer.chat_template) if chat is None else chat
    out = []
    for item in task:
        prompt, answer = _sft_texts(tokenizer, task, item.question, item.solution, chat)
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(answer, add_special_tokens=False).input_ids
        out.append(Example(torch.tensor(p + a), torch.tensor([IGNORE] * len(p) + a)))
    return out


def window_examples(ids: torch.Tensor, seqlen: int) -> list[Example]:
    """Rows of token ids [N, T] as LM examples with every token labelled; rows longer than
    seqlen are cut into T // seqlen windows (the remainder is dropped)."""
    ids = check_calib(ids)
    if ids.shape[1] > seqlen:
        n = ids.shape[1] // seqlen
        ids = ids[:, : n * seqlen].reshape(-1, seqlen)          # [N * n, seqlen]
    if ids.shape[1] < 2:
        raise ValueError(f"token windows need at least 2 tokens, got {tuple(ids.shape)}")
    return [Example(row, row) for row in ids]


def as_examples(data, tokenizer=None, seqlen: int = 512) -> list[Example]:
    """A Task (needs tokenizer), a LongTensor [N, T] of token ids, or a list of Examples."""
    if isinstance(data, Task):
        if tokenizer is None:
            raise ValueError("a Task needs tokenizer= to render its chat examples")
        examples = chat_examples(tokenizer, data)
    elif isinstance(data, torch.Tensor):
        examples = window_examples(data, seqlen)
    elif isinstance(data, Sequence) and data and all(isinstance(e, Example) for e in data):
        examples = list(data)
    else:
        raise TypeError("data must be a workbench.data.Task, a LongTensor [N, T] of token ids, "
                        f"or a non-empty list of Examples; got {type(data).__name__}")
    longest = max(len(e.input_ids) for e in examples)
    if longest > seqlen:
        raise ValueError(f"the longest example has {longest} tokens, more than seqlen={seqlen}")
    if any(not (e.labels[1:] != IGNORE).any() for e in examples):
        raise ValueError("every example needs at least one labelled token after its first")
    return examples


# ---------------------------------------------------------------- loss and step

def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens: position t predicts labels[t + 1].
    logits [B, T, V], labels [B, T] with IGNORE where no loss is taken."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE)


def finetune_(model: nn.Module, data, config: SFTConfig | None = None, *,
              tokenizer=None) -> TrainReport:
    """Fine-tune model in place on the answer tokens of data (see module docstring);
    pruned decoder weights, if any, stay zero."""
    config = config or SFTConfig()
    examples = as_examples(data, tokenizer, config.seqlen)

    def loss_fn(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits                  # [B, T, V]
        ce = causal_lm_loss(logits, batch["labels"])
        return ce, {"ce": ce.item()}

    return train_loop(model, examples, config, loss_fn, desc="sft")
