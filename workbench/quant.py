"""INT8 symmetric absmax quantizers and W8A8 fake-quantization of a model's decoder Linears.

SmoothQuant's efficiency grid (Xiao et al. 2023, arXiv 2211.10438, Table 2), as configs:
  O1  weights per_channel, activations per_token           (dynamic, finest)
  O2  weights per_tensor,  activations per_token
  O3  weights per_tensor,  activations per_tensor_static   (scale from calibration, fixed)
plus dynamic per_tensor activations and "none" (weight-only W8A32).

Every quantizer is symmetric absmax INT8: scale = absmax / 127, q = round(x * (127 / absmax))
clipped to [-127, 127], rounding half to even, all in float32: per-token activations equal
`workbench.reference.quantize_per_token_ref` and the compiled kernel bit for bit
(tests/test_quant.py). A packed INT8 runtime computes the same INT8 products but sums them in
another order, so its logits match the fake-quant model's to float rounding, not bit for bit
(tests/test_runtime.py). Fake-quant keeps tensors in float32 (q * scale); the int8 values
and their scales are kept beside them for packing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench import recipe
from workbench.arch import layer_linears
from workbench.configs import Serializable, later_field
from workbench.selection import check_patterns, plan_names, select

QMAX = 127  # symmetric INT8: -128 is never used, so q and -q are both representable

WEIGHT_GRANULARITIES = ("per_channel", "per_tensor")
ACTIVATION_GRANULARITIES = ("per_token", "per_tensor", "per_tensor_static", "none")


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class QuantConfig(Serializable):
    """W8A8 fake-quant settings. weights: per_channel (one scale per output row) or per_tensor.
    activations: per_token (dynamic, one scale per row), per_tensor (dynamic, one scale per
    call), per_tensor_static (one scale per layer from calibration, SmoothQuant O3) or none.
    targets / ignore: name patterns of the decoder Linears to quantize (workbench.selection;
    () = all), left out of to_dict while empty so earlier cache keys stay as they were."""
    weights: str = "per_channel"
    activations: str = "per_token"
    targets: tuple[str, ...] = later_field(())
    ignore: tuple[str, ...] = later_field(())

    def __post_init__(self):
        if self.weights not in WEIGHT_GRANULARITIES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_GRANULARITIES)}; "
                             f"got {self.weights!r}")
        if self.activations not in ACTIVATION_GRANULARITIES:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATION_GRANULARITIES)}; "
                             f"got {self.activations!r}")
        object.__setattr__(self, "targets", check_patterns("targets", self.targets))
        object.__setattr__(self, "ignore", check_patterns("ignore", self.ignore))

    @property
    def static(self) -> bool:
        return self.activations == "per_tensor_static"


# ---------------------------------------------------------------- pure quantizers

def _absmax_quantize(x: torch.Tensor, absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q = round_half_even(x * (127 / absmax)) clipped to ±127, scale = absmax / 127, in float32
    (quantize_per_token_ref's arithmetic). absmax broadcasts against x; absmax 0 gives q 0,
    scale 0, never NaN."""
    absmax = absmax.float()
    # A true float32 division: `QMAX / absmax` is evaluated by torch as 127 * (1 / absmax),
    # one rounding more, and then differs from the kernels' 127/absmax by an ulp, which moves
    # some q by one at a .5 boundary (e.g. 0.10776 in a row of absmax 0.49766: 27 vs 28).
    inv = torch.where(absmax > 0, torch.full_like(absmax, QMAX) / absmax, torch.zeros_like(absmax))
    q = torch.round(x.float() * inv).clamp_(-QMAX, QMAX)
    return q, absmax / QMAX


def quantize_weight(w: torch.Tensor, granularity: str = "per_channel"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q int8 [out, in], scale float32 [out] per_channel or [1] per_tensor),
    with w ≈ q * scale[:, None]. A zero row gets scale 0 and q 0."""
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D [out, in], got shape {tuple(w.shape)}")
    if granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(WEIGHT_GRANULARITIES)}; "
                         f"got {granularity!r}")
    w = w.detach().float()
    if granularity == "per_channel":
        absmax = w.abs().amax(dim=1, keepdim=True)                    # [out, 1]
    else:
        absmax = w.abs().amax().reshape(1, 1)                         # [1, 1]
    q, scale = _absmax_quantize(w, absmax)
    return q.to(torch.int8), scale.reshape(-1)


def fake_quant_weight(w: torch.Tensor, granularity: str = "per_channel") -> torch.Tensor:
    """w rounded to its INT8 grid and dequantized: float32 [out, in]."""
    q, scale = quantize_weight(w, granularity)
    return q.float() * scale[:, None]


def fake_quant_activation(x: torch.Tensor, granularity: str = "per_token",
                          static_scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] through INT8 and back, in float32.

    per_token: one absmax per row over the last dim (kernels.quantize_per_token's arithmetic).
    per_tensor: one absmax over the whole tensor, per call (dynamic).
    per_tensor_static: the given static_scale (absmax_calib / 127); values beyond ±127 * scale
    clip. q = round(x / scale), the division done as x * (1 / scale) in float32.
    none: x unchanged (as float32).
    """
    if granularity not in ACTIVATION_GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(ACTIVATION_GRANULARITIES)}; "
                         f"got {granularity!r}")
    x = x.float()
    if granularity == "none":
        return x
    if granularity == "per_tensor_static":
        if static_scale is None:
            raise ValueError("per_tensor_static needs static_scale")
        scale = torch.as_tensor(static_scale, dtype=torch.float32, device=x.device)
        inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        return torch.round(x * inv).clamp_(-QMAX, QMAX) * scale
    if granularity == "per_token":
        absmax = x.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else x.new_zeros(*x.shape[:-1], 1)
    else:
        absmax = x.abs().amax() if x.numel() else x.new_zeros(())
    q, scale = _absmax_quantize(x, absmax)                            # scale [..., 1] or []
    return q * scale


# ---------------------------------------------------------------- the fake-quant module

class W8A8Linear(nn.Module):
    """A Linear whose weight sits on its INT8 grid and whose input is fake-quantized per call.

    Buffers: weight (dequantized float32 [out, in]), weight_int8 (int8 [out, in]), weight_scale
    (float32 [out] or [1]), bias (the original's, or None), act_scale (float32 [] for static
    activations, else None). Output is computed in float32 and cast to the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, config: QuantConfig):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.zeros(out_features))
        self.register_buffer("bias", None)
        self.register_buffer("act_scale", None)

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QuantConfig | None = None,
                   act_scale: float | torch.Tensor | None = None) -> W8A8Linear:
        config = config or QuantConfig()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        if config.static and act_scale is None:
            raise ValueError("activations='per_tensor_static' needs act_scale "
                             "(absmax of the layer's input over calibration data / 127)")
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, config)
        q, scale = quantize_weight(w, config.weights)
        mod.weight_int8, mod.weight_scale = q, scale
        mod.weight = q.float() * scale[:, None]                        # [out, in] float32
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        if config.static:
            mod.act_scale = torch.as_tensor(act_scale, dtype=torch.float32,
                                            device=w.device).reshape(())
        return mod.to(w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = fake_quant_activation(x, self.config.activations, self.act_scale)  # [..., in] fp32
        return F.linear(xq, self.weight, self.bias).to(x.dtype)

    def __repr__(self) -> str:
        static = f", act_scale={self.act_scale.item():.4g}" if self.act_scale is not None else ""
        return (f"W8A8Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weights={self.config.weights}, "
                f"activations={self.config.activations}{static})")


# ---------------------------------------------------------------- the step

@dataclass
class QuantReport(Serializable):
    quantized: list[str]
    kept_fp32: list[str]                 # decoder Linears left FP32: by the plan or the config
    config: dict
    static_scales: dict[str, float] = field(default_factory=dict)   # name -> act scale (O3)
    seconds: float = 0.0


@torch.no_grad()
def calibrate_act_absmax(model: nn.Module, names: Iterable[str], calib: torch.Tensor,
                         batch_size: int = 8) -> dict[str, float]:
    """Run calib (LongTensor [n, L]) through model; absmax of each named module's input."""
    if not isinstance(calib, torch.Tensor) or calib.dim() != 2 or calib.dtype != torch.long:
        raise ValueError("calib must be a LongTensor [nsamples, seqlen]")
    if calib.shape[0] == 0 or calib.shape[1] == 0:
        raise ValueError(f"calib is empty: shape {tuple(calib.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    absmax: dict[str, float] = {}

    def hook(name):
        def record(_module, args):
            a = args[0].detach().abs().amax().item()
            absmax[name] = max(absmax.get(name, 0.0), a)
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    device = next(model.parameters()).device
    try:
        for i in tqdm(range(0, calib.shape[0], batch_size), desc="calibrate", leave=False):
            model(calib[i:i + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return absmax


def _call_form(data, config, legacy, plan, batch_size, calib):
    """(data, config, plan, batch_size) of either call form: quantize_(model, calib, config,
    plan=..., batch_size=...), or the older quantize_(model, config, plan, calib, batch_size),
    told apart by the QuantConfig in data's place (its plan, calib and batch_size could also
    come by keyword)."""
    if isinstance(data, QuantConfig):
        if len(legacy) > 2:
            raise TypeError("quantize_(model, config, plan, calib, batch_size) takes at most "
                            f"5 positional arguments, got {3 + len(legacy)}")
        data, config, old_plan = None, data, config
        if old_plan is not None:
            if plan is not None:
                raise TypeError("quantize_ got plan twice: positionally and as plan=")
            plan = old_plan
        if legacy:
            if calib is not None:
                raise TypeError("quantize_ got calib twice: positionally and as calib=")
            calib = legacy[0]
        if len(legacy) == 2:
            batch_size = legacy[1]
    elif legacy:
        raise TypeError("quantize_ takes (model, data, config) positionally; pass plan= and "
                        "batch_size= by keyword")
    if calib is not None:
        if data is not None:
            raise TypeError("quantize_ got calibration data twice: as data and as calib=")
        data = calib
    if data is not None and not isinstance(data, torch.Tensor):
        raise TypeError(f"quantize_'s data must be calibration token ids (a LongTensor [n, L]) "
                        f"or None, got {type(data).__name__}; the config comes after it")
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    return data, config, plan, batch_size


def quantize_(model: nn.Module, data: torch.Tensor | None = None,
              config: QuantConfig | None = None, *legacy, plan=None, batch_size: int = 8,
              calib: torch.Tensor | None = None) -> QuantReport:
    """Swap the decoder Linears that config selects (targets / ignore) and plan does not keep
    for W8A8Linears, in place.

    data (or calib=): token ids [n, L], needed for activations="per_tensor_static": each
    quantized layer's input absmax over it, taken from the model as it is before the swap,
    fixes its scale; other granularities read no data. plan: None, a QuantPlan (its keep_fp32
    names stay FP32), or an iterable of full Linear names ("model.layers.0.mlp.down_proj").
    Embeddings and lm_head are never touched. The older call quantize_(model, config, plan,
    calib, batch_size) still works (legacy: its calib and batch_size): a QuantConfig in
    data's place is read that way.
    """
    data, config, plan, batch_size = _call_form(data, config, legacy, plan, batch_size, calib)
    start = time.perf_counter()
    linears = layer_linears(model)
    keep = plan_names(plan)
    unknown = [n for n in keep if n not in linears]
    if unknown:
        raise ValueError(f"plan names layers the model does not have: {unknown[:5]}; "
                         f"valid names look like {list(linears)[:3]}")
    already = [n for n, m in linears.items() if not isinstance(m, nn.Linear)]
    if already:
        raise ValueError(f"{len(already)} decoder layers are not nn.Linear (already quantized?): "
                         f"{already[:3]}")
    selected = select(linears, config.targets, config.ignore)
    if not selected:
        raise ValueError(f"no decoder Linear matches targets={config.targets} "
                         f"ignore={config.ignore}")
    keep_set = set(keep)
    targets = [n for n in selected if n not in keep_set]
    static_scales: dict[str, float] = {}
    if config.static:
        if data is None:
            raise ValueError("activations='per_tensor_static' needs calib token ids [n, L] "
                             "to fix each layer's activation scale")
        absmax = calibrate_act_absmax(model, targets, data, batch_size)
        unseen = [n for n in targets if n not in absmax]
        if unseen:
            raise ValueError(f"calibration never reached {unseen[:3]}; cannot fix their scales")
        # float32 division, as everywhere else: scale = absmax / 127
        static_scales = {n: (torch.tensor(absmax[n]) / QMAX).item() for n in targets}
    for name in tqdm(targets, desc="quantize", leave=False):
        parent, _, child = name.rpartition(".")
        qlinear = W8A8Linear.from_float(linears[name], config, static_scales.get(name))
        setattr(model.get_submodule(parent), child, qlinear)
    quantized = set(targets)
    kept = [n for n in linears if n not in quantized]
    recipe.record(model, "quantize", {**config.to_dict(), "kept_fp32": sorted(kept)})
    return QuantReport(quantized=targets, kept_fp32=kept, config=config.to_dict(),
                       static_scales=static_scales, seconds=time.perf_counter() - start)
