"""Perplexity and task accuracy, checked against independent computations on tiny models."""

import math

import pytest
import torch

from workbench import data, evaluate
from workbench.models import tiny_llama, tiny_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. " * 40     # 1800 byte tokens


def test_perplexity_equals_mean_of_hf_window_losses(tiny):
    model, tok = tiny
    res = evaluate.perplexity(model, tok, TEXT, seqlen=128, batch_size=3)
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n = ids.numel() // 128
    assert res.n_windows == n and res.n_tokens == n * 127
    with torch.no_grad():   # HF's own loss: mean NLL of one window, labels shifted inside
        losses = [model(input_ids=ids[i * 128:(i + 1) * 128][None],
                        labels=ids[i * 128:(i + 1) * 128][None]).loss.item() for i in range(n)]
    assert res.perplexity == pytest.approx(math.exp(sum(losses) / n), rel=1e-5)
    # a random model over a 259-token vocabulary is close to uniform
    assert 100 < res.perplexity < 1000


def test_perplexity_and_calibration_loss_are_one_loop(tiny):
    """perplexity's mean NLL is mean_next_token_loss over the same windows, to the last bit, and
    the model is left in the mode it was in."""
    model, tok = tiny
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    windows = ids[: (ids.numel() // 64) * 64].view(-1, 64)                # [W, 64]
    model.train()
    try:
        res = evaluate.perplexity(model, tok, TEXT, seqlen=64, batch_size=4)
        assert model.training
    finally:
        model.eval()
    assert res.nll == evaluate.mean_next_token_loss(model, windows, batch_size=4)
    total, count = evaluate.next_token_nll(evaluate.model_logits(model, windows, 4))
    assert (total / count, count) == (res.nll, res.n_tokens)


def test_perplexity_windows_limits_and_inputs(tiny):
    model, tok = tiny
    full = evaluate.perplexity(model, tok, TEXT, seqlen=64)
    two = evaluate.perplexity(model, tok, TEXT, seqlen=64, max_windows=2)
    assert two.n_windows == 2 and full.n_windows == len(TEXT) // 64
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    from_ids = evaluate.perplexity(model, tok, ids, seqlen=64)
    assert from_ids.perplexity == pytest.approx(full.perplexity, rel=1e-6)
    corpus = data.Corpus(name="toy", split="eval", text=TEXT)
    assert evaluate.perplexity(model, tok, corpus, seqlen=64).corpus == "toy:eval"


def test_perplexity_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate.perplexity(model, tok, "too short", seqlen=512)
    with pytest.raises(ValueError, match="seqlen"):
        evaluate.perplexity(model, tok, TEXT, seqlen=1)
    with pytest.raises(TypeError, match="corpus"):
        evaluate.perplexity(model, tok, 3.0)


class OracleLM(torch.nn.Module):
    """Answers every question of a task by lookup: isolates prompting, batching and scoring."""

    def __init__(self, tok, answers: dict[str, str]):
        super().__init__()
        self.tok, self.answers = tok, answers
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_batches = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.seen_batches.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            assert mask[-1] == 1, "prompts must be left-padded"
            prompt = self.tok.decode(ids[mask.bool()])
            question = prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            new = self.tok(self.answers[question] + "<|im_end|>", add_special_tokens=False).input_ids
            rows.append(torch.cat([ids, torch.tensor(new)]))
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        return torch.stack([torch.cat([r, torch.full((width - len(r),), pad)]) for r in rows])


def test_task_accuracy_scores_an_oracle_exactly():
    tok = tiny_tokenizer()
    task = data.arith_task("one_step", "test", n=24)
    # right on even items, wrong on odd ones
    answers = {it.question: (it.solution if i % 2 == 0 else f"The answer is {it.answer + 1}.")
               for i, it in enumerate(task)}
    oracle = OracleLM(tok, answers)
    res = evaluate.task_accuracy(oracle, tok, task, fewshot=3, batch_size=5)
    assert res.n == 24 and res.correct == 12 and res.accuracy == 0.5
    assert [r["correct"] for r in res.records] == [i % 2 == 0 for i in range(24)]
    assert [r["question"] for r in res.records] == [it.question for it in task]
    assert max(oracle.seen_batches) == 5
    assert set(res.by_kind) == {"add", "subtract", "multiply", "divide"}


def test_prompt_formats():
    tok = tiny_tokenizer()
    task = data.arith_task("one_step", "test", n=2)
    chat = evaluate.build_prompt(tok, task, task[0].question, fewshot=3, chat=True)
    assert chat.count("<|im_start|>user") == 4 and chat.count("<|im_start|>assistant") == 4
    assert chat.endswith("<|im_start|>assistant\n")
    for ex in task.fewshot[:3]:
        assert ex.solution in chat
    plain = evaluate.build_prompt(tok, task, task[0].question, fewshot=2, chat=False)
    assert plain.count("Question:") == 3 and plain.endswith("Answer:")


def test_task_accuracy_runs_real_generation_on_a_tiny_model():
    model, tok = tiny_llama(seed=0)
    task = data.arith_task("one_step", "test", n=6)
    res = evaluate.task_accuracy(model, tok, task, fewshot=1, batch_size=4, max_new_tokens=8)
    assert res.n == 6 and len(res.records) == 6 and res.max_new_tokens == 8
    assert all(isinstance(r["completion"], str) for r in res.records)
    assert 0.0 <= res.accuracy <= 1.0


def test_task_accuracy_bad_input(tiny):
    model, tok = tiny
    task = data.arith_task("one_step", "test", n=2)
    with pytest.raises(ValueError, match="fewshot"):
        evaluate.task_accuracy(model, tok, task, fewshot=len(task.fewshot) + 1)
    with pytest.raises(TypeError, match="Task"):
        evaluate.task_accuracy(model, tok, ["not a task"])
