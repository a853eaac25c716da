"""Packed INT8 weight formats for a Linear layer, and the NumPy reference of their product.

Two formats (the kernels that read them are in kernels_cy/wb_spmm.h):

  dense   qweight int8 [out, kp]                      1 byte per weight
  sparse  mask uint64 [out, kp/64] + values int8 [nnz]  1/8 + density bytes per weight
          (bit j of mask[r, v] <=> column 64 v + j of row r is nonzero; values row after row)

kp is in_features rounded up to 64: a 64-column mask word is one AVX-512 register of INT8
weights (one vpexpandb) or two AVX2 registers, and rows padded to it need no tail loops.
Weights are symmetric per-output-channel INT8 exactly as workbench.quant.quantize_weight
makes them (so a packed layer computes what the W8A8 fake-quant layer computes); the
sparsity is that of the INT8 weight: a weight that rounds to 0 is not stored. Both formats
keep per-row scales (float32) and per-row sums of the INT8 weights (int32), which the
AVX-512 VNNI path needs to undo its +128 activation shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.quant import quantize_weight

ALIGN = 64            # columns per mask word; kp is a multiple of this
VALUE_PADDING = 64    # the AVX2 decoder reads up to 32 bytes past a row's last value
MAX_IN_FEATURES = 65536   # keeps every int32 accumulator (and the VNNI shift) from overflowing
FORMATS = ("auto", "sparse", "dense")
# "auto" packs a layer sparse when at most this fraction of its INT8 weights is nonzero.
# Below it the bitmask format is smaller than dense INT8 (1/8 + density < 1) and, measured by
# benchmarks/kernels.py on the AVX2 path, not slower at batch 1; see results/kernels/.
AUTO_SPARSE_MAX_DENSITY = 0.7


def padded_in_features(in_features: int) -> int:
    return -(-in_features // ALIGN) * ALIGN


CACHE_LINE = 64       # weight buffers start on a cache line: a 64-byte vector load never splits


def aligned_zeros(shape, dtype) -> np.ndarray:
    """np.zeros(shape, dtype) whose data starts on a CACHE_LINE boundary (NumPy's allocator
    gives 16 bytes: every 64-byte load of a dense row then straddles two cache lines, which
    measured 2.5x slower on batched products)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def aligned(arr: np.ndarray) -> np.ndarray:
    """arr itself when C-contiguous and cache-line aligned, else such a copy (pickled or
    deep-copied arrays come back with NumPy's default alignment)."""
    if arr.flags.c_contiguous and arr.ctypes.data % CACHE_LINE == 0:
        return arr
    out = aligned_zeros(arr.shape, arr.dtype)
    out[...] = arr
    return out


@dataclass(eq=False)
class PackedLinear:
    """One Linear layer in a kernel format. Arrays are NumPy, C-contiguous, read-only by use."""

    out_features: int
    in_features: int
    sparse: bool
    scale: np.ndarray            # float32 [out]  weight = q * scale[:, None]
    rowsum: np.ndarray           # int32 [out]    sum over k of q[r, k]
    qweight: np.ndarray          # int8 [out, kp] (dense) or [0, kp]
    mask: np.ndarray             # uint64 [out, kp/64] (sparse) or [0, kp/64]
    values: np.ndarray           # int8 [nnz + VALUE_PADDING] (sparse) or [0]
    row_ptr: np.ndarray          # int64 [out + 1] (sparse) or [0]
    bias: np.ndarray | None = None      # float32 [out]
    act_scale: float | None = None      # static activation scale (absmax/127); None = per token
    _kernel: object = field(default=None, repr=False)   # compiled handle, built on first use

    def __getstate__(self) -> dict:        # copies and pickles rebuild the compiled handle
        return {**self.__dict__, "_kernel": None}

    @property
    def kp(self) -> int:
        return padded_in_features(self.in_features)

    @property
    def nnz(self) -> int:
        return int(self.row_ptr[-1]) if self.sparse else int(np.count_nonzero(self.qweight))

    @property
    def density(self) -> float:
        """Fraction of nonzero INT8 weights (padding excluded)."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes a forward pass streams: weights, their structure, scales, row sums, bias."""
        n = self.scale.nbytes + self.rowsum.nbytes
        n += 0 if self.bias is None else self.bias.nbytes
        if self.sparse:
            return n + self.mask.nbytes + self.nnz + self.row_ptr.nbytes
        return n + self.qweight.nbytes

    def row_stats(self, start: int, stop: int) -> tuple[int, int]:
        """(nonzeros, bytes) of output rows start..stop-1: the share of a layer packed together
        with others (the runtime packs q/k/v and gate/up as one). The value padding and
        row_ptr's extra entry stay with the whole layer, so parts sum to at most nbytes."""
        if not 0 <= start <= stop <= self.out_features:
            raise ValueError(f"rows {start}..{stop} outside 0..{self.out_features}")
        rows = stop - start
        n = rows * (self.scale.itemsize + self.rowsum.itemsize)
        n += 0 if self.bias is None else rows * self.bias.itemsize
        if self.sparse:
            nnz = int(self.row_ptr[stop] - self.row_ptr[start])
            return nnz, n + self.mask[start:stop].nbytes + nnz + rows * self.row_ptr.itemsize
        return int(np.count_nonzero(self.qweight[start:stop])), n + self.qweight[start:stop].nbytes

    @property
    def bytes_per_weight(self) -> float:
        total = self.out_features * self.in_features
        return self.nbytes / total if total else 0.0

    def unpack_int8(self) -> np.ndarray:
        """The INT8 weight, int8 [out, in]."""
        if not self.sparse:
            return np.ascontiguousarray(self.qweight[:, : self.in_features])
        bits = np.unpackbits(self.mask.view(np.uint8), axis=1, bitorder="little").astype(bool)
        q = np.zeros((self.out_features, self.kp), dtype=np.int8)
        q[bits] = self.values[: self.nnz]        # boolean assignment fills in row-major order
        return q[:, : self.in_features]

    def unpack(self) -> torch.Tensor:
        """The dequantized weight q * scale, float32 [out, in] (what the kernels multiply by)."""
        q = torch.from_numpy(self.unpack_int8().astype(np.float32))
        return q * torch.from_numpy(self.scale)[:, None]

    def __repr__(self) -> str:
        kind = "sparse" if self.sparse else "dense"
        return (f"PackedLinear({self.in_features}->{self.out_features}, {kind}, "
                f"density={self.density:.3f}, {self.bytes_per_weight:.3f} B/weight)")


def _as_weight(weight) -> torch.Tensor:
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or numpy.ndarray, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if weight.shape[1] > MAX_IN_FEATURES:
        raise ValueError(f"in_features {weight.shape[1]} exceeds the kernels' limit {MAX_IN_FEATURES}")
    w = weight.detach().to("cpu", torch.float32)
    # min and max are NaN if any value is, ±inf if any is: one reduction, ~10x faster than
    # isfinite(w).all() on a 7B-shape matrix
    if w.numel() and not all(torch.isfinite(v) for v in torch.aminmax(w)):
        raise ValueError("weight holds NaN or Inf; cannot quantize it")
    return w


def pack_linear(weight, bias=None, *, format: str = "auto", act_scale: float | None = None) -> PackedLinear:
    """Quantize weight [out, in] to per-channel INT8 and pack it for the kernels.

    format: "sparse" (bitmask + packed nonzeros), "dense" (INT8 rows), or "auto" (sparse when
    the INT8 density is at most AUTO_SPARSE_MAX_DENSITY). act_scale: a static activation
    scale (absmax/127 from calibration) instead of per-token dynamic quantization.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    w = _as_weight(weight)
    out_f, in_f = w.shape
    if bias is not None:
        bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).reshape(-1)
        if bias.numel() != out_f:
            raise ValueError(f"bias has {bias.numel()} values, weight has {out_f} output rows")
        bias = bias.numpy().copy()
    if act_scale is not None:
        act_scale = float(act_scale)
        if not np.isfinite(act_scale) or act_scale <= 0:
            raise ValueError(f"act_scale must be a positive finite number, got {act_scale}")
    q, scale = quantize_weight(w, "per_channel")              # int8 [out, in], float32 [out]
    kp = padded_in_features(in_f)
    qpad = aligned_zeros((out_f, kp), np.int8)
    qpad[:, :in_f] = q.numpy()
    nz = qpad != 0                                           # [out, kp]
    density = float(nz.sum()) / max(out_f * in_f, 1)
    sparse = format == "sparse" or (format == "auto" and density <= AUTO_SPARSE_MAX_DENSITY)
    common = dict(out_features=out_f, in_features=in_f, sparse=sparse,
                  scale=scale.numpy().astype(np.float32).copy(),
                  rowsum=qpad.sum(axis=1, dtype=np.int64).astype(np.int32),
                  bias=bias, act_scale=act_scale)
    if not sparse:
        return PackedLinear(qweight=qpad, mask=np.zeros((0, kp // ALIGN), np.uint64),
                            values=np.zeros(0, np.int8), row_ptr=np.zeros(0, np.int64), **common)
    # bit j of the little-endian uint64 word v is column 64 v + j (packbits with bitorder little)
    mask = np.packbits(nz, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    mask = aligned(mask.reshape(out_f, kp // ALIGN))
    counts = nz.sum(axis=1)
    row_ptr = np.zeros(out_f + 1, dtype=np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    values = aligned_zeros(int(row_ptr[-1]) + VALUE_PADDING, np.int8)
    values[: row_ptr[-1]] = qpad[nz]                         # row after row, column order
    return PackedLinear(qweight=np.zeros((0, kp), np.int8), mask=mask, values=values,
                        row_ptr=row_ptr, **common)
