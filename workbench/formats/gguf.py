"""GGUF files for llama.cpp: a Hugging Face Llama written at F32, F16, Q8_0 or Q4_0.

    formats.to_gguf(model, tok, "m.gguf", qtype="q8_0")

The weights are FP32 copies of the model's own (a bf16 model is widened exactly), converted one
tensor at a time, so the export needs memory for the model plus one FP32 tensor. The layout
follows llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel):
  * q_proj and k_proj rows are permuted per head from the Hugging Face "rotate half" RoPE
    layout (pairs (j, j + d/2)) to llama.cpp's interleaved one (pairs (2j, 2j + 1));
  * with tied embeddings no output.weight is written and llama.cpp reads token_embd;
  * quantization is llama-quantize's `--pure` mode: every 2-D tensor, token_embd included, gets
    qtype (gguf-py's quantizers, bit-exact with ggml's reference ones); norms, and for Q8_0/Q4_0
    rows not a multiple of the 32-value block, stay F32. llama-quantize's default mixture would
    instead keep the tied token_embd/output matrix at Q6_K (Q8_0 when its row is not a multiple
    of 256, as SmolLM2's 576). Zeros of a pruned model stay exactly zero in every qtype.

The tokenizer.* keys are either copied verbatim from a GGUF llama.cpp already accepted (the
embedded model's shipped file) or built from a Hugging Face byte-level BPE tokenizer (see
workbench.formats.gguf_vocab). Files are written atomically (workbench.atomic.atomic_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import torch

from workbench.arch import LLAMA
from workbench.atomic import atomic_path
from workbench.formats.gguf_vocab import copy_tokenizer, write_hf_tokenizer
from workbench.models import EMBEDDED, embedded_gguf_path

QTYPES = ("F32", "F16", "Q8_0", "Q4_0")
EXPORT_VERSION = 1   # in cached file names (peers.gguf_for): bump when the written bytes change

_FILE_TYPES = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
               "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
_F16_MAX = float(np.finfo(np.float16).max)

# Hugging Face parameter name (layer prefix stripped) -> GGUF tensor name (llama.cpp's names),
# in file order: the attention norm and q, k, v, o (arch.LLAMA's linears in forward order),
# then the MLP norm and gate, up, down.
_GGUF_LAYER = (
    (LLAMA.input_norm, "attn_norm"),
    *zip(LLAMA.linears[:4], ("attn_q", "attn_k", "attn_v", "attn_output"), strict=True),
    (LLAMA.post_norm, "ffn_norm"),
    *zip(LLAMA.linears[4:], ("ffn_gate", "ffn_up", "ffn_down"), strict=True),
)
LAYER_TENSORS = {f"{hf}.weight": f"{gguf_name}.weight" for hf, gguf_name in _GGUF_LAYER}


def rope_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q_proj / k_proj [n_heads * d, in] from the HF half-split RoPE layout to
    llama.cpp's interleaved one: within each head, row order 0, d/2, 1, d/2 + 1, ...
    (the `permute` of llama.cpp's convert_hf_to_gguf.py)."""
    out, d = w.shape[0], w.shape[0] // n_heads
    # [n_heads, 2 halves, d/2, in] -> [n_heads, d/2, 2, in] -> [out, in]
    return w.reshape(n_heads, 2, d // 2, -1).swapaxes(1, 2).reshape(out, -1)


def tensor_names(config) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face parameter name, in the order the file holds them."""
    names = {"token_embd.weight": f"{LLAMA.embed}.weight",
             "output_norm.weight": f"{LLAMA.final_norm}.weight"}
    if not config.tie_word_embeddings:
        names["output.weight"] = f"{LLAMA.lm_head}.weight"
    for i in range(config.num_hidden_layers):
        names.update({f"blk.{i}.{g}": f"{LLAMA.layers}.{i}.{h}" for h, g in LAYER_TENSORS.items()})
    return names


# ---------------------------------------------------------------- checks and hyperparameters

def _check_llama(model) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        got = getattr(config, "model_type", type(model).__name__)
        raise ValueError(f"GGUF export writes Hugging Face Llama models only, got {got!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("GGUF export does not write Llama models with biases")
    state = model.state_dict()
    missing = [h for h in tensor_names(config).values() if h not in state]
    if missing:
        raise ValueError(f"{type(model).__name__} has no {missing[0]}: GGUF export reads a "
                         "dense LlamaForCausalLM")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not exported; only plain RoPE")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the config names no rope_theta")
    return float(theta)


def _write_hyperparameters(writer: gguf.GGUFWriter, config, qtype: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(str(config.name_or_path or "llama"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(_FILE_TYPES[qtype]))
    if qtype not in ("F32", "F16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------- tensors

def _ggml_type(shape: tuple[int, ...], qtype: str) -> gguf.GGMLQuantizationType:
    """qtype for 2-D tensors whose rows split into whole blocks (F16: blocks of 1), else F32."""
    ggml_type = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[ggml_type][0]
    if len(shape) == 2 and shape[1] % block == 0:
        return ggml_type
    return gguf.GGMLQuantizationType.F32


def _fp32_weight(state: dict, gguf_name: str, hf_name: str, config) -> np.ndarray:
    """The parameter as FP32 [out, in] (as HF stores linears), q/k rows in llama.cpp's order."""
    w = state[hf_name].detach().to("cpu", torch.float32).numpy()
    heads = {"attn_q.weight": config.num_attention_heads,
             "attn_k.weight": config.num_key_value_heads}.get(gguf_name.split(".", 2)[-1])
    return rope_permute(w, heads) if heads else w


def _encode(w: np.ndarray, ggml_type: gguf.GGMLQuantizationType, name: str) -> np.ndarray:
    """w as the bytes of ggml_type: float32 / float16 arrays, or [out, bytes per row] uint8."""
    if ggml_type == gguf.GGMLQuantizationType.F16 and np.abs(w).max(initial=0) > _F16_MAX:
        raise ValueError(f"{name} holds values beyond float16's range ({_F16_MAX}); export F32")
    return np.ascontiguousarray(gguf.quants.quantize(w, ggml_type))


# ---------------------------------------------------------------- the file

def _write(model, path: str | os.PathLike, qtype: str, tokenizer) -> Path:
    """The file of model at qtype (one of QTYPES); tokenizer: a GGUF path whose tokenizer.* keys
    are copied, or a Hugging Face tokenizer. Everything is checked and the metadata built in
    memory before the temp file is opened; tensors are converted and written one at a time."""
    _check_llama(model)
    config, state = model.config, model.state_dict()
    writer = gguf.GGUFWriter(None, arch="llama")
    _write_hyperparameters(writer, config, qtype)
    if isinstance(tokenizer, (str, os.PathLike)):
        copy_tokenizer(writer, Path(tokenizer), config.vocab_size)
    else:
        write_hf_tokenizer(writer, tokenizer, config.vocab_size)
    plan = []                                           # (GGUF name, HF name, ggml type)
    for name, hf_name in tensor_names(config).items():
        shape = tuple(state[hf_name].shape)
        ggml_type = _ggml_type(shape, qtype)
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type)
        plan.append((name, hf_name, ggml_type))

    try:
        with atomic_path(path) as tmp:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for name, hf_name, ggml_type in plan:
                w = _fp32_weight(state, name, hf_name, config)
                writer.write_tensor_data(_encode(w, ggml_type, name))
            writer.close()                              # flushed and closed before the rename
    finally:
        writer.close()
    return Path(path)


def export_gguf(model, path: str | os.PathLike, qtype: str = "F32",
                tokenizer_gguf: str | os.PathLike | None = None) -> Path:
    """Write a Hugging Face Llama as a llama-architecture GGUF file with the tokenizer.* keys of
    tokenizer_gguf (default: the embedded model's shipped file), whose vocabulary must have the
    model's vocab_size tokens; returns the path. qtype: one of QTYPES, spelled as there."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    return _write(model, path, qtype, tokenizer_gguf or embedded_gguf_path())


def to_gguf(model, tokenizer, path: str | os.PathLike, qtype: str = "f32") -> Path:
    """Write model (a Hugging Face LlamaForCausalLM, any float dtype) as a GGUF file llama.cpp
    loads; returns the path.

    qtype: "f32", "f16", "q8_0" or "q4_0", any case. tokenizer: the model's Hugging Face
    tokenizer (a byte-level BPE) whose vocabulary, merges, special ids and chat template are
    written; a GGUF file whose tokenizer.* keys are copied; or None for the embedded model's
    shipped GGUF. A model loaded as an embedded one (config.name_or_path in models.EMBEDDED)
    always gets its shipped GGUF's tokenizer: the one llama.cpp's own conversion produced.
    """
    canonical = str(qtype).upper()
    if canonical not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(q.lower() for q in QTYPES)} "
                         f"(any case), got {qtype!r}")
    name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    if name in EMBEDDED:
        tokenizer = embedded_gguf_path(name)
    elif tokenizer is None:
        tokenizer = embedded_gguf_path()
    return _write(model, path, canonical, tokenizer)
