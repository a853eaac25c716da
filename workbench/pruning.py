"""The sequential pruning driver shared by SparseGPT, Wanda and magnitude pruning.

Decoder blocks are pruned one after another, as in SparseGPT's reference driver: the inputs of
block i are the outputs of blocks 0..i-1 *after* they were pruned, so each block is calibrated on
what it will really see. Embeddings and lm_head are never touched. Only activations of the
current block are held (calibration samples × seqlen × hidden floats).

    report = prune_(model, calib, PruneConfig(method="sparsegpt", sparsity=0.5))
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.arch import decoder_layers, get_arch
from workbench.baselines import magnitude_prune, wanda_prune
from workbench.data import check_calib
from workbench.sparsegpt import HessianAccumulator, reconstruction_error, sparsify_weight

METHODS = ("sparsegpt", "wanda", "magnitude")


@dataclass
class PruneConfig:
    method: str = "sparsegpt"
    sparsity: float = 0.5                 # unstructured target; N:M implies N/M
    structure: str = "unstructured"       # or "N:M" with N pruned of every M, e.g. "2:4", "4:8"
    targets: tuple[str, ...] = ()         # name patterns to prune (fnmatch or suffix); () = all
    ignore: tuple[str, ...] = ()          # name patterns never pruned
    blocksize: int = 128                  # SparseGPT column block
    percdamp: float = 0.01                # SparseGPT dampening, fraction of mean(diag H)
    batch_size: int = 8                   # calibration sequences per forward

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.structure != "unstructured":
            try:
                n, m = (int(v) for v in self.structure.split(":"))
            except ValueError:
                raise ValueError(f"structure must be 'unstructured' or 'N:M' like '2:4', got {self.structure!r}") from None
            if not 0 < n < m:
                raise ValueError(f"N:M structure needs 0 < N < M, got {self.structure!r}")
            self.sparsity = n / m
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.batch_size < 1 or self.blocksize < 1:
            raise ValueError("batch_size and blocksize must be >= 1")
        self.targets, self.ignore = tuple(self.targets), tuple(self.ignore)

    @property
    def prune_nm(self) -> tuple[int, int]:
        if self.structure == "unstructured":
            return 0, 0
        n, m = self.structure.split(":")
        return int(n), int(m)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneReport:
    config: dict
    layers: list[dict] = field(default_factory=list)     # one row per pruned matrix
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)   # True = pruned
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned matrices."""
        zeros = sum(r["zeros"] for r in self.layers)
        total = sum(r["numel"] for r in self.layers)
        return zeros / total if total else 0.0

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.layers)

    def to_dict(self) -> dict:
        return {"config": self.config, "layers": self.layers, "sparsity": self.sparsity,
                "seconds": self.seconds}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.endswith("." + p) or name == p for p in patterns)


def select_linears(model: nn.Module, config: PruneConfig) -> dict[int, dict[str, str]]:
    """{layer index: {full name: name inside the layer}} of the matrices to prune."""
    spec = get_arch(model)
    chosen: dict[int, dict[str, str]] = {}
    for i, _ in enumerate(decoder_layers(model)):
        for local in spec.linears:
            full = f"{spec.layers}.{i}.{local}"
            if config.targets and not _matches(full, config.targets):
                continue
            if _matches(full, config.ignore):
                continue
            chosen.setdefault(i, {})[full] = local
    if not chosen:
        raise ValueError(f"no decoder Linear matches targets={config.targets} ignore={config.ignore}")
    return chosen


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once block 0's inputs are known."""


def _block_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int):
    """[(hidden_states, kwargs)] per calibration batch, as decoder block 0 receives them."""
    first = decoder_layers(model)[0]
    batches = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        batches.append((hidden, kwargs))
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


def _run_block(layer: nn.Module, batches):
    out = []
    for hidden, kwargs in batches:
        h = layer(hidden, **kwargs)
        out.append((h[0] if isinstance(h, tuple) else h, kwargs))
    return out


class _NormAccumulator:
    """Σ_tokens x_j² per input channel, for Wanda's ||X_j||₂."""

    def __init__(self, cols: int, device=None):
        self.sq = torch.zeros(cols, dtype=torch.float32, device=device)

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if not torch.isfinite(x).all():
            raise ValueError("calibration activations hold NaN or Inf")
        self.sq += (x * x).sum(0)


@torch.no_grad()
def prune_(model: nn.Module, calib: torch.Tensor | None, config: PruneConfig | None = None) -> PruneReport:
    """Prune the model's decoder Linears in place; returns per-matrix sparsity, errors and masks.

    calib: LongTensor [nsamples, seqlen] (workbench.data.calibration_set); may be None for
    magnitude pruning, which needs no data.
    """
    start = time.perf_counter()
    config = config or PruneConfig()
    chosen = select_linears(model, config)
    needs_data = config.method != "magnitude"
    if needs_data:
        calib = check_calib(calib)
        if calib.shape[1] < 2:
            raise ValueError(f"calib sequences need at least 2 tokens, got {tuple(calib.shape)}")
    prune_n, prune_m = config.prune_nm
    report = PruneReport(config=config.to_dict())
    layers = decoder_layers(model)
    shared_input = {local: norm for norm, group in get_arch(model).smooth_maps for local in group}
    was_training = model.training
    model.eval()
    try:
        batches = _block_inputs(model, calib.to(model.device), config.batch_size) if needs_data else []
        for i, layer in enumerate(tqdm(layers, desc=f"prune {config.method}", leave=False)):
            names = chosen.get(i, {})
            stats, handles, by_input = {}, [], {}
            for full, local in names.items() if needs_data else ():
                # Linears fed by one norm (q/k/v, gate/up) see the same input: one accumulator.
                source = shared_input.get(local, local)
                if source not in by_input:
                    lin = layer.get_submodule(local)
                    acc = (HessianAccumulator(lin.in_features, lin.weight.device)
                           if config.method == "sparsegpt"
                           else _NormAccumulator(lin.in_features, lin.weight.device))
                    by_input[source] = acc
                    handles.append(lin.register_forward_pre_hook(lambda m, a, acc=acc: acc.add_batch(a[0])))
                stats[full] = by_input[source]
            try:
                if names and needs_data:
                    _run_block(layer, batches)
            finally:
                for h in handles:
                    h.remove()
            for full, local in names.items():
                lin = layer.get_submodule(local)
                W = lin.weight.data
                t0 = time.perf_counter()
                error = None
                if config.method == "sparsegpt":
                    H = stats[full].H
                    Wp, mask = sparsify_weight(W, H, config.sparsity, prune_n, prune_m,
                                               config.blocksize, config.percdamp)
                    error = reconstruction_error(W, Wp, H)
                elif config.method == "wanda":
                    Wp, mask = wanda_prune(W, stats[full].sq.sqrt(), config.sparsity, prune_n, prune_m)
                else:
                    Wp, mask = magnitude_prune(W, config.sparsity, prune_n, prune_m)
                W.copy_(Wp)
                zeros = int((W == 0).sum())
                report.masks[full] = mask
                report.layers.append({"name": full, "layer": i, "module": local, "numel": W.numel(),
                                      "zeros": zeros, "sparsity": zeros / W.numel(),
                                      "rel_error": error, "seconds": time.perf_counter() - t0})
            stats.clear()
            if needs_data and i + 1 < len(layers):
                batches = _run_block(layer, batches)     # calibrate block i+1 on pruned outputs
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Zeros of every decoder Linear weight as masks (True = zero), e.g. after loading a
    pruned checkpoint, for steps that must keep the sparsity pattern."""
    from workbench.arch import layer_linears

    return {name: lin.weight.data == 0 for name, lin in layer_linears(model).items()}
