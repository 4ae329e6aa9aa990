/* SPDX-License-Identifier: MIT */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"
#include "macros.h"
#include "safetensors.h"

#define N_META 10

/* The fields meta_sha256 covers, as "key=value\n" lines in this order (checkpoint.h). */
static const char *const sum_keys[] = { "format",        "config", "block_size", "n_embd",
                                        "n_layer",       "n_head", "step",       "data_cursor",
                                        "model_version", "adam_t", "data_sha256" };

static int meta_digest(const char *const values[ARRAY_SIZE(sum_keys)], char out[HASH_SHA256_HEX]) {
        hash_sha256_ctx *ctx;
        int r = hash_sha256_begin(&ctx);

        if (r < 0)
                return r;
        for (size_t i = 0; i < ARRAY_SIZE(sum_keys); i++) {
                hash_sha256_update(ctx, sum_keys[i], strlen(sum_keys[i]));
                hash_sha256_update(ctx, "=", 1);
                hash_sha256_update(ctx, values[i], strlen(values[i]));
                hash_sha256_update(ctx, "\n", 1);
        }
        hash_sha256_end_hex(ctx, out);
        return 0;
}

int ckpt_save(const char *path, const model *m, const adamw_state *opt, const ckpt_state *st) {
        const model_layout *lay = &m->layout;
        const model_config *cfg = &lay->cfg;
        size_t n_views = lay->n_views, n = 0;
        char names[2][MODEL_MAX_VIEWS][MODEL_NAME_MAX + 8];
        char num[N_META][32];
        _cleanup_free_ st_tensor *t = calloc(3 * n_views, sizeof(st_tensor));

        if (!t)
                return -ENOMEM;
        for (size_t i = 0; i < n_views; i++) {
                const model_view *v = &lay->views[i];
                const float *src[3] = { m->params, opt ? opt->m : NULL, opt ? opt->v : NULL };
                const char *name[3] = { v->name, names[0][i], names[1][i] };

                snprintf(names[0][i], sizeof(names[0][i]), "optim.m.%s", v->name);
                snprintf(names[1][i], sizeof(names[1][i]), "optim.v.%s", v->name);
                for (int k = 0; k < 3; k++) {
                        if (!src[k])
                                continue;
                        t[n] = (st_tensor){
                                .name = name[k],
                                .dtype = ST_F32,
                                .ndim = (unsigned) v->ndim,
                                .shape = { (uint64_t) v->shape[0], (uint64_t) v->shape[1] },
                                .data = src[k] + v->offset,
                                .nbytes = v->numel * sizeof(float),
                        };
                        n++;
                }
        }
        snprintf(num[0], sizeof(num[0]), "%d", cfg->block_size);
        snprintf(num[1], sizeof(num[1]), "%d", cfg->n_embd);
        snprintf(num[2], sizeof(num[2]), "%d", cfg->n_layer);
        snprintf(num[3], sizeof(num[3]), "%d", cfg->n_head);
        snprintf(num[4], sizeof(num[4]), "%ld", st->step);
        snprintf(num[5], sizeof(num[5]), "%" PRIu64, st->data_cursor);
        snprintf(num[6], sizeof(num[6]), "%" PRIu64, st->model_version);
        snprintf(num[7], sizeof(num[7]), "%ld", opt ? opt->t : 0L);

        /* st_write lays the data out in t's order, so this is the data section's hash */
        char data_sum[HASH_SHA256_HEX], meta_sum[HASH_SHA256_HEX];
        hash_sha256_ctx *ctx;
        int r = hash_sha256_begin(&ctx);
        if (r < 0)
                return log_error_errno(r, "%s: cannot hash the checkpoint: %m", path);
        for (size_t i = 0; i < n; i++)
                hash_sha256_update(ctx, t[i].data, t[i].nbytes);
        hash_sha256_end_hex(ctx, data_sum);

        const char *const values[ARRAY_SIZE(sum_keys)] = {
                CKPT_FORMAT, cfg->name, num[0], num[1], num[2],   num[3],
                num[4],      num[5],    num[6], num[7], data_sum,
        };
        st_meta meta[ARRAY_SIZE(sum_keys) + 1];
        r = meta_digest(values, meta_sum);
        if (r < 0)
                return log_error_errno(r, "%s: cannot hash the checkpoint: %m", path);
        for (size_t i = 0; i < ARRAY_SIZE(sum_keys); i++)
                meta[i] = (st_meta){ sum_keys[i], values[i] };
        meta[ARRAY_SIZE(sum_keys)] = (st_meta){ "meta_sha256", meta_sum };
        return st_write(path, t, n, meta, ARRAY_SIZE(meta));
}

static int meta_u64(const st_file *f, const char *key, uint64_t max, uint64_t *ret) {
        const char *s = st_meta_get(f, key);
        char *end;

        if (!s)
                return log_error_errno(EBADMSG, "%s: metadata field '%s' missing", st_source(f),
                                       key);
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v > max)
                return log_error_errno(EBADMSG,
                                       "%s: metadata field '%s' is not an integer in [0, %" PRIu64
                                       "]: '%s'",
                                       st_source(f), key, max, s);
        *ret = v;
        return 0;
}

static int config_from_meta(const st_file *f, model_config *cfg) {
        const char *fmt = st_meta_get(f, "format"), *name = st_meta_get(f, "config");
        uint64_t v[4];
        static const char *const keys[4] = { "block_size", "n_embd", "n_layer", "n_head" };
        int r;

        if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0)
                return log_error_errno(EBADMSG,
                                       "%s: metadata field 'format' is '%s', expected '%s'",
                                       st_source(f), fmt ? fmt : "(missing)", CKPT_FORMAT);
        for (int i = 0; i < 4; i++) {
                r = meta_u64(f, keys[i], 1u << 16, &v[i]);
                if (r < 0)
                        return r;
        }
        memset(cfg, 0, sizeof(*cfg));
        snprintf(cfg->name, sizeof(cfg->name), "%s", name ? name : "custom");
        cfg->block_size = (int) v[0];
        cfg->n_embd = (int) v[1];
        cfg->n_layer = (int) v[2];
        cfg->n_head = (int) v[3];
        if (model_config_validate(cfg) < 0)
                return log_error_errno(
                        EBADMSG, "%s: metadata describes an invalid model (T=%d C=%d L=%d H=%d)",
                        st_source(f), cfg->block_size, cfg->n_embd, cfg->n_layer, cfg->n_head);
        return 0;
}

int ckpt_read_config(const char *path, model_config *ret_cfg) {
        st_file *f = NULL;
        int r = st_load(path, &f);

        if (r < 0)
                return r;
        r = config_from_meta(f, ret_cfg);
        st_free(f);
        return r;
}

/* The tensor must exist as F32 with exactly the view's shape. */
static int check_tensor(const st_file *f, const char *name, const model_view *v,
                        const st_tensor **ret) {
        const st_tensor *t = st_find(f, name);

        if (!t)
                return log_error_errno(EBADMSG, "%s: tensor '%s' missing", st_source(f), name);
        if (t->dtype != ST_F32)
                return log_error_errno(EBADMSG, "%s: tensor '%s' has dtype %s, expected F32",
                                       st_source(f), name, st_dtype_name(t->dtype));
        if (t->ndim != (unsigned) v->ndim || t->shape[0] != (uint64_t) v->shape[0] ||
            (v->ndim == 2 && t->shape[1] != (uint64_t) v->shape[1])) {
                char got[160] = "", expected[32];
                size_t len = 0;
                for (unsigned d = 0; d < t->ndim && len < sizeof(got) - 24; d++)
                        len += (size_t) snprintf(got + len, sizeof(got) - len, "%s%" PRIu64,
                                                 d ? "," : "", t->shape[d]);
                if (v->ndim == 2)
                        snprintf(expected, sizeof(expected), "%d,%d", v->shape[0], v->shape[1]);
                else
                        snprintf(expected, sizeof(expected), "%d", v->shape[0]);
                return log_error_errno(EBADMSG, "%s: tensor '%s' has shape [%s], expected [%s]",
                                       st_source(f), name, got, expected);
        }
        *ret = t;
        return 0;
}

static int check_finite(const st_file *f, const st_tensor *t, size_t numel) {
        for (size_t i = 0; i < numel; i++) {
                float x;
                memcpy(&x, (const char *) t->data + i * sizeof(float), sizeof(float));
                if (!isfinite(x))
                        return log_error_errno(
                                EBADMSG, "%s: tensor '%s' holds a non-finite value at element %zu",
                                st_source(f), t->name, i);
        }
        return 0;
}

/* Checks data_sha256 and meta_sha256 (checkpoint.h). Files from before them have neither and
 * pass; one without the other is refused. found[k][i] are the view's tensors in the order
 * ckpt_save writes them (moments NULL when the file has none). */
static int check_sums(const st_file *f, const st_tensor *found[3][MODEL_MAX_VIEWS],
                      size_t n_views) {
        const char *data_want = st_meta_get(f, "data_sha256");
        const char *meta_want = st_meta_get(f, "meta_sha256");
        const char *values[ARRAY_SIZE(sum_keys)];
        char got[HASH_SHA256_HEX];
        hash_sha256_ctx *ctx;
        int r;

        if (!data_want && !meta_want) {
                log_debug("%s: no checksums (written by an older edged)", st_source(f));
                return 0;
        }
        for (size_t i = 0; i < ARRAY_SIZE(sum_keys); i++)
                if (!(values[i] = st_meta_get(f, sum_keys[i])))
                        return log_error_errno(EBADMSG, "%s: metadata field '%s' missing",
                                               st_source(f), sum_keys[i]);
        if (!meta_want)
                return log_error_errno(EBADMSG, "%s: metadata field 'meta_sha256' missing",
                                       st_source(f));
        r = meta_digest(values, got);
        if (r < 0)
                return log_error_errno(r, "%s: cannot hash the checkpoint: %m", st_source(f));
        if (strcmp(got, meta_want) != 0)
                return log_error_errno(EBADMSG,
                                       "%s: metadata checksum does not match: meta_sha256 is "
                                       "'%s', the fields hash to %s",
                                       st_source(f), meta_want, got);
        r = hash_sha256_begin(&ctx);
        if (r < 0)
                return log_error_errno(r, "%s: cannot hash the checkpoint: %m", st_source(f));
        for (size_t i = 0; i < n_views; i++)
                for (int k = 0; k < 3; k++)
                        if (found[k][i])
                                hash_sha256_update(ctx, found[k][i]->data, found[k][i]->nbytes);
        hash_sha256_end_hex(ctx, got);
        if (strcmp(got, data_want) != 0)
                return log_error_errno(EBADMSG,
                                       "%s: data checksum does not match: data_sha256 is '%s', "
                                       "the tensors hash to %s",
                                       st_source(f), data_want, got);
        return 0;
}

int ckpt_load(const char *path, model *m, adamw_state *opt, ckpt_state *ret_state) {
        const model_layout *lay = &m->layout;
        const model_config *want = &lay->cfg;
        const st_tensor *found[3][MODEL_MAX_VIEWS];
        st_file *f = NULL;
        model_config cfg;
        uint64_t step, cursor, version, adam_t;
        int r;

        r = st_load(path, &f);
        if (r < 0)
                return r;
        r = config_from_meta(f, &cfg);
        if (r < 0)
                goto out;
        if (cfg.block_size != want->block_size || cfg.n_embd != want->n_embd ||
            cfg.n_layer != want->n_layer || cfg.n_head != want->n_head) {
                r = log_error_errno(
                        EBADMSG,
                        "%s: model is T=%d C=%d L=%d H=%d, expected %s (T=%d C=%d L=%d H=%d)", path,
                        cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head, want->name,
                        want->block_size, want->n_embd, want->n_layer, want->n_head);
                goto out;
        }
        if ((r = meta_u64(f, "step", INT64_MAX, &step)) < 0 ||
            (r = meta_u64(f, "data_cursor", UINT64_MAX, &cursor)) < 0 ||
            (r = meta_u64(f, "model_version", UINT64_MAX, &version)) < 0 ||
            (r = meta_u64(f, "adam_t", INT64_MAX, &adam_t)) < 0)
                goto out;

        bool summed = st_meta_get(f, "data_sha256") || st_meta_get(f, "meta_sha256");
        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                char name[MODEL_NAME_MAX + 16];

                r = check_tensor(f, v->name, v, &found[0][i]);
                if (r < 0)
                        goto out;
                for (int k = 1; k < 3; k++) {
                        snprintf(name, sizeof(name), "optim.%c.%s", k == 1 ? 'm' : 'v', v->name);
                        if (opt) {
                                r = check_tensor(f, name, v, &found[k][i]);
                                if (r < 0)
                                        goto out;
                        } else /* not loaded, but part of what data_sha256 covers */
                                found[k][i] = summed ? st_find(f, name) : NULL;
                }
        }
        r = check_sums(f, found, lay->n_views);
        if (r < 0)
                goto out;
        for (size_t i = 0; i < lay->n_views; i++)
                for (int k = 0; k < (opt ? 3 : 1); k++) {
                        r = check_finite(f, found[k][i], lay->views[i].numel);
                        if (r < 0)
                                goto out;
                }

        /* all valid: only now touch the caller's state */
        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                memcpy(m->params + v->offset, found[0][i]->data, v->numel * sizeof(float));
                if (opt) {
                        memcpy(opt->m + v->offset, found[1][i]->data, v->numel * sizeof(float));
                        memcpy(opt->v + v->offset, found[2][i]->data, v->numel * sizeof(float));
                }
        }
        if (opt)
                opt->t = (long) adam_t;
        if (ret_state)
                *ret_state = (ckpt_state){
                        .step = (long) step,
                        .data_cursor = cursor,
                        .model_version = version,
                };
        r = 0;
out:
        st_free(f);
        return r;
}

/* Only the header is read (8-byte length, then JSON), so listing checkpoints stays cheap
 * however large the model. */
int ckpt_read_step(const char *path, long *ret_step) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        _cleanup_free_ char *hdr = NULL;
        uint8_t len_le[8];
        uint64_t len = 0;
        json_t *j, *step;
        int r = -EBADMSG;

        if (fd < 0)
                return -errno;
        if (pread(fd, len_le, 8, 0) != 8)
                return -EBADMSG;
        for (int i = 7; i >= 0; i--)
                len = len << 8 | len_le[i];
        if (len == 0 || len > (100u << 20) || !(hdr = malloc(len)))
                return len > (100u << 20) || len == 0 ? -EBADMSG : -ENOMEM;
        if (pread(fd, hdr, len, 8) != (ssize_t) len)
                return -EBADMSG;
        j = json_loadb(hdr, len, 0, NULL);
        step = json_object_get(json_object_get(j, "__metadata__"), "step");
        if (json_is_string(step)) {
                char *end;
                long v = strtol(json_string_value(step), &end, 10);
                if (end != json_string_value(step) && !*end && v >= 0) {
                        *ret_step = v;
                        r = 0;
                }
        }
        json_decref(j);
        return r;
}
