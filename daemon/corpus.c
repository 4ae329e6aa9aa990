/* SPDX-License-Identifier: MIT */
#include "corpus.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "macros.h"

#define HELD_OUT_FRACTION 20 /* 1/20 of the bytes are held out */

static int append_file(corpus *c, const char *path, size_t max_bytes, size_t *cap) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        struct stat st;

        if (fd < 0 || fstat(fd, &st) < 0)
                return log_warning_errno(errno, "%s: skipped: %m", path);
        if (!S_ISREG(st.st_mode))
                return 0;
        size_t want = MIN((size_t) st.st_size, max_bytes - c->size);
        if (c->size + want > *cap) {
                size_t ncap = MAX(*cap * 2, c->size + want);
                uint8_t *nb = realloc(c->bytes, ncap);
                if (!nb)
                        return log_error_errno(ENOMEM, "%s: out of memory", path);
                c->bytes = nb;
                *cap = ncap;
        }
        size_t got = 0;
        while (got < want) {
                ssize_t n = read(fd, c->bytes + c->size + got, want - got);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return log_warning_errno(errno, "%s: skipped: read failed: %m", path);
                if (n == 0)
                        break; /* shrank while we read: keep what we got */
                got += (size_t) n;
        }
        c->size += got;
        c->n_files++;
        return 0;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int walk(corpus *c, const char *path, size_t max_bytes, size_t *cap, int depth) {
        struct stat st;

        if (c->size >= max_bytes)
                return 0;
        if (stat(path, &st) < 0) {
                c->n_skipped++;
                return log_warning_errno(errno, "%s: skipped: %m", path);
        }
        if (S_ISREG(st.st_mode)) {
                if (append_file(c, path, max_bytes, cap) < 0)
                        c->n_skipped++;
                return 0;
        }
        if (!S_ISDIR(st.st_mode) || depth > 32)
                return 0;

        struct dirent **names = NULL;
        int n = scandir(path, &names, NULL, NULL);
        if (n < 0) {
                c->n_skipped++;
                return log_warning_errno(errno, "%s: skipped: %m", path);
        }
        /* sorted by name so the corpus, and so training, is reproducible */
        char **paths = calloc((size_t) n, sizeof(char *));
        int k = 0;
        for (int i = 0; i < n; i++) {
                if (names[i]->d_name[0] != '.' && paths &&
                    asprintf(&paths[k], "%s/%s", path, names[i]->d_name) >= 0)
                        k++;
                free(names[i]);
        }
        free(names);
        if (!paths)
                return log_error_errno(ENOMEM, "%s: out of memory", path);
        qsort(paths, (size_t) k, sizeof(char *), cmp_str);
        for (int i = 0; i < k; i++) {
                walk(c, paths[i], max_bytes, cap, depth + 1);
                free(paths[i]);
        }
        free(paths);
        return 0;
}

int corpus_load(corpus *c, char *const *paths, size_t n_paths, size_t max_bytes) {
        size_t cap = 0;

        memset(c, 0, sizeof(*c));
        for (size_t i = 0; i < n_paths; i++)
                walk(c, paths[i], max_bytes, &cap, 0);
        /* need at least one window in each part */
        if (c->size < 4096) {
                corpus_free(c);
                return -ENODATA;
        }
        c->train_size = c->size - c->size / HELD_OUT_FRACTION;
        return 0;
}

void corpus_free(corpus *c) {
        free(c->bytes);
        memset(c, 0, sizeof(*c));
}

static void window(const corpus *c, size_t start, int T, uint8_t *tokens, uint8_t *targets) {
        memcpy(tokens, c->bytes + start, (size_t) T);
        memcpy(targets, c->bytes + start + 1, (size_t) T);
}

void corpus_train_batch(const corpus *c, rng_t *cursor, int B, int T, uint8_t *tokens,
                        uint8_t *targets) {
        size_t span = c->train_size > (size_t) T + 1 ? c->train_size - (size_t) T - 1 : 1;

        for (int b = 0; b < B; b++)
                window(c, rng_below(cursor, span), T, tokens + (size_t) b * T,
                       targets + (size_t) b * T);
}

void corpus_val_batch(const corpus *c, size_t i, int B, int T, uint8_t *tokens, uint8_t *targets) {
        size_t held = c->size - c->train_size;
        size_t n_windows = held > (size_t) T + 1 ? (held - 1) / (size_t) T : 1;

        for (int b = 0; b < B; b++) {
                size_t w = (i * (size_t) B + (size_t) b) % n_windows;
                size_t start = MIN(c->train_size + w * (size_t) T, c->size - (size_t) T - 1);
                window(c, start, T, tokens + (size_t) b * T, targets + (size_t) b * T);
        }
}
