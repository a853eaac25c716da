"""One entry point for every model this workbench reads: `open_model(path)`.

    packed directory (packed.json)        -> runtime.PackedModel, ready to generate
    compressed-tensors directory          -> Hugging Face model, dequantized (zeros kept)
    Hugging Face checkpoint directory     -> Hugging Face model
    .gguf file                            -> Hugging Face model, dequantized by transformers
    "smollm2-135m" (embedded) or a hub id -> Hugging Face model (a hub id needs a network)

Everything but a packed directory goes through models.load_model; the kind says which it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

MODEL_KINDS = ("packed", "compressed-tensors", "hf", "gguf", "embedded", "hub")


def model_kind(name_or_path: str | os.PathLike) -> str:
    """Which of MODEL_KINDS name_or_path is, from its files alone (nothing is loaded)."""
    from workbench.models import EMBEDDED, is_local_name
    from workbench.packed_io import is_packed_dir

    name = str(name_or_path)
    if name in EMBEDDED:
        return "embedded"
    path = Path(name).expanduser()
    if path.is_dir():
        if is_packed_dir(path):
            return "packed"
        from workbench.formats.compressed import is_compressed_tensors

        return "compressed-tensors" if is_compressed_tensors(path) else "hf"
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if is_local_name(name):
        raise FileNotFoundError(f"{name!r} is not a packed or checkpoint directory, a .gguf file "
                                "or a model name")
    return "hub"


def open_model(name_or_path: str | os.PathLike = "smollm2-135m", dtype: torch.dtype = torch.float32,
               engine: str = "native", n_threads: int | None = None, verify: bool = True):
    """(model, tokenizer, kind). model: a runtime.PackedModel for a packed directory (engine,
    n_threads and verify apply to it), else a Hugging Face causal LM in dtype. tokenizer: the
    one saved with the model (None for a packed directory saved without one)."""
    kind = model_kind(name_or_path)
    if kind == "packed":
        from workbench.packed_io import load_tokenizer
        from workbench.runtime import load_packed

        model = load_packed(name_or_path, engine=engine, n_threads=n_threads, verify=verify)
        return model, load_tokenizer(name_or_path), kind
    from workbench.models import load_model

    model, tokenizer = load_model(name_or_path, dtype=dtype)
    return model, tokenizer, kind


__all__ = ["MODEL_KINDS", "model_kind", "open_model"]
