/* SPDX-License-Identifier: MIT */
#pragma once

/* Test helpers for files: a scratch directory per test binary and capture of stderr, so
 * tests can assert on the error messages users would read. Include after <cmocka.h>. */

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char test_tmpdir[64];

static int test_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

/* For cmocka_run_group_tests: creates /tmp/<name>.XXXXXX. */
static inline int test_tmpdir_create(const char *name) {
        snprintf(test_tmpdir, sizeof(test_tmpdir), "/tmp/%s.XXXXXX", name);
        return mkdtemp(test_tmpdir) ? 0 : -1;
}

static inline int test_tmpdir_remove(void **state) {
        return nftw(test_tmpdir, test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* "<tmpdir>/<name>", malloc'd. */
static inline char *test_tmp_path(const char *name) {
        char *p;
        assert_true(asprintf(&p, "%s/%s", test_tmpdir, name) > 0);
        return p;
}

/* How many entries dir holds, not counting those whose names start with '.'. */
static inline size_t test_count_entries(const char *dir) {
        struct dirent *de;
        size_t n = 0;
        DIR *d = opendir(dir);

        assert_non_null(d);
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}

static int test_capture_saved = -1;
static FILE *test_capture_file;

static inline void test_capture_begin(void) {
        fflush(stderr);
        test_capture_file = tmpfile();
        assert_non_null(test_capture_file);
        test_capture_saved = dup(STDERR_FILENO);
        assert_true(test_capture_saved >= 0);
        assert_true(dup2(fileno(test_capture_file), STDERR_FILENO) >= 0);
}

/* Returns what was written to stderr since test_capture_begin (malloc'd). */
static inline char *test_capture_end(void) {
        char *buf;
        long n;

        fflush(stderr);
        assert_true(dup2(test_capture_saved, STDERR_FILENO) >= 0);
        close(test_capture_saved);
        test_capture_saved = -1;
        n = lseek(fileno(test_capture_file), 0, SEEK_END);
        assert_true(n >= 0);
        buf = calloc(1, (size_t) n + 1);
        assert_non_null(buf);
        assert_int_equal(pread(fileno(test_capture_file), buf, (size_t) n, 0), n);
        fclose(test_capture_file);
        test_capture_file = NULL;
        return buf;
}
