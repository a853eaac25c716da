# cython: language_level=3
"""Quantization of one activation row, shared by _quant.pyx and _linear.pyx (inline, nogil)."""

from libc.math cimport fabsf, nearbyintf
from libc.string cimport memset


cdef inline int quantize_row(const float* x,        # IN  [k]
                             signed char* q,        # OUT [k]
                             float* scale,          # OUT [1]
                             Py_ssize_t k) noexcept nogil:
    """Per-token symmetric INT8: scale = absmax/127, q = round_half_even(x * (127/absmax)).
    Returns 1 if the row holds NaN or Inf (outputs then undefined). A zero row gets scale 0."""
    cdef Py_ssize_t j
    cdef float amax = 0.0
    cdef float v, inv
    cdef float poison = 0.0          # stays 0 unless some x is NaN or Inf (x*0 is NaN then)
    cdef float c127 = 127.0
    for j in range(k):
        v = fabsf(x[j])
        poison = poison + x[j] * <float>0.0
        if v > amax:
            amax = v
    if poison != poison:
        return 1
    scale[0] = amax / c127
    if amax == 0.0:
        memset(q, 0, k)
        return 0
    inv = c127 / amax
    return quantize_row_static(x, q, inv, k)


cdef inline int quantize_row_static(const float* x,   # IN  [k]
                                    signed char* q,   # OUT [k]
                                    float inv,        # IN  1/scale, float32
                                    Py_ssize_t k) noexcept nogil:
    """q = clip(round_half_even(x * inv), -127, 127) in float32; returns 1 on NaN/Inf input."""
    cdef Py_ssize_t j
    cdef float t
    cdef float c127 = 127.0
    cdef float poison = 0.0
    for j in range(k):
        poison = poison + x[j] * <float>0.0
        t = nearbyintf(x[j] * inv)   # float32 product, round half to even
        if t > c127:
            t = c127
        elif t < -c127:
            t = -c127
        q[j] = <signed char>t
    return 1 if poison != poison else 0
