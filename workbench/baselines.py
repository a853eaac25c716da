"""Baseline pruning scores: magnitude, Wanda and RIA. Pure functions of a weight (and, for Wanda
and RIA, the input norms); the sequential driver in workbench.pruning applies them layer by layer.

- Magnitude: |W_ij| with one threshold per matrix (the classic global-within-layer baseline).
- Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
  arXiv 2306.11695): score S_ij = |W_ij| · ||X_j||₂, compared within each output row; no
  weight update.
- RIA, relative importance and activations (Zhang et al., "Plug-and-Play: An Efficient
  Post-training Pruning Method for Large Language Models", ICLR 2024; reference code
  github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning):
  S_ij = (|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ||X_j||₂^a with a = 0.5: a weight is
  important relative to its input channel (column) and its output channel (row). As in RIA's
  reference code (its default, without --per_outneuron), one threshold per matrix: the
  relative terms already balance rows and columns.
N:M structure (prune_n of every prune_m consecutive weights in a row) uses the same scores.
"""

from __future__ import annotations

import torch


def _check(W: torch.Tensor, sparsity: float, prune_n: int, prune_m: int) -> None:
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D [rows, cols], got shape {tuple(W.shape)}")
    if prune_n or prune_m:
        if not 0 < prune_n < prune_m:
            raise ValueError(f"N:M sparsity needs 0 < N < M (N pruned of every M), got {prune_n}:{prune_m}")
        if W.shape[1] % prune_m:
            raise ValueError(f"{W.shape[1]} columns are not a multiple of M={prune_m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def nm_mask(score: torch.Tensor, prune_n: int, prune_m: int) -> torch.Tensor:
    """True for the prune_n lowest scores of every group of prune_m columns in each row."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // prune_m, prune_m)                   # [rows, G, M]
    idx = torch.topk(groups, prune_n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries of a 1-D score (exact count, ties by index)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(score, k, largest=False).indices] = True
    return mask


@torch.no_grad()
def magnitude_prune(W: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0):
    """(W_pruned, mask): the round(sparsity · numel) smallest |W| of the whole matrix are zeroed."""
    _check(W, sparsity, prune_n, prune_m)
    score = W.abs().float()
    if prune_n:
        mask = nm_mask(score, prune_n, prune_m)
    else:
        mask = _lowest(score.flatten(), round(sparsity * W.numel())).view_as(W)
    return W.masked_fill(mask, 0), mask


def _row_prune(W: torch.Tensor, score: torch.Tensor, sparsity: float, prune_n: int, prune_m: int):
    """(W_pruned, mask): the round(sparsity · cols) lowest scores of each row, or N:M groups."""
    if prune_n:
        mask = nm_mask(score, prune_n, prune_m)
    else:
        k = round(sparsity * W.shape[1])
        mask = torch.zeros_like(score, dtype=torch.bool)
        if k > 0:
            mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
    return W.masked_fill(mask, 0), mask


def _check_norm(W: torch.Tensor, input_norm: torch.Tensor) -> None:
    if input_norm.shape != (W.shape[1],):
        raise ValueError(f"input_norm must be [{W.shape[1]}], got {tuple(input_norm.shape)}")


@torch.no_grad()
def wanda_prune(W: torch.Tensor, input_norm: torch.Tensor, sparsity: float, prune_n: int = 0,
                prune_m: int = 0):
    """(W_pruned, mask) with Wanda's score |W_ij| · ||X_j||₂; per row: the round(sparsity · cols)
    lowest scores of each output row are zeroed. input_norm [cols] is ||X_j||₂ over tokens."""
    _check(W, sparsity, prune_n, prune_m)
    _check_norm(W, input_norm)
    score = W.abs().float() * input_norm.float().reshape(1, -1)               # [rows, cols]
    return _row_prune(W, score, sparsity, prune_n, prune_m)


def ria_score(W: torch.Tensor, input_norm: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """RIA's score [rows, cols]: (|W_ij| / Σ_k|W_kj| + |W_ij| / Σ_k|W_ik|) · ||X_j||₂^a.
    A column or row of zeros contributes 0 (no division by zero)."""
    A = W.abs().float()                                                         # [rows, cols]
    col_sum = A.sum(0, keepdim=True)                                            # [1, cols]
    row_sum = A.sum(1, keepdim=True)                                            # [rows, 1]
    relative = A / col_sum.clamp_min(torch.finfo(A.dtype).tiny) + A / row_sum.clamp_min(torch.finfo(A.dtype).tiny)
    return relative * input_norm.float().reshape(1, -1) ** a


@torch.no_grad()
def ria_prune(W: torch.Tensor, input_norm: torch.Tensor, sparsity: float, prune_n: int = 0,
              prune_m: int = 0, a: float = 0.5):
    """(W_pruned, mask) with RIA's score (ria_score): the round(sparsity · numel) lowest of the
    whole matrix zeroed (RIA's default); N:M groups use the same score."""
    _check(W, sparsity, prune_n, prune_m)
    _check_norm(W, input_norm)
    score = ria_score(W, input_norm, a)
    if prune_n:
        mask = nm_mask(score, prune_n, prune_m)
    else:
        mask = _lowest(score.flatten(), round(sparsity * W.numel())).view_as(W)
    return W.masked_fill(mask, 0), mask
