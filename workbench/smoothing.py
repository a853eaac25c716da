"""Activation smoothing before INT8: migrate activation outliers into the weights.

For a norm feeding linears, y = W (norm(x)), a per-channel scale s [in] with
norm.weight /= s and W[:, j] *= s_j leaves y unchanged (exactly, up to float rounding) while
dividing the linears' input channel j by s_j. Two choices of s, side by side in
`smoothing_scales`:

  SmoothQuant (Xiao et al. 2023, arXiv 2211.10438, eq. 4):
      s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
  LAE, logarithmic activation equalization, from FPTQ (Li et al. 2023, arXiv 2308.15987):
      s_j = m_j / log2(2 + m_j),  m_j = max|X_j| (or the range max X_j - min X_j)

Only a norm -> linear edge can absorb s for free. In a plain Llama block o_proj's input comes
from attention (softmax(QK^T) V, no per-channel affine to fold into) and down_proj's from
act(gate) * up, so neither is smoothed here; `smooth_` lists them as not_smoothable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench import recipe
from workbench.arch import decoder_layers, get_arch, smoothing_maps
from workbench.configs import Serializable, later_field
from workbench.selection import check_patterns, is_selected

METHODS = ("smoothquant", "lae")
LAE_STATISTICS = ("absmax", "range")


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class SmoothConfig(Serializable):
    """method: "smoothquant" or "lae". alpha: SmoothQuant's migration strength in [0, 1]
    (0.5 balances activations and weights; larger moves more into the weights); LAE has no
    alpha and ignores it. lae_statistic: "absmax" (m_j = max|X_j|, FPTQ's choice) or "range"
    (m_j = max X_j - min X_j); SmoothQuant always uses absmax. min_scale: floor for statistics
    and scales, so no channel divides by zero. targets / ignore: name patterns of the decoder
    Linears to smooth (workbench.selection; () = all); a norm's group of Linears is smoothed
    whole or not at all, so a pattern that splits one is an error. Both are left out of
    to_dict while empty."""
    method: str = "smoothquant"
    alpha: float = 0.5
    lae_statistic: str = "absmax"
    min_scale: float = 1e-5
    targets: tuple[str, ...] = later_field(())
    ignore: tuple[str, ...] = later_field(())

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.lae_statistic not in LAE_STATISTICS:
            raise ValueError(f"lae_statistic must be one of {', '.join(LAE_STATISTICS)}; "
                             f"got {self.lae_statistic!r}")
        if not isinstance(self.min_scale, (int, float)) or not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale!r}")
        object.__setattr__(self, "targets", check_patterns("targets", self.targets))
        object.__setattr__(self, "ignore", check_patterns("ignore", self.ignore))


# ---------------------------------------------------------------- pure math

def smoothquant_scales(act_absmax: torch.Tensor, weights: Sequence[torch.Tensor],
                       alpha: float = 0.5, min_scale: float = 1e-5) -> torch.Tensor:
    """SmoothQuant scales s [in] from act_absmax [in] and the balance layers' weights
    [out_i, in]; max|W_j| runs over every layer's column j (they share one input).
    s_j = max|X_j|^alpha / max|W_j|^(1-alpha)   (Xiao et al. 2023, arXiv 2211.10438, eq. 4)."""
    w = torch.cat([wi.detach().float() for wi in weights], dim=0)              # [sum out_i, in]
    act = act_absmax.detach().float().to(w.device).clamp(min=min_scale)        # [in]
    if w.shape[1] != act.shape[0]:
        raise ValueError(f"weights have {w.shape[1]} input channels, statistics {act.shape[0]}")
    w_absmax = w.abs().amax(dim=0).clamp(min=min_scale)                         # [in]
    return (act.pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp(min=min_scale)


def lae_scales(act_stat: torch.Tensor, min_scale: float = 1e-5) -> torch.Tensor:
    """LAE scales s [in] from a per-channel statistic m [in] (max|X_j| or max-min range):
    s_j = m_j / log2(2 + m_j)   (FPTQ, Li et al. 2023, arXiv 2308.15987).
    The log compresses large channels most; no alpha and no weight term."""
    m = act_stat.detach().float().clamp(min=min_scale)                          # [in]
    return (m / torch.log2(2.0 + m)).clamp(min=min_scale)


def smoothing_scales(config: SmoothConfig, act_stats, weights: Sequence[torch.Tensor]
                     ) -> torch.Tensor:
    """s [in] for one norm -> linears group. act_stats: the shared input's ChannelStats
    (.absmax, .min, .max, each [in]); weights: the group's [out_i, in] weights."""
    if config.method == "smoothquant":
        return smoothquant_scales(act_stats.absmax, weights, config.alpha, config.min_scale)
    if config.lae_statistic == "range":
        m = act_stats.max.float() - act_stats.min.float()                      # [in]
    else:
        m = act_stats.absmax
    return lae_scales(m, config.min_scale)


@torch.no_grad()
def fold_scales_(norm: nn.Module, linears: Sequence[nn.Linear], s: torch.Tensor) -> None:
    """norm.weight (and bias) /= s, linear.weight[:, j] *= s_j: the linears see X / s and
    weights W * s, so their outputs are unchanged. Math in float32, cast back to each dtype."""
    s = s.detach().float()                                                      # [in]
    if norm.weight.shape != s.shape:
        raise ValueError(f"norm weight {tuple(norm.weight.shape)} does not match s {tuple(s.shape)}")
    for p in (norm.weight, getattr(norm, "bias", None)):
        if p is not None:
            p.copy_((p.float() / s.to(p.device)).to(p.dtype))
    for lin in linears:
        if lin.weight.shape[1] != s.shape[0]:
            raise ValueError(f"linear weight {tuple(lin.weight.shape)} does not take "
                             f"{s.shape[0]} input channels")
        w = lin.weight
        w.copy_((w.float() * s.to(w.device)[None, :]).to(w.dtype))              # [out, in]


# ---------------------------------------------------------------- the step

@dataclass
class SmoothReport(Serializable):
    method: str
    alpha: float | None                     # None for LAE, which has no alpha
    lae_statistic: str | None
    groups: dict[str, dict[str, float]]     # norm name -> min, max, mean of s (smoothed ones)
    not_smoothable: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _profile_entry(layers, name: str, in_features: int):
    if name not in layers:
        raise ValueError(f"the profile has no statistics for {name!r}; profile the model "
                         "before smoothing it")
    stats = layers[name]
    n = stats.absmax.numel()
    if n != in_features:
        raise ValueError(f"the profile of {name!r} has {n} channels, the layer takes {in_features}")
    return stats


def _activation_stats(model: nn.Module, data):
    """{full Linear name: ChannelStats} from an activation profile, or from token ids [n, L]
    profiled here (workbench.profiling, its defaults)."""
    if isinstance(data, torch.Tensor):
        from workbench.profiling import profile_activations

        data = profile_activations(model, data)
    layers = getattr(data, "layers", data)
    if not isinstance(layers, Mapping):
        raise TypeError("smooth_'s data must be an ActivationProfile (or a mapping of Linear "
                        f"names to channel statistics) or calibration token ids, got "
                        f"{type(data).__name__}")
    return layers


def _smoothed_groups(prefix: str, maps, config: SmoothConfig):
    """The (norm name, linear names) groups of one decoder layer that config selects; a group
    whose Linears it selects only in part cannot be smoothed (they share one input)."""
    out = []
    for norm_name, group in maps:
        chosen = [is_selected(f"{prefix}.{n}", config.targets, config.ignore) for n in group]
        if all(chosen):
            out.append((norm_name, group))
        elif any(chosen):
            names = [f"{prefix}.{n}" for n in group]
            raise ValueError(f"targets={config.targets} ignore={config.ignore} select part of "
                             f"{names}, which share the input of {prefix}.{norm_name}: select "
                             "all of them or none")
    return out


def smooth_(model: nn.Module, data, config: SmoothConfig | None = None) -> SmoothReport:
    """Fold smoothing scales into every selected norm -> linears group of every decoder layer,
    in place.

    data: an ActivationProfile (or any object whose .layers maps full Linear names to
    per-input-channel stats with .absmax, .min, .max [in]) measured on this model as it is now,
    or calibration token ids [n, L] to profile it with first (profile_activations' defaults).
    A group's statistics are those of its first linear, since the group shares one input.
    Everything is validated before the first weight changes. o_proj / down_proj (any linear not
    fed by a norm) are left alone and reported as not_smoothable. The profile is stale after
    this: smoothed inputs are divided by s, so re-profile before ranking outliers.
    """
    config = config or SmoothConfig()
    if not isinstance(config, SmoothConfig):
        raise TypeError(f"config must be a SmoothConfig, got {type(config).__name__}")
    start = time.perf_counter()
    spec = get_arch(model)
    maps = smoothing_maps(model)
    fed = {name for _, group in maps for name in group}
    # (norm name, norm, linears) of every selected group, checked before anything is profiled
    chosen = []
    for i, layer in enumerate(decoder_layers(model)):
        prefix = f"{spec.layers}.{i}"
        for norm_name, group in _smoothed_groups(prefix, maps, config):
            chosen.append((prefix, norm_name, layer.get_submodule(norm_name),
                           [layer.get_submodule(n) for n in group], group[0]))
    if not chosen:
        raise ValueError(f"no norm -> linears group matches targets={config.targets} "
                         f"ignore={config.ignore}")
    layers = _activation_stats(model, data)
    work = [(f"{prefix}.{norm_name}", norm, linears,
             _profile_entry(layers, f"{prefix}.{first}", linears[0].in_features))
            for prefix, norm_name, norm, linears, first in chosen]
    groups: dict[str, dict[str, float]] = {}
    for name, norm, linears, stats in tqdm(work, desc="smooth", leave=False):
        s = smoothing_scales(config, stats, [lin.weight for lin in linears])     # [in]
        fold_scales_(norm, linears, s)
        groups[name] = {"min": s.min().item(), "max": s.max().item(), "mean": s.mean().item()}
    n_layers = len(decoder_layers(model))
    not_smoothable = [f"{spec.layers}.{i}.{n}" for i in range(n_layers)
                      for n in spec.linears if n not in fed]
    lae = config.method == "lae"
    recipe.record(model, "smooth", config.to_dict())
    return SmoothReport(
        method=config.method, alpha=None if lae else config.alpha,
        lae_statistic=config.lae_statistic if lae else None, groups=groups,
        not_smoothable=not_smoothable, seconds=time.perf_counter() - start,
    )
