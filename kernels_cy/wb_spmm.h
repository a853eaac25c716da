/* INT8 dot-product micro-kernels for the packed Linear formats (see _linear.pyx).
 *
 * Formats (built by workbench.kernels.pack_linear):
 *   dense : w int8 [rows, kp], kp = in_features rounded up to 64, padding columns are 0.
 *   sparse: mask uint64 [rows, words] (bit j of word v <=> column 64*v + j is nonzero),
 *           vals int8 [nnz + 64 padding] packed row after row in column order,
 *           row_ptr int64 [rows + 1] (offset of each row's first value in vals).
 * Activations: xq int8 [n, kp] (per-token or static INT8, padding 0) and a second
 * encoding xa [n, kp] uint8 whose meaning depends on the path:
 *   AVX2    : xa = |xq|   (sign trick: |x| * (sign(x) * w), exact since 2*127*127 < 2^15)
 *   VNNI    : xa = xq+128 (vpdpbusd is u8 x s8; the caller subtracts 128 * rowsum(w))
 *   generic : unused.
 * Every function returns the exact int32 sum over k of xq[k] * w[k] (VNNI: plus 128*rowsum).
 * in_features is limited to 65536 by the Python layer, so no int32 sum can overflow.
 *
 * ISA-specific code is compiled with target attributes, never -march=native: one build
 * runs everywhere and wb_cpu_has() picks a path at run time.
 */
#ifndef WB_SPMM_H
#define WB_SPMM_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define WB_X86 1
#include <immintrin.h>
#else
#define WB_X86 0
#endif

/* GCC's AddressSanitizer does not check the SIMD loads of the intrinsics below, so an ASan
 * build (make asan) touches the first and last byte of every vector load with plain,
 * instrumented reads: an overrun of a buffer end is then reported like any scalar one. */
#if defined(__SANITIZE_ADDRESS__)
#define WB_TOUCH(p, n) do { const volatile char *wb_t_ = (const volatile char *)(p); \
    if ((n) > 0) { (void)wb_t_[0]; (void)wb_t_[(n) - 1]; } } while (0)
#else
#define WB_TOUCH(p, n) do { } while (0)
#endif

enum { WB_ISA_GENERIC = 0, WB_ISA_AVX2 = 1, WB_ISA_AVX512VNNI = 2 };

static inline int wb_popcount64(uint64_t m) { return __builtin_popcountll(m); }

/* Software prefetch for the batch-1 sparse dots. A sparse row is two interleaved streams (mask
 * words and packed values) whose value addresses depend on the masks' popcounts; the hardware
 * prefetcher alone kept the VNNI dot at 7-8 GB/s from DRAM (22% of the read probe at 70%),
 * and prefetching 2 KiB ahead in the values and 512 bytes ahead in the masks made it 2.8x
 * faster in a stand-alone test of 4096x4096 rows. The AVX2 dot, bound by its 32-column
 * decoding, runs the same with or without it (0.94 vs 0.95 ms at 70% on that machine, forced
 * to the AVX2 path). A prefetch never faults, so running past the last row is harmless. */
#ifndef WB_PF_VALS
#define WB_PF_VALS 2048
#endif
#define WB_PF_MASK_WORDS 64
#define WB_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)

/* ------------------------------------------------------------------ CPU detection */

static int wb_cpu_has(int isa) {
#if WB_X86
    __builtin_cpu_init();
    if (isa == WB_ISA_GENERIC) return 1;
    if (isa == WB_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    if (isa == WB_ISA_AVX512VNNI)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi2")
            && __builtin_cpu_supports("popcnt");
    return 0;
#else
    return isa == WB_ISA_GENERIC;
#endif
}

static int wb_isa_compiled(int isa) {
#if WB_X86
    return isa >= WB_ISA_GENERIC && isa <= WB_ISA_AVX512VNNI;
#else
    return isa == WB_ISA_GENERIC;
#endif
}

/* ------------------------------------------------------------------ portable C */

static int32_t wb_dense_dot_generic(const int8_t *w, const int8_t *x, int64_t kp) {
    int32_t acc = 0;
    for (int64_t k = 0; k < kp; k++) acc += (int32_t)w[k] * (int32_t)x[k];
    return acc;
}

/* Walks the set bits: cost grows with the nonzeros, not with in_features. */
static int32_t wb_sparse_dot_generic(const uint64_t *mask, const int8_t *v, int64_t words,
                                     const int8_t *x) {
    int32_t acc = 0;
    for (int64_t b = 0; b < words; b++) {
        uint64_t m = mask[b];
        const int8_t *xb = x + 64 * b;
        while (m) {
            int j = __builtin_ctzll(m);
            acc += (int32_t)(*v++) * (int32_t)xb[j];
            m &= m - 1;
        }
    }
    return acc;
}

static void wb_expand_generic(const uint64_t *mask, const int8_t *v, int64_t words, int8_t *dst) {
    memset(dst, 0, (size_t)(64 * words));
    for (int64_t b = 0; b < words; b++) {
        uint64_t m = mask[b];
        while (m) {
            int j = __builtin_ctzll(m);
            dst[64 * b + j] = *v++;
            m &= m - 1;
        }
    }
}

#if WB_X86
/* ------------------------------------------------------------------ AVX2 */

#define WB_AVX2 __attribute__((target("avx2,popcnt")))

/* 32 columns of one sparse row as a dense int8 vector. m32: points at the 32 mask bits, p: the first
 * packed value, c01: popcount of the low 16 bits. Reads up to p + c01 + 16 <= p + 32 bytes.
 * The pshufb control is built in registers (no lookup table): byte i of each 16-byte lane
 * becomes 0xFF if its bit is set (B), an in-lane prefix sum of B gives -(set bits at <= i),
 * whose complement is the rank of column i among the lane's nonzeros; unset columns get bit 7
 * set, which makes pshufb write 0. Measured 1.1-1.8x faster than an 8-bit lookup table of
 * controls (fewer scalar instructions per 32 columns; see results/kernels/). */
WB_AVX2 static inline __m256i wb_expand32_avx2(const void *m32, const int8_t *p, int c01) {
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x(0x8040201008040201ll);
    __m256i m = _mm256_broadcastd_epi32(_mm_loadu_si32(m32));   /* one vpbroadcastd load */
    __m256i B = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(m, sel), bits), bits);
    __m256i S = _mm256_add_epi8(B, _mm256_slli_si256(B, 1));      /* slli_si256: per lane */
    S = _mm256_add_epi8(S, _mm256_slli_si256(S, 2));
    S = _mm256_add_epi8(S, _mm256_slli_si256(S, 4));
    S = _mm256_add_epi8(S, _mm256_slli_si256(S, 8));
    __m256i ctrl = _mm256_or_si256(_mm256_xor_si256(S, _mm256_set1_epi8(-1)),
                                   _mm256_andnot_si256(B, _mm256_set1_epi8((char)0x80)));
    WB_TOUCH(m32, 4);
    WB_TOUCH(p, 16);
    WB_TOUCH(p + c01, 16);
    __m256i data = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
        _mm_loadu_si128((const __m128i *)(p + c01)), 1);
    return _mm256_shuffle_epi8(data, ctrl);
}

WB_AVX2 static inline __m256i wb_load32(const void *p) {
    WB_TOUCH(p, 32);
    return _mm256_loadu_si256((const __m256i *)p);
}

WB_AVX2 static inline void wb_store32(void *p, __m256i v) {
    WB_TOUCH(p, 32);
    _mm256_storeu_si256((__m256i *)p, v);
}

/* int32 lanes += x * w over 32 bytes, exact: |x| (u8) times w carrying x's sign. */
WB_AVX2 static inline __m256i wb_madd_avx2(__m256i acc, __m256i w, __m256i xs, __m256i xa) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p16 = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(w, xs));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
}

WB_AVX2 static inline int32_t wb_hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

WB_AVX2 static int32_t wb_sparse_dot_avx2(const uint64_t *mask, const int8_t *v, int64_t words,
                                          const int8_t *x, const uint8_t *xa) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (int64_t b = 0; b < words; b++) {
        uint32_t lo = (uint32_t)mask[b], hi = (uint32_t)(mask[b] >> 32);
        const char *mb = (const char *)(mask + b);          /* little-endian: low half first */
        WB_PREFETCH(mask + b + WB_PF_MASK_WORDS);
        WB_PREFETCH(v + WB_PF_VALS);
        __m256i w0 = wb_expand32_avx2(mb, v, __builtin_popcount(lo & 0xffff));
        v += __builtin_popcount(lo);
        __m256i w1 = wb_expand32_avx2(mb + 4, v, __builtin_popcount(hi & 0xffff));
        v += __builtin_popcount(hi);
        const int8_t *xb = x + 64 * b;
        const uint8_t *ab = xa + 64 * b;
        acc0 = wb_madd_avx2(acc0, w0, wb_load32(xb), wb_load32(ab));
        acc1 = wb_madd_avx2(acc1, w1, wb_load32(xb + 32), wb_load32(ab + 32));
    }
    return wb_hsum_avx2(_mm256_add_epi32(acc0, acc1));
}

WB_AVX2 static void wb_expand_avx2(const uint64_t *mask, const int8_t *v, int64_t words,
                                   int8_t *dst) {
    for (int64_t b = 0; b < words; b++) {
        uint32_t lo = (uint32_t)mask[b], hi = (uint32_t)(mask[b] >> 32);
        const char *mb = (const char *)(mask + b);
        wb_store32(dst + 64 * b, wb_expand32_avx2(mb, v, __builtin_popcount(lo & 0xffff)));
        v += __builtin_popcount(lo);
        wb_store32(dst + 64 * b + 32, wb_expand32_avx2(mb + 4, v, __builtin_popcount(hi & 0xffff)));
        v += __builtin_popcount(hi);
    }
}

WB_AVX2 static int32_t wb_dense_dot_avx2(const int8_t *w, const int8_t *x, const uint8_t *xa,
                                         int64_t kp) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; k += 64) {
        acc0 = wb_madd_avx2(acc0, wb_load32(w + k), wb_load32(x + k), wb_load32(xa + k));
        acc1 = wb_madd_avx2(acc1, wb_load32(w + k + 32), wb_load32(x + k + 32),
                            wb_load32(xa + k + 32));
    }
    return wb_hsum_avx2(_mm256_add_epi32(acc0, acc1));
}

/* 2 weight rows x 4 tokens: each loaded vector is used 2 or 4 times (GEMM / prefill).
 * out[r * 4 + t]; x and xa point at token 0, tokens are ldx bytes apart. */
WB_AVX2 static void wb_dense_2x4_avx2(const int8_t *w0, const int8_t *w1, const int8_t *x,
                                      const uint8_t *xa, int64_t ldx, int64_t kp, int32_t *out) {
    __m256i a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; k += 32) {
        __m256i wa = wb_load32(w0 + k);
        __m256i wb = wb_load32(w1 + k);
        for (int t = 0; t < 4; t++) {
            __m256i xs = wb_load32(x + t * ldx + k);
            __m256i xu = wb_load32(xa + t * ldx + k);
            a[t] = wb_madd_avx2(a[t], wa, xs, xu);
            a[4 + t] = wb_madd_avx2(a[4 + t], wb, xs, xu);
        }
    }
    for (int i = 0; i < 8; i++) out[i] = wb_hsum_avx2(a[i]);
}

/* ------------------------------------------------------------------ AVX-512 VNNI + VBMI2 */

#define WB_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vbmi2,popcnt")))

WB_VNNI static inline __m512i wb_load64(const void *p) {
    WB_TOUCH(p, 64);
    return _mm512_loadu_si512(p);
}

#ifndef WB_EXPAND_FROM_REGISTER
#define WB_EXPAND_FROM_REGISTER 1
#endif
WB_VNNI static inline __m512i wb_expandload64(uint64_t m, const int8_t *v) {
#if WB_EXPAND_FROM_REGISTER
    /* a plain 64-byte load, then vpexpandb from the register: the memory form of vpexpandb
     * measured slower (packed values carry 64 bytes of padding, so the load stays inside) */
    WB_TOUCH(v, 64);
    return _mm512_maskz_expand_epi8((__mmask64)m, _mm512_loadu_si512((const void *)v));
#else
    WB_TOUCH(v, wb_popcount64(m));             /* vpexpandb reads popcount(m) bytes */
    return _mm512_maskz_expandloadu_epi8((__mmask64)m, v);
#endif
}

/* vpexpandb places the popcount(m) packed bytes at the set bits of m: the bitmask format
 * decodes in one instruction per 64 columns. Returns sum (xq + 128) * w. */
WB_VNNI static int32_t wb_sparse_dot_vnni(const uint64_t *mask, const int8_t *v, int64_t words,
                                          const uint8_t *xu) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    int64_t b = 0;
    for (; b + 2 <= words; b += 2) {
        uint64_t m0 = mask[b], m1 = mask[b + 1];
        WB_PREFETCH(mask + b + WB_PF_MASK_WORDS);
        WB_PREFETCH(v + WB_PF_VALS);
        WB_PREFETCH(v + WB_PF_VALS + 64);
        __m512i w0 = wb_expandload64(m0, v);
        v += wb_popcount64(m0);
        __m512i w1 = wb_expandload64(m1, v);
        v += wb_popcount64(m1);
        acc0 = _mm512_dpbusd_epi32(acc0, wb_load64(xu + 64 * b), w0);
        acc1 = _mm512_dpbusd_epi32(acc1, wb_load64(xu + 64 * b + 64), w1);
    }
    if (b < words) {
        __m512i w0 = wb_expandload64(mask[b], v);
        acc0 = _mm512_dpbusd_epi32(acc0, wb_load64(xu + 64 * b), w0);
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
}

WB_VNNI static void wb_expand_vnni(const uint64_t *mask, const int8_t *v, int64_t words,
                                   int8_t *dst) {
    for (int64_t b = 0; b < words; b++) {
        uint64_t m = mask[b];
        WB_TOUCH(dst + 64 * b, 64);
        _mm512_storeu_si512((void *)(dst + 64 * b), wb_expandload64(m, v));
        v += wb_popcount64(m);
    }
}

WB_VNNI static int32_t wb_dense_dot_vnni(const int8_t *w, const uint8_t *xu, int64_t kp) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 128 <= kp; k += 128) {
        acc0 = _mm512_dpbusd_epi32(acc0, wb_load64(xu + k),
                                   wb_load64(w + k));
        acc1 = _mm512_dpbusd_epi32(acc1, wb_load64(xu + k + 64),
                                   wb_load64(w + k + 64));
    }
    if (k < kp)
        acc0 = _mm512_dpbusd_epi32(acc0, wb_load64(xu + k),
                                   wb_load64(w + k));
    return _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
}

WB_VNNI static void wb_dense_2x4_vnni(const int8_t *w0, const int8_t *w1, const uint8_t *xu,
                                      int64_t ldx, int64_t kp, int32_t *out) {
    __m512i a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; k += 64) {
        __m512i wa = wb_load64(w0 + k);
        __m512i wb = wb_load64(w1 + k);
        for (int t = 0; t < 4; t++) {
            __m512i xv = wb_load64(xu + t * ldx + k);
            a[t] = _mm512_dpbusd_epi32(a[t], xv, wa);
            a[4 + t] = _mm512_dpbusd_epi32(a[4 + t], xv, wb);
        }
    }
    for (int i = 0; i < 8; i++) out[i] = _mm512_reduce_add_epi32(a[i]);
}
#endif /* WB_X86 */

/* ------------------------------------------------------------------ dispatch by ISA */

/* Dot of one weight row (dense, kp columns) with one token. */
static inline int32_t wb_dense_dot(int isa, const int8_t *w, const int8_t *x, const uint8_t *xa,
                                   int64_t kp) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) return wb_dense_dot_vnni(w, xa, kp);
    if (isa == WB_ISA_AVX2) return wb_dense_dot_avx2(w, x, xa, kp);
#endif
    return wb_dense_dot_generic(w, x, kp);
}

static inline int32_t wb_sparse_dot(int isa, const uint64_t *mask, const int8_t *v, int64_t words,
                                    const int8_t *x, const uint8_t *xa) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) return wb_sparse_dot_vnni(mask, v, words, xa);
    if (isa == WB_ISA_AVX2) return wb_sparse_dot_avx2(mask, v, words, x, xa);
#endif
    return wb_sparse_dot_generic(mask, v, words, x);
}

static inline void wb_expand(int isa, const uint64_t *mask, const int8_t *v, int64_t words,
                             int8_t *dst) {
#if WB_X86
    if (isa == WB_ISA_AVX512VNNI) { wb_expand_vnni(mask, v, words, dst); return; }
    if (isa == WB_ISA_AVX2) { wb_expand_avx2(mask, v, words, dst); return; }
#endif
    wb_expand_generic(mask, v, words, dst);
}

/* Two dense rows against n tokens: out[t * ldo + 0 / 1] for t < n. */
static void wb_dense_rows2(int isa, const int8_t *w0, const int8_t *w1, const int8_t *x,
                           const uint8_t *xa, int64_t n, int64_t kp, int32_t *out, int64_t ldo) {
    int64_t t = 0;
    int32_t tile[8];
#if WB_X86
    if (isa == WB_ISA_AVX2 || isa == WB_ISA_AVX512VNNI) {
        for (; t + 4 <= n; t += 4) {
            if (isa == WB_ISA_AVX2)
                wb_dense_2x4_avx2(w0, w1, x + t * kp, xa + t * kp, kp, kp, tile);
            else
                wb_dense_2x4_vnni(w0, w1, xa + t * kp, kp, kp, tile);
            for (int j = 0; j < 4; j++) {
                out[(t + j) * ldo] = tile[j];
                out[(t + j) * ldo + 1] = tile[4 + j];
            }
        }
    }
#endif
    for (; t < n; t++) {
        out[t * ldo] = wb_dense_dot(isa, w0, x + t * kp, xa + t * kp, kp);
        out[t * ldo + 1] = wb_dense_dot(isa, w1, x + t * kp, xa + t * kp, kp);
    }
}

#endif /* WB_SPMM_H */
