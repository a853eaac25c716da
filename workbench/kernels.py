"""Python face of the Cython kernels in kernels_cy/: input checks, threads, CPU report.

Every kernel here has a pure NumPy reference (`*_ref`) with the same arithmetic; the
tests hold the compiled kernel to it exactly.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import numpy as np
import torch

try:
    from workbench import _quant
except ImportError as err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "workbench's compiled kernels are missing: build them with `make setup` "
        "(or `pip install -e .`) from the repository root"
    ) from err


def default_threads() -> int:
    """Threads for a kernel when none is given: $WORKBENCH_NUM_THREADS, else torch's setting."""
    env = os.environ.get("WORKBENCH_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"WORKBENCH_NUM_THREADS must be an integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"WORKBENCH_NUM_THREADS must be >= 1, got {n}")
        return n
    return torch.get_num_threads()


def _check_threads(n_threads: int | None) -> int:
    if n_threads is None:
        return default_threads()
    if not isinstance(n_threads, (int, np.integer)) or isinstance(n_threads, bool):
        raise TypeError(f"n_threads must be an int, got {type(n_threads).__name__}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return int(n_threads)


def _as_float32_matrix(x, name: str) -> np.ndarray:
    """A C-contiguous float32 [n, k] NumPy view of x (copied only if not contiguous)."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {x.device}")
        if x.requires_grad:
            x = x.detach()
        arr = x.contiguous().numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {x.dtype}")
        arr = np.ascontiguousarray(x)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [tokens, features], got shape {tuple(arr.shape)}")
    return arr


# ---------------------------------------------------------------- per-token INT8 quantization

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


def quantize_per_token(x, n_threads: int | None = None):
    """Per-token symmetric INT8 quantization (compiled, OpenMP over rows, GIL released).

    x: float32 [n, k] torch.Tensor or numpy.ndarray (a non-contiguous input is copied).
    Returns (q int8 [n, k], scales float32 [n]) of the same kind as x, with x ≈ q * scales[:, None].
    Raises ValueError if x holds NaN or Inf.
    """
    is_torch = isinstance(x, torch.Tensor)
    arr = _as_float32_matrix(x, "x")
    threads = _check_threads(n_threads)
    n, k = arr.shape
    q = np.empty((n, k), dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    bad = _quant.quantize_per_token(arr, q, scales, threads)
    if bad:
        raise ValueError(f"x holds NaN or Inf in {bad} of its {n} rows; cannot quantize")
    if is_torch:
        return torch.from_numpy(q), torch.from_numpy(scales)
    return q, scales


# ---------------------------------------------------------------- CPU report

@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict:
    """What this CPU offers for the kernels and how the extension was built."""
    flags = _cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
        "avx512bw": "avx512bw" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "openmp": _quant.openmp_enabled(),
        "omp_max_threads": _quant.omp_max_threads(),
        "torch_threads": torch.get_num_threads(),
    }
