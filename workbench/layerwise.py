"""Layer-by-layer calibration, the pass every pruner rides on: the inputs decoder block 0
receives for each calibration batch, one block run over them, and the statistics of each Linear's
input while it runs (SparseGPT's Hessian, the per-channel norms and means of Wanda, RIA and DSnoT).

    batches = block_inputs(model, calib, batch_size=8)       # [(hidden [b, T, d], kwargs)]
    stats, outputs = collect_input_stats(layer, names, batches, shared_input, hessian=True)
    batches = run_block(layer, batches)                      # block i+1's inputs

Everything is computed in FP32 whatever the model's dtype (InMemoryBlocks moves one block at a
time). workbench.pruning drives it; workbench.streaming supplies blocks read from disk.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.arch import decoder_layers
from workbench.sparsegpt import HessianAccumulator


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once block 0's inputs are known."""


def _as_fp32(value):
    """Floating tensors (and tuples of them, e.g. RoPE's (cos, sin)) in float32: blocks are
    computed in FP32 whatever the model's dtype."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(_as_fp32(v) for v in value)
    return value


def block_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int):
    """[(hidden_states, kwargs)] per calibration batch, as decoder block 0 receives them, in FP32."""
    first = decoder_layers(model)[0]
    batches = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: _as_fp32(v) for k, v in kwargs.items()
                  if k not in ("past_key_values", "past_key_value")}
        batches.append((hidden.float(), kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[b:b + batch_size], use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return batches


def run_block(layer: nn.Module, batches):
    out = []
    for hidden, kwargs in batches:
        h = layer(hidden, **kwargs)
        out.append((h[0] if isinstance(h, tuple) else h, kwargs))
    return out


class NormAccumulator:
    """Σ_tokens x_j² and Σ_tokens x_j per input channel: Wanda's and RIA's ||X_j||₂, DSnoT's
    E[X_j]."""

    def __init__(self, cols: int, device=None):
        self.sq = torch.zeros(cols, dtype=torch.float32, device=device)
        self.sum = torch.zeros(cols, dtype=torch.float64, device=device)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if not torch.isfinite(x).all():
            raise ValueError("calibration activations hold NaN or Inf")
        self.sq += (x * x).sum(0)
        self.sum += x.sum(0, dtype=torch.float64)
        self.n += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        return self.sq.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.n, 1)).float()


class InputStats:
    """What the pruner and the refinement need of one input: the Hessian (SparseGPT, DSnoT's
    exact error), the norms and means (Wanda, RIA, DSnoT)."""

    def __init__(self, cols: int, device, hessian: bool):
        self.hessian = HessianAccumulator(cols, device) if hessian else None
        self.norms = NormAccumulator(cols, device)

    def add_batch(self, x: torch.Tensor) -> None:
        self.norms.add_batch(x)
        if self.hessian is not None:
            self.hessian.add_batch(x)


class InMemoryBlocks:
    """The model's own decoder blocks: each is computed in FP32 while it is pruned and written
    back in the model's dtype (a bf16 or fp16 model never exists in FP32 as a whole)."""

    def __init__(self, model: nn.Module):
        self.layers = decoder_layers(model)
        self.dtypes = {}

    def __len__(self) -> int:
        return len(self.layers)

    def load(self, i: int) -> nn.Module:
        layer = self.layers[i]
        dtype = next(layer.parameters()).dtype
        if dtype != torch.float32:
            self.dtypes[i] = dtype
            layer.float()
        return layer

    def release(self, i: int, final: bool) -> None:
        if i in self.dtypes:
            self.layers[i].to(self.dtypes.pop(i))


def collect_input_stats(layer: nn.Module, names: dict[str, str], batches, shared_input, hessian: bool):
    """{full name: InputStats} of the block's matrices over the calibration batches; Linears fed
    by one norm (q/k/v, gate/up) see the same input and share one accumulator."""
    stats, handles, by_input = {}, [], {}
    for full, local in names.items():
        source = shared_input.get(local, local)
        if source not in by_input:
            lin = layer.get_submodule(local)
            acc = InputStats(lin.in_features, lin.weight.device, hessian)
            by_input[source] = acc
            handles.append(lin.register_forward_pre_hook(lambda m, a, acc=acc: acc.add_batch(a[0])))
        stats[full] = by_input[source]
    try:
        outputs = run_block(layer, batches)
    finally:
        for h in handles:
            h.remove()
    return stats, outputs


__all__ = ["InMemoryBlocks", "InputStats", "NormAccumulator", "block_inputs", "collect_input_stats",
           "run_block"]
