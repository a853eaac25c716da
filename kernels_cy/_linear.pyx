# cython: language_level=3
"""y = W·x for packed INT8 weights (dense or bitmask-sparse) and float32 activations.

Two steps, both without the GIL and with OpenMP over an explicit n_threads:
  1. prepare_acts: per-token (or static) INT8 quantization of x into xq [n, kp], zero padded
     to kp (in_features rounded up to 64), plus the second encoding xa the ISA path needs
     (AVX2: |xq|; AVX-512 VNNI: xq + 128; generic: unused).
  2. gemm: integer dot products of every weight row with every token, then
     y[t, r] = (float(acc) * x_scale[t]) * w_scale[r] + bias[r].
     Batch 1 (decode) decodes each sparse row straight into registers; batch n > 1 (prefill)
     expands two rows at a time into a per-thread scratch and runs a 2-row x 4-token tile,
     so each weight is decoded once per call however many tokens there are.
The SIMD micro-kernels live in wb_spmm.h; the format is described there.
"""

from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int8_t, uint8_t, int32_t, int64_t, uint64_t
from libc.string cimport memset
from _qrow cimport quantize_row, quantize_row_static

import numpy as np

cdef extern from "wb_spmm.h" nogil:
    int WB_ISA_GENERIC
    int WB_ISA_AVX2
    int WB_ISA_AVX512VNNI
    int wb_cpu_has(int isa)
    int wb_isa_compiled(int isa)
    int32_t wb_dense_dot(int isa, const int8_t* w, const int8_t* x, const uint8_t* xa, int64_t kp)
    int32_t wb_sparse_dot(int isa, const uint64_t* mask, const int8_t* v, int64_t words,
                          const int8_t* x, const uint8_t* xa)
    void wb_expand(int isa, const uint64_t* mask, const int8_t* v, int64_t words, int8_t* dst)
    void wb_dense_rows2(int isa, const int8_t* w0, const int8_t* w1, const int8_t* x,
                        const uint8_t* xa, int64_t n, int64_t kp, int32_t* out, int64_t ldo)

ISA_NAMES = {"generic": WB_ISA_GENERIC, "avx2": WB_ISA_AVX2, "avx512vnni": WB_ISA_AVX512VNNI}


def isa_supported(int isa):
    """True if this CPU can run the path (and it was compiled in)."""
    return bool(wb_isa_compiled(isa) and wb_cpu_has(isa))


def prepare_acts(const float[:, ::1] x,            # IN  [n, k]
                 signed char[:, ::1] xq,           # OUT [n, kp]
                 unsigned char[:, ::1] xa,         # OUT [n, kp]
                 float[::1] x_scale,               # OUT [n]
                 float static_scale,               # < 0: per-token dynamic
                 float static_inv,                 # 1/static_scale in float32
                 int isa, int n_threads):
    """Quantize x row by row; returns the number of rows holding NaN/Inf."""
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], kp = xq.shape[1]
    cdef Py_ssize_t i, j
    cdef int bad = 0
    cdef signed char* q
    cdef unsigned char* a
    if xq.shape[0] != n or xa.shape[0] != n or xa.shape[1] != kp or x_scale.shape[0] != n or kp < k:
        raise ValueError("prepare_acts: buffer shapes do not match x")
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            q = &xq[i, 0]
            if static_scale < 0:
                bad += quantize_row(&x[i, 0], q, &x_scale[i], k) if k > 0 else 0
                if k == 0:
                    x_scale[i] = 0
            else:
                bad += quantize_row_static(&x[i, 0], q, static_inv, k)
                x_scale[i] = static_scale
            if kp > k:
                memset(q + k, 0, kp - k)
            a = &xa[i, 0]
            if isa == WB_ISA_AVX2:
                for j in range(kp):
                    a[j] = <unsigned char>(q[j] if q[j] >= 0 else -q[j])
            elif isa == WB_ISA_AVX512VNNI:
                for j in range(kp):
                    a[j] = <unsigned char>(<int>q[j] + 128)
    return bad


cdef inline void _finish(int32_t a, Py_ssize_t t, Py_ssize_t r, bint vnni, const int32_t* rowsum,
                         const float* x_scale, const float* w_scale, const float* bias,
                         float* y, int32_t* acc, Py_ssize_t ld) noexcept nogil:
    """Write one output: exact int32 accumulator (optional) and its float rescale."""
    if vnni:
        a = a - 128 * rowsum[r]                  # undo the +128 shift of the activations
    if acc != NULL:
        acc[t * ld + r] = a
    y[t * ld + r] = (<float>a * x_scale[t]) * w_scale[r] + (bias[r] if bias != NULL else 0.0)


def gemm(int isa, int n_threads, bint sparse,
         const signed char[:, ::1] xq,        # IN  [n, kp]
         const unsigned char[:, ::1] xa,      # IN  [n, kp]
         const float[::1] x_scale,            # IN  [n]
         const signed char[:, ::1] wdense,    # IN  [rows, kp] (dense) or [0, kp]
         const uint64_t[:, ::1] mask,         # IN  [rows, kp/64] (sparse) or [0, kp/64]
         const signed char[::1] vals,         # IN  [nnz + 64] packed nonzeros (sparse)
         const int64_t[::1] row_ptr,          # IN  [rows + 1] (sparse)
         const int32_t[::1] rowsum,           # IN  [rows] sum of each row's INT8 weights
         const float[::1] w_scale,            # IN  [rows]
         const float[::1] bias,               # IN  [rows] or [0]
         float[:, ::1] y,                     # OUT [n, rows]
         int32_t[:, ::1] acc):                # OUT [n, rows] or [0, 0]: exact accumulators
    cdef Py_ssize_t n = xq.shape[0], kp = xq.shape[1], rows = w_scale.shape[0]
    cdef Py_ssize_t words = kp // 64
    cdef Py_ssize_t pairs = rows // 2
    cdef Py_ssize_t p, r, t
    cdef bint vnni = isa == WB_ISA_AVX512VNNI
    cdef int8_t* scratch
    cdef int32_t* tile
    cdef signed char[:, ::1] ws_w      # per-thread scratch: two expanded weight rows
    cdef int32_t[:, ::1] ws_t          # per-thread 2 x n tile of accumulators
    cdef const int8_t* w0
    cdef const int8_t* w1
    cdef const int8_t* xq0 = <const int8_t*>&xq[0, 0] if n > 0 else NULL
    cdef const uint8_t* xa0 = <const uint8_t*>&xa[0, 0] if n > 0 else NULL
    cdef const float* bptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef int32_t* accp = &acc[0, 0] if acc.shape[0] > 0 else NULL
    cdef const uint64_t* m0 = NULL
    cdef const int8_t* v0 = NULL
    cdef const int64_t* rp = NULL
    cdef const int8_t* wd = NULL

    if kp % 64 or xa.shape[0] != n or xa.shape[1] != kp or x_scale.shape[0] != n:
        raise ValueError("gemm: activation buffers do not match")
    if y.shape[0] != n or y.shape[1] != rows or rowsum.shape[0] != rows:
        raise ValueError("gemm: output or per-row buffers do not match")
    if bias.shape[0] not in (0, rows) or (accp != NULL and (acc.shape[0] != n or acc.shape[1] != rows)):
        raise ValueError("gemm: bias or accumulator buffer does not match")
    if sparse:
        if mask.shape[0] != rows or mask.shape[1] != words or row_ptr.shape[0] != rows + 1:
            raise ValueError("gemm: sparse weight buffers do not match")
        if rows and vals.shape[0] < row_ptr[rows] + 64:
            raise ValueError("gemm: packed values must be padded by 64 bytes")
        if rows:
            m0, v0, rp = &mask[0, 0], &vals[0], &row_ptr[0]
    else:
        if wdense.shape[0] != rows or wdense.shape[1] != kp:
            raise ValueError("gemm: dense weight buffer does not match")
        if rows:
            wd = &wdense[0, 0]
    if n == 0 or rows == 0:
        return
    if n_threads < 1:
        raise ValueError("gemm: n_threads must be >= 1")
    if n > 1:
        ws_w = np.empty((n_threads, 2 * kp), dtype=np.int8)
        ws_t = np.empty((n_threads, 2 * n), dtype=np.int32)

    with nogil:
        if n == 1:
            # decode: one token, every row decoded straight into registers
            for r in prange(rows, num_threads=n_threads, schedule="static"):
                if sparse:
                    _finish(wb_sparse_dot(isa, m0 + r * words, v0 + rp[r], words, xq0, xa0),
                            0, r, vnni, &rowsum[0], &x_scale[0], &w_scale[0], bptr,
                            &y[0, 0], accp, rows)
                else:
                    _finish(wb_dense_dot(isa, wd + r * kp, xq0, xa0, kp),
                            0, r, vnni, &rowsum[0], &x_scale[0], &w_scale[0], bptr,
                            &y[0, 0], accp, rows)
        else:
            with parallel(num_threads=n_threads):
                scratch = <int8_t*>&ws_w[threadid(), 0]
                tile = &ws_t[threadid(), 0]
                for p in prange((rows + 1) // 2, schedule="static"):
                    r = 2 * p
                    if sparse:
                        wb_expand(isa, m0 + r * words, v0 + rp[r], words, scratch)
                        if r + 1 < rows:
                            wb_expand(isa, m0 + (r + 1) * words, v0 + rp[r + 1], words,
                                      scratch + kp)
                        else:
                            memset(scratch + kp, 0, kp)
                        w0 = scratch
                        w1 = scratch + kp
                    else:
                        w0 = wd + r * kp
                        w1 = wd + (r + 1) * kp if r + 1 < rows else w0
                    wb_dense_rows2(isa, w0, w1, xq0, xa0, n, kp, tile, 2)
                    for t in range(n):
                        _finish(tile[2 * t], t, r, vnni, &rowsum[0], &x_scale[0],
                                &w_scale[0], bptr, &y[0, 0], accp, rows)
                        if r + 1 < rows:
                            _finish(tile[2 * t + 1], t, r + 1, vnni, &rowsum[0], &x_scale[0],
                                    &w_scale[0], bptr, &y[0, 0], accp, rows)
