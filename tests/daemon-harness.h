/* SPDX-License-Identifier: MIT */
#pragma once

/* Test helpers for running the real edged binary in the foreground: a fake machine root (a
 * copy of a sysfs fixture plus a data directory of generated text), a configuration file,
 * the daemon itself with its stderr in a file, and one-line requests on its control socket.
 * Include after <cmocka.h> and "test-files.h". */

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

static inline double harness_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static inline void harness_write(const char *dir, const char *rel, const char *text) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, rel);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        assert_int_equal(fclose(f), 0);
}

/* <tmpdir>/root: the fixture machine and /data with some text. 0 or -1. */
static inline int harness_make_root(const char *fixture, char **ret_root) {
        const char *fixtures = getenv("EDGED_FIXTURES");
        char cmd[2048], path[1024];
        char *root = NULL;

        if (asprintf(&root, "%s/root", test_tmpdir) < 0)
                return -1;
        snprintf(cmd, sizeof(cmd), "cp -a '%s/sysfs/%s' '%s' && mkdir -p '%s/data'",
                 fixtures ? fixtures : "tests/fixtures", fixture, root, root);
        snprintf(path, sizeof(path), "%s/data/text.txt", root);
        FILE *f = system(cmd) == 0 ? fopen(path, "we") : NULL;
        for (int i = 0; f && i < 2000; i++)
                fprintf(f, "line %d: the quick brown fox jumps over the lazy dog\n", i);
        if (!f || fclose(f) != 0) {
                free(root);
                return -1;
        }
        *ret_root = root;
        return 0;
}

/* Starts edged with the given root, config, state dir and control path; stderr goes to
 * log_path (NULL: inherited). debug turns on EDGED_LOG_LEVEL=debug. */
static inline pid_t harness_start(const char *root, const char *conf, const char *state_dir,
                                  const char *control, const char *log_path, bool debug) {
        const char *bin = getenv("EDGED_BIN");
        pid_t pid = fork();

        if (pid == 0) {
                if (log_path) {
                        FILE *f = freopen(log_path, "a", stderr); /* no "e": it must survive exec */
                        if (!f)
                                _exit(126);
                }
                if (debug)
                        setenv("EDGED_LOG_LEVEL", "debug", 1);
                execl(bin ? bin : "build/edged", "edged", "--root", root, "--config", conf,
                      "--state-dir", state_dir, "--control", control, "--run-seconds", "300",
                      (char *) NULL);
                _exit(127);
        }
        return pid;
}

static inline int harness_stop(pid_t pid, int sig) {
        int status = -1;
        if (pid <= 0)
                return -1;
        kill(pid, sig);
        waitpid(pid, &status, 0);
        return status;
}

/* One request, one reply; NULL when the daemon is not (yet) listening. */
static inline json_t *harness_request(const char *control, const char *line) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char buf[16384];
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        json_t *reply = NULL;

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0 &&
            write(fd, line, strlen(line)) == (ssize_t) strlen(line)) {
                ssize_t n = 0, k;
                while (n < (ssize_t) sizeof(buf) - 1 &&
                       (k = read(fd, buf + n, sizeof(buf) - 1 - (size_t) n)) > 0) {
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

/* An integer field of the status reply, or -1 when the daemon does not answer. */
static inline long long harness_status_int(const char *control, const char *field) {
        json_t *s = harness_request(control, "{\"cmd\":\"status\"}\n");
        long long v = s ? json_integer_value(json_object_get(s, field)) : -1;
        json_decref(s);
        return v;
}

/* Polls status until state (and reason, unless NULL) match; the seconds it took, or -1. */
static inline double harness_wait_state(const char *control, const char *state, const char *reason,
                                        double timeout_s) {
        double t0 = harness_now();
        while (harness_now() - t0 < timeout_s) {
                json_t *s = harness_request(control, "{\"cmd\":\"status\"}\n");
                if (s) {
                        const char *st = json_string_value(json_object_get(s, "state"));
                        const char *re = json_string_value(json_object_get(s, "reason"));
                        bool ok = st && strcmp(st, state) == 0 &&
                                  (!reason || (re && strcmp(re, reason) == 0));
                        json_decref(s);
                        if (ok)
                                return harness_now() - t0;
                }
                usleep(50 * 1000);
        }
        return -1;
}

/* Polls until the status field reaches at least min; false on timeout. */
static inline bool harness_wait_int(const char *control, const char *field, long long min,
                                    double timeout_s) {
        double t0 = harness_now();
        while (harness_now() - t0 < timeout_s) {
                if (harness_status_int(control, field) >= min)
                        return true;
                usleep(50 * 1000);
        }
        return false;
}
