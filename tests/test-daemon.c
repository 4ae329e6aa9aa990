/* SPDX-License-Identifier: MIT */
/* Scenario: the real edged binary in the foreground against a fake sysfs/procfs root. The
 * test unplugs the AC and heats a zone by writing the fake files and expects the matching
 * state on the control socket within two sample periods, with training frozen meanwhile. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <grp.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test-files.h"
#include "test-run.h"
#include "test-cpu-group.h"
#include "daemon-harness.h"

/* Two sample periods and a margin: the claim, on the daemon's sample clock, so not scaled. */
#define TRANSITION_TIMEOUT_S 2.5
/* Resuming waits for an idle window first (IdleWindowSec=2). */
#define RESUME_TIMEOUT_S 10.0

static pid_t daemon_pid;
static char *root, *control, *conf, *statedir;

static json_t *request(const char *line) {
        return harness_request(control, line);
}

static double wait_for(const char *state, const char *reason, double timeout_s) {
        return harness_wait_state(control, state, reason, timeout_s);
}

static long long tokens(void) {
        long long t = harness_status_int(control, "tokens");
        assert_true(t >= 0);
        return t;
}

/* In a child that becomes uid/gid 65534 (nobody), with no supplementary groups: status must
 * work, pause must be refused with EPERM. Exit code: 0 ok, 1 wrong answer, 2 setup. */
static int as_nobody(void) {
        pid_t pid;
        int status;

        fflush(stdout); /* the child flushes its copy of the buffer */
        pid = fork();
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
                        _exit(2);
                json_t *s = request("{\"cmd\":\"status\"}\n");
                json_t *p = request("{\"cmd\":\"pause\"}\n");
                bool ok = s && json_is_true(json_object_get(s, "ok")) && p &&
                          json_is_false(json_object_get(p, "ok")) &&
                          strcmp(json_string_value(json_object_get(p, "error")), "EPERM") == 0;
                printf("as uid 65534: status %s, pause: %s\n", ok ? "answered" : "?",
                       p ? json_string_value(json_object_get(p, "message")) : "(no reply)");
                fflush(stdout);
                _exit(ok ? 0 : 1);
        }
        assert_true(pid > 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
}

static int setup(void **state) {
        if (test_tmpdir_create("test-daemon") < 0 || harness_make_root("laptop-ac", &root) < 0)
                return -1;
        chmod(test_tmpdir, 0755); /* so that another user can reach the socket in it */
        control = test_tmp_path("control");
        conf = test_tmp_path("edged.conf");
        statedir = test_tmp_path("state");
        harness_write(test_tmpdir, "edged.conf",
                      "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\n"
                      "[Daemon]\nDataDirectory=/data\nModel=tiny\n");
        daemon_pid = harness_start(root, conf, statedir, control, NULL, false);
        return daemon_pid > 0 ? 0 : -1;
}

static int teardown(void **state) {
        harness_stop(daemon_pid, SIGKILL);
        free(root);
        free(control);
        free(conf);
        free(statedir);
        return test_tmpdir_remove(state);
}

/* Capabilities and the scheduling class of one thread, from /proc/PID/task/TID/{status,stat}
 * (the policy is field 41 of stat). */
static void thread_facts(pid_t tid, unsigned long long *ret_caps, int *ret_policy) {
        char path[96], line[1024];
        unsigned long long v;
        FILE *f;

        *ret_caps = 0;
        *ret_policy = -1;
        snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int) daemon_pid, (int) tid);
        f = fopen(path, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "CapEff: %llx", &v) == 1 || sscanf(line, "CapPrm: %llx", &v) == 1)
                        *ret_caps |= v;
        fclose(f);
        snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int) daemon_pid, (int) tid);
        f = fopen(path, "re");
        assert_non_null(f);
        if (fgets(line, sizeof(line), f)) {
                char *p = strrchr(line, ')');
                int field = 2;
                for (char *t = p ? strtok(p + 1, " ") : NULL; t; t = strtok(NULL, " "))
                        if (++field == 41)
                                *ret_policy = atoi(t);
        }
        fclose(f);
}

/* Least privilege and invisibility, in every thread (capabilities and the scheduling class
 * are per thread; OpenBLAS starts one before main() that once kept both the root
 * capabilities and SCHED_OTHER, competing with the person's programs at nice 0): once
 * training, no thread has a capability and every one but the event loop is SCHED_IDLE. */
static void check_threads(void) {
        char dir[64];
        bool all_idle = false;
        int n = 0;

        snprintf(dir, sizeof(dir), "/proc/%d/task", (int) daemon_pid);
        /* the trainer moves library threads to SCHED_IDLE at its first step */
        for (double t0 = harness_now(); !all_idle && harness_now() - t0 < test_limit_s(10);
             usleep(50 * 1000)) {
                DIR *d = opendir(dir);
                struct dirent *de;

                assert_non_null(d);
                all_idle = true;
                n = 0;
                while ((de = readdir(d))) {
                        pid_t tid = (pid_t) atoi(de->d_name);
                        unsigned long long caps;
                        int policy;

                        if (tid <= 0)
                                continue;
                        thread_facts(tid, &caps, &policy);
                        if (caps)
                                fail_msg("thread %d still has capabilities %llx", (int) tid, caps);
                        if (tid != daemon_pid && policy != SCHED_IDLE)
                                all_idle = false;
                        n++;
                }
                closedir(d);
        }
        printf("%d threads: no capability in any; all but the event loop SCHED_IDLE: %s\n", n,
               all_idle ? "yes" : "NO");
        assert_true(all_idle);
}

static void test_scenario(void **state) {
        const char *ac = "sys/class/power_supply/AC/online";
        const char *zone = "sys/class/thermal/thermal_zone2/temp";
        double t;

        t = wait_for("running", NULL, test_limit_s(30));
        printf("started, running after %.1f s\n", t);
        assert_true(t >= 0);

        check_threads();

        harness_write(root, ac, "0\n");
        t = wait_for("paused", "on-battery", TRANSITION_TIMEOUT_S);
        printf("AC unplugged: paused (on-battery) after %.2f s\n", t);
        assert_true(t >= 0);
        /* the policy's decision is instant; the trainer parks after the layer it is in */
        double t0 = harness_now();
        for (;;) {
                json_t *s = request("{\"cmd\":\"status\"}\n");
                bool parked = s && json_is_true(json_object_get(s, "trainer_parked"));
                json_decref(s);
                if (parked)
                        break;
                /* a layer of tiny takes milliseconds; the limit scales with the build */
                assert_true(harness_now() - t0 < test_limit_s(1.0));
                usleep(10 * 1000);
        }
        printf("trainer parked %.0f ms after the pause was seen\n", (harness_now() - t0) * 1e3);
        long long a = tokens();
        usleep(1500 * 1000);
        long long b = tokens();
        printf("tokens while paused: %lld -> %lld\n", a, b);
        assert_true(a == b);

        harness_write(root, ac, "1\n");
        t = wait_for("running", NULL, RESUME_TIMEOUT_S);
        printf("AC back: running after %.2f s\n", t);
        assert_true(t >= 0);
        t0 = harness_now();
        assert_true(harness_wait_int(control, "tokens", b + 1, test_limit_s(5))); /* it moves */
        printf("training moved again %.2f s after running was seen\n", harness_now() - t0);

        harness_write(root, zone, "90000\n");
        t = wait_for("paused", "hot", TRANSITION_TIMEOUT_S);
        printf("zone at 90 C: paused (hot) after %.2f s\n", t);
        assert_true(t >= 0);
        harness_write(root, zone, "70000\n"); /* between Resume (65) and Max (75): stays hot */
        usleep(1500 * 1000);
        assert_true(wait_for("paused", "hot", 0.2) >= 0);
        harness_write(root, zone, "60000\n");
        t = wait_for("running", NULL, RESUME_TIMEOUT_S);
        printf("zone at 60 C: running after %.2f s\n", t);
        assert_true(t >= 0);

        /* the pauses are counted once each, by reason */
        json_t *st = request("{\"cmd\":\"stats\"}\n");
        assert_non_null(st);
        json_t *paused = json_object_get(st, "times_paused");
        printf("stats: %lld transitions, on-battery %lld, hot %lld\n",
               (long long) json_integer_value(json_object_get(st, "transitions")),
               (long long) json_integer_value(json_object_get(paused, "on-battery")),
               (long long) json_integer_value(json_object_get(paused, "hot")));
        assert_int_equal(json_integer_value(json_object_get(paused, "on-battery")), 1);
        assert_int_equal(json_integer_value(json_object_get(paused, "hot")), 1);
        json_decref(st);

        /* profiles: read, then switch through a runtime override */
        json_t *p = request("{\"cmd\":\"profile\"}\n");
        assert_string_equal(json_string_value(json_object_get(p, "profile")), "balanced");
        json_decref(p);
        p = request("{\"cmd\":\"profile-set\",\"name\":\"quiet\"}\n");
        assert_string_equal(json_string_value(json_object_get(p, "profile")), "quiet");
        json_decref(p);
        p = request("{\"cmd\":\"profile-set\",\"name\":\"noisy\"}\n");
        assert_true(json_is_false(json_object_get(p, "ok")));
        printf("profile-set noisy: %s\n", json_string_value(json_object_get(p, "message")));
        json_decref(p);

        /* SIGHUP reloads the configuration: a core limit takes effect without a restart */
        long long cores = harness_status_int(control, "cores");
        harness_write(test_tmpdir, "edged.conf",
                      "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\nMaxCores=1\n"
                      "[Daemon]\nDataDirectory=/data\nModel=tiny\n");
        kill(daemon_pid, SIGHUP);
        t0 = harness_now();
        while (harness_status_int(control, "cores") != 1 &&
               harness_now() - t0 < TRANSITION_TIMEOUT_S)
                usleep(50 * 1000);
        printf("SIGHUP with MaxCores=1: %lld cores -> %lld after %.2f s\n", cores,
               harness_status_int(control, "cores"), harness_now() - t0);
        assert_int_equal(harness_status_int(control, "cores"), 1);

        /* rights: anyone reads, only root and group edged change things */
        if (geteuid() == 0)
                assert_int_equal(as_nobody(), 0);

        /* a user pause takes effect at once... */
        json_t *ps = request("{\"cmd\":\"pause\"}\n");
        assert_true(json_is_true(json_object_get(ps, "ok")));
        json_decref(ps);
        t = wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S);
        printf("user pause: paused (user-paused) after %.2f s\n", t);
        assert_true(t >= 0);

        /* SIGTERM: checkpoint and exit 0 */
        int status = harness_stop(daemon_pid, SIGTERM);
        daemon_pid = 0;
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        char path[1024];
        snprintf(path, sizeof(path), "%s/checkpoint.safetensors", statedir);
        assert_int_equal(access(path, R_OK), 0);

        /* ...and survives a restart, as does the profile override, until resumed */
        daemon_pid = harness_start(root, conf, statedir, control, NULL, false);
        t = wait_for("paused", "user-paused", test_limit_s(30));
        printf("after a restart: paused (user-paused) after %.2f s\n", t);
        assert_true(t >= 0);
        p = request("{\"cmd\":\"profile\"}\n");
        assert_string_equal(json_string_value(json_object_get(p, "profile")), "quiet");
        json_decref(p);
        ps = request("{\"cmd\":\"resume\"}\n");
        assert_true(json_is_true(json_object_get(ps, "ok")));
        json_decref(ps);
        t = wait_for("running", NULL, RESUME_TIMEOUT_S);
        printf("resumed: running after %.2f s\n", t);
        assert_true(t >= 0);
        /* as another user, every thread lacks capabilities anyway, and none can be dropped */
        if (geteuid() != 0)
                TEST_SKIP("not root: the capability drop and a non-member's EPERM were not "
                          "checked (everything else was)");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_scenario),
        };
        test_cpu_group_enter("daemon");
        return test_run_group("test-daemon", tests, setup, teardown);
}
