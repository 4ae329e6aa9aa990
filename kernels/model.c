/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn.h"
#include "parallel.h"
#include "rng.h"

static const model_config known_configs[] = {
        { .name = "tiny", .block_size = 128, .n_embd = 128, .n_layer = 2, .n_head = 4 },
        { .name = "small", .block_size = 256, .n_embd = 256, .n_layer = 4, .n_head = 4 },
        { .name = "medium", .block_size = 512, .n_embd = 512, .n_layer = 8, .n_head = 8 },
};

int model_config_by_name(const char *name, model_config *ret) {
        for (size_t i = 0; i < sizeof(known_configs) / sizeof(known_configs[0]); i++)
                if (strcmp(known_configs[i].name, name) == 0) {
                        *ret = known_configs[i];
                        return 0;
                }
        return -EINVAL;
}

int model_config_validate(const model_config *cfg) {
        if (cfg->block_size < 1 || cfg->block_size > 8192)
                return -EINVAL;
        if (cfg->n_embd < 1 || cfg->n_embd > 8192 || cfg->n_head < 1 ||
            cfg->n_embd % cfg->n_head != 0)
                return -EINVAL;
        if (cfg->n_layer < 1 || cfg->n_layer > 64)
                return -EINVAL;
        return 0;
}

/* layer < 0: a global tensor named 'name'; otherwise "h.<layer>.<name>". */
static int add_view(model_layout *lay, size_t *off, bool decay, int d0, int d1, int layer,
                    const char *name) {
        model_view *v = &lay->views[lay->n_views];

        if (layer < 0)
                snprintf(v->name, sizeof(v->name), "%s", name);
        else
                snprintf(v->name, sizeof(v->name), "h.%d.%s", layer, name);
        v->offset = *off;
        v->ndim = d1 > 0 ? 2 : 1;
        v->shape[0] = d0;
        v->shape[1] = d1 > 0 ? d1 : 0;
        v->numel = (size_t) d0 * (d1 > 0 ? (size_t) d1 : 1);
        v->decay = decay;
        *off += v->numel;
        return (int) lay->n_views++;
}

void model_layout_init(model_layout *lay, const model_config *cfg) {
        int C = cfg->n_embd;
        size_t off = 0;

        memset(lay, 0, sizeof(*lay));
        lay->cfg = *cfg;
        lay->wte = add_view(lay, &off, true, MODEL_VOCAB, C, -1, "wte.weight");
        lay->wpe = add_view(lay, &off, true, cfg->block_size, C, -1, "wpe.weight");
        for (int l = 0; l < cfg->n_layer; l++) {
                int *v = lay->layer[l];
                v[LP_LN1_W] = add_view(lay, &off, false, C, 0, l, "ln_1.weight");
                v[LP_LN1_B] = add_view(lay, &off, false, C, 0, l, "ln_1.bias");
                v[LP_QKV_W] = add_view(lay, &off, true, 3 * C, C, l, "attn.qkv.weight");
                v[LP_QKV_B] = add_view(lay, &off, false, 3 * C, 0, l, "attn.qkv.bias");
                v[LP_ATTPROJ_W] = add_view(lay, &off, true, C, C, l, "attn.proj.weight");
                v[LP_ATTPROJ_B] = add_view(lay, &off, false, C, 0, l, "attn.proj.bias");
                v[LP_LN2_W] = add_view(lay, &off, false, C, 0, l, "ln_2.weight");
                v[LP_LN2_B] = add_view(lay, &off, false, C, 0, l, "ln_2.bias");
                v[LP_FC_W] = add_view(lay, &off, true, 4 * C, C, l, "mlp.fc.weight");
                v[LP_FC_B] = add_view(lay, &off, false, 4 * C, 0, l, "mlp.fc.bias");
                v[LP_FCPROJ_W] = add_view(lay, &off, true, C, 4 * C, l, "mlp.proj.weight");
                v[LP_FCPROJ_B] = add_view(lay, &off, false, C, 0, l, "mlp.proj.bias");
        }
        lay->lnf_w = add_view(lay, &off, false, C, 0, -1, "ln_f.weight");
        lay->lnf_b = add_view(lay, &off, false, C, 0, -1, "ln_f.bias");
        lay->n_params = off;
}

void model_tensors_bind(model_tensors *t, const model_layout *lay, float *buf) {
#define VIEW(i) (buf + lay->views[(i)].offset)
        t->wte = VIEW(lay->wte);
        t->wpe = VIEW(lay->wpe);
        for (int l = 0; l < lay->cfg.n_layer; l++) {
                const int *v = lay->layer[l];
                t->ln1_w[l] = VIEW(v[LP_LN1_W]);
                t->ln1_b[l] = VIEW(v[LP_LN1_B]);
                t->qkv_w[l] = VIEW(v[LP_QKV_W]);
                t->qkv_b[l] = VIEW(v[LP_QKV_B]);
                t->attproj_w[l] = VIEW(v[LP_ATTPROJ_W]);
                t->attproj_b[l] = VIEW(v[LP_ATTPROJ_B]);
                t->ln2_w[l] = VIEW(v[LP_LN2_W]);
                t->ln2_b[l] = VIEW(v[LP_LN2_B]);
                t->fc_w[l] = VIEW(v[LP_FC_W]);
                t->fc_b[l] = VIEW(v[LP_FC_B]);
                t->fcproj_w[l] = VIEW(v[LP_FCPROJ_W]);
                t->fcproj_b[l] = VIEW(v[LP_FCPROJ_B]);
        }
        t->lnf_w = VIEW(lay->lnf_w);
        t->lnf_b = VIEW(lay->lnf_b);
#undef VIEW
}

/* Carves the arena; with arena == NULL only counts. Returns floats needed. */
static size_t acts_layout(model_acts *a, const model_config *cfg, int B, int T, float *arena) {
        size_t L = cfg->n_layer, C = cfg->n_embd, H = cfg->n_head, BT = (size_t) B * T;
        size_t off = 0;
#define TAKE(field, n)                                                                             \
        do {                                                                                       \
                a->field = arena ? arena + off : NULL;                                             \
                off += (n);                                                                        \
                off = (off + 15) & ~(size_t) 15; /* 64-byte alignment for every tensor */          \
        } while (0)
        TAKE(encoded, BT * C);
        TAKE(ln1, L * BT * C);
        TAKE(ln1_mean, L * BT);
        TAKE(ln1_rstd, L * BT);
        TAKE(qkv, L * BT * 3 * C);
        TAKE(atty, L * BT * C);
        TAKE(att, L * B * H * T * T);
        TAKE(attproj, L * BT * C);
        TAKE(residual2, L * BT * C);
        TAKE(ln2, L * BT * C);
        TAKE(ln2_mean, L * BT);
        TAKE(ln2_rstd, L * BT);
        TAKE(fch, L * BT * 4 * C);
        TAKE(fch_gelu, L * BT * 4 * C);
        TAKE(fcproj, L * BT * C);
        TAKE(residual3, L * BT * C);
        TAKE(lnf, BT * C);
        TAKE(lnf_mean, BT);
        TAKE(lnf_rstd, BT);
        TAKE(logits, BT * MODEL_VOCAB);
        TAKE(probs, BT * MODEL_VOCAB);
        TAKE(losses, BT);
        TAKE(dresidual, BT * C);
        TAKE(dbt4c, BT * 4 * C);
        TAKE(dbt4c2, BT * 4 * C);
        TAKE(dbtc, BT * C);
        TAKE(dqkv, BT * 3 * C);
        TAKE(datt, (size_t) PAR_MAX_THREADS * T * T);
        TAKE(dlogits, BT * MODEL_VOCAB);
#undef TAKE
        a->B = B;
        a->T = T;
        a->n_floats = off;
        return off;
}

static float *alloc_floats(size_t n) {
        void *p = NULL;
        if (posix_memalign(&p, 64, n * sizeof(float)) != 0)
                return NULL;
        memset(p, 0, n * sizeof(float));
        return p;
}

int model_new(const model_config *cfg, int B, int T, model **ret) {
        model *m;
        int r;

        r = model_config_validate(cfg);
        if (r < 0)
                return r;
        if (B < 1 || T < 1 || T > cfg->block_size)
                return -EINVAL;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        model_layout_init(&m->layout, cfg);
        m->params = alloc_floats(m->layout.n_params);
        m->grads = alloc_floats(m->layout.n_params);
        size_t n_acts = acts_layout(&m->acts, cfg, B, T, NULL);
        m->acts.arena = alloc_floats(n_acts);
        m->acts_capacity = n_acts;
        if (!m->params || !m->grads || !m->acts.arena) {
                model_free(m);
                return -ENOMEM;
        }
        acts_layout(&m->acts, cfg, B, T, m->acts.arena);
        model_tensors_bind(&m->p, &m->layout, m->params);
        model_tensors_bind(&m->g, &m->layout, m->grads);
        *ret = m;
        return 0;
}

void model_free(model *m) {
        if (!m)
                return;
        free(m->params);
        free(m->grads);
        free(m->acts.arena);
        free(m);
}

void model_init_params(model *m, uint64_t seed) {
        const model_layout *lay = &m->layout;
        float resid_std = 0.02f / sqrtf(2.0f * (float) lay->cfg.n_layer);
        rng_t rng;

        rng_seed(&rng, seed);
        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                float *p = m->params + v->offset;
                const char *dot = strrchr(v->name, '.');
                bool is_ln_weight =
                        v->ndim == 1 && strstr(v->name, "ln_") && strcmp(dot, ".weight") == 0;
                bool is_resid_proj = strstr(v->name, ".proj.weight") != NULL;

                for (size_t j = 0; j < v->numel; j++) {
                        if (v->ndim == 2)
                                p[j] = rng_normal(&rng) * (is_resid_proj ? resid_std : 0.02f);
                        else
                                p[j] = is_ln_weight ? 1.0f : 0.0f;
                }
        }
}

void model_zero_grad(model *m) {
        memset(m->grads, 0, m->layout.n_params * sizeof(float));
}

const char *model_prof_name(int kind) {
        static const char *const names[_PROF_MAX] = {
                [PROF_EMBED] = "embedding",   [PROF_LAYERNORM] = "layernorm",
                [PROF_MATMUL] = "matmul",     [PROF_ATTENTION] = "attention",
                [PROF_GELU] = "gelu",         [PROF_RESIDUAL] = "residual",
                [PROF_LOSS] = "softmax+loss",
        };
        return kind >= 0 && kind < _PROF_MAX ? names[kind] : "?";
}

/* Timing is off unless a benchmark asked for it; then each kernel call is bracketed. */
#define PROF(m, dir, kind, stmt)                                                                   \
        do {                                                                                       \
                if ((m)->profile) {                                                                \
                        double _t0 = mono_now_s();                                                    \
                        stmt;                                                                      \
                        (m)->profile->dir[kind] += mono_now_s() - _t0;                                \
                } else {                                                                           \
                        stmt;                                                                      \
                }                                                                                  \
        } while (0)

static bool should_stop(model *m) {
        return m->yield && m->yield(m->yield_userdata);
}

int model_forward(model *m, const uint8_t *tokens, const uint8_t *targets, int B, int T,
                  float *ret_loss) {
        const model_config *cfg = &m->layout.cfg;
        model_acts *a = &m->acts;
        model_tensors *p = &m->p;
        int C = cfg->n_embd, H = cfg->n_head;
        size_t BT = (size_t) B * T;

        if (B < 1 || T < 1 || T > cfg->block_size)
                return -EINVAL;
        /* Strides inside the arena follow the (B, T) of this call; a smaller shape than the
         * one allocated for is re-laid out in place. */
        if (B != a->B || T != a->T) {
                model_acts probe;
                if (acts_layout(&probe, cfg, B, T, NULL) > m->acts_capacity)
                        return -EINVAL;
                acts_layout(a, cfg, B, T, a->arena);
        }
        m->B = B;
        m->T = T;
        m->targets = targets;

        PROF(m, fwd, PROF_EMBED, nn_encoder_forward(a->encoded, tokens, p->wte, p->wpe, B, T, C));
        for (int l = 0; l < cfg->n_layer; l++) {
                const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * BT * C;
                float *ln1 = a->ln1 + l * BT * C, *ln1_mean = a->ln1_mean + l * BT;
                float *ln1_rstd = a->ln1_rstd + l * BT, *qkv = a->qkv + l * BT * 3 * C;
                float *atty = a->atty + l * BT * C, *att = a->att + l * (size_t) B * H * T * T;
                float *attproj = a->attproj + l * BT * C, *residual2 = a->residual2 + l * BT * C;
                float *ln2 = a->ln2 + l * BT * C, *ln2_mean = a->ln2_mean + l * BT;
                float *ln2_rstd = a->ln2_rstd + l * BT, *fch = a->fch + l * BT * 4 * C;
                float *fch_gelu = a->fch_gelu + l * BT * 4 * C;
                float *fcproj = a->fcproj + l * BT * C, *residual3 = a->residual3 + l * BT * C;

                if (should_stop(m))
                        return -ECANCELED;
                PROF(m, fwd, PROF_LAYERNORM,
                     nn_layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, p->ln1_w[l],
                                          p->ln1_b[l], BT, C));
                PROF(m, fwd, PROF_MATMUL,
                     nn_matmul_forward(qkv, ln1, p->qkv_w[l], p->qkv_b[l], BT, C, 3 * C));
                PROF(m, fwd, PROF_ATTENTION, nn_attention_forward(atty, att, qkv, B, T, C, H));
                PROF(m, fwd, PROF_MATMUL,
                     nn_matmul_forward(attproj, atty, p->attproj_w[l], p->attproj_b[l], BT, C, C));
                PROF(m, fwd, PROF_RESIDUAL,
                     nn_residual_forward(residual2, residual, attproj, BT * C));
                if (should_stop(m))
                        return -ECANCELED;
                PROF(m, fwd, PROF_LAYERNORM,
                     nn_layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p->ln2_w[l],
                                          p->ln2_b[l], BT, C));
                PROF(m, fwd, PROF_MATMUL,
                     nn_matmul_forward(fch, ln2, p->fc_w[l], p->fc_b[l], BT, C, 4 * C));
                PROF(m, fwd, PROF_GELU, nn_gelu_forward(fch_gelu, fch, BT * 4 * C));
                PROF(m, fwd, PROF_MATMUL,
                     nn_matmul_forward(fcproj, fch_gelu, p->fcproj_w[l], p->fcproj_b[l], BT, 4 * C,
                                       C));
                PROF(m, fwd, PROF_RESIDUAL,
                     nn_residual_forward(residual3, residual2, fcproj, BT * C));
        }
        if (should_stop(m))
                return -ECANCELED;
        const float *last = a->residual3 + (cfg->n_layer - 1) * BT * C;
        PROF(m, fwd, PROF_LAYERNORM,
             nn_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, last, p->lnf_w, p->lnf_b, BT,
                                  C));
        PROF(m, fwd, PROF_MATMUL,
             nn_matmul_forward(a->logits, a->lnf, p->wte, NULL, BT, C, MODEL_VOCAB));
        if (targets) {
                float loss = 0.0f;
                PROF(m, fwd, PROF_LOSS,
                     loss = nn_crossentropy_forward(a->probs, a->losses, a->logits, targets, BT,
                                                    MODEL_VOCAB));
                if (ret_loss)
                        *ret_loss = loss;
        }
        return 0;
}

int model_backward(model *m, const uint8_t *tokens, float loss_scale) {
        const model_config *cfg = &m->layout.cfg;
        model_acts *a = &m->acts;
        model_tensors *p = &m->p, *g = &m->g;
        int B = m->B, T = m->T, C = cfg->n_embd, H = cfg->n_head;
        size_t BT = (size_t) B * T;

        if (!m->targets)
                return -EINVAL;
        if (should_stop(m))
                return -ECANCELED;

        PROF(m, bwd, PROF_LOSS,
             nn_crossentropy_backward(a->dlogits, a->probs, m->targets, BT, MODEL_VOCAB,
                                      loss_scale / (float) BT));
        PROF(m, bwd, PROF_MATMUL,
             nn_matmul_backward(a->dbtc, g->wte, NULL, a->dlogits, a->lnf, p->wte, BT, C,
                                MODEL_VOCAB));
        memset(a->dresidual, 0, BT * C * sizeof(float));
        const float *last = a->residual3 + (cfg->n_layer - 1) * BT * C;
        PROF(m, bwd, PROF_LAYERNORM,
             nn_layernorm_backward(a->dresidual, g->lnf_w, g->lnf_b, a->dbtc, last, p->lnf_w,
                                   a->lnf_mean, a->lnf_rstd, BT, C));

        for (int l = cfg->n_layer - 1; l >= 0; l--) {
                const float *residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * BT * C;
                float *ln1 = a->ln1 + l * BT * C, *ln1_mean = a->ln1_mean + l * BT;
                float *ln1_rstd = a->ln1_rstd + l * BT, *qkv = a->qkv + l * BT * 3 * C;
                float *atty = a->atty + l * BT * C, *att = a->att + l * (size_t) B * H * T * T;
                float *residual2 = a->residual2 + l * BT * C;
                float *ln2 = a->ln2 + l * BT * C, *ln2_mean = a->ln2_mean + l * BT;
                float *ln2_rstd = a->ln2_rstd + l * BT, *fch = a->fch + l * BT * 4 * C;
                float *fch_gelu = a->fch_gelu + l * BT * 4 * C;

                if (should_stop(m))
                        return -ECANCELED;
                /* MLP branch: dresidual is the gradient of residual3 */
                PROF(m, bwd, PROF_MATMUL,
                     nn_matmul_backward(a->dbt4c, g->fcproj_w[l], g->fcproj_b[l], a->dresidual,
                                        fch_gelu, p->fcproj_w[l], BT, 4 * C, C));
                PROF(m, bwd, PROF_GELU, nn_gelu_backward(a->dbt4c, fch, a->dbt4c, BT * 4 * C));
                PROF(m, bwd, PROF_MATMUL,
                     nn_matmul_backward(a->dbtc, g->fc_w[l], g->fc_b[l], a->dbt4c, ln2, p->fc_w[l],
                                        BT, C, 4 * C));
                PROF(m, bwd, PROF_LAYERNORM,
                     nn_layernorm_backward(a->dresidual, g->ln2_w[l], g->ln2_b[l], a->dbtc,
                                           residual2, p->ln2_w[l], ln2_mean, ln2_rstd, BT, C));
                if (should_stop(m))
                        return -ECANCELED;
                /* attention branch: dresidual is now the gradient of residual2 */
                PROF(m, bwd, PROF_MATMUL,
                     nn_matmul_backward(a->dbtc, g->attproj_w[l], g->attproj_b[l], a->dresidual,
                                        atty, p->attproj_w[l], BT, C, C));
                PROF(m, bwd, PROF_ATTENTION,
                     nn_attention_backward(a->dqkv, a->datt, a->dbtc, qkv, att, B, T, C, H));
                PROF(m, bwd, PROF_MATMUL,
                     nn_matmul_backward(a->dbtc, g->qkv_w[l], g->qkv_b[l], a->dqkv, ln1,
                                        p->qkv_w[l], BT, C, 3 * C));
                PROF(m, bwd, PROF_LAYERNORM,
                     nn_layernorm_backward(a->dresidual, g->ln1_w[l], g->ln1_b[l], a->dbtc,
                                           residual, p->ln1_w[l], ln1_mean, ln1_rstd, BT, C));
        }
        if (should_stop(m))
                return -ECANCELED;
        PROF(m, bwd, PROF_EMBED,
             nn_encoder_backward(g->wte, g->wpe, a->dresidual, tokens, B, T, C));
        return 0;
}

double model_flops_per_token(const model_config *cfg, int T) {
        double C = cfg->n_embd, L = cfg->n_layer;
        /* matmul parameters: per layer 12 C^2 weights, plus the tied unembedding V*C */
        double n_matmul = L * 12.0 * C * C + MODEL_VOCAB * C;
        return 6.0 * n_matmul + 12.0 * L * T * C;
}
