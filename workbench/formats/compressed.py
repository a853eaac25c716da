"""A pruned model as a compressed-tensors checkpoint: legacy `sparse-bitmask` + INT8 channel-wise.

The layout written by compressed-tensors <= 0.14.0.1 (its sparse compressors went in 0.15.0),
as SparseML and llm-compressor <= 0.14 wrote it, read from that package's source:

    config.json  quantization_config = {quant_method: "compressed-tensors", format:
                 "int-quantized", quantization_status: "compressed", config_groups: {group_0:
                 {targets: ["Linear"], weights: int 8-bit symmetric "channel", input_activations:
                 int 8-bit symmetric "token" dynamic}}, ignore: ["lm_head"], sparsity_config:
                 {format: "sparse-bitmask", targets, ignore, global_sparsity, sparsity_structure}}
    P.compressed   int8 [nnz]            the nonzero quantized values, row-major
    P.bitmask      uint8 [out, ceil(in/8)]  bit j%8 of byte j//8 (little-endian, numpy.packbits
                                         bitorder="little") set where column j is nonzero
    P.row_offsets  int64 [out]           index in `compressed` where each row starts
    P.shape        int64 [2]             the dense shape [out, in]
    P.weight_scale float [out, 1]        w = q * weight_scale; symmetric, so no zero point

for each decoder Linear P (older writers named them P.weight.compressed, ...; both are read).
Quantization is applied first, sparsity second: `compressed` holds the INT8 values of the
nonzero entries. Embeddings, norms and lm_head stay dense, in the model's dtype. The scales
are `quant.quantize_weight(w, "per_channel")`'s, the runtime's, so packing a reloaded model
gives back the same INT8 weights. The reader also takes sparse-only (float `compressed`) and
quantized-only (int8 P.weight + P.weight_scale) directories, and sharded ones.
Reference: https://github.com/neuralmagic/compressed-tensors (v0.14.0.1).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench import cache
from workbench.arch import layer_linears
from workbench.formats.hf import write_recipe
from workbench.quant import quantize_weight
from workbench.recipe import attach_recipe, recipe_of

QUANT_METHOD = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SPARSE_PARAMS = ("compressed", "bitmask", "row_offsets", "shape")
_INT8 = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None}


def _quantization_config(targets: list[str], ignore: list[str], sparsity: float) -> dict:
    weights = {**_INT8, "strategy": "channel", "dynamic": False, "observer": "minmax"}
    inputs = {**_INT8, "strategy": "token", "dynamic": True, "observer": None}
    group = {"targets": ["Linear"], "weights": weights, "input_activations": inputs,
             "output_activations": None}
    return {"quant_method": QUANT_METHOD, "format": "int-quantized",
            "quantization_status": "compressed", "config_groups": {"group_0": group},
            "ignore": ignore, "kv_cache_scheme": None,
            "sparsity_config": {"format": "sparse-bitmask", "targets": targets, "ignore": ignore,
                                "global_sparsity": sparsity, "sparsity_structure": "unstructured"}}


# ---------------------------------------------------------------- the bitmask, both ways

def bitmask_compress(q: torch.Tensor) -> dict[str, torch.Tensor]:
    """q [out, in] -> the four sparse-bitmask tensors (names without the layer prefix)."""
    mask = q != 0                                                      # [out, in] bool
    counts = mask.sum(dim=1)                                           # [out]
    bits = np.packbits(mask.numpy(), axis=-1, bitorder="little")       # [out, ceil(in/8)]
    return {"compressed": q[mask].contiguous(), "bitmask": torch.from_numpy(bits),
            "row_offsets": torch.cumsum(counts, 0) - counts,
            "shape": torch.tensor(list(q.shape), dtype=torch.int64)}


def bitmask_decompress(t: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """The dense [out, in] tensor of one layer's sparse-bitmask tensors; ValueError naming
    where (file and layer) when they disagree."""
    shape = [int(s) for s in t["shape"].reshape(-1).tolist()]
    bits = t["bitmask"]
    if len(shape) != 2 or bits.dtype != torch.uint8 or list(bits.shape) != [shape[0],
                                                                           -(-shape[1] // 8)]:
        raise ValueError(f"{where}.bitmask: shape {list(bits.shape)} ({bits.dtype}) does not "
                         f"fit the dense shape {shape} (needs uint8 [out, ceil(in/8)])")
    mask = torch.from_numpy(np.unpackbits(bits.numpy(), axis=-1, count=shape[1],
                                          bitorder="little").astype(bool))  # [out, in]
    values = t["compressed"].reshape(-1)
    counts = mask.sum(dim=1)
    if values.numel() != int(counts.sum()):
        raise ValueError(f"{where}.compressed: {values.numel()} values for "
                         f"{int(counts.sum())} set bits in its bitmask")
    if not torch.equal(t["row_offsets"].reshape(-1).long(), torch.cumsum(counts, 0) - counts):
        raise ValueError(f"{where}.row_offsets: do not match the bitmask's row counts")
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[mask] = values
    return dense


# ---------------------------------------------------------------- writer

def _int8_weight(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in], scale float32 [out]): a W8A8Linear's own grid, else the runtime's."""
    if hasattr(mod, "weight_int8"):
        q, scale = mod.weight_int8.detach(), mod.weight_scale.detach().float().reshape(-1)
        return q, scale.expand(q.shape[0]).contiguous()            # per_tensor -> per row
    return quantize_weight(mod.weight.detach(), "per_channel")


def to_compressed_tensors(model, tokenizer, path: str | os.PathLike,
                          recipe: list[dict] | None = None) -> Path:
    """Write model (+ tokenizer, when given) as a sparse-bitmask + INT8 compressed-tensors
    directory at path, replacing one there; returns the path. recipe: the steps to record
    (default: the ones on the model), written with this run's provenance to recipe.json."""
    from safetensors.torch import save_file

    if not hasattr(model, "config") or not hasattr(model.config, "save_pretrained"):
        raise TypeError(f"to_compressed_tensors takes a Hugging Face model, got "
                        f"{type(model).__name__}")
    steps = recipe_of(model) if recipe is None else list(recipe)
    linears = layer_linears(model)
    tensors: dict[str, torch.Tensor] = {}
    zeros = total = 0
    for name, mod in linears.items():
        q, scale = _int8_weight(mod)
        zeros, total = zeros + int((q == 0).sum()), total + q.numel()
        tensors.update({f"{name}.{k}": v for k, v in bitmask_compress(q.cpu()).items()})
        tensors[f"{name}.weight_scale"] = scale[:, None].cpu()                 # [out, 1]
        if getattr(mod, "bias", None) is not None:
            tensors[f"{name}.bias"] = mod.bias.detach().cpu()
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] in linears or value.data_ptr() in seen:
            continue                             # a linear's own tensors, or a tied copy
        seen.add(value.data_ptr())
        tensors[key] = value.detach().cpu().contiguous()
    ignore = sorted(n for n, m in model.named_modules()
                    if isinstance(m, nn.Linear) and n not in linears)           # lm_head
    qconfig = _quantization_config(["Linear"], ignore, zeros / max(total, 1))
    path = Path(path)
    with cache.atomic_directory(path) as tmp:
        model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config["quantization_config"] = qconfig
        cache.write_json_atomic(tmp / "config.json", config)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_recipe(tmp, steps)
    return path


# ---------------------------------------------------------------- reader

def _quantization_config_of(path: Path) -> dict | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return qc if isinstance(qc, dict) else None


def is_compressed_tensors(path: str | os.PathLike) -> bool:
    """Whether path is a directory whose config.json says quant_method compressed-tensors."""
    qc = _quantization_config_of(Path(path))
    return qc is not None and qc.get("quant_method") == QUANT_METHOD


def _check_config(qc: dict, file: Path) -> None:
    """ValueError naming file for anything but bitmask/dense sparsity and INT8 symmetric
    channel (or tensor) weights."""
    sparsity = (qc.get("sparsity_config") or {}).get("format", "dense")
    if sparsity not in ("sparse-bitmask", "dense"):
        raise ValueError(f"{file}: sparsity format {sparsity!r} is not read here (only "
                         "'sparse-bitmask')")
    fmt = qc.get("format") or "dense"
    if fmt not in ("int-quantized", "naive-quantized", "dense"):
        raise ValueError(f"{file}: quantization format {fmt!r} is not read here (only "
                         "'int-quantized')")
    for gname, group in (qc.get("config_groups") or {}).items():
        w = (group or {}).get("weights") or {}
        if w and (w.get("group_size") or w.get("strategy") not in ("channel", "tensor")):
            raise ValueError(f"{file}: config_groups.{gname} has {w.get('strategy')} weight "
                             "scales; only channel-wise (or tensor-wise) are read, not group-wise")
        if w and (w.get("num_bits") != 8 or w.get("type") != "int" or not w.get("symmetric")):
            raise ValueError(f"{file}: config_groups.{gname} weights are not 8-bit symmetric int")


def _weight_files(path: Path) -> list[str]:
    if not (path / INDEX_FILE).is_file():
        return [WEIGHTS_FILE]
    try:
        return sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / INDEX_FILE}: not a safetensors index ({e})") from None


def _read_tensors(path: Path, header_only: bool = False) -> dict[str, tuple[object, str]]:
    """Every stored tensor -> (tensor, its file's name); one file or a sharded index.
    header_only: the shape list in place of the tensor, except P.shape tensors (tiny)."""
    from safetensors import SafetensorError, safe_open

    out = {}
    for name in _weight_files(path):
        if not (path / name).is_file():
            raise ValueError(f"{path / name}: missing (compressed-tensors weights)")
        try:
            with safe_open(str(path / name), framework="pt") as f:
                for key in f.keys():
                    small = not header_only or key.endswith(".shape")
                    out[key] = (f.get_tensor(key) if small else f.get_slice(key).get_shape(), name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{path / name}: corrupted or truncated safetensors ({e})") from None
    return out


def dense_numel(path: str | os.PathLike) -> int:
    """Parameters of the dense model a compressed-tensors directory holds, read from the file
    headers and the small P.shape tensors: what read_compressed_tensors will allocate."""
    stored = _read_tensors(Path(path), header_only=True)
    numel = 0
    for key, (value, _) in stored.items():
        stem, _, param = key.rpartition(".")
        if param == "shape" and f"{stem}.bitmask" in stored:
            numel += math.prod(int(s) for s in value.reshape(-1).tolist())   # the dense [out, in]
        elif param not in _SPARSE_PARAMS and not param.startswith(("weight_scale", "weight_zero")):
            numel += math.prod(value)
    return numel


def _dense_state_dict(tensors: dict[str, tuple[torch.Tensor, str]], path: Path,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Decompress (bitmask) and dequantize (q * weight_scale, in float32) every layer: a plain
    state dict in dtype, cast layer by layer so no FP32 copy of the model is held."""
    tensors = dict(tensors)
    sparse = {}                                  # layer prefix -> {param: key}
    for key in list(tensors):
        stem, _, param = key.rpartition(".")
        if param == "bitmask":
            prefix = stem.removesuffix(".weight")
            sparse[prefix] = {p: f"{stem}.{p}" for p in _SPARSE_PARAMS}
    state = {}
    for prefix, keys in sparse.items():
        where = f"{path / tensors[keys['bitmask']][1]}: {prefix}"
        for key in keys.values():
            if key not in tensors:
                raise ValueError(f"{path}: tensor {key} missing (layer {prefix} has a bitmask)")
        state[f"{prefix}.weight"] = bitmask_decompress({p: tensors.pop(k)[0] for p, k in
                                                       keys.items()}, where)
    for key, (value, _) in tensors.items():
        state.setdefault(key, value)
    for key in [k for k in state if k.endswith(".weight_zero_point")]:
        if state[key].count_nonzero():
            raise ValueError(f"{path}: {key} is nonzero; only symmetric INT8 is read")
        del state[key]
    for key in [k for k in state if k.endswith(".weight_scale")]:
        prefix, scale = key.removesuffix(".weight_scale"), state.pop(key).float()
        q = state.get(f"{prefix}.weight")
        if q is None:
            raise ValueError(f"{path}: tensor {prefix}.weight missing (it has a weight_scale)")
        if q.dtype != torch.int8:
            raise ValueError(f"{path}: {prefix}.weight is {q.dtype}, expected int8 values")
        if scale.numel() != 1 and list(scale.shape) not in ([q.shape[0], 1], [q.shape[0]]):
            raise ValueError(f"{path}: {key} has shape {list(scale.shape)}: group-wise scales "
                             f"are not read, only channel-wise [{q.shape[0]}, 1]")
        state[f"{prefix}.weight"] = (q.float() * scale.reshape(-1, 1)).to(dtype)  # [out, in]
    bad = [k for k, v in state.items() if not v.is_floating_point()]
    if bad:
        raise ValueError(f"{path}: tensor {bad[0]} is {state[bad[0]].dtype} with no weight_scale")
    return {k: v.to(dtype) for k, v in state.items()}


def read_compressed_tensors(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a compressed-tensors directory: a plain Hugging Face model in
    dtype (eval mode) whose linears hold q * scale, zeros kept; tokenizer None when none was
    saved. ValueError naming the file (and tensor) for anything it does not read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    qc = _quantization_config_of(path)
    if qc is None or qc.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{path / 'config.json'}: no compressed-tensors quantization_config")
    _check_config(qc, path / "config.json")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    del config.quantization_config              # so transformers' own quantizer stays out
    state = _dense_state_dict(_read_tensors(path), path, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(f"{path}: tensor {key} has shape {list(value.shape)}, the config "
                             f"needs {list(expected[key].shape)}")
    result = model.load_state_dict(state, strict=False)
    tied = {k for k in result.missing_keys if k.endswith("lm_head.weight")
            and getattr(config, "tie_word_embeddings", False)}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise ValueError(f"{path}: tensor {what} ({len(missing)} missing, "
                         f"{len(result.unexpected_keys)} unexpected)")
    model.tie_weights()
    model.eval()
    tokenizer = None
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    attach_recipe(model, path)
    return model, tokenizer


__all__ = ["bitmask_compress", "bitmask_decompress", "dense_numel", "is_compressed_tensors",
           "read_compressed_tensors", "to_compressed_tensors"]
