/* SPDX-License-Identifier: MIT */
/* Never lose work: the real daemon is killed with SIGKILL in the middle of training and
 * restarted; it must resume from its last checkpoint and, with the fixed seed and one core,
 * repeat the uninterrupted run's losses bit for bit from there. Then the newest checkpoint
 * is corrupted: the daemon must set it aside as *.corrupt and resume from the one before.
 * Losses come from the daemon's debug log ("step N loss <hex float>"). A fresh start would
 * repeat those losses too, so a resume is proven by the step in the file, the daemon's
 * "from step N" and a log that starts at step N+1. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>

#include "checkpoint.h"
#include "fileio.h"
#include "macros.h"
#include "test-cpu-group.h"
#include "test-files.h"
#include "daemon-harness.h"

#define MAX_STEPS 4000
#define TIMEOUT_S test_limit_s(120.0)

static char *root, *conf;

typedef struct {
        char *loss[MAX_STEPS]; /* hex float text per step, from one log */
        long first_resume;     /* "from step N" in the log, -1 if absent */
        long first_step;       /* the lowest step with a loss, -1 if none */
} trajectory;

static void trajectory_read(const char *log_path, trajectory *t) {
        FILE *f = fopen(log_path, "re");
        char line[512];

        memset(t, 0, sizeof(*t));
        t->first_resume = -1;
        t->first_step = -1;
        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                long step;
                char hex[64];
                const char *p;
                if (sscanf(line, "step %ld loss %63s", &step, hex) == 2 && step > 0 &&
                    step < MAX_STEPS) {
                        free(t->loss[step]);
                        t->loss[step] = strdup(hex);
                        if (t->first_step < 0 || step < t->first_step)
                                t->first_step = step;
                } else if ((p = strstr(line, " from step ")) && t->first_resume < 0)
                        t->first_resume = strtol(p + 11, NULL, 10);
        }
        fclose(f);
}

static void trajectory_free(trajectory *t) {
        for (int i = 0; i < MAX_STEPS; i++)
                free(t->loss[i]);
}

/* Steps (from, to] must be in both and identical. */
static void assert_same(const trajectory *want, const trajectory *got, long from, long to) {
        long n = 0;
        for (long s = from + 1; s <= to; s++) {
                if (!want->loss[s] || !got->loss[s])
                        fail_msg("step %ld missing from a log", s);
                if (strcmp(want->loss[s], got->loss[s]) != 0)
                        fail_msg("step %ld: loss %s after the restart, %s uninterrupted", s,
                                 got->loss[s], want->loss[s]);
                n++;
        }
        printf("steps %ld..%ld: %ld losses identical to the uninterrupted run\n", from + 1, to, n);
}

static long save_checkpoint(const char *control) {
        json_t *r = harness_request(control, "{\"cmd\":\"checkpoint-save\"}\n");
        assert_non_null(r);
        assert_true(json_is_true(json_object_get(r, "ok")));
        long step = (long) json_integer_value(
                json_object_get(json_object_get(r, "checkpoint"), "step"));
        json_decref(r);
        assert_true(step > 0);
        return step;
}

static char *tmp(const char *name) {
        return test_tmp_path(name);
}

/* The step the file holds, read back as the restart will. */
static long file_step(const char *path) {
        long step = -1;
        assert_int_equal(ckpt_read_step(path, &step), 0);
        return step;
}

/* The log at path contains the formatted line. */
static void assert_log_says(const char *path, const char *fmt, ...) {
        _cleanup_free_ char *want = NULL, *log = NULL;
        size_t size;
        va_list ap;

        va_start(ap, fmt);
        assert_true(vasprintf(&want, fmt, ap) > 0);
        va_end(ap);
        assert_int_equal(read_full_file(path, 1 << 24, (void **) &log, &size), 0);
        if (!strstr(log, want))
                fail_msg("%s does not say \"%s\"", path, want);
}

/* Resumed at 'from': said so, and trained from step from + 1 on, not from step 1. */
static void assert_resumed(const trajectory *t, long from) {
        assert_int_equal(t->first_resume, from);
        assert_int_equal(t->first_step, from + 1);
}

static void test_kill_and_resume(void **state) {
        _cleanup_free_ char *ctl_a = tmp("ctl-a"), *ctl_b = tmp("ctl-b"), *state_a = tmp("state-a"),
                            *state_b = tmp("state-b"), *log_a = tmp("a.log"), *log_b = tmp("b.log"),
                            *log_c1 = tmp("c1.log"), *log_c2 = tmp("c2.log"), *ckpt = NULL,
                            *prev = NULL;
        trajectory *a = calloc(1, sizeof(*a)), *c = calloc(1, sizeof(*c));
        long s1, s2;
        int status;

        assert_true(a && c);
        assert_true(asprintf(&ckpt, "%s/checkpoint.safetensors", state_b) > 0);
        assert_true(asprintf(&prev, "%s.prev", ckpt) > 0);
        /* A runs uninterrupted; B is the one that gets killed */
        pid_t pa = harness_start(root, conf, state_a, ctl_a, log_a, true);
        pid_t pb = harness_start(root, conf, state_b, ctl_b, log_b, true);
        assert_true(harness_wait_int(ctl_b, "step", 30, TIMEOUT_S));
        s1 = save_checkpoint(ctl_b);
        assert_true(harness_wait_int(ctl_b, "step", s1 + 30, TIMEOUT_S));
        s2 = save_checkpoint(ctl_b);
        assert_true(harness_wait_int(ctl_b, "step", s2 + 20, TIMEOUT_S));
        status = harness_stop(pb, SIGKILL);
        assert_true(WIFSIGNALED(status));
        printf("checkpoints at steps %ld and %ld; killed with SIGKILL at step > %ld\n", s1, s2,
               s2 + 20);
        assert_int_equal(file_step(ckpt), s2);
        assert_int_equal(file_step(prev), s1);

        /* restart: resumes at s2 and repeats A's losses */
        pid_t pc = harness_start(root, conf, state_b, ctl_b, log_c1, true);
        assert_true(harness_wait_int(ctl_b, "step", s2 + 80, TIMEOUT_S));
        harness_stop(pc, SIGKILL);
        assert_true(harness_wait_int(ctl_a, "step", s2 + 200, TIMEOUT_S));
        assert_int_equal(WEXITSTATUS(harness_stop(pa, SIGTERM)), 0);
        trajectory_read(log_b, c);
        assert_resumed(c, 0); /* B's first start was a fresh one */
        trajectory_free(c);
        trajectory_read(log_a, a);
        trajectory_read(log_c1, c);
        assert_resumed(c, s2);
        assert_same(a, c, s2, s2 + 80);
        assert_log_says(log_c1, "resumed from %s at step %ld", ckpt, s2);
        printf("the restart read step %ld from %s, logged \"from step %ld\" and trained from step "
               "%ld\n",
               s2, ckpt, c->first_resume, c->first_step);
        trajectory_free(c);

        /* the newest checkpoint goes bad: it is set aside and the one before it resumes */
        assert_int_equal(truncate(ckpt, 4096), 0);
        assert_int_equal(file_step(prev), s1);
        pc = harness_start(root, conf, state_b, ctl_b, log_c2, true);
        assert_true(harness_wait_int(ctl_b, "step", s1 + 80, TIMEOUT_S));
        assert_int_equal(WEXITSTATUS(harness_stop(pc, SIGTERM)), 0);
        trajectory_read(log_c2, c);
        assert_resumed(c, s1);
        assert_same(a, c, s1, s1 + 80);
        _cleanup_free_ char *bad = NULL;
        assert_true(asprintf(&bad, "%s.corrupt", ckpt) > 0);
        assert_int_equal(access(bad, F_OK), 0);
        assert_log_says(log_c2, "is corrupt; kept as");
        assert_log_says(log_c2, "resumed from the previous checkpoint %s at step %ld", prev, s1);
        printf("corrupt newest checkpoint kept as %s; resumed from step %ld\n", bad, s1);
        trajectory_free(a);
        trajectory_free(c);
        free(a);
        free(c);
}

static int setup(void **state) {
        if (test_tmpdir_create("test-resume") < 0 || harness_make_root("laptop-ac", &root) < 0)
                return -1;
        conf = test_tmp_path("edged.conf");
        /* one core: the same sums in the same order, so losses repeat exactly */
        harness_write(test_tmpdir, "edged.conf",
                      "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\nMaxCores=1\n"
                      "[Daemon]\nDataDirectory=/data\nModel=tiny\nCheckpointIntervalSec=3600\n");
        return 0;
}

static int teardown(void **state) {
        free(root);
        free(conf);
        return test_tmpdir_remove(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kill_and_resume),
        };
        test_cpu_group_enter("resume");
        return test_run_group("test-resume", tests, setup, teardown);
}
