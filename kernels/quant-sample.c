/* SPDX-License-Identifier: MIT */
#include "quant-sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool is_matrix(const model_layout *lay, int vi) {
        return lay->views[vi].ndim == 2;
}

quant_matrix *quant_model_matrix(quant_model *q, int vi) {
        const model_layout *lay = &q->layout;

        if (vi == lay->wte)
                return &q->wte;
        if (vi == lay->wpe)
                return &q->wpe;
        for (int l = 0; l < lay->cfg.n_layer; l++) {
                if (vi == lay->layer[l][LP_QKV_W])
                        return &q->qkv[l];
                if (vi == lay->layer[l][LP_ATTPROJ_W])
                        return &q->attproj[l];
                if (vi == lay->layer[l][LP_FC_W])
                        return &q->fc[l];
                if (vi == lay->layer[l][LP_FCPROJ_W])
                        return &q->fcproj[l];
        }
        return NULL;
}

/* 1-D views are packed in layout order: view vi sits after every earlier 1-D view. */
float *quant_model_vec(quant_model *q, int vi) {
        size_t off = 0;

        if (is_matrix(&q->layout, vi))
                return NULL;
        for (int i = 0; i < vi; i++)
                if (!is_matrix(&q->layout, i))
                        off += q->layout.views[i].numel;
        return q->vecs + off;
}

void quant_model_free(quant_model *q) {
        if (!q)
                return;
        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                quant_matrix *m = quant_model_matrix(q, (int) vi);
                if (m)
                        quant_matrix_free(m);
        }
        free(q->vecs);
        free(q);
}

int quant_model_new(const model_config *cfg, quant_kind kind, quant_kind embed_kind,
                    quant_model **ret) {
        quant_model *q;
        int r;

        r = model_config_validate(cfg);
        if (r < 0)
                return r;
        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        model_layout_init(&q->layout, cfg);
        q->kind = kind;
        q->embed_kind = embed_kind;
        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                const model_view *v = &q->layout.views[vi];
                quant_matrix *m = quant_model_matrix(q, (int) vi);
                if (m) {
                        bool embed = (int) vi == q->layout.wte || (int) vi == q->layout.wpe;
                        r = quant_matrix_alloc(m, v->shape[0], v->shape[1],
                                               embed ? embed_kind : kind);
                        if (r < 0) {
                                quant_model_free(q);
                                return r;
                        }
                } else
                        q->n_vecs += v->numel;
        }
        q->vecs = calloc(q->n_vecs, sizeof(float));
        if (!q->vecs) {
                quant_model_free(q);
                return -ENOMEM;
        }
        const model_layout *lay = &q->layout;
        for (int l = 0; l < cfg->n_layer; l++) {
                q->p.ln1_w[l] = quant_model_vec(q, lay->layer[l][LP_LN1_W]);
                q->p.ln1_b[l] = quant_model_vec(q, lay->layer[l][LP_LN1_B]);
                q->p.qkv_b[l] = quant_model_vec(q, lay->layer[l][LP_QKV_B]);
                q->p.attproj_b[l] = quant_model_vec(q, lay->layer[l][LP_ATTPROJ_B]);
                q->p.ln2_w[l] = quant_model_vec(q, lay->layer[l][LP_LN2_W]);
                q->p.ln2_b[l] = quant_model_vec(q, lay->layer[l][LP_LN2_B]);
                q->p.fc_b[l] = quant_model_vec(q, lay->layer[l][LP_FC_B]);
                q->p.fcproj_b[l] = quant_model_vec(q, lay->layer[l][LP_FCPROJ_B]);
        }
        q->p.lnf_w = quant_model_vec(q, lay->lnf_w);
        q->p.lnf_b = quant_model_vec(q, lay->lnf_b);
        *ret = q;
        return 0;
}

int quant_model_from_model(const model *m, quant_kind kind, quant_kind embed_kind,
                           quant_model **ret) {
        quant_model *q;
        int r = quant_model_new(&m->layout.cfg, kind, embed_kind, &q);

        if (r < 0)
                return r;
        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                const model_view *v = &q->layout.views[vi];
                quant_matrix *qm = quant_model_matrix(q, (int) vi);
                if (!qm) {
                        memcpy(quant_model_vec(q, (int) vi), m->params + v->offset,
                               v->numel * sizeof(float));
                        continue;
                }
                quant_kind k = qm->kind;
                quant_matrix_free(qm);
                r = quant_matrix_new(qm, m->params + v->offset, v->shape[0], v->shape[1], k);
                if (r < 0) {
                        quant_model_free(q);
                        return r;
                }
        }
        *ret = q;
        return 0;
}

size_t quant_model_weight_bytes(const quant_model *q) {
        size_t n = q->n_vecs * sizeof(float);

        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                const quant_matrix *m = quant_model_matrix((quant_model *) q, (int) vi);
                if (m)
                        n += quant_matrix_bytes(m) + (m->rowsum ? m->rows * sizeof(int32_t) : 0);
        }
        return n;
}

static void q_matvec(const void *ctx, sampler_matrix which, int l, const float *x, float *out) {
        const quant_model *q = ctx;

        switch (which) {
        case SAMPLER_QKV:
                quant_matvec(&q->qkv[l], x, q->p.qkv_b[l], out);
                break;
        case SAMPLER_ATTPROJ:
                quant_matvec(&q->attproj[l], x, q->p.attproj_b[l], out);
                break;
        case SAMPLER_FC:
                quant_matvec(&q->fc[l], x, q->p.fc_b[l], out);
                break;
        case SAMPLER_FCPROJ:
                quant_matvec(&q->fcproj[l], x, q->p.fcproj_b[l], out);
                break;
        case SAMPLER_LOGITS:
                quant_matvec(&q->wte, x, NULL, out);
                break;
        }
}

static void q_embed(const void *ctx, uint8_t token, int pos, float *out) {
        const quant_model *q = ctx;
        quant_matrix_row(&q->wte, token, out);
        quant_matrix_row_add(&q->wpe, pos, out);
}

int quant_sampler_new(quant_model *q, sampler **ret) {
        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                quant_matrix *m = quant_model_matrix(q, (int) vi);
                if (m)
                        quant_matrix_finish(m);
        }
        const sampler_weights w = { .cfg = &q->layout.cfg,
                                    .p = &q->p,
                                    .matvec = q_matvec,
                                    .embed = q_embed,
                                    .ctx = q };
        return sampler_new_weights(&w, ret);
}

int sampler_window_loss(sampler *s, const uint8_t *tok, const uint8_t *tgt, int n, double *sum) {
        float logits[MODEL_VOCAB];

        sampler_reset(s);
        for (int i = 0; i < n; i++) {
                int r = sampler_feed(s, tok[i], logits);
                if (r < 0)
                        return r;
                /* log-sum-exp in double: the loss of one byte, as nn_crossentropy_forward */
                float mx = logits[0];
                for (int v = 1; v < MODEL_VOCAB; v++)
                        mx = logits[v] > mx ? logits[v] : mx;
                double z = 0.0;
                for (int v = 0; v < MODEL_VOCAB; v++)
                        z += exp((double) (logits[v] - mx));
                *sum += log(z) - (double) (logits[tgt[i]] - mx);
        }
        return 0;
}
