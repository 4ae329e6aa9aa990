/* SPDX-License-Identifier: MIT */
/* End to end on loopback: the real edge-aggregator and three real edged daemons, each on its
 * own fake machine with its own slice of the licence texts Debian ships. The shared model's
 * versions must advance and its server-side validation loss fall by a stated margin; one
 * device is killed with SIGKILL mid-run and restarted; at the end every update a device saw
 * acknowledged is in the aggregator's log exactly once, merged into at most one version, and
 * the versions' update counts add up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <errno.h>
#include <libgen.h>
#include <sqlite3.h>

#include "lr-schedule.h"
#include "macros.h"
#include "test-files.h"
#include "test-run.h"
#include "test-cpu-group.h"
#include "daemon-harness.h"

#define N_DEVICES 3
#define TARGET_VERSION 8
#define LOSS_MARGIN 1.0 /* nats: version TARGET_VERSION vs version 0 on the held-out text */
#define TIMEOUT_S 150.0 /* a limit: scaled by test_limit_s() */
#define LICENSES "/usr/share/common-licenses"
/* The fleet's learning-rate schedule the run sets: LR 0.003, no warmup (the first version's
 * round would learn next to nothing and the loss margin is asked of 8 versions), cosine over
 * the first 1M merged tokens. Devices must train each round at the rate of its base. */
#define PEAK_LR 0.003f
#define HORIZON_TOKENS 1000000
#define MAX_LR_SAMPLES 256
#define VALIDATION LICENSES "/GPL-3"

static const char *const fixtures[N_DEVICES] = { "laptop-ac", "desktop", "raspberry-pi" };
static char agg_bin[1024], store[512];
static pid_t agg_pid, dev_pid[N_DEVICES];
static int port;
static char token[128], edgectl_bin[1024];

/* (base version, lr) pairs from a device's status during the run */
static struct {
        long long base;
        double lr, local_steps;
} lr_samples[MAX_LR_SAMPLES];
static size_t n_lr_samples;

static int run(const char *const *argv, char *out, size_t out_size) {
        int fds[2], status;
        pid_t pid;

        if (pipe(fds) < 0)
                return -1;
        pid = fork();
        if (pid == 0) {
                dup2(fds[1], STDOUT_FILENO);
                close(fds[0]);
                execv(argv[0], (char *const *) argv);
                _exit(127);
        }
        close(fds[1]);
        /* drain everything (a closed pipe would kill the child), keep what fits */
        char sink[4096];
        ssize_t n = 0, k;
        while ((k = read(fds[0], sink, sizeof(sink))) > 0)
                if (out && n < (ssize_t) out_size - 1) {
                        size_t take = MIN((size_t) k, out_size - 1 - (size_t) n);
                        memcpy(out + n, sink, take);
                        n += (ssize_t) take;
                }
        if (out)
                out[n] = 0;
        close(fds[0]);
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* serve on port 0; the port is read from "... on port N" on its stdout, which goes to a file
 * (a pipe closed after that line would kill it at its next line) */
static pid_t start_aggregator(void) {
        _cleanup_free_ char *out = test_tmp_path("aggregator.out");
        char buf[512] = "";
        const char *p = NULL;
        pid_t pid = fork();

        if (pid == 0) {
                if (!freopen(out, "w", stdout))
                        _exit(126);
                execl(agg_bin, "edge-aggregator", "--store", store, "serve", "--listen",
                      "127.0.0.1:0", (char *) NULL);
                _exit(127);
        }
        for (int tries = 0; tries < 100 && !p; tries++) {
                FILE *f = fopen(out, "re");
                size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
                buf[n] = 0;
                if (f)
                        fclose(f);
                p = strstr(buf, "on port ");
                if (!p)
                        usleep(50 * 1000);
        }
        assert_non_null(p);
        port = atoi(p + 8);
        assert_true(port > 0);
        return pid;
}

static char *dev_path(int i, const char *what) {
        char *p;
        assert_true(asprintf(&p, "%s/dev%d-%s", test_tmpdir, i, what) > 0);
        return p;
}

/* The configuration names the server's port, known only once it runs. */
static pid_t start_device(int i) {
        _cleanup_free_ char *root = dev_path(i, "root"), *conf = dev_path(i, "edged.conf");
        _cleanup_free_ char *state = dev_path(i, "state"), *ctl = dev_path(i, "control");
        _cleanup_free_ char *log = dev_path(i, "log");
        FILE *f = fopen(conf, "we");

        assert_non_null(f);
        fprintf(f,
                "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\nMaxCores=1\n"
                "RequireACPower=no\nMinBatteryPercent=0\n"
                "[Daemon]\nDataDirectory=/data\n"
                "[Federation]\nServer=http://127.0.0.1:%d\nEnrollToken=%s\n",
                port, token);
        assert_int_equal(fclose(f), 0);
        return harness_start(root, conf, state, ctl, log, false);
}

static double version_loss(sqlite3 *db, long version) {
        sqlite3_stmt *st;
        double loss = NAN;
        assert_int_equal(sqlite3_prepare_v2(db, "SELECT val_loss FROM versions WHERE version = ?",
                                            -1, &st, NULL),
                         SQLITE_OK);
        sqlite3_bind_int64(st, 1, version);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
                loss = sqlite3_column_double(st, 0);
        sqlite3_finalize(st);
        return loss;
}

static long long query_int(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st;
        long long v = -1;
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return v;
}

static sqlite3 *open_db(void) {
        char path[600];
        sqlite3 *db = NULL;
        snprintf(path, sizeof(path), "%s/aggregator.db", store);
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        return db;
}

static long latest_version(void) {
        sqlite3 *db = open_db();
        long v = (long) query_int(db, "SELECT MAX(version) FROM versions");
        sqlite3_close(db);
        return v;
}

/* Update ids a device's log says were acknowledged ("accepted as #N" or "was already there
 * as #N"), appended to ids. */
static void acked_ids(int i, long *ids, size_t *n, size_t max) {
        _cleanup_free_ char *log = dev_path(i, "log");
        FILE *f = fopen(log, "re");
        char line[1024];

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                const char *p = strstr(line, " as #");
                if (p && strstr(line, "update from version") && *n < max)
                        ids[(*n)++] = strtol(p + 5, NULL, 10);
        }
        fclose(f);
}

/* Keeps device i's base version, learning rate and step budget when its status has a rate
 * (once per base version). */
static void sample_lr(int i) {
        _cleanup_free_ char *ctl = dev_path(i, "control");
        json_t *s = harness_request(ctl, "{\"cmd\":\"status\"}\n");
        json_t *a = json_object_get(s, "aggregator"), *lr = json_object_get(a, "lr");
        long long base = json_integer_value(json_object_get(a, "base_version"));

        if (json_is_number(lr) && n_lr_samples < MAX_LR_SAMPLES &&
            (n_lr_samples == 0 || lr_samples[n_lr_samples - 1].base != base)) {
                lr_samples[n_lr_samples].base = base;
                lr_samples[n_lr_samples].lr = json_number_value(lr);
                lr_samples[n_lr_samples].local_steps =
                        json_number_value(json_object_get(a, "local_steps"));
                n_lr_samples++;
        }
        json_decref(s);
}

/* Every rate a device said it trains at is the schedule's at the tokens merged into its
 * base version, counted from the update log (and the version row's count agrees). */
static void check_lr_samples(sqlite3 *db) {
        const agg_lr_schedule sched = { .kind = AGG_LR_COSINE, .lr = PEAK_LR,
                                        .warmup_tokens = 0, .horizon_tokens = HORIZON_TOKENS };
        size_t merged_bases = 0;

        for (size_t i = 0; i < n_lr_samples; i++) {
                char sql[256];
                long long base = lr_samples[i].base;
                snprintf(sql, sizeof(sql), "SELECT COALESCE(SUM(tokens), 0) FROM updates WHERE "
                                           "merged_into IS NOT NULL AND merged_into <= %lld",
                         base);
                long long tokens = query_int(db, sql);
                snprintf(sql, sizeof(sql), "SELECT merged_tokens FROM versions WHERE version = %lld",
                         base);
                assert_int_equal(query_int(db, sql), tokens);
                /* one buffer ahead: K 3, LocalSteps 10, Batch 4 (the default), T 128 */
                double want = agg_lr_at(&sched, (uint64_t) tokens + 3 * 10 * 4 * 128);
                printf("device 0 on version %lld: lr %.7g, %.0f steps a round; the schedule at "
                       "%lld merged tokens + one buffer: %.7g\n",
                       base, lr_samples[i].lr, lr_samples[i].local_steps, tokens, want);
                if (!(fabs(lr_samples[i].lr - want) <= 1e-6 * want))
                        fail_msg("device 0 trains version %lld at lr %.9g, the task served %.9g",
                                 base, lr_samples[i].lr, want);
                assert_true(lr_samples[i].local_steps == 10);
                merged_bases += tokens > 0;
        }
        /* seen on versions that had merged tokens, where the rate is no longer the peak */
        assert_true(merged_bases >= 2);
}

/* edgectl shows the rate: in the Aggregator line and in --json. */
static void check_edgectl(int i) {
        _cleanup_free_ char *ctl = dev_path(i, "control");
        char out[8192];
        const char *text[] = { edgectl_bin, "--socket", ctl, "status", NULL };
        const char *json[] = { edgectl_bin, "--socket", ctl, "--json", "status", NULL };

        assert_int_equal(run(text, out, sizeof(out)), 0);
        const char *line = strstr(out, "Aggregator:");
        assert_non_null(line);
        const char *lr = strstr(line, ", lr ");
        assert_true(lr && lr < line + strcspn(line, "\n"));
        assert_non_null(strstr(line, " steps a round"));
        assert_int_equal(run(json, out, sizeof(out)), 0);
        json_t *j = json_loads(out, 0, NULL);
        assert_non_null(j);
        assert_true(json_is_number(json_object_get(json_object_get(j, "aggregator"), "lr")));
        json_decref(j);
}

static void test_federated_run(void **state) {
        sqlite3 *db;
        double t0 = harness_now();
        long v = 0, ids[4096];
        size_t n_ids = 0;
        bool killed = false;

        agg_pid = start_aggregator();
        printf("aggregator on 127.0.0.1:%d\n", port);
        for (int i = 0; i < N_DEVICES; i++)
                dev_pid[i] = start_device(i);

        /* versions advance; one device dies mid-run and comes back */
        while ((v = latest_version()) < TARGET_VERSION && harness_now() - t0 < test_limit_s(TIMEOUT_S)) {
                if (!killed && v >= 2) {
                        harness_stop(dev_pid[1], SIGKILL);
                        printf("version %ld: device 1 killed with SIGKILL, restarting it\n", v);
                        dev_pid[1] = start_device(1);
                        killed = true;
                }
                sample_lr(0);
                usleep(500 * 1000);
        }
        printf("version %ld after %.0f s\n", v, harness_now() - t0);
        assert_true(v >= TARGET_VERSION);
        assert_true(killed);
        check_edgectl(0);

        /* the devices stop first (SIGTERM: checkpoint and exit 0), then the server */
        for (int i = 0; i < N_DEVICES; i++) {
                int status = harness_stop(dev_pid[i], SIGTERM);
                dev_pid[i] = 0;
                assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        harness_stop(agg_pid, SIGTERM);
        agg_pid = 0;

        db = open_db();
        double l0 = version_loss(db, 0), lt = version_loss(db, TARGET_VERSION);
        printf("held-out loss: version 0 %.3f, version %d %.3f (margin asked: %.1f)\n", l0,
               TARGET_VERSION, lt, LOSS_MARGIN);
        assert_true(isfinite(l0) && isfinite(lt));
        assert_true(lt < l0 - LOSS_MARGIN);

        /* nothing lost, nothing counted twice */
        for (int i = 0; i < N_DEVICES; i++)
                acked_ids(i, ids, &n_ids, ARRAY_SIZE(ids));
        long long rows = query_int(db, "SELECT COUNT(*) FROM updates");
        long long merged = query_int(db, "SELECT COUNT(*) FROM updates WHERE merged_into IS NOT NULL");
        long long counted = query_int(db, "SELECT COALESCE(SUM(n_updates), 0) FROM versions");
        long long dup_keys = query_int(db, "SELECT COUNT(*) FROM (SELECT device, idem_key FROM "
                                           "updates GROUP BY device, idem_key HAVING COUNT(*) > 1)");
        long long bad_merge = query_int(db, "SELECT COUNT(*) FROM updates u WHERE merged_into IS "
                                            "NOT NULL AND NOT EXISTS (SELECT 1 FROM versions v "
                                            "WHERE v.version = u.merged_into)");
        printf("acknowledged to devices: %zu; stored: %lld; merged: %lld; counted in versions: "
               "%lld\n",
               n_ids, rows, merged, counted);
        assert_true(n_ids > 0);
        assert_int_equal(dup_keys, 0);
        assert_int_equal(bad_merge, 0);
        assert_int_equal(merged, counted);
        for (size_t i = 0; i < n_ids; i++) {
                char sql[128];
                snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM updates WHERE id = %ld", ids[i]);
                if (query_int(db, sql) != 1)
                        fail_msg("acknowledged update #%ld is not in the log exactly once", ids[i]);
        }
        assert_int_equal(query_int(db, "SELECT MAX(version) - MIN(version) + 1 - COUNT(*) FROM versions"), 0);
        check_lr_samples(db);
        sqlite3_close(db);
}

static int setup(void **state) {
        const char *edged = getenv("EDGED_BIN"), *agg = getenv("EDGE_AGGREGATOR_BIN");
        const char *fx = getenv("EDGED_FIXTURES");
        char buf[1024];
        struct dirent *de;
        DIR *d;
        int n = 0;

        if (test_tmpdir_create("test-federation") < 0)
                return -1;
        if (agg)
                snprintf(agg_bin, sizeof(agg_bin), "%s", agg);
        else {
                snprintf(buf, sizeof(buf), "%s", edged ? edged : "build/edged");
                snprintf(agg_bin, sizeof(agg_bin), "%s/edge-aggregator", dirname(buf));
        }
        snprintf(store, sizeof(store), "%s/aggregator", test_tmpdir);
        if (getenv("EDGECTL_BIN"))
                snprintf(edgectl_bin, sizeof(edgectl_bin), "%s", getenv("EDGECTL_BIN"));
        else {
                snprintf(buf, sizeof(buf), "%s", agg_bin);
                snprintf(edgectl_bin, sizeof(edgectl_bin), "%s/edgectl", dirname(buf));
        }

        const char *init[] = { agg_bin, "--store", store, "init", "--config", "tiny",
                               "--local-steps", "10", "--lr", "0.003", "--buffer", "3",
                               "--validation", VALIDATION, NULL };
        const char *tok[] = { agg_bin, "--store", store, "token", "create", "--uses", "10", NULL };
        char horizon[64];
        snprintf(horizon, sizeof(horizon), "LRHorizonTokens=%d", HORIZON_TOKENS);
        const char *sched[] = { agg_bin, "--store", store, "set", "LRSchedule=cosine",
                                "LRWarmupTokens=0", horizon, NULL };
        if (run(init, NULL, 0) != 0 || run(sched, NULL, 0) != 0 ||
            run(tok, token, sizeof(token)) != 0)
                return -1;
        token[strcspn(token, "\n")] = 0;

        for (int i = 0; i < N_DEVICES; i++) {
                snprintf(buf, sizeof(buf), "cp -a '%s/sysfs/%s' '%s/dev%d-root' && mkdir '%s/dev%d-root/data'",
                         fx ? fx : "tests/fixtures", fixtures[i], test_tmpdir, i, test_tmpdir, i);
                if (system(buf) != 0)
                        return -1;
        }
        /* every licence text but the held-out one, dealt round-robin to the devices */
        d = opendir(LICENSES);
        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && strcmp(de->d_name, "GPL-3") != 0) {
                        snprintf(buf, sizeof(buf), "cp '%s/%s' '%s/dev%d-root/data/'", LICENSES,
                                 de->d_name, test_tmpdir, n++ % N_DEVICES);
                        if (system(buf) != 0)
                                break;
                }
        closedir(d);
        return 0;
}

static int teardown(void **state) {
        for (int i = 0; i < N_DEVICES; i++)
                harness_stop(dev_pid[i], SIGKILL);
        harness_stop(agg_pid, SIGKILL);
        return test_tmpdir_remove(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_federated_run),
        };
        if (access(VALIDATION, R_OK) != 0) {
                printf("skipped: %s is missing (Debian's base-files ships it): nothing to hold out\n",
                       VALIDATION);
                return 77;
        }
        test_cpu_group_enter("federation");
        return test_run_group("test-federation", tests, setup, teardown);
}
