/* SPDX-License-Identifier: MIT */
#pragma once

/* Benchmark corpora, shared by bench/loader.c, bench/daemon.c and bench/harvest.c: a text
 * file (tinyshakespeare by default, looked up from the working directory and then from the
 * repository holding the binary), or the licence texts Debian ships when it is missing; cut
 * into many files in a temporary tree the way a user's DataDirectory looks. Header-only:
 * every bench program is built on its own. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "macros.h"

#define BENCH_MAX_CORPUS (64u << 20)
#define BENCH_FALLBACK_DIR "/usr/share/common-licenses"

/* Appends path's bytes to *buf (at most max in all). -EINVAL for what is not a regular file. */
static inline int bench_read_whole(const char *path, uint8_t **buf, size_t *len, size_t max) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;

        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        size_t n = MIN((size_t) st.st_size, max - MIN(max, *len));
        uint8_t *p = realloc(*buf, *len + n + 1);
        if (!p)
                return -ENOMEM;
        *buf = p;
        for (size_t done = 0; done < n;) {
                ssize_t k = read(fd, p + *len + done, n - done);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        n = done; /* shrank meanwhile */
                done += (size_t) k;
        }
        *len += n;
        return 0;
}

static inline int bench_load_licences(uint8_t **buf, size_t *len) {
        struct dirent **names = NULL;
        int n = scandir(BENCH_FALLBACK_DIR, &names, NULL, alphasort);

        if (n < 0)
                return -errno;
        for (int i = 0; i < n; i++) {
                char path[PATH_MAX];
                snprintf(path, sizeof(path), "%s/%s", BENCH_FALLBACK_DIR, names[i]->d_name);
                if (names[i]->d_name[0] != '.')
                        (void) bench_read_whole(path, buf, len, BENCH_MAX_CORPUS);
                free(names[i]);
        }
        free(names);
        return *len > 0 ? 0 : -ENODATA;
}

/* The repository holding this binary (it lives in build/bench/). */
static inline bool bench_repo_dir(char *buf, size_t size) {
        char exe[PATH_MAX];

        if (!realpath("/proc/self/exe", exe))
                return false;
        for (int up = 0; up < 3; up++) {
                char *slash = strrchr(exe, '/');
                if (slash)
                        *slash = 0;
        }
        snprintf(buf, size, "%s", exe);
        return true;
}

/* path as given (explicit: an error if unreadable), else relative to the repository, else the
 * licence texts; desc says which was used. */
static inline int bench_load_corpus(const char *path, bool explicit, uint8_t **buf, size_t *len,
                                    char *desc, size_t desc_size) {
        char repo[PATH_MAX], alt[PATH_MAX * 2];
        int r = bench_read_whole(path, buf, len, BENCH_MAX_CORPUS);

        if (r < 0 && !explicit && bench_repo_dir(repo, sizeof(repo))) {
                snprintf(alt, sizeof(alt), "%s/%s", repo, path);
                r = bench_read_whole(alt, buf, len, BENCH_MAX_CORPUS);
        }
        if (r >= 0) {
                snprintf(desc, desc_size, "%s", path);
                return 0;
        }
        if (explicit)
                return r;
        printf("note: corpus %s: %s; using the concatenated texts of %s/* instead\n", path,
               strerror(-r), BENCH_FALLBACK_DIR);
        *len = 0;
        r = bench_load_licences(buf, len);
        if (r < 0)
                return r;
        snprintf(desc, desc_size, "%s/* (concatenated)", BENCH_FALLBACK_DIR);
        return 0;
}

static inline int bench_write_file(const char *path, const void *data, size_t n) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        if (fd < 0)
                return -errno;
        return write_full(fd, data, n);
}

/* Cuts data into n nearly equal files under dir (made if missing), per_dir of them per
 * subdirectory (0: all in dir), fewer when a file would be shorter than min_len. *ret_n
 * (may be NULL) gets the count. */
static inline int bench_split_corpus(const char *dir, const uint8_t *data, size_t size, int n,
                                     int per_dir, size_t min_len, int *ret_n) {
        char path[PATH_MAX + 32];

        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        n = (int) MIN((size_t) n, size / MAX(min_len, (size_t) 1));
        if (n < 2)
                return -ENODATA;
        for (int i = 0; i < n; i++) {
                size_t a = size * (size_t) i / (size_t) n, b = size * (size_t) (i + 1) / (size_t) n;
                int r;
                if (per_dir > 0 && i % per_dir == 0) {
                        snprintf(path, sizeof(path), "%s/d%02d", dir, i / per_dir);
                        if (mkdir(path, 0755) < 0)
                                return -errno;
                }
                if (per_dir > 0)
                        snprintf(path, sizeof(path), "%s/d%02d/part-%04d.txt", dir, i / per_dir, i);
                else
                        snprintf(path, sizeof(path), "%s/part-%04d.txt", dir, i);
                r = bench_write_file(path, data + a, b - a);
                if (r < 0)
                        return r;
        }
        if (ret_n)
                *ret_n = n;
        return 0;
}

static inline int bench_rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) (type == FTW_DP ? rmdir(path) : unlink(path));
        return 0;
}

static inline void bench_remove_tree(const char *dir) {
        if (dir && *dir)
                (void) nftw(dir, bench_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
