/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared by the libFuzzer harnesses: quiet logs, NUL-terminated copies of the input, and
 * memfds for loaders that want a path (nothing is written to disk). */

#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macros.h"

/* Parsers log every rejection; at fuzzing rates that is all the fuzzer would do. */
static inline void fuzz_quiet(void) {
        if (!getenv("FUZZ_VERBOSE"))
                log_set_max_level(0);
}

/* The input as a C string (the fuzzer's buffer has no NUL). Embedded NULs cut it short,
 * as they would for any text read from a file. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);
        if (!s)
                abort();
        memcpy(s, data, size);
        s[size] = 0;
        return s;
}

/* A memfd holding data, opened by path as "/proc/self/fd/N" (path needs 32 bytes). */
static inline int fuzz_memfd(const uint8_t *data, size_t size, char path[static 32]) {
        int fd = memfd_create("fuzz", MFD_CLOEXEC);
        if (fd < 0)
                abort();
        for (size_t off = 0; off < size;) {
                ssize_t k = write(fd, data + off, size - off);
                if (k <= 0)
                        abort();
                off += (size_t) k;
        }
        snprintf(path, 32, "/proc/self/fd/%d", fd);
        return fd;
}

/* Splits the input at the first "\n--\n": the second part is an optional extra field. */
static inline size_t fuzz_split(const uint8_t *data, size_t size, const uint8_t **ret_rest,
                                size_t *ret_rest_size) {
        const uint8_t *p = memmem(data, size, "\n--\n", 4);
        if (!p) {
                *ret_rest = NULL;
                *ret_rest_size = 0;
                return size;
        }
        *ret_rest = p + 4;
        *ret_rest_size = size - (size_t) (p - data) - 4;
        return (size_t) (p - data);
}

static char fuzz_tmp[64];

static int fuzz_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void fuzz_tmpdir_remove(void) {
        if (fuzz_tmp[0])
                (void) nftw(fuzz_tmp, fuzz_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* /tmp/fuzz-<name>.XXXXXX, removed at exit (a crash leaves it for inspection). */
static inline const char *fuzz_tmpdir(const char *name) {
        snprintf(fuzz_tmp, sizeof(fuzz_tmp), "/tmp/fuzz-%s.XXXXXX", name);
        if (!mkdtemp(fuzz_tmp))
                abort();
        atexit(fuzz_tmpdir_remove);
        return fuzz_tmp;
}
