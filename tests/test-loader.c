/* SPDX-License-Identifier: MIT */
/* Loader: the index skips what it must (and says why), every window is byte-for-byte the
 * source file at the reported offset, the cursor reproduces batches across loaders and
 * restarts, held-out files never train, and files that vanish or shrink are skipped. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "loader.h"
#include "log.h"
#include "macros.h"
#include "rng.h"
#include "test-files.h"

enum { B = 4, T = 16, N_FILES = 40, LOCKED_ID = 99 };

/* Byte at offset o of file id f: differs between files and between nearby offsets. */
static uint8_t content(int f, uint64_t o) {
        return (uint8_t) (f * 37 + o * 11 + (o >> 8) * 101 + (o >> 16));
}

static uint64_t file_size(int f) {
        return 200 + (uint64_t) f * 53;
}

static void write_file(const char *path, int f, uint64_t size) {
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        for (uint64_t o = 0; o < size; o++)
                fputc(content(f, o), fp);
        assert_int_equal(fclose(fp), 0);
}

static char *mkpath(const char *dir, const char *name) {
        char *p;
        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

/* File id from the index path: basename "fNN", or LOCKED_ID for "locked". */
static int path_id(const char *path) {
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        if (!strcmp(b, "locked"))
                return LOCKED_ID;
        assert_true(b[0] == 'f');
        return atoi(b + 1);
}

/* A directory holding n regular files f00.. spread over subdirectories. */
static char *make_plain_tree(const char *name, int n) {
        char *dir = test_tmp_path(name);
        assert_int_equal(mkdir(dir, 0755), 0);
        char *a = mkpath(dir, "a"), *bc = mkpath(dir, "b");
        assert_int_equal(mkdir(a, 0755), 0);
        assert_int_equal(mkdir(bc, 0755), 0);
        for (int f = 0; f < n; f++) {
                char *p;
                assert_true(asprintf(&p, "%s/f%02d", f % 2 ? a : bc, f) > 0);
                write_file(p, f, file_size(f));
                free(p);
        }
        free(a);
        free(bc);
        return dir;
}

static char *full_tree;

static int setup_group(void **state) {
        if (test_tmpdir_create("test-loader") < 0)
                return -1;
        log_set_max_level(LOG_LEVEL_WARNING);
        return 0;
}

/* The tree with everything the index has to refuse. */
static void make_full_tree(void) {
        if (full_tree)
                return;
        full_tree = make_plain_tree("full", N_FILES);
        char *p;

        p = mkpath(full_tree, "empty");
        write_file(p, 0, 0);
        free(p);
        p = mkpath(full_tree, "tiny");
        write_file(p, 0, 5);
        free(p);
        p = mkpath(full_tree, "fifo");
        assert_int_equal(mkfifo(p, 0644), 0);
        free(p);

        p = mkpath(full_tree, "sock");
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        assert_true(strlen(p) < sizeof(sa.sun_path));
        strcpy(sa.sun_path, p);
        assert_int_equal(bind(s, (struct sockaddr *) &sa, sizeof(sa)), 0);
        close(s);
        free(p);

        p = mkpath(full_tree, "a/up"); /* directory symlink to its parent: a loop */
        assert_int_equal(symlink("..", p), 0);
        free(p);
        p = mkpath(full_tree, "self"); /* symlink to itself: ELOOP */
        assert_int_equal(symlink("self", p), 0);
        free(p);
        p = mkpath(full_tree, "dangling");
        assert_int_equal(symlink("does-not-exist", p), 0);
        free(p);
        p = mkpath(full_tree, "link-f01"); /* second name of a/f01 */
        assert_int_equal(symlink("a/f01", p), 0);
        free(p);
        char *src = mkpath(full_tree, "b/f00");
        p = mkpath(full_tree, "hard-f00");
        assert_int_equal(link(src, p), 0);
        free(src);
        free(p);

        p = mkpath(full_tree, "locked");
        write_file(p, LOCKED_ID, 300);
        assert_int_equal(chmod(p, 0), 0);
        free(p);
}

static int teardown_group(void **state) {
        free(full_tree);
        return test_tmpdir_remove(state);
}

static loader *open_loader(const char *dir, unsigned prefetch, bool force_pread) {
        loader_options o = {
                .data_dir = dir, .B = B, .T = T, .prefetch = prefetch, .force_pread = force_pread
        };
        loader *l = NULL;
        assert_int_equal(loader_new(&o, &l), 0);
        assert_non_null(l);
        return l;
}

/* Every window equals its source file at the reported offset, from a training file; for
 * files known to be truncated to `cut` bytes the window must lie below the cut. */
static void check_batch(loader *l, const uint8_t *tok, const uint8_t *tgt, const loader_origin *org,
                        bool want_val) {
        for (int j = 0; j < B; j++) {
                const char *path = loader_file_path(l, org[j].file);
                assert_non_null(path);
                assert_int_equal(loader_file_is_val(l, org[j].file), want_val);
                int id = path_id(path);
                for (int t = 0; t < T; t++) {
                        assert_int_equal(tok[j * T + t], content(id, org[j].offset + (uint64_t) t));
                        assert_int_equal(tgt[j * T + t],
                                         content(id, org[j].offset + (uint64_t) t + 1));
                }
        }
}

static void test_index_counts(void **state) {
        make_full_tree();
        loader *l = open_loader(full_tree, 0, false);
        loader_stats st;
        bool root = geteuid() == 0;

        loader_get_stats(l, &st);
        /* Root reads mode-000 files, so "locked" is indexed as root and skipped otherwise. */
        assert_int_equal(st.n_files, N_FILES + (root ? 1 : 0));
        assert_int_equal(st.skipped[LOADER_SKIP_UNREADABLE], root ? 0 : 1);
        assert_int_equal(st.skipped[LOADER_SKIP_SPECIAL], 2);
        assert_int_equal(st.skipped[LOADER_SKIP_EMPTY], 1);
        assert_int_equal(st.skipped[LOADER_SKIP_TOO_SMALL], 1);
        assert_int_equal(st.skipped[LOADER_SKIP_LOOP], 2);
        assert_int_equal(st.skipped[LOADER_SKIP_DANGLING], 1);
        assert_int_equal(st.skipped[LOADER_SKIP_DUPLICATE], 2);
        assert_true(st.n_val_files >= 1);
        assert_true(st.n_train_files >= N_FILES - 10);
        assert_int_equal(st.n_train_files + st.n_val_files, st.n_files);

        /* Sorted walk: a/ before b/, names in order within each. */
        assert_string_equal(loader_file_path(l, 0), "a/f01");
        assert_string_equal(loader_file_path(l, 1), "a/f03");
        uint64_t total = 0;
        for (int f = 0; f < N_FILES; f++)
                total += file_size(f);
        assert_int_equal(st.bytes, total + (root ? 300 : 0));
        assert_string_equal(loader_skip_reason_to_string(LOADER_SKIP_DANGLING), "dangling");
        loader_free(l);
}

static void test_windows_match_source(void **state) {
        make_full_tree();
        loader *l = open_loader(full_tree, 3, false);
        uint8_t tok[B * T], tgt[B * T];
        loader_origin org[B];
        loader_batch_info info = { .origins = org };
        rng_t cur;
        bool used[N_FILES + 1] = { 0 };

        rng_seed(&cur, 42);
        assert_true(loader_thread_tid(l) > 0);
        for (int i = 0; i < 200; i++) {
                assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                check_batch(l, tok, tgt, org, false);
                for (int j = 0; j < B; j++)
                        used[MIN(path_id(loader_file_path(l, org[j].file)), N_FILES)] = true;
        }
        int n_used = 0;
        for (int f = 0; f <= N_FILES; f++)
                n_used += used[f];
        assert_true(n_used > N_FILES / 2); /* draws spread over the files */

        loader_stats st;
        loader_get_stats(l, &st);
        assert_int_equal(st.batches, 200);
        assert_true(st.bytes_read >= 200ULL * B * (T + 1));
        assert_int_equal(st.vanished + st.shrunk + st.io_errors, 0);
        loader_free(l);
}

/* The prefetch thread is a harvester thread: it must be SCHED_IDLE. */
static void test_thread_idle(void **state) {
        make_full_tree();
        loader *l = open_loader(full_tree, 2, false);
        pid_t tid = loader_thread_tid(l);
        assert_true(tid > 0);
        assert_int_not_equal(tid, getpid());
        assert_int_equal(sched_getscheduler(tid), SCHED_IDLE);
        loader_free(l);

        l = open_loader(full_tree, 0, false);
        assert_int_equal(loader_thread_tid(l), 0);
        loader_free(l);
}

static void run_batches(loader *l, rng_t *cur, int n, uint8_t *tok, uint8_t *tgt,
                        loader_origin *org) {
        for (int i = 0; i < n; i++) {
                loader_batch_info info = { .origins = org ? org + i * B : NULL };
                assert_int_equal(loader_next_batch(l, cur, tok + i * B * T, tgt + i * B * T, &info),
                                 0);
        }
}

static void test_same_cursor_same_batches(void **state) {
        enum { N = 20 };
        make_full_tree();
        static uint8_t tok[3][N * B * T], tgt[3][N * B * T];
        static loader_origin org[3][N * B];
        rng_t c0, c1, c2, saved;

        /* Prefetching and synchronous loaders agree batch for batch. */
        loader *a = open_loader(full_tree, 3, false), *b = open_loader(full_tree, 0, false);
        rng_seed(&c0, 7);
        rng_seed(&c1, 7);
        run_batches(a, &c0, N, tok[0], tgt[0], org[0]);
        run_batches(b, &c1, N, tok[1], tgt[1], org[1]);
        assert_memory_equal(tok[0], tok[1], sizeof(tok[0]));
        assert_memory_equal(tgt[0], tgt[1], sizeof(tgt[0]));
        assert_memory_equal(org[0], org[1], sizeof(org[0]));
        assert_int_equal(c0.state, c1.state);

        /* A checkpointed cursor restored into a fresh loader continues identically. */
        rng_seed(&c2, 7);
        run_batches(a, &c2, N / 2, tok[2], tgt[2], NULL); /* rewind: queue is refilled */
        saved = c2;
        loader_free(a);
        a = open_loader(full_tree, 2, false);
        run_batches(a, &saved, N / 2, tok[2], tgt[2], org[2]);
        assert_memory_equal(tok[2], tok[0] + (N / 2) * B * T, (N / 2) * B * T);
        assert_memory_equal(org[2], org[0] + (N / 2) * B, (N / 2) * B * sizeof(loader_origin));
        assert_int_equal(saved.state, c0.state);

        /* A different seed gives different windows. */
        rng_seed(&c2, 8);
        run_batches(a, &c2, 1, tok[2], tgt[2], NULL);
        assert_memory_not_equal(tok[2], tok[0], B * T);
        loader_free(a);
        loader_free(b);
}

static void test_pread_fallback_same_bytes(void **state) {
        enum { N = 10 };
        make_full_tree();
        static uint8_t tok[2][N * B * T], tgt[2][N * B * T];
        loader *u = open_loader(full_tree, 2, false), *p = open_loader(full_tree, 2, true);
        loader_stats su, sp;
        rng_t c0, c1;

        rng_seed(&c0, 99);
        rng_seed(&c1, 99);
        run_batches(u, &c0, N, tok[0], tgt[0], NULL);
        run_batches(p, &c1, N, tok[1], tgt[1], NULL);
        assert_memory_equal(tok[0], tok[1], sizeof(tok[0]));
        assert_memory_equal(tgt[0], tgt[1], sizeof(tgt[0]));
        loader_get_stats(u, &su);
        loader_get_stats(p, &sp);
        assert_true(sp.pread_fallback);
        /* io_uring may itself be unavailable here (seccomp, qemu-user); then both fall back. */
        if (su.pread_fallback)
                print_message("io_uring unavailable: both loaders used pread()\n");
        loader_free(u);
        loader_free(p);
}

static void test_held_out(void **state) {
        make_full_tree();
        loader *l = open_loader(full_tree, 0, false);
        uint8_t tok[B * T], tgt[B * T], tok2[B * T], tgt2[B * T];
        loader_origin org[B], org2[B];

        for (uint64_t i = 0; i < 20; i++) {
                assert_int_equal(loader_val_batch(l, i, tok, tgt, org), 0);
                check_batch(l, tok, tgt, org, true);
                assert_int_equal(loader_val_batch(l, i, tok2, tgt2, org2), 0);
                assert_memory_equal(tok, tok2, sizeof(tok));
                assert_memory_equal(org, org2, sizeof(org));
        }
        /* Training draws never touch a held-out file (check_batch asserts is_val false). */
        rng_t cur;
        loader_batch_info info = { .origins = org };
        rng_seed(&cur, 3);
        for (int i = 0; i < 300; i++) {
                assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                check_batch(l, tok, tgt, org, false);
        }
        loader_free(l);
}

/* One file: its last 5 % (at least T+1 bytes) is held out instead. */
static void test_single_file_split(void **state) {
        char *dir = test_tmp_path("single");
        assert_int_equal(mkdir(dir, 0755), 0);
        char *p = mkpath(dir, "f07");
        write_file(p, 7, 2000);
        loader *l = open_loader(dir, 0, false);
        loader_stats st;
        uint8_t tok[B * T], tgt[B * T];
        loader_origin org[B] = { 0 };
        loader_batch_info info = { .origins = org };
        rng_t cur;

        loader_get_stats(l, &st);
        assert_int_equal(st.n_files, 1);
        assert_int_equal(st.val_bytes, 100);
        assert_int_equal(st.train_bytes, 1900);
        rng_seed(&cur, 1);
        for (int i = 0; i < 100; i++) {
                assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                for (int j = 0; j < B; j++) {
                        assert_true(org[j].offset + T + 1 <= 1900);
                        assert_int_equal(tok[j * T], content(7, org[j].offset));
                }
        }
        for (uint64_t i = 0; i < 20; i++) {
                assert_int_equal(loader_val_batch(l, i, tok, tgt, org), 0);
                for (int j = 0; j < B; j++) {
                        assert_true(org[j].offset >= 1900);
                        assert_true(org[j].offset + T + 1 <= 2000);
                        assert_int_equal(tgt[j * T + T - 1], content(7, org[j].offset + T));
                }
        }
        loader_free(l);
        free(p);
        free(dir);
}

/* Unlink one file and truncate another after indexing: both are dropped, counted, and
 * redrawn; every batch still arrives and is correct. */
static void test_vanished_and_shrunk(void **state) {
        char *dir = make_plain_tree("mutate", 6);
        for (unsigned prefetch = 0; prefetch <= 2; prefetch += 2) {
                loader *l = open_loader(dir, prefetch, prefetch == 2);
                char *gone = mkpath(dir, "b/f02"), *cut = mkpath(dir, "a/f03");
                uint8_t tok[B * T], tgt[B * T];
                loader_origin org[B];
                loader_batch_info info = { .origins = org };
                loader_stats st;
                rng_t cur;

                /* Which of the two are training files decides what must be counted. */
                int train2 = 0, train3 = 0;
                loader_get_stats(l, &st);
                for (size_t f = 0; f < st.n_files; f++) {
                        int id = path_id(loader_file_path(l, f));
                        train2 += id == 2 && !loader_file_is_val(l, f);
                        train3 += id == 3 && !loader_file_is_val(l, f);
                }
                rng_seed(&cur, 5);
                if (prefetch) /* let the queue fill from the intact files first */
                        assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                assert_int_equal(unlink(gone), 0);
                assert_int_equal(truncate(cut, T / 2), 0);
                for (int i = 0; i < 200; i++) {
                        assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                        /* Batches queued (or being read) before the change may still hold
                         * the old bytes; everything after comes from intact files. */
                        if (i <= (int) prefetch)
                                continue;
                        for (int j = 0; j < B; j++) {
                                int id = path_id(loader_file_path(l, org[j].file));
                                assert_int_not_equal(id, 2);
                                assert_int_not_equal(id, 3);
                        }
                        check_batch(l, tok, tgt, org, false);
                }
                loader_get_stats(l, &st);
                /* 800 draws over at most 6 files: each training file is drawn. */
                assert_int_equal(st.vanished, train2);
                assert_int_equal(st.shrunk, train3);
                /* At most one of six files is held out, so at least one of them trains. */
                assert_true(train2 + train3 >= 1);
                assert_true(st.redraws >= 1);
                assert_int_equal(st.io_errors, 0);

                /* A re-index drops them for good. */
                bool changed;
                assert_int_equal(loader_check(l, &changed), 0);
                assert_true(changed);
                loader_get_stats(l, &st);
                assert_int_equal(st.n_files, 4);
                assert_int_equal(st.skipped[LOADER_SKIP_TOO_SMALL], 1);
                for (int i = 0; i < 50; i++) {
                        assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                        check_batch(l, tok, tgt, org, false);
                }
                loader_free(l);

                /* Restore the tree for the next round. */
                write_file(gone, 2, file_size(2));
                write_file(cut, 3, file_size(3));
                free(gone);
                free(cut);
        }
        free(dir);
}

static void test_reindex_on_change(void **state) {
        char *dir = make_plain_tree("grow", 4);
        loader *l = open_loader(dir, 2, false);
        loader_stats st;
        bool changed = true;
        uint8_t tok[B * T], tgt[B * T];
        loader_origin org[B];
        loader_batch_info info = { .origins = org };
        rng_t cur;

        assert_int_equal(loader_check(l, &changed), 0);
        assert_false(changed);
        char *p = mkpath(dir, "a/f09");
        write_file(p, 9, file_size(9));
        free(p);
        assert_int_equal(loader_check(l, &changed), 0);
        assert_true(changed);
        loader_get_stats(l, &st);
        assert_int_equal(st.n_files, 5);
        assert_int_equal(st.reindexes, 1);
        assert_int_equal(loader_reindex(l), 0);
        loader_get_stats(l, &st);
        assert_int_equal(st.reindexes, 2);
        rng_seed(&cur, 11);
        for (int i = 0; i < 50; i++) {
                assert_int_equal(loader_next_batch(l, &cur, tok, tgt, &info), 0);
                check_batch(l, tok, tgt, org, false);
        }
        loader_free(l);
        free(dir);
}

static void test_no_data(void **state) {
        char *dir = test_tmp_path("nodata");
        assert_int_equal(mkdir(dir, 0755), 0);
        loader_options o = { .data_dir = dir, .B = B, .T = T, .prefetch = 2 };
        loader *l = NULL;

        log_set_max_level(-1); /* the error is expected */
        assert_int_equal(loader_new(&o, &l), -ENODATA);
        assert_null(l);
        o.data_dir = "/nonexistent/edged-data";
        assert_int_equal(loader_new(&o, &l), -ENOENT);
        o.B = 0;
        assert_int_equal(loader_new(&o, &l), -EINVAL);
        log_set_max_level(LOG_LEVEL_WARNING);
        free(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_index_counts),
                cmocka_unit_test(test_windows_match_source),
                cmocka_unit_test(test_thread_idle),
                cmocka_unit_test(test_same_cursor_same_batches),
                cmocka_unit_test(test_pread_fallback_same_bytes),
                cmocka_unit_test(test_held_out),
                cmocka_unit_test(test_single_file_split),
                cmocka_unit_test(test_vanished_and_shrunk),
                cmocka_unit_test(test_reindex_on_change),
                cmocka_unit_test(test_no_data),
        };
        return test_run_group("test-loader", tests, setup_group, teardown_group);
}
