"""NumPy references of the compiled kernels: the arithmetic the C code in kernels_cy/ must
reproduce, written plainly. Tests hold every kernel path to these exactly (integer
accumulators) or to float rounding (outputs); nothing here is fast.

    per-token INT8   scale = absmax / 127, q = clip(round_half_even(x * (127 / absmax)))
    static INT8      q = clip(round_half_even(x * (1 / scale)))
    W8A8 product     y = ((float)(xq . q) * sx) * w_scale + bias    (that order, float32)

The native engine's own reference is the torch loop (workbench.llama, workbench.runtime).
"""

from __future__ import annotations

import numpy as np


def quantize_per_token_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference: symmetric per-row INT8, scale = absmax/127, round half to even.

    x: float32 [n, k] -> (q int8 [n, k], scales float32 [n]).
    """
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    scales = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return q, scales


def quantize_static_ref(x: np.ndarray, scale: float) -> np.ndarray:
    """q = clip(round_half_even(x * (1/scale)), -127, 127), float32 arithmetic."""
    inv = np.float32(1) / np.float32(scale)
    return np.clip(np.rint(np.asarray(x, np.float32) * inv), -127, 127).astype(np.int8)


def linear_int8_ref(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None,
                    act_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference W8A8 product with the kernels' quantization and rescale order.

    x float32 [n, in], q int8 [out, in], scale float32 [out] ->
    (y float32 [n, out], acc int64 [n, out] exact integer accumulators).
    """
    x = np.asarray(x, np.float32)
    if act_scale is None:
        xq, sx = quantize_per_token_ref(x)
    else:
        xq = quantize_static_ref(x, act_scale)
        sx = np.full(x.shape[0], act_scale, dtype=np.float32)
    acc = xq.astype(np.int64) @ q.astype(np.int64).T                    # [n, out], exact
    y = (acc.astype(np.float32) * sx[:, None]) * np.asarray(scale, np.float32)[None, :]
    if bias is not None:
        y = y + np.asarray(bias, np.float32)[None, :]
    return y.astype(np.float32), acc
