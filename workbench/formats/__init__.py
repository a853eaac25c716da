"""Saving, loading and exporting compressed models.

    pm.save("out/packed")                     # the runtime's packed format (workbench.packed_io)
    pm = runtime.load_packed("out/packed")    # memory-mapped, bit-identical logits
    formats.to_hf(model, tok, "out/hf")       # dense-with-zeros safetensors for transformers
    formats.to_gguf(model, tok, "m.gguf", qtype="q8_0")           # for llama.cpp
    formats.to_compressed_tensors(model, tok, "out/ct")            # sparse-bitmask + INT8
    model, tok, kind = formats.open_model(path)   # any of the above, or the embedded model

The names resolve lazily (PEP 562): importing workbench.formats imports neither transformers
nor gguf, and a submodule imports only what it needs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "to_hf": "workbench.formats.hf",
    "to_gguf": "workbench.formats.gguf",
    "export_gguf": "workbench.formats.gguf",
    "to_compressed_tensors": "workbench.formats.compressed",
    "read_compressed_tensors": "workbench.formats.compressed",
    "is_compressed_tensors": "workbench.formats.compressed",
    "open_model": "workbench.formats.loading",
    "MODEL_KINDS": "workbench.formats.loading",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.formats' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
