/* SPDX-License-Identifier: MIT */
/* Crash consistency under many kills: the real daemon, training, is asked for a checkpoint
 * and killed with SIGKILL at a random moment around it, fifty times in a row. Every restart
 * must find a valid checkpoint (none set aside as corrupt, since writes are atomic) and resume
 * from at least the last checkpoint whose save was acknowledged: at most one checkpoint's
 * worth of work is ever lost. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>

#include "fileio.h"
#include "macros.h"
#include "rng.h"
#include "test-files.h"
#include "daemon-harness.h"

#define KILLS 50
#define TIMEOUT_S 20.0

static char *root, *conf, *state, *control, *log_path;

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

static void test_kill_loop(void **unused) {
        long acked = 0;
        int mid_save = 0;
        rng_t r;

        rng_seed(&r, 2026);
        for (int i = 0; i < KILLS; i++) {
                pid_t pid = harness_start(root, conf, state, control, log_path, false);
                long start;

                assert_true(pid > 0);
                /* the control socket answers once the checkpoint is loaded */
                assert_true(harness_wait_int(control, "step", 0, TIMEOUT_S));
                start = resumed_step();
                if (start < acked)
                        fail_msg("kill %d: resumed at step %ld, but step %ld had been saved", i,
                                 start, acked);
                /* train a little, then save and kill somewhere around the save */
                assert_true(harness_wait_int(control, "step", start + 3, TIMEOUT_S));
                json_t *req_reply = NULL;
                if (rng_below(&r, 2)) {
                        /* kill while the save is being written */
                        pid_t killer = fork();
                        if (killer == 0) {
                                usleep((useconds_t) rng_below(&r, 40) * 1000);
                                kill(pid, SIGKILL);
                                _exit(0);
                        }
                        req_reply = harness_request(control, "{\"cmd\":\"checkpoint-save\"}\n");
                        waitpid(killer, NULL, 0);
                        mid_save++;
                } else {
                        req_reply = harness_request(control, "{\"cmd\":\"checkpoint-save\"}\n");
                        usleep((useconds_t) rng_below(&r, 200) * 1000);
                }
                /* only an acknowledged save is a promise */
                if (req_reply && json_is_true(json_object_get(req_reply, "ok")))
                        acked = (long) json_integer_value(
                                json_object_get(json_object_get(req_reply, "checkpoint"), "step"));
                json_decref(req_reply);
                int status = harness_stop(pid, SIGKILL);
                assert_true(WIFSIGNALED(status));
        }
        /* one more start: it must resume at or after the last acknowledged save */
        pid_t pid = harness_start(root, conf, state, control, log_path, false);
        assert_true(harness_wait_int(control, "step", 0, TIMEOUT_S));
        long final = resumed_step();
        harness_stop(pid, SIGTERM);
        printf("%d kills (%d while a save was being written); last acknowledged save at step %ld, "
               "resumed at %ld; corrupt checkpoints set aside: %d\n",
               KILLS, mid_save, acked, final, count_in_log("is corrupt"));
        assert_true(final >= acked);
        assert_int_equal(count_in_log("is corrupt"), 0);
        assert_int_equal(count_in_log("resumed from the previous checkpoint"), 0);
        /* and no half-written temporary file is left to fill the disk */
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "ls -A '%s' | grep -v '^checkpoint.safetensors$' | "
                                   "grep -v '^checkpoint.safetensors.prev$' | "
                                   "grep -v '^daemon-state.json$' | grep -q .",
                             state) > 0);
        printf("removed leftovers of interrupted saves: %d\n", count_in_log("left by an interrupted save"));
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
        return test_tmpdir_remove(NULL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kill_loop),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
