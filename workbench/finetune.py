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

With `dev=` (a Task) and `eval_every`, training stops on a dev plateau and keeps the best
weights (training.py). Losses are computed by the functions here, on `lm_forward`'s outputs:
with outputs="needed" the LM head runs only at the positions that predict a labelled token
(`causal_lm_loss_at`, the same mean cross-entropy as `causal_lm_loss` on full logits).

    report = finetune_(model, data.arith_task("one_step", "train", n=2000),
                       SFTConfig(lr=1e-4, steps=500, eval_every=25, patience=4),
                       tokenizer=tokenizer, dev=data.arith_task("one_step", "dev", n=64))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench import recipe
from workbench.arch import backbone, lm_head
from workbench.data import Task, check_calib
from workbench.evaluate import build_prompt, task_accuracy
from workbench.training import IGNORE, Example, TrainConfig, TrainReport, train_loop

__all__ = ["SFTConfig", "TrainReport", "Example", "chat_examples", "window_examples",
           "as_examples", "causal_lm_loss", "causal_lm_loss_at", "LMOutputs", "lm_forward",
           "lm_loss", "dev_evaluator", "finetune_"]


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


# ---------------------------------------------------------------- losses

def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens: position t predicts labels[t + 1].
    logits [B, T, V], labels [B, T] with IGNORE where no loss is taken."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE)


def causal_lm_loss_at(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """causal_lm_loss(head(hidden), labels) with the head applied only at the N positions that
    predict a labelled token. hidden [B, T, H] (after the final norm), labels [B, T]."""
    predicts = labels[:, 1:] != IGNORE                          # [B, T-1]
    logits = head(hidden[:, :-1][predicts])                     # [N, V]
    return F.cross_entropy(logits.float(), labels[:, 1:][predicts])


@dataclass
class LMOutputs:
    """What one forward pass gave: block outputs (hidden_states[1:], each [B, T, H]; the last
    after the final norm) when asked, and either the final hidden state [B, T, H] (backbone
    only, no LM head) or the logits [B, T, V]."""
    hidden: tuple[torch.Tensor, ...] | None
    last: torch.Tensor | None
    logits: torch.Tensor | None


def lm_forward(model: nn.Module, batch: dict, *, hidden_states: bool = False,
               logits: bool = False) -> LMOutputs:
    """Run model on a collated batch; logits=False stops below the LM head."""
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=hidden_states, use_cache=False)
    if logits:
        out = model(**kwargs)
        return LMOutputs(out.hidden_states[1:] if hidden_states else None, None, out.logits)
    out = backbone(model)(**kwargs)
    return LMOutputs(out.hidden_states[1:] if hidden_states else None, out.last_hidden_state, None)


def lm_loss(model: nn.Module, out: LMOutputs, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled tokens, from whichever output out holds."""
    if out.logits is not None:
        return causal_lm_loss(out.logits, labels)
    return causal_lm_loss_at(out.last, lm_head(model), labels)


def dev_evaluator(tokenizer, dev: Task, fewshot: int):
    """train_loop's evaluator: greedy exact-match accuracy on the dev task (batched)."""
    if not isinstance(dev, Task):
        raise TypeError(f"dev must be a workbench.data.Task, got {type(dev).__name__}")
    if tokenizer is None:
        raise ValueError("dev evaluation needs tokenizer=")

    def evaluate(model: nn.Module) -> dict:
        r = task_accuracy(model, tokenizer, dev, fewshot=fewshot)
        return {"score": r.accuracy, "n": r.n, "correct": r.correct}

    return evaluate


# ---------------------------------------------------------------- the step

def finetune_(model: nn.Module, data, config: SFTConfig | None = None, *,
              tokenizer=None, dev: Task | None = None) -> TrainReport:
    """Fine-tune model in place on the answer tokens of data (see module docstring);
    pruned decoder weights, if any, stay zero. dev: the Task of the dev evaluations."""
    config = config or SFTConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an SFTConfig (a TrainConfig), "
                        f"got {type(config).__name__}")
    examples = as_examples(data, tokenizer, config.seqlen)
    evaluator = dev_evaluator(tokenizer, dev, config.dev_fewshot) if dev is not None else None

    def loss_fn(model, batch):
        out = lm_forward(model, batch, logits=config.outputs == "all")
        ce = lm_loss(model, out, batch["labels"])
        return ce, {"ce": ce.item()}

    report = train_loop(model, examples, config, loss_fn, evaluator=evaluator, desc="sft")
    recipe.record(model, "sft", config.to_dict())
    return report
