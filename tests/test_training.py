"""The fast training paths against the reference path on a tiny model (same loss, same
trajectory within rounding), pruned weights exactly zero after every step in every precision,
length-bucketed batches, and early stopping on a dev plateau with best-weight restore and
exact resume."""

import copy

import pytest
import torch

from workbench import data
from workbench.arch import layer_linears
from workbench.batching import BUCKET_BATCHES, ExampleSampler, bucketed_order
from workbench.distill import DistillConfig, distill_
from workbench.finetune import (
    SFTConfig,
    causal_lm_loss,
    causal_lm_loss_at,
    chat_examples,
    finetune_,
)
from workbench.models import tiny_llama
from workbench.plateau import Plateau
from workbench.pruning import PruneConfig
from workbench.training import PRECISIONS, TrainConfig, collate, train_loop

REFERENCE = dict(precision="fp32", outputs="all", batching="random", fused_adamw=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return data.arith_task("one_step", "train", n=16)


@pytest.fixture(scope="module")
def pair(pruned_pair):
    return pruned_pair


def _distill(pair, task, **kw):
    teacher, student, tok = pair
    student = copy.deepcopy(student)
    config = DistillConfig(**{**dict(lr=3e-3, steps=5, batch_size=4, seqlen=256), **kw})
    return student, distill_(student, teacher, task, config, tokenizer=tok)


def _curve(report, key="loss"):
    return torch.tensor([r[key] for r in report.losses])


# ---------------------------------------------------------------- same math

def test_loss_at_labelled_positions_equals_the_full_logits_loss(task):
    model, tok = tiny_llama(seed=0)
    batch = collate(chat_examples(tok, task)[:5])
    with torch.no_grad():
        out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        full = causal_lm_loss(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                              batch["labels"])
        at = causal_lm_loss_at(out.last_hidden_state, model.lm_head, batch["labels"])
    assert at.item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("change,tol", [({"outputs": "needed"}, 1e-5), ({"fused_adamw": True}, 1e-4),
                                        ({"precision": "bf16-teacher"}, 2e-2),
                                        ({"precision": "bf16"}, 5e-2)])
def test_fast_paths_follow_the_reference_trajectory(pair, task, change, tol):
    # The same batches (random order) and seed: only the arithmetic of the path differs.
    _, ref = _distill(pair, task, **REFERENCE)
    _, fast = _distill(pair, task, **{**REFERENCE, **change})
    for key in ("loss", "ce", "squarehead"):
        a, b = _curve(ref, key), _curve(fast, key)
        assert torch.allclose(a, b, rtol=tol), (key, a, b)
    drop = _curve(ref)[0] - _curve(ref)[-1]                 # training moved more than the
    assert drop > tol * _curve(ref)[0]                      # paths are allowed to differ


def test_sft_fast_path_follows_the_reference(task):
    model, tok = tiny_llama(seed=0)
    cfg = dict(lr=1e-3, steps=5, batch_size=4, seqlen=256)
    ref = finetune_(copy.deepcopy(model), task, SFTConfig(**cfg, **REFERENCE), tokenizer=tok)
    fast = finetune_(copy.deepcopy(model), task,
                     SFTConfig(**cfg, **{**REFERENCE, "outputs": "needed", "fused_adamw": True}),
                     tokenizer=tok)
    assert torch.allclose(_curve(ref), _curve(fast), rtol=1e-4)


def test_needed_outputs_skip_what_no_weighted_loss_reads(pair, task):
    _, ce_only = _distill(pair, task, squarehead=0.0, ce=1.0, steps=2)
    assert set(ce_only.losses[0]) == {"step", "loss", "ce", "lr", "grad_norm"}   # no teacher pass
    _, sh = _distill(pair, task, steps=2)
    assert {"squarehead", "ce"} <= set(sh.losses[0]) and "kd" not in sh.losses[0]
    _, every = _distill(pair, task, steps=2, outputs="all", squarehead=0.0)
    assert {"squarehead", "ce", "kd"} <= set(every.losses[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pruned_weights_are_zero_after_every_step(pair, task, precision):
    teacher, student0, tok = pair
    student = copy.deepcopy(student0)
    masks = {n: lin.weight == 0 for n, lin in layer_linears(student).items()}
    seen = []

    def check(module, args):            # every forward after the first sees the last update
        seen.append(all(bool((lin.weight[masks[n]] == 0).all())
                        for n, lin in layer_linears(student).items()))

    handle = student.model.register_forward_pre_hook(check)
    try:
        distill_(student, teacher, task, DistillConfig(lr=1e-2, steps=4, batch_size=4, seqlen=256,
                                                        weight_decay=0.5, precision=precision),
                 tokenizer=tok)
    finally:
        handle.remove()
    assert len(seen) == 4 and all(seen)
    for n, lin in layer_linears(student).items():
        assert (lin.weight[masks[n]] == 0).all() and lin.weight.dtype == torch.float32, n
        assert (lin.weight[~masks[n]] != layer_linears(student0)[n].weight[~masks[n]]).any()


# ---------------------------------------------------------------- length buckets

def test_bucketed_passes_cover_every_example_and_pad_less():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 200, (3 * 8 * BUCKET_BATCHES + 5,), generator=g)
    n, bs = len(lengths), 8
    order = bucketed_order(torch.randperm(n, generator=g), lengths, bs, g)
    assert sorted(order.tolist()) == list(range(n))                        # a permutation
    assert len(order) % bs != 0 and set(order[-(n % bs):].tolist())        # short batch last
    bucketed = ExampleSampler(n, bs, seed=1, lengths=lengths.tolist())
    plain = ExampleSampler(n, bs, seed=1)

    def padding(sampler):
        total = 0
        for _ in range(n // bs):
            idx = sampler.next()
            total += int((lengths[idx].max() - lengths[idx]).sum())
        return total

    assert padding(bucketed) < 0.25 * padding(plain)
    a, b = ExampleSampler(n, bs, 3, lengths.tolist()), ExampleSampler(n, bs, 3, lengths.tolist())
    assert [a.next() for _ in range(40)] == [b.next() for _ in range(40)]  # deterministic
    c = ExampleSampler(n, bs, 4, lengths.tolist())
    assert [a.next() for _ in range(5)] != [c.next() for _ in range(5)]


# ---------------------------------------------------------------- dev plateau

def test_plateau_tracks_the_best_and_stops_after_patience():
    p = Plateau(patience=2)
    assert p.update(0, 0.1) and p.update(5, 0.3) and not p.update(10, 0.3)   # a tie is no gain
    assert not p.stop and not p.update(15, 0.2) and p.stop
    assert (p.best_step, p.best_score, [r["step"] for r in p.curve]) == (5, 0.3, [0, 5, 10, 15])
    with pytest.raises(ValueError):
        p.update(20, float("nan"))
    q = Plateau()
    q.load_state_dict(p.state_dict())
    assert q == p and not Plateau(patience=0, since_best=99).stop


def _scripted(scores, snapshots):
    """An evaluator that returns scores in turn and remembers the weights it saw."""
    calls = {"n": 0}

    def evaluate(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        calls["n"] += 1
        return {"score": scores[calls["n"] - 1], "n": 10}

    return evaluate


def _sft_loop(model, examples, evaluator, **kw):
    def loss_fn(m, batch):
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = causal_lm_loss(out.logits, batch["labels"])
        return loss, {"ce": loss.item()}

    config = TrainConfig(**{**dict(lr=1e-3, steps=20, batch_size=4, seqlen=256, eval_every=2,
                                   patience=2), **kw})
    return train_loop(model, examples, config, loss_fn, evaluator=evaluator)


def test_training_stops_on_a_plateau_and_keeps_the_best_weights(task):
    model, tok = tiny_llama(seed=0)
    examples = chat_examples(tok, task)
    snapshots = []
    # evaluations at steps 0, 2, 4, 6, 8: best at 4, then two without gain -> stop at 8
    report = _sft_loop(model, examples, _scripted([0.1, 0.2, 0.5, 0.4, 0.5], snapshots))
    assert report.steps == 8 and report.stopped_early and len(report.losses) == 8
    assert [r["step"] for r in report.dev_curve] == [0, 2, 4, 6, 8]
    assert report.best_step == 4 and report.best_score == 0.5 and report.dev_curve[2]["n"] == 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k
    # no patience: runs to the cap, evaluated at the last step too
    model2, _ = tiny_llama(seed=0)
    full = _sft_loop(model2, examples, _scripted([0.1, 0.2, 0.3, 0.9], []), steps=5, patience=0)
    assert full.steps == 5 and not full.stopped_early
    assert [r["step"] for r in full.dev_curve] == [0, 2, 4, 5] and full.best_step == 5


def test_starting_point_can_be_the_best(task):
    model, tok = tiny_llama(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = _sft_loop(model, chat_examples(tok, task), _scripted([0.9, 0.1, 0.1], []), steps=6)
    assert report.best_step == 0 and report.steps == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_interrupted_run_with_dev_evaluations_resumes_exactly(task, tmp_path):
    model0, tok = tiny_llama(seed=0)
    examples = chat_examples(tok, task)
    scores = [0.1, 0.3, 0.2, 0.4, 0.35, 0.3]      # best at step 6, stop at step 10
    ref_model = copy.deepcopy(model0)
    ref = _sft_loop(ref_model, examples, _scripted(scores, []))
    assert ref.best_step == 6 and ref.steps == 10

    class Stop(Exception):
        pass

    seen = []

    def interrupting(model):
        if len(seen) == 4:                       # after the checkpoint of step 6, before step 8's
            raise Stop
        seen.append(0)
        return {"score": scores[len(seen) - 1], "n": 10}

    kw = dict(checkpoint_dir=str(tmp_path), checkpoint_every=3)
    with pytest.raises(Stop):
        _sft_loop(copy.deepcopy(model0), examples, interrupting, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-000006.safetensors",
                                                          "latest.json", "step-000006"]
    model = copy.deepcopy(model0)
    resumed = _sft_loop(model, examples, _scripted(scores[4:], []), resume=True, **kw)
    assert resumed.resumed_from == 6 and resumed.steps == 10 and resumed.best_step == 6
    assert resumed.losses == ref.losses and resumed.dev_curve == ref.dev_curve
    for (k, a), b in zip(model.state_dict().items(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_finetune_with_a_dev_task_scores_real_generations(task):
    model, tok = tiny_llama(seed=0)
    dev = data.arith_task("one_step", "dev", n=4)
    report = finetune_(model, task, SFTConfig(lr=1e-3, steps=2, batch_size=4, seqlen=256,
                                              eval_every=1), tokenizer=tok, dev=dev)
    assert [r["step"] for r in report.dev_curve] == [0, 1, 2]
    assert all(r["n"] == 4 and 0 <= r["score"] <= 1 for r in report.dev_curve)
    with pytest.raises(ValueError, match="dev set"):
        finetune_(model, task, SFTConfig(steps=2, eval_every=1), tokenizer=tok)


@pytest.mark.parametrize("kw,field", [({"precision": "fp16"}, "precision"),
                                      ({"outputs": "some"}, "outputs"),
                                      ({"batching": "sorted"}, "batching"),
                                      ({"fused_adamw": 1}, "fused_adamw"),
                                      ({"eval_every": -1}, "eval_every"),
                                      ({"patience": 2}, "patience"),
                                      ({"dev_fewshot": -1}, "dev_fewshot")])
def test_new_fields_are_validated(kw, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kw)


# ---------------------------------------------------------------- config and report as JSON

# Hashes of to_dict() computed before the configs took workbench.configs.Serializable: the
# recovery points are keyed by them.
PINNED_KEYS = [(TrainConfig, dict(), "1ebbed65370bccd06ca1d86763882506f3a79571f1f463edf89ad5ef651a6f0e"),
               (SFTConfig, dict(steps=600, eval_every=25, patience=4, precision="bf16"),
                "2432f613de5f38b6b84b6914a2581808482b10bccfb84d126a04761e98b5c916")]


@pytest.mark.parametrize("cls,kwargs,key", PINNED_KEYS)
def test_train_config_keys_are_pinned_and_round_trip(cls, kwargs, key):
    import json

    from workbench.cache import hash_json

    cfg = cls(**kwargs)
    assert hash_json(cfg.to_dict()) == key
    back = cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and type(back) is cls
    with pytest.raises(ValueError, match=f"unknown {cls.__name__} keys: learning_rate"):
        cls.from_dict({"learning_rate": 1e-4})


def test_train_report_round_trips_and_config_type_is_checked():
    import json

    from workbench.training import TrainReport

    model, _ = tiny_llama(seed=0)
    ids = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))
    report = finetune_(model, ids, SFTConfig(steps=2, batch_size=2, seqlen=16, **REFERENCE))
    assert report.steps == 2 and len(report.losses) == 2
    back = TrainReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report
    with pytest.raises(ValueError, match="unknown TrainReport keys: loss"):
        TrainReport.from_dict({**report.to_dict(), "loss": 1.0})
    with pytest.raises(TypeError, match="SFTConfig"):
        finetune_(model, ids, PruneConfig())
