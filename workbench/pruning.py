"""The sequential pruning driver shared by SparseGPT, Wanda, RIA and magnitude pruning.

Decoder blocks are pruned one after another, as in SparseGPT's reference driver: the inputs of
block i are the outputs of blocks 0..i-1 *after* they were pruned, so each block is calibrated on
what it will really see. Embeddings and lm_head are never touched. Only activations of the
current block are held (calibration samples × seqlen × hidden floats).

Two options go beyond one uniform pruner: layer_sparsity="owl" gives each block its own
sparsity from its outlier ratio (workbench.owl; one dense pass over the blocks first, as in OWL's
reference), and refine="dsnot" moves mask entries after any pruner to lower each layer's
reconstruction error (workbench.dsnot).

    report = prune_(model, calib, PruneConfig(method="sparsegpt", sparsity=0.5))
    report = prune_(model, calib, PruneConfig(method="ria", sparsity=0.7, layer_sparsity="owl",
                                              refine="dsnot"))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench import recipe
from workbench.arch import decoder_layers, get_arch
from workbench.baselines import magnitude_prune, ria_prune, wanda_prune
from workbench.configs import Serializable, check_choice, check_number, later_field
from workbench.data import check_calib
from workbench.dsnot import dsnot_refine
from workbench.layerwise import (
    InMemoryBlocks,
    InputStats,
    block_inputs,
    collect_input_stats,
    run_block,
)
from workbench.owl import check_owl, outlier_ratio, owl_sparsities
from workbench.selection import check_patterns, is_selected
from workbench.sparsegpt import reconstruction_error, sparsify_weight

METHODS = ("sparsegpt", "wanda", "magnitude", "ria")
LAYER_SPARSITIES = ("uniform", "owl")
REFINES = ("none", "dsnot")
DEFAULT_SPARSITY = 0.5          # of an unstructured config that names none


@dataclass(frozen=True)
class PruneConfig(Serializable):
    """What to prune and how. sparsity: the unstructured target; left None it is 0.5, or N/M
    for an N:M structure, which fixes it (another value is an error). The options after
    batch_size were added after the first configs were cached: to_dict leaves them out at
    their defaults, so every earlier cached point keeps its key."""
    method: str = "sparsegpt"
    sparsity: float | None = None         # unstructured target; None: 0.5, or N/M for N:M
    structure: str = "unstructured"       # or "N:M" with N pruned of every M, e.g. "2:4", "4:8"
    targets: tuple[str, ...] = ()         # name patterns to prune (workbench.selection); () = all
    ignore: tuple[str, ...] = ()          # name patterns never pruned
    blocksize: int = 128                  # SparseGPT column block
    percdamp: float = 0.01                # SparseGPT dampening, fraction of mean(diag H)
    batch_size: int = 8                   # calibration sequences per forward
    layer_sparsity: str = later_field("uniform")   # or "owl": per-block sparsity from outlier ratios
    owl_lambda: float = later_field(0.08)  # OWL: block sparsities within target ± owl_lambda
    owl_m: float = later_field(5.0)       # OWL: outlier = score above owl_m x the block mean
    refine: str = later_field("none")     # or "dsnot": prune-and-grow after the pruner
    dsnot_iters: int = later_field(50)    # DSnoT: swap rounds per matrix (its max_cycle_time)
    ria_a: float = later_field(0.5)       # RIA: exponent of ||X_j|| in its score

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("layer_sparsity", self.layer_sparsity, LAYER_SPARSITIES)
        check_choice("refine", self.refine, REFINES)
        check_number("dsnot_iters", self.dsnot_iters, 0, strict=False, integer=True)
        check_number("ria_a", self.ria_a, 0, strict=False)
        check_number("blocksize", self.blocksize, 1, strict=False, integer=True)
        check_number("batch_size", self.batch_size, 1, strict=False, integer=True)
        check_number("percdamp", self.percdamp, 0, strict=False)
        object.__setattr__(self, "targets", check_patterns("targets", self.targets))
        object.__setattr__(self, "ignore", check_patterns("ignore", self.ignore))
        if self.sparsity is not None:
            check_number("sparsity", self.sparsity, 0, strict=False)
            if not self.sparsity < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.structure != "unstructured":
            n, m = _parse_nm(self.structure)
            if self.sparsity is not None and not math.isclose(self.sparsity, n / m, abs_tol=1e-9):
                raise ValueError(f"sparsity={self.sparsity} contradicts structure="
                                 f"{self.structure!r}, which prunes exactly {n}/{m} = {n / m:g} "
                                 f"of the weights: leave sparsity out or set it to {n / m:g}")
            object.__setattr__(self, "sparsity", n / m)
        elif self.sparsity is None:
            object.__setattr__(self, "sparsity", DEFAULT_SPARSITY)
        if self.layer_sparsity == "owl":
            if self.structure != "unstructured":
                raise ValueError(f"layer_sparsity='owl' needs structure='unstructured' (N:M fixes "
                                 f"every layer at N/M), got structure={self.structure!r}")
            check_owl(self.sparsity, self.owl_lambda, self.owl_m)

    @property
    def prune_nm(self) -> tuple[int, int]:
        if self.structure == "unstructured":
            return 0, 0
        return _parse_nm(self.structure)

    @property
    def needs_data(self) -> bool:
        """Whether calibration data is needed (magnitude alone needs none)."""
        return self.method != "magnitude" or self.layer_sparsity == "owl" or self.refine != "none"


def _parse_nm(structure) -> tuple[int, int]:
    """(N, M) of an "N:M" structure, N pruned of every M; ValueError naming the field."""
    try:
        n, m = (int(v) for v in structure.split(":"))
    except (ValueError, AttributeError):
        raise ValueError(f"structure must be 'unstructured' or 'N:M' like '2:4', "
                         f"got {structure!r}") from None
    if not 0 < n < m:
        raise ValueError(f"N:M structure needs 0 < N < M, got {structure!r}")
    return n, m


@dataclass
class PruneReport(Serializable):
    """Per-matrix rows of one prune_ call. to_dict holds the rows and the overall sparsity
    (a JSON record); the masks are tensors and stay out of it, and out of ==."""
    config: dict
    layers: list[dict] = field(default_factory=list)     # one row per pruned matrix
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)  # True = pruned
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

    @classmethod
    def from_dict(cls, d) -> PruneReport:
        """A report from to_dict's record (its sparsity is recomputed from the rows; masks
        are not in a record)."""
        d = dict(d)
        d.pop("sparsity", None)
        if "masks" in d:
            raise ValueError("unknown PruneReport keys: masks (masks are not part of a record)")
        return super().from_dict(d)


def select_linears(model: nn.Module, config: PruneConfig) -> dict[int, dict[str, str]]:
    """{layer index: {full name: name inside the layer}} of the matrices to prune."""
    spec = get_arch(model)
    chosen: dict[int, dict[str, str]] = {}
    for i, _ in enumerate(decoder_layers(model)):
        for local in spec.linears:
            full = f"{spec.layers}.{i}.{local}"
            if is_selected(full, config.targets, config.ignore):
                chosen.setdefault(i, {})[full] = local
    if not chosen:
        raise ValueError(f"no decoder Linear matches targets={config.targets} ignore={config.ignore}")
    return chosen


def _owl_targets(blocks, chosen, batches, config: PruneConfig, shared_input) -> dict[int, float]:
    """{block: sparsity} by OWL from a dense pass: block i's Wanda scores |W|·||X|| on the
    outputs of dense blocks 0..i-1 over the calibration set (workbench.owl)."""
    ratios, numels, order = [], [], []
    for i in tqdm(range(len(blocks)), desc="OWL outlier ratios", leave=False):
        names = chosen.get(i, {})
        layer = blocks.load(i)
        try:
            if names:
                stats, batches = collect_input_stats(layer, names, batches, shared_input, hessian=False)
                scores = [layer.get_submodule(local).weight.detach().abs().float()
                          * stats[full].norms.norm.reshape(1, -1) for full, local in names.items()]
                ratios.append(outlier_ratio(scores, config.owl_m))
                numels.append(sum(s.numel() for s in scores))
                order.append(i)
                del scores, stats
            elif i + 1 < len(blocks):
                batches = run_block(layer, batches)
        finally:
            blocks.release(i, final=False)
    sparsities = owl_sparsities(ratios, config.sparsity, config.owl_lambda, numels)
    return {i: {"sparsity": s, "outlier_ratio": r} for i, s, r in zip(order, sparsities, ratios, strict=True)}


def _prune_matrix(W: torch.Tensor, stats: InputStats | None, sparsity: float,
                  config: PruneConfig):
    """(W_pruned, mask, row of the report's extra fields) for one matrix by config's method."""
    prune_n, prune_m = config.prune_nm
    H = stats.hessian.H if stats is not None and stats.hessian is not None else None
    if config.method == "sparsegpt":
        Wp, mask = sparsify_weight(W, H, sparsity, prune_n, prune_m, config.blocksize,
                                   config.percdamp)
    elif config.method == "wanda":
        Wp, mask = wanda_prune(W, stats.norms.norm, sparsity, prune_n, prune_m)
    elif config.method == "ria":
        Wp, mask = ria_prune(W, stats.norms.norm, sparsity, prune_n, prune_m, config.ria_a)
    else:
        Wp, mask = magnitude_prune(W, sparsity, prune_n, prune_m)
    extra = {"rel_error": reconstruction_error(W, Wp, H) if H is not None else None}
    if config.refine == "dsnot":
        Wp, mask, swaps = dsnot_refine(W, Wp, mask, H, stats.norms.mean, config.dsnot_iters,
                                       prune_m)
        extra = {"rel_error": reconstruction_error(W, Wp, H), "rel_error_before_refine":
                 extra["rel_error"], "swaps": swaps}
    return Wp, mask, extra


@torch.no_grad()
def prune_(model: nn.Module, calib: torch.Tensor | None, config: PruneConfig | None = None,
           blocks=None) -> PruneReport:
    """Prune the model's decoder Linears in place; returns per-matrix sparsity, errors and masks.

    calib: LongTensor [nsamples, seqlen] (workbench.data.calibration_set); may be None for
    magnitude pruning, which needs no data. Each block is computed in FP32, whatever the
    model's dtype, and written back in it. blocks: where the decoder blocks come from and go
    to (workbench.streaming.StreamedBlocks for a checkpoint streamed from disk); default the
    model's own.
    """
    start = time.perf_counter()
    config = config or PruneConfig()
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
    chosen = select_linears(model, config)
    needs_data = config.needs_data
    if needs_data:
        calib = check_calib(calib)
        if calib.shape[1] < 2:
            raise ValueError(f"calib sequences need at least 2 tokens, got {tuple(calib.shape)}")
    report = PruneReport(config=config.to_dict())
    blocks = blocks if blocks is not None else InMemoryBlocks(model)
    shared_input = {local: norm for norm, group in get_arch(model).smooth_maps for local in group}
    hessian = config.method == "sparsegpt" or config.refine == "dsnot"
    was_training = model.training
    model.eval()
    try:
        batches = block_inputs(model, calib.to(model.device), config.batch_size) if needs_data else []
        owl = _owl_targets(blocks, chosen, batches, config, shared_input) \
            if config.layer_sparsity == "owl" else {}
        # OWL's block targets are arbitrary fractions: each matrix is given what keeps the
        # running count of zeros on the running target count, so per-matrix rounding (Wanda's
        # is per row) does not add up over the model.
        quota = pruned = 0
        for i in tqdm(range(len(blocks)), desc=f"prune {config.method}", leave=False):
            names = chosen.get(i, {})
            layer = blocks.load(i)
            try:
                stats = {}
                if names and needs_data:
                    stats, _ = collect_input_stats(layer, names, batches, shared_input, hessian)
                target = owl[i]["sparsity"] if i in owl else config.sparsity
                for full, local in names.items():
                    lin = layer.get_submodule(local)
                    W = lin.weight.data
                    t0 = time.perf_counter()
                    asked = target
                    if owl:
                        quota += target * W.numel()
                        asked = min(max((round(quota) - pruned) / W.numel(), 0.0), 1 - 1 / W.numel())
                    Wp, mask, extra = _prune_matrix(W, stats.get(full), asked, config)
                    pruned += int(mask.sum())
                    W.copy_(Wp)
                    zeros = int((W == 0).sum())
                    report.masks[full] = mask
                    row = {"name": full, "layer": i, "module": local, "numel": W.numel(),
                           "zeros": zeros, "sparsity": zeros / W.numel(), "target": target,
                           **extra, "seconds": time.perf_counter() - t0}
                    if i in owl:
                        row["outlier_ratio"] = owl[i]["outlier_ratio"]
                    report.layers.append(row)
                stats.clear()
                if needs_data and i + 1 < len(blocks):
                    batches = run_block(layer, batches)     # calibrate block i+1 on pruned outputs
            finally:
                blocks.release(i, final=True)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    recipe.record(model, "prune", config.to_dict())
    return report


def variant_label(layer_sparsity: str, refine: str) -> str:
    """"uniform", "OWL", "DSnoT" or "OWL + DSnoT" for a config's (layer_sparsity, refine)."""
    parts = (["OWL"] if layer_sparsity == "owl" else []) + (["DSnoT"] if refine == "dsnot" else [])
    return " + ".join(parts) or "uniform"


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Zeros of every decoder Linear weight as masks (True = zero), e.g. after loading a
    pruned checkpoint, for steps that must keep the sparsity pattern."""
    from workbench.arch import layer_linears

    return {name: lin.weight.data == 0 for name, lin in layer_linears(model).items()}
