/* One Linear layer as the kernels and the decode engine see it (wb_lin), and the share of its
 * output rows one thread of a parallel region computes.
 *
 *   y[t, r] = ((float)acc[t, r] * sx[t]) * w_scale[r] + bias[r]     INT8 (dense or sparse)
 *   y[t, r] = sum_k x[t, k] * w[r, k] + bias[r]                     FP32
 *
 * with acc the exact int32 sum of xq[t, k] * q[r, k] (the VNNI path's +128 shift undone by
 * 128 * rowsum[r]). No step fuses a multiply and an add (setup.py builds with
 * -ffp-contract=off), so every path and the NumPy reference round alike. `accumulate` adds the
 * result to y instead (the decoder's residual adds: h + f, the order torch uses).
 *
 * Threads split the output rows: wb_lin_split gives thread `tid` of `nth` a contiguous range,
 * balanced by the bytes its rows stream at batch 1 (sparse rows differ in nonzeros) and in
 * whole tiles (32 rows VNNI, 2 rows otherwise) for batches. A thread's rows never overlap
 * another's, so no synchronisation is needed inside a layer.
 *
 *   batch 1, INT8  : one dot per row straight from the packed format (wb_spmm.h)
 *   batch n, VNNI  : 32-row tiles against pre-packed activations (wb_gemm.h)
 *   batch n, other : two rows expanded into scratch, 2 x 4 register tiles over token blocks
 *   FP32           : float dot per (row, token), same order whatever the batch
 */
#ifndef WB_LINEAR_H
#define WB_LINEAR_H

#include <stdint.h>
#include <string.h>

#include "wb_common.h"
#include "wb_spmm.h"
#include "wb_gemm.h"
#include "wb_quant.h"

enum { WB_LIN_DENSE = 0, WB_LIN_SPARSE = 1, WB_LIN_FP32 = 2 };

/* VNNI batches of at most this many tokens use row-pair dots, larger ones 32-row tiles. */
#define WB_ROWDOT_MAX 16

typedef struct {
    int kind;
    int64_t rows, in_features, kp, words;     /* kp = 64 * words >= in_features */
    const int8_t *wd;                         /* DENSE  [rows, kp] */
    const uint64_t *mask;                     /* SPARSE [rows, words] */
    const int8_t *vals;                       /* SPARSE [nnz + 64] */
    const int64_t *row_ptr;                   /* SPARSE [rows + 1] */
    const int32_t *rowsum;                    /* INT8   [rows] */
    const float *w_scale;                     /* INT8   [rows] */
    const float *wf;                          /* FP32   [rows, in_features] */
    const float *bias;                        /* [rows] or NULL */
    float static_scale, static_inv;           /* INT8: static_scale < 0 = per token */
} wb_lin;

/* A linear's input for n tokens: row-major quantized (q, a; ld = kp), the VNNI-packed copy
 * (xp, for batches on that path), their scales s, and the float input f (FP32 layers). */
typedef struct {
    const int8_t *q;
    const uint8_t *a;
    const uint8_t *xp;
    const float *s;
    int64_t ld;
    const float *f;
    int64_t ldf;
} wb_act;

/* Scratch one thread needs for a batch on this linear. */
static inline int64_t wb_lin_scratch(int64_t kp) {
    return WB_TILE_ROWS * kp + 64 * 2 * (int64_t)sizeof(int32_t) + 256;
}

/* Tokens per block of the non-VNNI batch path: a multiple of 4 whose q + a fit ~192 KiB. */
static inline int64_t wb_token_block(int64_t kp) {
    int64_t block = kp ? 196608 / (2 * kp) : 4;
    return block >= 8 ? 4 * (block / 4) : 4;
}

static inline int wb_lin_is_int8(const wb_lin *L) { return L->kind != WB_LIN_FP32; }

/* ------------------------------------------------------------------ row partition */

/* Bytes rows 0..r-1 stream at batch 1 (sparse): values + masks + per-row scale/sum/offset. */
static inline int64_t wb_row_bytes(const wb_lin *L, int64_t r) {
    return L->row_ptr[r] + r * (8 * L->words + 16);
}

/* Rows [*r0, *r1) of thread tid of nth for a call on n tokens. */
static void wb_lin_split(const wb_lin *L, int isa, int64_t n, int tid, int nth,
                         int64_t *r0, int64_t *r1) {
    int64_t rows = L->rows;
    if (nth <= 1) { *r0 = 0; *r1 = rows; return; }
    if (L->kind == WB_LIN_SPARSE && n == 1) {
        int64_t total = wb_row_bytes(L, rows);
        int64_t bounds[2];
        for (int e = 0; e < 2; e++) {
            int64_t target = total / nth * (tid + e) + (total % nth) * (tid + e) / nth;
            int64_t lo = 0, hi = rows;                /* first r with bytes(r) >= target */
            while (lo < hi) {
                int64_t mid = (lo + hi) / 2;
                if (wb_row_bytes(L, mid) < target) lo = mid + 1; else hi = mid;
            }
            bounds[e] = lo;
        }
        *r0 = bounds[0];
        *r1 = tid == nth - 1 ? rows : bounds[1];
        return;
    }
    int64_t unit = n == 1 || L->kind == WB_LIN_FP32 ? 1
                 : isa == WB_ISA_AVX512VNNI && n > WB_ROWDOT_MAX ? WB_TILE_ROWS : 2;
    int64_t units = (rows + unit - 1) / unit;
    int64_t u0 = units * tid / nth, u1 = units * (tid + 1) / nth;
    *r0 = u0 * unit < rows ? u0 * unit : rows;
    *r1 = u1 * unit < rows ? u1 * unit : rows;
}

/* ------------------------------------------------------------------ finish */

static inline void wb_finish(const wb_lin *L, int32_t a, int vnni, int64_t r, float sx,
                             float *y, int accumulate, int32_t *acc) {
    if (vnni) a = a - 128 * L->rowsum[r];            /* undo the +128 shift of the activations */
    if (acc) *acc = a;
    float f = ((float)a * sx) * L->w_scale[r];
    if (L->bias) f = f + L->bias[r];
    *y = accumulate ? *y + f : f;
}

/* ------------------------------------------------------------------ INT8 paths */

#if WB_X86
/* Batch 1 on the VNNI path, four rows at a time. One row alone left the core mostly idle
 * (measured 25 ns per 576-column row, hot in cache, for dense and sparse alike): its dot is a
 * short chain of vpdpbusd and a 16-lane horizontal sum, then a scalar rescale. Four rows give
 * four independent chains per 64-column block, one combined 4 x 16 -> 4 reduction (unpack +
 * add, 10 instructions instead of 32), and a 4-wide vector rescale in the same operation order
 * as wb_finish. Values and masks of the next rows are prefetched WB_PF_VALS ahead (DRAM
 * streams: the batch-1 note in wb_spmm.h). */
#ifndef WB_PF_BPB1               /* packed bytes per block per row from which short rows */
#define WB_PF_BPB1 40            /* prefetch every block ... */
#endif
#ifndef WB_PF_BPB2
#define WB_PF_BPB2 20            /* ... and every 2 blocks; below, every 4 */
#endif
#ifndef WB_PF_DENSE
#define WB_PF_DENSE 8192
#endif
WB_VNNI static inline __m128i wb_reduce4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    /* each 128-bit lane: [a0, a1, a2, a3] partial sums */
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

WB_VNNI static void wb_gemv4_vnni(const wb_lin *L, const wb_act *x, int64_t r, float *y,
                                  int accumulate, int32_t *acc) {
    const int64_t words = L->words;
    const uint8_t *xu = x->a;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    if (L->kind == WB_LIN_SPARSE) {
        const uint64_t *m = L->mask + r * words;
        const int8_t *p0 = L->vals + L->row_ptr[r], *p1 = L->vals + L->row_ptr[r + 1];
        const int8_t *p2 = L->vals + L->row_ptr[r + 2], *p3 = L->vals + L->row_ptr[r + 3];
        /* Prefetch, chosen by row length from a measured sweep (one run, rotating matrices
         * 4x the LLC, 70%): rows of <= 6144 columns prefetch a line of each row 8 KiB ahead
         * every 4 blocks (28-30 GB/s at 4096 columns, against 23-24 for the alternative);
         * longer rows prefetch the whole next span of the group 4 KiB ahead once (14 GB/s at
         * 11008 columns, against 12.6). */
        const int long_rows = words > 96;
        /* Short rows prefetch one line per row every 1, 2 or 4 blocks, so that the lines
         * prefetched keep up with the bytes the rows consume (64 x density per block): one
         * line every 4 blocks covered 70% (19 bytes a block) but only half of 50% (32 bytes a
         * block), whose dot then ran at a third of 70%'s speed per block. */
        const int64_t bpb = (L->row_ptr[r + 4] - L->row_ptr[r]) / (4 * words);
        const int64_t pf_mask = bpb >= WB_PF_BPB1 ? 0 : bpb >= WB_PF_BPB2 ? 1 : 3;
        if (long_rows) {
            for (const int8_t *pf = p0 + 4096; pf < L->vals + L->row_ptr[r + 4] + 4096; pf += 64)
                WB_PREFETCH(pf);
            for (int64_t w = 0; w < 4 * words; w += 8) WB_PREFETCH(m + 4 * WB_PF_MASK_WORDS + w);
        }
        for (int64_t b = 0; b < words; b++) {
            uint64_t m0 = m[b], m1 = m[words + b], m2 = m[2 * words + b], m3 = m[3 * words + b];
            if (!long_rows && (b & pf_mask) == 0) {
                WB_PREFETCH(p0 + 8192); WB_PREFETCH(p1 + 8192);
                WB_PREFETCH(p2 + 8192); WB_PREFETCH(p3 + 8192);
                WB_PREFETCH(p3 + (p3 - p0) + 8192);
            }
            if (!long_rows && (b & 3) == 0) {
                WB_PREFETCH(m + 4 * words + b); WB_PREFETCH(m + 5 * words + b);
                WB_PREFETCH(m + 6 * words + b); WB_PREFETCH(m + 7 * words + b);
            }
            __m512i xv = wb_load64(xu + 64 * b);
            a0 = _mm512_dpbusd_epi32(a0, xv, wb_expandload64(m0, p0));
            a1 = _mm512_dpbusd_epi32(a1, xv, wb_expandload64(m1, p1));
            a2 = _mm512_dpbusd_epi32(a2, xv, wb_expandload64(m2, p2));
            a3 = _mm512_dpbusd_epi32(a3, xv, wb_expandload64(m3, p3));
            p0 += wb_popcount64(m0);
            p1 += wb_popcount64(m1);
            p2 += wb_popcount64(m2);
            p3 += wb_popcount64(m3);
        }
    } else {
        const int8_t *w = L->wd + r * L->kp;
        const int64_t kp = L->kp;
        for (const int8_t *pf = w + WB_PF_DENSE; pf < w + 4 * kp + WB_PF_DENSE; pf += 64)
            WB_PREFETCH(pf);
        for (int64_t k = 0; k < kp; k += 64) {
            __m512i xv = wb_load64(xu + k);
            a0 = _mm512_dpbusd_epi32(a0, xv, wb_load64(w + k));
            a1 = _mm512_dpbusd_epi32(a1, xv, wb_load64(w + kp + k));
            a2 = _mm512_dpbusd_epi32(a2, xv, wb_load64(w + 2 * kp + k));
            a3 = _mm512_dpbusd_epi32(a3, xv, wb_load64(w + 3 * kp + k));
        }
    }
    __m128i a = _mm_sub_epi32(wb_reduce4(a0, a1, a2, a3),
                              _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(L->rowsum + r)), 7));
    if (acc) _mm_storeu_si128((__m128i *)(acc + r), a);
    __m128 f = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(a), _mm_set1_ps(x->s[0])),
                          _mm_loadu_ps(L->w_scale + r));
    if (L->bias) f = _mm_add_ps(f, _mm_loadu_ps(L->bias + r));
    if (accumulate) f = _mm_add_ps(_mm_loadu_ps(y + r), f);
    _mm_storeu_ps(y + r, f);
}
#endif

static void wb_int8_gemv(const wb_lin *L, int isa, const wb_act *x, int64_t r0, int64_t r1,
                         float *y, int accumulate, int32_t *acc) {
    int vnni = isa == WB_ISA_AVX512VNNI;
    int64_t r = r0;
#if WB_X86
    if (vnni)
        for (; r + 4 <= r1; r += 4) wb_gemv4_vnni(L, x, r, y, accumulate, acc);
#endif
    for (; r < r1; r++) {
        int32_t a = L->kind == WB_LIN_SPARSE
            ? wb_sparse_dot(isa, L->mask + r * L->words, L->vals + L->row_ptr[r], L->words,
                            x->q, x->a)
            : wb_dense_dot(isa, L->wd + r * L->kp, x->q, x->a, L->kp);
        wb_finish(L, a, vnni, r, x->s[0], y + r, accumulate, acc ? acc + r : NULL);
    }
}

#if WB_X86
/* Batches up to WB_ROWDOT_MAX tokens: a 32-row tile would be built for too few tokens to pay
 * for its transposes, so two rows are decoded straight into registers (as the batch-1 dot)
 * and each 64-column block of them meets up to 12 tokens: 2 expand-loads, 12 activation loads
 * and 24 vpdpbusd per block, one horizontal sum per (row, token) at the end. Activations come
 * packed by 64-column blocks (wb_pack_token_blocks). */
#define WB_RD_DECL(t) __m512i d0_##t = _mm512_setzero_si512(), d1_##t = _mm512_setzero_si512();
#define WB_RD_STEP(t) { __m512i x_ = wb_load64(xk + 64 * (t));                              \
        d0_##t = _mm512_dpbusd_epi32(d0_##t, x_, w0);                                      \
        d1_##t = _mm512_dpbusd_epi32(d1_##t, x_, w1); }
#define WB_RD_DONE(t) {                                                                     \
        int32_t a0_ = _mm512_reduce_add_epi32(d0_##t), a1_ = _mm512_reduce_add_epi32(d1_##t); \
        wb_finish(L, a0_, 1, r, sx[t], y + (t) * ldy + r, accumulate,                       \
                  acc ? acc + (t) * ldacc + r : NULL);                                      \
        if (two) wb_finish(L, a1_, 1, r + 1, sx[t], y + (t) * ldy + r + 1, accumulate,      \
                           acc ? acc + (t) * ldacc + r + 1 : NULL); }
#define WB_DEFINE_ROWDOT(NT)                                                                \
WB_VNNI static void wb_vnni_rows2_##NT(const wb_lin *L, int64_t r, int two, const uint8_t *xb, \
                                       const float *sx, float *y, int64_t ldy,              \
                                       int accumulate, int32_t *acc, int64_t ldacc) {       \
    WB_REP##NT(WB_RD_DECL)                                                                  \
    int64_t words = L->words, r1 = two ? r + 1 : r;                                         \
    const uint64_t *m0 = L->mask ? L->mask + r * words : NULL;                              \
    const uint64_t *m1 = L->mask ? L->mask + r1 * words : NULL;                             \
    const int8_t *p0 = L->vals ? L->vals + L->row_ptr[r] : L->wd + r * L->kp;               \
    const int8_t *p1 = L->vals ? L->vals + L->row_ptr[r1] : L->wd + r1 * L->kp;             \
    int sparse = L->kind == WB_LIN_SPARSE;                                                  \
    for (int64_t b = 0; b < words; b++) {                                                   \
        __m512i w0, w1;                                                                     \
        if (sparse) {                                                                       \
            w0 = wb_expandload64(m0[b], p0);                                                \
            p0 += wb_popcount64(m0[b]);                                                     \
            w1 = wb_expandload64(m1[b], p1);                                                \
            p1 += wb_popcount64(m1[b]);                                                     \
        } else {                                                                            \
            w0 = wb_load64(p0 + 64 * b);                                                    \
            w1 = wb_load64(p1 + 64 * b);                                                    \
        }                                                                                   \
        const uint8_t *xk = xb + b * 64 * WB_TILE_TOKENS;                                   \
        WB_REP##NT(WB_RD_STEP)                                                              \
    }                                                                                       \
    WB_REP##NT(WB_RD_DONE)                                                                  \
}
WB_DEFINE_ROWDOT(1) WB_DEFINE_ROWDOT(2) WB_DEFINE_ROWDOT(3) WB_DEFINE_ROWDOT(4)
WB_DEFINE_ROWDOT(5) WB_DEFINE_ROWDOT(6) WB_DEFINE_ROWDOT(7) WB_DEFINE_ROWDOT(8)
WB_DEFINE_ROWDOT(9) WB_DEFINE_ROWDOT(10) WB_DEFINE_ROWDOT(11) WB_DEFINE_ROWDOT(12)

WB_VNNI static void wb_int8_rowdot_vnni(const wb_lin *L, const wb_act *x, int64_t n, int64_t r0,
                                        int64_t r1, float *y, int64_t ldy, int accumulate,
                                        int32_t *acc, int64_t ldacc) {
    for (int64_t r = r0; r < r1; r += 2) {
        int two = r + 1 < r1;
        for (int64_t t0 = 0; t0 < n; t0 += WB_TILE_TOKENS) {
            int64_t nt = n - t0 < WB_TILE_TOKENS ? n - t0 : WB_TILE_TOKENS;
            const uint8_t *xc = x->xp + (t0 / WB_TILE_TOKENS) * L->kp * WB_TILE_TOKENS;
            float *yc = y + t0 * ldy;
            int32_t *ac = acc ? acc + t0 * ldacc : NULL;
#define WB_RD(K) case K: wb_vnni_rows2_##K(L, r, two, xc, x->s + t0, yc, ldy, accumulate, ac, ldacc); break;
            switch (nt) {
                WB_RD(1) WB_RD(2) WB_RD(3) WB_RD(4) WB_RD(5) WB_RD(6)
                WB_RD(7) WB_RD(8) WB_RD(9) WB_RD(10) WB_RD(11) WB_RD(12)
                default: break;
            }
#undef WB_RD
        }
    }
}

WB_VNNI static void wb_int8_gemm_vnni(const wb_lin *L, const wb_act *x, int64_t n, int64_t r0,
                                      int64_t r1, float *y, int64_t ldy, int accumulate,
                                      int32_t *acc, int64_t ldacc, int8_t *scratch) {
    const int8_t *vrow[WB_TILE_ROWS];
    wb_tile_rows rows;
    if (n <= WB_ROWDOT_MAX) {
        wb_int8_rowdot_vnni(L, x, n, r0, r1, y, ldy, accumulate, acc, ldacc);
        return;
    }
    for (int64_t rb = r0; rb < r1; rb += WB_TILE_ROWS) {
        int64_t nr = r1 - rb < WB_TILE_ROWS ? r1 - rb : WB_TILE_ROWS;
        for (int64_t i = 0; i < WB_TILE_ROWS; i++) {
            int valid = i < nr;
            rows.shift[i] = valid ? 128 * L->rowsum[rb + i] : 0;
            rows.scale[i] = valid ? L->w_scale[rb + i] : 0.0f;
            rows.bias[i] = valid && L->bias ? L->bias[rb + i] : 0.0f;
            if (valid && L->kind == WB_LIN_SPARSE) vrow[i] = L->vals + L->row_ptr[rb + i];
        }
        rows.has_bias = L->bias != NULL;
        rows.n = nr;
        wb_vnni_tile(L->kind == WB_LIN_SPARSE, L->mask ? L->mask + rb * L->words : NULL, vrow,
                     L->wd ? L->wd + rb * L->kp : NULL, nr, L->words, scratch);
        wb_vnni_tokens(scratch, x->xp, n, L->kp, &rows, x->s, y + rb, ldy, accumulate,
                       acc ? acc + rb : NULL, ldacc);
    }
}
#endif

/* Token blocks (activations L2-resident) x row pairs expanded into scratch, 2 x 4 tiles. */
static void wb_int8_gemm_pairs(const wb_lin *L, int isa, const wb_act *x, int64_t n, int64_t r0,
                               int64_t r1, float *y, int64_t ldy, int accumulate, int32_t *acc,
                               int64_t ldacc, int8_t *scratch) {
    int64_t kp = L->kp, block = wb_token_block(kp);
    int32_t *tile = (int32_t *)(scratch + 2 * kp);            /* [2, 64] */
    for (int64_t t0 = 0; t0 < n; t0 += block) {
        int64_t nb = n - t0 < block ? n - t0 : block;
        for (int64_t r = r0; r < r1; r += 2) {
            const int8_t *w0, *w1;
            int two = r + 1 < r1;
            if (L->kind == WB_LIN_SPARSE) {
                wb_expand(isa, L->mask + r * L->words, L->vals + L->row_ptr[r], L->words, scratch);
                if (two)
                    wb_expand(isa, L->mask + (r + 1) * L->words, L->vals + L->row_ptr[r + 1],
                              L->words, scratch + kp);
                else
                    memset(scratch + kp, 0, (size_t)kp);
                w0 = scratch;
                w1 = scratch + kp;
            } else {
                w0 = L->wd + r * kp;
                w1 = two ? w0 + kp : w0;
            }
            for (int64_t t1 = 0; t1 < nb; t1 += 64) {
                int64_t nc = nb - t1 < 64 ? nb - t1 : 64;
                int64_t t = t0 + t1;
                wb_dense_rows2(isa, w0, w1, x->q + t * kp, x->a + t * kp, nc, kp, tile, 2);
                for (int64_t j = 0; j < nc; j++) {
                    int vnni = isa == WB_ISA_AVX512VNNI;
                    wb_finish(L, tile[2 * j], vnni, r, x->s[t + j], y + (t + j) * ldy + r,
                              accumulate, acc ? acc + (t + j) * ldacc + r : NULL);
                    if (two)
                        wb_finish(L, tile[2 * j + 1], vnni, r + 1, x->s[t + j],
                                  y + (t + j) * ldy + r + 1, accumulate,
                                  acc ? acc + (t + j) * ldacc + r + 1 : NULL);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ FP32 */

static float wb_fdot_generic(const float *w, const float *x, int64_t k) {
    float lanes[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= k; j += 8)
        for (int i = 0; i < 8; i++) lanes[i] = lanes[i] + w[j + i] * x[j + i];
    float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; j < k; j++) s = s + w[j] * x[j];
    return s;
}

#if WB_X86
/* Same lane order as the generic dot: 8 partial sums, combined pairwise, then the tail. */
WB_AVX2 static float wb_fdot_avx2(const float *w, const float *x, int64_t k) {
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        WB_TOUCH(w + j, 32);
        WB_TOUCH(x + j, 32);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j)));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; j < k; j++) s = s + w[j] * x[j];
    return s;
}
#endif

static inline float wb_fdot(int isa, const float *w, const float *x, int64_t k) {
#if WB_X86
    if (isa != WB_ISA_GENERIC) return wb_fdot_avx2(w, x, k);     /* every x86 path has AVX2 */
#endif
    return wb_fdot_generic(w, x, k);
}

static void wb_fp32_rows(const wb_lin *L, int isa, const wb_act *x, int64_t n, int64_t r0,
                         int64_t r1, float *y, int64_t ldy, int accumulate) {
    for (int64_t r = r0; r < r1; r++) {
        const float *w = L->wf + r * L->in_features;
        for (int64_t t = 0; t < n; t++) {
            float f = wb_fdot(isa, w, x->f + t * x->ldf, L->in_features);
            if (L->bias) f = f + L->bias[r];
            float *dst = y + t * ldy + r;
            *dst = accumulate ? *dst + f : f;
        }
    }
}

/* ------------------------------------------------------------------ one thread's rows */

/* Rows [r0, r1) of y [n, ldy] (column r of y is output row r of L) for n tokens. */
static void wb_lin_rows(const wb_lin *L, int isa, const wb_act *x, int64_t n, int64_t r0,
                        int64_t r1, float *y, int64_t ldy, int accumulate, int32_t *acc,
                        int64_t ldacc, int8_t *scratch) {
    if (r0 >= r1 || n == 0) return;
    if (L->kind == WB_LIN_FP32) {
        wb_fp32_rows(L, isa, x, n, r0, r1, y, ldy, accumulate);
    } else if (n == 1) {
        wb_int8_gemv(L, isa, x, r0, r1, y, accumulate, acc);
#if WB_X86
    } else if (isa == WB_ISA_AVX512VNNI) {
        wb_int8_gemm_vnni(L, x, n, r0, r1, y, ldy, accumulate, acc, ldacc, scratch);
#endif
    } else {
        wb_int8_gemm_pairs(L, isa, x, n, r0, r1, y, ldy, accumulate, acc, ldacc, scratch);
    }
}

/* Quantize token t of x [n, ldx] for L (static or per-token scale) into act's buffers: the
 * row-major q/a, and the VNNI-packed copy xp when packed = n > 1 (the batch size: it picks
 * the packing the batch path reads). Returns 1 on NaN/Inf. */
static int wb_act_token(const wb_lin *L, int isa, const float *xrow, int64_t t, int packed,
                        int8_t *q, uint8_t *a, uint8_t *xp, float *s) {
    int64_t kp = L->kp;
    int bad = wb_quant_row(isa, xrow, L->in_features, kp, L->static_scale, L->static_inv,
                           q + t * kp, a + t * kp, s + t);
    if (packed) {
        /* the VNNI batch paths read one of two packings, chosen by the batch size */
        if (packed <= WB_ROWDOT_MAX) wb_pack_token_blocks(a + t * kp, kp, t, xp);
        else wb_pack_token(a + t * kp, kp, t, xp);
    }
    return bad;
}

/* ------------------------------------------------------------------ one layer, one call */

/* Bytes of `work` wb_linear_forward needs for n tokens on nth threads. */
static inline int64_t wb_linear_work_bytes(int64_t kp, int64_t n, int nth) {
    return 2 * n * kp + wb_packed_bytes(n, kp) + 4 * n + 128 + nth * (wb_lin_scratch(kp) + 128);
}

/* y [n, rows] = L(x [n, in_features]) for an INT8 layer in one parallel region: tokens are
 * quantized (split over threads), then the output rows are split. acc [n, rows]: the exact
 * int32 accumulators too (tests), or NULL. Returns the tokens holding NaN/Inf. */
static int wb_linear_forward(const wb_lin *L, int isa, int n_threads, const float *x, int64_t n,
                             float *y, int32_t *acc, char *work) {
    int64_t kp = L->kp;
    int8_t *q = (int8_t *)work;
    uint8_t *a = (uint8_t *)(work + n * kp);
    uint8_t *xp = (uint8_t *)(work + 2 * n * kp);
    float *sx = (float *)(work + ((2 * n * kp + wb_packed_bytes(n, kp) + 63) & ~(int64_t)63));
    char *thread0 = (char *)(((uintptr_t)(sx + n) + 63) & ~(uintptr_t)63);
    int64_t per = (wb_lin_scratch(kp) + 127) & ~(int64_t)63;
    int bad_total = 0;
    int packed = isa == WB_ISA_AVX512VNNI && n > 1 ? (int)(n < 1 << 30 ? n : 1 << 30) : 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads) reduction(+:bad_total)
#endif
    {
        int tid = wb_thread_id(), nth = wb_thread_count();
        int bad = 0;
        for (int64_t t = tid; t < n; t += nth)
            bad += wb_act_token(L, isa, x + t * L->in_features, t, packed, q, a, xp, sx);
        WB_BARRIER();
        wb_act act = {q, a, xp, sx, kp, x, L->in_features};
        int64_t r0, r1;
        wb_lin_split(L, isa, n, tid, nth, &r0, &r1);
        wb_lin_rows(L, isa, &act, n, r0, r1, y, L->rows, 0, acc, L->rows,
                    (int8_t *)(thread0 + tid * per));
        bad_total += bad;
    }
    return bad_total;
}

#endif /* WB_LINEAR_H */
