"""The runtime's modules: one decoder block's weights and the linears it holds.

A PackedModel (workbench.runtime) is an embedding, a list of DecoderBlocks and a head. Each
block keeps its two RMSNorm gains and seven linears, each an Fp32Linear (torch's FP32 GEMM on a
copy of the source weights) or a kernels.SparseInt8Linear (packed INT8), with q/k/v and gate/up
stacked into one FusedLinear where their parts are packed alike. The blocks are built from a
Hugging Face decoder layer (`DecoderBlock(layer, make_linear)`) or from saved modules
(`DecoderBlock.from_modules`, used by workbench.packed_io).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.arch import LLAMA
from workbench.kernels import SparseInt8Linear

# Hugging Face module name inside a decoder layer -> the block's attribute name:
# "self_attn.q_proj" -> "q_proj", ..., "mlp.down_proj" -> "down_proj" (arch.LLAMA's order)
SHORT_NAMES = {long: long.rpartition(".")[2] for long in LLAMA.linears}


def copy_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A float32 CPU snapshot, never sharing storage with the source model."""
    return None if t is None else t.detach().to("cpu", torch.float32, copy=True)


class Fp32Linear(nn.Module):
    """y = x W^T + b with torch's FP32 GEMM, on a copy of the source weights."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", copy_fp32(linear.weight))
        self.register_buffer("bias", copy_fp32(linear.bias))

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Fp32Linear:
        """An Fp32Linear over these float32 tensors as they are (not copied: a loaded model's
        buffers stay views of the mapped file)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, fp32"


# Linears that read the same input are packed as one stacked layer: one kernel call and one
# activation quantization instead of three (two). Per-output-row weight scales and per-token
# activation scales make the stacked layer compute exactly what its parts compute.
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}
LONG_NAMES = {short: long for long, short in SHORT_NAMES.items()}


def stacked(linears: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear whose output rows are the given linears' rows, in order."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    biases = [lin.bias for lin in linears]
    with torch.device("meta"):          # no initialization of weights replaced right away
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=biases[0] is not None)
    with torch.no_grad():
        out.weight = nn.Parameter(weight, requires_grad=False)
        if out.bias is not None:
            out.bias = nn.Parameter(torch.cat([b.detach() for b in biases]), requires_grad=False)
    return out


class FusedLinear(nn.Module):
    """Several linears stacked by output rows (FUSED). forward(x) returns the parts' outputs
    concatenated on the last dimension; parts: ((short name, out_features), ...)."""

    def __init__(self, inner: nn.Module, parts):
        super().__init__()
        self.inner, self.parts = inner, tuple(parts)
        self.sizes = [n for _, n in self.parts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def describe_parts(self) -> list[tuple[str, dict]]:
        """(short name, describe row) per part, bytes and density of the part's own rows."""
        rows, start = [], 0
        for short, n in self.parts:
            rows.append((short, describe(self.inner, start, start + n)))
            start += n
        return rows

    def extra_repr(self) -> str:
        return "+".join(short for short, _ in self.parts)


def fast_call(module: nn.Module):
    """The call the hot loop makes for a linear on a contiguous 2-D float32 input."""
    inner = module.inner if isinstance(module, FusedLinear) else module
    if isinstance(inner, SparseInt8Linear):
        return inner.run2d
    weight, bias = inner.weight, inner.bias
    return lambda x: F.linear(x, weight, bias)


class DecoderBlock(nn.Module):
    """One decoder layer's weights: two RMSNorm gains and seven linears, q/k/v and gate/up
    stacked (FUSED) unless can_fuse(names) says its parts are packed differently."""

    def __init__(self, layer: nn.Module, make_linear, can_fuse=lambda names: True):
        super().__init__()
        self.register_buffer("input_norm", copy_fp32(layer.get_submodule(LLAMA.input_norm).weight))
        self.register_buffer("post_norm", copy_fp32(layer.get_submodule(LLAMA.post_norm).weight))
        done = set()
        for group, shorts in FUSED.items():
            longs = [LONG_NAMES[sh] for sh in shorts]
            if can_fuse(longs):
                linears = [layer.get_submodule(long) for long in longs]
                fused = make_linear(longs[0], stacked(linears))
                setattr(self, group, FusedLinear(fused, [(sh, lin.out_features)
                                                         for sh, lin in zip(shorts, linears, strict=True)]))
                done.update(shorts)
        for long, short in SHORT_NAMES.items():
            if short not in done:
                setattr(self, short, make_linear(long, layer.get_submodule(long)))

    @classmethod
    def from_modules(cls, input_norm: torch.Tensor, post_norm: torch.Tensor,
                     modules: dict[str, nn.Module]) -> DecoderBlock:
        """A block of saved parts: modules maps attribute names (a FUSED group or a short
        name, as `named_children` lists them) to linears; every short name must be covered."""
        covered = [sh for name in modules for sh in FUSED.get(name, (name,))]
        if sorted(covered) != sorted(SHORT_NAMES.values()):
            raise ValueError(f"a decoder block needs each of {sorted(SHORT_NAMES.values())} "
                             f"once, got {sorted(modules)}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.register_buffer("input_norm", input_norm)
        self.register_buffer("post_norm", post_norm)
        for name, module in modules.items():
            setattr(self, name, module)
        return self

    def linears(self) -> list[tuple[str, nn.Module]]:
        """(long name, module) per packed module, a fused group named by its parts."""
        out = []
        for long, short in SHORT_NAMES.items():
            if hasattr(self, short):
                out.append((long, getattr(self, short)))
            else:
                group = next(g for g, shorts in FUSED.items() if short in shorts)
                if short == FUSED[group][0]:
                    out.append(("+".join(LONG_NAMES[sh] for sh in FUSED[group]), getattr(self, group)))
        return out

    def hot(self):
        """The per-layer callables of the hot loop: input norm, x -> (q, k, v), o, post
        norm, x -> (gate, up), down; every linear on a contiguous [tokens, features] input."""
        def split(group, shorts):
            if hasattr(self, group):
                run, sizes = fast_call(getattr(self, group)), getattr(self, group).sizes
                return lambda x: run(x).split(sizes, -1)
            runs = [fast_call(getattr(self, sh)) for sh in shorts]
            return lambda x: [r(x) for r in runs]
        return (self.input_norm, split("qkv", FUSED["qkv"]), fast_call(self.o_proj), self.post_norm,
                split("gate_up", FUSED["gate_up"]), fast_call(self.down_proj))


def describe(module: nn.Module, start: int = 0, stop: int | None = None) -> dict:
    """kind, shape, density (nonzero fraction) and bytes a forward streams of one linear, or
    of its output rows start..stop-1 (a part of a stacked layer)."""
    if isinstance(module, SparseInt8Linear):
        p = module.packed
        kind = "int8-sparse" if p.sparse else "int8-dense"
        if stop is None:
            out_f, in_f, density, nbytes = p.out_features, p.in_features, p.density, p.nbytes
        else:
            nnz, nbytes = p.row_stats(start, stop)
            out_f, in_f = stop - start, p.in_features
            density = nnz / max(out_f * in_f, 1)
    else:
        w, b = module.weight[start:stop], module.bias
        b = None if b is None else b[start:stop]
        kind, (out_f, in_f) = "fp32", w.shape
        density = float(torch.count_nonzero(w)) / max(w.numel(), 1)
        nbytes = w.nbytes + (0 if b is None else b.nbytes)
    return dict(kind=kind, out_features=out_f, in_features=in_f, density=density, nbytes=nbytes,
                bytes_per_weight=nbytes / max(out_f * in_f, 1))


__all__ = ["FUSED", "LONG_NAMES", "SHORT_NAMES", "DecoderBlock", "Fp32Linear", "FusedLinear",
           "copy_fp32", "describe", "fast_call", "stacked"]
