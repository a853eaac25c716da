"""The lean runtime: its FP32 loop reproduces Hugging Face (logits to rounding, greedy tokens
exactly), its packed W8A8 model reproduces quant.quantize_'s fake-quant model (to rounding on
the tiny model, to the fake-quant model's own noise floor on SmolLM2), plans keep layers in
FP32, the source model is never touched, and bad input is refused clearly."""

import copy

import pytest
import torch
from torch import nn

from workbench import data, runtime
from workbench.arch import UnsupportedArchitectureError, layer_linears
from workbench.kernels import SparseInt8Linear
from workbench.models import tiny_llama
from workbench.outliers import QuantPlan
from workbench.quant import QuantConfig, quantize_
from workbench.runtime import PackedModel, pack

VOCAB = 259        # the tiny tokenizer's size


def _ids(B, T, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _prune_rows_(model, sparsity=0.5):
    """Zero the smallest |w| of every decoder Linear row (magnitude pruning per output row)."""
    with torch.no_grad():
        for lin in layer_linears(model).values():
            w = lin.weight
            k = int(w.shape[1] * sparsity)
            if k == 0:
                continue
            thresh = w.abs().kthvalue(k, dim=1, keepdim=True).values           # [out, 1]
            w.masked_fill_(w.abs() <= thresh, 0)
    return model


def _hf_greedy(model, ids, n, mask=None, eos=None, pad=None):
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                              eos_token_id=eos, pad_token_id=pad)


def _teacher_forced_agreement(a: PackedModel, ref: nn.Module, seq: torch.Tensor, T: int) -> float:
    """Fraction of generated positions where a's argmax equals ref's on the same tokens."""
    with torch.no_grad():
        want = ref(seq).logits[:, T - 1:-1].argmax(-1)
    got = a.forward_logits(seq)[:, T - 1:-1].argmax(-1)
    return (got == want).float().mean().item()


@pytest.fixture(scope="module")
def tiny_fp32(tiny):                           # tiny: conftest's tiny_llama(seed=0), shared
    return PackedModel.from_fp32(tiny[0])


# ---------------------------------------------------------------- FP32 loop against transformers

@pytest.mark.parametrize("B,T", [(1, 1), (1, 7), (2, 13), (3, 40)])
def test_fp32_logits_match_transformers(tiny, tiny_fp32, B, T):
    model, _ = tiny
    ids = _ids(B, T, seed=T)
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(tiny_fp32.forward_logits(ids), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
])
def test_scaled_rope_matches_transformers(rope):
    model, _ = tiny_llama(seed=1, rope_parameters=rope, head_dim=32)
    ids = _ids(2, 90, seed=3)
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(PackedModel.from_fp32(model).forward_logits(ids), ref, rtol=0, atol=1e-4)


def test_untied_head_and_biases():
    model, _ = tiny_llama(seed=4, tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for lin in layer_linears(model).values():
            lin.bias.normal_(0, 0.1)
    ids = _ids(2, 17, seed=4)
    with torch.no_grad():
        ref = model(ids).logits
    fp32 = PackedModel.from_fp32(model)
    assert not fp32.tied and fp32.nbytes == sum(p.nbytes for p in model.parameters())
    torch.testing.assert_close(fp32.forward_logits(ids), ref, rtol=0, atol=1e-4)
    fake = copy.deepcopy(model)
    quantize_(fake, QuantConfig())
    with torch.no_grad():
        ref = fake(ids).logits
    got = pack(model, lm_head="fp32").forward_logits(ids)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-3


@pytest.mark.parametrize("B,T,seed", [(1, 5, 0), (1, 12, 1), (1, 30, 2), (2, 9, 3), (2, 21, 4)])
def test_fp32_greedy_reproduces_transformers(tiny, tiny_fp32, B, T, seed):
    model, tok = tiny
    ids = _ids(B, T, seed)
    ref = _hf_greedy(model, ids, 24, eos=tok.eos_token_id, pad=tok.pad_token_id)
    out = tiny_fp32.generate(ids, 24, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, ref)


def test_left_padded_batch_matches_transformers_and_unpadded_rows(tiny, tiny_fp32):
    model, tok = tiny
    short, long = _ids(1, 6, seed=5), _ids(1, 11, seed=6)
    ids = torch.cat([torch.cat([torch.full((1, 5), tok.pad_token_id), short], 1), long])   # [2, 11]
    mask = (torch.arange(11) >= torch.tensor([[5], [0]])).long()
    ref = _hf_greedy(model, ids, 16, mask=mask)
    out = tiny_fp32.generate(ids, 16, attention_mask=mask)
    assert torch.equal(out, ref)
    assert torch.equal(out[0, 5:], tiny_fp32.generate(short, 16)[0])
    assert torch.equal(out[1], tiny_fp32.generate(long, 16)[0])
    # padded positions never feed real ones: their logits match the unpadded prompt's
    torch.testing.assert_close(tiny_fp32.forward_logits(ids, mask)[0, 5:],
                               tiny_fp32.forward_logits(short)[0], rtol=0, atol=1e-5)


def test_prefill_and_decode_steps_equal_the_full_forward(tiny_fp32):
    ids = _ids(2, 10, seed=7)
    seq = tiny_fp32.generate(ids, 8)
    full = tiny_fp32.forward_logits(seq)                                    # [2, 18, V]
    steps = [tiny_fp32.prefill(ids, max_new_tokens=8)]
    steps += [tiny_fp32.decode_step(seq[:, t]) for t in range(10, 17)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 9:17], rtol=0, atol=1e-5)
    assert torch.equal(torch.stack(steps, 1).argmax(-1), seq[:, 10:])


def test_eos_stops_and_pads_finished_rows(tiny_fp32):
    ids = _ids(2, 8, seed=8)
    free = tiny_fp32.generate(ids, 12)                                 # no eos: 12 new tokens
    eos = int(free[0, 10])                                             # row 0 emits it by step 3
    want, ends = free.clone(), []
    for r in range(2):
        hits = (free[r, 8:] == eos).nonzero()
        end = 8 + int(hits[0]) + 1 if len(hits) else free.shape[1]
        want[r, end:] = 0
        ends.append(end)
    out = tiny_fp32.generate(ids, 12, eos_token_id=[eos], pad_token_id=0)
    assert torch.equal(out, want[:, :max(ends)])


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_fp32):
    ids = _ids(2, 6, seed=9)
    a = tiny_fp32.generate(ids, 10, do_sample=True, temperature=1.5, seed=1)
    assert torch.equal(a, tiny_fp32.generate(ids, 10, do_sample=True, temperature=1.5, seed=1))
    assert not torch.equal(a, tiny_fp32.generate(ids, 10, do_sample=True, temperature=1.5, seed=2))
    greedy = tiny_fp32.generate(ids, 10)
    assert torch.equal(tiny_fp32.generate(ids, 10, do_sample=True, top_k=1, seed=3), greedy)
    assert torch.equal(tiny_fp32.generate(ids, 0), ids)


# ---------------------------------------------------------------- packed W8A8 against fake quant

@pytest.mark.parametrize("sparsity,fmt,kind", [(0.0, "auto", "int8-dense"), (0.5, "auto", "int8-sparse"),
                                               (0.5, "dense", "int8-dense")])
def test_packed_model_reproduces_fake_quant(tiny, sparsity, fmt, kind):
    model = _prune_rows_(copy.deepcopy(tiny[0]), sparsity)
    fake = copy.deepcopy(model)
    quantize_(fake, QuantConfig("per_channel", "per_token"))           # lm_head stays FP32
    packed = pack(model, lm_head="fp32", format=fmt, n_threads=1)
    table = packed.summary()
    assert set(table.kind[:-1]) == {kind} and table.kind.iloc[-1] == "fp32"
    ids = _ids(2, 24, seed=10)
    with torch.no_grad():
        ref = fake(ids).logits
    got = packed.forward_logits(ids)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-3
    seq = _hf_greedy(fake, ids, 16)
    assert _teacher_forced_agreement(packed, fake, seq, 24) >= 0.9
    assert float(table.density[:-1].max()) <= 1 - sparsity + 0.02


def test_int8_lm_head_is_dense_and_shrinks_the_model(tiny):
    model = tiny[0]
    fp32, int8 = PackedModel.from_fp32(model), pack(model)
    assert isinstance(int8.lm_head, SparseInt8Linear) and not int8.lm_head.packed.sparse
    assert fp32.nbytes == sum(p.nbytes for p in model.parameters())     # tied head counted once
    table = int8.summary()
    norms = sum(p.nbytes for n, p in model.named_parameters() if "norm" in n)
    assert int8.nbytes == int(table.nbytes.sum()) + model.model.embed_tokens.weight.nbytes + norms
    assert int8.nbytes < fp32.nbytes
    assert list(table.name[:7]) == list(layer_linears(model))[:7] and table.name.iloc[-1] == "lm_head"


def test_plan_keeps_named_layers_fp32(tiny):
    model = tiny[0]
    keep = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    plan = QuantPlan(keep_fp32=tuple(keep))
    packed = pack(model, plan=plan, lm_head="fp32")
    table = packed.summary()
    kinds = dict(zip(table.name, table.kind, strict=True))
    assert [n for n, k in kinds.items() if k == "fp32"] == [*keep, "lm_head"]
    assert isinstance(packed.layers[0].q_proj, runtime.Fp32Linear)
    fake = copy.deepcopy(model)
    quantize_(fake, QuantConfig(), plan=plan)
    ids = _ids(1, 16, seed=11)
    with torch.no_grad():
        ref = fake(ids).logits
    assert ((packed.forward_logits(ids) - ref).norm() / ref.norm()).item() < 1e-3
    with pytest.raises(ValueError, match="does not have"):
        pack(model, plan=["model.layers.9.mlp.up_proj"])


# ---------------------------------------------------------------- the source model and bad input

def test_pack_does_not_modify_the_source(tiny):
    model = copy.deepcopy(tiny[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    packed, fp32 = pack(model, plan=["model.layers.0.mlp.up_proj"]), PackedModel.from_fp32(model)
    ids = _ids(1, 8, seed=12)
    logits = fp32.forward_logits(ids)
    packed.generate(ids, 4)
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():                                     # and shares no storage with it
        for p in model.parameters():
            p.zero_()
    torch.testing.assert_close(fp32.forward_logits(ids), logits, rtol=0, atol=0)


def test_bad_models_are_refused(tiny):
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, ffn_dim=32, max_position_embeddings=32,
                                   word_embed_proj_dim=16))
    with pytest.raises(UnsupportedArchitectureError, match="Llama family"):
        pack(opt)
    with pytest.raises(UnsupportedArchitectureError, match="Llama family"):
        PackedModel.from_fp32(nn.Linear(2, 2))
    quantized = copy.deepcopy(tiny[0])
    quantize_(quantized, QuantConfig())
    with pytest.raises(TypeError, match="not nn.Linear"):
        pack(quantized)
    dynamic, _ = tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(NotImplementedError, match="dynamic"):
        pack(dynamic)
    with pytest.raises(ValueError, match="lm_head"):
        pack(tiny[0], lm_head="int4")
    with pytest.raises(ValueError, match="format"):
        pack(tiny[0], format="csr")


def test_bad_inputs_are_refused(tiny_fp32):
    ids = _ids(1, 5)
    with pytest.raises(TypeError, match="LongTensor"):
        tiny_fp32.generate(ids.int(), 3)
    with pytest.raises(TypeError, match="LongTensor"):
        tiny_fp32.forward_logits(ids.float())
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_fp32.generate([[1, 2]], 3)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        tiny_fp32.generate(ids[0], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_fp32.generate(ids, -1)
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        tiny_fp32.generate(ids, 508)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_fp32.forward_logits(_ids(1, 513))
    with pytest.raises(ValueError, match=r"\[0, 259\)"):
        tiny_fp32.generate(ids + VOCAB, 3)
    with pytest.raises(ValueError, match="left padding"):
        tiny_fp32.generate(ids, 3, attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="temperature"):
        tiny_fp32.generate(ids, 3, do_sample=True, temperature=0.0)
    fresh = PackedModel.from_fp32(tiny_llama(seed=2)[0])
    with pytest.raises(RuntimeError, match="prefill first"):
        fresh.decode_step(torch.tensor([1]))
    fresh.prefill(ids, max_new_tokens=1)
    fresh.decode_step(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="KV cache full"):
        fresh.decode_step(torch.tensor([1]))


# ---------------------------------------------------------------- the embedded SmolLM2-135M

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci"]


@pytest.mark.slow
def test_embedded_model_fp32_loop_reproduces_transformers(real_model):
    model, tok = real_model
    fp32 = PackedModel.from_fp32(model)
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        ref = _hf_greedy(model, ids, 16, eos=tok.eos_token_id, pad=tok.pad_token_id)
        out = fp32.generate(ids, 16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert torch.equal(out, ref)
    probe = data.calibration_set(tok, nsamples=2, seqlen=128, seed=2)
    with torch.no_grad():
        ref = model(probe).logits
    torch.testing.assert_close(fp32.forward_logits(probe), ref, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_embedded_model_packed_w8a8_tracks_fake_quant(real_model):
    """Packed (50% magnitude-pruned, sparse kernels) against quantize_'s fake-quant model.

    Both compute the same W8A8 products and differ only in float rounding, yet per-token W8A8
    SmolLM2 is chaotic: 1e-7 relative noise on the input embeddings moves the fake-quant
    model's own logits by ~10% and changes ~18% of its argmaxes on pydoc text (one activation
    rounding flip at a .5 boundary propagates). So the packed model must agree with it as
    well as it agrees with itself under that noise, not exactly."""
    model, tok = real_model
    pruned = _prune_rows_(copy.deepcopy(model), 0.5)
    fake = copy.deepcopy(pruned)
    quantize_(fake, QuantConfig("per_channel", "per_token"))         # lm_head stays FP32
    sparse, dense = pack(pruned, lm_head="fp32"), pack(pruned, lm_head="fp32", format="dense")
    del pruned
    assert set(sparse.summary().kind[:-1]) == {"int8-sparse"}
    probe = data.calibration_set(tok, nsamples=2, seqlen=128, seed=2)
    # the sparse and dense kernels compute the same integer products
    torch.testing.assert_close(sparse.forward_logits(probe), dense.forward_logits(probe),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = fake(probe).logits[:, :-1].argmax(-1)
        emb = fake.model.embed_tokens(probe)
        noise = 1 + 1e-7 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))
        floor = (fake(inputs_embeds=emb * noise).logits[:, :-1].argmax(-1) == want).float().mean()
    forced = (sparse.forward_logits(probe)[:, :-1].argmax(-1) == want).float().mean()
    same, partings = 0, []
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        T = ids.shape[1]
        got, want = sparse.generate(ids, 16)[0, T:], _hf_greedy(fake, ids, 16)[0, T:]   # [16]
        same += int((got == want).sum())
        parted = (got != want).nonzero()
        if len(parted):          # the first token where they part: the prefixes are equal
            j = int(parted[0])
            with torch.no_grad():
                logits = fake(torch.cat([ids[0], want[:j]])[None]).logits[0, -1]      # [V]
            partings.append((int((logits > logits[got[j]]).sum()),
                             float(logits[want[j]] - logits[got[j]])))
    numbers = dict(forced=float(forced), noise_floor=float(floor), greedy=same / 32,
                   partings=partings)
    # measured: 0.819 vs 0.803 (Xeon with AMX, 2026-12-03); 0.815 vs 0.823 (EPYC Zen 5)
    assert forced >= floor - 0.05, numbers
    # measured: 0.50 (the first prompt's 16 tokens all agree, the second parts at its first)
    assert same / 32 >= 0.5, numbers
    # the sequences part only at a near-tie of the fake-quant model: where they part, the
    # packed model picks the fake-quant model's runner-up, under 1 logit below its top.
    # Measured: one parting, 0.43 below (logits' std 3.6); 1e-7 embedding noise moves that
    # gap between 0.04 and 0.43 and single logits by up to 5, so a 1-logit allowance still
    # fails any pick the fake-quant model clearly rejects
    assert all(rank == 1 and gap < 1.0 for rank, gap in partings), numbers
