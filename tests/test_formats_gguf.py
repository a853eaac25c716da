"""formats.to_gguf: each qtype read back with gguf's reader and dequantized equals the model's
weights (exactly, to float16 rounding, or within the Q8_0 / Q4_0 block bound), pruned zeros stay
zero, the metadata is the config's, the tokenizer keys are the Hugging Face tokenizer's; and,
when llama-cpp-python is installed, llama.cpp on those files gives Hugging Face's logits."""

import warnings

import gguf
import numpy as np
import pytest
import torch

from workbench import peers
from workbench.formats import gguf as formats_gguf
from workbench.formats.gguf_vocab import llamacpp_pre
from workbench.models import EMBEDDED, embedded_gguf_path, tiny_llama

QTYPES = ["f32", "f16", "q8_0", "q4_0"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]


def bpe_tokenizer():
    """A byte-level BPE with four merges (llama.cpp refuses a BPE vocabulary without merges),
    BOS/EOS/pad specials, one non-special added token and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(alphabet + ["".join(m) for m in MERGES])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(["<tool>"])                                  # added, not special
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def model_for(tok, seed=0, **dims):
    return tiny_llama(seed=seed, vocab_size=len(tok), **dims)[0]


def export(model, tok, tmp_path, qtype):
    return gguf.GGUFReader(formats_gguf.to_gguf(model, tok, tmp_path / f"m-{qtype}.gguf", qtype))


def undo_rope_permute(w, n_heads):
    """Hugging Face row order from llama.cpp's, by index (independent of rope_permute): within a
    head of d rows, HF row j < d/2 sits at GGUF row 2j, HF row j + d/2 at GGUF row 2j + 1."""
    d = w.shape[0] // n_heads
    rows = [2 * r if r < d // 2 else 2 * (r - d // 2) + 1 for r in range(d)]
    return w[[h * d + r for h in range(n_heads) for r in rows]]


def read_back(reader, config):
    """GGUF name -> (ggml type, dequantized FP32 weight in Hugging Face layout)."""
    heads = {"attn_q.weight": config.num_attention_heads, "attn_k.weight": config.num_key_value_heads}
    out = {}
    for t in reader.tensors:
        shape = tuple(reversed([int(n) for n in t.shape]))          # GGUF lists ne innermost first
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        n = heads.get(t.name.split(".", 2)[-1])
        out[t.name] = (t.tensor_type, undo_rope_permute(w, n) if n else w)
    return out


def q8_0_bound(w):
    """|dequantized - w| bound per value of Q8_0 on rows of w (blocks of 32 along the row).
    ggml: d = max|x| / 127, q = round(x / d), stored d16 = fp16(d), value q * d16. So
    |q d16 - x| <= |q d - x| + |q| |d16 - d| <= d/2 + 127 |d16 - d|, plus float32 rounding."""
    blocks = w.reshape(-1, 32).astype(np.float64)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    d16 = d.astype(np.float16).astype(np.float64)
    bound = d / 2 + 127 * np.abs(d16 - d) + 127 * d * np.finfo(np.float32).eps
    return np.broadcast_to(bound, blocks.shape).reshape(w.shape)


def q4_0_bound(w):
    """Q4_0: d = (signed max) / -8, level clamp(trunc(x/d + 8.5), 0, 15), value (level - 8) d16.
    Rounding is within d/2 except a value near -max, clipped from level 16 to 15: one whole step."""
    blocks = w.reshape(-1, 32).astype(np.float64)
    signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    d = np.abs(signed_max) / 8
    d16 = d.astype(np.float16).astype(np.float64)
    bound = d + 8 * np.abs(d16 - d) + 8 * d * np.finfo(np.float32).eps
    return np.broadcast_to(bound, blocks.shape).reshape(w.shape)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("tied", [True, False])
def test_tensors_read_back_equal_the_weights(tmp_path, tok, qtype, tied):
    model = model_for(tok, seed=1, tie_word_embeddings=tied)
    got = read_back(export(model, tok, tmp_path, qtype), model.config)
    state = model.state_dict()
    names = formats_gguf.tensor_names(model.config)
    assert set(got) == set(names) and ("output.weight" in got) == (not tied)
    for name, (ggml_type, values) in got.items():
        w = state[names[name]].numpy()
        if w.ndim == 1 or qtype == "f32":
            assert ggml_type == gguf.GGMLQuantizationType.F32, name          # norms stay F32
            np.testing.assert_array_equal(values, w, err_msg=name)
            continue
        assert ggml_type == gguf.GGMLQuantizationType[qtype.upper()], name  # token_embd too
        if qtype == "f16":
            np.testing.assert_array_equal(values, w.astype(np.float16).astype(np.float32), name)
            continue
        # blocks run along llama.cpp's rows: compare there, where the bound is per block
        n = {"attn_q.weight": model.config.num_attention_heads,
             "attn_k.weight": model.config.num_key_value_heads}.get(name.split(".", 2)[-1])
        w_gg = formats_gguf.rope_permute(w, n) if n else w
        v_gg = formats_gguf.rope_permute(values, n) if n else values
        bound = (q8_0_bound if qtype == "q8_0" else q4_0_bound)(w_gg)
        err = np.abs(v_gg.astype(np.float64) - w_gg)
        assert (err <= bound).all(), f"{name}: worst excess {(err - bound).max():.3g}"
        assert err.max() > 0                                                   # really quantized


@pytest.mark.parametrize("qtype", QTYPES)
def test_pruned_zeros_stay_exactly_zero(tmp_path, tok, qtype):
    model = model_for(tok, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p[p.abs() < p.abs().median()] = 0                     # 50% unstructured
                p[0] = 0                                              # whole blocks of zeros
    state, names = model.state_dict(), formats_gguf.tensor_names(model.config)
    for name, (_, values) in read_back(export(model, tok, tmp_path, qtype), model.config).items():
        zeros = state[names[name]].numpy() == 0
        assert (values[zeros] == 0).all(), name


def test_a_bf16_model_is_written_from_exact_fp32_copies(tmp_path, tok):
    model = model_for(tok, seed=3).to(torch.bfloat16)
    state, names = model.state_dict(), formats_gguf.tensor_names(model.config)
    for name, (_, values) in read_back(export(model, tok, tmp_path, "f32"), model.config).items():
        np.testing.assert_array_equal(values, state[names[name]].float().numpy(), err_msg=name)


@pytest.mark.parametrize("qtype,file_type", [("f32", "ALL_F32"), ("F16", "MOSTLY_F16"),
                                             ("Q8_0", "MOSTLY_Q8_0"), ("q4_0", "MOSTLY_Q4_0")])
def test_metadata_equals_the_config(tmp_path, tok, qtype, file_type, check_llama_gguf_metadata):
    model = model_for(tok, seed=0)
    cfg = model.config
    value = {k: f.contents() for k, f in export(model, tok, tmp_path, qtype).fields.items()}
    check_llama_gguf_metadata(value, cfg)
    assert value["general.file_type"] == gguf.LlamaFileType[file_type]


def test_tokenizer_keys_are_built_from_the_hf_tokenizer(tmp_path, tok):
    value = {k: f.contents() for k, f in export(model_for(tok), tok, tmp_path, "f32").fields.items()}
    n = len(tok)
    assert value["tokenizer.ggml.model"] == "gpt2"
    assert value["tokenizer.ggml.pre"] == "gpt-2"
    assert value["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(n)))
    assert value["tokenizer.ggml.merges"] == [" ".join(m) for m in MERGES]
    types = value["tokenizer.ggml.token_type"]
    assert {i for i in range(n) if types[i] == gguf.TokenType.CONTROL} == set(tok.all_special_ids)
    assert [i for i in range(n) if types[i] == gguf.TokenType.USER_DEFINED] == [tok.convert_tokens_to_ids("<tool>")]
    assert types.count(gguf.TokenType.NORMAL) == 256 + len(MERGES)
    assert value["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert value["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert value["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert value["tokenizer.ggml.add_bos_token"] is False                # tok adds none
    assert value["tokenizer.chat_template"] == tok.chat_template


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert llamacpp_pre(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert llamacpp_pre({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    with pytest.raises(ValueError, match="Whitespace"):
        llamacpp_pre({"type": "Whitespace"})
    with pytest.raises(ValueError, match="add_prefix_space"):
        llamacpp_pre(dict(byte_level, add_prefix_space=True))


def test_an_embedded_model_gets_its_shipped_tokenizer(tmp_path):
    name = next(iter(EMBEDDED))
    try:
        shipped = gguf.GGUFReader(embedded_gguf_path(name)).fields
    except FileNotFoundError as e:
        pytest.skip(str(e))
    n = len(shipped["tokenizer.ggml.tokens"].data)
    model = tiny_llama(seed=0, vocab_size=n, num_hidden_layers=1)[0]
    model.config.name_or_path = name                         # as load_model(name) leaves it
    fields = export(model, bpe_tokenizer(), tmp_path, "q8_0").fields      # tokenizer ignored
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre"):
        assert fields[key].contents() == shipped[key].contents(), key


def test_a_gguf_path_as_tokenizer_is_copied(tmp_path, tok):
    model = model_for(tok)
    first = export(model, tok, tmp_path, "f32")
    again = formats_gguf.to_gguf(model, tmp_path / "m-f32.gguf", tmp_path / "copy.gguf")
    fields = gguf.GGUFReader(again).fields
    for key, field in first.fields.items():
        if key.startswith("tokenizer."):
            assert fields[key].contents() == field.contents(), key


def test_bad_inputs_raise_naming_them_and_leave_no_file(tmp_path, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.models import tiny_tokenizer

    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")
    model = model_for(tok)
    with pytest.raises(ValueError, match="'q4_k'"):
        formats_gguf.to_gguf(model, tok, target, "q4_k")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok)))
    with pytest.raises(ValueError, match="'gpt2'"):
        formats_gguf.to_gguf(gpt2, tok, target)
    with pytest.raises(ValueError, match=f"{len(tok)} tokens, the model's vocab is 300"):
        formats_gguf.to_gguf(tiny_llama(vocab_size=300)[0], tok, target)
    with pytest.raises(ValueError, match="no BPE merges"):
        formats_gguf.to_gguf(tiny_llama()[0], tiny_tokenizer(), target)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"old"


def test_qtype_is_case_insensitive(tmp_path, tok):
    model = model_for(tok)
    a = formats_gguf.to_gguf(model, tok, tmp_path / "a.gguf", "Q8_0").read_bytes()
    assert formats_gguf.to_gguf(model, tok, tmp_path / "b.gguf", "q8_0").read_bytes() == a


# ---------------------------------------------------------------- llama.cpp itself

NOT_INSTALLED = "llama-cpp-python is not installed (`make peers` builds it): llama.cpp tests skipped"


@pytest.fixture
def llama_cpp_peer():
    """Skip loudly (a warning in the summary, not only an `s`) without llama-cpp-python."""
    if not peers.llamacpp_available():
        warnings.warn(NOT_INSTALLED, UserWarning, stacklevel=1)
        pytest.skip(NOT_INSTALLED)


# llama.cpp vs HF's FP32 model. F32: llama.cpp's F16 KV cache alone (test_peers saw 6e-5).
# F16: ggml also rounds the activations to F16 before each F16 matmul; a full-F16 HF forward of
# these tiny models differs from FP32 by ~5e-4 on logits of scale ~1.
@pytest.mark.parametrize("qtype,atol", [("f32", 1e-3), ("f16", 5e-3)])
def test_llamacpp_loads_the_file_and_gives_hf_logits(tmp_path, tok, llama_cpp_peer, qtype, atol):
    import llama_cpp

    model = model_for(tok, seed=5)
    path = formats_gguf.to_gguf(model, tok, tmp_path / f"m-{qtype}.gguf", qtype)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    text = "the thin thing in the 2024 hen house"
    assert vocab.tokenize(text.encode(), add_bos=False) == tok(text).input_ids
    system = peers.llamacpp_system(path, n_threads=1, n_ctx=32)
    ids = torch.tensor([tok(text).input_ids[:9]])
    steps = [5, 77, 200]
    with torch.no_grad():
        ref = model(torch.cat([ids, torch.tensor([steps])], 1)).logits[0]
    got = [system.prefill(ids)] + [system.decode_step(torch.tensor([t])) for t in steps]
    for row, logits in zip(range(8, 12), got, strict=True):
        torch.testing.assert_close(logits[0], ref[row], rtol=0, atol=atol)
