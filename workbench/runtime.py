"""A lean CPU runtime for Llama-family models with sparse/dense INT8 linears: pack, then generate.

    pm = runtime.pack(model, plan=plan)               # decoder linears -> SparseInt8Linear
    ids = pm.generate(input_ids, max_new_tokens=64)   # prefill, then one decode step per token
    base = runtime.PackedModel.from_fp32(model)       # same model, plain FP32 linears
    ref = runtime.pack(model, engine="torch")         # the readable torch loop
    pm.save("out/packed"); pm = runtime.load_packed("out/packed")   # workbench.packed_io

Two engines run the same model. "native" (the default) runs every decode step, and every
prefill, as ONE nogil C call over all layers (kernels_cy/wb_engine.h: one OpenMP parallel
region, barriers between dependent steps, KV cache and scratch preallocated); "torch" is the
Python loop below, kept as the reference the native engine is tested against. The two round
alike (workbench.llama's float64 reductions; the INT8 products are exact), so their logits
agree to float32 rounding and their greedy tokens are equal on W8A8 models too.

At 135M parameters the work outside the linear layers weighs as much as the linears: on the
embedded model (results/decode/smollm2-135m.md, batch 1, 1 thread) a dense INT8 token takes
12.5 ms in the torch loop below and 6.6 ms in the native engine with the same kernels, and
22.3 ms in Hugging Face `generate` with torch's dynamic INT8 linears. This loop keeps that
overhead small: a preallocated KV cache, precomputed RoPE tables, the query heads grouped under their KV
head at decode (no repeat, no mask), and the layers' forwards called directly. The packed
model computes what quant.quantize_ with per-channel weights and per-token activations
computes (kernels.SparseInt8Linear reproduces W8A8Linear's arithmetic); from_fp32 separates
the gain of the kernels from the gain of the loop. The decoder math is in workbench.llama.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels, llama, packed_io, recipe
from workbench.arch import get_arch, layer_linears
from workbench.blocks import (
    FUSED,
    LONG_NAMES,
    SHORT_NAMES,
    DecoderBlock,
    Fp32Linear,
    FusedLinear,
    copy_fp32,
    describe,
)
from workbench.decoding import Decoding, pick_token
from workbench.kernels import SparseInt8Linear
from workbench.llama import KVCache, llama_dims, rms_norm
from workbench.packing import FORMATS
from workbench.quant import plan_names
from workbench.selection import check_patterns, is_selected

LM_HEAD_MODES = ("int8", "fp32")
ENGINES = ("native", "torch")


class PackedModel(Decoding, nn.Module):
    """A Llama-family decoder built from a Hugging Face model's weights (the source is never
    modified), with its own generation loop. Build with `pack` or `PackedModel.from_fp32`."""

    def __init__(self, model: nn.Module, make_linear, lm_head: str, can_fuse=lambda names: True,
                 engine: str = "native", n_threads: int | None = None):
        super().__init__()
        spec = get_arch(model)
        layers = model.get_submodule(spec.layers)
        blocks = [DecoderBlock(layer, lambda name, lin, i=i: make_linear(f"{spec.layers}.{i}.{name}", lin),
                               lambda names, i=i: can_fuse([f"{spec.layers}.{i}.{n}" for n in names]))
                  for i, layer in enumerate(layers)]
        head, embed = model.get_submodule(spec.lm_head), model.get_submodule(spec.embed)
        self._assemble(model.config, copy_fp32(embed.weight),
                       copy_fp32(model.get_submodule(spec.final_norm).weight), blocks,
                       make_linear(spec.lm_head, head) if lm_head == "int8" else Fp32Linear(head),
                       tied=head.weight.data_ptr() == embed.weight.data_ptr(),
                       names=(spec.layers, spec.lm_head), engine=engine, n_threads=n_threads)
        self.recipe = recipe.recipe_of(model)

    def _assemble(self, hf_config, embed: torch.Tensor, final_norm: torch.Tensor,
                  blocks: list[DecoderBlock], lm_head: nn.Module, tied: bool,
                  names: tuple[str, str], engine: str, n_threads: int | None) -> None:
        """Set up the model from its parts (built from a source model, or loaded)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self.n_threads = None if n_threads is None else kernels.check_threads(n_threads)
        self._native_engine = None                 # built on first use (_native)
        self._profile = None                       # seconds per engine step, see profile()
        self.hf_config = hf_config
        self.dims = llama_dims(hf_config)
        self.register_buffer("embed", embed)
        self.register_buffer("final_norm", final_norm)
        cos, sin = llama.rope_tables(hf_config, self.dims)
        self.register_buffer("cos", cos, persistent=False)         # [max_positions, head_dim]
        self.register_buffer("sin", sin, persistent=False)
        self.layers = nn.ModuleList(blocks)
        self.tied = tied
        self._names = names
        self.lm_head = lm_head
        self._cache: KVCache | None = None
        # the hot loop reads plain tuples of tensors and kernel calls, not module attributes
        self._hot = [b.hot() for b in self.layers]
        self._head = self.lm_head.forward
        self.eval()

    def save(self, path, tokenizer=None, recipe: list[dict] | None = None):
        """Write this model as a packed directory (workbench.packed_io) at path, replacing one
        there; tokenizer: saved beside it; recipe: the steps that made it (default: those
        recorded on the source model, then this pack). Returns the path."""
        return packed_io.save(path, hf_config=self.hf_config, embed=self.embed,
                              final_norm=self.final_norm, blocks=list(self.layers),
                              lm_head=self.lm_head, tied=self.tied, names=self._names,
                              tokenizer=tokenizer, recipe=self.recipe if recipe is None else recipe)

    @classmethod
    def from_fp32(cls, model: nn.Module, engine: str = "native",
                  n_threads: int | None = None) -> PackedModel:
        """The same runtime with every linear (lm_head too) in plain FP32: torch F.linear in
        the torch loop, the engine's float dot products in the native one."""
        _check_source(model)
        return cls(model, lambda name, lin: Fp32Linear(lin), lm_head="fp32", engine=engine,
                   n_threads=n_threads)

    # ------------------------------------------------------------ the native engine

    def _native(self):
        """The compiled engine over this model's buffers (built once)."""
        if self._native_engine is None:
            from workbench import _linear

            def spec(module):
                inner = module.inner if isinstance(module, FusedLinear) else module
                if isinstance(inner, SparseInt8Linear):
                    return inner._kernel
                bias = None if inner.bias is None else inner.bias.numpy()
                return (inner.weight.numpy(), bias)

            def group(block, name):
                if hasattr(block, name):
                    return [spec(getattr(block, name))]
                return [spec(getattr(block, short)) for short in FUSED[name]]

            d = self.dims
            inter = describe(self.layers[0].down_proj)["in_features"]
            layers = [(b.input_norm.numpy(), b.post_norm.numpy(), group(b, "qkv"), spec(b.o_proj),
                       group(b, "gate_up"), spec(b.down_proj)) for b in self.layers]
            dims = (d.n_layers, d.hidden, d.n_heads, d.n_kv_heads, d.head_dim, inter, d.vocab,
                    d.max_positions, d.rms_eps)
            self._native_engine = _linear.Engine(dims, self.embed.numpy(), self.final_norm.numpy(),
                                                 self.cos.numpy(), self.sin.numpy(), layers,
                                                 spec(self.lm_head))
        return self._native_engine

    def profile(self, steps: bool = True):
        """Start (steps=True) or stop (False) timing the native engine's steps; returns the
        seconds accumulated so far per step (kernels_cy/_linear.pyx ENGINE_STEPS) as a dict.
        Each step is timed from one barrier to the next: the slowest thread's time."""
        from workbench import _linear

        done = {} if self._profile is None else dict(zip(_linear.ENGINE_STEPS,
                                                         self._profile.tolist(), strict=True))
        self._profile = np.zeros(len(_linear.ENGINE_STEPS)) if steps else None
        return done

    def _native_forward(self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor,
                        all_logits: bool, next_ids: torch.Tensor | None = None) -> torch.Tensor:
        """_forward on the native engine: one C call for every layer, the head and (next_ids,
        LongTensor [B]) the greedy next token of each row."""
        from workbench import _linear

        B, T = ids.shape
        s0 = cache.length
        logits = torch.empty(B * T if all_logits else B, self.dims.vocab)
        mask = None if cache.key_mask is None else cache.key_mask.view(torch.uint8).numpy()
        threads = self.n_threads or kernels.default_threads()
        bad = self._native().run(
            _linear.ISA_NAMES[kernels.active_isa()], threads, ids.contiguous().numpy(),
            positions.contiguous().numpy(), cache.keys.numpy(), cache.values.numpy(), s0, mask,
            logits.numpy(), all_logits, None if next_ids is None else next_ids.numpy(),
            self._profile)
        if bad:
            raise ValueError(f"activations hold NaN or Inf ({bad} quantized rows); the model's "
                             "weights or inputs are not finite")
        cache.length, cache.positions = s0 + T, positions[:, -1] + 1
        return logits.view(B, T, -1) if all_logits else logits

    def __getstate__(self) -> dict:        # copies and pickles rebuild the compiled engine
        return {**self.__dict__, "_native_engine": None}

    # ------------------------------------------------------------ size

    def summary(self):
        """pandas DataFrame, one row per linear (Hugging Face names): kind (int8-sparse,
        int8-dense, fp32), out/in features, density (nonzero fraction), bytes, bytes/weight."""
        import pandas as pd

        layers_path, head_name = self._names
        rows = []
        for i, block in enumerate(self.layers):
            for long, short in SHORT_NAMES.items():
                group = next((g for g, shorts in FUSED.items() if short in shorts), None)
                if hasattr(block, short) or group is None or not hasattr(block, group):
                    rows.append(dict(name=f"{layers_path}.{i}.{long}", fused=False,
                                     **describe(getattr(block, short))))
                elif short == FUSED[group][0]:
                    rows += [dict(name=f"{layers_path}.{i}.{LONG_NAMES[sh]}", fused=True, **row)
                             for sh, row in getattr(block, group).describe_parts()]
        rows.append(dict(name=head_name, fused=False, **describe(self.lm_head)))
        return pd.DataFrame(rows)

    @property
    def streamed_bytes(self) -> int:
        """Weight bytes one decode step reads: every linear, the head and the norms, not the
        embedding table it only indexes (a tied FP32 head reads that matrix as the head)."""
        linears = [m for b in self.layers for _, m in b.linears()]
        total = sum(describe(m.inner if isinstance(m, FusedLinear) else m)["nbytes"] for m in linears)
        norms = self.final_norm.nbytes + sum(b.input_norm.nbytes + b.post_norm.nbytes
                                             for b in self.layers)
        return total + norms + describe(self.lm_head)["nbytes"]

    @property
    def nbytes(self) -> int:
        """Weight bytes held: every linear (packed or FP32), the embedding and the norms. An FP32
        lm_head tied to the embedding is the same matrix and is counted once."""
        shared = self.tied and isinstance(self.lm_head, Fp32Linear)
        return self.streamed_bytes + (0 if shared else self.embed.nbytes)

    # ------------------------------------------------------------ forward

    def _forward(self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor,
                 all_logits: bool) -> torch.Tensor:
        """Run ids [B, T] at RoPE positions [B, T] into cache slots length..length+T-1.
        Returns logits [B, T, vocab] (all_logits) or [B, vocab] for the last position."""
        d, (B, T) = self.dims, ids.shape
        H, KV, hd, eps = d.n_heads, d.n_kv_heads, d.head_dim, d.rms_eps
        s0, s1 = cache.length, cache.length + T
        if s1 > cache.capacity:
            raise RuntimeError(f"KV cache full: it holds {cache.capacity} tokens; pass a larger "
                               "max_new_tokens to prefill")
        if self.engine == "native":
            return self._native_forward(cache, ids, positions, all_logits)
        decode = T == 1
        mask = None if cache.key_mask is None else cache.key_mask[:, :s1]          # [B, S]
        cos, sin = self.cos[positions], self.sin[positions]                        # [B, T, hd]
        # decode: q [B, KV, group, hd] and k [B, KV, 1, hd] take cos [B, 1, 1, hd];
        # prefill: q [B, H, T, hd] and k [B, KV, T, hd] take cos [B, 1, T, hd]
        cos, sin = cos[:, None], sin[:, None]
        h = F.embedding(ids, self.embed)                                           # [B, T, hidden]
        width = h.shape[-1]
        for i, (n1, qkv, o_proj, n2, gate_up, down) in enumerate(self._hot):
            q, k, v = qkv(rms_norm(h, n1, eps).view(B * T, width))                 # [B*T, .]
            if decode:
                q = q.view(B, KV, d.group, hd)
                k, v = k.view(B, KV, 1, hd), v.view(B, KV, 1, hd)
            else:
                q = q.view(B, T, H, hd).transpose(1, 2)                            # [B, H, T, hd]
                k = k.view(B, T, KV, hd).transpose(1, 2)                           # [B, KV, T, hd]
                v = v.view(B, T, KV, hd).transpose(1, 2)
            q, k = llama.apply_rope(q, cos, sin), llama.apply_rope(k, cos, sin)
            cache.keys[i, :, :, s0:s1] = k
            cache.values[i, :, :, s0:s1] = v
            if decode:
                keys, values = cache.keys[i, :, :, :s1], cache.values[i, :, :, :s1]
                a = llama.decode_attention(q, keys, values, mask).reshape(B, H * hd)
            else:
                a = llama.prefill_attention(q, k, v, mask).transpose(1, 2).reshape(B * T, H * hd)
            h = h + o_proj(a.contiguous()).view(B, T, width)
            gate, up = gate_up(rms_norm(h, n2, eps).view(B * T, width))
            h = h + down(llama.swiglu(gate, up)).view(B, T, width)
        cache.length, cache.positions = s1, positions[:, -1] + 1
        if not all_logits:
            h = h[:, -1]                                                           # [B, hidden]
        return self._head(rms_norm(h, self.final_norm, eps))

    @torch.inference_mode()
    def forward_logits(self, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Logits float32 [B, T, vocab] of every position (perplexity, parity checks)."""
        cache, positions = KVCache.for_prompt(self.dims, input_ids, attention_mask, 0)
        return self._forward(cache, input_ids, positions, all_logits=True)

    def forward(self, input_ids, attention_mask=None):
        return self.forward_logits(input_ids, attention_mask)

    def extra_repr(self) -> str:
        return f"llama, {self.dims.n_layers} layers, {self.nbytes / 2**20:.1f} MiB of weights"


# ---------------------------------------------------------------- input checks

def _check_source(model) -> None:
    llama_dims(getattr(model, "config", None))        # the runtime's own architecture check
    odd = [n for n, m in layer_linears(model).items() if not isinstance(m, nn.Linear)]
    if odd:
        raise TypeError(f"{len(odd)} decoder linears are not nn.Linear (e.g. {odd[0]}: "
                        f"{type(layer_linears(model)[odd[0]]).__name__}); pack the FP32 model, "
                        "pack applies the W8A8 arithmetic itself")


def pack(model: nn.Module, plan=None, lm_head: str = "int8", format: str = "auto",
         n_threads: int | None = None, engine: str = "native", *, targets: tuple = (),
         ignore: tuple = ()) -> PackedModel:
    """Pack a Llama-family model for the runtime: every decoder Linear not named by plan
    becomes a SparseInt8Linear (per-channel INT8 weights, per-token INT8 activations; format
    "auto" packs a layer sparse when its INT8 density is at most
    packing.AUTO_SPARSE_MAX_DENSITY). plan: None, a QuantPlan or layer names kept FP32.
    lm_head: "int8" (dense INT8, tied or not) or "fp32". engine: "native" (one C call per
    step) or "torch" (the reference loop). n_threads: threads of every step (default
    kernels.default_threads() at each call). targets / ignore: name patterns of the Linears to
    pack (workbench.selection, as quantize_'s); the others stay FP32 like plan's. The source
    model is not modified."""
    if lm_head not in LM_HEAD_MODES:
        raise ValueError(f"lm_head must be one of {LM_HEAD_MODES}, got {lm_head!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_source(model)
    keep = set(plan_names(plan))
    unknown = sorted(keep - set(layer_linears(model)))
    if unknown:
        raise ValueError(f"plan names layers the model does not have: {unknown[:5]}")
    targets, ignore = check_patterns("targets", targets), check_patterns("ignore", ignore)
    keep |= {n for n in layer_linears(model) if not is_selected(n, targets, ignore)}

    head_name = get_arch(model).lm_head

    def make_linear(name: str, linear: nn.Linear) -> nn.Module:
        if name in keep:
            return Fp32Linear(linear)
        fmt = "dense" if name == head_name else format
        return SparseInt8Linear.from_linear(linear, format=fmt, n_threads=n_threads)

    def can_fuse(names: list[str]) -> bool:       # parts kept FP32 and parts packed: not stacked
        return len({name in keep for name in names}) == 1

    packed = PackedModel(model, make_linear, lm_head, can_fuse, engine=engine, n_threads=n_threads)
    packed.recipe.append({"step": "pack", "config": {
        "plan": sorted(keep), "lm_head": lm_head, "format": format,
        "weights": "per_channel", "activations": "per_token"}})
    return packed


def load_packed(path, engine: str = "native", n_threads: int | None = None,
                verify: bool = True) -> PackedModel:
    """A PackedModel saved with PackedModel.save: the weights file is memory-mapped and the
    kernels read it in place, so its logits are bit-identical to the saved model's. verify:
    check every tensor's CRC32 first (one read of the file). Errors name the file and tensor."""
    parts = packed_io.load(path, verify=verify)
    model = PackedModel.__new__(PackedModel)
    nn.Module.__init__(model)
    model._assemble(parts["hf_config"], parts["embed"], parts["final_norm"], parts["blocks"],
                    parts["lm_head"], tied=parts["tied"], names=parts["names"], engine=engine,
                    n_threads=n_threads)
    model.recipe = list(parts["recipe"])
    return model


__all__ = ["ENGINES", "FUSED", "Fp32Linear", "FusedLinear", "PackedModel", "load_packed", "pack", "pick_token"]
