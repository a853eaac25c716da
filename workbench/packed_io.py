"""The packed model on disk: what `runtime.pack` builds, saved so it loads in a blink.

A packed directory holds

    packed.json           format name and version, the Hugging Face config (architecture dims),
                          one entry per module (kind, shape, sparse or dense, activation scale,
                          the parts of a stacked q/k/v or gate/up layer), the recipe (the chain
                          of configs that produced the model: prune, distill, smooth, quant, pack)
                          and the provenance of the run that saved it
    weights.safetensors   every array the runtime reads, 64-byte aligned (workbench.tensorfile):
                          per packed layer <name>.{scale, rowsum, qweight, mask, values, row_ptr,
                          bias}, per FP32 layer <name>.{weight, bias}, and embed, final_norm,
                          layers.<i>.{input_norm, post_norm}
    tokenizer files       when a tokenizer was given (tokenizer.json, tokenizer_config.json, ...)

The arrays are exactly PackedLinear's (workbench.packing), so loading re-quantizes nothing: the
file is mapped and the kernels read it in place, and the logits are bit-identical to the saved
model's. The directory is written beside the target and renamed into place, so a failed save
leaves the old one (or none), never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench import cache, tensorfile
from workbench.blocks import FUSED, DecoderBlock, Fp32Linear, FusedLinear
from workbench.kernels import SparseInt8Linear
from workbench.packing import VALUE_PADDING, PackedLinear, padded_in_features

FORMAT = "workbench-packed"
FORMAT_VERSION = 1
CONFIG_FILE = "packed.json"
WEIGHTS_FILE = "weights.safetensors"
_PACKED_ARRAYS = ("scale", "rowsum", "qweight", "mask", "values", "row_ptr")


def is_packed_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


# ---------------------------------------------------------------- modules <-> entries + arrays

def _encode(prefix: str, module: nn.Module, arrays: dict[str, np.ndarray]) -> dict:
    """The JSON entry of one linear; its arrays go into `arrays` under prefix.<field>."""
    if isinstance(module, FusedLinear):
        return {**_encode(prefix, module.inner, arrays),
                "parts": [[short, n] for short, n in module.parts]}
    if isinstance(module, SparseInt8Linear):
        p = module.packed
        for name in _PACKED_ARRAYS:
            arrays[f"{prefix}.{name}"] = getattr(p, name)
        if p.bias is not None:
            arrays[f"{prefix}.bias"] = p.bias
        return {"kind": "int8", "sparse": bool(p.sparse), "out_features": p.out_features,
                "in_features": p.in_features, "bias": p.bias is not None,
                "act_scale": p.act_scale, "n_threads": module.n_threads}
    if isinstance(module, Fp32Linear):
        arrays[f"{prefix}.weight"] = module.weight.numpy()
        if module.bias is not None:
            arrays[f"{prefix}.bias"] = module.bias.numpy()
        out_f, in_f = module.weight.shape
        return {"kind": "fp32", "out_features": out_f, "in_features": in_f,
                "bias": module.bias is not None}
    raise TypeError(f"{prefix}: cannot save a {type(module).__name__}")


class _Reader:
    """Arrays of one weights file, checked by name, dtype and shape as they are taken."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        self.path, self.arrays, self.used = path, arrays, set()

    def take(self, name: str, dtype, shape: tuple | None = None) -> np.ndarray:
        if name not in self.arrays:
            raise ValueError(f"{self.path}: tensor {name!r} is missing")
        arr = self.arrays[name]
        if arr.dtype != np.dtype(dtype) or (shape is not None and arr.shape != tuple(shape)):
            want = f"{np.dtype(dtype)} {tuple(shape) if shape is not None else ''}"
            raise ValueError(f"{self.path}: tensor {name!r} is {arr.dtype} {arr.shape}, the "
                             f"config says {want}")
        self.used.add(name)
        return arr

    def tensor(self, name: str, shape: tuple | None = None) -> torch.Tensor:
        return torch.from_numpy(self.take(name, np.float32, shape))


def _decode(prefix: str, entry: dict, r: _Reader) -> nn.Module:
    try:
        kind, out_f, in_f = entry["kind"], int(entry["out_features"]), int(entry["in_features"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{r.path.parent / CONFIG_FILE}: module {prefix!r} has a malformed "
                         f"entry {entry!r}") from None
    if kind == "fp32":
        bias = r.tensor(f"{prefix}.bias", (out_f,)) if entry.get("bias") else None
        module = Fp32Linear.from_tensors(r.tensor(f"{prefix}.weight", (out_f, in_f)), bias)
    elif kind == "int8":
        kp, sparse = padded_in_features(in_f), bool(entry["sparse"])
        rows = out_f if sparse else 0
        row_ptr = r.take(f"{prefix}.row_ptr", np.int64, (out_f + 1,) if sparse else (0,))
        nnz = int(row_ptr[-1]) if sparse and out_f else 0
        packed = PackedLinear(
            out_features=out_f, in_features=in_f, sparse=sparse,
            scale=r.take(f"{prefix}.scale", np.float32, (out_f,)),
            rowsum=r.take(f"{prefix}.rowsum", np.int32, (out_f,)),
            qweight=r.take(f"{prefix}.qweight", np.int8, (0 if sparse else out_f, kp)),
            mask=r.take(f"{prefix}.mask", np.uint64, (rows, kp // 64)),
            values=r.take(f"{prefix}.values", np.int8, (nnz + VALUE_PADDING,) if sparse else (0,)),
            row_ptr=row_ptr,
            bias=r.take(f"{prefix}.bias", np.float32, (out_f,)) if entry.get("bias") else None,
            act_scale=entry.get("act_scale"))
        try:                                  # the kernel checks the structure (popcounts, rowsums)
            module = SparseInt8Linear(packed, n_threads=entry.get("n_threads"))
        except ValueError as e:
            raise ValueError(f"{r.path}: layer {prefix!r} is not a valid packed layer ({e})") from None
    else:
        raise ValueError(f"{r.path.parent / CONFIG_FILE}: module {prefix!r} has unknown kind "
                         f"{kind!r}")
    if entry.get("parts"):
        parts = [(str(short), int(n)) for short, n in entry["parts"]]
        if sum(n for _, n in parts) != out_f:
            raise ValueError(f"{r.path.parent / CONFIG_FILE}: {prefix!r} parts {parts} do not "
                             f"sum to its {out_f} rows")
        module = FusedLinear(module, parts)
    return module


# ---------------------------------------------------------------- save / load

def save(target: str | os.PathLike, *, hf_config, embed: torch.Tensor, final_norm: torch.Tensor,
         blocks: list[DecoderBlock], lm_head: nn.Module, tied: bool, names: tuple[str, str],
         tokenizer=None, recipe: dict | None = None) -> Path:
    """Write a packed directory at target (replacing one there); returns its path."""
    target = Path(target)
    arrays = {"embed": embed.numpy(), "final_norm": final_norm.numpy()}
    layers = []
    for i, block in enumerate(blocks):
        arrays[f"layers.{i}.input_norm"] = block.input_norm.numpy()
        arrays[f"layers.{i}.post_norm"] = block.post_norm.numpy()
        layers.append({name: _encode(f"layers.{i}.{name}", module, arrays)
                       for name, module in block.named_children()})
    share = tied and isinstance(lm_head, Fp32Linear) and torch.equal(lm_head.weight, embed)
    head = {"kind": "fp32", "tied_to": "embed", "out_features": embed.shape[0],
            "in_features": embed.shape[1], "bias": False} if share else _encode("lm_head", lm_head, arrays)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "hf_config": hf_config.to_dict(), "tied": bool(tied), "names": list(names),
              "layers": layers, "lm_head": head, "recipe": cache.to_jsonable(recipe or {}),
              "provenance": cache.provenance()}
    with cache.atomic_directory(target) as tmp:
        tensorfile.write(tmp / WEIGHTS_FILE, arrays, {"format": FORMAT})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        cache.write_json_atomic(tmp / CONFIG_FILE, config)
    return target


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a packed model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{file}: not a {FORMAT} config (format {config.get('format')!r})"
                         if isinstance(config, dict) else f"{file}: not a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format version {config.get('format_version')!r} is not "
                         f"supported (this workbench reads version {FORMAT_VERSION})")
    return config


def _hf_config(file: Path, d: dict):
    from transformers import AutoConfig

    d = dict(d)
    try:
        return AutoConfig.for_model(d.pop("model_type"), **d)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{file}: hf_config is not a Hugging Face config ({e})") from None


def load(path: str | os.PathLike, verify: bool = True) -> dict:
    """The parts of a saved packed model: hf_config, embed, final_norm, blocks, lm_head, tied,
    names, recipe, provenance (what runtime.load_packed assembles). verify: check each
    tensor's CRC32 (reads every byte once; off, nothing is read until the model runs)."""
    path = Path(path)
    config = _read_config(path)
    file = path / CONFIG_FILE
    arrays, _ = tensorfile.read(path / WEIGHTS_FILE, verify=verify)
    r = _Reader(path / WEIGHTS_FILE, arrays)
    hf_config = _hf_config(file, config["hf_config"])
    embed, final_norm = r.tensor("embed"), r.tensor("final_norm")
    if embed.ndim != 2:
        raise ValueError(f"{r.path}: tensor 'embed' has shape {tuple(embed.shape)}, not 2-D")
    hidden = embed.shape[1]
    blocks = []
    for i, entries in enumerate(config["layers"]):
        modules = {name: _decode(f"layers.{i}.{name}", entry, r) for name, entry in entries.items()}
        unknown = sorted(set(modules) - set(FUSED) - {sh for g in FUSED.values() for sh in g}
                         - {"o_proj", "down_proj"})
        if unknown:
            raise ValueError(f"{file}: layer {i} has unknown modules {unknown}")
        blocks.append(DecoderBlock.from_modules(r.tensor(f"layers.{i}.input_norm", (hidden,)),
                                                r.tensor(f"layers.{i}.post_norm", (hidden,)),
                                                modules))
    head = config["lm_head"]
    lm_head = (Fp32Linear.from_tensors(embed) if head.get("tied_to") == "embed"
               else _decode("lm_head", head, r))
    extra = sorted(set(arrays) - r.used)
    if extra:
        raise ValueError(f"{r.path}: tensors {extra[:5]} are not in {CONFIG_FILE} (the files do "
                         "not belong together)")
    return {"hf_config": hf_config, "embed": embed, "final_norm": final_norm, "blocks": blocks,
            "lm_head": lm_head, "tied": bool(config["tied"]), "names": tuple(config["names"]),
            "recipe": config.get("recipe", {}), "provenance": config.get("provenance", {})}


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved beside a packed model, or None when none was saved."""
    path = Path(path)
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "is_packed_dir", "load",
           "load_tokenizer", "save"]
