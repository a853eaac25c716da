"""llama.cpp as a speed peer: GGUF files written from our FP32 weights, and a `bench.System`
that decodes them through llama-cpp-python.

The peer runs the same weights as every other system: `export_gguf` writes the FP32 Hugging
Face model (the embedded one is itself dequantized from a Q4_1 GGUF, see workbench.models)
into a llama-architecture GGUF at F32, Q8_0 or Q4_0, so llama.cpp's speed is compared on
the same model, not on a separately downloaded conversion.

Two layout details follow llama.cpp's own converter (convert_hf_to_gguf.py, LlamaModel):
  * q_proj and k_proj rows are permuted per head from the Hugging Face "rotate half" RoPE
    layout (pairs (j, j + d/2)) to llama.cpp's interleaved one (pairs (2j, 2j + 1));
  * with tied embeddings no output.weight is written and llama.cpp reads token_embd.

Two ways to run it, both optional (`make peers` builds them):
  * `llamacpp_system`: llama-cpp-python as a `timing.System`, timed by our own protocol;
  * `llama_bench`: llama.cpp's own `llama-bench` binary, the number llama.cpp users quote
    (pp128, then tg128 at a depth of 128 tokens), built from the llama.cpp vendored in the
    pinned llama-cpp-python sdist.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from workbench.timing import System

QTYPES = ("F32", "Q8_0", "Q4_0")
_EXPORT_VERSION = 1   # in the cached file name: bump when export_gguf's output changes

# Hugging Face parameter name (layer prefix stripped) -> GGUF tensor name (llama.cpp's names).
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def rope_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q_proj / k_proj [n_heads * d, in] from the HF half-split RoPE layout to
    llama.cpp's interleaved one: within each head, row order 0, d/2, 1, d/2 + 1, ...
    (the `permute` of llama.cpp's convert_hf_to_gguf.py)."""
    out, d = w.shape[0], w.shape[0] // n_heads
    # [n_heads, 2 halves, d/2, in] -> [n_heads, d/2, 2, in] -> [out, in]
    return w.reshape(n_heads, 2, d // 2, -1).swapaxes(1, 2).reshape(out, -1)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not exported; only plain RoPE")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the config names no rope_theta")
    return float(theta)


def _check_llama(model) -> None:
    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"export_gguf writes Llama models only, got {config.model_type!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("export_gguf does not write Llama models with biases")


def _gguf_tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> FP32 array in llama.cpp's layout ([out, in] for linears, as HF stores)."""
    config = model.config
    state = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            out[f"blk.{i}.{gguf_name}"] = state[f"model.layers.{i}.{hf_name}"]
        q, k = f"blk.{i}.attn_q.weight", f"blk.{i}.attn_k.weight"
        out[q] = rope_permute(out[q], config.num_attention_heads)
        out[k] = rope_permute(out[k], config.num_key_value_heads)
    return out


def _write_hyperparameters(writer, config, qtype: str) -> None:
    import gguf

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
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    writer.add_file_type(int(file_type))
    if qtype != "F32":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _copy_tokenizer(writer, tokenizer_gguf: Path, vocab_size: int) -> None:
    """Every tokenizer.* key of another GGUF file, verbatim (vocab, merges, special ids,
    chat template): the tokenizer llama.cpp already accepted for this model."""
    import gguf

    fields = gguf.GGUFReader(tokenizer_gguf).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{tokenizer_gguf} holds no tokenizer (no tokenizer.ggml.tokens)")
    if len(tokens.data) != vocab_size:
        raise ValueError(f"{tokenizer_gguf} has {len(tokens.data)} tokens, the model's vocab "
                         f"is {vocab_size}")
    for key, field in fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)


def export_gguf(model, path: str | os.PathLike, qtype: str = "F32",
                tokenizer_gguf: str | os.PathLike | None = None) -> Path:
    """Write an FP32 Hugging Face Llama as a llama-architecture GGUF file; returns its path.

    qtype: "F32", "Q8_0" or "Q4_0". Norms stay F32, as do (for Q8_0/Q4_0) 2-D tensors whose
    row length is not a multiple of the 32-value block; every other 2-D tensor, token_embd
    included, is quantized with qtype (gguf-py's quantizers, bit-exact with ggml's reference
    ones). That is llama-quantize's `--pure` mode: its default mixture would keep the tied
    token_embd/output matrix at Q6_K or, when the row is not a multiple of 256 (SmolLM2's 576),
    Q8_0, so a default Q4_0 file of the embedded model has a Q8_0 embedding/head.

    tokenizer_gguf: GGUF whose tokenizer.* keys are copied (default: the embedded model's
    shipped file); its vocabulary must have the model's vocab_size tokens. Hyperparameters
    come from model.config. The file is written to a temp file beside `path`, then renamed.
    """
    import gguf

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    _check_llama(model)
    if tokenizer_gguf is None:
        from workbench.models import embedded_gguf_path

        tokenizer_gguf = embedded_gguf_path()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        _write_hyperparameters(writer, model.config, qtype)
        _copy_tokenizer(writer, Path(tokenizer_gguf), model.config.vocab_size)
        ggml_type = gguf.GGMLQuantizationType[qtype]
        block = gguf.GGML_QUANT_SIZES[ggml_type][0]
        for name, w in _gguf_tensors(model).items():
            if qtype != "F32" and w.ndim == 2 and w.shape[1] % block == 0:
                # [out, in] floats -> [out, bytes per row] uint8 blocks
                writer.add_tensor(name, gguf.quants.quantize(w, ggml_type), raw_dtype=ggml_type)
            else:
                writer.add_tensor(name, np.ascontiguousarray(w))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def gguf_for(model_name: str = "smollm2-135m", qtype: str = "F32") -> Path:
    """The embedded model as a GGUF file of qtype, written once under
    $WORKBENCH_CACHE/gguf/ from `load_model(model_name)` and reused after."""
    from workbench.cache import cache_root
    from workbench.models import EMBEDDED, embedded_gguf_path, load_model

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    if model_name not in EMBEDDED:
        raise ValueError(f"gguf_for takes an embedded model ({', '.join(EMBEDDED)}); "
                         "export other models with export_gguf")
    path = cache_root() / "gguf" / f"{model_name}-{qtype}-v{_EXPORT_VERSION}.gguf"
    if not path.is_file():
        model, _ = load_model(model_name)
        export_gguf(model, path, qtype, tokenizer_gguf=embedded_gguf_path(model_name))
    return path


# ---------------------------------------------------------------- the llama.cpp system

def llamacpp_available() -> bool:
    """True when llama-cpp-python imports (its shared library loads)."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def _import_llama_cpp():
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"the llama.cpp peer needs llama-cpp-python: run `make peers` ({e})") from e
    return llama_cpp


def llamacpp_system(gguf_path: str | os.PathLike, n_threads: int, n_ctx: int = 512):
    """A `bench.System` decoding a GGUF file with llama.cpp, batch 1 only.

    prefill(ids [1, T]) clears the KV cache and evaluates the prompt as one batch (n_batch =
    n_ubatch = n_ctx, so T <= n_ctx is one graph); decode_step(tokens [1]) evaluates one token.
    Both return the last position's logits [1, V] as FP32. llama.cpp's own defaults otherwise:
    F16 KV cache, no flash attention. n_ctx bounds prompt + decoded tokens.

    With Q8_0/Q4_0 weights ggml also rounds the activations to Q8_0 blocks before each dot
    product: on the embedded model (large activation outliers) the logits then differ from HF
    on the same dequantized weights by up to ~1 (Q8_0), against 0.02 for the F32 file.
    """
    llama_cpp = _import_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> torch.Tensor:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        # copy: llama.cpp reuses the buffer on the next eval
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())[None]

    def prefill(ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError("llama.cpp peer runs batch 1 only")
        if ids.shape[1] > n_ctx:
            raise ValueError(f"prompt of {ids.shape[1]} tokens exceeds n_ctx={n_ctx}")
        llm.reset()                                     # next eval drops the old KV entries
        llm.eval(ids[0].tolist())
        return last_logits()

    def decode_step(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.numel() != 1:
            raise ValueError("llama.cpp peer runs batch 1 only")
        llm.eval([int(tokens.reshape(-1)[0])])
        return last_logits()

    system = System(prefill, decode_step, llama_cpp.llama_model_size(llm.model))
    # free llama.cpp's model with the system, or at exit before the interpreter tears down the
    # modules Llama.__del__ needs (it raises TypeError then)
    weakref.finalize(system, llm.close)
    return system


# ---------------------------------------------------------------- llama-bench

LLAMA_BENCH_ENV = "WORKBENCH_LLAMA_BENCH"


def llama_bench_path() -> Path | None:
    """$WORKBENCH_LLAMA_BENCH, else the binary `make peers` builds, when it exists."""
    env = os.environ.get(LLAMA_BENCH_ENV)
    path = Path(env) if env else (Path(__file__).resolve().parent.parent / "build" / "peers"
                                  / "llama.cpp" / "build" / "bin" / "llama-bench")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def llama_bench(gguf_path: str | os.PathLike, threads: int, prompt_len: int = 128,
                new_tokens: int = 128, repeats: int = 3) -> dict:
    """llama-bench on one GGUF file at one thread count: {"prefill_tok_s", "decode_tok_s",
    "decode_std", "model_bytes", "peak_rss_mb"}. Prefill is pp{prompt_len} from an empty
    cache; decode is tg{new_tokens} after prompt_len tokens of context (-d), as our systems
    decode after their prompt. Each test runs `repeats` times (llama-bench's mean)."""
    binary = llama_bench_path()
    if binary is None:
        raise FileNotFoundError("llama-bench is not built: run `make peers` (or set "
                                f"{LLAMA_BENCH_ENV} to a llama-bench binary)")
    base = [str(binary), "-m", str(gguf_path), "-t", str(threads), "-r", str(repeats),
            "-o", "json"]
    rows, peak = [], 0.0
    for args in (["-p", str(prompt_len), "-n", "0"],
                 ["-p", "0", "-n", str(new_tokens), "-d", str(prompt_len)]):
        # output to files, not pipes: wait4 (for the child's own peak RSS) must not race a
        # child blocked on a full pipe
        with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
            proc = subprocess.Popen(base + args, stdout=out_f, stderr=err_f, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out_f.seek(0)
            err_f.seek(0)
            out, err = out_f.read(), err_f.read()
        if proc.returncode:
            raise RuntimeError(f"llama-bench failed ({proc.returncode}): {err[-2000:]}")
        rows += json.loads(out)
        peak = max(peak, usage.ru_maxrss / 1024)
    pp = next(r for r in rows if r["n_prompt"] > 0)
    tg = next(r for r in rows if r["n_gen"] > 0)
    return {"prefill_tok_s": float(pp["avg_ts"]), "decode_tok_s": float(tg["avg_ts"]),
            "decode_std": float(tg["stddev_ts"]), "model_bytes": int(tg["model_size"]),
            "peak_rss_mb": peak}
