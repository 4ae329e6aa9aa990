/* SPDX-License-Identifier: MIT */
/* A full disk never costs the last good checkpoint: the daemon's state directory is a small
 * tmpfs; once a checkpoint no longer fits, the daemon pauses with reason disk-full, the
 * checkpoint on disk is still the previous, valid one, and when space returns it saves and
 * trains again by itself. Needs root (mount). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"
#include "test-cpu-group.h"

#include <errno.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#include "checkpoint.h"
#include "macros.h"
#include "model.h"
#include "test-files.h"
#include "daemon-harness.h"

static char *root, *conf, *state, *control;
static pid_t pid;
static bool mounted;

static json_t *req(const char *line) {
        return harness_request(control, line);
}

static const char *reason(void) {
        static char buf[64];
        json_t *s = req("{\"cmd\":\"status\"}\n");
        snprintf(buf, sizeof(buf), "%s/%s", json_string_value(json_object_get(s, "state")),
                 json_string_value(json_object_get(s, "reason")));
        json_decref(s);
        return buf;
}

static void assert_checkpoint_loads(long *ret_step) {
        _cleanup_free_ char *path = NULL;
        model_config cfg;
        model *m = NULL;
        ckpt_state st;

        assert_true(asprintf(&path, "%s/checkpoint.safetensors", state) > 0);
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        assert_int_equal(ckpt_load(path, m, NULL, &st), 0);
        model_free(m);
        *ret_step = st.step;
}

static void test_disk_full(void **unused) {
        _cleanup_free_ char *filler = NULL;
        struct statvfs vfs;
        long step_before, step_after;

        assert_true(harness_wait_state(control, "running", NULL, test_limit_s(30)) >= 0);
        assert_true(harness_wait_int(control, "step", 5, test_limit_s(30)));
        json_t *r = req("{\"cmd\":\"checkpoint-save\"}\n");
        assert_true(json_is_true(json_object_get(r, "ok")));
        json_decref(r);
        assert_checkpoint_loads(&step_before);

        /* leave less room than one more checkpoint needs */
        assert_int_equal(statvfs(state, &vfs), 0);
        unsigned long long avail = (unsigned long long) vfs.f_bavail * vfs.f_frsize;
        assert_true(asprintf(&filler, "%s/filler", state) > 0);
        FILE *f = fopen(filler, "we");
        assert_non_null(f);
        char block[65536] = { 0 };
        for (unsigned long long n = 0; n + sizeof(block) + (1u << 20) < avail; n += sizeof(block))
                if (fwrite(block, sizeof(block), 1, f) != 1)
                        break;
        fclose(f);

        r = req("{\"cmd\":\"checkpoint-save\"}\n");
        printf("checkpoint-save with 1 MiB free: %s (%s)\n",
               json_string_value(json_object_get(r, "error")),
               json_string_value(json_object_get(r, "message")));
        assert_true(json_is_false(json_object_get(r, "ok")));
        assert_string_equal(json_string_value(json_object_get(r, "error")), "ENOSPC");
        json_decref(r);
        double t = harness_wait_state(control, "paused", "disk-full", 3);
        printf("paused (disk-full) after %.2f s\n", t);
        assert_true(t >= 0);
        assert_checkpoint_loads(&step_after);
        printf("checkpoint on disk: step %ld, still valid\n", step_after);
        assert_int_equal(step_after, step_before);
        long long a = harness_status_int(control, "tokens");
        usleep(1500 * 1000);
        assert_int_equal(harness_status_int(control, "tokens"), a);

        /* space returns: it saves and trains again by itself */
        assert_int_equal(unlink(filler), 0);
        t = harness_wait_state(control, "running", NULL, 25);
        printf("space freed: running again after %.1f s (%s)\n", t, reason());
        assert_true(t >= 0);
        assert_checkpoint_loads(&step_after);
        assert_true(step_after > step_before);
}

static int setup(void **unused) {
        if (test_tmpdir_create("test-diskfull") < 0 || harness_make_root("laptop-ac", &root) < 0)
                return -1;
        conf = test_tmp_path("edged.conf");
        state = test_tmp_path("state");
        control = test_tmp_path("control");
        harness_write(test_tmpdir, "edged.conf",
                      "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\nMaxCores=1\n"
                      "[Daemon]\nDataDirectory=/data\nModel=tiny\nCheckpointIntervalSec=3600\n");
        if (mkdir(state, 0755) < 0 || mount("tmpfs", state, "tmpfs", 0, "size=16m") < 0)
                return -1;
        mounted = true;
        pid = harness_start(root, conf, state, control, NULL, false);
        return pid > 0 ? 0 : -1;
}

static int teardown(void **unused) {
        harness_stop(pid, SIGKILL);
        if (mounted)
                umount2(state, MNT_DETACH);
        free(root);
        free(conf);
        free(state);
        free(control);
        return test_tmpdir_remove(NULL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_disk_full),
        };
        if (geteuid() != 0) {
                printf("skipped: mounting a small tmpfs as a full disk needs root\n");
                return 77;
        }
        test_cpu_group_enter("diskfull");
        return test_run_group("test-diskfull", tests, setup, teardown);
}
