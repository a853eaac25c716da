/* The decoder's float math for the native engine (wb_engine.h), written so that it rounds to
 * the same float32 values as the torch reference loop (workbench/llama.py):
 *
 *   RMSNorm   y = w * float(x * r),  r = 1 / sqrt(mean(x^2) + eps)     mean and r in double
 *   RoPE      y = x * cos + rotate_half(x) * sin                       float32, no FMA
 *   SwiGLU    a = float(g * (1 / (1 + exp(-g))) * u)                   double
 *   attention o = float(sum_j p_j v_j),  p = softmax(q.k_j / sqrt(d))  double
 *
 * Per-token INT8 quantization after each of these amplifies a one-ulp difference into a
 * different rounding step (README.md, "Measured so far": 1e-7 input noise changes about 18%
 * of the W8A8 model's greedy tokens), so the engine cannot merely be close to the reference. Reductions and
 * transcendentals run in double on both sides: the two sum in different orders and use
 * different exp implementations, but agree to ~1e-16, and rounding that to float32 gives the
 * same value except within 1e-16 of a rounding boundary. The elementwise float steps are
 * single IEEE operations on both sides and agree exactly.
 *
 * exp: Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, degree-13 Taylor polynomial (Horner,
 * truncation < 1e-17), times 2^k from the exponent bits; within 2 ulp of exp over
 * [-708, 709] (0 below, exp(709) above). The scalar, AVX2 and AVX-512 versions do the same
 * operations in the same order, so they agree bit for bit.
 */
#ifndef WB_MATH_H
#define WB_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "wb_spmm.h"

#define WB_EXP_LO (-708.0)
#define WB_EXP_HI 709.0
#define WB_LOG2E 1.4426950408889634
#define WB_LN2_HI 6.93147180369123816490e-01     /* ln2 with 32 trailing zero bits */
#define WB_LN2_LO 1.90821492927058770002e-10
#define WB_SHIFTER 6755399441055744.0            /* 1.5 * 2^52: x + it rounds x to an integer */

#define WB_EXP_POLY(P, R, MUL, ADD, SET)                                                    \
    P = SET(1.0 / 6227020800.0);                                                            \
    P = ADD(MUL(P, R), SET(1.0 / 479001600.0));                                             \
    P = ADD(MUL(P, R), SET(1.0 / 39916800.0));                                              \
    P = ADD(MUL(P, R), SET(1.0 / 3628800.0));                                               \
    P = ADD(MUL(P, R), SET(1.0 / 362880.0));                                                \
    P = ADD(MUL(P, R), SET(1.0 / 40320.0));                                                 \
    P = ADD(MUL(P, R), SET(1.0 / 5040.0));                                                  \
    P = ADD(MUL(P, R), SET(1.0 / 720.0));                                                   \
    P = ADD(MUL(P, R), SET(1.0 / 120.0));                                                   \
    P = ADD(MUL(P, R), SET(1.0 / 24.0));                                                    \
    P = ADD(MUL(P, R), SET(1.0 / 6.0));                                                     \
    P = ADD(MUL(P, R), SET(0.5));                                                           \
    P = ADD(MUL(P, R), SET(1.0));                                                           \
    P = ADD(MUL(P, R), SET(1.0));

#define WB_S_MUL(a, b) ((a) * (b))
#define WB_S_ADD(a, b) ((a) + (b))
#define WB_S_SET(a) (a)

static inline double wb_exp(double x) {
    if (x < WB_EXP_LO) return 0.0;
    if (x > WB_EXP_HI) x = WB_EXP_HI;                 /* NaN stays NaN */
    double t = x * WB_LOG2E + WB_SHIFTER, sh = WB_SHIFTER;
    double k = t - WB_SHIFTER;
    int64_t tb, sb;
    memcpy(&tb, &t, 8);
    memcpy(&sb, &sh, 8);
    double r = (x - k * WB_LN2_HI) - k * WB_LN2_LO;
    double p;
    WB_EXP_POLY(p, r, WB_S_MUL, WB_S_ADD, WB_S_SET)
    int64_t eb = ((tb - sb) + 1023) << 52;
    double scale;
    memcpy(&scale, &eb, 8);
    return p * scale;
}

#if WB_X86
WB_AVX2 static inline __m256d wb_exp4(__m256d x) {
    __m256d low = _mm256_cmp_pd(x, _mm256_set1_pd(WB_EXP_LO), _CMP_LT_OQ);
    x = _mm256_min_pd(_mm256_set1_pd(WB_EXP_HI), x);  /* min(a, NaN) = NaN */
    __m256d sh = _mm256_set1_pd(WB_SHIFTER);
    __m256d t = _mm256_add_pd(_mm256_mul_pd(x, _mm256_set1_pd(WB_LOG2E)), sh);
    __m256d k = _mm256_sub_pd(t, sh);
    __m256d r = _mm256_sub_pd(_mm256_sub_pd(x, _mm256_mul_pd(k, _mm256_set1_pd(WB_LN2_HI))),
                              _mm256_mul_pd(k, _mm256_set1_pd(WB_LN2_LO)));
    __m256d p;
    WB_EXP_POLY(p, r, _mm256_mul_pd, _mm256_add_pd, _mm256_set1_pd)
    __m256i ki = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(sh));
    __m256i eb = _mm256_slli_epi64(_mm256_add_epi64(ki, _mm256_set1_epi64x(1023)), 52);
    return _mm256_andnot_pd(low, _mm256_mul_pd(p, _mm256_castsi256_pd(eb)));
}

#define WB_AVX512F __attribute__((target("avx512f,avx512bw,avx512dq,avx2,fma,popcnt")))

WB_AVX512F static inline __m512d wb_exp8(__m512d x) {
    __mmask8 low = _mm512_cmp_pd_mask(x, _mm512_set1_pd(WB_EXP_LO), _CMP_LT_OQ);
    x = _mm512_min_pd(_mm512_set1_pd(WB_EXP_HI), x);
    __m512d sh = _mm512_set1_pd(WB_SHIFTER);
    __m512d t = _mm512_add_pd(_mm512_mul_pd(x, _mm512_set1_pd(WB_LOG2E)), sh);
    __m512d k = _mm512_sub_pd(t, sh);
    __m512d r = _mm512_sub_pd(_mm512_sub_pd(x, _mm512_mul_pd(k, _mm512_set1_pd(WB_LN2_HI))),
                              _mm512_mul_pd(k, _mm512_set1_pd(WB_LN2_LO)));
    __m512d p;
    WB_EXP_POLY(p, r, _mm512_mul_pd, _mm512_add_pd, _mm512_set1_pd)
    __m512i ki = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(sh));
    __m512i eb = _mm512_slli_epi64(_mm512_add_epi64(ki, _mm512_set1_epi64(1023)), 52);
    return _mm512_maskz_mov_pd((__mmask8)~low, _mm512_mul_pd(p, _mm512_castsi512_pd(eb)));
}
#endif

#if WB_X86
WB_AVX512F static int64_t wb_exp_array_avx512(double *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm512_storeu_pd(x + i, wb_exp8(_mm512_loadu_pd(x + i)));
    return i;
}

WB_AVX2 static int64_t wb_exp_array_avx2(double *x, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, wb_exp4(_mm256_loadu_pd(x + i)));
    return i;
}
#endif

/* x[i] = exp(x[i]) in place, n values (the vector paths leave the tail to the scalar one). */
static void wb_exp_array(int isa, double *x, int64_t n) {
    int64_t i = 0;
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) i = wb_exp_array_avx512(x, n);
    else if (isa == WB_ISA_AVX2) i = wb_exp_array_avx2(x, n);
#endif
    for (; i < n; i++) x[i] = wb_exp(x[i]);
}

/* ------------------------------------------------------------------ RMSNorm, RoPE, SwiGLU */

/* y [n] = w * float(x * r), r = 1 / sqrt(mean(x^2) + eps), mean and r in double. */
static void wb_rms_norm(const float *x, const float *w, int64_t n, double eps, float *y) {
    double ss = 0.0;
    for (int64_t j = 0; j < n; j++) ss += (double)x[j] * (double)x[j];
    double r = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t j = 0; j < n; j++) y[j] = w[j] * (float)((double)x[j] * r);
}

/* One head [hd] rotated in place by the position's cos/sin rows (transformers' rotate-half
 * layout): y_d = x_d c_d - x_{d+h} s_d (d < h), x_d c_d + x_{d-h} s_d (d >= h). */
static void wb_rope(float *x, const float *c, const float *s, int64_t hd) {
    float tmp[512];
    int64_t h = hd / 2;
    memcpy(tmp, x, (size_t)hd * sizeof(float));
    for (int64_t d = 0; d < h; d++) x[d] = tmp[d] * c[d] - tmp[d + h] * s[d];
    for (int64_t d = h; d < hd; d++) x[d] = tmp[d] * c[d] + tmp[d - h] * s[d];
}

/* a[i] = float(g * (1 / (1 + exp(-g))) * u) for i in [i0, i1), in double; tmp: [i1 - i0]. */
static void wb_swiglu(int isa, const float *g, const float *u, int64_t i0, int64_t i1,
                      float *a, double *tmp) {
    int64_t n = i1 - i0;
    for (int64_t i = 0; i < n; i++) tmp[i] = -(double)g[i0 + i];
    wb_exp_array(isa, tmp, n);
    for (int64_t i = 0; i < n; i++) {
        double gd = (double)g[i0 + i];
        a[i0 + i] = (float)(gd * (1.0 / (1.0 + tmp[i])) * (double)u[i0 + i]);
    }
}

/* ------------------------------------------------------------------ attention */

/* One query head over the cached keys/values [S, hd] of its KV head, S = self + 1: keys j
 * with kmask[j] (kmask NULL: every j) and the query's own slot `self` are attended.
 * o [hd] = float(sum_j e_j v_j / sum_j e_j), e_j = exp(s_j - max s), s_j = (q . k_j) / sqrt(hd).
 * qd [hd], acc [hd] and sc [S] are double scratch. The portable path, and the reference
 * arithmetic of the vector one below. */
static void wb_attend(int isa, const float *q, const float *keys, const float *values,
                      int64_t hd, int64_t self, const uint8_t *kmask, double *qd, double *sc,
                      double *acc, float *o) {
    int64_t S = self + 1;
    double scale = 1.0 / sqrt((double)hd), m = -INFINITY;
    for (int64_t d = 0; d < hd; d++) qd[d] = (double)q[d];
    int64_t first = 0;
    if (kmask) while (first < self && !kmask[first]) first++;   /* left padding: a prefix */
    for (int64_t j = first; j < S; j++) {
        if (kmask && !kmask[j] && j != self) { sc[j] = -INFINITY; continue; }
        const float *k = keys + j * hd;
        double s = 0.0;
        for (int64_t d = 0; d < hd; d++) s += qd[d] * (double)k[d];
        sc[j] = s * scale;
        if (sc[j] > m) m = sc[j];
    }
    for (int64_t j = first; j < S; j++) sc[j] = sc[j] - m;
    wb_exp_array(isa, sc + first, S - first);        /* exp(-inf) = 0 for masked slots */
    double l = 0.0;
    for (int64_t d = 0; d < hd; d++) acc[d] = 0.0;
    for (int64_t j = first; j < S; j++) {
        double e = sc[j];
        if (e == 0.0) continue;
        l += e;
        const float *v = values + j * hd;
        for (int64_t d = 0; d < hd; d++) acc[d] += e * (double)v[d];
    }
    for (int64_t d = 0; d < hd; d++) o[d] = (float)(acc[d] / l);
}

#if WB_X86
/* G query heads of one KV head (G <= 3, consecutive in q and o) at once, head_dim 8 * NC:
 * each key and value row is loaded and widened to double once for all G queries, and the
 * G x NC accumulators of sum_j e_j v_j stay in registers. Same arithmetic as wb_attend. */
#define WB_ATT_MAXG 3
WB_AVX512F static inline __attribute__((always_inline)) void wb_attend_vec(
        const int NC, const int G, const float *q, const float *keys, const float *values,
        int64_t self, const uint8_t *kmask, double *sc, float *o) {
    const int64_t hd = 8 * NC, S = self + 1;
    const double scale = 1.0 / sqrt((double)hd);
    __m512d qd[WB_ATT_MAXG][16];
    double m[WB_ATT_MAXG];
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        for (int c = 0; c < NC; c++) qd[g][c] = _mm512_cvtps_pd(_mm256_loadu_ps(q + g * hd + 8 * c));
    }
    int64_t first = 0;
    if (kmask) while (first < self && !kmask[first]) first++;
    for (int64_t j = first; j < S; j++) {
        if (kmask && !kmask[j] && j != self) {
            for (int g = 0; g < G; g++) sc[g * S + j] = -INFINITY;
            continue;
        }
        const float *k = keys + j * hd;
        WB_TOUCH(k, 4 * hd);
        __m512d kc[16];
        for (int c = 0; c < NC; c++) kc[c] = _mm512_cvtps_pd(_mm256_loadu_ps(k + 8 * c));
        for (int g = 0; g < G; g++) {
            __m512d a0 = _mm512_mul_pd(qd[g][0], kc[0]), a1 = _mm512_mul_pd(qd[g][1], kc[1]);
            for (int c = 2; c < NC; c += 2) {
                a0 = _mm512_fmadd_pd(qd[g][c], kc[c], a0);
                a1 = _mm512_fmadd_pd(qd[g][c + 1], kc[c + 1], a1);
            }
            double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1)) * scale;
            sc[g * S + j] = s;
            if (s > m[g]) m[g] = s;
        }
    }
    for (int g = 0; g < G; g++) {
        double *row = sc + g * S;
        for (int64_t j = first; j < S; j++) row[j] = row[j] - m[g];
        int64_t i = first + wb_exp_array_avx512(row + first, S - first);
        for (; i < S; i++) row[i] = wb_exp(row[i]);
    }
    __m512d acc[WB_ATT_MAXG][16];
    double l[WB_ATT_MAXG];
    for (int g = 0; g < G; g++) {
        l[g] = 0.0;
        for (int c = 0; c < NC; c++) acc[g][c] = _mm512_setzero_pd();
    }
    for (int64_t j = first; j < S; j++) {
        const float *v = values + j * hd;
        WB_TOUCH(v, 4 * hd);
        __m512d e[WB_ATT_MAXG];
        for (int g = 0; g < G; g++) {
            l[g] += sc[g * S + j];
            e[g] = _mm512_set1_pd(sc[g * S + j]);
        }
        for (int c = 0; c < NC; c++) {
            __m512d vc = _mm512_cvtps_pd(_mm256_loadu_ps(v + 8 * c));
            for (int g = 0; g < G; g++) acc[g][c] = _mm512_fmadd_pd(e[g], vc, acc[g][c]);
        }
    }
    for (int g = 0; g < G; g++) {
        __m512d lv = _mm512_set1_pd(l[g]);
        for (int c = 0; c < NC; c++)
            _mm256_storeu_ps(o + g * hd + 8 * c, _mm512_cvtpd_ps(_mm512_div_pd(acc[g][c], lv)));
    }
}

#define WB_ATT_FN(NC, G) WB_AVX512F static void wb_attend_##NC##_##G(                        \
        const float *q, const float *k, const float *v, int64_t self, const uint8_t *km,      \
        double *sc, float *o) { wb_attend_vec(NC, G, q, k, v, self, km, sc, o); }
WB_ATT_FN(8, 1) WB_ATT_FN(8, 2) WB_ATT_FN(8, 3) WB_ATT_FN(16, 1)
#endif

/* G (<= WB_ATT_GROUP) consecutive query heads of one KV head. tmp: double scratch of
 * 2 * hd + G * (self + 1) values. */
#define WB_ATT_GROUP 3
static void wb_attend_heads(int isa, int G, const float *q, const float *keys,
                            const float *values, int64_t hd, int64_t self,
                            const uint8_t *kmask, double *tmp, float *o) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI && (hd == 64 || (hd == 128 && G == 1))) {
        double *sc = tmp;
        if (hd == 128) { wb_attend_16_1(q, keys, values, self, kmask, sc, o); return; }
        if (G == 3) { wb_attend_8_3(q, keys, values, self, kmask, sc, o); return; }
        if (G == 2) { wb_attend_8_2(q, keys, values, self, kmask, sc, o); return; }
        if (G == 1) { wb_attend_8_1(q, keys, values, self, kmask, sc, o); return; }
    }
#endif
    for (int g = 0; g < G; g++)
        wb_attend(isa, q + g * hd, keys, values, hd, self, kmask, tmp, tmp + 2 * hd, tmp + hd,
                  o + g * hd);
}

#endif /* WB_MATH_H */
