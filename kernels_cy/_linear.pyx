# cython: language_level=3
"""y = W·x for packed INT8 weights (dense or bitmask-sparse) and float32 activations.

A `Kernel` holds one packed layer (pointers into the arrays of a workbench.packing.PackedLinear,
which it keeps alive) so a forward call converts only its input and output buffers: at batch 1
the Python-side cost per call is a few microseconds. `Kernel.run` then works without the GIL,
with OpenMP over an explicit n_threads:
  1. per-token (or static) INT8 quantization of x into xq [n, kp], zero padded to kp
     (in_features rounded up to 64), plus the second encoding xa the ISA path needs
     (AVX2: |xq|; AVX-512 VNNI: xq + 128; generic: unused);
  2. integer dot products of every weight row with every token, then
     y[t, r] = (float(acc) * x_scale[t]) * w_scale[r] + bias[r].
Batch 1 (decode) decodes each sparse row straight into registers. Batch n > 1 (prefill) walks
the tokens in blocks whose activations stay in L2, expands two sparse rows at a time into a
per-thread scratch and runs a 2-row x 4-token tile on them.
The SIMD micro-kernels live in wb_spmm.h; the format is described there.
"""

from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int8_t, uint8_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from _qrow cimport quantize_row, quantize_row_static

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
cdef enum:
    TOKEN_BLOCK_BYTES = 196608     # activations (xq + xa) of one token block: fits a 256K+ L2


def isa_supported(int isa):
    """True if this CPU can run the path (and it was compiled in)."""
    return bool(wb_isa_compiled(isa) and wb_cpu_has(isa))


cdef inline Py_ssize_t _token_block(Py_ssize_t kp) noexcept nogil:
    """Tokens per block: a multiple of 4 whose xq + xa fit TOKEN_BLOCK_BYTES (at least 4)."""
    cdef Py_ssize_t block = TOKEN_BLOCK_BYTES // (2 * kp) if kp else 4
    return 4 * (block // 4) if block >= 8 else 4


cdef int _prepare_row(const float* x, int8_t* q, uint8_t* a, float* sx, Py_ssize_t k,
                      Py_ssize_t kp, float static_scale, float static_inv, int isa) noexcept nogil:
    """Quantize one token into q (zero padded to kp) and its ISA encoding a; 1 on NaN/Inf."""
    cdef int bad
    cdef Py_ssize_t j
    if static_scale < 0:
        if k > 0:
            bad = quantize_row(x, <signed char*>q, sx, k)
        else:
            bad = 0
            sx[0] = 0
    else:
        bad = quantize_row_static(x, <signed char*>q, static_inv, k)
        sx[0] = static_scale
    if kp > k:
        memset(q + k, 0, kp - k)
    if isa == WB_ISA_AVX2:
        for j in range(kp):
            a[j] = <uint8_t>(q[j] if q[j] >= 0 else -q[j])
    elif isa == WB_ISA_AVX512VNNI:
        for j in range(kp):
            a[j] = <uint8_t>(<int>q[j] + 128)
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


cdef class Kernel:
    """One packed Linear layer, ready to run. Arrays are validated here once."""

    cdef object arrays                  # keeps the NumPy buffers alive
    cdef readonly Py_ssize_t rows, kp, in_features
    cdef readonly bint sparse
    cdef float static_scale, static_inv
    cdef const int8_t* wd
    cdef const uint64_t* mask
    cdef const int8_t* vals
    cdef const int64_t* row_ptr
    cdef const int32_t* rowsum
    cdef const float* w_scale
    cdef const float* bias

    def __init__(self, bint sparse, Py_ssize_t in_features,
                 const signed char[:, ::1] qweight,   # IN [rows, kp] (dense) or [0, kp]
                 const uint64_t[:, ::1] mask,         # IN [rows, kp/64] (sparse) or [0, kp/64]
                 const signed char[::1] vals,         # IN [nnz + 64] (sparse) or [0]
                 const int64_t[::1] row_ptr,          # IN [rows + 1] (sparse) or [0]
                 const int32_t[::1] rowsum,           # IN [rows]
                 const float[::1] w_scale,            # IN [rows]
                 const float[::1] bias,               # IN [rows] or [0]
                 float static_scale=-1.0, float static_inv=0.0):
        cdef Py_ssize_t r, rows = w_scale.shape[0]
        cdef Py_ssize_t kp = qweight.shape[1] if not sparse else 64 * mask.shape[1]
        if kp % 64 or kp < in_features or kp >= in_features + 64 and in_features > 0:
            raise ValueError("Kernel: padded width must be in_features rounded up to 64")
        if rowsum.shape[0] != rows or bias.shape[0] not in (0, rows):
            raise ValueError("Kernel: per-row buffers do not match")
        self.arrays = (qweight, mask, vals, row_ptr, rowsum, w_scale, bias)
        self.rows, self.kp, self.in_features, self.sparse = rows, kp, in_features, sparse
        self.static_scale, self.static_inv = static_scale, static_inv
        self.wd, self.mask, self.vals, self.row_ptr = NULL, NULL, NULL, NULL
        self.rowsum = &rowsum[0] if rows else NULL
        self.w_scale = &w_scale[0] if rows else NULL
        self.bias = &bias[0] if bias.shape[0] else NULL
        if sparse:
            if mask.shape[0] != rows or row_ptr.shape[0] != rows + 1:
                raise ValueError("Kernel: sparse weight buffers do not match")
            if rows and (row_ptr[0] != 0 or vals.shape[0] < row_ptr[rows] + 64):
                raise ValueError("Kernel: packed values must start at 0 and be padded by 64 bytes")
            for r in range(rows):
                if row_ptr[r + 1] < row_ptr[r]:
                    raise ValueError("Kernel: row_ptr must be non-decreasing")
            if rows:
                self.mask, self.vals, self.row_ptr = &mask[0, 0], &vals[0], &row_ptr[0]
        else:
            if qweight.shape[0] != rows:
                raise ValueError("Kernel: dense weight buffer does not match")
            if rows:
                self.wd = &qweight[0, 0]

    def run(self, int isa, int n_threads,
            const float[:, ::1] x,             # IN  [n, in_features]
            float[:, ::1] y,                   # OUT [n, rows]
            int32_t[:, ::1] acc=None):         # OUT [n, rows]: exact accumulators (tests)
        """Compute y (and acc); returns the number of tokens holding NaN/Inf (y then undefined)."""
        cdef Py_ssize_t n = x.shape[0]
        cdef Py_ssize_t kp = self.kp
        cdef int bad = 0
        cdef int32_t* accp = NULL
        cdef int8_t* xq
        cdef uint8_t* xa
        cdef float* sx
        cdef char* work
        cdef char* scratch = NULL
        cdef Py_ssize_t block = _token_block(kp)
        cdef Py_ssize_t per_thread = 2 * kp + 8 * block * sizeof(int32_t)
        if x.shape[1] != self.in_features or y.shape[0] != n or y.shape[1] != self.rows:
            raise ValueError("Kernel.run: input or output shape does not match the layer")
        if acc is not None:
            if acc.shape[0] != n or acc.shape[1] != self.rows:
                raise ValueError("Kernel.run: accumulator shape does not match")
            if n and self.rows:
                accp = &acc[0, 0]
        if n_threads < 1:
            raise ValueError("Kernel.run: n_threads must be >= 1")
        if n == 0 or self.rows == 0:
            return 0
        work = <char*>malloc(n * (2 * kp + sizeof(float)))
        if n > 1:
            scratch = <char*>malloc(n_threads * per_thread)
        if work == NULL or (n > 1 and scratch == NULL):
            free(work)
            free(scratch)
            raise MemoryError("Kernel.run: no memory for the quantized activations")
        xq = <int8_t*>work
        xa = <uint8_t*>(work + n * kp)
        sx = <float*>(work + 2 * n * kp)
        try:
            with nogil:
                bad = self._quantize(isa, n_threads, x, xq, xa, sx)
                if bad == 0:
                    if n == 1:
                        self._gemv(isa, n_threads, xq, xa, sx, &y[0, 0], accp)
                    else:
                        self._gemm(isa, n_threads, n, xq, xa, sx, &y[0, 0], accp, scratch,
                                   per_thread, block)
        finally:
            free(work)
            free(scratch)
        return bad

    cdef int _quantize(self, int isa, int n_threads, const float[:, ::1] x, int8_t* xq,
                       uint8_t* xa, float* sx) noexcept nogil:
        cdef Py_ssize_t n = x.shape[0], k = x.shape[1], kp = self.kp
        cdef Py_ssize_t i
        cdef int bad = 0
        if n == 1:
            return _prepare_row(&x[0, 0], xq, xa, sx, k, kp, self.static_scale,
                                self.static_inv, isa)
        for i in prange(n, num_threads=n_threads, schedule="static"):
            bad += _prepare_row(&x[i, 0], xq + i * kp, xa + i * kp, sx + i, k, kp,
                                self.static_scale, self.static_inv, isa)
        return bad

    cdef void _gemv(self, int isa, int n_threads, const int8_t* xq, const uint8_t* xa,
                    const float* sx, float* y, int32_t* acc) noexcept nogil:
        """Decode: one token, every row decoded straight into registers."""
        cdef Py_ssize_t r, rows = self.rows, kp = self.kp, words = self.kp // 64
        cdef bint vnni = isa == WB_ISA_AVX512VNNI
        cdef int32_t a
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            if self.sparse:
                a = wb_sparse_dot(isa, self.mask + r * words, self.vals + self.row_ptr[r], words,
                                  xq, xa)
            else:
                a = wb_dense_dot(isa, self.wd + r * kp, xq, xa, kp)
            _finish(a, 0, r, vnni, self.rowsum, sx, self.w_scale, self.bias, y, acc, rows)

    cdef void _gemm(self, int isa, int n_threads, Py_ssize_t n, const int8_t* xq,
                    const uint8_t* xa, const float* sx, float* y, int32_t* acc,
                    char* scratch_all, Py_ssize_t per_thread, Py_ssize_t block) noexcept nogil:
        """Prefill: token blocks (activations L2-resident) x row pairs (OpenMP). scratch_all:
        per_thread bytes for each thread (two expanded rows, then a 2 x block int32 tile)."""
        cdef Py_ssize_t rows = self.rows, kp = self.kp, words = self.kp // 64
        cdef Py_ssize_t t0, nb, p, r, t
        cdef bint vnni = isa == WB_ISA_AVX512VNNI
        cdef int8_t* scratch
        cdef int32_t* tile
        cdef const int8_t* w0
        cdef const int8_t* w1
        scratch, tile, t0, nb = NULL, NULL, 0, 0      # thread-private copies below
        with parallel(num_threads=n_threads):
            scratch = <int8_t*>(scratch_all + threadid() * per_thread)
            tile = <int32_t*>(scratch + 2 * kp)
            t0 = 0
            while t0 < n:
                nb = min(block, n - t0)
                for p in prange((rows + 1) // 2, schedule="static"):
                    r = 2 * p
                    if self.sparse:
                        wb_expand(isa, self.mask + r * words, self.vals + self.row_ptr[r],
                                  words, scratch)
                        if r + 1 < rows:
                            wb_expand(isa, self.mask + (r + 1) * words,
                                      self.vals + self.row_ptr[r + 1], words, scratch + kp)
                        else:
                            memset(scratch + kp, 0, kp)
                        w0 = scratch
                        w1 = scratch + kp
                    else:
                        w0 = self.wd + r * kp
                        w1 = self.wd + (r + 1) * kp if r + 1 < rows else w0
                    wb_dense_rows2(isa, w0, w1, xq + t0 * kp, xa + t0 * kp, nb, kp, tile, 2)
                    for t in range(nb):
                        _finish(tile[2 * t], t0 + t, r, vnni, self.rowsum, sx,
                                self.w_scale, self.bias, y, acc, rows)
                        if r + 1 < rows:
                            _finish(tile[2 * t + 1], t0 + t, r + 1, vnni, self.rowsum, sx,
                                    self.w_scale, self.bias, y, acc, rows)
                t0 = t0 + nb
