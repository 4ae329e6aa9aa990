/* SPDX-License-Identifier: MIT */
#include "quantize.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "log.h"
#include "macros.h"
#include "safetensors.h"

#define N_META 11
#define TENSOR_NAME_MAX (MODEL_NAME_MAX + 16)

quant_kind quant_kind_of_bits(int bits) {
        return bits == 8 ? QUANT_INT8 : bits == 4 ? QUANT_INT4 : QUANT_F32;
}

static const char *suffix_of(quant_kind k) {
        return k == QUANT_INT8 ? ".q8" : k == QUANT_INT4 ? ".q4" : "";
}

int quant_save(const char *path, const quant_model *q, long step) {
        const model_layout *lay = &q->layout;
        const model_config *cfg = &lay->cfg;
        char names[2 * MODEL_MAX_VIEWS][TENSOR_NAME_MAX];
        char num[N_META][32];
        _cleanup_free_ st_tensor *t = calloc(2 * lay->n_views, sizeof(st_tensor));
        size_t n = 0;

        if (!t)
                return -ENOMEM;
        for (size_t vi = 0; vi < lay->n_views; vi++) {
                const model_view *v = &lay->views[vi];
                const quant_matrix *m = quant_model_matrix((quant_model *) q, (int) vi);

                if (!m) {
                        t[n++] = (st_tensor){ .name = v->name,
                                              .dtype = ST_F32,
                                              .ndim = 1,
                                              .shape = { (uint64_t) v->numel },
                                              .data = quant_model_vec((quant_model *) q, (int) vi),
                                              .nbytes = v->numel * sizeof(float) };
                        continue;
                }
                uint64_t rows = (uint64_t) m->rows, cols = (uint64_t) m->cols;
                snprintf(names[n], sizeof(names[n]), "%s%s", v->name, suffix_of(m->kind));
                t[n] = (st_tensor){ .name = names[n],
                                    .dtype = m->kind == QUANT_F32 ? ST_F32 : ST_U8,
                                    .ndim = 2,
                                    .shape = { rows, m->kind == QUANT_INT4 ? cols / 2 : cols },
                                    .data = m->data,
                                    .nbytes = quant_data_bytes(m->kind, m->rows, m->cols) };
                n++;
                if (m->kind == QUANT_F32)
                        continue;
                snprintf(names[n], sizeof(names[n]), "%s%s.scale", v->name, suffix_of(m->kind));
                if (m->kind == QUANT_INT8)
                        t[n] = (st_tensor){ .name = names[n],
                                            .dtype = ST_F32,
                                            .ndim = 1,
                                            .shape = { rows },
                                            .data = m->scale,
                                            .nbytes = rows * sizeof(float) };
                else
                        t[n] = (st_tensor){ .name = names[n],
                                            .dtype = ST_U8,
                                            .ndim = 3,
                                            .shape = { rows, cols / QUANT_GROUP, 2 },
                                            .data = m->scale16,
                                            .nbytes = rows * (cols / QUANT_GROUP) * 2 };
                n++;
        }
        snprintf(num[0], sizeof(num[0]), "%d", cfg->block_size);
        snprintf(num[1], sizeof(num[1]), "%d", cfg->n_embd);
        snprintf(num[2], sizeof(num[2]), "%d", cfg->n_layer);
        snprintf(num[3], sizeof(num[3]), "%d", cfg->n_head);
        snprintf(num[4], sizeof(num[4]), "%ld", step);
        snprintf(num[5], sizeof(num[5]), "%d", (int) q->kind);
        snprintf(num[6], sizeof(num[6]), "%d", (int) q->embed_kind);
        snprintf(num[7], sizeof(num[7]), "%d", QUANT_GROUP);
        const st_meta meta[] = {
                { "format", QUANT_FORMAT }, { "bits", num[5] },        { "embed_bits", num[6] },
                { "group_size", num[7] },   { "config", cfg->name },   { "block_size", num[0] },
                { "n_embd", num[1] },       { "n_layer", num[2] },     { "n_head", num[3] },
                { "step", num[4] },
        };
        return st_write(path, t, n, meta, ARRAY_SIZE(meta));
}

static int meta_int(const st_file *f, const char *key, long max, long *ret) {
        const char *s = st_meta_get(f, key);
        char *end;

        if (!s)
                return log_error_errno(EBADMSG, "%s: metadata field '%s' missing", st_source(f),
                                       key);
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < 0 || v > max)
                return log_error_errno(EBADMSG,
                                       "%s: metadata field '%s' is not an integer in [0, %ld]: "
                                       "'%s'",
                                       st_source(f), key, max, s);
        *ret = v;
        return 0;
}

static int bits_from_meta(const st_file *f, const char *key, quant_kind *ret) {
        long v = 0;
        int r = meta_int(f, key, 64, &v);

        if (r < 0)
                return r;
        if (v != 32 && v != 8 && v != 4)
                return log_error_errno(EBADMSG, "%s: metadata field '%s' is %ld, expected 32, 8 or 4",
                                       st_source(f), key, v);
        *ret = quant_kind_of_bits((int) v);
        return 0;
}

static int config_from_meta(const st_file *f, model_config *cfg) {
        static const char *const keys[4] = { "block_size", "n_embd", "n_layer", "n_head" };
        const char *name = st_meta_get(f, "config");
        long v[4], group = 0;
        int r;

        for (int i = 0; i < 4; i++) {
                r = meta_int(f, keys[i], 1 << 16, &v[i]);
                if (r < 0)
                        return r;
        }
        r = meta_int(f, "group_size", 1 << 16, &group);
        if (r < 0)
                return r;
        if (group != QUANT_GROUP)
                return log_error_errno(EBADMSG, "%s: metadata field 'group_size' is %ld, expected %d",
                                       st_source(f), group, QUANT_GROUP);
        *cfg = (model_config){ .block_size = (int) v[0],
                               .n_embd = (int) v[1],
                               .n_layer = (int) v[2],
                               .n_head = (int) v[3] };
        snprintf(cfg->name, sizeof(cfg->name), "%s", name ? name : "custom");
        if (model_config_validate(cfg) < 0 || cfg->n_embd % QUANT_GROUP != 0)
                return log_error_errno(EBADMSG,
                                       "%s: metadata describes an invalid model (T=%d C=%d L=%d "
                                       "H=%d)",
                                       st_source(f), cfg->block_size, cfg->n_embd, cfg->n_layer,
                                       cfg->n_head);
        return 0;
}

/* The tensor must exist with this dtype and shape. */
static int find_tensor(const st_file *f, const char *name, st_dtype dtype, unsigned ndim,
                       const uint64_t *shape, const st_tensor **ret) {
        const st_tensor *t = st_find(f, name);

        if (!t)
                return log_error_errno(EBADMSG, "%s: tensor '%s' missing", st_source(f), name);
        if (t->dtype != dtype)
                return log_error_errno(EBADMSG, "%s: tensor '%s' has dtype %s, expected %s",
                                       st_source(f), name, st_dtype_name(t->dtype),
                                       st_dtype_name(dtype));
        bool same = t->ndim == ndim;
        for (unsigned d = 0; same && d < ndim; d++)
                same = t->shape[d] == shape[d];
        if (!same)
                return log_error_errno(EBADMSG,
                                       "%s: tensor '%s' has the wrong shape (%u dims, first %" PRIu64
                                       "), expected %u dims, first %" PRIu64,
                                       st_source(f), name, t->ndim, t->shape[0], ndim, shape[0]);
        *ret = t;
        return 0;
}

static int check_floats(const st_file *f, const st_tensor *t, bool nonneg) {
        for (uint64_t i = 0; i < t->nbytes / sizeof(float); i++) {
                float x;
                memcpy(&x, (const char *) t->data + i * sizeof(float), sizeof(x));
                if (!isfinite(x) || (nonneg && x < 0.0f))
                        return log_error_errno(EBADMSG,
                                               "%s: tensor '%s' holds %s value %g at element %" PRIu64,
                                               st_source(f), t->name,
                                               isfinite(x) ? "a negative" : "a non-finite",
                                               (double) x, i);
        }
        return 0;
}

/* Checks and copies one matrix's tensors into m (already allocated with its kind). */
static int load_matrix(const st_file *f, const model_view *v, quant_matrix *m) {
        char name[TENSOR_NAME_MAX], sname[TENSOR_NAME_MAX + 8];
        uint64_t rows = (uint64_t) m->rows, cols = (uint64_t) m->cols;
        const st_tensor *t, *s = NULL;
        int r;

        snprintf(name, sizeof(name), "%s%s", v->name, suffix_of(m->kind));
        snprintf(sname, sizeof(sname), "%s.scale", name);
        if (m->kind == QUANT_F32) {
                r = find_tensor(f, name, ST_F32, 2, (const uint64_t[]){ rows, cols }, &t);
                if (r >= 0)
                        r = check_floats(f, t, false);
        } else if (m->kind == QUANT_INT8) {
                r = find_tensor(f, name, ST_U8, 2, (const uint64_t[]){ rows, cols }, &t);
                if (r >= 0)
                        r = find_tensor(f, sname, ST_F32, 1, (const uint64_t[]){ rows }, &s);
                if (r >= 0)
                        r = check_floats(f, s, true);
                for (uint64_t i = 0; r >= 0 && i < t->nbytes; i++)
                        if (((const uint8_t *) t->data)[i] == 0x80)
                                r = log_error_errno(EBADMSG,
                                                    "%s: tensor '%s' holds -128 at element %" PRIu64
                                                    " (int8 weights are in [-127, 127])",
                                                    st_source(f), name, i);
        } else {
                r = find_tensor(f, name, ST_U8, 2, (const uint64_t[]){ rows, cols / 2 }, &t);
                if (r >= 0)
                        r = find_tensor(f, sname, ST_U8, 3,
                                        (const uint64_t[]){ rows, cols / QUANT_GROUP, 2 }, &s);
                for (uint64_t i = 0; r >= 0 && i < t->nbytes; i++) {
                        uint8_t b = ((const uint8_t *) t->data)[i];
                        if ((b & 0xf) == 0 || (b >> 4) == 0)
                                r = log_error_errno(EBADMSG,
                                                    "%s: tensor '%s' holds -8 in byte %" PRIu64
                                                    " (int4 weights are in [-7, 7])",
                                                    st_source(f), name, i);
                }
                for (uint64_t i = 0; r >= 0 && i < (s->nbytes / 2); i++) {
                        const uint8_t *p = (const uint8_t *) s->data + 2 * i;
                        uint16_t h = (uint16_t) (p[0] | p[1] << 8);
                        if ((h & 0x8000) || (h & 0x7c00) == 0x7c00)
                                r = log_error_errno(EBADMSG,
                                                    "%s: tensor '%s': scale %" PRIu64
                                                    " is negative, infinite or NaN (0x%04x)",
                                                    st_source(f), sname, i, h);
                }
        }
        if (r < 0)
                return r;
        memcpy(m->data, t->data, t->nbytes);
        if (m->kind == QUANT_INT8)
                memcpy(m->scale, s->data, s->nbytes);
        else if (m->kind == QUANT_INT4)
                for (uint64_t i = 0; i < s->nbytes / 2; i++) {
                        const uint8_t *p = (const uint8_t *) s->data + 2 * i;
                        m->scale16[i] = (uint16_t) (p[0] | p[1] << 8);
                }
        return 0;
}

static int check_format(const st_file *f) {
        const char *fmt = st_meta_get(f, "format");

        if (!fmt || strcmp(fmt, QUANT_FORMAT) != 0)
                return log_error_errno(EBADMSG,
                                       "%s: metadata field 'format' is '%s', expected '%s'%s",
                                       st_source(f), fmt ? fmt : "(missing)", QUANT_FORMAT,
                                       fmt && strcmp(fmt, CKPT_FORMAT) == 0
                                               ? " (a training checkpoint: 'edged quantize' it)"
                                               : "");
        return 0;
}

int quant_load(const char *path, quant_model **ret) {
        quant_model *q = NULL;
        quant_kind kind, embed_kind;
        model_config cfg;
        st_file *f = NULL;
        size_t expected = 0;
        int r;

        r = st_load(path, &f);
        if (r < 0)
                return r;
        if ((r = check_format(f)) < 0 || (r = config_from_meta(f, &cfg)) < 0 ||
            (r = bits_from_meta(f, "bits", &kind)) < 0 ||
            (r = bits_from_meta(f, "embed_bits", &embed_kind)) < 0)
                goto out;
        r = quant_model_new(&cfg, kind, embed_kind, &q);
        if (r < 0) {
                log_error_errno(r, "%s: cannot allocate the model: %m", path);
                goto out;
        }
        for (size_t vi = 0; vi < q->layout.n_views; vi++) {
                const model_view *v = &q->layout.views[vi];
                quant_matrix *m = quant_model_matrix(q, (int) vi);
                const st_tensor *t;

                if (m) {
                        r = load_matrix(f, v, m);
                        expected += m->kind == QUANT_F32 ? 1 : 2;
                } else {
                        r = find_tensor(f, v->name, ST_F32, 1, (const uint64_t[]){ v->numel }, &t);
                        if (r >= 0)
                                r = check_floats(f, t, false);
                        if (r >= 0)
                                memcpy(quant_model_vec(q, (int) vi), t->data, t->nbytes);
                        expected++;
                }
                if (r < 0)
                        goto out;
        }
        if (st_n_tensors(f) != expected) {
                r = log_error_errno(EBADMSG, "%s: %zu tensors, expected %zu (unknown extra tensors)",
                                    path, st_n_tensors(f), expected);
                goto out;
        }
        *ret = TAKE_PTR(q);
        r = 0;
out:
        quant_model_free(q);
        st_free(f);
        return r;
}

int quant_file_detect(const char *path) {
        st_file *f = NULL;
        int r = st_load(path, &f);

        if (r < 0)
                return r;
        const char *fmt = st_meta_get(f, "format");
        r = fmt && strcmp(fmt, QUANT_FORMAT) == 0;
        st_free(f);
        return r;
}

int quantize_run(const quantize_opts *o) {
        model_config cfg;
        model *m = NULL;
        quant_model *q = NULL;
        ckpt_state cs = { 0 };
        int embed_bits = o->embed_bits ? o->embed_bits : o->bits, r;

        if ((o->bits != 8 && o->bits != 4) ||
            (embed_bits != 32 && embed_bits != 8 && embed_bits != 4))
                return log_error_errno(EINVAL, "--bits must be 8 or 4, --embed-bits 32, 8 or 4");
        r = ckpt_read_config(o->input, &cfg);
        if (r < 0)
                return r;
        if (cfg.n_embd % QUANT_GROUP != 0)
                return log_error_errno(EINVAL, "%s: n_embd %d is not a multiple of %d", o->input,
                                       cfg.n_embd, QUANT_GROUP);
        r = model_new(&cfg, 1, 1, &m);
        if (r < 0)
                return log_error_errno(r, "cannot allocate the '%s' model: %m", cfg.name);
        r = ckpt_load(o->input, m, NULL, &cs);
        if (r < 0)
                goto out;
        r = quant_model_from_model(m, quant_kind_of_bits(o->bits), quant_kind_of_bits(embed_bits),
                                   &q);
        if (r < 0) {
                log_error_errno(r, "cannot quantize %s: %m", o->input);
                goto out;
        }
        r = quant_save(o->output, q, cs.step);
        if (r < 0) {
                log_error_errno(r, "cannot write %s: %m", o->output);
                goto out;
        }
        size_t f32 = m->layout.n_params * sizeof(float), qb = quant_model_weight_bytes(q);
        log_info("wrote %s: '%s' model of step %ld, int%d matrices%s, embeddings %s: %zu bytes "
                 "of weights (fp32 %zu, %.2fx smaller)",
                 o->output, cfg.name, cs.step, o->bits, o->bits == 4 ? " (groups of 32)" : "",
                 embed_bits == 32 ? "fp32" : embed_bits == 8 ? "int8" : "int4", qb, f32,
                 (double) f32 / (double) qb);
out:
        quant_model_free(q);
        model_free(m);
        return r;
}
