"""Outlier-layer ranking and selective-quantization plans.

Heuristic mode ranks every decoder Linear by a statistic of its input activations, read from an
ActivationProfile (no extra forward pass): the layers with the widest inputs are the ones INT8
activation quantization hurts most, so a QuantPlan keeps the top k in FP32. On Llama-2-7B the
seed study reports the largest input range ~4000x the k-th; `ratio_top_to_kth` is that number.

Measured mode is the slow method the heuristic replaces: quantize one Linear at a time, measure
the calibration loss, restore it, and rank layers by the loss increase. `compare_rankings` says
how well the heuristic agrees with it (top-k overlap, Spearman rank correlation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from workbench.arch import decoder_layers, get_arch, layer_linears, split_layer_name
from workbench.data import check_calib
from workbench.evaluate import mean_next_token_loss as mean_next_token_loss
from workbench.evaluate import next_token_nll
from workbench.profiling import ActivationProfile

# metric name → column of ActivationProfile.to_frame()
METRICS: dict[str, str] = {
    "range": "range",                    # max over channels of (max − min)
    "absmax": "absmax",                  # largest input magnitude
    "p99": "p99",                        # 99th percentile over channels of per-channel absmax
    "n_outliers": "n_outlier_channels",  # channels above 6 (LLM.int8(), arXiv 2208.07339)
}


@dataclass(frozen=True)
class QuantPlan:
    """Which layers quantize_(model, config, plan) leaves in FP32; all others are quantized."""
    keep_fp32: tuple[str, ...] = ()
    metric: str = ""                     # how the layers were chosen, for the record
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.keep_fp32, str):
            raise TypeError("keep_fp32 must be a sequence of layer names, not one str")
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        if not all(isinstance(n, str) for n in self.keep_fp32):
            raise TypeError("keep_fp32 must hold str layer names")

    def __contains__(self, name: object) -> bool:
        return name in self.keep_fp32

    def to_dict(self) -> dict:
        return {"keep_fp32": list(self.keep_fp32), "metric": self.metric, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> QuantPlan:
        return cls(keep_fp32=tuple(d.get("keep_fp32", ())), metric=d.get("metric", ""),
                   note=d.get("note", ""))


# ---------------------------------------------------------------- heuristic mode


def _ratio(top: float, kth: float) -> float:
    """top / kth, with 0/0 = nan and x/0 = inf: the k-th layer may see an all-zero input."""
    if kth == 0:
        return math.inf if top > 0 else math.nan
    return top / kth


@dataclass
class OutlierRanking:
    frame: pd.DataFrame                  # every layer, sorted by the metric (descending), rank 1..N
    top: list[str]                       # the k highest-ranked layer names
    ratio_top_to_kth: float              # largest metric value / k-th largest
    metric: str
    k: int

    @property
    def column(self) -> str:
        return METRICS[self.metric]

    def plan(self) -> QuantPlan:
        return QuantPlan(
            keep_fp32=tuple(self.top), metric=self.metric,
            note=f"top-{self.k} layers by input {self.metric}; largest / k-th = "
                 f"{self.ratio_top_to_kth:.1f}x",
        )


def rank_outlier_layers(profile: ActivationProfile, k: int = 10,
                        metric: str = "range") -> OutlierRanking:
    """Rank every Linear of profile by metric ("range", "absmax", "p99", "n_outliers")."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > len(profile.layers):
        raise ValueError(f"k={k} exceeds the {len(profile.layers)} layers in the profile")
    column = METRICS[metric]
    # Stable sort: ties keep layer order, so the ranking is deterministic.
    frame = profile.to_frame().sort_values(column, ascending=False, kind="stable")
    frame = frame.reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    values = frame[column].astype(float)
    return OutlierRanking(frame=frame, top=list(frame["name"][:k]),
                          ratio_top_to_kth=_ratio(values.iloc[0], values.iloc[k - 1]),
                          metric=metric, k=k)


# ---------------------------------------------------------------- measured mode


class _LayerReplay:
    """The inputs every decoder layer received in one forward per calibration batch, so that
    the loss with a linear of layer i changed reruns layers i.. only (about half the cost of a
    full forward on average). Used only when its baseline loss equals the full forward's."""

    def __init__(self, model: nn.Module, calib: Tensor, batch_size: int):
        spec = get_arch(model)
        self.layers = list(decoder_layers(model).children())
        self.norm, self.head = model.get_submodule(spec.final_norm), model.get_submodule(spec.lm_head)
        device = next(model.parameters()).device
        self.batches = []                   # per batch: (tokens, [(args, kwargs) per layer])
        with torch.inference_mode():
            for b in range(0, calib.shape[0], batch_size):
                batch, seen = calib[b: b + batch_size].to(device), []
                hooks = [layer.register_forward_pre_hook(
                    lambda _m, args, kwargs, seen=seen: seen.append((args, kwargs)),
                    with_kwargs=True)
                    for layer in self.layers]
                try:
                    model(input_ids=batch, use_cache=False)
                finally:
                    for h in hooks:
                        h.remove()
                if len(seen) != len(self.layers):
                    raise RuntimeError("decoder layers were not each called once")
                self.batches.append((batch, seen))

    def logits(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(logits [B, L, V], tokens [B, L]) per batch, rerunning decoder layers start.. only."""
        for batch, seen in self.batches:
            args, kwargs = seen[start]
            h = args[0] if args else kwargs["hidden_states"]
            for layer, (args, kwargs) in zip(self.layers[start:], seen[start:], strict=True):
                out = layer(h, *args[1:], **kwargs) if args else layer(**{**kwargs, "hidden_states": h})
                h = out[0] if isinstance(out, tuple) else out
            yield self.head(self.norm(h)), batch

    @torch.inference_mode()
    def loss(self, start: int = 0) -> float:
        """Mean next-token loss rerunning decoder layers start.. (mean_next_token_loss's)."""
        total, count = next_token_nll(self.logits(start))
        return total / count


def _default_quantize_layer(linear: nn.Linear) -> nn.Module:
    from workbench.quant import W8A8Linear  # lazily: quant.py need not exist to rank heuristically

    return W8A8Linear.from_float(linear)


@dataclass
class SensitivityResult:
    frame: pd.DataFrame                  # name, loss, delta, rank (1 = largest loss increase)
    baseline_loss: float
    n_tokens: int = 0                    # predicted tokens behind each loss

    def top(self, k: int = 10) -> list[str]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return list(self.frame.sort_values("rank", kind="stable")["name"][:k])

    def plan(self, k: int = 10) -> QuantPlan:
        return QuantPlan(keep_fp32=tuple(self.top(k)), metric="measured",
                         note=f"top-{k} layers by calibration-loss increase when quantized alone")


def measure_layer_sensitivity(model: nn.Module, calib: Tensor,
                              quantize_layer: Callable[[nn.Linear], nn.Module] | None = None,
                              layers: Iterable[str] | None = None,
                              batch_size: int = 8) -> SensitivityResult:
    """For each decoder Linear in turn (or only `layers`): replace it by quantize_layer(linear),
    measure the mean next-token loss on calib, put the original back. delta = loss − baseline.
    Costs one forward over calib per layer, from that layer on (the inputs of every decoder
    layer are recorded once); the model is left as it was."""
    calib = check_calib(calib)
    if calib.shape[1] < 2:
        raise ValueError("next-token loss needs sequences of at least 2 tokens")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    quantize_layer = quantize_layer or _default_quantize_layer
    linears = layer_linears(model)
    names = list(linears) if layers is None else list(layers)
    unknown = [n for n in names if n not in linears]
    if unknown or not names:
        raise ValueError(f"unknown or no layers to measure: {unknown[:3]}")
    was_training = model.training
    model.eval()
    try:
        baseline = mean_next_token_loss(model, calib, batch_size)
        replay = _LayerReplay(model, calib, batch_size)
        if not math.isclose(replay.loss(0), baseline, rel_tol=1e-6, abs_tol=1e-9):
            replay = None                  # an architecture whose head this does not rebuild
        layer_of = {n: split_layer_name(n)[0] for n in names}
        losses = []
        for name in tqdm(names, desc="layer sensitivity", leave=False):
            parent_name, _, child = name.rpartition(".")
            parent, original = model.get_submodule(parent_name), linears[name]
            # Snapshot, so a quantize_layer that rounds the weight in place cannot leak.
            with torch.no_grad():
                saved = {k: v.clone() for k, v in original.state_dict().items()}
            try:
                setattr(parent, child, quantize_layer(original))
                losses.append(replay.loss(layer_of[name]) if replay is not None
                              else mean_next_token_loss(model, calib, batch_size))
            finally:
                setattr(parent, child, original)
                with torch.no_grad():
                    original.load_state_dict(saved)
    finally:
        model.train(was_training)
    frame = pd.DataFrame({"name": names, "loss": losses})
    frame["delta"] = frame["loss"] - baseline
    frame = frame.sort_values("delta", ascending=False, kind="stable").reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    return SensitivityResult(frame=frame, baseline_loss=baseline,
                             n_tokens=calib.shape[0] * (calib.shape[1] - 1))


# ---------------------------------------------------------------- agreement


def compare_rankings(heuristic: OutlierRanking, measured: SensitivityResult,
                     k: int = 10) -> dict:
    """How well a heuristic ranking agrees with the measured one: overlap of the two top-k
    sets (count and Jaccard) and Spearman's rank correlation over the layers both rank."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    h_top = list(heuristic.frame["name"][:k])
    m_top = measured.top(k)
    overlap = len(set(h_top) & set(m_top))
    union = len(set(h_top) | set(m_top))
    both = heuristic.frame[["name", heuristic.column]].merge(
        measured.frame[["name", "delta"]], on="name", how="inner")
    # Spearman = Pearson correlation of the ranks (average ranks for ties); no scipy needed.
    spearman = (float(both[heuristic.column].rank().corr(both["delta"].rank()))
                if len(both) >= 2 else math.nan)
    return {
        "k": k, "overlap": overlap, "jaccard": overlap / union if union else math.nan,
        "spearman": spearman, "n_layers": len(both), "metric": heuristic.metric,
        "heuristic_top": h_top, "measured_top": m_top,
    }


def cached_layer_sensitivity(model: nn.Module, calib: Tensor, config=None,
                             model_fp: str | None = None, store=None) -> SensitivityResult:
    """measure_layer_sensitivity with each layer W8A8-quantized by config (a QuantConfig,
    default per-tensor activations), cached as the `outliers --measure` CLI caches it."""
    from workbench import cache
    from workbench.quant import QuantConfig, W8A8Linear

    config = config or QuantConfig(activations="per_tensor")
    store = store or cache.ResultCache()
    model_fp = model_fp or cache.fingerprint_model(model)

    def compute() -> dict:
        result = measure_layer_sensitivity(model, calib,
                                           lambda lin: W8A8Linear.from_float(lin, config))
        return {"frame": result.frame.to_dict("records"), "baseline_loss": result.baseline_loss}

    record = store.get_or_compute({"step": "layer-sensitivity", "quant": config.to_dict()},
                                  compute, model_fp=model_fp, data_fp=cache.fingerprint_data(calib))
    # The cache stores records with sorted keys: restore the result's column order.
    frame = pd.DataFrame(record["frame"])[["name", "loss", "delta", "rank"]]
    return SensitivityResult(frame=frame, baseline_loss=record["baseline_loss"],
                             n_tokens=int(calib.numel() - calib.shape[0]))
