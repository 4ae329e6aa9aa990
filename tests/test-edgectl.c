/* SPDX-License-Identifier: MIT */
/* Scenario: the real edgectl binary against the real edged running in the foreground on a
 * fake sysfs root (the setup of test-daemon.c). Every subcommand's human and JSON output,
 * exit codes 2 (usage), 3 (daemon down) and 4 (permission, as root only), and profile,
 * policy and pause surviving a daemon restart. JSON is checked field by field against
 * docs/control-protocol.md; every field that does not match is printed before failing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"
#include "test-cpu-group.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "blas.h"
#include "macros.h"
#include "test-files.h"

/* two sample periods and a margin; this and every time limit below go through test_limit_s() */
#define TRANSITION_TIMEOUT_S 2.5

static pid_t daemon_pid;
static time_t daemon_started; /* wall clock, for the stats' spans */
static char *root, *control, *conf_path, *state_dir, *log_path;
static const char *edgectl_bin, *edged_bin;
static bool utf8_locale; /* LC_ALL for the edgectl children */

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;

        assert_non_null(f);
        FILE *m = open_memstream(&buf, &size);
        assert_non_null(m);
        for (int c; (c = fgetc(f)) != EOF;)
                fputc(c, m);
        fclose(f);
        fclose(m);
        return buf;
}

/* Runs edgectl with args (NULL-terminated); socket: add "--socket <control>" first.
 * Returns the exit status (128+N for signal N); stdout and stderr into *ret_out and
 * *ret_err (either may be NULL). uid/gid != -1: drop to them in the child first. */
static int run_ctl_as(uid_t uid, gid_t gid, bool socket, char **ret_out, char **ret_err,
                      const char *first, va_list ap) {
        const char *argv[64];
        size_t n = 0;
        char out_path[128], err_path[128];
        int status;

        argv[n++] = "edgectl";
        if (socket) {
                argv[n++] = "--socket";
                argv[n++] = control;
        }
        for (const char *a = first; a && n + 1 < ARRAY_SIZE(argv); a = va_arg(ap, const char *))
                argv[n++] = a;
        argv[n] = NULL;
        snprintf(out_path, sizeof(out_path), "%s/ctl.out", test_tmpdir);
        snprintf(err_path, sizeof(err_path), "%s/ctl.err", test_tmpdir);

        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
                int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
                int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (o < 0 || e < 0 || in < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0 || dup2(in, 0) < 0)
                        _exit(125);
                if (gid != (gid_t) -1 && (setgroups(0, NULL) < 0 || setgid(gid) < 0))
                        _exit(126);
                if (uid != (uid_t) -1 && setuid(uid) < 0)
                        _exit(126);
                setenv("LC_ALL", utf8_locale ? "C.UTF-8" : "C", 1);
                unsetenv("NO_COLOR");
                execv(edgectl_bin, (char **) argv);
                _exit(127);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (ret_out)
                *ret_out = read_all(out_path);
        if (ret_err)
                *ret_err = read_all(err_path);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int ctl(char **ret_out, char **ret_err, const char *first, ...) {
        va_list ap;
        va_start(ap, first);
        int r = run_ctl_as((uid_t) -1, (gid_t) -1, true, ret_out, ret_err, first, ap);
        va_end(ap);
        return r;
}

/* Without the automatic --socket. */
static int ctl_raw(char **ret_out, char **ret_err, const char *first, ...) {
        va_list ap;
        va_start(ap, first);
        int r = run_ctl_as((uid_t) -1, (gid_t) -1, false, ret_out, ret_err, first, ap);
        va_end(ap);
        return r;
}

static int ctl_as(uid_t uid, gid_t gid, char **ret_out, char **ret_err, const char *first, ...) {
        va_list ap;
        va_start(ap, first);
        int r = run_ctl_as(uid, gid, true, ret_out, ret_err, first, ap);
        va_end(ap);
        return r;
}

/* edgectl --json ARGS: the parsed object; asserts exit 0. */
static json_t *ctl_json(const char *first, ...) {
        char *out = NULL, *err = NULL;
        va_list ap;
        json_error_t je;

        va_start(ap, first);
        int r = run_ctl_as((uid_t) -1, (gid_t) -1, true, &out, &err, first, ap);
        va_end(ap);
        if (r != 0)
                printf("edgectl %s ... exited %d: %s", first, r, err);
        assert_int_equal(r, 0);
        json_t *j = json_loads(out, 0, &je);
        if (!j)
                printf("not JSON (%s): %s\n", je.text, out);
        assert_true(json_is_object(j));
        free(out);
        free(err);
        return j;
}

static json_t *status_json(void) {
        return ctl_json("--json", "status", (char *) NULL);
}

/* Polls status until state (and reason, unless NULL) match, for at most timeout_s (scaled);
 * the seconds it took, or -1. */
static double wait_for(const char *state, const char *reason, double timeout_s) {
        double t0 = now_s();
        do {
                char *out = NULL;
                if (ctl(&out, NULL, "--json", "status", (char *) NULL) == 0) {
                        json_t *s = json_loads(out, 0, NULL);
                        const char *st = json_string_value(json_object_get(s, "state"));
                        const char *re = json_string_value(json_object_get(s, "reason"));
                        bool ok = st && strcmp(st, state) == 0 &&
                                  (!reason || (re && strcmp(re, reason) == 0));
                        json_decref(s);
                        if (ok) {
                                free(out);
                                return now_s() - t0;
                        }
                }
                free(out);
                usleep(100 * 1000);
        } while (now_s() - t0 < test_limit_s(timeout_s));
        return -1;
}

static void start_daemon(void) {
        fflush(stdout);
        daemon_started = time(NULL);
        daemon_pid = fork();
        assert_true(daemon_pid >= 0);
        if (daemon_pid == 0) {
                int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (fd >= 0)
                        dup2(fd, 2);
                execl(edged_bin, "edged", "--root", root, "--config", conf_path, "--state-dir",
                      state_dir, "--control", control, "--run-seconds", "120", (char *) NULL);
                _exit(127);
        }
        /* listening: status answers (exit 0); bounded */
        double t0 = now_s();
        while (ctl(NULL, NULL, "status", (char *) NULL) != 0) {
                assert_true(now_s() - t0 < test_limit_s(20));
                usleep(100 * 1000);
        }
}

static void stop_daemon(void) {
        int status;
        assert_true(daemon_pid > 0);
        kill(daemon_pid, SIGTERM);
        assert_int_equal(waitpid(daemon_pid, &status, 0), daemon_pid);
        daemon_pid = 0;
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static int setup(void **state) {
        const char *fixtures = getenv("EDGED_FIXTURES");
        char cmd[2048];

        edgectl_bin = getenv("EDGECTL_BIN") ?: "build/edgectl";
        edged_bin = getenv("EDGED_BIN") ?: "build/edged";
        if (test_tmpdir_create("test-edgectl") < 0)
                return -1;
        /* others must reach the socket: the permission case runs edgectl as nobody */
        if (chmod(test_tmpdir, 0755) < 0)
                return -1;
        root = test_tmp_path("root");
        control = test_tmp_path("control");
        conf_path = test_tmp_path("edged.conf");
        state_dir = test_tmp_path("state");
        log_path = test_tmp_path("edged.log");
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
        f = fopen(conf_path, "we");
        if (!f)
                return -1;
        fprintf(f, "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\n"
                   "[Daemon]\nDataDirectory=/data\nModel=tiny\n");
        fclose(f);
        return 0;
}

static int teardown(void **state) {
        if (daemon_pid > 0) {
                kill(daemon_pid, SIGKILL);
                waitpid(daemon_pid, NULL, 0);
        }
        free(root);
        free(control);
        free(conf_path);
        free(state_dir);
        free(log_path);
        return test_tmpdir_remove(state);
}

/* ---- field checks against docs/control-protocol.md ---- */

enum { T_STR = 1, T_INT = 2, T_NUM = 4, T_BOOL = 8, T_OBJ = 16, T_NULL = 32 };

typedef struct field {
        const char *name;
        int types;
        const char *const *allowed; /* NULL-terminated, for strings */
        double min, max;            /* for numbers, when min < max */
} field;

/* designated, so that the fields left out are zero without warnings */
#define FS(n, t)                                                                                   \
        { .name = (n), .types = (t) }
#define FE(n, t, a)                                                                                \
        { .name = (n), .types = (t), .allowed = (a) }
#define FN(n, t, lo, hi)                                                                           \
        { .name = (n), .types = (t), .min = (lo), .max = (hi) }

static bool type_ok(json_t *v, int types) {
        return ((types & T_STR) && json_is_string(v)) || ((types & T_INT) && json_is_integer(v)) ||
               ((types & T_NUM) && json_is_number(v)) || ((types & T_BOOL) && json_is_boolean(v)) ||
               ((types & T_OBJ) && json_is_object(v)) || ((types & T_NULL) && json_is_null(v));
}

/* Prints every mismatch; returns how many. */
static int check_fields(const char *what, json_t *o, const field *fields, size_t n) {
        int bad = 0;

        for (size_t i = 0; i < n; i++) {
                const field *f = &fields[i];
                json_t *v = json_object_get(o, f->name);
                char *text = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;

                if (!v) {
                        printf("  %s: \"%s\" missing\n", what, f->name);
                        bad++;
                } else if (!type_ok(v, f->types)) {
                        printf("  %s: \"%s\" has the wrong type: %s\n", what, f->name, text);
                        bad++;
                } else if (f->allowed && json_is_string(v)) {
                        bool found = false;
                        for (const char *const *a = f->allowed; *a; a++)
                                found = found || strcmp(*a, json_string_value(v)) == 0;
                        if (!found) {
                                printf("  %s: \"%s\" is not an allowed value: %s\n", what, f->name,
                                       text);
                                bad++;
                        }
                } else if (f->min < f->max && json_is_number(v) &&
                           (json_number_value(v) < f->min || json_number_value(v) > f->max)) {
                        printf("  %s: \"%s\" = %s is outside [%g, %g]\n", what, f->name, text,
                               f->min, f->max);
                        bad++;
                }
                free(text);
        }
        return bad;
}

static const char *const states[] = { "running", "paused", "off", NULL };
static const char *const reasons[] = { "none",         "not-idle",    "hot",
                                       "on-battery",   "low-battery", "outside-hours",
                                       "interference", "user-paused", "no-data",
                                       "no-task",      "error",       NULL };
static const char *const profiles[] = { "quiet", "balanced", "performance", NULL };
static const char *const models[] = { "tiny", "small", "medium", NULL };
static const char *const cpu_sources[] = { "bpf", "procfs", NULL };
static const char *const agg_states[] = { "standalone", "connected", "offline", NULL };
static const char *const origins[] = { "builtin", "profile", "file", "runtime", "fleet", NULL };

#define BIG 1e15

static int check_status(json_t *s) {
        const field fields[] = {
                FS("version", T_STR),
                FE("state", T_STR, states),
                FE("reason", T_STR, reasons),
                FN("paused_until", T_INT | T_NULL, 1e9, 1e10),
                FN("cores", T_INT, 0, 1024),
                FS("trainer_parked", T_BOOL),
                FE("profile", T_STR, profiles),
                FE("model", T_STR, models),
                FN("model_version", T_INT, 0, BIG),
                FN("step", T_INT, 0, BIG),
                FN("tokens", T_INT, 0, BIG),
                FN("tokens_per_s", T_NUM, 0, 1e9),
                FN("loss", T_NUM | T_NULL, 0, 20),
                FN("val_loss", T_NUM | T_NULL, 0, 20),
                FN("core_seconds_today", T_NUM, 0, 86400.0 * 1024),
                FN("core_seconds_total", T_NUM, 0, BIG),
                FN("idle_pct", T_NUM, 0, 100),
                FN("max_temp_c", T_NUM | T_NULL, -40, 150),
                FS("on_ac", T_BOOL | T_NULL),
                FN("battery_pct", T_NUM | T_NULL, 0, 100),
                FE("cpu_source", T_STR, cpu_sources),
                FS("cpu_source_why", T_STR),
                FN("foreground_delay_ms_per_s", T_NUM | T_NULL, 0, 1000),
                FS("blas_kernel", T_STR),
                FS("data", T_OBJ),
                FS("aggregator", T_OBJ),
        };
        const field data_fields[] = {
                FN("files", T_INT, 1, BIG), /* the test put one file there */
                FN("bytes", T_INT, 4096, BIG),
                FN("skipped", T_INT, 0, BIG),
                FN("wait_pct", T_NUM, 0, 100),
        };
        const field agg_fields[] = {
                FE("state", T_STR, agg_states),
                FS("url", T_STR | T_NULL),
                FN("pending_updates", T_INT, 0, BIG),
        };
        int bad = check_fields("status", s, fields, ARRAY_SIZE(fields));
        json_t *data = json_object_get(s, "data"), *agg = json_object_get(s, "aggregator");

        if (json_is_object(data))
                bad += check_fields("status.data", data, data_fields, ARRAY_SIZE(data_fields));
        if (json_is_object(agg))
                bad += check_fields("status.aggregator", agg, agg_fields, ARRAY_SIZE(agg_fields));
        /* the test's config says Model=tiny */
        const char *model = json_string_value(json_object_get(s, "model"));
        if (model && strcmp(model, "tiny") != 0) {
                printf("  status: model %s, but the config says tiny\n", model);
                bad++;
        }
        /* consistency */
        const char *src = json_string_value(json_object_get(s, "cpu_source"));
        const char *why = json_string_value(json_object_get(s, "cpu_source_why"));
        if (src && why && (strcmp(src, "bpf") == 0) != (*why == 0)) {
                printf("  status: cpu_source %s but cpu_source_why \"%s\"\n", src, why);
                bad++;
        }
        json_t *today = json_object_get(s, "core_seconds_today");
        json_t *total = json_object_get(s, "core_seconds_total");
        if (json_is_number(today) && json_is_number(total) &&
            json_number_value(today) > json_number_value(total) + 1e-6) {
                printf("  status: core_seconds_today > core_seconds_total\n");
                bad++;
        }
        /* the fixture is a laptop on AC with a battery and warm zones */
        if (!json_is_true(json_object_get(s, "on_ac")) ||
            !json_is_number(json_object_get(s, "battery_pct")) ||
            !json_is_number(json_object_get(s, "max_temp_c"))) {
                printf("  status: the laptop-ac fixture should give on_ac true, a battery and a "
                       "temperature\n");
                bad++;
        }
        return bad;
}

/* ---- exact values: the laptop-ac fixture and this test's setup ---- */

static json_t *member(json_t *o, const char *path) {
        char buf[64], *dot;
        snprintf(buf, sizeof(buf), "%s", path);
        dot = strchr(buf, '.');
        if (dot) {
                *dot = 0;
                return json_object_get(json_object_get(o, buf), dot + 1);
        }
        return json_object_get(o, buf);
}

/* Each prints a mismatch and returns 1 for it. want: a JSON value compared exactly. */
static int expect_json(json_t *s, const char *path, json_t *want) {
        json_t *v = member(s, path);
        int bad = !v || !json_equal(v, want);
        if (bad) {
                char *got = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;
                char *exp = json_dumps(want, JSON_ENCODE_ANY);
                printf("  status: \"%s\" = %s, expected %s\n", path, got ?: "(missing)", exp);
                free(got);
                free(exp);
        }
        json_decref(want);
        return bad;
}

static int expect_num(json_t *s, const char *path, double lo, double hi) {
        json_t *v = member(s, path);
        double x = json_is_number(v) ? json_number_value(v) : NAN;
        if (x >= lo && x <= hi)
                return 0;
        printf("  status: \"%s\" = %g, expected in [%.17g, %.17g]\n", path, x, lo, hi);
        return 1;
}

static bool same_local_day(time_t a, time_t b) {
        struct tm ta, tb;
        localtime_r(&a, &ta);
        localtime_r(&b, &tb);
        return ta.tm_year == tb.tm_year && ta.tm_yday == tb.tm_yday;
}

/* Tokens per step: daemon/manager.c trains BATCH 4 sequences of tiny's block size, 128. */
#define TOKENS_PER_STEP (4 * 128)
/* A fresh tiny model predicts ~uniformly over 256 bytes: loss ln 256 = 5.545, falling. */
#define LOSS_MAX (5.545 + 0.1)

/* Everything status says that the fixture fixes (tests/fixtures/sysfs/README.md: thermal
 * 48.0 and 52.5 counted, AC online, BAT0 at 87 %, 4 CPUs; its /proc/stat never advances, so
 * no tick elapses and idle is 100 %, all 4 cores free) or this test set up (one data file,
 * Model=tiny, standalone, no pause); what moves with time against a second source. */
static int check_status_exact(json_t *s) {
        char *why = NULL, *data_dir = NULL, *text = NULL, *cmd = NULL, line[128] = "";
        struct stat st;
        int bad = 0;

        assert_true(asprintf(&why, "reading a fake root (%s)", root) > 0);
        assert_true(asprintf(&data_dir, "%s/data", root) > 0);
        assert_true(asprintf(&text, "%s/data/text.txt", root) > 0);
        assert_int_equal(stat(text, &st), 0);

        bad += expect_json(s, "max_temp_c", json_real(52.5));
        bad += expect_json(s, "on_ac", json_true());
        bad += expect_num(s, "battery_pct", 87.0 - 1e-9, 87.0 + 1e-9);
        bad += expect_json(s, "cores", json_integer(4));
        bad += expect_json(s, "idle_pct", json_real(100.0));
        bad += expect_json(s, "cpu_source", json_string("procfs"));
        bad += expect_json(s, "cpu_source_why", json_string(why));
        bad += expect_json(s, "foreground_delay_ms_per_s", json_null());
        bad += expect_json(s, "paused_until", json_null());
        bad += expect_json(s, "trainer_parked", json_false());
        bad += expect_json(s, "profile", json_string("balanced"));
        bad += expect_json(s, "model", json_string("tiny"));
        bad += expect_json(s, "model_version", json_integer(0));
        bad += expect_json(s, "data.directory", json_string(data_dir));
        bad += expect_json(s, "data.files", json_integer(1));
        bad += expect_json(s, "data.bytes", json_integer((json_int_t) st.st_size));
        bad += expect_json(s, "data.skipped", json_integer(0));
        bad += expect_json(s, "data.vanished", json_integer(0));
        bad += expect_json(s, "data.reindexes", json_integer(0));
        bad += expect_json(s, "aggregator.state", json_string("standalone"));
        bad += expect_json(s, "aggregator.url", json_null());
        bad += expect_json(s, "aggregator.pending_updates", json_integer(0));

        /* the daemon's version is what its binary says; its BLAS kernel what OpenBLAS detects
         * here too, unless the environment chose one */
        assert_true(asprintf(&cmd, "'%s' --version", edged_bin) > 0);
        FILE *p = popen(cmd, "re");
        assert_non_null(p);
        assert_non_null(fgets(line, sizeof(line), p));
        pclose(p);
        line[strcspn(line, "\n")] = 0;
        assert_true(strncmp(line, "edged ", 6) == 0);
        bad += expect_json(s, "version", json_string(line + 6));
        if (!getenv("OPENBLAS_CORETYPE") && !getenv("EDGED_BLAS_CORETYPE"))
                bad += expect_json(s, "blas_kernel", json_string(blas_kernel()));

        /* training: at least one step (loss is a number), every step the same tokens */
        json_int_t step = json_integer_value(member(s, "step"));
        json_int_t tokens = json_integer_value(member(s, "tokens"));
        bad += expect_num(s, "step", 1, 1e9);
        bad += expect_json(s, "tokens", json_integer(step * TOKENS_PER_STEP));
        /* one sample period's tokens over its length (1 s; half of it as the margin) */
        bad += expect_num(s, "tokens_per_s", 0, (double) tokens / 0.5);
        bad += expect_num(s, "loss", 1e-3, LOSS_MAX);
        if (!json_is_null(member(s, "val_loss")))
                bad += expect_num(s, "val_loss", 1e-3, LOSS_MAX);
        if (!json_is_null(member(s, "data.wait_pct")))
                bad += expect_num(s, "data.wait_pct", 0, 100);
        /* harvested CPU time: at most every CPU here for as long as the daemon ran (whole
         * seconds, hence the 1); a fresh state directory, so today's is all of it unless
         * midnight passed */
        double ran_s = (double) (time(NULL) - daemon_started) + 1.0;
        double total = json_number_value(member(s, "core_seconds_total"));
        bad += expect_num(s, "core_seconds_total", 0,
                          (double) sysconf(_SC_NPROCESSORS_ONLN) * ran_s);
        if (same_local_day(daemon_started, time(NULL)))
                bad += expect_num(s, "core_seconds_today", total, total);
        else
                bad += expect_num(s, "core_seconds_today", 0, total);
        free(why);
        free(data_dir);
        free(text);
        free(cmd);
        return bad;
}

static bool contains(const char *haystack, const char *needle) {
        bool r = haystack && strstr(haystack, needle);
        if (!r)
                printf("expected to find \"%s\" in:\n%s\n", needle, haystack ? haystack : "(null)");
        return r;
}

/* Changing things takes root or group edged, and edged has no option to name another
 * group: without either, the cases that change things cannot run. */
static bool have_write_rights(void) {
        struct group *gr;
        gid_t groups[256];
        int n;

        if (geteuid() == 0)
                return true;
        gr = getgrnam("edged");
        n = getgroups(ARRAY_SIZE(groups), groups);
        for (int i = 0; gr && i < n; i++)
                if (groups[i] == gr->gr_gid)
                        return true;
        return gr && getegid() == gr->gr_gid;
}

static void need_write_rights(void) {
        if (have_write_rights())
                return;
        TEST_SKIP("not root and not in group edged: edged refuses the cases' changes");
}

/* ---- tests ---- */

static void test_usage(void **state) {
        char *out = NULL, *err = NULL;

        static const char *const cases[][5] = {
                { "frobnicate", NULL },
                { "pause", "--for", "5x", NULL },
                { "pause", "--for", "0", NULL },
                { "pause", "--for", NULL },
                { "profile", "noisy", NULL },
                { "profile", "quiet", "balanced", NULL },
                { "checkpoint", "export", NULL },
                { "checkpoint", "frob", NULL },
                { "policy", "set", NULL },
                { "policy", "set", "MaxCores", NULL },
                { "policy", "frob", NULL },
                { "stats", "--since", "yesterday", NULL },
                { "sample", NULL },
                { "sample", "--tokens", "0", "x", NULL },
                { "watch", "--count", "x", NULL },
                { "status", "--bogus", NULL },
                { "status", "extra", NULL },
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                int r = ctl(&out, &err, cases[i][0], cases[i][1], cases[i][2], cases[i][3],
                            cases[i][4], (char *) NULL);
                printf("edgectl %s %s %s -> %d: %s", cases[i][0], cases[i][1] ?: "",
                       cases[i][1] && cases[i][2] ? cases[i][2] : "", r, err);
                assert_int_equal(r, 2);
                assert_true(strstr(err, "edgectl"));
                assert_string_equal(out, ""); /* errors on stderr only */
                free(out);
                free(err);
        }
        assert_int_equal(ctl_raw(&out, &err, NULL), 2);
        assert_true(contains(err, "Usage: edgectl"));
        free(out);
        free(err);

        assert_int_equal(ctl_raw(&out, &err, "--version", (char *) NULL), 0);
        assert_string_equal(out, "edgectl 0.1.0\n");
        free(out);
        free(err);
        assert_int_equal(ctl_raw(&out, &err, "--help", (char *) NULL), 0);
        assert_true(contains(out, "Usage: edgectl"));
        free(out);
        free(err);
        static const char *const verbs[] = { "status", "pause", "resume", "profile",   "policy",
                                             "stats",  "watch", "sample", "checkpoint" };
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
                char want[64];
                assert_int_equal(ctl_raw(&out, &err, verbs[i], "--help", (char *) NULL), 0);
                snprintf(want, sizeof(want), "Usage: edgectl %s", verbs[i]);
                assert_true(contains(out, want));
                free(out);
                free(err);
        }
        /* --no-pager is accepted anywhere */
        assert_int_equal(ctl(&out, &err, "--no-pager", "profile", "--no-pager", (char *) NULL), 0);
        free(out);
        free(err);
}

static void test_not_running(void **state) {
        _cleanup_free_ char *gone = test_tmp_path("no-such-socket");
        _cleanup_free_ char *stale = test_tmp_path("stale-socket");
        char *out = NULL, *err = NULL;

        assert_int_equal(ctl_raw(&out, &err, "--socket", gone, "status", (char *) NULL), 3);
        printf("daemon down: %s", err);
        assert_true(contains(err, gone));
        assert_true(contains(err, "systemctl start edged"));
        assert_true(contains(err, "not running"));
        free(out);
        free(err);
        /* global options after the verb too */
        assert_int_equal(ctl_raw(&out, &err, "pause", "--socket", gone, (char *) NULL), 3);
        free(out);
        free(err);

        /* a socket file nobody listens on (a crashed daemon): refused, still exit 3 */
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", stale);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        close(fd);
        assert_int_equal(ctl_raw(&out, &err, "--socket", stale, "--json", "status", (char *) NULL), 3);
        assert_true(contains(err, "systemctl start edged"));
        assert_string_equal(out, "");
        free(out);
        free(err);
}

static void test_status(void **state) {
        char *out = NULL, *err = NULL;
        double t = wait_for("running", NULL, 30);

        printf("running after %.1f s\n", t);
        assert_true(t >= 0);
        /* the trainer runs at SCHED_IDLE: its first step waits for a free CPU */
        double t0 = now_s();
        json_int_t step = 0;
        while (step < 1 && now_s() - t0 < test_limit_s(30)) {
                json_t *j = status_json();
                step = json_integer_value(json_object_get(j, "step"));
                json_decref(j);
                if (step < 1)
                        usleep(100 * 1000);
        }
        printf("first step after %.1f s more\n", now_s() - t0);
        assert_true(step >= 1);
        usleep(1200 * 1000); /* a sample period of training: tokens/s and loss are known */

        json_t *s = status_json();
        int bad = check_status(s);
        printf("status --json: %d field(s) do not match the protocol\n", bad);
        char *dump = json_dumps(s, JSON_COMPACT);
        printf("%s\n", dump);
        free(dump);
        int wrong = check_status_exact(s);
        printf("status --json: %d value(s) differ from the fixture's and the setup's\n", wrong);
        assert_int_equal(wrong, 0);
        assert_string_equal(json_string_value(json_object_get(s, "state")), "running");
        assert_string_equal(json_string_value(json_object_get(s, "reason")), "none");
        assert_true(json_integer_value(json_object_get(s, "cores")) >= 1);
        assert_true(json_is_number(json_object_get(s, "loss")));
        assert_false(json_object_get(s, "ok")); /* the envelope is not part of the schema */
        json_decref(s);

        /* human: aligned, one line per item, no colour in a pipe */
        assert_int_equal(ctl(&out, &err, "status", (char *) NULL), 0);
        printf("%s", out);
        static const char *const keys[] = { "State:        running",
                                            "Cores:",
                                            "Throughput:",
                                            "Loss:",
                                            "Model:        tiny",
                                            "Profile:      balanced",
                                            "Harvested:",
                                            "Temperature:",
                                            "Power:        AC",
                                            "CPU source:",
                                            "Interference:",
                                            "Aggregator:" };
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
                assert_true(contains(out, keys[i]));
        assert_null(strchr(out, '\033'));
        assert_true(contains(out, "tokens/s"));
        free(out);
        free(err);
        assert_int_equal(bad, 0);
}

static void test_pause_resume(void **state) {
        char *out = NULL, *err = NULL;
        time_t t0 = time(NULL);

        need_write_rights();

        assert_int_equal(ctl(&out, &err, "pause", "--for", "1h", (char *) NULL), 0);
        assert_true(contains(out, "1h"));
        free(out);
        free(err);
        double t = wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S);
        printf("pause --for 1h: paused (user-paused) after %.2f s\n", t);
        assert_true(t >= 0);
        json_t *s = status_json();
        json_t *until = json_object_get(s, "paused_until");
        printf("paused_until: %lld (now %lld)\n", (long long) json_integer_value(until),
               (long long) t0);
        assert_true(json_is_integer(until));
        assert_true(json_integer_value(until) >= t0 + 3600 - 1 &&
                    json_integer_value(until) <= time(NULL) + 3600 + 1);
        json_decref(s);
        assert_int_equal(ctl(&out, &err, "status", (char *) NULL), 0);
        assert_true(contains(out, "paused (user-paused) until"));
        assert_true(strstr(out, "(in 1h)") || strstr(out, "(in 59m"));
        free(out);
        free(err);

        assert_int_equal(ctl(&out, &err, "resume", (char *) NULL), 0);
        free(out);
        free(err);
        t = wait_for("running", NULL, 15);
        printf("resume: running after %.2f s\n", t);
        assert_true(t >= 0);

        /* indefinite, --json: the replies carry state and reason after the change */
        const field after[] = { FE("state", T_STR, states), FE("reason", T_STR, reasons) };
        json_t *p = ctl_json("pause", "--json", (char *) NULL);
        int bad = check_fields("pause reply", p, after, ARRAY_SIZE(after));
        if (json_is_string(json_object_get(p, "state")) &&
            strcmp(json_string_value(json_object_get(p, "state")), "paused") != 0) {
                printf("  pause reply: state is not paused\n");
                bad++;
        }
        json_decref(p);
        assert_true(wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S) >= 0);
        s = status_json();
        assert_true(json_is_null(json_object_get(s, "paused_until")));
        json_decref(s);
        p = ctl_json("--json", "resume", (char *) NULL);
        bad += check_fields("resume reply", p, after, ARRAY_SIZE(after));
        json_decref(p);
        assert_true(wait_for("running", NULL, 15) >= 0);
        printf("pause/resume replies: %d mismatch(es)\n", bad);
        assert_int_equal(bad, 0);
}

static void test_profile_policy(void **state) {
        char *out = NULL, *err = NULL;
        json_t *j;

        need_write_rights();

        assert_int_equal(ctl(&out, &err, "profile", (char *) NULL), 0);
        assert_string_equal(out, "balanced\n");
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "profile", "quiet", (char *) NULL), 0);
        assert_true(contains(out, "quiet"));
        free(out);
        free(err);
        j = ctl_json("profile", "--json", (char *) NULL);
        assert_string_equal(json_string_value(json_object_get(j, "profile")), "quiet");
        json_decref(j);
        j = status_json();
        assert_string_equal(json_string_value(json_object_get(j, "profile")), "quiet");
        json_decref(j);

        /* policy show --json: every knob with value and origin */
        j = ctl_json("--json", "policy", "show", (char *) NULL);
        json_t *knobs = json_object_get(j, "knobs"), *k;
        size_t i;
        int bad = 0;
        assert_true(json_is_string(json_object_get(j, "show")));
        if (!json_is_array(knobs)) {
                printf("  policy-get: \"knobs\" missing\n");
                bad++;
        }
        json_array_foreach(knobs, i, k) {
                const field kf[] = { FS("key", T_STR), FS("value", T_STR),
                                     FE("origin", T_STR, origins), FS("locked", T_BOOL) };
                bad += check_fields("knob", k, kf, ARRAY_SIZE(kf));
                const char *key = json_string_value(json_object_get(k, "key"));
                const char *origin = json_string_value(json_object_get(k, "origin"));
                if (origin && strcmp(origin, "file") == 0) {
                        const field ff[] = { FS("file", T_STR), FN("line", T_INT, 1, BIG) };
                        bad += check_fields("knob from a file", k, ff, ARRAY_SIZE(ff));
                }
                if (key && strcmp(key, "IdleWindowSec") == 0 &&
                    (!origin || strcmp(origin, "file") != 0 ||
                     json_integer_value(json_object_get(k, "line")) != 2)) {
                        printf("  knob IdleWindowSec should come from the file, line 2\n");
                        bad++;
                }
                if (key && strcmp(key, "Profile") == 0 &&
                    (!origin || strcmp(origin, "runtime") != 0)) {
                        printf("  knob Profile should be a runtime override now\n");
                        bad++;
                }
        }
        json_decref(j);
        printf("policy show --json: %d mismatch(es)\n", bad);
        assert_int_equal(bad, 0);

        assert_int_equal(ctl(&out, &err, "policy", "set", "MaxCores=1", "MinIdlePercent=50", (char *) NULL),
                         0);
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "policy", (char *) NULL), 0);
        printf("%s", out);
        assert_true(contains(out, "KEY"));
        assert_true(contains(out, "ORIGIN"));
        /* "MaxCores  1  runtime": the value and where it came from on the knob's line */
        char *line = strstr(out, "\nMaxCores ");
        assert_non_null(line);
        char *eol = strchr(line + 1, '\n');
        assert_non_null(eol);
        *eol = 0;
        assert_true(contains(line, " 1 "));
        assert_true(contains(line, "runtime"));
        free(out);
        free(err);
        j = status_json();
        json_t *cores = json_object_get(j, "cores");
        printf("cores with MaxCores=1: %lld\n", (long long) json_integer_value(cores));
        json_decref(j);
        /* the next sample applies it */
        double t0 = now_s();
        for (;;) {
                j = status_json();
                long long c = json_integer_value(json_object_get(j, "cores"));
                json_decref(j);
                if (c <= 1)
                        break;
                if (now_s() - t0 >= test_limit_s(TRANSITION_TIMEOUT_S)) {
                        char cmd[1100];
                        snprintf(cmd, sizeof(cmd), "tail -n 25 '%s'", log_path);
                        printf("still %lld cores after %.1f s; the daemon's log ends:\n", c,
                               now_s() - t0);
                        fflush(stdout);
                        (void) !system(cmd);
                        fail_msg("MaxCores=1 not applied by the next samples");
                }
                usleep(100 * 1000);
        }

        /* the daemon validates; edgectl reports its reason and fails */
        assert_int_equal(ctl(&out, &err, "policy", "set", "MaxCores=lots", (char *) NULL), 1);
        printf("policy set MaxCores=lots: %s", err);
        assert_true(contains(err, "MaxCores"));
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "policy", "set", "NoSuchKnob=1", (char *) NULL), 1);
        assert_true(contains(err, "NoSuchKnob"));
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "policy", "reset", "MinIdlePercent", (char *) NULL), 0);
        free(out);
        free(err);
        j = ctl_json("--json", "policy", "show", (char *) NULL);
        json_array_foreach(json_object_get(j, "knobs"), i, k) {
                const char *key = json_string_value(json_object_get(k, "key"));
                if (key && strcmp(key, "MinIdlePercent") == 0)
                        assert_string_not_equal(json_string_value(json_object_get(k, "origin")),
                                                "runtime");
        }
        json_decref(j);
}

static void test_stats(void **state) {
        char *out = NULL, *err = NULL;
        time_t now = time(NULL);
        json_t *s = ctl_json("stats", "--json", (char *) NULL);
        const field fields[] = {
                FN("since", T_INT, 1e9, (double) now + 1),
                FS("seconds_in_state", T_OBJ),
                FS("seconds_paused", T_OBJ),
                FS("times_paused", T_OBJ),
                FN("transitions", T_INT, 1, BIG), /* it went running at least */
                FN("steps", T_INT, 1, BIG),
                FN("tokens", T_INT, 1, BIG),
                FN("checkpoints", T_INT, 0, BIG),
                FN("steps_abandoned", T_INT, 0, BIG),
                FN("updates_sent", T_INT, 0, BIG),
                FN("updates_acked", T_INT, 0, BIG),
        };
        /* the daemon has run for a minute at most; it ran, and (test_pause_resume) the user
         * paused it twice */
        bool paused = have_write_rights();
        const field in_state[] = { FN("running", T_NUM, 0.01, 3600),
                                   FN("paused", T_NUM, paused ? 0.01 : 0, 3600),
                                   FN("off", T_NUM, 0, 3600) };
        int bad = check_fields("stats", s, fields, ARRAY_SIZE(fields));
        bad += check_fields("stats.seconds_in_state", json_object_get(s, "seconds_in_state"),
                            in_state, ARRAY_SIZE(in_state));
        if (paused) {
                const field up[] = { FN("user-paused", T_NUM, 0.01, 3600) };
                const field tp[] = { FN("user-paused", T_INT, 2, 100) };
                bad += check_fields("stats.seconds_paused", json_object_get(s, "seconds_paused"),
                                    up, 1);
                bad += check_fields("stats.times_paused", json_object_get(s, "times_paused"), tp,
                                    1);
        }
        /* the states cover the whole span since "since" (or since the daemon started, when
         * that is later: "since" has minute resolution), the current interval included */
        json_t *sis = json_object_get(s, "seconds_in_state");
        double sum = json_number_value(json_object_get(sis, "running")) +
                     json_number_value(json_object_get(sis, "paused")) +
                     json_number_value(json_object_get(sis, "off"));
        time_t from = MAX((time_t) json_integer_value(json_object_get(s, "since")), daemon_started);
        double span = (double) (time(NULL) - from);
        if (fabs(sum - span) > 3 + 0.1 * span) {
                printf("  stats: seconds_in_state add up to %.1f s, but the daemon has run for "
                       "%.0f s "
                       "of the span\n",
                       sum, span);
                bad++;
        }
        json_decref(s);

        /* --since: a relative time, "today", a Unix time; the reply starts no earlier */
        s = ctl_json("stats", "--json", "--since", "-1h", (char *) NULL);
        json_t *since = json_object_get(s, "since");
        if (!json_is_integer(since) || json_integer_value(since) < now - 3600 - 1) {
                printf("  stats --since -1h: since %lld is before the hour asked for\n",
                       (long long) json_integer_value(since));
                bad++;
        }
        json_decref(s);
        s = ctl_json("stats", "--json", "--since", "today", (char *) NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        tm.tm_isdst = -1;
        if (json_integer_value(json_object_get(s, "since")) < mktime(&tm)) {
                printf("  stats --since today: since is before local midnight\n");
                bad++;
        }
        json_decref(s);
        char unix_time[32];
        snprintf(unix_time, sizeof(unix_time), "%lld", (long long) now - 2);
        s = ctl_json("stats", "--json", "--since", unix_time, (char *) NULL);
        since = json_object_get(s, "since");
        json_t *running = json_object_get(json_object_get(s, "seconds_in_state"), "running");
        /* two seconds of history hold at most a couple of seconds of running */
        if (!json_is_integer(since) || json_integer_value(since) < now - 3 ||
            !json_is_number(running) || json_number_value(running) > 62) {
                printf("  stats --since %s: since %lld, running %g\n", unix_time,
                       (long long) json_integer_value(since), json_number_value(running));
                bad++;
        }
        json_decref(s);

        assert_int_equal(ctl(&out, &err, "stats", "--since", "1h", (char *) NULL), 0);
        printf("%s", out);
        static const char *const keys[] = { "Since:",  "Running:",     "Paused:",
                                            "Off:",    "Transitions:", "Steps:",
                                            "Tokens:", "Checkpoints:", "Updates:" };
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
                assert_true(contains(out, keys[i]));
        free(out);
        free(err);
        printf("stats: %d mismatch(es)\n", bad);
        assert_int_equal(bad, 0);
}

static bool only_ascii(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s >= 0x80)
                        return false;
        return true;
}

static void test_watch(void **state) {
        char *out = NULL, *err = NULL;
        double t0 = now_s();

        utf8_locale = true;
        assert_int_equal(ctl(&out, &err, "watch", "--count", "3", (char *) NULL), 0);
        utf8_locale = false;
        double took = now_s() - t0;
        printf("watch --count 3 took %.2f s\n", took);
        assert_true(took >= 1.8 && took < test_limit_s(10)); /* a refresh every second */
        /* three frames, each the status and two sparklines */
        const char *p = out;
        int frames = 0;
        while ((p = strstr(p, "State:"))) {
                frames++;
                p++;
        }
        assert_int_equal(frames, 3);
        assert_true(contains(out, "Loss        "));
        assert_true(contains(out, "Throughput  "));
        bool blocks = false;
        static const char *const b[] = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };
        for (size_t i = 0; i < ARRAY_SIZE(b); i++)
                blocks = blocks || strstr(out, b[i]);
        assert_true(blocks);
        assert_null(strchr(out, '\033')); /* not a terminal: no escapes */
        free(out);
        free(err);

        /* C locale: ASCII only */
        assert_int_equal(ctl(&out, &err, "watch", "--count", "2", (char *) NULL), 0);
        assert_true(only_ascii(out));
        assert_true(strstr(out, "\nLoss        _") || strstr(out, "\nLoss        #"));
        free(out);
        free(err);

        /* --json: one status object per line */
        assert_int_equal(ctl(&out, &err, "--json", "watch", "--count", "2", (char *) NULL), 0);
        char *nl = strchr(out, '\n');
        assert_non_null(nl);
        *nl = 0;
        json_t *a = json_loads(out, 0, NULL),
               *b2 = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, NULL);
        assert_true(json_is_string(json_object_get(a, "state")));
        assert_true(json_is_string(json_object_get(b2, "state")));
        json_decref(a);
        json_decref(b2);
        free(out);
        free(err);
}

/* On a pseudo-terminal: raw keys, cursor hidden, key (q or Ctrl-C) quits cleanly, and the
 * terminal comes back as it was. */
static void watch_on_pty(const char *key, bool no_color) {
        int master;
        struct termios after;
        char buf[65536];
        size_t n = 0;
        int status;

        fflush(stdout);
        pid_t pid = forkpty(&master, NULL, NULL, NULL);
        if (pid < 0 && (errno == ENOENT || errno == ENODEV || errno == ENXIO)) {
                /* a chroot without /dev/pts, a container without ptys */
                TEST_SKIP("edgectl watch on a terminal: no pseudo-terminal here (forkpty: %m)");
        }
        assert_true(pid >= 0);
        if (pid == 0) {
                setenv("LC_ALL", "C.UTF-8", 1);
                setenv("TERM", "xterm", 1);
                if (no_color)
                        setenv("NO_COLOR", "1", 1);
                else
                        unsetenv("NO_COLOR");
                execl(edgectl_bin, "edgectl", "--socket", control, "watch", (char *) NULL);
                _exit(127);
        }
        double t0 = now_s();
        bool sent = false;
        buf[0] = 0;
        for (;;) {
                struct pollfd pfd = { .fd = master, .events = POLLIN };
                assert_true(now_s() - t0 < test_limit_s(10));
                if (poll(&pfd, 1, 100) > 0) {
                        ssize_t k = read(master, buf + n, sizeof(buf) - 1 - n);
                        if (k <= 0)
                                break; /* the child closed the terminal: it exited */
                        n += (size_t) k;
                        buf[n] = 0;
                }
                if (!sent && strstr(buf, "q to quit") && now_s() - t0 > 1.5) {
                        /* settings while it runs: no canonical mode, no echo */
                        struct termios during;
                        assert_int_equal(tcgetattr(master, &during), 0);
                        assert_false(during.c_lflag & ICANON);
                        assert_false(during.c_lflag & ECHO);
                        assert_int_equal(write(master, key, strlen(key)), (ssize_t) strlen(key));
                        sent = true;
                }
                if (sent && waitpid(pid, &status, WNOHANG) == pid) {
                        pid = 0;
                        break;
                }
        }
        if (pid > 0)
                assert_int_equal(waitpid(pid, &status, 0), pid);
        /* what it wrote just before exiting may still be in the pty */
        for (;;) {
                struct pollfd pfd = { .fd = master, .events = POLLIN };
                ssize_t k;
                if (poll(&pfd, 1, 200) <= 0 ||
                    (k = read(master, buf + n, sizeof(buf) - 1 - n)) <= 0)
                        break;
                n += (size_t) k;
        }
        assert_true(sent);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        buf[n] = 0;
        assert_true(contains(buf, "\033[?25l")); /* cursor hidden */
        assert_true(contains(buf, "\033[?25h")); /* and shown again */
        bool colored = strstr(buf, "\033[32mrunning") || strstr(buf, "\033[33mpaused");
        assert_true(colored == !no_color);
        /* the terminal's settings are back (the pty stays open on the master side) */
        if (tcgetattr(master, &after) == 0) {
                assert_true(after.c_lflag & ICANON);
                assert_true(after.c_lflag & ECHO);
        }
        close(master);
        printf("watch on a pty: quit with %s after %.1f s, terminal restored%s\n",
               *key == 'q' ? "q" : "Ctrl-C", now_s() - t0,
               no_color ? ", no colour (NO_COLOR)" : "");
}

static void test_watch_tty(void **state) {
        watch_on_pty("q", false);
        watch_on_pty("\003", true); /* Ctrl-C: SIGINT from the terminal */
}

static void test_sample(void **state) {
        char *out = NULL, *err = NULL;

        int r = ctl(&out, &err, "sample", "--tokens", "20", "--temperature", "0.5", "--seed", "7",
                    "line ", (char *) NULL);
        printf("sample -> %d: %s%s", r, out, err);
        assert_int_equal(r, 0);
        assert_true(strlen(out) >= 2); /* some text and a newline */
        free(out);
        free(err);
        json_t *j =
                ctl_json("--json", "sample", "--tokens", "16", "--temperature", "0", "the", (char *) NULL);
        json_t *text = json_object_get(j, "text");
        assert_true(json_is_string(text));
        assert_true(json_string_length(text) >= 1 && json_string_length(text) <= 16 * 4);
        json_decref(j);
}

/* One request line straight to the control socket, its reply parsed. */
static json_t *control_request(const char *line) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char buf[8192];
        size_t n = 0;

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", control);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(write(fd, line, strlen(line)), (ssize_t) strlen(line));
        while (n < sizeof(buf) - 1 && (n == 0 || buf[n - 1] != '\n')) {
                ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
                assert_true(k > 0);
                n += (size_t) k;
        }
        buf[n] = '\0';
        close(fd);
        json_t *j = json_loads(buf, 0, NULL);
        assert_true(json_is_object(j));
        return j;
}

/* --quant int8|int4: the daemon quantizes the model as it is; with training paused (the
 * model frozen) and a seed, the text repeats exactly. A bad value is refused by edgectl (exit
 * 2) and, sent raw, by the daemon (EINVAL naming the choices). */
static void test_sample_quant(void **state) {
        static const char *const kinds[] = { "int8", "int4" };
        char *out = NULL, *err = NULL;

        need_write_rights(); /* it pauses training */
        assert_int_equal(ctl(&out, &err, "pause", (char *) NULL), 0);
        free(out);
        free(err);
        assert_true(wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S) >= 0);
        for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
                json_t *a = ctl_json("--json", "sample", "--quant", kinds[k], "--tokens", "24",
                                     "--temperature", "0.8", "--seed", "7", "To be", (char *) NULL);
                json_t *b = ctl_json("--json", "sample", "--quant", kinds[k], "--tokens", "24",
                                     "--temperature", "0.8", "--seed", "7", "To be", (char *) NULL);
                const char *ta = json_string_value(json_object_get(a, "text"));
                const char *tb = json_string_value(json_object_get(b, "text"));
                printf("sample --quant %s --seed 7: \"%s\"\n", kinds[k], ta ? ta : "(null)");
                assert_non_null(ta);
                assert_non_null(tb);
                assert_int_equal(json_integer_value(json_object_get(a, "tokens")), 24);
                assert_string_equal(ta, tb);
                assert_string_equal(json_string_value(json_object_get(a, "quant")), kinds[k]);
                json_decref(a);
                json_decref(b);
        }
        json_t *f =
                ctl_json("--json", "sample", "--tokens", "4", "--seed", "7", "x", (char *) NULL);
        assert_string_equal(json_string_value(json_object_get(f, "quant")), "fp32");
        json_decref(f);

        int r = ctl(&out, &err, "sample", "--quant", "int3", "x", (char *) NULL);
        printf("sample --quant int3 -> %d: %s", r, err);
        assert_int_equal(r, 2);
        assert_true(contains(err, "--quant: 'int3' is not int8 or int4"));
        assert_string_equal(out, "");
        free(out);
        free(err);
        json_t *e = control_request("{\"cmd\":\"sample\",\"prompt\":\"x\",\"quant\":\"int3\"}\n");
        assert_false(json_is_true(json_object_get(e, "ok")));
        assert_string_equal(json_string_value(json_object_get(e, "error")), "EINVAL");
        assert_true(contains(json_string_value(json_object_get(e, "message")), "int8"));
        json_decref(e);
        e = control_request("{\"cmd\":\"sample\",\"prompt\":\"x\",\"quant\":8}\n");
        assert_string_equal(json_string_value(json_object_get(e, "error")), "EINVAL");
        json_decref(e);

        assert_int_equal(ctl(&out, &err, "resume", (char *) NULL), 0);
        free(out);
        free(err);
        assert_true(wait_for("running", NULL, 15) >= 0);
}

static const field checkpoint_fields[] = {
        FS("path", T_STR),
        FN("step", T_INT, 0, BIG),
        FN("bytes", T_INT, 1, BIG),
        FN("mtime", T_INT, 1e9, 1e10),
};

static void test_checkpoint(void **state) {
        _cleanup_free_ char *export = test_tmp_path("exported.safetensors");
        char *out = NULL, *err = NULL;
        struct stat st;
        int bad = 0;

        need_write_rights();

        json_t *j = ctl_json("--json", "checkpoint", "save", (char *) NULL);
        json_t *cp = json_object_get(j, "checkpoint");
        bad += check_fields("checkpoint-save.checkpoint", cp, checkpoint_fields,
                            ARRAY_SIZE(checkpoint_fields));
        const char *path = json_string_value(json_object_get(cp, "path"));
        assert_non_null(path);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0640); /* group edged may read it */
        json_decref(j);

        j = ctl_json("checkpoint", "list", "--json", (char *) NULL);
        json_t *list = json_object_get(j, "checkpoints"), *c;
        size_t i;
        assert_true(json_array_size(list) >= 1);
        long long prev = INT64_MAX;
        json_array_foreach(list, i, c) {
                bad += check_fields("checkpoint", c, checkpoint_fields,
                                    ARRAY_SIZE(checkpoint_fields));
                long long m = json_integer_value(json_object_get(c, "mtime"));
                if (m > prev) {
                        printf("  checkpoint-list: not newest first\n");
                        bad++;
                }
                prev = m;
        }
        json_decref(j);

        assert_int_equal(ctl(&out, &err, "checkpoint", (char *) NULL), 0);
        printf("%s", out);
        assert_true(contains(out, "PATH"));
        assert_true(contains(out, "checkpoint.safetensors"));
        free(out);
        free(err);

        /* export: a complete safetensors file, atomically: nothing else left behind */
        assert_int_equal(ctl(&out, &err, "checkpoint", "export", export, (char *) NULL), 0);
        printf("%s", out);
        assert_true(contains(out, export));
        free(out);
        free(err);
        assert_int_equal(stat(export, &st), 0);
        FILE *f = fopen(export, "re");
        uint64_t header = 0;
        unsigned char le[8];
        assert_non_null(f);
        assert_int_equal(fread(le, 1, 8, f), 8);
        for (int b = 7; b >= 0; b--)
                header = header << 8 | le[b];
        assert_true(header > 2 && 8 + header < (uint64_t) st.st_size);
        assert_int_equal(fgetc(f), '{');
        fclose(f);
        j = ctl_json("--json", "checkpoint", "list", (char *) NULL);
        json_array_foreach(json_object_get(j, "checkpoints"), i, c) {
                if (i == 0)
                        assert_int_equal(json_integer_value(json_object_get(c, "bytes")),
                                         st.st_size);
        }
        json_decref(j);
        assert_int_equal(ctl(&out, &err, "checkpoint", "export", "/nonexistent-dir/x", (char *) NULL), 1);
        assert_true(contains(err, "/nonexistent-dir/x"));
        free(out);
        free(err);
        printf("checkpoint: %d mismatch(es)\n", bad);
        assert_int_equal(bad, 0);
}

static void test_permission(void **state) {
        char *out = NULL, *err = NULL;
        struct passwd *pw;

        if (geteuid() != 0) {
                TEST_SKIP("not root: cannot run edgectl as another user for the exit-4 case");
        }
        pw = getpwnam("nobody");
        if (!pw) {
                assert_int_equal(system("useradd --system --no-create-home edged-test-nobody"), 0);
                pw = getpwnam("edged-test-nobody");
        }
        assert_non_null(pw);
        uid_t uid = pw->pw_uid;
        gid_t gid = pw->pw_gid;
        struct group *gr = getgrnam("edged");
        for (char **m = gr ? gr->gr_mem : NULL; m && *m; m++)
                assert_string_not_equal(*m, pw->pw_name); /* must not be a member */

        /* reading is for everyone */
        assert_int_equal(ctl_as(uid, gid, &out, &err, "status", (char *) NULL), 0);
        free(out);
        free(err);
        /* a socket below a directory the caller may not enter: exit 4 as well */
        _cleanup_free_ char *private = test_tmp_path("private");
        _cleanup_free_ char *hidden = test_tmp_path("private/control");
        assert_int_equal(mkdir(private, 0700), 0);
        int r = ctl_as(uid, gid, &out, &err, "--socket", hidden, "status", (char *) NULL);
        printf("as %s, socket in a 0700 directory: %d: %s", pw->pw_name, r, err);
        assert_int_equal(r, 4);
        assert_true(contains(err, hidden));
        assert_true(contains(err, "'edged'"));
        free(out);
        free(err);

        static const char *const writes[][3] = { { "pause", NULL },
                                                 { "profile", "performance" },
                                                 { "policy", "reset" } };
        for (size_t i = 0; i < ARRAY_SIZE(writes); i++) {
                r = ctl_as(uid, gid, &out, &err, writes[i][0], writes[i][1], writes[i][2], (char *) NULL);
                printf("as %s: edgectl %s -> %d: %s", pw->pw_name, writes[i][0], r, err);
                assert_int_equal(r, 4);
                assert_true(contains(err, "group 'edged'"));
                free(out);
                free(err);
        }
}

static void test_restart_persists(void **state) {
        char *out = NULL, *err = NULL;
        json_t *j, *k;
        size_t i;

        need_write_rights();

        /* from test_profile_policy: profile quiet and MaxCores=1 as runtime overrides */
        assert_int_equal(ctl(&out, &err, "pause", (char *) NULL), 0);
        free(out);
        free(err);
        assert_true(wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S) >= 0);
        stop_daemon();
        printf("daemon stopped; edgectl now says:\n");
        assert_int_equal(ctl(&out, &err, "status", (char *) NULL), 3);
        printf("%s", err);
        free(out);
        free(err);
        start_daemon();

        j = ctl_json("profile", "--json", (char *) NULL);
        assert_string_equal(json_string_value(json_object_get(j, "profile")), "quiet");
        json_decref(j);
        j = ctl_json("--json", "policy", (char *) NULL);
        bool found = false;
        json_array_foreach(json_object_get(j, "knobs"), i, k) {
                const char *key = json_string_value(json_object_get(k, "key"));
                if (key && strcmp(key, "MaxCores") == 0) {
                        found = true;
                        assert_string_equal(json_string_value(json_object_get(k, "value")), "1");
                        assert_string_equal(json_string_value(json_object_get(k, "origin")),
                                            "runtime");
                }
        }
        json_decref(j);
        if (!found) { /* a daemon without "knobs": its listing must still say so */
                assert_int_equal(ctl(&out, &err, "policy", (char *) NULL), 0);
                assert_true(contains(out, "MaxCores = 1"));
                free(out);
                free(err);
        }
        assert_true(found);
        double t = wait_for("paused", "user-paused", TRANSITION_TIMEOUT_S);
        printf("after the restart: paused (user-paused) after %.2f s\n", t);
        assert_true(t >= 0);
        j = status_json();
        assert_string_equal(json_string_value(json_object_get(j, "profile")), "quiet");
        json_decref(j);

        /* reset everything; resume */
        assert_int_equal(ctl(&out, &err, "policy", "reset", (char *) NULL), 0);
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "profile", (char *) NULL), 0);
        assert_string_equal(out, "balanced\n");
        free(out);
        free(err);
        assert_int_equal(ctl(&out, &err, "resume", (char *) NULL), 0);
        free(out);
        free(err);
        t = wait_for("running", NULL, 15);
        printf("reset and resumed: running after %.2f s\n", t);
        assert_true(t >= 0);
}

static int group_setup(void **state) {
        if (setup(state) < 0)
                return -1;
        start_daemon();
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_usage),          cmocka_unit_test(test_not_running),
                cmocka_unit_test(test_status),         cmocka_unit_test(test_pause_resume),
                cmocka_unit_test(test_profile_policy), cmocka_unit_test(test_stats),
                cmocka_unit_test(test_watch),          cmocka_unit_test(test_watch_tty),
                cmocka_unit_test(test_sample),         cmocka_unit_test(test_sample_quant),
                cmocka_unit_test(test_checkpoint),     cmocka_unit_test(test_permission),
                cmocka_unit_test(test_restart_persists),
        };
        test_cpu_group_enter("edgectl");
        return test_run_group("test-edgectl", tests, group_setup, teardown);
}
