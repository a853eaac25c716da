"""The llama.cpp peer: GGUF export round trips (layout, quantization error, metadata, atomic
write) on a tiny Llama, and, when llama-cpp-python is installed, llama.cpp on those files
against Hugging Face's forward."""

import warnings

import gguf
import numpy as np
import pytest
import torch

from workbench import peers
from workbench.formats.gguf import LAYER_TENSORS
from workbench.models import tiny_llama, tiny_tokenizer

NOT_INSTALLED = "LLAMA.CPP PEER NOT INSTALLED (make peers): llama.cpp tests skipped"


@pytest.fixture
def llama_cpp_peer():
    """Skip loudly (a warning in the summary, not only an `s`) without llama-cpp-python."""
    if not peers.llamacpp_available():
        warnings.warn(NOT_INSTALLED, UserWarning, stacklevel=1)
        pytest.skip(NOT_INSTALLED)


def write_tiny_tokenizer_gguf(path, tokenizer):
    """A GGUF holding only the tiny byte-level tokenizer's tokenizer.* keys (one merge: llama.cpp
    refuses a BPE vocabulary without merges; these tests never tokenize text through it)."""
    writer = gguf.GGUFWriter(path, arch="llama")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(["Ġ Ġ"])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_tok_gguf(tmp_path_factory):
    return write_tiny_tokenizer_gguf(tmp_path_factory.mktemp("tok") / "tok.gguf", tiny_tokenizer())


def export(model, tmp_path, qtype, tok_gguf):
    return gguf.GGUFReader(peers.export_gguf(model, tmp_path / f"m-{qtype}.gguf", qtype, tok_gguf))


def gguf_rows(d):
    """llama.cpp's q/k row order within one head of d rows, written independently of
    peers.rope_permute: GGUF row 2j is HF row j, GGUF row 2j + 1 is HF row j + d/2."""
    return [j // 2 + (j % 2) * (d // 2) for j in range(d)]


def _relayout(name, w, config, to_gguf: bool):
    """w's q/k rows in llama.cpp's order (to_gguf) or back in Hugging Face's; others as is."""
    heads = {"attn_q.weight": config.num_attention_heads, "attn_k.weight": config.num_key_value_heads}
    n = next((h for suffix, h in heads.items() if name.endswith(suffix)), None)
    if n is None:
        return w
    d = w.shape[0] // n
    order = gguf_rows(d) if to_gguf else np.argsort(gguf_rows(d))
    return w[[h * d + r for h in range(n) for r in order]]


def to_gguf_layout(name, w, config):
    return _relayout(name, w, config, to_gguf=True)


def to_hf_layout(name, w, config):
    return _relayout(name, w, config, to_gguf=False)


def hf_names(config):
    """GGUF tensor name -> Hugging Face parameter name."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if not config.tie_word_embeddings:
        names["output.weight"] = "lm_head.weight"
    for i in range(config.num_hidden_layers):
        names.update({f"blk.{i}.{g}": f"model.layers.{i}.{h}" for h, g in LAYER_TENSORS.items()})
    return names


def hf_weights(model):
    """GGUF name -> the model's FP32 weight in Hugging Face layout."""
    sd = model.state_dict()
    return {g: sd[h].numpy() for g, h in hf_names(model.config).items()}


def dequantized_copy(model, reader):
    """A copy of model holding the GGUF file's weights, dequantized, in Hugging Face layout."""
    copy = type(model)(model.config).eval()
    sd = copy.state_dict()
    for t in reader.tensors:
        key = hf_names(model.config)[t.name]
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(sd[key].shape)
        sd[key].copy_(torch.tensor(to_hf_layout(t.name, values, model.config)))
    return copy


@pytest.mark.parametrize("tied", [True, False])
def test_f32_tensors_equal_the_weights_after_undoing_the_permutation(tmp_path, tiny_tok_gguf, tied):
    model, _ = tiny_llama(seed=1, tie_word_embeddings=tied)
    reader = export(model, tmp_path, "F32", tiny_tok_gguf)
    expected = hf_weights(model)
    assert {t.name for t in reader.tensors} == set(expected)
    assert ("output.weight" in expected) == (not tied)
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        got = to_hf_layout(t.name, np.asarray(t.data).reshape(expected[t.name].shape), model.config)
        np.testing.assert_array_equal(got, expected[t.name], err_msg=t.name)


def interleaved_rope(x, theta):
    """llama.cpp's LLAMA_ROPE_TYPE_NORM on x [T, heads, d]: pairs (2j, 2j + 1) turn by
    pos * theta^(-2j/d)."""
    T, _, d = x.shape
    angle = np.arange(T)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None]   # [T, d/2]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]                   # [T, 1, d/2]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def test_permuted_q_k_with_interleaved_rope_give_hf_attention_scores(tmp_path, tiny_tok_gguf):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, _ = tiny_llama(seed=2)
    cfg = model.config
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    reader = export(model, tmp_path, "F32", tiny_tok_gguf)
    theta = float(reader.fields["llama.rope.freq_base"].contents())
    gg = {t.name: np.asarray(t.data) for t in reader.tensors}
    x = torch.randn(7, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        q = attn.q_proj(x).view(1, 7, H, d).transpose(1, 2)                        # [1, H, T, d]
        k = attn.k_proj(x).view(1, 7, Hkv, d).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x[None], torch.arange(7)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(H // Hkv, dim=1)
    hf_scores = (q @ k.transpose(-1, -2))[0].numpy()                               # [H, T, T]
    xn = x.numpy().astype(np.float64)
    ql = interleaved_rope((xn @ gg["blk.0.attn_q.weight"].T).reshape(7, H, d), theta)
    kl = interleaved_rope((xn @ gg["blk.0.attn_k.weight"].T).reshape(7, Hkv, d), theta)
    kl = np.repeat(kl, H // Hkv, axis=1)
    ll_scores = np.einsum("thd,shd->hts", ql, kl)
    np.testing.assert_allclose(ll_scores, hf_scores, rtol=1e-4, atol=1e-5)


def block_error_bound(w, qtype):
    """Per-value bound on |dequantized - w| for ggml's reference Q8_0 / Q4_0 quantizers,
    derived here in NumPy: the step d of each 32-value block, rounding to the nearest step
    (d/2), plus the error of storing d as float16 (times the largest integer level). Q4_0
    clips: with d = max/-8 the level x/d + 8 can reach 16 > 15, a whole step on that value."""
    blocks = w.reshape(-1, 32).astype(np.float64)
    if qtype == "Q8_0":
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        top, steps = 127, np.full_like(blocks, 0.5)
    else:
        signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        d = signed_max / -8
        top = 8
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(np.nan_to_num(blocks / d) > 7.5, 1.0, 0.5)
    d16 = d.astype(np.float16).astype(np.float64)
    bound = steps * np.abs(d) + top * np.abs(d - d16) + 1e-7
    return bound.reshape(w.shape)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_tensors_are_within_the_block_error_bound(tmp_path, tiny_tok_gguf, qtype):
    model, _ = tiny_llama(seed=3)
    reader = export(model, tmp_path, qtype, tiny_tok_gguf)
    expected = hf_weights(model)
    for t in reader.tensors:
        w = expected[t.name]
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            np.testing.assert_array_equal(np.asarray(t.data), w)
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType[qtype], t.name       # token_embd too
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        w = to_gguf_layout(t.name, w, model.config)       # quantization blocks run along these rows
        err = np.abs(values.astype(np.float64) - w)
        bound = block_error_bound(w, qtype)
        assert (err <= bound).all(), f"{t.name}: worst excess {(err - bound).max():.3g}"
        assert err.max() > 0                                                      # really quantized


def test_rows_not_a_multiple_of_the_block_stay_f32(tmp_path, tiny_tok_gguf):
    model, _ = tiny_llama(seed=4, intermediate_size=72)          # down_proj rows: 72 values
    types = {t.name: t.tensor_type for t in export(model, tmp_path, "Q4_0", tiny_tok_gguf).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q4_0


def test_metadata_has_the_hyperparameters_and_the_copied_tokenizer(tmp_path, tiny_tok_gguf,
                                                                  check_llama_gguf_metadata):
    model, tok = tiny_llama(seed=0)
    cfg = model.config
    fields = export(model, tmp_path, "Q8_0", tiny_tok_gguf).fields
    value = {k: f.contents() for k, f in fields.items()}
    check_llama_gguf_metadata(value, cfg)
    assert value["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert value["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert value["tokenizer.ggml.eos_token_id"] == tok.eos_token_id


def test_bad_qtype_raises_naming_the_options(tmp_path, tiny, tiny_tok_gguf):
    with pytest.raises(ValueError, match="F32, F16, Q8_0, Q4_0"):
        peers.export_gguf(tiny[0], tmp_path / "m.gguf", "Q4_K", tiny_tok_gguf)
    with pytest.raises(ValueError, match="F32, F16, Q8_0, Q4_0"):
        peers.gguf_for("smollm2-135m", "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, tiny_tok_gguf):
    model, _ = tiny_llama(seed=0, vocab_size=300)                 # 300 != the tokenizer's 259
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="259 tokens"):
        peers.export_gguf(model, target, "F32", tiny_tok_gguf)
    assert list(tmp_path.iterdir()) == [target]
    assert target.read_bytes() == b"old"


def test_llamacpp_system_without_the_package_says_make_peers():
    if peers.llamacpp_available():
        pytest.skip("llama-cpp-python is installed")
    with pytest.raises(ImportError, match="make peers"):
        peers.llamacpp_system("unused.gguf", n_threads=1)


# ---------------------------------------------------------------- llama.cpp itself

# llama.cpp vs HF on the very weights in the file. F32: its F16 KV cache alone (seen: 6e-5).
# Q8_0/Q4_0: ggml also rounds the activations to Q8_0 blocks before each dot product (seen:
# 3e-3 on logits of scale ~1).
@pytest.mark.parametrize("qtype,atol", [("F32", 1e-3), ("Q8_0", 2e-2), ("Q4_0", 2e-2)])
def test_llamacpp_logits_match_hf_on_the_tiny_model(tmp_path, tiny_tok_gguf, llama_cpp_peer,
                                                    qtype, atol):
    model, _ = tiny_llama(seed=5)
    reader = export(model, tmp_path, qtype, tiny_tok_gguf)
    system = peers.llamacpp_system(tmp_path / f"m-{qtype}.gguf", n_threads=1, n_ctx=32)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    steps = [5, 77, 200]
    with torch.no_grad():
        ref = dequantized_copy(model, reader)(torch.cat([ids, torch.tensor([steps])], 1)).logits[0]
    got = [system.prefill(ids)] + [system.decode_step(torch.tensor([t])) for t in steps]
    for row, logits in zip(range(8, 12), got, strict=True):
        assert logits.shape == (1, model.config.vocab_size)
        torch.testing.assert_close(logits[0], ref[row], rtol=0, atol=atol)
    with pytest.raises(ValueError, match="batch 1 only"):
        system.prefill(ids.repeat(2, 1))


@pytest.mark.slow
def test_llamacpp_greedy_tokens_equal_hf_on_the_embedded_model(llama_cpp_peer, real_model):
    import llama_cpp

    model, tok = real_model
    path = peers.gguf_for("smollm2-135m", "F32")             # 540 MB in the cache, ~20 s once
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    # one thread: ggml's spinning workers crawl when torch's threads share the two cores
    system = peers.llamacpp_system(path, n_threads=1, n_ctx=128)
    for prompt in ("The capital of France is", "def fibonacci(n):", "Once upon a time,"):
        ids = tok(prompt, return_tensors="pt").input_ids
        assert vocab.tokenize(prompt.encode(), add_bos=False) == ids[0].tolist(), prompt
        with torch.no_grad():
            hf = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
            first = model(ids).logits[0, -1]
        logits = system.prefill(ids)
        max_diff = (logits[0] - first).abs().max().item()
        # seen: 0.006-0.019 on logits up to 20-30 (llama.cpp's F16 KV cache, other sum orders)
        assert max_diff < 0.05, f"{prompt!r}: prefill logits differ by {max_diff:.3g}"
        out = []
        for _ in range(16):
            out.append(int(logits.argmax(-1)))
            logits = system.decode_step(torch.tensor(out[-1:]))
        assert out == hf.tolist(), prompt


# ---------------------------------------------------------------- llama-bench

NOT_BUILT = "LLAMA-BENCH NOT BUILT (make peers): llama-bench tests skipped"


def test_llama_bench_absent_says_make_peers(monkeypatch, tmp_path):
    monkeypatch.setenv(peers.LLAMA_BENCH_ENV, str(tmp_path / "no-such-binary"))
    assert peers.llama_bench_path() is None
    with pytest.raises(FileNotFoundError, match="make peers"):
        peers.llama_bench(tmp_path / "m.gguf", threads=1)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_llama_bench_times_a_tiny_gguf(tmp_path, tiny_tok_gguf, qtype):
    if peers.llama_bench_path() is None:
        warnings.warn(NOT_BUILT, UserWarning, stacklevel=1)
        pytest.skip(NOT_BUILT)
    model, _ = tiny_llama(seed=5)
    export(model, tmp_path, qtype, tiny_tok_gguf)
    r = peers.llama_bench(tmp_path / f"m-{qtype}.gguf", threads=1, prompt_len=16, new_tokens=8,
                          repeats=1)
    assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_mb"] > 0
    assert r["model_bytes"] <= (tmp_path / f"m-{qtype}.gguf").stat().st_size
