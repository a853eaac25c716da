"""OWL: outlier-weighted layer-wise sparsity.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
High Sparsity", arXiv 2310.05175 (reference code: github.com/luuyin/OWL). Decoder blocks whose
Wanda scores |W_ij| · ||X_j||₂ hold more outliers keep more weights:

1. Outlier ratio D_l of block l: the fraction of its scores above M × the block's mean score
   (all pruned matrices of the block together; M = 5 in the paper).
2. Min-max scale D to [0, 2λ] over the blocks, subtract the mean: a density offset per block.
3. Block sparsity = target − offset: more outliers, fewer weights pruned (λ = 0.08 in the paper).

Two choices of ours, both needed for the guarantees the driver reports: the mean is weighted by
each block's count of pruned weights, so the sparsity over all pruned weights is exactly the
target when blocks differ in size (with every Linear pruned, Llama blocks are equal and this is
OWL's plain mean); and the offsets are shrunk, never shifted, when step 2 leaves one more than λ
from the mean (a single outlier-heavy block sits at 2λ − mean), so every block lies in
[target − λ, target + λ]. OWL's reference computes the ratios on the dense model, block after
block on the calibration set, before pruning any block; the driver does the same.

    ratios = [outlier_ratio(scores_of_block(l), m=5.0) for l in blocks]
    sparsities = owl_sparsities(ratios, target=0.7, lam=0.08, weights=numels)
"""

from __future__ import annotations

import torch


def check_owl(target: float, lam: float, m: float) -> None:
    """ValueError naming the option when OWL's settings cannot give sparsities in [0, 1)."""
    if not lam >= 0:
        raise ValueError(f"owl_lambda must be >= 0, got {lam}")
    if not m > 0:
        raise ValueError(f"owl_m must be > 0, got {m}")
    if target - lam < 0 or target + lam >= 1:
        raise ValueError(f"owl_lambda={lam} puts block sparsities outside [0, 1) around "
                         f"sparsity={target}; use owl_lambda <= {min(target, 1 - target):.3g}")


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of all entries of scores (one block's Wanda scores, any shapes) greater than
    m × their mean. Two passes over the matrices instead of one concatenation: a 7B block's
    scores are 0.8 GB in float32."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        raise ValueError("outlier_ratio needs at least one score")
    threshold = m * total / count
    return sum(int((s > threshold).sum()) for s in scores) / count


def owl_sparsities(ratios, target: float, lam: float, weights=None) -> list[float]:
    """Block sparsities from outlier ratios: mean (weighted by `weights`, e.g. each block's
    number of pruned weights) exactly `target`, each within [target − λ, target + λ], a block
    with a higher outlier ratio never sparser than one with a lower ratio."""
    D = torch.as_tensor(ratios, dtype=torch.float64)                      # [blocks]
    if D.dim() != 1 or D.numel() == 0:
        raise ValueError(f"ratios must be a non-empty list, got shape {tuple(D.shape)}")
    w = torch.ones_like(D) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != D.shape or not (w > 0).all():
        raise ValueError("weights must be positive, one per block")
    span = D.max() - D.min()
    spread = (D - D.min()) / span * 2 * lam if span > 0 else torch.zeros_like(D)   # [0, 2λ]
    offset = spread - (w * spread).sum() / w.sum()                        # weighted mean 0
    peak = float(offset.abs().max())
    if peak > lam:                                                        # keep within ±λ
        offset = offset * (lam / peak)
    return (target - offset).tolist()
