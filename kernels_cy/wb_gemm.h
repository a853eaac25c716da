/* Batched INT8 products (prefill, batch > 1) on the AVX-512 VNNI path.
 *
 * The batch-1 dots of wb_spmm.h keep one weight row per register and sum it horizontally; for
 * many tokens that wastes the weights' reuse. Here a block of WB_TILE_ROWS = 32 output rows is
 * expanded (sparse: vpexpandb) or copied (dense) ONCE into a tile laid out with rows in lanes,
 *
 *     tile[k4][32 rows][4 bytes]      (k4 = column quad; 128 bytes per quad, 32 * kp in all),
 *
 * by a 16 x 16 transpose of 32-bit lanes per 64 columns, and every token of the call is run
 * against it: one vpdpbusd multiplies 4 columns of 16 rows by one token's 4 activation bytes
 * broadcast to all lanes. The activations are pre-packed per chunk of WB_TILE_TOKENS = 12
 * tokens, xp[chunk][k4][12] (4 bytes each, xq + 128 as for the dots), so the micro-kernel reads
 * one stream. Its register tile is 2 x 16 rows x 12 tokens = 24 accumulators: per column quad
 * 2 weight loads and 12 broadcasts feed 24 vpdpbusd, with no horizontal sums; the accumulator
 * of token t holds 16 consecutive output rows, so the rescale and the stores are vector ops.
 *
 * Exactness is that of the dots: int32 sums of (x + 128) * w, minus 128 * rowsum(w); the float
 * rescale is ((float)acc * sx[t]) * w_scale[r] (+ bias[r]), in that order (no FMA), as the
 * scalar finish of wb_linear.h computes it.
 */
#ifndef WB_GEMM_H
#define WB_GEMM_H

#include "wb_spmm.h"

#define WB_TILE_ROWS 32
#define WB_TILE_TOKENS 12

#if WB_X86

/* 16 rows of 16 dwords -> 16 columns of 16 dwords: out[j] lane i = in[i] lane j. */
WB_VNNI static inline void wb_transpose16(__m512i r[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* b[4i + c], 128-bit lane L: rows 4i..4i+3 of dword column 4L + c */
    for (int i = 0; i < 4; i++) {
        b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i u0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
        __m512i u1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
        __m512i u2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
        __m512i u3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
        r[c] = _mm512_shuffle_i32x4(u0, u2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(u1, u3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
    }
}

/* The tile of `n` (<= 32) rows; rows n..31 are zero. Sparse rows: masks [n, words] and the
 * first value of each row; dense rows: w [n, kp] with row stride kp. */
WB_VNNI static void wb_vnni_tile(int sparse, const uint64_t *mask, const int8_t *const *vrow,
                                 const int8_t *w, int64_t n, int64_t words, int8_t *tile) {
    const int8_t *p[WB_TILE_ROWS];
    for (int64_t i = 0; i < n; i++) p[i] = sparse ? vrow[i] : w + 64 * words * i;
    for (int g = 0; g < 2; g++) {
        for (int64_t c = 0; c < words; c++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                int64_t row = 16 * g + i;
                if (row >= n) {
                    r[i] = _mm512_setzero_si512();
                } else if (sparse) {
                    uint64_t m = mask[row * words + c];
                    r[i] = wb_expandload64(m, p[row]);
                    p[row] += wb_popcount64(m);
                } else {
                    r[i] = wb_load64(p[row] + 64 * c);
                }
            }
            wb_transpose16(r);
            int8_t *dst = tile + (16 * c) * 128 + 64 * g;
            for (int j = 0; j < 16; j++) {
                WB_TOUCH(dst + 128 * j, 64);
                _mm512_storeu_si512((void *)(dst + 128 * j), r[j]);
            }
        }
    }
}

/* Pack token t's encoded activations xa [kp] into slot t % 12 of its chunk of xp. */
static inline void wb_pack_token(const uint8_t *xa, int64_t kp, int64_t t, uint8_t *xp) {
    uint8_t *dst = xp + (t / WB_TILE_TOKENS) * (kp / 4) * (4 * WB_TILE_TOKENS)
                   + 4 * (t % WB_TILE_TOKENS);
    for (int64_t k4 = 0; k4 < kp / 4; k4++)
        memcpy(dst + k4 * 4 * WB_TILE_TOKENS, xa + 4 * k4, 4);
}

/* The other packing, for small batches (wb_linear.h's row-pair dots): token t's 64-column
 * block b at xb[chunk][b][t % 12][64], so one pointer walks every token of a chunk. */
static inline void wb_pack_token_blocks(const uint8_t *xa, int64_t kp, int64_t t, uint8_t *xb) {
    uint8_t *dst = xb + (t / WB_TILE_TOKENS) * kp * WB_TILE_TOKENS + 64 * (t % WB_TILE_TOKENS);
    for (int64_t b = 0; b < kp / 64; b++)
        memcpy(dst + b * 64 * WB_TILE_TOKENS, xa + 64 * b, 64);
}

/* Bytes of the packed activations of n tokens (either packing). */
static inline int64_t wb_packed_bytes(int64_t n, int64_t kp) {
    return ((n + WB_TILE_TOKENS - 1) / WB_TILE_TOKENS) * kp * WB_TILE_TOKENS;
}

/* Per-row constants of one tile, zero past the block's rows. */
typedef struct {
    int32_t shift[WB_TILE_ROWS];      /* 128 * rowsum */
    float scale[WB_TILE_ROWS];
    float bias[WB_TILE_ROWS];
    int has_bias;
    int64_t n;                        /* valid rows */
} wb_tile_rows;

/* Finish the two accumulators (rows 0-15, 16-31) of one token: y = ((float)(acc - shift) *
 * sx) * scale (+ bias), or y += that; acc (tests) gets the exact ints. */
WB_VNNI static inline void wb_vnni_finish(__m512i c0, __m512i c1, const wb_tile_rows *rows,
                                          float sx, float *y, int accumulate, int32_t *acc) {
    __mmask16 m0 = rows->n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rows->n) - 1);
    __mmask16 m1 = rows->n >= 32 ? (__mmask16)0xffff
                 : rows->n <= 16 ? (__mmask16)0 : (__mmask16)((1u << (rows->n - 16)) - 1);
    __m512 xs = _mm512_set1_ps(sx);
    for (int g = 0; g < 2; g++) {
        __mmask16 m = g ? m1 : m0;
        if (!m) continue;
        __m512i a = _mm512_sub_epi32(g ? c1 : c0,
                                     _mm512_loadu_si512((const void *)(rows->shift + 16 * g)));
        if (acc) _mm512_mask_storeu_epi32(acc + 16 * g, m, a);
        __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), xs),
                                 _mm512_loadu_ps(rows->scale + 16 * g));
        if (rows->has_bias) f = _mm512_add_ps(f, _mm512_loadu_ps(rows->bias + 16 * g));
        if (accumulate) f = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + 16 * g), f);
        _mm512_mask_storeu_ps(y + 16 * g, m, f);
    }
}

/* One chunk of NT tokens against the tile, as a function per NT with named accumulators (an
 * array of vectors indexed in a loop was kept in memory by GCC, a store per vpdpbusd). */
#define WB_REP1(M) M(0)
#define WB_REP2(M) WB_REP1(M) M(1)
#define WB_REP3(M) WB_REP2(M) M(2)
#define WB_REP4(M) WB_REP3(M) M(3)
#define WB_REP5(M) WB_REP4(M) M(4)
#define WB_REP6(M) WB_REP5(M) M(5)
#define WB_REP7(M) WB_REP6(M) M(6)
#define WB_REP8(M) WB_REP7(M) M(7)
#define WB_REP9(M) WB_REP8(M) M(8)
#define WB_REP10(M) WB_REP9(M) M(9)
#define WB_REP11(M) WB_REP10(M) M(10)
#define WB_REP12(M) WB_REP11(M) M(11)
#define WB_ACC_DECL(t) __m512i c0_##t = _mm512_setzero_si512(), c1_##t = _mm512_setzero_si512();
#define WB_ACC_STEP(t) { __m512i b_ = _mm512_set1_epi32(xk[t]);                            \
        c0_##t = _mm512_dpbusd_epi32(c0_##t, b_, w0);                                      \
        c1_##t = _mm512_dpbusd_epi32(c1_##t, b_, w1); }
#define WB_ACC_DONE(t) wb_vnni_finish(c0_##t, c1_##t, rows, sx[t], y + (t) * ldy, accumulate, \
                                      acc ? acc + (t) * ldacc : NULL);
#define WB_DEFINE_CHUNK(NT)                                                                 \
WB_VNNI static void wb_vnni_chunk##NT(const int8_t *tile, const uint8_t *xp, int64_t kp,    \
                                      const wb_tile_rows *rows, const float *sx, float *y,  \
                                      int64_t ldy, int accumulate, int32_t *acc,            \
                                      int64_t ldacc) {                                      \
    WB_REP##NT(WB_ACC_DECL)                                                                 \
    const int64_t quads = kp / 4;                                                           \
    for (int64_t k4 = 0; k4 < quads; k4++) {                                                \
        WB_TOUCH(tile + 128 * k4, 128);                                                     \
        __m512i w0 = _mm512_loadu_si512((const void *)(tile + 128 * k4));                   \
        __m512i w1 = _mm512_loadu_si512((const void *)(tile + 128 * k4 + 64));              \
        const int32_t *xk = (const int32_t *)(xp + k4 * 4 * WB_TILE_TOKENS);                \
        WB_TOUCH(xk, 4 * NT);                                                               \
        WB_REP##NT(WB_ACC_STEP)                                                             \
    }                                                                                       \
    WB_REP##NT(WB_ACC_DONE)                                                                 \
}
WB_DEFINE_CHUNK(1) WB_DEFINE_CHUNK(2) WB_DEFINE_CHUNK(3) WB_DEFINE_CHUNK(4)
WB_DEFINE_CHUNK(5) WB_DEFINE_CHUNK(6) WB_DEFINE_CHUNK(7) WB_DEFINE_CHUNK(8)
WB_DEFINE_CHUNK(9) WB_DEFINE_CHUNK(10) WB_DEFINE_CHUNK(11) WB_DEFINE_CHUNK(12)

/* Every chunk of n tokens against one tile. */
WB_VNNI static void wb_vnni_tokens(const int8_t *tile, const uint8_t *xp, int64_t n, int64_t kp,
                                   const wb_tile_rows *rows, const float *sx, float *y,
                                   int64_t ldy, int accumulate, int32_t *acc, int64_t ldacc) {
    for (int64_t t0 = 0; t0 < n; t0 += WB_TILE_TOKENS) {
        int64_t nt = n - t0 < WB_TILE_TOKENS ? n - t0 : WB_TILE_TOKENS;
        const uint8_t *xc = xp + (t0 / WB_TILE_TOKENS) * kp * WB_TILE_TOKENS;
        float *yc = y + t0 * ldy;
        int32_t *ac = acc ? acc + t0 * ldacc : NULL;
        const float *sc = sx + t0;
#define WB_CHUNK(K) case K: wb_vnni_chunk##K(tile, xc, kp, rows, sc, yc, ldy, accumulate, ac, ldacc); break;
        switch (nt) {
            WB_CHUNK(1) WB_CHUNK(2) WB_CHUNK(3) WB_CHUNK(4) WB_CHUNK(5) WB_CHUNK(6)
            WB_CHUNK(7) WB_CHUNK(8) WB_CHUNK(9) WB_CHUNK(10) WB_CHUNK(11) WB_CHUNK(12)
            default: break;
        }
#undef WB_CHUNK
    }
}

#endif /* WB_X86 */
#endif /* WB_GEMM_H */
