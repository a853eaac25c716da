"""Accuracy of a live model: perplexity, generated-answer task accuracy, and a bridge to the
lm-evaluation-harness.

- Perplexity: non-overlapping windows of `seqlen` tokens, the remainder dropped, exp of the
  mean next-token NLL over every predicted position (the SparseGPT/Wanda protocol); the NLL is
  summed by `next_token_nll`, the loss of every calibration-loss measurement too.
- Task accuracy: k-shot prompts in the model's chat format (multi-turn: each worked example is
  a user question and an assistant answer), greedy decoding, batched with left padding; the
  prediction is the number after "answer is" (workbench.data.answer_from_text), compared
  exactly with the task's integer answer. Per-item records are kept.
- lm-eval 0.4.x through HFLM(pretrained=<live model>), so nothing is reloaded from disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from workbench.data import Corpus, Task, answer_from_text, token_stream
from workbench.packed_lm import as_causal_lm, model_device

# ---------------------------------------------------------------- next-token loss


def next_token_nll(outputs: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, int]:
    """(summed next-token NLL in nats, predicted tokens) over (logits [B, L, V], ids [B, L])
    pairs: the logits at position t score token t + 1, in float32 whatever the model's dtype.
    The one loss loop of perplexity, mean_next_token_loss and the outlier sensitivity replay."""
    total, count = 0.0, 0
    for logits, ids in outputs:
        logits = logits.float()
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),   # [B*(L-1), V]
                                 ids[:, 1:].reshape(-1), reduction="sum").item()
        count += ids[:, 1:].numel()
    return total, count


def model_logits(model, windows: Tensor, batch_size: int,
                 progress: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(logits [B, L, V], ids [B, L]) of a causal LM for each batch of windows [W, L] (moved to
    the model's device), one batch at a time; progress: a tqdm bar's label, None for no bar."""
    device = model_device(model)
    starts = range(0, windows.shape[0], batch_size)
    for b in tqdm(starts, desc=progress, leave=False) if progress else starts:
        batch = windows[b: b + batch_size].to(device)                     # [B, L]
        yield model(input_ids=batch, use_cache=False).logits, batch


@torch.inference_mode()
def mean_next_token_loss(model, windows: Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of windows [n, L]."""
    total, count = next_token_nll(model_logits(model, windows, batch_size))
    return total / count


# ---------------------------------------------------------------- perplexity


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float                 # mean next-token negative log-likelihood (nats)
    n_tokens: int              # predicted tokens that entered the mean
    n_windows: int
    seqlen: int
    corpus: str
    corpus_fingerprint: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _token_stream(tokenizer, corpus) -> tuple[torch.Tensor, str, str]:
    """(ids [T], name, fingerprint) for a Corpus, raw text, or 1-D tensor of token ids."""
    from workbench.cache import fingerprint_data

    if isinstance(corpus, torch.Tensor):
        if corpus.dim() != 1 or corpus.dtype not in (torch.int64, torch.int32):
            raise ValueError("a token-id corpus must be a 1-D integer tensor")
        return corpus.long(), "token-ids", fingerprint_data(corpus)
    if isinstance(corpus, Corpus):
        return token_stream(tokenizer, corpus), f"{corpus.name}:{corpus.split}", corpus.fingerprint
    if isinstance(corpus, str):
        return token_stream(tokenizer, Corpus("text", "raw", corpus)), "text", fingerprint_data(corpus)
    raise TypeError(f"corpus must be a Corpus, str or 1-D LongTensor, got {type(corpus).__name__}")


@torch.inference_mode()
def perplexity(model, tokenizer, corpus, seqlen: int = 512, max_windows: int | None = None,
               batch_size: int = 4) -> PerplexityResult:
    """Perplexity of model on corpus over non-overlapping windows of seqlen tokens."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids, name, fp = _token_stream(tokenizer, corpus)
    n_windows = ids.numel() // seqlen
    if n_windows == 0:
        raise ValueError(f"corpus {name!r} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows = ids[: n_windows * seqlen].view(n_windows, seqlen)        # [W, L]
    model = as_causal_lm(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        total_nll, total_tokens = next_token_nll(
            model_logits(model, windows, batch_size, progress=f"perplexity {name}"))
    finally:
        model.train(was_training)
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise FloatingPointError(f"perplexity on {name!r} is not finite (mean NLL {mean_nll})")
    return PerplexityResult(
        perplexity=math.exp(mean_nll), nll=mean_nll, n_tokens=total_tokens, n_windows=n_windows,
        seqlen=seqlen, corpus=name, corpus_fingerprint=fp, seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------- generated-answer accuracy


@dataclass
class TaskResult:
    accuracy: float
    n: int
    correct: int
    task: str
    task_fingerprint: str
    fewshot: int
    chat: bool
    max_new_tokens: int
    by_kind: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self, with_records: bool = True) -> dict:
        d = asdict(self)
        if not with_records:
            d.pop("records")
        return d


def build_prompt(tokenizer, task: Task, question: str, fewshot: int, chat: bool) -> str:
    """The k-shot prompt for one question: multi-turn chat, or plain Question/Answer text."""
    shots = task.fewshot[:fewshot]
    if chat:
        messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
        for ex in shots:
            messages += [{"role": "user", "content": ex.question},
                         {"role": "assistant", "content": ex.solution}]
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = "".join(f"Question: {ex.question}\nAnswer: {ex.solution}\n\n" for ex in shots)
    return text + f"Question: {question}\nAnswer:"


def _default_max_new_tokens(tokenizer, task: Task) -> int:
    """Room for twice the longest worked example, so the answer sentence always fits."""
    lengths = [len(tokenizer(ex.solution, add_special_tokens=False).input_ids) for ex in task.fewshot]
    return min(384, 2 * max(lengths, default=64) + 16)


def _cut_plain_completion(text: str) -> str:
    """A plain-format completion runs on into invented questions; keep the first answer."""
    for stop in ("\nQuestion:", "\n\n"):
        text = text.split(stop, 1)[0]
    return text


@torch.inference_mode()
def task_accuracy(model, tokenizer, task: Task, fewshot: int = 3, batch_size: int = 16,
                  max_new_tokens: int | None = None, chat: bool | None = None) -> TaskResult:
    """Greedy k-shot accuracy of model on task; chat=None uses the chat format when the
    tokenizer has a chat template."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a workbench.data.Task, got {type(task).__name__}")
    if len(task) == 0:
        raise ValueError(f"task {task.name!r} has no items")
    if not 0 <= fewshot <= len(task.fewshot):
        raise ValueError(f"fewshot must be in [0, {len(task.fewshot)}] for {task.name!r}, got {fewshot}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chat = bool(tokenizer.chat_template) if chat is None else chat
    max_new = max_new_tokens or _default_max_new_tokens(tokenizer, task)
    prompts = [build_prompt(tokenizer, task, item.question, fewshot, chat) for item in task]
    # Batch prompts of similar length together: less padding, and greedy output of a padded
    # row equals its unpadded output up to float rounding.
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    eos = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
           if isinstance(t, int) and t != tokenizer.unk_token_id]
    from transformers import GenerationConfig

    gen_config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos, temperature=None, top_p=None, top_k=None,
    )
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model = as_causal_lm(model)
    was_training = model.training
    model.eval()
    device = model_device(model)
    completions: dict[int, str] = {}
    start = time.perf_counter()
    try:
        for b in tqdm(range(0, len(order), batch_size), desc=f"{task.name} {fewshot}-shot", leave=False):
            idx = order[b: b + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, generation_config=gen_config)
            new = out[:, enc.input_ids.shape[1]:]
            for i, row in zip(idx, new, strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True)
                completions[i] = text if chat else _cut_plain_completion(text)
    finally:
        tokenizer.padding_side = saved_side
        model.train(was_training)
    records, per_kind = [], {}
    for i, item in enumerate(task):
        pred = answer_from_text(completions[i])
        ok = pred is not None and abs(float(pred) - float(item.answer)) < 1e-6
        records.append({"question": item.question, "answer": item.answer, "kind": item.kind,
                        "completion": completions[i], "parsed": pred, "correct": ok})
        per_kind.setdefault(item.kind, []).append(ok)
    correct = sum(r["correct"] for r in records)
    return TaskResult(
        accuracy=correct / len(records), n=len(records), correct=correct, task=task.name,
        task_fingerprint=task.fingerprint, fewshot=fewshot, chat=chat, max_new_tokens=max_new,
        by_kind={k: sum(v) / len(v) for k, v in sorted(per_kind.items())}, records=records,
        seconds=time.perf_counter() - start,
    )

from workbench.harness import lm_eval_tasks  # noqa: E402, F401  (public name re-exported here)
