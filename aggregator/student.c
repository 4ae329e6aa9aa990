/* SPDX-License-Identifier: MIT */
#include "student.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blobs.h"
#include "checkpoint.h"
#include "fileio.h"
#include "log.h"
#include "macros.h"
#include "model.h"

static int student_dir(const char *store_dir, char **ret) {
        return asprintf(ret, "%s/student", store_dir) < 0 ? -ENOMEM : 0;
}

int agg_student_blob_path(const char *store_dir, const char *sha, char **ret) {
        return asprintf(ret, "%s/student/blobs/%s", store_dir, sha) < 0 ? -ENOMEM : 0;
}

static int mkdir_p2(const char *dir) {
        _cleanup_free_ char *blobs = NULL;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create", dir);
        if (asprintf(&blobs, "%s/blobs", dir) < 0)
                return -ENOMEM;
        if (mkdir(blobs, 0755) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create", blobs);
        return 0;
}

static bool is_sha_hex(const char *s) {
        size_t n = 0;
        for (; s[n]; n++)
                if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
                        return false;
        return n == HASH_SHA256_HEX - 1;
}

static int write_json(const char *store_dir, const agg_student *st) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "sha256", st->sha, "config",
                              st->config, "teacher_version", (json_int_t) st->teacher_version,
                              "bytes", (json_int_t) st->bytes, "published",
                              (json_int_t) st->published, "n_params", (json_int_t) st->n_params);
        if (!j)
                return -ENOMEM;
        text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        json_decref(j);
        if (!text || asprintf(&path, "%s/" AGG_STUDENT_JSON, store_dir) < 0)
                return -ENOMEM;
        int r = write_file_atomic(path, 0644, text, strlen(text));
        return r < 0 ? log_error_errno(r, "%s: cannot write", path) : 0;
}

int agg_student_publish(const char *store_dir, const char *ckpt_path, uint64_t teacher_version,
                        agg_student *ret) {
        _cleanup_free_ char *dir = NULL, *blob = NULL;
        char keep[1][65];
        agg_student st = { .teacher_version = teacher_version };
        model_config cfg;
        model *m = NULL;
        ckpt_state cs;
        struct stat sb;
        int r;

        if ((r = ckpt_read_config(ckpt_path, &cfg)) < 0)
                return log_error_errno(r, "%s: not a readable edged checkpoint", ckpt_path);
        if ((r = model_new(&cfg, 1, 1, &m)) < 0)
                return log_error_errno(r, "%s: cannot allocate a '%s' model", ckpt_path, cfg.name);
        /* checks names, shapes and that every value is finite */
        r = ckpt_load(ckpt_path, m, NULL, &cs);
        if (r < 0) {
                log_error_errno(r, "%s: cannot load", ckpt_path);
                goto out;
        }
        if ((r = student_dir(store_dir, &dir)) < 0 || (r = mkdir_p2(dir)) < 0)
                goto out;
        if ((r = agg_blob_save_model(dir, m, teacher_version, st.sha)) < 0)
                goto out;
        if ((r = agg_student_blob_path(store_dir, st.sha, &blob)) < 0)
                goto out;
        if (stat(blob, &sb) < 0) {
                r = log_error_errno(errno, "%s: cannot stat", blob);
                goto out;
        }
        snprintf(st.config, sizeof(st.config), "%s", cfg.name);
        st.bytes = (uint64_t) sb.st_size;
        st.published = (int64_t) time(NULL);
        st.n_params = m->layout.n_params;
        if ((r = write_json(store_dir, &st)) < 0)
                goto out;
        /* only now is the old one unreferenced */
        memcpy(keep[0], st.sha, sizeof(keep[0]));
        (void) agg_blob_prune(dir, keep, 1);
        if (ret)
                *ret = st;
out:
        model_free(m);
        return r;
}

int agg_student_read(const char *store_dir, agg_student *ret) {
        _cleanup_free_ char *path = NULL;
        json_error_t jerr;
        json_t *j;
        const char *sha = NULL, *config = NULL;
        json_int_t tv = -1, bytes = -1, published = 0, n_params = -1;
        model_config cfg;
        int r = 0;

        if (asprintf(&path, "%s/" AGG_STUDENT_JSON, store_dir) < 0)
                return -ENOMEM;
        j = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
        if (!j) {
                if (access(path, F_OK) < 0 && errno == ENOENT)
                        return -ENOENT;
                return log_error_errno(EBADMSG, "%s:%d: %s", path, jerr.line, jerr.text);
        }
        if (json_unpack_ex(j, &jerr, JSON_STRICT, "{s:s, s:s, s:I, s:I, s:I, s:I}", "sha256", &sha,
                           "config", &config, "teacher_version", &tv, "bytes", &bytes,
                           "published", &published, "n_params", &n_params) < 0) {
                r = log_error_errno(EBADMSG, "%s: %s", path, jerr.text);
                goto out;
        }
        if (!is_sha_hex(sha) || model_config_by_name(config, &cfg) < 0 || tv < 0 || bytes < 0 ||
            n_params < 0) {
                r = log_error_errno(EBADMSG, "%s: a field is out of range (sha256, config, "
                                             "teacher_version, bytes or n_params)",
                                    path);
                goto out;
        }
        *ret = (agg_student){ .teacher_version = (uint64_t) tv, .bytes = (uint64_t) bytes,
                              .published = (int64_t) published, .n_params = (uint64_t) n_params };
        snprintf(ret->sha, sizeof(ret->sha), "%s", sha);
        snprintf(ret->config, sizeof(ret->config), "%s", config);
out:
        json_decref(j);
        return r;
}
