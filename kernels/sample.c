/* SPDX-License-Identifier: MIT */
/* The attention loops below are vectorised but round exactly like plain scalar loops, and
 * other generators must give the same bits (sample_attend() is exported for kernels/stage.c,
 * which tests/test-stage.c compares bit for bit): no multiply-add may be fused, in the AVX2
 * clone either. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "nn-exp.h"

/* Columns the attention loops carry in registers: four AVX2 vectors of accumulators, so that
 * no sum waits on a store of the previous step. */
#define AW 32

struct sampler {
        sampler_weights w;
        int pos;
        /* keys transposed, (L, C, t_pad): a query meets all cached keys along contiguous rows;
         * values (L, T, C) */
        float *kcache, *vcache;
        int t_pad; /* T rounded up to the attention's block */
        float *x, *ln, *qkv, *y, *tmp, *h4, *h4g, *scores, *mean_rstd;
};

/* The float weights of a model, through the same sgemm as training. */
static void model_matvec(const void *ctx, sampler_matrix which, int l, const float *x,
                         float *out) {
        const model *m = ctx;
        const model_tensors *p = &m->p;
        int C = m->layout.cfg.n_embd;

        switch (which) {
        case SAMPLER_QKV:
                nn_matmul_forward(out, x, p->qkv_w[l], p->qkv_b[l], 1, C, 3 * C);
                break;
        case SAMPLER_ATTPROJ:
                nn_matmul_forward(out, x, p->attproj_w[l], p->attproj_b[l], 1, C, C);
                break;
        case SAMPLER_FC:
                nn_matmul_forward(out, x, p->fc_w[l], p->fc_b[l], 1, C, 4 * C);
                break;
        case SAMPLER_FCPROJ:
                nn_matmul_forward(out, x, p->fcproj_w[l], p->fcproj_b[l], 1, 4 * C, C);
                break;
        case SAMPLER_LOGITS:
                nn_matmul_forward(out, x, p->wte, NULL, 1, C, MODEL_VOCAB);
                break;
        }
}

static void model_embed(const void *ctx, uint8_t token, int pos, float *out) {
        const model *m = ctx;
        int C = m->layout.cfg.n_embd;
        nn_encoder_forward(out, &token, m->p.wte, m->p.wpe + (size_t) pos * C, 1, 1, C);
}

int sampler_new(const model *m, sampler **ret) {
        const sampler_weights w = { .cfg = &m->layout.cfg,
                                    .p = &m->p,
                                    .matvec = model_matvec,
                                    .embed = model_embed,
                                    .ctx = m };
        return sampler_new_weights(&w, ret);
}

int sampler_new_weights(const sampler_weights *w, sampler **ret) {
        const model_config *cfg = w->cfg;
        size_t C = cfg->n_embd, T = cfg->block_size, L = cfg->n_layer;
        sampler *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->w = *w;
        s->t_pad = sample_kv_t_pad((int) T);
        s->kcache = calloc(L * (size_t) s->t_pad * C, sizeof(float));
        s->vcache = calloc(L * T * C, sizeof(float));
        s->x = calloc(C, sizeof(float));
        s->ln = calloc(C, sizeof(float));
        s->qkv = calloc(3 * C, sizeof(float));
        s->y = calloc(C, sizeof(float));
        s->tmp = calloc(C, sizeof(float));
        s->h4 = calloc(4 * C, sizeof(float));
        s->h4g = calloc(4 * C, sizeof(float));
        s->scores = calloc((size_t) s->t_pad, sizeof(float));
        s->mean_rstd = calloc(2, sizeof(float));
        if (!s->kcache || !s->vcache || !s->x || !s->ln || !s->qkv || !s->y || !s->tmp || !s->h4 ||
            !s->h4g || !s->scores || !s->mean_rstd) {
                sampler_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void sampler_free(sampler *s) {
        if (!s)
                return;
        free(s->kcache);
        free(s->vcache);
        free(s->x);
        free(s->ln);
        free(s->qkv);
        free(s->y);
        free(s->tmp);
        free(s->h4);
        free(s->h4g);
        free(s->scores);
        free(s->mean_rstd);
        free(s);
}

void sampler_reset(sampler *s) {
        s->pos = 0;
}

/* The attention gets an x86-64-v3 (AVX2) clone, as kernels/nn.c's hot loops do. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAMPLE_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SAMPLE_HOT
#endif

int sample_kv_t_pad(int T) {
        return (T + AW - 1) / AW * AW;
}

void sample_kv_store(float *kt, float *vc, int t_pad, int C, int pos, const float *k,
                     const float *v) {
        /* key channel c (head c / hs, dimension c % hs) is row c of kt */
        for (int c = 0; c < C; c++)
                kt[(size_t) c * t_pad + pos] = k[c];
        memcpy(vc + (size_t) pos * C, v, C * sizeof(float));
}

/* The scores run along the transposed keys' rows, the weighted values along the head's
 * channels, AW at a time, with the sums held in locals; each sum still adds its terms in
 * the order of the plain loops (i, then j, ascending). */
SAMPLE_HOT void sample_attend(const float *q_all, const float *kt, const float *vc, int t_pad,
                              int C, int H, int pos, float *restrict scores, float *y_all) {
        int hs = C / H, n = pos + 1;
        float scale = 1.0f / sqrtf((float) hs);

        for (int h = 0; h < H; h++) {
                const float *q = q_all + h * hs;
                const float *k = kt + (size_t) h * hs * t_pad;
                float *restrict y = y_all + h * hs;
                float mx = -INFINITY, sum = 0.0f;

                /* whole blocks: rows are t_pad long, a multiple of AW, and the stale or zero
                 * columns past n are never read back */
                for (int j0 = 0; j0 < n; j0 += AW) {
                        float acc[AW] = { 0 };
                        for (int i = 0; i < hs; i++) {
                                const float *restrict ki = k + (size_t) i * t_pad + j0;
                                for (int l = 0; l < AW; l++)
                                        acc[l] += q[i] * ki[l];
                        }
                        for (int l = 0; l < AW; l++)
                                scores[j0 + l] = acc[l] * scale;
                }
                for (int j = 0; j < n; j++)
                        mx = scores[j] > mx ? scores[j] : mx;
                for (int j = 0; j < n; j++) {
                        scores[j] = nn_exp_fast(scores[j] - mx);
                        sum += scores[j];
                }
                for (int j = 0; j < n; j++)
                        scores[j] = scores[j] / sum;
                int i0 = 0;
                for (; i0 + AW <= hs; i0 += AW) {
                        float acc[AW] = { 0 };
                        for (int j = 0; j < n; j++) {
                                const float *restrict v = vc + (size_t) j * C + h * hs + i0;
                                for (int l = 0; l < AW; l++)
                                        acc[l] += scores[j] * v[l];
                        }
                        memcpy(y + i0, acc, sizeof(acc));
                }
                if (i0 < hs) {
                        memset(y + i0, 0, (hs - i0) * sizeof(float));
                        for (int j = 0; j < n; j++) {
                                const float *restrict v = vc + (size_t) j * C + h * hs;
                                for (int i = i0; i < hs; i++)
                                        y[i] += scores[j] * v[i];
                        }
                }
        }
}

int sampler_feed(sampler *s, uint8_t token, float *ret_logits) {
        const sampler_weights *w = &s->w;
        const model_config *cfg = w->cfg;
        const model_tensors *p = w->p;
        int C = cfg->n_embd, H = cfg->n_head, T = cfg->block_size;
        float *mean = &s->mean_rstd[0], *rstd = &s->mean_rstd[1];

        if (s->pos >= T)
                return -ENOSPC;
        w->embed(w->ctx, token, s->pos, s->x);
        for (int l = 0; l < cfg->n_layer; l++) {
                float *kc = s->kcache + (size_t) l * s->t_pad * C;
                float *vc = s->vcache + (size_t) l * T * C;

                nn_layernorm_forward(s->ln, mean, rstd, s->x, p->ln1_w[l], p->ln1_b[l], 1, C);
                w->matvec(w->ctx, SAMPLER_QKV, l, s->ln, s->qkv);
                sample_kv_store(kc, vc, s->t_pad, C, s->pos, s->qkv + C, s->qkv + 2 * C);
                sample_attend(s->qkv, kc, vc, s->t_pad, C, H, s->pos, s->scores, s->y);
                w->matvec(w->ctx, SAMPLER_ATTPROJ, l, s->y, s->tmp);
                nn_residual_forward(s->x, s->x, s->tmp, C);
                nn_layernorm_forward(s->ln, mean, rstd, s->x, p->ln2_w[l], p->ln2_b[l], 1, C);
                w->matvec(w->ctx, SAMPLER_FC, l, s->ln, s->h4);
                nn_gelu_forward(s->h4g, s->h4, 4 * C);
                w->matvec(w->ctx, SAMPLER_FCPROJ, l, s->h4g, s->tmp);
                nn_residual_forward(s->x, s->x, s->tmp, C);
        }
        nn_layernorm_forward(s->ln, mean, rstd, s->x, p->lnf_w, p->lnf_b, 1, C);
        w->matvec(w->ctx, SAMPLER_LOGITS, 0, s->ln, ret_logits);
        s->pos++;
        return 0;
}

/* Unsigned keys in the floats' order (NaN aside): flip all bits of negatives, the sign bit
 * of the rest. */
static uint32_t order_key(float f) {
        uint32_t b;
        memcpy(&b, &f, sizeof(b));
        return b & 0x80000000u ? ~b : b | 0x80000000u;
}

static float key_value(uint32_t key) {
        uint32_t b = key & 0x80000000u ? key & 0x7fffffffu : ~key;
        float f;
        memcpy(&f, &b, sizeof(f));
        return f;
}

/* The k-th largest of v[0..n) (1 <= k <= n <= MODEL_VOCAB): a radix selection a byte of the
 * key at a time, over the candidates left by the previous byte. Counting has no
 * data-dependent branches; a sort or a quickselect of the 256 logits cost, in mispredicted
 * branches, a third of the int8 model's time per token. */
static float kth_largest(const float *v, int n, int k) {
        uint32_t keys[MODEL_VOCAB];

        for (int i = 0; i < n; i++)
                keys[i] = order_key(v[i]);
        for (int shift = 24; shift >= 0; shift -= 8) {
                int count[256] = { 0 }, d = 255, m = 0;
                for (int i = 0; i < n; i++)
                        count[(keys[i] >> shift) & 0xff]++;
                while (count[d] < k)
                        k -= count[d--];
                /* keep the bucket's keys: the k-th largest is among them */
                for (int i = 0; i < n; i++) {
                        keys[m] = keys[i];
                        m += ((keys[i] >> shift) & 0xff) == (uint32_t) d;
                }
                n = m;
        }
        return key_value(keys[0]);
}

uint8_t sampler_pick(float *logits, const sample_opts *opts, rng_t *rng) {
        int best = 0;

        for (int i = 1; i < MODEL_VOCAB; i++)
                if (logits[i] > logits[best])
                        best = i;
        if (opts->temperature <= 0.0f)
                return (uint8_t) best;

        float cutoff = -INFINITY;
        if (opts->top_k > 0 && opts->top_k < MODEL_VOCAB) {
                cutoff = kth_largest(logits, MODEL_VOCAB, opts->top_k);
        }
        double sum = 0.0;
        float mx = logits[best];
        for (int i = 0; i < MODEL_VOCAB; i++) {
                logits[i] = logits[i] < cutoff ? 0.0f : expf((logits[i] - mx) / opts->temperature);
                sum += logits[i];
        }
        double r = (double) rng_uniform(rng) * sum, acc = 0.0;
        for (int i = 0; i < MODEL_VOCAB; i++) {
                acc += logits[i];
                if (r < acc)
                        return (uint8_t) i;
        }
        return (uint8_t) best;
}

int sample_generate(sampler *s, const uint8_t *prompt, size_t prompt_len, uint8_t *out,
                    size_t n_out, const sample_opts *opts) {
        static const uint8_t newline[1] = { '\n' };
        float logits[MODEL_VOCAB];
        rng_t rng;
        size_t n = 0;
        int r;

        rng_seed(&rng, opts->seed);
        sampler_reset(s);
        /* An empty prompt starts from a newline, the most common document boundary. */
        if (prompt_len == 0) {
                prompt = newline;
                prompt_len = 1;
        }
        for (size_t i = 0; i < prompt_len; i++) {
                r = sampler_feed(s, prompt[i], logits);
                if (r < 0)
                        return r;
        }
        while (n < n_out) {
                uint8_t tok = sampler_pick(logits, opts, &rng);
                out[n++] = tok;
                if (n == n_out)
                        break;
                r = sampler_feed(s, tok, logits);
                if (r == -ENOSPC)
                        break;
                if (r < 0)
                        return r;
        }
        return (int) n;
}
