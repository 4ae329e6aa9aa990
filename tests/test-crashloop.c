/* SPDX-License-Identifier: MIT */
/* Crash consistency under many kills: the real daemon, training, is asked for a checkpoint
 * and killed with SIGKILL, fifty times in a row: every other time while the save is being
 * written (at a random moment within the measured length of a save), otherwise just after
 * it. Every restart must find a valid checkpoint (none set aside as corrupt, since writes
 * are atomic) and resume from the file it holds: the last acknowledged save byte for byte,
 * or a later one whose acknowledgement the kill cut off. At most one checkpoint's worth of
 * work is ever lost, and no temporary file outlives the restart. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <dirent.h>
#include <errno.h>

#include "checkpoint.h"
#include "fileio.h"
#include "hash.h"
#include "macros.h"
#include "rng.h"
#include "test-cpu-group.h"
#include "test-files.h"
#include "daemon-harness.h"

#define KILLS 50
#define TIMEOUT_S test_limit_s(20.0)

static char *root, *conf, *state, *control, *log_path, *ckpt;
static double slowest_start_s;

/* "from step N" of the last start in the log, or -1. */
static long resumed_step(void) {
        _cleanup_free_ char *text = NULL;
        size_t size;
        const char *p, *last = NULL;

        if (read_full_file(log_path, 1 << 26, (void **) &text, &size) < 0)
                return -1;
        for (p = strstr(text, " from step "); p; p = strstr(p + 1, " from step "))
                last = p;
        return last ? strtol(last + 11, NULL, 10) : -1;
}

static int count_in_log(const char *what) {
        _cleanup_free_ char *text = NULL;
        size_t size;
        int n = 0;

        if (read_full_file(log_path, 1 << 26, (void **) &text, &size) < 0)
                return -1;
        for (const char *p = strstr(text, what); p; p = strstr(p + 1, what))
                n++;
        return n;
}

/* Temporary files of a save in the state directory: ".#checkpoint.safetensors.XXXXXX"
 * (the new checkpoint being written) and "checkpoint.safetensors.prev.tmp" (the rotation). */
static void count_temporaries(int *ret_new, int *ret_prev) {
        DIR *d = opendir(state);
        struct dirent *de;

        assert_non_null(d);
        *ret_new = *ret_prev = 0;
        while ((de = readdir(d))) {
                if (strncmp(de->d_name, ".#checkpoint.safetensors.", 25) == 0)
                        (*ret_new)++;
                else if (strcmp(de->d_name, "checkpoint.safetensors.prev.tmp") == 0)
                        (*ret_prev)++;
        }
        closedir(d);
}

/* The step and SHA-256 of the checkpoint file; step -1 when there is none. */
static void checkpoint_id(long *ret_step, char hash[HASH_SHA256_HEX]) {
        *ret_step = -1;
        hash[0] = 0;
        if (access(ckpt, F_OK) < 0)
                return;
        assert_int_equal(ckpt_read_step(ckpt, ret_step), 0);
        assert_int_equal(hash_sha256_file_hex(ckpt, hash), 0);
}

/* Waits until the restarted daemon answers; if it does not, shows why before failing. */
static void wait_up(pid_t pid, int i) {
        _cleanup_free_ char *cmd = NULL;
        double t0 = harness_now();
        int status;

        if (harness_wait_int(control, "step", 0, TIMEOUT_S)) {
                slowest_start_s = MAX(slowest_start_s, harness_now() - t0);
                return;
        }
        if (waitpid(pid, &status, WNOHANG) == pid)
                printf("start %d: edged exited (status 0x%x)\n", i, (unsigned) status);
        else {
                printf("start %d: edged (pid %d) still runs but does not answer; its stack:\n", i,
                       (int) pid);
                assert_true(asprintf(&cmd, "cat /proc/%d/stack /proc/%d/wchan; echo", (int) pid,
                                     (int) pid) > 0);
                (void) system(cmd);
                free(TAKE_PTR(cmd));
                harness_stop(pid, SIGKILL);
        }
        assert_true(asprintf(&cmd, "ls -la '%s'; tail -n 25 '%s'", state, log_path) > 0);
        (void) system(cmd);
        fail_msg("start %d: no answer on the control socket within %.0f s", i, TIMEOUT_S);
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static void test_kill_loop(void **unused) {
        char acked_hash[HASH_SHA256_HEX] = "", file_hash[HASH_SHA256_HEX];
        long acked = 0, file_step;
        int mid_save = 0, tmp_at_kill = 0, tmp_files = 0, prev_tmp = 0, acked_in_time = 0;
        int same_as_acked = 0, newer = 0;
        double took[KILLS], save_s = 0.04; /* a save's length: the median measured below */
        int n_took = 0;
        rng_t r;

        rng_seed(&r, 2026);
        for (int i = 0; i < KILLS; i++) {
                /* what the restart finds: the daemon must resume from exactly this file */
                checkpoint_id(&file_step, file_hash);
                if (file_step >= 0 && file_step < acked)
                        fail_msg("kill %d: the checkpoint is at step %ld, but step %ld had been "
                                 "saved",
                                 i, file_step, acked);
                if (acked > 0 && file_step == acked) {
                        if (strcmp(file_hash, acked_hash) != 0)
                                fail_msg("kill %d: the checkpoint at step %ld is not the one "
                                         "acknowledged (SHA-256 %s, then %s)",
                                         i, acked, file_hash, acked_hash);
                        same_as_acked++;
                } else if (file_step > acked)
                        newer++; /* its save finished; the kill came before the reply */

                pid_t pid = harness_start(root, conf, state, control, log_path, false);
                long start;

                assert_true(pid > 0);
                /* the control socket answers once the checkpoint is loaded */
                wait_up(pid, i);
                start = resumed_step();
                if (start != MAX(file_step, 0L))
                        fail_msg("kill %d: resumed at step %ld, but the checkpoint holds step %ld",
                                 i, start, file_step);
                /* train a little, then save and kill during it or just after it */
                assert_true(harness_wait_int(control, "step", start + 3, TIMEOUT_S));
                json_t *reply = NULL;
                const double t0 = harness_now();
                if (i % 2) {
                        /* anywhere in a save's length, a little past it sometimes */
                        useconds_t delay = (useconds_t) (save_s * 1.2e6 *
                                                         (double) rng_below(&r, 1000) / 1000.0);
                        pid_t killer = fork();
                        if (killer == 0) {
                                usleep(delay);
                                kill(pid, SIGKILL);
                                _exit(0);
                        }
                        reply = harness_request(control, "{\"cmd\":\"checkpoint-save\"}\n");
                        waitpid(killer, NULL, 0);
                        mid_save++;
                } else {
                        reply = harness_request(control, "{\"cmd\":\"checkpoint-save\"}\n");
                        if (reply && json_is_true(json_object_get(reply, "ok"))) {
                                took[n_took++] = harness_now() - t0;
                                qsort(took, (size_t) n_took, sizeof(double), cmp_double);
                                save_s = took[n_took / 2];
                        }
                        usleep((useconds_t) rng_below(&r, 200) * 1000);
                }
                /* only an acknowledged save is a promise; its bytes are what must come back */
                if (reply && json_is_true(json_object_get(reply, "ok"))) {
                        acked = (long) json_integer_value(
                                json_object_get(json_object_get(reply, "checkpoint"), "step"));
                        assert_int_equal(hash_sha256_file_hex(ckpt, acked_hash), 0);
                        acked_in_time += i % 2;
                }
                json_decref(reply);
                int status = harness_stop(pid, SIGKILL);
                assert_true(WIFSIGNALED(status));
                /* a kill that left a temporary file landed inside a save */
                int n_new, n_prev;
                count_temporaries(&n_new, &n_prev);
                tmp_at_kill += n_new + n_prev > 0;
                tmp_files += n_new;
                prev_tmp += n_prev;
        }
        /* one more start: it must resume from the same file, at or after the last
         * acknowledged save */
        checkpoint_id(&file_step, file_hash);
        pid_t pid = harness_start(root, conf, state, control, log_path, false);
        wait_up(pid, KILLS);
        long final = resumed_step();
        harness_stop(pid, SIGTERM);
        assert_true(n_took > 0);
        printf("%d kills, %d during a save (%d of those saves acknowledged first); a save took "
               "%.0f ms (median of %d; %.0f-%.0f ms)\n",
               KILLS, mid_save, acked_in_time, save_s * 1e3, n_took, took[0] * 1e3,
               took[n_took - 1] * 1e3);
        printf("the slowest restart answered after %.2f s\n", slowest_start_s);
        printf("kills that left a save's temporary file: %d (%d new checkpoints, %d rotations)\n",
               tmp_at_kill, tmp_files, prev_tmp);
        printf("restarts from the acknowledged checkpoint, same SHA-256: %d; from a later one "
               "whose reply the kill cut off: %d\n",
               same_as_acked, newer);
        printf("last acknowledged save at step %ld, resumed at %ld; corrupt checkpoints set "
               "aside: %d\n",
               acked, final, count_in_log("is corrupt"));
        assert_int_equal(final, file_step);
        assert_true(final >= acked);
        if (final == acked)
                assert_string_equal(file_hash, acked_hash);
        assert_true(tmp_at_kill > 0); /* else the loop never tested a torn save */
        assert_true(same_as_acked > 0);
        assert_int_equal(count_in_log("is corrupt"), 0);
        assert_int_equal(count_in_log("resumed from the previous checkpoint"), 0);
        /* every temporary file a kill left was removed by the next start... */
        printf("removed leftovers of interrupted saves: %d\n",
               count_in_log("left by an interrupted save"));
        assert_int_equal(count_in_log("left by an interrupted save"), tmp_files);
        /* ...and nothing else is left to fill the disk */
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd,
                             "ls -A '%s' | grep -v '^checkpoint.safetensors$' | "
                             "grep -v '^checkpoint.safetensors.prev$' | "
                             "grep -v '^daemon-state.json$' | grep -q .",
                             state) > 0);
        if (system(cmd) == 0) {
                _cleanup_free_ char *ls = NULL;
                assert_true(asprintf(&ls, "ls -la %s", state) > 0);
                (void) system(ls);
                fail_msg("files other than the checkpoints and the state file in %s", state);
        }
}

static int setup(void **unused) {
        if (test_tmpdir_create("test-crashloop") < 0 || harness_make_root("laptop-ac", &root) < 0)
                return -1;
        conf = test_tmp_path("edged.conf");
        state = test_tmp_path("state");
        control = test_tmp_path("control");
        log_path = test_tmp_path("edged.log");
        ckpt = test_tmp_path("state/checkpoint.safetensors");
        /* trains from the first sample: nothing to wait for between kills */
        harness_write(test_tmpdir, "edged.conf",
                      "[Policy]\nIdleWindowSec=1\nMinIdlePercent=0\nMaxForegroundDelayMs=1000\n"
                      "MaxCores=1\n[Daemon]\nDataDirectory=/data\nModel=tiny\n"
                      "CheckpointIntervalSec=3600\n");
        return 0;
}

static int teardown(void **unused) {
        free(root);
        free(conf);
        free(state);
        free(control);
        free(log_path);
        free(ckpt);
        return test_tmpdir_remove(NULL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kill_loop),
        };
        test_cpu_group_enter("crashloop");
        return test_run_group("test-crashloop", tests, setup, teardown);
}
