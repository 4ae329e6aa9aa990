/* SPDX-License-Identifier: MIT */
#include "sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

struct sampler {
        sampler_weights w;
        int pos;
        float *kcache, *vcache; /* (L, T, C) each */
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
        s->kcache = calloc(L * T * C, sizeof(float));
        s->vcache = calloc(L * T * C, sizeof(float));
        s->x = calloc(C, sizeof(float));
        s->ln = calloc(C, sizeof(float));
        s->qkv = calloc(3 * C, sizeof(float));
        s->y = calloc(C, sizeof(float));
        s->tmp = calloc(C, sizeof(float));
        s->h4 = calloc(4 * C, sizeof(float));
        s->h4g = calloc(4 * C, sizeof(float));
        s->scores = calloc(T, sizeof(float));
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

/* Attention of the newest position over the cached keys and values of one layer. */
static void attend(sampler *s, const float *kc, const float *vc, int C, int H) {
        int hs = C / H, n = s->pos + 1;
        float scale = 1.0f / sqrtf((float) hs);

        for (int h = 0; h < H; h++) {
                const float *q = s->qkv + h * hs;
                float *y = s->y + h * hs;
                float mx = -INFINITY, sum = 0.0f;

                for (int j = 0; j < n; j++) {
                        const float *k = kc + (size_t) j * C + h * hs;
                        float dot = 0.0f;
                        for (int i = 0; i < hs; i++)
                                dot += q[i] * k[i];
                        s->scores[j] = dot * scale;
                        mx = s->scores[j] > mx ? s->scores[j] : mx;
                }
                for (int j = 0; j < n; j++) {
                        s->scores[j] = nn_expf(s->scores[j] - mx);
                        sum += s->scores[j];
                }
                memset(y, 0, hs * sizeof(float));
                for (int j = 0; j < n; j++) {
                        const float *v = vc + (size_t) j * C + h * hs;
                        float w = s->scores[j] / sum;
                        for (int i = 0; i < hs; i++)
                                y[i] += w * v[i];
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
                float *kc = s->kcache + (size_t) l * T * C, *vc = s->vcache + (size_t) l * T * C;

                nn_layernorm_forward(s->ln, mean, rstd, s->x, p->ln1_w[l], p->ln1_b[l], 1, C);
                w->matvec(w->ctx, SAMPLER_QKV, l, s->ln, s->qkv);
                memcpy(kc + (size_t) s->pos * C, s->qkv + C, C * sizeof(float));
                memcpy(vc + (size_t) s->pos * C, s->qkv + 2 * C, C * sizeof(float));
                attend(s, kc, vc, C, H);
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

static int cmp_desc(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return (x < y) - (x > y);
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
                float sorted[MODEL_VOCAB];
                memcpy(sorted, logits, sizeof(sorted));
                qsort(sorted, MODEL_VOCAB, sizeof(float), cmp_desc);
                cutoff = sorted[opts->top_k - 1];
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
