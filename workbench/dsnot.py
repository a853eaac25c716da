"""DSnoT: training-free prune-and-grow refinement of a pruning mask.

Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", arXiv
2310.08915 (reference code: github.com/zyxxmu/DSnoT). After any pruner, each output row swaps
pruned and kept weights, keeping its count, to shrink the expected reconstruction error
e_i = Σ_j (W_ij − Ŵ_ij) · E[X_j], the shift of output i's mean caused by pruning:

- grow the pruned weight whose restored contribution W_ij·E[X_j] has e_i's sign, the largest
  in |W_ij·E[X_j]| / Var(X_j) (the paper's variance-normalised growing criterion);
- prune the kept weight with the lowest Wanda score |Ŵ_ik|·||X_k|| among those whose removal
  does not push e_i further from 0 (sign of Ŵ_ik·E[X_k] opposite to e_i; any kept weight if
  none), in the grown weight's group of M under N:M so every group keeps its count.

The paper stops a row when e_i would change sign or gets small. We accept a swap only when it
lowers the row's true layer-wise error ||(W_i − Ŵ_i) X||² = d_iᵀ H d_i (H = 2/n X Xᵀ, SparseGPT's
Hessian), and stop the row at the first swap that would not: the refinement never raises a
layer's reconstruction error, for any initial mask. A grown weight gets its dense value back.
After SparseGPT the kept weights keep their OBS-updated values; DSnoT's reference instead
starts from SparseGPT's saliency mask on the original weights (no update), a different point.

    W_new, mask_new, swaps = dsnot_refine(W_dense, W_pruned, mask, H, mean, iters=50)
"""

from __future__ import annotations

import torch


def _check(W0, Wp, mask, H, mean, iters, prune_m):
    rows, cols = W0.shape if W0.dim() == 2 else (None, None)
    if rows is None or Wp.shape != W0.shape or mask.shape != W0.shape:
        raise ValueError(f"W_dense, W_pruned and mask must share one 2-D shape, got "
                         f"{tuple(W0.shape)}, {tuple(Wp.shape)}, {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True = pruned), got {mask.dtype}")
    if H.shape != (cols, cols) or mean.shape != (cols,):
        raise ValueError(f"H must be [{cols}, {cols}] and mean [{cols}], got {tuple(H.shape)}, "
                         f"{tuple(mean.shape)}")
    if iters < 0:
        raise ValueError(f"dsnot_iters must be >= 0, got {iters}")
    if prune_m and cols % prune_m:
        raise ValueError(f"{cols} columns are not a multiple of M={prune_m}")


@torch.no_grad()
def dsnot_refine(W_dense: torch.Tensor, W_pruned: torch.Tensor, mask: torch.Tensor,
                 H: torch.Tensor, mean: torch.Tensor, iters: int = 50, prune_m: int = 0,
                 var_power: float = 1.0):
    """(W_refined in W_pruned's dtype, mask, swaps): up to `iters` prune-and-grow swaps per row.

    W_dense [rows, cols]: the weights before pruning; W_pruned, mask (True = pruned): a pruner's
    output; H [cols, cols]: 2/n Σ x xᵀ of the layer's calibration inputs; mean [cols]: E[x].
    prune_m > 0 keeps N:M groups of prune_m columns (each swap stays inside one group).
    """
    _check(W_dense, W_pruned, mask, H, mean, iters, prune_m)
    rows, cols = W_dense.shape
    f64 = torch.float64
    W0, Wq = W_dense.to(f64), W_pruned.to(f64).clone()
    mask = mask.clone()
    H, mu = H.to(f64), mean.to(f64)
    h_diag = torch.diagonal(H)                                          # [cols] = 2 E[x²]
    var = (h_diag / 2 - mu ** 2).clamp_min(1e-12)                       # Var(X_j)
    x_norm = h_diag.clamp_min(0).sqrt()                                 # ∝ ||X_j||₂
    contrib = W0 * mu                                                   # [rows, cols]
    grow_base = contrib.abs() / var ** var_power                        # growing criterion
    contrib_sign = torch.sign(contrib)
    D = W0 - Wq                                                         # [rows, cols]
    HD = D @ H                                                          # [rows, cols] = (H d_i)ᵀ
    e = (D * mu).sum(1)                                                 # [rows]
    group = torch.arange(cols, device=W0.device) // prune_m if prune_m else None
    rows_left = torch.arange(rows, device=W0.device)                    # rows still swapping
    swaps = 0
    inf = torch.tensor(float("inf"), dtype=f64, device=W0.device)
    for _ in range(iters):
        if rows_left.numel() == 0:
            break
        r = rows_left
        sign = torch.sign(e[r]).unsqueeze(1)                            # [R, 1]
        M, Wr = mask[r], Wq[r]                                          # [R, cols]
        # grow: a pruned weight whose restored contribution has e's sign (reduces |e|)
        grow_ok = M & (contrib_sign[r] == sign) & (sign != 0)
        j = torch.where(grow_ok, grow_base[r], -inf).argmax(1)          # [R]
        ok = grow_ok.gather(1, j.unsqueeze(1)).squeeze(1)
        # prune: the lowest Wanda score among kept weights that do not push e away from 0
        kept = ~M
        if prune_m:
            kept &= group.unsqueeze(0) == (j // prune_m).unsqueeze(1)
        helps = kept & (torch.sign(Wr * mu) != sign)
        pick = torch.where(helps.any(1, keepdim=True), helps, kept)
        k = torch.where(pick, Wr.abs() * x_norm, inf).argmin(1)         # [R]
        ok &= pick.gather(1, k.unsqueeze(1)).squeeze(1)
        # exact change of d_iᵀ H d_i for d_j: W0_j -> 0 and d_k: d_k -> d_k + Ŵ_k
        dj, dk = -W0[r, j], Wq[r, k]
        delta = (2 * dj * HD[r, j] + dj * dj * H[j, j] + 2 * dk * HD[r, k] + dk * dk * H[k, k]
                 + 2 * dj * dk * H[j, k])
        accept = ok & (delta < 0)
        if not accept.any():
            break
        r, j, k, dj, dk = r[accept], j[accept], k[accept], dj[accept], dk[accept]
        HD[r] += dj.unsqueeze(1) * H[j] + dk.unsqueeze(1) * H[k]
        e[r] += dj * mu[j] + dk * mu[k]
        Wq[r, j] = W0[r, j]
        Wq[r, k] = 0.0
        mask[r, j] = False
        mask[r, k] = True
        swaps += int(r.numel())
        rows_left = r                       # a row stops at its first swap that does not help
    return Wq.to(W_pruned.dtype), mask, swaps
