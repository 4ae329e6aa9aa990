/* SPDX-License-Identifier: MIT */
#include "stage-load.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "log.h"
#include "macros.h"
#include "safetensors.h"

/* The model_tensors field that names view v. */
static float **field(model_tensors *t, const model_layout *lay, int v) {
        if (v == lay->wte)
                return &t->wte;
        if (v == lay->wpe)
                return &t->wpe;
        if (v == lay->lnf_w)
                return &t->lnf_w;
        if (v == lay->lnf_b)
                return &t->lnf_b;
        for (int l = 0; l < lay->cfg.n_layer; l++) {
                float **f[_LP_MAX] = { &t->ln1_w[l], &t->ln1_b[l], &t->qkv_w[l], &t->qkv_b[l],
                                       &t->attproj_w[l], &t->attproj_b[l], &t->ln2_w[l], &t->ln2_b[l],
                                       &t->fc_w[l], &t->fc_b[l], &t->fcproj_w[l], &t->fcproj_b[l] };
                for (int k = 0; k < _LP_MAX; k++)
                        if (lay->layer[l][k] == v)
                                return f[k];
        }
        return NULL;
}

static bool needed(const model_layout *lay, int v, int first, int last) {
        int L = lay->cfg.n_layer;
        if (v == lay->wte)
                return first == 0 || last == L - 1;
        if (v == lay->wpe)
                return first == 0;
        if (v == lay->lnf_w || v == lay->lnf_b)
                return last == L - 1;
        for (int l = first; l <= last; l++)
                for (int k = 0; k < _LP_MAX; k++)
                        if (lay->layer[l][k] == v)
                                return true;
        return false;
}

int stage_load_span(const char *path, int first, int last, stage_weights *ret) {
        _cleanup_free_ model_layout *lay = calloc(1, sizeof(*lay));
        model_config cfg;
        st_file *f = NULL;
        size_t n = 0, at = 0;
        int r;

        memset(ret, 0, sizeof(*ret));
        if (!lay)
                return -ENOMEM;
        r = ckpt_read_config(path, &cfg);
        if (r < 0)
                return r;
        if (first < 0 || last < first || last >= cfg.n_layer)
                return log_error_errno(EINVAL, "%s: no layers %d-%d in a %d-layer model", path, first,
                                       last, cfg.n_layer);
        r = st_load(path, &f); /* mapped: only the span's pages are read */
        if (r < 0)
                return r;
        const char *vs = st_meta_get(f, "model_version");
        char *end = NULL;
        ret->version = vs ? strtoull(vs, &end, 10) : 0;
        if (!vs || !*vs || *end) {
                r = log_error_errno(EBADMSG, "%s: metadata field 'model_version' missing or bad", path);
                goto out;
        }
        model_layout_init(lay, &cfg);
        for (size_t v = 0; v < lay->n_views; v++)
                if (needed(lay, (int) v, first, last))
                        n += lay->views[v].numel;
        ret->buf = malloc(n * sizeof(float));
        if (!ret->buf) {
                r = log_error_errno(ENOMEM, "%s: no memory for layers %d-%d (%zu MiB)", path, first,
                                    last, (n * sizeof(float)) >> 20);
                goto out;
        }
        for (size_t v = 0; v < lay->n_views; v++) {
                const model_view *mv = &lay->views[v];
                const st_tensor *t;
                if (!needed(lay, (int) v, first, last))
                        continue;
                t = st_find(f, mv->name);
                if (!t || t->dtype != ST_F32 || t->ndim != (unsigned) mv->ndim ||
                    t->shape[0] != (uint64_t) mv->shape[0] ||
                    (mv->ndim == 2 && t->shape[1] != (uint64_t) mv->shape[1])) {
                        r = log_error_errno(EBADMSG, "%s: tensor '%s' missing or of the wrong shape",
                                            path, mv->name);
                        goto out;
                }
                float *dst = ret->buf + at;
                memcpy(dst, t->data, mv->numel * sizeof(float));
                for (size_t i = 0; i < mv->numel; i++)
                        if (!isfinite(dst[i])) {
                                r = log_error_errno(EBADMSG, "%s: tensor '%s' holds a non-finite value",
                                                    path, mv->name);
                                goto out;
                        }
                *field(&ret->p, lay, (int) v) = dst;
                at += mv->numel;
        }
        ret->cfg = cfg;
        ret->first = first;
        ret->last = last;
        ret->bytes = n * sizeof(float);
        r = 0;
out:
        st_free(f);
        if (r < 0)
                stage_weights_done(ret);
        return r;
}

void stage_weights_done(stage_weights *w) {
        free(w->buf);
        memset(w, 0, sizeof(*w));
}
