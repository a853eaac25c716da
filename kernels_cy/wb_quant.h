/* Per-token symmetric INT8 quantization of one activation row, with the second encoding the
 * dot-product kernels read (wb_spmm.h): AVX2 |q|, AVX-512 VNNI q + 128, generic none.
 *
 *   scale = absmax / 127,  q = clip(round_half_even(x * (127 / absmax)), -127, 127)
 *
 * all in float32, so every path (and workbench.reference.quantize_per_token_ref) gives the
 * same bytes: the products x * inv are IEEE multiplications and vroundscale / nearbyintf
 * round half to even in the default rounding mode. A row of zeros gets scale 0 and q 0.
 * The vector paths replace a libm nearbyintf call per value (the old scalar loop's cost:
 * 4 quantizations per decoder layer per token) by one vroundscaleps per 16 values.
 *
 * Buffers: x [k] float, q [kp] int8 and a [kp] uint8 with kp >= k rounded up to 64; the
 * padding k..kp-1 is written (q 0; a 0 / 128) so the kernels can run over whole words.
 * Every function returns 1 when x holds NaN or Inf (outputs then undefined), else 0.
 */
#ifndef WB_QUANT_H
#define WB_QUANT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "wb_spmm.h"

/* Pad byte of the ISA encoding: the encoding of q = 0. */
static inline uint8_t wb_pad_code(int isa) { return isa == WB_ISA_AVX512VNNI ? 128 : 0; }

/* ------------------------------------------------------------------ portable C */

static float wb_absmax_generic(const float *x, int64_t k, int *bad) {
    float amax = 0.0f, poison = 0.0f;      /* poison stays 0 unless some x is NaN or Inf */
    for (int64_t j = 0; j < k; j++) {
        float v = fabsf(x[j]);
        poison = poison + x[j] * 0.0f;
        if (v > amax) amax = v;
    }
    *bad = poison != poison;
    return amax;
}

static int wb_quant_generic(const float *x, int64_t k, float inv, int isa, int8_t *q,
                            uint8_t *a) {
    float poison = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        poison = poison + x[j] * 0.0f;
        float t = nearbyintf(x[j] * inv);
        if (t > 127.0f) t = 127.0f;
        else if (t < -127.0f) t = -127.0f;
        q[j] = (int8_t)t;
        if (isa == WB_ISA_AVX2) a[j] = (uint8_t)(q[j] >= 0 ? q[j] : -q[j]);
        else if (isa == WB_ISA_AVX512VNNI) a[j] = (uint8_t)(q[j] + 128);
    }
    return poison != poison;
}

#if WB_X86
/* ------------------------------------------------------------------ AVX2 */

WB_AVX2 static float wb_absmax_avx2(const float *x, int64_t k, int *bad) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = _mm256_setzero_ps(), poison = _mm256_setzero_ps(), zero = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        WB_TOUCH(x + j, 32);
        __m256 v = _mm256_loadu_ps(x + j);
        amax = _mm256_max_ps(amax, _mm256_and_ps(v, sign));
        poison = _mm256_add_ps(poison, _mm256_mul_ps(v, zero));
    }
    float lanes[8], p[8];
    _mm256_storeu_ps(lanes, amax);
    _mm256_storeu_ps(p, poison);
    float m = 0.0f, pz = 0.0f;
    for (int i = 0; i < 8; i++) {
        if (lanes[i] > m) m = lanes[i];
        pz = pz + p[i];
    }
    int tail_bad;
    float t = wb_absmax_generic(x + j, k - j, &tail_bad);
    *bad = (pz != pz) | tail_bad;
    return t > m ? t : m;
}

/* 8 values: q bytes into the low 8 bytes of the result's two 64-bit halves (packed below). */
WB_AVX2 static inline __m256i wb_round8_avx2(__m256 v, __m256 inv) {
    __m256 t = _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    return _mm256_cvtps_epi32(t);                          /* exact: t is integral */
}

WB_AVX2 static int wb_quant_avx2(const float *x, int64_t k, float inv_s, int8_t *q, uint8_t *a) {
    const __m256 inv = _mm256_set1_ps(inv_s), zero = _mm256_setzero_ps();
    __m256 poison = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        WB_TOUCH(x + j, 128);
        __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
        /* x * 0 is NaN exactly for NaN/Inf x (a sum first could overflow to Inf) */
        poison = _mm256_add_ps(poison, _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(v0, zero), _mm256_mul_ps(v1, zero)),
            _mm256_add_ps(_mm256_mul_ps(v2, zero), _mm256_mul_ps(v3, zero))));
        __m256i i0 = wb_round8_avx2(v0, inv), i1 = wb_round8_avx2(v1, inv);
        __m256i i2 = wb_round8_avx2(v2, inv), i3 = wb_round8_avx2(v3, inv);
        /* packs work per 128-bit lane: fix the order with one permute at the end */
        __m256i s01 = _mm256_packs_epi32(i0, i1), s23 = _mm256_packs_epi32(i2, i3);
        __m256i b = _mm256_packs_epi16(s01, s23);
        b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        wb_store32(q + j, b);
        wb_store32(a + j, _mm256_abs_epi8(b));
    }
    float p[8];
    _mm256_storeu_ps(p, poison);
    float pz = 0.0f;
    for (int i = 0; i < 8; i++) pz = pz + p[i];
    int tail_bad = wb_quant_generic(x + j, k - j, inv_s, WB_ISA_AVX2, q + j, a + j);
    return (pz != pz) | tail_bad;
}

/* ------------------------------------------------------------------ AVX-512 */

#define WB_AVX512 __attribute__((target("avx512f,avx512bw,popcnt")))

WB_AVX512 static float wb_absmax_avx512(const float *x, int64_t k, int *bad) {
    __m512 amax = _mm512_setzero_ps(), poison = _mm512_setzero_ps(), zero = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j += 16) {
        __mmask16 m = k - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - j)) - 1);
        WB_TOUCH(x + j, 4 * (k - j >= 16 ? 16 : k - j));
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        poison = _mm512_add_ps(poison, _mm512_mul_ps(v, zero));
    }
    *bad = _mm512_cmp_ps_mask(poison, poison, _CMP_UNORD_Q) != 0;
    return _mm512_reduce_max_ps(amax);
}

WB_AVX512 static int wb_quant_avx512(const float *x, int64_t k, float inv_s, int8_t *q,
                                     uint8_t *a) {
    const __m512 inv = _mm512_set1_ps(inv_s), zero = _mm512_setzero_ps();
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const __m128i flip = _mm_set1_epi8((char)0x80);          /* q + 128 == q ^ 0x80 as bytes */
    __m512 poison = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j += 16) {
        int64_t n = k - j >= 16 ? 16 : k - j;
        __mmask16 m = (__mmask16)(n == 16 ? 0xffff : (1u << n) - 1);
        WB_TOUCH(x + j, 4 * n);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);          /* lanes past k read as 0 */
        poison = _mm512_add_ps(poison, _mm512_mul_ps(v, zero));
        __m512 t = _mm512_roundscale_ps(_mm512_mul_ps(v, inv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
        __m128i b = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(t));
        /* 16 bytes are written even for a partial last chunk: they stay inside kp (a multiple
         * of 64 >= k) and hold q = 0 for the lanes past k */
        WB_TOUCH(q + j, 16);
        WB_TOUCH(a + j, 16);
        _mm_storeu_si128((__m128i *)(q + j), b);
        _mm_storeu_si128((__m128i *)(a + j), _mm_xor_si128(b, flip));
    }
    return _mm512_cmp_ps_mask(poison, poison, _CMP_UNORD_Q) != 0;
}
#endif /* WB_X86 */

/* ------------------------------------------------------------------ dispatch */

/* absmax of x [k] (and *bad = NaN/Inf present). */
static inline float wb_absmax(int isa, const float *x, int64_t k, int *bad) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) return wb_absmax_avx512(x, k, bad);
    if (isa == WB_ISA_AVX2) return wb_absmax_avx2(x, k, bad);
#endif
    return wb_absmax_generic(x, k, bad);
}

/* q, a [k] from x [k] with the given 127/absmax (or 1/static scale); no padding written. */
static inline int wb_quant_part(int isa, const float *x, int64_t k, float inv, int8_t *q,
                                uint8_t *a) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) {
        /* the 16-byte stores of a partial last chunk may write up to 15 bytes past k: only
         * whole rows (wb_quant_row) call this with such a k; parts are multiples of 64 */
        return wb_quant_avx512(x, k, inv, q, a);
    }
    if (isa == WB_ISA_AVX2) return wb_quant_avx2(x, k, inv, q, a);
#endif
    return wb_quant_generic(x, k, inv, isa, q, a);
}

/* The scale and 127/absmax of a row whose absmax is amax (0 for a zero row). */
static inline void wb_scale_of(float amax, float *scale, float *inv) {
    *scale = amax / 127.0f;
    *inv = amax == 0.0f ? 0.0f : 127.0f / amax;
}

/* Write the padding k..kp-1 of q and a. */
static inline void wb_quant_pad(int isa, int64_t k, int64_t kp, int8_t *q, uint8_t *a) {
    if (kp > k) {
        memset(q + k, 0, (size_t)(kp - k));
        if (isa != WB_ISA_GENERIC) memset(a + k, wb_pad_code(isa), (size_t)(kp - k));
    }
}

/* One token: per-token scale (static_scale < 0) or the static one; q, a [kp] with padding. */
static int wb_quant_row(int isa, const float *x, int64_t k, int64_t kp, float static_scale,
                        float static_inv, int8_t *q, uint8_t *a, float *scale) {
    int bad = 0;
    float inv;
    if (static_scale < 0) {
        float amax = wb_absmax(isa, x, k, &bad);
        if (bad) return 1;
        wb_scale_of(amax, scale, &inv);
    } else {
        *scale = static_scale;
        inv = static_inv;
    }
    bad |= wb_quant_part(isa, x, k, inv, q, a);
    wb_quant_pad(isa, k, kp, q, a);
    return bad;
}

#endif /* WB_QUANT_H */
