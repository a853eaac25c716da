"""Supervised fine-tuning and SquareHead distillation on tiny models: the loss against a hand
computation, frozen masks under weight decay, exact resume, determinism, SFT label masking,
and clear errors for bad configs and mismatched teacher/student pairs."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench import data
from workbench.arch import layer_linears
from workbench.distill import DistillConfig, DistillReport, distill_, kd_loss, squarehead_loss
from workbench.evaluate import build_prompt
from workbench.finetune import SFTConfig, chat_examples, finetune_, window_examples
from workbench.models import tiny_llama, tiny_tokenizer
from workbench.training import IGNORE, ExampleSampler, collate, lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return data.arith_task("one_step", "train", n=12)


@pytest.fixture(scope="module")
def pair(pruned_pair):
    return pruned_pair


def _config(**kw):
    base = dict(lr=1e-3, steps=6, batch_size=3, seqlen=256, warmup=1, weight_decay=0.1, kd=0.5)
    return DistillConfig(**{**base, **kw})


def _distill(pair, task, **kw):
    teacher, student, tok = pair
    student = copy.deepcopy(student)
    return student, distill_(student, teacher, task, _config(**kw), tokenizer=tok)


# ---------------------------------------------------------------- pure math

def test_squarehead_equals_hand_computation_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    s1, s2 = t1 + 0.1 * torch.randn(2, 3, 4, generator=g), t2 + torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])           # last token of row 1 is padding
    keep = mask.bool()
    expected = sum(((s[keep] - t[keep]) ** 2).mean() / ((t[keep] ** 2).mean() + 1e-6)
                   for s, t in ((s1, t1), (s2, t2)))
    got = squarehead_loss([s1, s2], [t1, t2], mask, eps=1e-6)
    torch.testing.assert_close(got, expected)
    # Whatever sits at the padded position does not count.
    s1[1, 2], t2[1, 2] = 1e6, -1e6
    torch.testing.assert_close(squarehead_loss([s1, s2], [t1, t2], mask, eps=1e-6), expected)
    # No mask = every token; identical hidden states = 0.
    assert squarehead_loss([t1], [t1], None).item() == 0.0
    full = ((s1 - t1) ** 2).mean() / ((t1 ** 2).mean() + 1e-6)
    torch.testing.assert_close(squarehead_loss([s1], [t1]), full)


def test_squarehead_is_scale_invariant_per_layer():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    torch.testing.assert_close(squarehead_loss([100 * s], [100 * t], eps=0.0),
                               squarehead_loss([s], [t], eps=0.0))


def test_kd_loss_is_t2_scaled_kl_over_unpadded_tokens():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    T = 2.0
    pt, ps = F.softmax(zt / T, -1), F.softmax(zs / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1)              # [2, 3]
    expected = kl[mask.bool()].mean() * T ** 2
    torch.testing.assert_close(kd_loss(zs, zt, mask, T), expected)
    assert kd_loss(zt, zt, mask, T).abs().item() < 1e-6


def test_lr_schedule_warms_up_then_decays_and_never_hits_zero():
    f = [lr_factor(s, warmup=2, steps=6) for s in range(6)]
    assert f == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])
    assert [lr_factor(s, 0, 4) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


# ---------------------------------------------------------------- SFT data

def test_sft_labels_mask_the_prompt(task):
    tok = tiny_tokenizer()
    examples = chat_examples(tok, task)
    assert len(examples) == len(task)
    for item, ex in zip(task, examples, strict=True):
        prompt = build_prompt(tok, task, item.question, fewshot=0, chat=True)
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        assert (ex.labels[:n_prompt] == IGNORE).all()
        assert torch.equal(ex.labels[n_prompt:], ex.input_ids[n_prompt:])
        assert tok.decode(ex.input_ids[:n_prompt]) == prompt
        answer = tok.decode(ex.labels[n_prompt:])
        assert answer == f"{item.solution}<|im_end|>\n"
        assert data.answer_from_text(answer) == item.answer
    batch = collate(examples[:3])
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE).all()


def test_token_windows_label_every_token():
    ids = torch.arange(2 * 10).reshape(2, 10) % 200
    examples = window_examples(ids, seqlen=4)               # 2 rows x 2 windows, remainder dropped
    assert [e.input_ids.tolist() for e in examples] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                        [10, 11, 12, 13], [14, 15, 16, 17]]
    assert all(torch.equal(e.labels, e.input_ids) for e in examples)


def test_sampler_resumes_the_same_order():
    a = ExampleSampler(5, 3, seed=0)
    first = [a.next() for _ in range(3)]
    b = ExampleSampler(5, 3, seed=0)
    b.next()
    c = ExampleSampler(5, 3, seed=123)
    c.load_state_dict(b.state_dict())
    assert [c.next(), c.next()] == first[1:]
    assert sorted(first[0] + first[1][:2]) == list(range(5))   # a full pass before repeating


# ---------------------------------------------------------------- fine-tuning

def test_finetune_overfits_a_tiny_problem():
    model, tok = tiny_llama(seed=0)
    four = data.arith_task("one_step", "train", n=4)
    report = finetune_(model, four, SFTConfig(lr=3e-3, steps=30, batch_size=4, seqlen=256, warmup=2),
                       tokenizer=tok)
    losses = [r["loss"] for r in report.losses]
    assert len(losses) == report.steps == 30
    assert losses[-1] < 0.6 * losses[0]
    assert not model.training                               # the mode it had before
    json.dumps(report.to_dict())


def test_finetune_on_token_ids_and_needs_tokenizer_for_a_task(task):
    model, _ = tiny_llama(seed=0)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = finetune_(model, ids, SFTConfig(lr=1e-3, steps=2, batch_size=2, seqlen=16))
    assert report.n_examples == 8 and report.steps == 2
    with pytest.raises(ValueError, match="tokenizer"):
        finetune_(model, task, SFTConfig(steps=1))


# ---------------------------------------------------------------- distillation

def test_masked_weights_stay_zero_under_weight_decay(pair, task):
    _, student0, _ = pair
    student, report = _distill(pair, task, weight_decay=0.5)
    changed = 0
    for name, lin in layer_linears(student).items():
        before = layer_linears(student0)[name].weight
        mask = before == 0
        assert mask.any()
        assert (lin.weight[mask] == 0).all(), name
        changed += int((lin.weight[~mask] != before[~mask]).sum())
    assert changed > 0                                     # the kept weights did train
    assert report.sparsity_before == report.sparsity_after == pytest.approx(0.5)
    assert isinstance(report, DistillReport)


def test_distill_logs_components_and_freezes_teacher(pair, task):
    teacher, _, _ = pair
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, report = _distill(pair, task)
    assert teacher.training                                 # mode restored
    teacher.eval()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    row = report.losses[0]
    assert {"step", "loss", "squarehead", "ce", "kd", "lr", "grad_norm"} <= set(row)
    assert row["loss"] == pytest.approx(row["squarehead"] + row["ce"] + 0.5 * row["kd"], rel=1e-5)
    assert list(report.to_frame()["step"]) == list(range(1, 7))


def test_squarehead_alone_pulls_the_student_to_the_teacher(pair, task):
    _, report = _distill(pair, task, ce=0.0, kd=0.0, steps=8)
    sh = [r["squarehead"] for r in report.losses]
    assert report.losses[0]["loss"] == pytest.approx(sh[0], rel=1e-6)
    assert sh[-1] < 0.7 * sh[0]


def test_same_seed_same_run_other_seed_other_run(pair, task):
    rng = torch.get_rng_state()
    s1, r1 = _distill(pair, task, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)          # the caller's RNG stream is untouched
    s2, r2 = _distill(pair, task, seed=3)
    s3, r3 = _distill(pair, task, seed=4)
    assert r1.losses == r2.losses
    assert all(torch.equal(a, b) for a, b in zip(s1.state_dict().values(), s2.state_dict().values(), strict=True))
    assert r1.losses != r3.losses


def test_resume_after_interruption_reproduces_the_run(pair, task, tmp_path, monkeypatch):
    teacher, student0, tok = pair
    full, ref = _distill(pair, task, grad_accum=2)
    # Interrupt in the middle of step 5, after the checkpoint of step 4.
    calls = {"n": 0}
    real = workbench.distill.squarehead_loss

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    config = _config(grad_accum=2, checkpoint_dir=tmp_path, checkpoint_every=2)
    student = copy.deepcopy(student0)
    monkeypatch.setattr(workbench.distill, "squarehead_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        distill_(student, teacher, task, config, tokenizer=tok)
    monkeypatch.setattr(workbench.distill, "squarehead_loss", real)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-000004"]
    # Resume with the half-trained object, as a notebook would after the interrupt.
    with pytest.raises(FileExistsError):
        distill_(student, teacher, task, config, tokenizer=tok)
    resumed = distill_(student, teacher, task,
                       DistillConfig(**{**config.to_dict(), "resume": True}), tokenizer=tok)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert resumed.losses == ref.losses
    for (name, a), b in zip(student.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A different run cannot resume from this checkpoint.
    with pytest.raises(ValueError, match="lr"):
        distill_(copy.deepcopy(student0), teacher, task,
                 DistillConfig(**{**config.to_dict(), "resume": True, "lr": 5e-4}), tokenizer=tok)


def test_resume_of_a_finished_run_and_of_another_sparsity_pattern(pair, task, tmp_path):
    teacher, student0, tok = pair
    config = _config(steps=2, checkpoint_dir=tmp_path, resume=True)   # empty dir: fresh start
    first = distill_(copy.deepcopy(student0), teacher, task, config, tokenizer=tok)
    assert first.resumed_from == 0
    student = copy.deepcopy(student0)
    again = distill_(student, teacher, task, config, tokenizer=tok)   # finished: loads, no steps
    assert again.resumed_from == again.steps == 2 and again.losses == first.losses
    assert again.sparsity_after == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sparsity pattern"):
        distill_(copy.deepcopy(teacher), teacher, task, config, tokenizer=tok)


@pytest.mark.parametrize("kw,field", [
    ({"squarehead": -1.0}, "squarehead"), ({"ce": -0.5}, "ce"), ({"kd": float("nan")}, "kd"),
    ({"squarehead": 0.0, "ce": 0.0, "kd": 0.0}, "at least one loss weight"),
    ({"lr": 0.0}, "lr"), ({"lr": -1e-4}, "lr"), ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"), ({"grad_accum": 0}, "grad_accum"),
    ({"temperature": 0.0}, "temperature"), ({"warmup": 10, "steps": 10}, "warmup"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"resume": True}, "checkpoint_dir"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        DistillConfig(**kw)


def test_sft_config_validates_too():
    with pytest.raises(ValueError, match="steps"):
        SFTConfig(steps=0)
    with pytest.raises(TypeError):
        SFTConfig(squarehead=1.0)                           # unknown field


@pytest.mark.parametrize("dims,field", [({"num_hidden_layers": 3}, "num_hidden_layers"),
                                        ({"hidden_size": 32, "intermediate_size": 80}, "hidden_size"),
                                        ({"vocab_size": 300}, "vocab_size")])
def test_teacher_student_mismatch_is_a_value_error(pair, task, dims, field):
    _, student, tok = pair
    teacher, _ = tiny_llama(seed=1, **dims)
    with pytest.raises(ValueError, match=field):
        distill_(copy.deepcopy(student), teacher, task, _config(), tokenizer=tok)
    with pytest.raises(ValueError, match="same object"):
        distill_(student, student, task, _config(), tokenizer=tok)


def test_lazy_exports():
    assert workbench.finetune_ is finetune_ and workbench.distill_ is distill_
    assert workbench.SFTConfig is SFTConfig and workbench.DistillConfig is DistillConfig


# Hashes of DistillConfig.to_dict() before it took workbench.configs.Serializable.
PINNED_KEYS = [(dict(), "a111c99b3a1e5ca55df60b9026b4ff543d5dae2afef24249b6738867bd930a8a"),
               (dict(kd=1.0, squarehead=0.0, temperature=2.0),
                "3fbcfd95817674b329a489f415e646a21c018de48a9296db5d8fe7f3f5564f58")]


@pytest.mark.parametrize("kwargs,key", PINNED_KEYS)
def test_distill_config_keys_are_pinned_and_round_trip(kwargs, key):
    from workbench.cache import hash_json

    cfg = DistillConfig(**kwargs)
    assert hash_json(cfg.to_dict()) == key
    assert DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown DistillConfig keys: alpha"):
        DistillConfig.from_dict({**cfg.to_dict(), "alpha": 0.5})


def test_distill_report_round_trips_as_a_distill_report(pair, task):
    _, report = _distill(pair, task, steps=2)
    back = DistillReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert type(back) is DistillReport and back == report
    assert {"squarehead", "ce", "kd"} <= set(back.losses[0])


def test_distill_refuses_another_config(pair, task):
    teacher, student, tok = pair
    with pytest.raises(TypeError, match="DistillConfig"):
        distill_(copy.deepcopy(student), teacher, task, SFTConfig(), tokenizer=tok)
