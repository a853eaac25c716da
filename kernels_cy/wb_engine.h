/* The native decode engine: one call runs B rows x T new tokens through every decoder layer,
 * the final norm and the head, inside ONE OpenMP parallel region (barriers between dependent
 * steps), with the KV cache and all scratch preallocated by the caller (_linear.pyx Engine).
 *
 * Per layer (N = B*T tokens; H query heads, KV key/value heads, d = head_dim):
 *   xn = RMSNorm(h) -> INT8            tokens split over threads
 *   [q|k|v] = W_qkv xn                 output rows split over threads (wb_linear.h)
 *   RoPE on q, k; k, v -> cache        (token, head) units
 *   o = attention(q, cache)            (token, query head) units; GQA: head h reads KV head
 *                                      h / (H / KV), never a repeated copy
 *   h += W_o o                         rows split, residual fused into the store
 *   xn = RMSNorm(h) -> INT8
 *   [g|u] = W_gu xn
 *   a = SiLU(g) * u -> INT8            (token, 256-value chunk) units, then per token
 *   h += W_down a
 * then the head tokens (every position, or the last of each row): RMSNorm, W_head (rows
 * split), per-thread argmax combined at the end. The float math is wb_math.h's; it rounds
 * like the torch reference loop, and the INT8 products are exact, so the engine's logits
 * equal the reference's except where a double rounds to the other side of a float boundary.
 *
 * The engine reads the cache slots [0, s0 + T) and writes [s0, s0 + T). Left padding: key_mask
 * [B, cap] (1 = real token) or NULL; a padded query attends to its own slot only.
 */
#ifndef WB_ENGINE_H
#define WB_ENGINE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "wb_common.h"
#include "wb_linear.h"
#include "wb_math.h"

#define WB_SWIGLU_CHUNK 256

typedef struct {
    const float *in_norm, *post_norm;      /* [hidden] */
    wb_lin qkv[3];                          /* row-stacked parts of [q; k; v]: 1 or 3 */
    int n_qkv;
    wb_lin o;
    wb_lin gu[2];                           /* [gate; up]: 1 or 2 parts */
    int n_gu;
    wb_lin down;
} wb_layer;

typedef struct {
    int64_t n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, max_pos;
    double eps;
    const float *embed;                     /* [vocab, hidden] */
    const float *final_norm;                /* [hidden] */
    const float *cos, *sin;                 /* [max_pos, head_dim] */
    const wb_layer *layers;                 /* [n_layers] */
    wb_lin head;
    int64_t kp_max;                         /* widest padded input of any linear */
} wb_model;

typedef struct {
    int64_t B, T;
    const int64_t *ids;                     /* IN  [B, T] token ids < vocab */
    const int64_t *pos;                     /* IN  [B, T] RoPE positions < max_pos */
    float *keys, *values;                   /* IN/OUT [layers, B, KV, cap, head_dim] */
    int64_t cap, s0;                        /* slots s0 .. s0 + T - 1 are written */
    const uint8_t *key_mask;                /* IN  [B, cap] or NULL */
    int all_logits;                         /* head on every position, else the last per row */
    float *logits;                          /* OUT [B*T or B, vocab] (always written) */
    int64_t *next;                          /* OUT [B] argmax of the last position, or NULL */
    int isa, n_threads;
    char *scratch;                          /* wb_engine_layout() bytes, 64-aligned */
    double *profile;                        /* OUT [WB_N_STEPS] seconds per step, or NULL */
} wb_call;

/* Steps timed by wb_call.profile (wall time from one barrier to the next, so a step's
 * entry is its slowest thread's time plus the barrier). */
enum { WB_P_EMBED, WB_P_NORM1, WB_P_QKV, WB_P_ROPE, WB_P_ATTN, WB_P_QUANT_O, WB_P_O,
       WB_P_NORM2, WB_P_GATE_UP, WB_P_SWIGLU, WB_P_QUANT_DOWN, WB_P_DOWN, WB_P_HEAD_NORM,
       WB_P_HEAD, WB_P_ARGMAX, WB_N_STEPS };

static inline double wb_now(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return 0.0;
#endif
}

/* ------------------------------------------------------------------ scratch layout */

typedef struct {
    float *h, *xn, *qkv, *att, *gu, *act, *sx;
    int8_t *q8;
    uint8_t *a8, *xp;
    char *thread0;                          /* per-thread areas of `per_thread` bytes */
    int64_t per_thread;
} wb_scratch;

static inline int64_t wb_round64(int64_t n) { return (n + 63) & ~(int64_t)63; }

static inline int64_t wb_qkv_width(const wb_model *m) {
    return (m->n_heads + 2 * m->n_kv) * m->head_dim;
}

/* Layout of the scratch for N tokens, nth threads and a cache of cap slots; returns bytes. */
static int64_t wb_engine_layout(const wb_model *m, int64_t N, int nth, int64_t cap, char *base,
                                wb_scratch *s) {
    int64_t off = 0, kp = m->kp_max, hd = m->head_dim;
#define WB_TAKE(field, type, count) do { if (s) s->field = (type *)(base + off); \
        off += wb_round64((int64_t)sizeof(type) * (count)); } while (0)
    WB_TAKE(h, float, N * m->hidden);
    WB_TAKE(xn, float, N * m->hidden);
    WB_TAKE(qkv, float, N * wb_qkv_width(m));
    WB_TAKE(att, float, N * m->n_heads * hd);
    WB_TAKE(gu, float, N * 2 * m->inter);
    WB_TAKE(act, float, N * m->inter);
    WB_TAKE(sx, float, N);
    WB_TAKE(q8, int8_t, N * kp);
    WB_TAKE(a8, uint8_t, N * kp);
    WB_TAKE(xp, uint8_t, wb_packed_bytes(N, kp));
#undef WB_TAKE
    /* per thread: linear scratch, attention (q, scores, accumulator in double), SwiGLU
     * temporaries, and the argmax partials of B head tokens */
    int64_t per = wb_round64(wb_lin_scratch(kp))
                + wb_round64(8 * (2 * hd + WB_ATT_GROUP * cap)) + wb_round64(8 * WB_SWIGLU_CHUNK)
                + wb_round64(16 * N);
    if (s) { s->thread0 = base + off; s->per_thread = per; }
    return off + per * nth;
}

/* ------------------------------------------------------------------ steps */

/* Quantize rows [t] of x [N, ldx] for linear L into s->q8/a8 (and xp for VNNI batches);
 * tokens split over threads. Returns the tokens holding NaN/Inf. */
static int wb_quantize_for(const wb_lin *L, int isa, const float *x, int64_t ldx, int64_t N,
                           const wb_scratch *s, int tid, int nth) {
    int bad = 0;
    if (!wb_lin_is_int8(L)) return 0;
    int packed = isa == WB_ISA_AVX512VNNI && N > 1 ? (int)(N < 1 << 30 ? N : 1 << 30) : 0;
    for (int64_t t = tid; t < N; t += nth)
        bad += wb_act_token(L, isa, x + t * ldx, t, packed, s->q8, s->a8, s->xp, s->sx);
    return bad;
}

/* The input of a group of row-stacked parts: they share in_features and (checked when the
 * engine is built) the activation quantization, so the first INT8 part speaks for all. */
static const wb_lin *wb_first_int8(const wb_lin *parts, int n) {
    for (int p = 0; p < n; p++)
        if (wb_lin_is_int8(&parts[p])) return &parts[p];
    return &parts[0];
}

static wb_act wb_act_of(const wb_lin *L, const wb_scratch *s, const float *x, int64_t ldx) {
    wb_act a = {s->q8, s->a8, s->xp, s->sx, L->kp, x, ldx};
    return a;
}

/* Output rows of parts[0..n) stacked into y [N, ldy] (part p's rows start at column off_p). */
static void wb_parts_rows(const wb_lin *parts, int n, int isa, const wb_act *x, int64_t N,
                          float *y, int64_t ldy, int accumulate, int tid, int nth, int8_t *scr) {
    int64_t off = 0;
    for (int p = 0; p < n; p++) {
        int64_t r0, r1;
        wb_lin_split(&parts[p], isa, N, tid, nth, &r0, &r1);
        wb_lin_rows(&parts[p], isa, x, N, r0, r1, y + off, ldy, accumulate, NULL, 0, scr);
        off += parts[p].rows;
    }
}

/* RMSNorm rows of h into xn, then quantize them for L (tokens split over threads). */
static int wb_norm_quant(const wb_model *m, const wb_lin *L, int isa, const float *h,
                         const float *w, int64_t N, const wb_scratch *s, int tid, int nth) {
    for (int64_t t = tid; t < N; t += nth)
        wb_rms_norm(h + t * m->hidden, w, m->hidden, m->eps, s->xn + t * m->hidden);
    return wb_quantize_for(L, isa, s->xn, m->hidden, N, s, tid, nth);
}

/* The tokens of each row are consecutive: token t is row t / T, position t % T. */
static void wb_rope_cache(const wb_model *m, const wb_call *c, int64_t l, const wb_scratch *s,
                          int tid, int nth) {
    int64_t H = m->n_heads, KV = m->n_kv, hd = m->head_dim, N = c->B * c->T;
    int64_t W = wb_qkv_width(m);
    for (int64_t u = tid; u < N * (H + KV); u += nth) {
        int64_t t = u / (H + KV), j = u % (H + KV);
        int64_t b = t / c->T, slot = c->s0 + t % c->T, p = c->pos[t];
        const float *cs = m->cos + p * hd, *sn = m->sin + p * hd;
        float *row = s->qkv + t * W;
        if (j < H) {
            wb_rope(row + j * hd, cs, sn, hd);
        } else {
            int64_t kv = j - H;
            float *k = row + (H + kv) * hd, *v = row + (H + KV + kv) * hd;
            wb_rope(k, cs, sn, hd);
            int64_t at = (((l * c->B + b) * KV + kv) * c->cap + slot) * hd;
            memcpy(c->keys + at, k, (size_t)hd * sizeof(float));
            memcpy(c->values + at, v, (size_t)hd * sizeof(float));
        }
    }
}

/* Units: (token, KV head, a run of up to WB_ATT_GROUP of its query heads); head hq reads KV
 * head hq / (H / KV), the grouping of transformers' repeat_kv, never a repeated copy. */
static void wb_attention(const wb_model *m, const wb_call *c, int64_t l, const wb_scratch *s,
                         double *tmp, int tid, int nth) {
    int64_t H = m->n_heads, KV = m->n_kv, hd = m->head_dim, N = c->B * c->T;
    int64_t W = wb_qkv_width(m), group = H / KV;
    int64_t runs = (group + WB_ATT_GROUP - 1) / WB_ATT_GROUP, per_tok = KV * runs;
    for (int64_t u = tid; u < N * per_tok; u += nth) {
        int64_t t = u / per_tok, kv = (u % per_tok) / runs, g0 = (u % runs) * WB_ATT_GROUP;
        int G = (int)(group - g0 < WB_ATT_GROUP ? group - g0 : WB_ATT_GROUP);
        int64_t hq = kv * group + g0;
        int64_t b = t / c->T, slot = c->s0 + t % c->T;
        int64_t base = ((l * c->B + b) * KV + kv) * c->cap * hd;
        wb_attend_heads(c->isa, G, s->qkv + t * W + hq * hd, c->keys + base, c->values + base,
                        hd, slot, c->key_mask ? c->key_mask + b * c->cap : NULL, tmp,
                        s->att + t * H * hd + hq * hd);
    }
}

/* act = SiLU(gate) * up over (token, chunk) units; gate/up are the halves of gu [N, 2 I]. */
static void wb_mlp_act(const wb_model *m, int isa, int64_t N, const wb_scratch *s, double *tmp,
                       int tid, int nth) {
    int64_t I = m->inter, chunks = (I + WB_SWIGLU_CHUNK - 1) / WB_SWIGLU_CHUNK;
    for (int64_t u = tid; u < N * chunks; u += nth) {
        int64_t t = u / chunks, i0 = (u % chunks) * WB_SWIGLU_CHUNK;
        int64_t i1 = i0 + WB_SWIGLU_CHUNK < I ? i0 + WB_SWIGLU_CHUNK : I;
        const float *g = s->gu + t * 2 * I;
        wb_swiglu(isa, g, g + I, i0, i1, s->act + t * I, tmp);
    }
}

/* ------------------------------------------------------------------ the call */

/* Runs the call; returns the number of quantized rows that held NaN/Inf (0 = success). */
static int wb_engine_forward(const wb_model *m, const wb_call *c) {
    int64_t N = c->B * c->T, NH = c->all_logits ? N : c->B;
    int bad_total = 0;
    wb_scratch s;
    wb_engine_layout(m, N, c->n_threads, c->cap, c->scratch, &s);
#ifdef _OPENMP
#pragma omp parallel num_threads(c->n_threads) reduction(+:bad_total)
#endif
    {
        int tid = wb_thread_id(), nth = wb_thread_count();
        char *mine = s.thread0 + tid * s.per_thread;
        int8_t *lin_scr = (int8_t *)mine;
        double *att_tmp = (double *)(mine + wb_round64(wb_lin_scratch(m->kp_max)));
        double *mlp_tmp = att_tmp + wb_round64(8 * (2 * m->head_dim + WB_ATT_GROUP * c->cap)) / 8;
        float *best_v = (float *)((char *)mlp_tmp + wb_round64(8 * WB_SWIGLU_CHUNK));
        int64_t *best_i = (int64_t *)(best_v + c->B + (c->B & 1));
        int bad = 0;
        int64_t hid = m->hidden, I = m->inter;
        wb_act x;
        double t_prev = c->profile && tid == 0 ? wb_now() : 0.0;
#define WB_STEP(k) do { WB_BARRIER(); if (c->profile && tid == 0) {                           \
            double t_ = wb_now(); c->profile[k] += t_ - t_prev; t_prev = t_; } } while (0)

        for (int64_t t = tid; t < N; t += nth)
            memcpy(s.h + t * hid, m->embed + c->ids[t] * hid, (size_t)hid * sizeof(float));
        WB_STEP(WB_P_EMBED);
        for (int64_t l = 0; l < m->n_layers; l++) {
            const wb_layer *L = &m->layers[l];
            const wb_lin *qkv8 = wb_first_int8(L->qkv, L->n_qkv), *gu8 = wb_first_int8(L->gu, L->n_gu);
            bad += wb_norm_quant(m, qkv8, c->isa, s.h, L->in_norm, N, &s, tid, nth);
            WB_STEP(WB_P_NORM1);
            x = wb_act_of(qkv8, &s, s.xn, hid);
            wb_parts_rows(L->qkv, L->n_qkv, c->isa, &x, N, s.qkv, wb_qkv_width(m), 0, tid, nth,
                          lin_scr);
            WB_STEP(WB_P_QKV);
            wb_rope_cache(m, c, l, &s, tid, nth);
            WB_STEP(WB_P_ROPE);
            wb_attention(m, c, l, &s, att_tmp, tid, nth);
            WB_STEP(WB_P_ATTN);
            bad += wb_quantize_for(&L->o, c->isa, s.att, m->n_heads * m->head_dim, N, &s, tid, nth);
            WB_STEP(WB_P_QUANT_O);
            x = wb_act_of(&L->o, &s, s.att, m->n_heads * m->head_dim);
            wb_parts_rows(&L->o, 1, c->isa, &x, N, s.h, hid, 1, tid, nth, lin_scr);
            WB_STEP(WB_P_O);
            bad += wb_norm_quant(m, gu8, c->isa, s.h, L->post_norm, N, &s, tid, nth);
            WB_STEP(WB_P_NORM2);
            x = wb_act_of(gu8, &s, s.xn, hid);
            wb_parts_rows(L->gu, L->n_gu, c->isa, &x, N, s.gu, 2 * I, 0, tid, nth, lin_scr);
            WB_STEP(WB_P_GATE_UP);
            wb_mlp_act(m, c->isa, N, &s, mlp_tmp, tid, nth);
            WB_STEP(WB_P_SWIGLU);
            bad += wb_quantize_for(&L->down, c->isa, s.act, I, N, &s, tid, nth);
            WB_STEP(WB_P_QUANT_DOWN);
            x = wb_act_of(&L->down, &s, s.act, I);
            wb_parts_rows(&L->down, 1, c->isa, &x, N, s.h, hid, 1, tid, nth, lin_scr);
            WB_STEP(WB_P_DOWN);
        }
        /* head tokens: all positions, or the last of each row, gathered into xn */
        for (int64_t i = tid; i < NH; i += nth) {
            int64_t t = c->all_logits ? i : i * c->T + c->T - 1;
            wb_rms_norm(s.h + t * hid, m->final_norm, hid, m->eps, s.xn + i * hid);
        }
        WB_STEP(WB_P_HEAD_NORM);
        bad += wb_quantize_for(&m->head, c->isa, s.xn, hid, NH, &s, tid, nth);
        WB_STEP(WB_P_HEAD_NORM);
        x = wb_act_of(&m->head, &s, s.xn, hid);
        int64_t r0, r1;
        wb_lin_split(&m->head, c->isa, NH, tid, nth, &r0, &r1);
        wb_lin_rows(&m->head, c->isa, &x, NH, r0, r1, c->logits, m->vocab, 0, NULL, 0, lin_scr);
        if (c->next) {
            for (int64_t b = 0; b < c->B; b++) {       /* first maximum, as torch.argmax */
                const float *row = c->logits + b * m->vocab;
                float bv = -INFINITY;
                int64_t bi = -1;
                for (int64_t r = r0; r < r1; r++)
                    if (row[r] > bv || bi < 0) { bv = row[r]; bi = r; }
                best_v[b] = bv;
                best_i[b] = bi;
            }
        }
        WB_STEP(WB_P_HEAD);
        if (c->next && tid == 0) {
            for (int64_t b = 0; b < c->B; b++) {
                float bv = -INFINITY;
                int64_t bi = -1;
                for (int th = 0; th < nth; th++) {
                    const char *area = s.thread0 + th * s.per_thread;
                    const float *v = (const float *)(area + ((char *)best_v - mine));
                    const int64_t *ix = (const int64_t *)(area + ((char *)best_i - mine));
                    if (ix[b] >= 0 && (bi < 0 || v[b] > bv)) { bv = v[b]; bi = ix[b]; }
                }
                c->next[b] = bi;
            }
            if (c->profile) c->profile[WB_P_ARGMAX] += wb_now() - t_prev;
        }
#undef WB_STEP
        bad_total += bad;
    }
    return bad_total;
}

#endif /* WB_ENGINE_H */
