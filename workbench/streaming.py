"""Pruning checkpoints larger than memory: decoder blocks streamed from safetensors on disk.

A 7B model is 27 GB in FP32 and 13.5 GB in bf16. `prune_checkpoint` never holds it: the
embeddings, final norm and LM head are loaded (in the checkpoint's dtype), every decoder block
stays on the meta device until the sequential driver reaches it, is then read from the
memory-mapped safetensors in FP32, calibrated, pruned, written to the output checkpoint in the
checkpoint's dtype and freed. Peak memory is about one FP32 block, its Hessians and the
calibration activations on top of the embeddings.

    report = prune_checkpoint("ckpt/llama-7b", calib, PruneConfig(sparsity=0.5), "ckpt/llama-7b-50")
    model, tok = load_model("ckpt/llama-7b-50", dtype=torch.bfloat16)

The output is an ordinary sharded Hugging Face checkpoint (one shard per block, an index), so
`load_model` and `from_pretrained` read it; it is written into a temporary directory beside
the target and moved into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from workbench.arch import decoder_layers, get_arch
from workbench.atomic import swap_directory, temp_directory

_INDEX = "model.safetensors.index.json"
_GB = 2 ** 30


def checkpoint_index(path: str | os.PathLike) -> dict[str, Path]:
    """{tensor name: safetensors file} of a local checkpoint (sharded with an index, or not)."""
    from safetensors import safe_open

    path = Path(path)
    if (path / _INDEX).is_file():
        weight_map = json.loads((path / _INDEX).read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no .safetensors weights to stream")
    index = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            index.update({name: file for name in f.keys()})
    return index


def read_tensors(index: dict[str, Path], names, dtype: torch.dtype | None = None) -> dict:
    """{name: tensor} read from the memory-mapped files, copied out (in `dtype` if given), the
    maps closed again: a block's pages do not stay resident after it is read."""
    from safetensors import safe_open

    missing = [n for n in names if n not in index]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(index[name], []).append(name)
    out = {}
    for file, group in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for name in group:
                t = f.get_tensor(name)
                out[name] = t.to(dtype) if dtype is not None and t.dtype != dtype else t.clone()
    return out


def available_memory() -> int:
    """Bytes the kernel reports as available (MemAvailable), or 0 when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_fits(need: int, what: str, hint: str = "") -> None:
    """MemoryError saying how much memory `what` needs when the machine has less available."""
    have = available_memory()
    if have and need > have:
        raise MemoryError(f"{what} needs about {need / _GB:.1f} GiB, only {have / _GB:.1f} GiB "
                          f"is available{'; ' + hint if hint else ''}")


def _storage_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


class ShardWriter:
    """Writes a sharded checkpoint into a temporary directory beside target; finish() swaps it
    in for target (atomic.swap_directory), abort() removes it."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.tmp = temp_directory(self.target)
        self.weight_map: dict[str, str] = {}
        self.total = 0

    def write(self, shard: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(self.tmp / shard), metadata={"format": "pt"})
        self.weight_map.update({k: shard for k in tensors})
        self.total += sum(v.numel() * v.element_size() for v in tensors.values())

    def finish(self, source: Path | None = None, config=None, tokenizer=None) -> Path:
        """Write the index, then copy source's other files (config, generation config,
        tokenizer) or save config and tokenizer, and move the checkpoint into place."""
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.tmp / _INDEX).write_text(json.dumps(index, indent=1))
        for file in source.iterdir() if source is not None else ():
            if file.is_file() and file.suffix != ".safetensors" and file.name != _INDEX:
                shutil.copy2(file, self.tmp / file.name)
        if config is not None:
            config.save_pretrained(self.tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.tmp)
        return swap_directory(self.tmp, self.target)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class StreamedBlocks:
    """The decoder blocks of a skeleton model, read from the checkpoint when the driver loads
    one (in FP32) and, at their final release, written to the output in `dtype` and freed."""

    def __init__(self, model: nn.Module, index: dict[str, Path], dtype: torch.dtype,
                 writer: ShardWriter | None = None):
        self.model, self.index, self.dtype, self.writer = model, index, dtype, writer
        self.layers = decoder_layers(model)
        self.prefix = get_arch(model).layers

    def __len__(self) -> int:
        return len(self.layers)

    def _names(self, i: int) -> dict[str, str]:
        layer = self.layers[i]
        if any(True for _ in layer.buffers()):
            raise ValueError(f"block {i} holds buffers; streaming supports parameter-only blocks")
        return {f"{self.prefix}.{i}.{local}": local for local, _ in layer.named_parameters()}

    def load(self, i: int) -> nn.Module:
        layer = self.layers[i]
        names = self._names(i)
        tensors = read_tensors(self.index, list(names), torch.float32)
        layer.to_empty(device="cpu")
        with torch.no_grad():
            for full, local in names.items():
                p = layer.get_parameter(local)
                p.data = tensors.pop(full)
        return layer

    def release(self, i: int, final: bool) -> None:
        layer = self.layers[i]
        if final and self.writer is not None:
            self.writer.write(f"block-{i:05d}.safetensors",
                              {f"{self.prefix}.{i}.{local}": p.detach().to(self.dtype)
                               for local, p in layer.named_parameters()})
        layer.to("meta")


def _skeleton(path: Path):
    """(model with parameters on meta, its config, the storage dtype, the tensor index)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    get_arch(config)
    dtype = _storage_dtype(config)               # before from_config, which overwrites it
    index = checkpoint_index(path)
    with init_empty_weights(include_buffers=False):          # parameters on meta, buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, config, dtype, index


def streamed_peak_estimate(model: nn.Module, dtype: torch.dtype, calib_tokens: int) -> int:
    """Bytes prune_checkpoint needs, roughly, from a skeleton model: the non-block tensors as
    stored, one block in FP32 twice (its weights and the pruner's working copies), a Hessian
    per Linear input, and the calibration activations (in, out, the MLP's intermediate)."""
    layers = decoder_layers(model)
    elem = torch.tensor([], dtype=dtype).element_size()
    block_params = list(layers[0].parameters())
    block = sum(p.numel() for p in block_params)
    prefix = get_arch(model).layers + "."
    rest = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefix))
    linears = [m for m in layers[0].modules() if isinstance(m, nn.Linear)]
    hessians = sum(4 * m.in_features ** 2 for m in linears)
    widest = max(m.out_features for m in linears)
    hidden = linears[0].in_features
    return int(elem * rest + 2 * 4 * block + hessians + 4 * calib_tokens * (3 * hidden + 2 * widest))


def open_streamed(path: str | os.PathLike, writer: ShardWriter | None = None,
                  calib_tokens: int | None = None):
    """(skeleton model, StreamedBlocks, storage dtype) for a local checkpoint: everything but the
    decoder blocks loaded in the checkpoint's dtype, the blocks on the meta device. With
    calib_tokens, first a MemoryError if the machine cannot hold what streaming needs."""
    from accelerate.utils import set_module_tensor_to_device

    path = Path(path)
    model, config, dtype, index = _skeleton(path)
    if calib_tokens is not None:
        check_fits(streamed_peak_estimate(model, dtype, calib_tokens), f"streaming {path.name}",
                   "use fewer calibration tokens")
    spec = get_arch(model)
    prefix = spec.layers + "."
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head = f"{spec.lm_head}.weight"
    rest = [n for n, _ in model.named_parameters()
            if not n.startswith(prefix) and not (tied and n == head and n not in index)]
    for name, t in read_tensors(index, rest, dtype).items():
        set_module_tensor_to_device(model, name, "cpu", value=t, dtype=dtype)
    if tied:
        model.tie_weights()
    model.eval()
    return model, StreamedBlocks(model, index, dtype, writer), dtype


def prune_checkpoint(path: str | os.PathLike, calib: torch.Tensor, config, out_dir: str | os.PathLike):
    """Prune a local safetensors checkpoint block by block from disk into out_dir (a sharded
    checkpoint in the source's dtype, with its config and tokenizer files); returns the
    PruneReport. Nothing is left at out_dir if it fails."""
    from workbench.pruning import PruneConfig, prune_

    config = config or PruneConfig()
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.resolve() == path.resolve():
        raise ValueError(f"out_dir must differ from the source checkpoint {path}")
    calib_tokens = int(calib.numel()) if calib is not None else 0
    writer = ShardWriter(out_dir)
    try:
        model, blocks, _ = open_streamed(path, writer, calib_tokens)
        report = prune_(model, calib, config, blocks=blocks)
        writer.write("rest.safetensors", {n: p for n, p in model.named_parameters()
                                          if not n.startswith(get_arch(model).layers + ".")
                                          and p.device.type != "meta"})
        writer.finish(path)
    except BaseException:
        writer.abort()
        raise
    return report
