/* SPDX-License-Identifier: MIT */
#include "stage.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "sample.h"

struct stage_session {
        int pos, n_layers, t_pad;
        /* the sampler's cache layout (sample.h): keys (n_layers, C, t_pad), values
         * (n_layers, T, C) */
        float *kcache, *vcache;
        float *x, *ln, *qkv, *y, *tmp, *h4, *h4g, *scores;
        float mean_rstd[2];
};

int stage_init(stage *st, const model_config *cfg, const model_tensors *p, int first, int last) {
        if (model_config_validate(cfg) < 0 || first < 0 || last < first || last >= cfg->n_layer)
                return -EINVAL;
        *st = (stage){ .cfg = *cfg, .first = first, .last = last, .p = p };
        return 0;
}

size_t stage_session_bytes(const model_config *cfg, int n_layers) {
        size_t C = cfg->n_embd, T = cfg->block_size, tp = (size_t) sample_kv_t_pad(cfg->block_size);
        return sizeof(float) * ((size_t) n_layers * (tp + T) * C + 12 * C + tp);
}

size_t stage_param_bytes(const model_config *cfg, int first, int last) {
        size_t C = cfg->n_embd, T = cfg->block_size;
        size_t per_layer = 12 * C * C + 13 * C; /* ln1 2C, qkv 3CC+3C, proj CC+C, ln2 2C, fc 4CC+4C, fcproj 4CC+C */
        size_t n = (size_t) (last - first + 1) * per_layer;

        if (first == 0)
                n += MODEL_VOCAB * C + T * C;
        if (last == cfg->n_layer - 1)
                n += (first == 0 ? 0 : MODEL_VOCAB * C) + 2 * C;
        return n * sizeof(float);
}

int stage_session_new(const stage *st, stage_session **ret) {
        size_t C = st->cfg.n_embd, T = st->cfg.block_size, nl = (size_t) (st->last - st->first + 1);
        stage_session *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->n_layers = (int) nl;
        s->t_pad = sample_kv_t_pad((int) T);
        s->kcache = calloc(nl * (size_t) s->t_pad * C, sizeof(float));
        s->vcache = calloc(nl * T * C, sizeof(float));
        s->x = calloc(C, sizeof(float));
        s->ln = calloc(C, sizeof(float));
        s->qkv = calloc(3 * C, sizeof(float));
        s->y = calloc(C, sizeof(float));
        s->tmp = calloc(C, sizeof(float));
        s->h4 = calloc(4 * C, sizeof(float));
        s->h4g = calloc(4 * C, sizeof(float));
        s->scores = calloc((size_t) s->t_pad, sizeof(float));
        if (!s->kcache || !s->vcache || !s->x || !s->ln || !s->qkv || !s->y || !s->tmp || !s->h4 ||
            !s->h4g || !s->scores) {
                stage_session_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void stage_session_free(stage_session *s) {
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
        free(s);
}

int stage_session_pos(const stage_session *s) {
        return s->pos;
}

/* One position through the stage's layers, s->x in and out (as in sampler_feed). */
static void layers_one(const stage *st, stage_session *s) {
        const model_tensors *p = st->p;
        int C = st->cfg.n_embd, H = st->cfg.n_head, T = st->cfg.block_size;
        float *mean = &s->mean_rstd[0], *rstd = &s->mean_rstd[1];

        for (int l = st->first; l <= st->last; l++) {
                size_t li = (size_t) (l - st->first);
                float *kc = s->kcache + li * (size_t) s->t_pad * C, *vc = s->vcache + li * T * C;

                nn_layernorm_forward(s->ln, mean, rstd, s->x, p->ln1_w[l], p->ln1_b[l], 1, C);
                nn_matmul_forward(s->qkv, s->ln, p->qkv_w[l], p->qkv_b[l], 1, C, 3 * C);
                /* the sampler's own attention: the bits must be its bits */
                sample_kv_store(kc, vc, s->t_pad, C, s->pos, s->qkv + C, s->qkv + 2 * C);
                sample_attend(s->qkv, kc, vc, s->t_pad, C, H, s->pos, s->scores, s->y);
                nn_matmul_forward(s->tmp, s->y, p->attproj_w[l], p->attproj_b[l], 1, C, C);
                nn_residual_forward(s->x, s->x, s->tmp, C);
                nn_layernorm_forward(s->ln, mean, rstd, s->x, p->ln2_w[l], p->ln2_b[l], 1, C);
                nn_matmul_forward(s->h4, s->ln, p->fc_w[l], p->fc_b[l], 1, C, 4 * C);
                nn_gelu_forward(s->h4g, s->h4, 4 * C);
                nn_matmul_forward(s->tmp, s->h4g, p->fcproj_w[l], p->fcproj_b[l], 1, 4 * C, C);
                nn_residual_forward(s->x, s->x, s->tmp, C);
        }
}

int stage_forward(const stage *st, stage_session *s, int pos, const float *in, int n, float *out) {
        const model_tensors *p = st->p;
        int C = st->cfg.n_embd;

        if (n <= 0 || pos < 0)
                return -EINVAL;
        if (pos > s->pos)
                return -ERANGE;
        if (n > st->cfg.block_size - pos)
                return -ENOSPC;
        if (stage_is_first(st))
                for (int t = 0; t < n; t++)
                        if (!(in[t] >= 0.0f && in[t] <= 255.0f) || in[t] != floorf(in[t]))
                                return -EINVAL;
        s->pos = pos; /* a replay overwrites the cache from here on */
        for (int t = 0; t < n; t++) {
                if (stage_is_first(st)) {
                        uint8_t tok = (uint8_t) in[t];
                        nn_encoder_forward(s->x, &tok, p->wte, p->wpe + (size_t) s->pos * C, 1, 1, C);
                } else
                        memcpy(s->x, in + (size_t) t * C, C * sizeof(float));
                layers_one(st, s);
                if (!stage_is_last(st))
                        memcpy(out + (size_t) t * C, s->x, C * sizeof(float));
                else if (t == n - 1) {
                        nn_layernorm_forward(s->ln, &s->mean_rstd[0], &s->mean_rstd[1], s->x,
                                             p->lnf_w, p->lnf_b, 1, C);
                        nn_matmul_forward(out, s->ln, p->wte, NULL, 1, C, MODEL_VOCAB);
                }
                s->pos++;
        }
        return 0;
}
