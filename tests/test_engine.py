"""The native decode engine (one C call per step, kernels_cy/wb_engine.h) against its
reference, the torch loop (engine="torch"): on INT8 layers the two round alike, so logits are
bit-equal and greedy tokens equal, on every ISA path, thread count, batch with left padding and
attention layout; FP32 layers (float dot products in another order) agree to float rounding.
Bad input is a Python error, never a crash."""

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench import data, kernels, runtime
from workbench.arch import layer_linears
from workbench.outliers import QuantPlan

ISAS = kernels.supported_isas()
VOCAB = 300


def _model(H=4, KV=2, hd=16, layers=2, inter=80, seed=0, **extra):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=H * hd, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=H, num_key_value_heads=KV,
                         head_dim=hd, max_position_embeddings=256, **extra)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():                       # norms away from 1 so their gains matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _prune_(model, sparsity):
    with torch.no_grad():
        for lin in layer_linears(model).values():
            k = int(lin.weight.shape[1] * sparsity)
            if k:
                t = lin.weight.abs().kthvalue(k, dim=1, keepdim=True).values
                lin.weight.masked_fill_(lin.weight.abs() <= t, 0)
    return model


def _ids(B, T, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _pair(model, **kw):
    return runtime.pack(model, engine="native", **kw), runtime.pack(model, engine="torch", **kw)


@pytest.fixture(params=ISAS)
def isa(request):
    previous = kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sparsity,fmt", [(0.0, "dense"), (0.6, "sparse"), (0.6, "auto")])
def test_int8_engine_equals_the_torch_loop_bit_for_bit(isa, threads, sparsity, fmt):
    model = _prune_(_model(), sparsity)
    native, torch_loop = _pair(model, format=fmt, n_threads=threads)
    ids = _ids(3, 21)
    assert torch.equal(native.forward_logits(ids), torch_loop.forward_logits(ids))
    assert torch.equal(native.generate(ids, 24), torch_loop.generate(ids, 24))


@pytest.mark.parametrize("H,KV,hd", [(4, 4, 128), (4, 1, 64), (8, 2, 64), (6, 3, 32), (9, 3, 64),
                                     (2, 1, 10)])
def test_every_attention_layout_and_left_padding(H, KV, hd):
    """Multi-head, grouped (group 2, 3, 4) and an odd head size, through the vectorised
    attention for head_dim 64/128 and the portable one otherwise; batches left-padded."""
    model = _model(H, KV, hd)
    native, torch_loop = _pair(model)
    ids = _ids(3, 11, seed=H)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    assert torch.equal(native.forward_logits(ids, mask), torch_loop.forward_logits(ids, mask))
    assert torch.equal(native.generate(ids, 12, attention_mask=mask),
                       torch_loop.generate(ids, 12, attention_mask=mask))


@pytest.mark.parametrize("batch", [1, 5, 14, 20])
def test_decode_batches_take_every_kernel_path(isa, batch):
    """Batch 1 (row dots), 2-16 (row-pair dots), > 16 (32-row tiles) in decode and prefill."""
    model = _prune_(_model(inter=200, hd=32), 0.5)
    native, torch_loop = _pair(model)
    ids = _ids(batch, 7, seed=batch)
    assert torch.equal(native.generate(ids, 6), torch_loop.generate(ids, 6))


def test_prefill_then_steps_equal_the_full_forward():
    model = _prune_(_model(), 0.5)
    native = runtime.pack(model)
    seq = _ids(2, 17)
    full = native.forward_logits(seq)
    logits = native.prefill(seq[:, :9], max_new_tokens=8)
    steps = [logits]
    for t in range(9, 17):
        steps.append(native.decode_step(seq[:, t]))
    assert torch.equal(torch.stack(steps, 1), full[:, 8:])          # batched == step by step
    assert torch.equal(native._cache.positions, torch.tensor([17, 17]))


def test_fp32_layers_agree_to_float_rounding():
    """FP32 linears (from_fp32, plan-kept layers, an FP32 head) sum in another order than
    torch's GEMM: logits agree to rounding, not bit for bit."""
    model = _model(attention_bias=True, mlp_bias=True)
    for build in (lambda e: runtime.PackedModel.from_fp32(model, engine=e),
                  lambda e: runtime.pack(model, engine=e, lm_head="fp32",
                                         plan=QuantPlan(keep_fp32=("model.layers.0.self_attn.k_proj",
                                                                   "model.layers.1.mlp.down_proj")))):
        native, torch_loop = build("native"), build("torch")
        ids = _ids(2, 15)
        want = torch_loop.forward_logits(ids)
        got = native.forward_logits(ids)
        assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_untied_head_and_the_profile():
    model = _model(tie_word_embeddings=False)
    native, torch_loop = _pair(model)
    ids = _ids(1, 9)
    native.profile(True)
    out = native.generate(ids, 5)
    steps = native.profile(False)
    assert torch.equal(out, torch_loop.generate(ids, 5))
    assert set(steps) >= {"qkv", "attention", "gate_up", "down_proj", "head"}
    assert all(v >= 0 for v in steps.values()) and steps["head"] > 0


def test_copies_rebuild_the_engine():
    model = _prune_(_model(), 0.5)
    native = runtime.pack(model)
    ids = _ids(2, 8)
    first = native.forward_logits(ids)
    clone = copy.deepcopy(native)
    assert torch.equal(clone.forward_logits(ids), first)


def test_bad_input_is_a_python_error():
    model = _model()
    native = runtime.pack(model)
    ids = _ids(1, 5)
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        native.generate(ids + VOCAB, 2)
    with pytest.raises(TypeError, match="LongTensor"):
        native.forward_logits(ids.int())
    native.prefill(ids, max_new_tokens=1)
    native.decode_step(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="KV cache full"):
        native.decode_step(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="KV cache full"):
        native.greedy_step(torch.tensor([1]))
    with pytest.raises(ValueError, match="one per row"):
        native.greedy_step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="engine"):
        runtime.pack(model, engine="c")
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].input_layernorm.weight[3] = float("inf")
    for engine in ("native", "torch"):
        with pytest.raises(ValueError, match="NaN or Inf"):
            runtime.pack(broken, engine=engine).forward_logits(ids)


def test_the_compiled_engine_checks_its_buffers():
    from workbench import _linear

    model = _model()
    native = runtime.pack(model)
    engine = native._native()
    d = native.dims
    ids = np.zeros((1, 3), np.int64)
    pos = np.arange(3, dtype=np.int64)[None]
    keys = np.zeros((d.n_layers, 1, d.n_kv_heads, 8, d.head_dim), np.float32)
    logits = np.zeros((1, VOCAB), np.float32)
    code = _linear.ISA_NAMES[kernels.active_isa()]

    def run(**kw):
        args = dict(ids=ids, pos=pos, keys=keys, values=keys.copy(), s0=0, key_mask=None,
                    logits=logits)
        args.update(kw)
        return engine.run(code, 1, args["ids"], args["pos"], args["keys"], args["values"],
                          args["s0"], args["key_mask"], args["logits"])

    assert run() == 0
    with pytest.raises(ValueError, match="outside the cache"):
        run(s0=6)
    with pytest.raises(ValueError, match="token id"):
        run(ids=np.full((1, 3), VOCAB, np.int64))
    with pytest.raises(ValueError, match="position"):
        run(pos=np.full((1, 3), 10_000, np.int64))
    with pytest.raises(ValueError, match="KV cache does not match"):
        run(keys=keys[:, :, :1].copy())
    with pytest.raises(ValueError, match="keys and values"):
        run(values=np.zeros((d.n_layers, 1, d.n_kv_heads, 9, d.head_dim), np.float32))
    with pytest.raises(ValueError, match="logits"):
        run(logits=np.zeros((2, VOCAB), np.float32))
    with pytest.raises(ValueError, match="key_mask"):
        run(key_mask=np.ones((1, 7), np.uint8))
    with pytest.raises(ValueError, match="not available"):
        engine.run(77, 1, ids, pos, keys, keys.copy(), 0, None, logits)
    with pytest.raises(ValueError, match="dtype mismatch"):
        engine.run(code, 1, ids.astype(np.int32), pos, keys, keys.copy(), 0, None, logits)


# ---------------------------------------------------------------- the embedded SmolLM2-135M

@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_embedded_model_engine_equals_the_torch_loop(real_model, sparsity):
    """Dense INT8 and 70% sparse: logits bit-equal on two 128-token windows, greedy tokens
    equal on 20 GSM8K prompts x 64 tokens (measured: 1280/1280 at both), perplexity equal."""
    from workbench.bench import engine_agreement, magnitude_sparsify_

    model, tok = real_model
    pruned = copy.deepcopy(model)
    if sparsity:
        magnitude_sparsify_(pruned, sparsity)
    native, torch_loop = _pair(pruned, format="dense" if sparsity == 0 else "sparse")
    probe = data.calibration_set(tok, nsamples=2, seqlen=128, seed=2)
    want, got = torch_loop.forward_logits(probe), native.forward_logits(probe)
    assert ((got - want).norm() / want.norm()).item() <= 1e-4
    rows = engine_agreement(native, torch_loop, tok, n_prompts=20, n_tokens=64)
    equal = sum(r["equal_tokens"] for r in rows) / sum(r["n_tokens"] for r in rows)
    assert equal >= 0.9, rows
    nll = [torch.nn.functional.cross_entropy(lg[0, :-1], probe[0, 1:]).item() for lg in (want, got)]
    assert abs(np.exp(nll[1]) / np.exp(nll[0]) - 1) <= 1e-3
