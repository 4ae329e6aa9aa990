/* SPDX-License-Identifier: MIT */
#include "blobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "fileio.h"
#include "hash.h"
#include "log.h"
#include "macros.h"

int agg_blob_path(const char *dir, const char *sha, char **ret) {
        return asprintf(ret, "%s/blobs/%s", dir, sha) < 0 ? -ENOMEM : 0;
}

/* Renames a finished temporary file to its content name and makes the rename durable. */
static int publish(const char *dir, const char *tmp, char ret_sha[65]) {
        _cleanup_free_ char *final = NULL;
        int r;

        if ((r = hash_sha256_file_hex(tmp, ret_sha)) < 0)
                return log_error_errno(r, "%s: cannot hash", tmp);
        if ((r = agg_blob_path(dir, ret_sha, &final)) < 0)
                return r;
        if (rename(tmp, final) < 0)
                return log_error_errno(errno, "%s: cannot rename to %s", tmp, final);
        if ((r = fsync_parent_dir(final)) < 0)
                return log_error_errno(r, "%s: cannot sync the directory", final);
        return 0;
}

int agg_blob_save_model(const char *dir, const model *m, uint64_t version, char ret_sha[65]) {
        _cleanup_free_ char *tmp = NULL;
        char rnd[17];
        int r;

        if ((r = hash_random_hex(8, rnd)) < 0)
                return r;
        if (asprintf(&tmp, "%s/blobs/.incoming-%s", dir, rnd) < 0)
                return -ENOMEM;
        /* ckpt_save writes and fsyncs atomically; publish then names it by content */
        r = ckpt_save(tmp, m, NULL, &(ckpt_state){ .model_version = version });
        if (r < 0) {
                unlink(tmp);
                return log_error_errno(r, "%s: cannot save version %llu", tmp,
                                       (unsigned long long) version);
        }
        r = publish(dir, tmp, ret_sha);
        if (r < 0)
                unlink(tmp);
        return r;
}

int agg_blob_load_model(const char *dir, const char *sha, model *m) {
        _cleanup_free_ char *path = NULL;
        char actual[HASH_SHA256_HEX];
        ckpt_state st;
        int r;

        if ((r = agg_blob_path(dir, sha, &path)) < 0)
                return r;
        if ((r = hash_sha256_file_hex(path, actual)) < 0)
                return log_error_errno(r, "%s: cannot read", path);
        if (strcmp(actual, sha) != 0)
                return log_error_errno(EBADMSG, "%s: content hash is %s: the blob is damaged", path,
                                       actual);
        return ckpt_load(path, m, NULL, &st);
}

int agg_blob_save_bytes(const char *dir, const void *data, size_t size, char ret_sha[65]) {
        _cleanup_free_ char *path = NULL;
        int r;

        hash_sha256_hex(data, size, ret_sha);
        if ((r = agg_blob_path(dir, ret_sha, &path)) < 0)
                return r;
        r = write_file_atomic(path, 0640, data, size);
        if (r < 0)
                return log_error_errno(r, "%s: cannot write", path);
        return 0;
}

int agg_blob_save_floats(const char *dir, const float *data, size_t n, char ret_sha[65]) {
        return agg_blob_save_bytes(dir, data, n * sizeof(float), ret_sha);
}

int agg_blob_load_bytes(const char *dir, const char *sha, size_t max, void **ret,
                        size_t *ret_size) {
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ void *buf = NULL;
        char actual[HASH_SHA256_HEX];
        size_t size;
        int r;

        if ((r = agg_blob_path(dir, sha, &path)) < 0)
                return r;
        if ((r = read_full_file(path, max, &buf, &size)) < 0)
                return log_error_errno(r, "%s: cannot read", path);
        hash_sha256_hex(buf, size, actual);
        if (strcmp(actual, sha) != 0)
                return log_error_errno(EBADMSG, "%s: the blob is damaged", path);
        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

int agg_blob_load_floats(const char *dir, const char *sha, float *data, size_t n) {
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ void *buf = NULL;
        size_t size;
        int r;

        if ((r = agg_blob_load_bytes(dir, sha, n * sizeof(float), &buf, &size)) < 0)
                return r;
        if (size != n * sizeof(float)) {
                if (agg_blob_path(dir, sha, &path) < 0)
                        return -ENOMEM;
                return log_error_errno(EBADMSG, "%s: %zu bytes, expected %zu", path, size,
                                       n * sizeof(float));
        }
        memcpy(data, buf, size);
        return 0;
}

int agg_blob_prune(const char *dir, char (*keep)[65], size_t n_keep) {
        _cleanup_free_ char *bdir = NULL;
        struct dirent *de;
        DIR *d;

        if (asprintf(&bdir, "%s/blobs", dir) < 0)
                return -ENOMEM;
        d = opendir(bdir);
        if (!d)
                return log_error_errno(errno, "%s: cannot list", bdir);
        while ((de = readdir(d))) {
                bool live = false;
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
                    de->d_type == DT_DIR)
                        continue;
                for (size_t i = 0; i < n_keep && !live; i++)
                        live = !strcmp(keep[i], de->d_name);
                if (!live && unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT)
                        log_warning("%s/%s: cannot remove: %m", bdir, de->d_name);
        }
        closedir(d);
        return 0;
}
