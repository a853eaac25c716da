"""The Llama decoder's math for the lean runtime (workbench.runtime): its dimensions read from a
Hugging Face config, rotary position tables, RMSNorm, the checked prompt and its preallocated
KV cache, and grouped-query attention over it.

References: RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467); RoPE (Su et al. 2021, arXiv
2104.09864), in the "rotate half" layout of transformers' LlamaRotaryEmbedding; GQA (Ainslie
et al. 2023, arXiv 2305.13245). Every formula follows transformers' modeling_llama.py, so the
runtime's FP32 logits match Hugging Face's to float rounding.

This is also the reference the native engine (kernels_cy/wb_engine.h) is held to, and W8A8
models turn a one-ulp difference into a different INT8 rounding step, then a different token.
So the reductions and transcendentals (RMSNorm's mean, attention, SiLU) run in float64 and are
rounded to float32 once, which C reproduces whatever its summation order; the elementwise steps
(RoPE, residual adds) are single float32 operations that C repeats exactly (wb_math.h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.arch import UnsupportedArchitectureError

SUPPORTED_MODEL_TYPES = ("llama",)
# RoPE variants whose frequencies do not depend on the sequence length (tables stay valid).
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


# ---------------------------------------------------------------- dimensions

@dataclass(frozen=True)
class LlamaDims:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    max_positions: int
    rope_type: str
    rope_theta: float
    tie_embeddings: bool

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads


def _rope_parameters(config) -> dict:
    """{"rope_type", "rope_theta", ...} from a new-style (rope_parameters) or old-style
    (rope_theta + rope_scaling) transformers config."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return params


def llama_dims(config) -> LlamaDims:
    """The dimensions of a Llama-family transformers config; a clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"the lean runtime runs the Llama family only ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"got model_type {model_type!r}")
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise NotImplementedError(f"the runtime's MLP is SwiGLU (silu); "
                                  f"config has hidden_act={act!r}")
    rope = _rope_parameters(config)
    if rope["rope_type"] not in STATIC_ROPE_TYPES:
        raise NotImplementedError(f"RoPE type {rope['rope_type']!r} is not supported; "
                                  f"supported: {', '.join(STATIC_ROPE_TYPES)}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("partial rotary embeddings are not supported")
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} attention heads do not split into {n_kv} KV groups")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return LlamaDims(
        n_layers=config.num_hidden_layers, hidden=config.hidden_size, n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=head_dim,
        vocab=config.vocab_size, rms_eps=float(config.rms_norm_eps),
        max_positions=config.max_position_embeddings, rope_type=rope["rope_type"],
        rope_theta=float(rope["rope_theta"]),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


# ---------------------------------------------------------------- RoPE

def rope_tables(config, dims: LlamaDims) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [max_positions, head_dim] for positions 0..max_positions-1, computed as
    LlamaRotaryEmbedding does: freqs = pos * inv_freq, emb = [freqs, freqs]."""
    if dims.rope_type == "default":
        inv_freq = 1.0 / (dims.rope_theta ** (torch.arange(0, dims.head_dim, 2, dtype=torch.float)
                                              / dims.head_dim))       # [head_dim / 2]
        attention_scaling = 1.0
    else:   # frequency rescaling by transformers' own init function (linear, llama3)
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[dims.rope_type](config, None)
    pos = torch.arange(dims.max_positions, dtype=torch.float)
    freqs = pos[:, None] * inv_freq.float()[None, :]                  # [P, head_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)                           # [P, head_dim]
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., head_dim] rotated; cos/sin broadcast against x."""
    return x * cos + _rotate_half(x) * sin


# ---------------------------------------------------------------- norm

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * float(x / sqrt(mean(x^2) + eps)) over the last dim (LlamaRMSNorm); the mean and
    the scaling in float64, the gain in float32."""
    xd = x.double()
    return weight * (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).float()


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up = float(g * sigmoid(g) * u), computed in float64."""
    g = gate.double()
    return (g * torch.sigmoid(g) * up.double()).float()


# ---------------------------------------------------------------- prompts and the KV cache

def check_ids(ids, vocab: int) -> torch.Tensor:
    """ids as given, if a LongTensor [B, T] (both >= 1) of token ids below vocab."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.long:
        raise TypeError(f"input_ids must be a LongTensor (torch.int64), got {ids.dtype}")
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, seq] with both >= 1, "
                         f"got shape {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"input_ids must lie in [0, {vocab}), "
                         f"got [{int(ids.min())}, {int(ids.max())}]")
    return ids


def check_count(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {n!r}")


def _left_padding(mask, shape) -> torch.Tensor | None:
    """bool [B, T] for a left-padded batch, or None when nothing is padded."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must be a tensor of shape {tuple(shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    m = mask.bool()
    if not m[:, -1].all() or (m[:, 1:] < m[:, :-1]).any():
        raise ValueError("only left padding is supported: each attention_mask row must be "
                         "zeros then ones, ending in a one")
    return None if m.all() else m


@dataclass
class KVCache:
    """Keys and values of every layer: float32 [layers, B, kv_heads, capacity, head_dim].
    Slots 0..length-1 are filled; key_mask bool [B, capacity] marks the slots a query may
    attend to (False for left padding), or is None when no row is padded."""
    keys: torch.Tensor
    values: torch.Tensor
    length: int
    positions: torch.Tensor             # long [B]: RoPE position of each row's next token
    key_mask: torch.Tensor | None

    @classmethod
    def empty(cls, dims: LlamaDims, batch: int, capacity: int) -> KVCache:
        shape = (dims.n_layers, batch, dims.n_kv_heads, capacity, dims.head_dim)
        return cls(torch.empty(shape), torch.empty(shape), 0,
                   torch.zeros(batch, dtype=torch.long), None)

    @classmethod
    def for_prompt(cls, dims: LlamaDims, input_ids, attention_mask,
                   max_new_tokens: int) -> tuple[KVCache, torch.Tensor]:
        """An empty cache with room for the prompt [B, T] and max_new_tokens more, and the
        prompt's RoPE positions [B, T]. attention_mask: None, or 0/1 [B, T] with left padding
        only (a row's positions then count its real tokens, pads take 1, as transformers does)."""
        check_count(max_new_tokens)
        B, T = check_ids(input_ids, dims.vocab).shape
        capacity = T + max_new_tokens
        if capacity > dims.max_positions:
            raise ValueError(f"{capacity} tokens (prompt + new) exceed the model's "
                             f"max_position_embeddings={dims.max_positions}")
        cache = cls.empty(dims, B, capacity)
        mask = _left_padding(attention_mask, (B, T))
        if mask is None:
            return cache, torch.arange(T).expand(B, T)
        cache.key_mask = torch.ones(B, capacity, dtype=torch.bool)
        cache.key_mask[:, :T] = mask
        return cache, (mask.long().cumsum(-1) - 1).masked_fill_(~mask, 1)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]


# ---------------------------------------------------------------- attention

def _attention(q, k, v, allowed: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float64, rounded to float32. q [..., Q, d], k/v [..., S, d],
    allowed bool broadcasting to [..., Q, S] or None (every key)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).float()


def prefill_attention(q, k, v, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Causal GQA over a whole prompt. q [B, H, T, d], k/v [B, KV, T, d] -> [B, H, T, d].

    key_mask bool [B, T] (False = left padding) or None. A padded query row keeps its own
    diagonal so no row is fully masked (which would give NaN); real rows never see padding.
    Query head h reads KV head h // (H / KV), the grouping of transformers' repeat_kv."""
    B, H, T, d = q.shape
    KV = k.shape[1]
    qg = q.view(B, KV, H // KV, T, d)                                                # [B, KV, g, T, d]
    causal = torch.ones(T, T, dtype=torch.bool).tril()                               # [T, T]
    if key_mask is None:
        allowed = causal
    else:
        allowed = ((causal & key_mask[:, None, :]) | torch.eye(T, dtype=torch.bool))[:, None, None]
    return _attention(qg, k[:, :, None], v[:, :, None], allowed).view(B, H, T, d)


def decode_attention(q, k, v, key_mask: torch.Tensor | None) -> torch.Tensor:
    """One new token per row attending to every cached slot, with the query heads grouped
    under their KV head, so no KV head is repeated and no causal mask is needed.

    q [B, KV, group, d] (head h = kv * group + g, as transformers' repeat_kv orders them),
    k/v [B, KV, S, d], key_mask bool [B, S] or None -> [B, KV, group, d]."""
    mask = None if key_mask is None else key_mask[:, None, None, :]                  # [B, 1, 1, S]
    return _attention(q, k, v, mask)
