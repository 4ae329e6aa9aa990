/* SPDX-License-Identifier: MIT */
/* Scenario: the real edged binary in the foreground against a fake sysfs/procfs root. The
 * test unplugs the AC and heats a zone by writing the fake files and expects the matching
 * state on the control socket within two sample periods, with training frozen meanwhile. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
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

#define TRANSITION_TIMEOUT_S 2.5 /* two sample periods and a margin */

static pid_t daemon_pid;
static char *root, *control;

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void write_file(const char *dir, const char *rel, const char *text) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, rel);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        assert_int_equal(fclose(f), 0);
}

/* One request, one reply; NULL when the daemon is not (yet) listening. */
static json_t *request(const char *line) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char buf[8192];
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        json_t *reply = NULL;

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0 &&
            write(fd, line, strlen(line)) == (ssize_t) strlen(line)) {
                ssize_t n = 0, k;
                while (n < (ssize_t) sizeof(buf) - 1 && (k = read(fd, buf + n, sizeof(buf) - 1 - (size_t) n)) > 0) {
                        n += k;
                        if (memchr(buf, '\n', (size_t) n))
                                break;
                }
                buf[n > 0 ? n : 0] = 0;
                reply = json_loads(buf, 0, NULL);
        }
        close(fd);
        return reply;
}

/* Polls status until state/reason match; returns the seconds it took, or -1. */
static double wait_for(const char *state, const char *reason, double timeout_s) {
        double t0 = now_s();
        while (now_s() - t0 < timeout_s) {
                json_t *s = request("{\"cmd\":\"status\"}\n");
                if (s) {
                        const char *st = json_string_value(json_object_get(s, "state"));
                        const char *re = json_string_value(json_object_get(s, "reason"));
                        bool ok = st && strcmp(st, state) == 0 && (!reason || (re && strcmp(re, reason) == 0));
                        json_decref(s);
                        if (ok)
                                return now_s() - t0;
                }
                usleep(50 * 1000);
        }
        return -1;
}

static long long tokens(void) {
        json_t *s = request("{\"cmd\":\"status\"}\n");
        assert_non_null(s);
        long long t = json_integer_value(json_object_get(s, "tokens"));
        json_decref(s);
        return t;
}

static int setup(void **state) {
        const char *fixtures = getenv("EDGED_FIXTURES");
        const char *bin = getenv("EDGED_BIN");
        char cmd[2048], conf[1024], statedir[1024];

        if (test_tmpdir_create("test-daemon") < 0)
                return -1;
        root = test_tmp_path("root");
        control = test_tmp_path("control");
        snprintf(cmd, sizeof(cmd), "cp -a '%s/sysfs/laptop-ac' '%s' && mkdir -p '%s/data'",
                 fixtures ? fixtures : "tests/fixtures", root, root);
        if (system(cmd) != 0)
                return -1;
        /* some text to train on: the daemon needs at least 4 KiB */
        FILE *f = fopen(strcat(strcpy(cmd, root), "/data/text.txt"), "we");
        for (int i = 0; f && i < 2000; i++)
                fprintf(f, "line %d: the quick brown fox jumps over the lazy dog\n", i);
        if (!f || fclose(f) != 0)
                return -1;
        snprintf(conf, sizeof(conf), "%s/edged.conf", test_tmpdir);
        f = fopen(conf, "we");
        if (!f)
                return -1;
        fprintf(f, "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\n"
                   "[Daemon]\nDataDirectory=/data\nModel=tiny\n");
        fclose(f);
        snprintf(statedir, sizeof(statedir), "%s/state", test_tmpdir);

        daemon_pid = fork();
        if (daemon_pid == 0) {
                execl(bin ? bin : "build/edged", "edged", "--root", root, "--config", conf,
                      "--state-dir", statedir, "--control", control, "--run-seconds", "120",
                      (char *) NULL);
                _exit(127);
        }
        return daemon_pid > 0 ? 0 : -1;
}

static int teardown(void **state) {
        if (daemon_pid > 0) {
                kill(daemon_pid, SIGKILL);
                waitpid(daemon_pid, NULL, 0);
        }
        free(root);
        free(control);
        return test_tmpdir_remove(state);
}

static void test_scenario(void **state) {
        const char *ac = "sys/class/power_supply/AC/online";
        const char *zone = "sys/class/thermal/thermal_zone2/temp";
        double t;

        t = wait_for("running", NULL, 30);
        printf("started, running after %.1f s\n", t);
        assert_true(t >= 0);

        write_file(root, ac, "0\n");
        t = wait_for("paused", "on-battery", TRANSITION_TIMEOUT_S);
        printf("AC unplugged: paused (on-battery) after %.2f s\n", t);
        assert_true(t >= 0);
        /* the policy's decision is instant; the trainer parks after the layer it is in */
        double t0 = now_s();
        for (;;) {
                json_t *s = request("{\"cmd\":\"status\"}\n");
                bool parked = s && json_is_true(json_object_get(s, "trainer_parked"));
                json_decref(s);
                if (parked)
                        break;
                assert_true(now_s() - t0 < 1.0);
                usleep(10 * 1000);
        }
        printf("trainer parked %.0f ms after the pause was seen\n", (now_s() - t0) * 1e3);
        long long a = tokens();
        usleep(1500 * 1000);
        long long b = tokens();
        printf("tokens while paused: %lld -> %lld\n", a, b);
        assert_true(a == b);

        write_file(root, ac, "1\n");
        t = wait_for("running", NULL, 10);
        printf("AC back: running after %.2f s\n", t);
        assert_true(t >= 0);
        usleep(1200 * 1000);
        assert_true(tokens() > b); /* training moves again */

        write_file(root, zone, "90000\n");
        t = wait_for("paused", "hot", TRANSITION_TIMEOUT_S);
        printf("zone at 90 C: paused (hot) after %.2f s\n", t);
        assert_true(t >= 0);
        write_file(root, zone, "70000\n"); /* between Resume (65) and Max (75): stays hot */
        usleep(1500 * 1000);
        assert_true(wait_for("paused", "hot", 0.2) >= 0);
        write_file(root, zone, "60000\n");
        t = wait_for("running", NULL, 10);
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

        /* SIGTERM: checkpoint and exit 0 */
        int status;
        kill(daemon_pid, SIGTERM);
        assert_int_equal(waitpid(daemon_pid, &status, 0), daemon_pid);
        daemon_pid = 0;
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        char path[1024];
        snprintf(path, sizeof(path), "%s/state/checkpoint.safetensors", test_tmpdir);
        assert_int_equal(access(path, R_OK), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_scenario),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
