"""Python face of the Cython kernels in kernels_cy/: input checks, threads, CPU report.

Every kernel here has a pure NumPy reference (`*_ref`) with the same arithmetic; the
tests hold the compiled kernel to it exactly.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from workbench.cpuinfo import cpu_flags as cpu_flags
from workbench.cpuinfo import cpu_model as cpu_model
from workbench.packing import MAX_IN_FEATURES, PackedLinear, aligned, pack_linear
from workbench.reference import linear_int8_ref, quantize_per_token_ref, quantize_static_ref

try:
    from workbench import _linear, _quant
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


def check_threads(n_threads: int | None) -> int:
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

def quantize_per_token(x, n_threads: int | None = None):
    """Per-token symmetric INT8 quantization (compiled, OpenMP over rows, GIL released).

    x: float32 [n, k] torch.Tensor or numpy.ndarray (a non-contiguous input is copied).
    Returns (q int8 [n, k], scales float32 [n]) of the same kind as x, with x ≈ q * scales[:, None].
    Raises ValueError if x holds NaN or Inf.
    """
    is_torch = isinstance(x, torch.Tensor)
    arr = _as_float32_matrix(x, "x")
    threads = check_threads(n_threads)
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

def cpu_features() -> dict:
    """What this CPU offers for the kernels (workbench.cpuinfo) and how the extension was built."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
        "avx512bw": "avx512bw" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx512vbmi2": "avx512_vbmi2" in flags,
        "isa_supported": supported_isas(),
        "isa": active_isa(),
        "openmp": _quant.openmp_enabled(),
        "omp_max_threads": _quant.omp_max_threads(),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- ISA dispatch

ISAS = ("avx512vnni", "avx2", "generic")      # fastest first
ISA_ENV = "WORKBENCH_KERNEL_ISA"


def supported_isas() -> list[str]:
    """Kernel paths this CPU can run, fastest first ("generic" always)."""
    return [name for name in ISAS if _linear.isa_supported(_linear.ISA_NAMES[name])]


def _resolve_isa(name: str | None) -> str:
    if name is None or name == "auto":
        return supported_isas()[0]
    if name not in ISAS:
        raise ValueError(f"unknown kernel ISA {name!r}; choose one of {ISAS} or 'auto'")
    if name not in supported_isas():
        raise ValueError(f"kernel ISA {name!r} is not available on this CPU "
                         f"({cpu_model()}); available: {supported_isas()}")
    return name


def _isa_from_env() -> str:
    env = os.environ.get(ISA_ENV, "auto").strip().lower() or "auto"
    try:
        return _resolve_isa(env)
    except ValueError as err:
        raise ValueError(f"{ISA_ENV}={env!r}: {err}") from None


_ACTIVE_ISA = _isa_from_env()      # chosen once at import; set_isa() or isa= overrides


def active_isa() -> str:
    return _ACTIVE_ISA


def set_isa(name: str | None) -> str:
    """Select the kernel path for later calls ("auto" or None: the fastest available).
    Returns the previous one. An unavailable path is a ValueError."""
    global _ACTIVE_ISA
    previous, _ACTIVE_ISA = _ACTIVE_ISA, _resolve_isa(name)
    return previous


# ---------------------------------------------------------------- packed W8A8 linear

_EMPTY_F32 = np.zeros(0, np.float32)


def _kernel(packed: PackedLinear):
    """The compiled handle of a packed layer (validated and cached on first use)."""
    if packed._kernel is None:
        for name in ("qweight", "mask", "values"):          # copies lose the alignment
            setattr(packed, name, aligned(getattr(packed, name)))
        static, inv = -1.0, 0.0
        if packed.act_scale is not None:
            static = packed.act_scale
            inv = float(np.float32(1) / np.float32(packed.act_scale))
        packed._kernel = _linear.Kernel(
            packed.sparse, packed.in_features, packed.qweight, packed.mask, packed.values,
            packed.row_ptr, packed.rowsum, packed.scale,
            packed.bias if packed.bias is not None else _EMPTY_F32, static, inv)
    return packed._kernel


def packed_matmul(packed: PackedLinear, x: np.ndarray, out: np.ndarray | None = None, *,
                  n_threads: int | None = None, isa: str | None = None,
                  return_acc: bool = False):
    """y = dequant(W) · quant(x) + bias with the compiled kernels.

    x: float32 [n, in] NumPy array or CPU tensor (copied only if not C-contiguous).
    out: optional float32 [n, out] C-contiguous buffer to fill. return_acc: also return the
    exact int32 accumulators [n, out] (for parity tests). Raises ValueError on NaN/Inf in x.
    """
    if not isinstance(packed, PackedLinear):
        raise TypeError(f"packed must be a PackedLinear, got {type(packed).__name__}")
    x = _as_float32_matrix(x, "x")
    n, k = x.shape
    if k != packed.in_features:
        raise ValueError(f"x has {k} features, the layer expects {packed.in_features}")
    threads = check_threads(n_threads)
    code = _linear.ISA_NAMES[_ACTIVE_ISA if isa is None else _resolve_isa(isa)]
    if out is None:
        out = np.empty((n, packed.out_features), np.float32)
    elif (not isinstance(out, np.ndarray) or out.shape != (n, packed.out_features)
          or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, packed.out_features)}")
    acc = np.empty((n, packed.out_features), np.int32) if return_acc else None
    bad = _kernel(packed).run(code, threads, x, out, acc)
    if bad:
        raise ValueError(f"x holds NaN or Inf in {bad} of its {n} rows; cannot quantize")
    return (out, acc) if return_acc else out


class SparseInt8Linear(torch.nn.Module):
    """A Linear layer computed by the sparse/dense INT8 kernels (inference only).

    Activations are quantized per token (or with a static scale) inside the kernel call,
    accumulated in int32 and rescaled by activation and weight scales. Input: float32
    [..., in_features] on the CPU; a contiguous input is read in place, a non-contiguous one is
    copied once. The output is a new float32 tensor [..., out_features].
    """

    def __init__(self, packed: PackedLinear, n_threads: int | None = None):
        super().__init__()
        if not isinstance(packed, PackedLinear):
            raise TypeError(f"packed must be a PackedLinear, got {type(packed).__name__}")
        self.packed = packed
        self._kernel = _kernel(packed)
        self.n_threads = None if n_threads is None else check_threads(n_threads)
        self.in_features, self.out_features = packed.in_features, packed.out_features

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, act_scale: float | None = None,
                    format: str = "auto", n_threads: int | None = None) -> SparseInt8Linear:
        """Pack an nn.Linear: its zero weights define the sparsity (format="auto" picks sparse
        or dense by density). act_scale: a static activation scale instead of per-token."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        packed = pack_linear(linear.weight, linear.bias, format=format, act_scale=act_scale)
        return cls(packed, n_threads=n_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"input must be float32, got {x.dtype}")
        if x.device.type != "cpu":
            raise ValueError(f"input must be on the CPU, got device {x.device}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension must be in_features={self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, self.in_features)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32)
        threads = self.n_threads or default_threads()
        bad = self._kernel.run(_linear.ISA_NAMES[_ACTIVE_ISA], threads, x2.numpy(), y.numpy())
        if bad:
            raise ValueError(f"input holds NaN or Inf in {bad} of its {x2.shape[0]} tokens")
        return y.reshape(*lead, self.out_features)

    def run2d(self, x2: torch.Tensor) -> torch.Tensor:
        """forward for a caller that guarantees x2 is a contiguous float32 CPU tensor
        [n, in_features] (the runtime's hot loop): no checks but the kernel's own shape check
        and its NaN/Inf count. Output float32 [n, out_features]."""
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32)
        bad = self._kernel.run(_linear.ISA_NAMES[_ACTIVE_ISA], self.n_threads or default_threads(),
                               x2.numpy(), y.numpy())
        if bad:
            raise ValueError(f"input holds NaN or Inf in {bad} of its {x2.shape[0]} tokens")
        return y

    def __getstate__(self) -> dict:        # copy.deepcopy / pickle: the handle is rebuilt
        return {**self.__dict__, "_kernel": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._kernel = _kernel(self.packed)

    def extra_repr(self) -> str:
        p = self.packed
        kind = "sparse" if p.sparse else "dense"
        static = f", act_scale={p.act_scale:.4g}" if p.act_scale is not None else ""
        return (f"in_features={p.in_features}, out_features={p.out_features}, {kind}, "
                f"density={p.density:.3f}, bias={p.bias is not None}{static}")


__all__ = ["ISAS", "MAX_IN_FEATURES", "PackedLinear", "SparseInt8Linear", "active_isa",
           "check_threads", "cpu_features", "cpu_flags", "cpu_model", "default_threads",
           "linear_int8_ref", "pack_linear", "packed_matmul", "quantize_per_token",
           "quantize_per_token_ref", "quantize_static_ref", "set_isa", "supported_isas"]
