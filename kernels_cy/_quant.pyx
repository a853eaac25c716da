# cython: language_level=3
"""Per-token symmetric INT8 quantization of a float32 activation matrix.

For each row (token) i of x [n, k]:  scale_i = max_j |x_ij| / 127,
q_ij = round_half_even(x_ij * (127 / max_j |x_ij|)),  so x_ij ≈ q_ij * scale_i.
This is the dynamic activation quantizer of LLM.int8()/SmoothQuant-style W8A8 (per-token
granularity). All arithmetic is float32, matching workbench.reference.quantize_per_token_ref
bit for bit; the row quantizer is wb_quant.h's, the one the kernels and the engine use
(its portable path here: the output rows are exactly k bytes, without the kernels' padding).
A row of zeros gets scale 0 and q = 0.
"""

from cython.parallel cimport prange
from libc.stdint cimport int8_t, uint8_t, int64_t

cdef extern from "wb_common.h" nogil:
    int wb_openmp_enabled()
    int wb_omp_max_threads()

cdef extern from "wb_quant.h" nogil:
    int WB_ISA_GENERIC
    int wb_quant_row(int isa, const float* x, int64_t k, int64_t kp, float static_scale,
                     float static_inv, int8_t* q, uint8_t* a, float* scale)


def openmp_enabled():
    """True if this extension was compiled with OpenMP."""
    return bool(wb_openmp_enabled())


def omp_max_threads():
    return wb_omp_max_threads()


def quantize_per_token(const float[:, ::1] x,      # IN  [n, k]
                       signed char[:, ::1] q,      # OUT [n, k]
                       float[::1] scales,          # OUT [n]
                       int n_threads):
    """Fill q and scales from x; returns the number of rows holding NaN/Inf.

    Shapes are checked by the Python layer (workbench.kernels); the loop over rows runs
    without the GIL, split over n_threads OpenMP threads.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t k = x.shape[1]
    cdef Py_ssize_t i
    cdef int bad = 0
    if q.shape[0] != n or q.shape[1] != k or scales.shape[0] != n:
        raise ValueError("quantize_per_token: output buffers do not match x's shape")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if n == 0:
        return 0
    if k == 0:
        for i in range(n):
            scales[i] = 0.0
        return 0
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            bad += wb_quant_row(WB_ISA_GENERIC, &x[i, 0], k, k, -1.0, 0.0,
                                <int8_t*>&q[i, 0], NULL, &scales[i])
    return bad
