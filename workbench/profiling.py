"""Activation-range profiling: per-input-channel statistics of every decoder Linear, gathered
with forward hooks over a calibration set → ActivationProfile.

- Linear inputs: running absmax, min and max per input channel (float32, [in_features]), over
  every token; activations are never stored, so memory does not grow with the calibration set.
  These are the statistics SmoothQuant's smoothing scales read (Xiao et al. 2023, arXiv
  2211.10438) and the "input range" the outlier ranking of workbench.outliers sorts by.
- Block outputs: the running absmax of each decoder block's output, over all tokens and split
  into the first token position vs the rest. Massive activations (Sun et al. 2024, arXiv
  2402.17762) are a few huge values in the residual stream that live on the first token; the
  split shows them, and `include_first_token=False` keeps them out of the Linear statistics.
- Outlier channels: LLM.int8()'s criterion, magnitude > 6 (Dettmers et al. 2022, arXiv
  2208.07339).

A profile is computed once and reused: `save` / `ActivationProfile.load` round-trip it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from workbench.arch import decoder_layers, layer_linears, split_layer_name
from workbench.atomic import write_bytes_atomic
from workbench.cache import fingerprint_data
from workbench.data import check_calib

_FORMAT = 1  # version of the saved dict; bump when its keys change


# ---------------------------------------------------------------- pure math


@dataclass
class ChannelStats:
    """Per-input-channel statistics of one Linear's input, each float32 [in_features]."""
    absmax: Tensor
    min: Tensor
    max: Tensor


def channel_stats(x: Tensor) -> ChannelStats:
    """Statistics of x [..., C] over every leading position → ChannelStats of [C]."""
    lo, hi = torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0)             # [C], [C]
    # Exact, not approximate: the largest magnitude is either the max or minus the min.
    lo, hi = lo.float(), hi.float()
    return ChannelStats(absmax=torch.maximum(hi, -lo), min=lo, max=hi)


def merge_stats(a: ChannelStats | None, b: ChannelStats) -> ChannelStats:
    """Running update: the statistics of the union of the tokens behind a and b."""
    if a is None:
        return b
    return ChannelStats(absmax=torch.maximum(a.absmax, b.absmax),
                        min=torch.minimum(a.min, b.min), max=torch.maximum(a.max, b.max))


def _absmax(x: Tensor) -> float:
    return float(x.abs().amax()) if x.numel() else 0.0


def _check_finite(what: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"non-finite activation (NaN or Inf) in {what}")


# ---------------------------------------------------------------- walking the model


class _StopForward(Exception):
    """Raised after the last decoder block: the final norm and the LM head (a [B, L, vocab]
    logits tensor, ~800 MB for SmolLM2 at batch 8 x 512) are not profiled."""


def profile_activations(model: nn.Module, calib: Tensor, include_first_token: bool = True,
                        batch_size: int = 8, outlier_threshold: float = 6.0) -> ActivationProfile:
    """Run calib [n, L] through model and return per-channel input statistics of every decoder
    Linear plus the absmax of every decoder block's output. The model is only read."""
    calib = check_calib(calib)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not outlier_threshold > 0:
        raise ValueError(f"outlier_threshold must be > 0, got {outlier_threshold}")
    if not include_first_token and calib.shape[1] < 2:
        raise ValueError("include_first_token=False needs sequences of at least 2 tokens")
    linears, blocks = layer_linears(model), decoder_layers(model)
    first = 0 if include_first_token else 1
    stats: dict[str, ChannelStats | None] = dict.fromkeys(linears)
    n_blocks = len(blocks)
    block_all, block_first, block_rest = [0.0] * n_blocks, [0.0] * n_blocks, [0.0] * n_blocks

    def linear_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]                                                    # [B, L, in]
            if first:
                _check_finite(f"the input of {name} (token position 0)", x[:, :first])
            s = channel_stats(x[:, first:])
            if not (torch.isfinite(s.min).all() and torch.isfinite(s.max).all()):
                raise ValueError(f"non-finite activation (NaN or Inf) in the input of {name}")
            stats[name] = merge_stats(stats[name], s)
        return hook

    def block_hook(i: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            h = output[0] if isinstance(output, tuple) else output         # [B, L, hidden]
            _check_finite(f"the output of decoder block {i}", h)
            block_first[i] = max(block_first[i], _absmax(h[:, :1]))
            block_rest[i] = max(block_rest[i], _absmax(h[:, 1:]))
            block_all[i] = max(block_first[i], block_rest[i])
            if i == n_blocks - 1:
                raise _StopForward
        return hook

    handles = [m.register_forward_pre_hook(linear_hook(n)) for n, m in linears.items()]
    handles += [b.register_forward_hook(block_hook(i)) for i, b in enumerate(blocks)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in tqdm(range(0, calib.shape[0], batch_size), desc="profile activations",
                          leave=False):
                try:
                    model(input_ids=calib[b: b + batch_size].to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n, s in stats.items() if s is None]
    if missing:
        raise RuntimeError(f"these Linear layers never ran during the forward pass: {missing[:3]}")
    # Cloned outside inference mode: inference tensors would refuse later in-place edits.
    return ActivationProfile(
        layers={n: ChannelStats(*(t.cpu().clone() for t in (s.absmax, s.min, s.max)))
                for n, s in stats.items()},
        block_output_absmax=block_all, block_output_absmax_first_token=block_first,
        block_output_absmax_rest=block_rest, include_first_token=include_first_token,
        n_sequences=calib.shape[0], n_tokens=calib.shape[0] * (calib.shape[1] - first),
        outlier_threshold=float(outlier_threshold),
    )


# ---------------------------------------------------------------- the report


@dataclass
class ActivationProfile:
    layers: dict[str, ChannelStats]            # full module name → stats, in layer order
    block_output_absmax: list[float]           # per decoder block, over all tokens
    block_output_absmax_first_token: list[float]
    block_output_absmax_rest: list[float]
    include_first_token: bool                  # whether token position 0 entered `layers`
    n_sequences: int
    n_tokens: int                              # tokens behind the Linear-input statistics
    outlier_threshold: float = 6.0

    def __post_init__(self) -> None:
        for name, s in self.layers.items():
            if not s.absmax.shape == s.min.shape == s.max.shape or s.absmax.dim() != 1:
                raise ValueError(f"{name}: absmax, min and max must be 1-D tensors of one shape")

    def _stats(self, name: str) -> ChannelStats:
        if name not in self.layers:
            raise KeyError(f"no layer {name!r} in this profile")
        return self.layers[name]

    def layer_range(self, name: str) -> float:
        """max over input channels of (max − min): the layer's input range."""
        s = self._stats(name)
        return float((s.max - s.min).max())

    def layer_absmax(self, name: str) -> float:
        return float(self._stats(name).absmax.max())

    def percentile(self, name: str, q: float = 99.0) -> float:
        """q-th percentile over input channels of the per-channel absmax. This is a channel-level
        percentile, not a token-level one: no activations are stored, only per-channel maxima."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be in [0, 100], got {q}")
        return float(torch.quantile(self._stats(name).absmax.double(), q / 100.0))

    def n_outlier_channels(self, name: str) -> int:
        """Input channels whose absmax exceeds outlier_threshold (LLM.int8()'s magnitude 6)."""
        return int((self._stats(name).absmax > self.outlier_threshold).sum())

    def to_frame(self) -> pd.DataFrame:
        """One row per Linear, in layer order."""
        rows = []
        for name, s in self.layers.items():
            layer, module = split_layer_name(name)
            rows.append(dict(
                name=name, layer=layer, module=module, in_features=s.absmax.numel(),
                range=self.layer_range(name), absmax=self.layer_absmax(name),
                p99=self.percentile(name, 99.0), n_outlier_channels=self.n_outlier_channels(name),
            ))
        columns = ["name", "layer", "module", "in_features", "range", "absmax", "p99",
                   "n_outlier_channels"]
        return pd.DataFrame(rows, columns=columns)

    def to_state(self) -> dict:
        """Plain dicts, lists, numbers and tensors: what torch.load(weights_only=True) reads."""
        return {
            "format": _FORMAT,
            "layers": {n: {"absmax": s.absmax, "min": s.min, "max": s.max}
                       for n, s in self.layers.items()},
            "block_output_absmax": list(self.block_output_absmax),
            "block_output_absmax_first_token": list(self.block_output_absmax_first_token),
            "block_output_absmax_rest": list(self.block_output_absmax_rest),
            "include_first_token": self.include_first_token,
            "n_sequences": self.n_sequences,
            "n_tokens": self.n_tokens,
            "outlier_threshold": self.outlier_threshold,
        }

    @classmethod
    def from_state(cls, state: dict) -> ActivationProfile:
        if state.get("format") != _FORMAT:
            raise ValueError(f"unknown profile format {state.get('format')!r}, expected {_FORMAT}")
        fields = {k: v for k, v in state.items() if k not in ("format", "layers")}
        layers = {n: ChannelStats(d["absmax"], d["min"], d["max"]) for n, d in state["layers"].items()}
        return cls(layers=layers, **fields)

    def save(self, path: str | Path) -> Path:
        buffer = io.BytesIO()  # serialized first: a failure leaves no partial file behind
        torch.save(self.to_state(), buffer)
        return write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> ActivationProfile:
        return cls.from_state(torch.load(path, weights_only=True))

    @property
    def fingerprint(self) -> str:
        """sha256 of the statistics and settings: equal profiles fingerprint alike."""
        return fingerprint_data(self.to_state())


def cached_profile(model: nn.Module, calib: Tensor, include_first_token: bool = True,
                   model_fp: str | None = None, store=None) -> ActivationProfile:
    """profile_activations, saved under $WORKBENCH_CACHE/profiles/ keyed by the model's and the
    calibration set's fingerprints (the `outliers` CLI's keys): computed once, then loaded."""
    from workbench import cache

    store = store or cache.ResultCache()
    model_fp = model_fp or cache.fingerprint_model(model)
    key = store.key({"step": "profile", "include_first_token": include_first_token},
                    model_fp=model_fp, data_fp=fingerprint_data(calib))
    path = cache.cache_root() / "profiles" / f"{key}.pt"
    try:
        return ActivationProfile.load(path)
    except Exception:   # absent or damaged: recompute
        profile = profile_activations(model, calib, include_first_token=include_first_token)
        profile.save(path)
        return profile
