/* SPDX-License-Identifier: MIT */
/* edge-aggregator on a full disk: the store is a 16 MiB tmpfs. Updates are acknowledged, then
 * a filler file takes every free byte. From then on every write the server cannot make is
 * answered 507 Insufficient Storage with {"error": "disk-full"} and Retry-After (telemetry,
 * enrolment, updates), counted in /metrics; reads still work (a resend of an acknowledged
 * key is "duplicate"); a merge fails with -ENOSPC and the merge worker keeps the buffer
 * pending instead of dropping it. Every update acknowledged before is in the store exactly
 * once, and nothing refused is. When the filler goes, uploads are accepted again and the
 * worker, retrying on its own, publishes the next version from exactly the kept buffer.
 * Needs root (mount): exits 77 otherwise. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <curl/curl.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#include "blas.h"
#include "blobs.h"
#include "macros.h"
#include "merger.h"
#include "model.h"
#include "server.h"
#include "store.h"
#include "update-codec.h"
#include "test-files.h"
#include "test-http.h"

#define TMPFS_OPTIONS "size=16m"
#define BUFFER_K 3
#define MAX_KEYS 64
#define FULL_TRIES 16         /* uploads on the full disk, at most */
#define REFUSED_IN_A_ROW 3    /* ... until this many 507s in a row */
#define PUBLISH_TIMEOUT_S 40. /* the worker retries at its 10 s flush tick */

static char store_dir[128], filler[160], base_url[64], auth[160], spare_token[AGG_ID_HEX];
static bool mounted;
static agg_store *store;
static agg_server *server;
static agg_merger *merger;
static model_layout lay;

/* What the server said about each key sent. */
static struct {
        char key[32];
        int64_t id;
        bool acked;
} keys[MAX_KEYS];
static size_t n_keys;

/* ---- a tiny HTTP client ---- */

/* GET when body is NULL; hdrs NULL-terminated. */
static reply http(const char *path, const void *body, size_t size, const char *const *hdrs) {
        return test_http_request(base_url, path, body, size, hdrs);
}

static bool has_error(const reply *r, const char *reason) {
        char want[96];
        snprintf(want, sizeof(want), "\"error\":\"%s\"", reason);
        return r->body && strstr(r->body, want) && strstr(r->body, "\"message\":\"");
}

/* The chosen behaviour on a full disk: 507, reason disk-full, and a Retry-After hint. */
static void expect_disk_full(reply r, const char *what) {
        if (r.status != 507 || !has_error(&r, "disk-full") || atoi(r.retry_after) <= 0)
                fail_msg("%s on a full disk: expected 507 disk-full with Retry-After, got %ld "
                         "(Retry-After '%s') %s",
                         what, r.status, r.retry_after, r.body ? r.body : "");
        free(r.body);
}

static int64_t metric(const char *line_prefix) {
        reply r = http("/metrics", NULL, 0, NULL);
        assert_int_equal(r.status, 200);
        char *p = strstr(r.body, line_prefix);
        int64_t v = p ? strtoll(p + strlen(line_prefix), NULL, 10) : 0;
        free(r.body);
        return v;
}

/* ---- updates ---- */

static void *make_body(int which, size_t *ret_size) {
        _cleanup_free_ float *delta = malloc(lay.n_params * sizeof(float));
        void *body;

        assert_non_null(delta);
        for (size_t i = 0; i < lay.n_params; i++)
                delta[i] = (float) ((int) ((i * 2654435761u + (unsigned) which * 97u) % 2001u) -
                                    1000) *
                           1e-6f;
        /* int8: small enough that the update log stays below SQLite's WAL checkpoint size */
        assert_int_equal(upd_encode(UPD_INT8, 0, &lay, delta, 0.01f, NULL, &body, ret_size, NULL),
                         0);
        return body;
}

static reply send_update(const char *key, int which) {
        _cleanup_free_ void *body = NULL;
        char k[96];
        size_t size;

        body = make_body(which, &size);
        snprintf(k, sizeof(k), "Idempotency-Key: %s", key);
        const char *h[] = { auth,
                            k,
                            "X-Edged-Base-Version: 0",
                            "X-Edged-Tokens: 100",
                            "X-Edged-Steps: 10",
                            "Content-Type: application/octet-stream",
                            NULL };
        return http("/v1/update", body, size, h);
}

/* Sends a new key; records whether it was acknowledged (and its id). Returns the status. */
static long upload(const char *prefix) {
        assert_true(n_keys < MAX_KEYS);
        size_t i = n_keys++;
        snprintf(keys[i].key, sizeof(keys[i].key), "%s-%zu", prefix, i);
        reply r = send_update(keys[i].key, (int) i);
        long status = r.status;
        if (status == 200) {
                const char *p = r.body ? strstr(r.body, "\"update_id\":") : NULL;
                assert_non_null(strstr(r.body, "\"status\":\"accepted\""));
                assert_non_null(p);
                keys[i].id = strtoll(p + 12, NULL, 10);
                keys[i].acked = true;
                free(r.body);
        } else
                expect_disk_full(r, "an update");
        return status;
}

static size_t count_acked(void) {
        size_t n = 0;
        for (size_t i = 0; i < n_keys; i++)
                n += keys[i].acked;
        return n;
}

/* ---- the full disk ---- */

/* Writes blocks of size block until the tmpfs refuses one. */
static void fill_with(int fd, size_t block) {
        _cleanup_free_ char *buf = calloc(1, block);
        assert_non_null(buf);
        for (size_t i = 0; i < (64u << 20) / block; i++) {
                ssize_t k = write(fd, buf, block);
                if (k < 0) {
                        assert_int_equal(errno, ENOSPC);
                        return;
                }
        }
        fail_msg("a 16 MiB tmpfs took 64 MiB");
}

static void fill_disk(void) {
        int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        fill_with(fd, 1 << 16);
        fill_with(fd, 4096); /* the last pages too */
        fill_with(fd, 1);
        assert_int_equal(close(fd), 0);
}

/* Files in blobs/, temporary ones included: the versions' blobs and nothing else. */
static size_t count_blob_files(void) {
        char path[256];
        size_t n = 0;
        struct dirent *de;

        snprintf(path, sizeof(path), "%s/blobs", store_dir);
        DIR *d = opendir(path);
        assert_non_null(d);
        while ((de = readdir(d)))
                n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
        closedir(d);
        return n;
}

/* Every acknowledged key is in the log exactly once, unmerged or merged, never dropped; no
 * refused key is. Read through a separate connection, as a restarted server would. */
static void assert_log_matches(void) {
        char db[192];
        sqlite3 *h;

        snprintf(db, sizeof(db), "%s/" AGG_DB_NAME, store_dir);
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        for (size_t i = 0; i < n_keys; i++) {
                sqlite3_stmt *q;
                assert_int_equal(sqlite3_prepare_v2(h,
                                                    "SELECT count(*), min(id), max(dropped), "
                                                    "min(merged_into IS NOT NULL OR body IS NOT "
                                                    "NULL) FROM updates WHERE idem_key=?",
                                                    -1, &q, NULL),
                                 SQLITE_OK);
                sqlite3_bind_text(q, 1, keys[i].key, -1, SQLITE_STATIC);
                assert_int_equal(sqlite3_step(q), SQLITE_ROW);
                int64_t n = sqlite3_column_int64(q, 0);
                if (n != (keys[i].acked ? 1 : 0))
                        fail_msg("key %s (%s) is stored %lld times", keys[i].key,
                                 keys[i].acked ? "acknowledged" : "refused", (long long) n);
                if (keys[i].acked) {
                        assert_int_equal(sqlite3_column_int64(q, 1), keys[i].id);
                        assert_int_equal(sqlite3_column_int64(q, 2), 0);
                        assert_int_equal(sqlite3_column_int64(q, 3), 1);
                }
                sqlite3_finalize(q);
        }
        sqlite3_close(h);
}

/* logged = acknowledged, and accepted counted once each (the counter is written with the
 * row); merged are whole buffers of K. */
static void assert_totals(uint64_t version) {
        int64_t logged, merged, dropped;

        assert_int_equal(agg_store_update_totals(store, &logged, &merged, &dropped), 0);
        assert_int_equal(logged, (int64_t) count_acked());
        assert_int_equal(dropped, 0);
        assert_int_equal(merged, (int64_t) version * BUFFER_K);
        assert_int_equal(agg_store_count_pending(store), logged - merged);
        assert_int_equal(metric("edge_updates_total{result=\"accepted\"} "), logged);
}

static uint64_t current_version(void) {
        agg_version v;
        assert_int_equal(agg_store_current_version(store, &v), 0);
        return v.version;
}

/* ---- the test ---- */

static void enroll(void) {
        char tok[AGG_ID_HEX], body[128], id[40] = "", secret[80] = "";

        assert_int_equal(agg_store_token_create(store, 0, 0, tok), 0);
        assert_int_equal(agg_store_token_create(store, 0, 0, spare_token), 0);
        snprintf(body, sizeof(body), "{\"token\": \"%s\", \"name\": \"full\"}", tok);
        reply r = http("/v1/enroll", body, strlen(body), NULL);
        assert_int_equal(r.status, 201);
        sscanf(strstr(r.body, "\"device_id\":\"") + 13, "%32[0-9a-f]", id);
        sscanf(strstr(r.body, "\"secret\":\"") + 10, "%64[0-9a-f]", secret);
        assert_int_equal(strlen(id), 32);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s:%s", id, secret);
        free(r.body);
}

/* Enrolment and telemetry need a write too: 507 as well. Returns how many were refused. */
static int64_t expect_control_writes_refused(void) {
        const char *h[] = { auth, "Content-Type: application/json", NULL };
        char body[128];

        expect_disk_full(http("/v1/telemetry", "{\"pauses\":{}}", 13, h), "telemetry");
        snprintf(body, sizeof(body), "{\"token\": \"%s\"}", spare_token);
        expect_disk_full(http("/v1/enroll", body, strlen(body), NULL), "enrolment");
        /* an unknown token is still 401: refused before anything is written */
        snprintf(body, sizeof(body), "{\"token\": \"0123456789abcdef0123456789abcdef\"}");
        reply r = http("/v1/enroll", body, strlen(body), NULL);
        assert_int_equal(r.status, 401);
        free(r.body);
        return 2;
}

/* Uploads until REFUSED_IN_A_ROW 507s in a row: SQLite may still fit a transaction into
 * WAL pages it holds already, and such an update is acknowledged like any other. */
static size_t uploads_on_full_disk(void) {
        size_t refused = 0, in_a_row = 0;

        for (int t = 0; t < FULL_TRIES && in_a_row < REFUSED_IN_A_ROW; t++) {
                if (upload("full") == 507) {
                        refused++;
                        in_a_row++;
                } else
                        in_a_row = 0;
        }
        assert_int_equal(in_a_row, REFUSED_IN_A_ROW);
        return refused;
}

static void expect_merge_kept(size_t blobs_before) {
        int64_t pending = agg_store_count_pending(store);
        bool merged = true;

        assert_int_equal(agg_merge_once(store, agg_server_metrics(server), &merged), -ENOSPC);
        assert_false(merged);
        assert_int_equal(current_version(), 0);
        assert_int_equal(agg_store_count_pending(store), pending);
        assert_int_equal(count_blob_files(), blobs_before);
}

static bool wait_for(bool (*cond)(void), double timeout_s) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
                if (cond())
                        return true;
                usleep(100 * 1000);
                clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((double) (t.tv_sec - t0.tv_sec) + (double) (t.tv_nsec - t0.tv_nsec) * 1e-9 <
                 timeout_s);
        return false;
}

static bool worker_saw_full_disk(void) {
        return metric("edge_merge_failures_total{reason=\"disk-full\"} ") >= 1;
}

static bool published(void) {
        return current_version() >= 1;
}

static void test_full_disk(void **unused) {
        size_t refused, blobs_before;
        int64_t errors_before, control_refused;

        enroll();
        for (int i = 0; i < BUFFER_K; i++)
                assert_int_equal(upload("before"), 200);
        assert_int_equal(agg_store_count_pending(store), BUFFER_K);
        blobs_before = count_blob_files();
        assert_int_equal(blobs_before, 1);
        errors_before = metric("edge_http_errors_total{reason=\"disk-full\"} ");
        assert_int_equal(errors_before, 0);

        fill_disk();
        control_refused = expect_control_writes_refused();
        refused = uploads_on_full_disk();
        printf("full disk: %zu update(s) refused with 507, %zu acknowledged in all\n", refused,
               count_acked());
        /* a resend of an acknowledged key needs no write: still "duplicate" */
        reply r = send_update(keys[0].key, 0);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"status\":\"duplicate\""));
        free(r.body);
        assert_int_equal(metric("edge_updates_total{result=\"disk-full\"} "), (int64_t) refused);
        assert_int_equal(metric("edge_http_errors_total{reason=\"disk-full\"} "),
                         (int64_t) refused + control_refused);

        /* merging cannot write a version: the buffer stays, also in the worker */
        expect_merge_kept(blobs_before);
        assert_int_equal(agg_merger_start(store, agg_server_metrics(server), &merger), 0);
        assert_true(wait_for(worker_saw_full_disk, 10));
        assert_int_equal(current_version(), 0);
        assert_log_matches();
        assert_totals(0);

        /* room again: accepted, and the worker publishes by itself at its next retry */
        assert_int_equal(unlink(filler), 0);
        assert_int_equal(upload("after"), 200);
        const char *h[] = { auth, "Content-Type: application/json", NULL };
        r = http("/v1/telemetry", "{\"pauses\":{}}", 13, h);
        assert_int_equal(r.status, 204);
        free(r.body);
        assert_true(wait_for(published, PUBLISH_TIMEOUT_S));
        agg_merger_stop(TAKE_PTR(merger)); /* settles the version count */
        agg_version v1;
        assert_int_equal(agg_store_get_version(store, 1, &v1), 0);
        assert_int_equal(v1.n_updates, BUFFER_K);
        assert_log_matches();
        assert_totals(current_version());
        assert_true(metric("\nedge_model_version ") >= 1);
        printf("after the filler went: version %llu published, %lld update(s) pending\n",
               (unsigned long long) current_version(), (long long) agg_store_count_pending(store));
}

/* ---- setup ---- */

static void unmount_store(void) {
        if (mounted && umount2(store_dir, MNT_DETACH) == 0)
                mounted = false;
}

static int init_store(void) {
        agg_server_options o = { .listen = "127.0.0.1:0", .no_merger = true };
        char err[256], sha[65];
        model *m;

        char *kv[] = { "Model=tiny",         "BufferSize=3",         "Encoding=int8",
                       "MaxUpdateNorm=1000", "RateLimitPerSec=1000", "RateLimitBurst=1000",
                       "MaxStaleness=8" };
        if (agg_store_create(store_dir, &store) < 0 ||
            agg_store_set(store, kv, ARRAY_SIZE(kv), true, err, sizeof(err)) < 0 ||
            model_new(&lay.cfg, 1, 1, &m) < 0)
                return -1;
        model_init_params(m, 7);
        int r = agg_blob_save_model(store_dir, m, 0, sha);
        model_free(m);
        if (r < 0 || agg_store_insert_version0(store, sha) < 0 ||
            agg_server_start(store, &o, &server) < 0)
                return -1;
        snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%u", agg_server_port(server));
        return 0;
}

static int setup(void **unused) {
        model_config cfg;

        blas_set_threads(1);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        model_config_by_name("tiny", &cfg);
        model_layout_init(&lay, &cfg);
        return init_store();
}

static int teardown(void **unused);

/* cmocka skips the group teardown when the setup fails: undo it here then */
static int setup_or_undo(void **state) {
        if (setup(state) == 0)
                return 0;
        teardown(state);
        return -1;
}

static int teardown(void **unused) {
        agg_merger_stop(TAKE_PTR(merger));
        agg_server_stop(TAKE_PTR(server));
        agg_store_free(TAKE_PTR(store));
        curl_global_cleanup();
        unmount_store();
        return test_tmpdir_remove(NULL);
}

/* The tmpfs, before cmocka: a machine where it cannot be mounted skips the test. */
static int mount_store(void) {
        if (geteuid() != 0) {
                printf("skipped: mounting a small tmpfs as a full disk needs root\n");
                return 77;
        }
        if (test_tmpdir_create("test-aggregator-diskfull") < 0)
                return 1;
        snprintf(store_dir, sizeof(store_dir), "%s/store", test_tmpdir);
        snprintf(filler, sizeof(filler), "%s/filler", store_dir);
        if (mkdir(store_dir, 0750) < 0 ||
            mount("tmpfs", store_dir, "tmpfs", 0, TMPFS_OPTIONS) < 0) {
                printf("skipped: cannot mount a tmpfs on %s: %m\n", store_dir);
                test_tmpdir_remove(NULL);
                return 77;
        }
        mounted = true;
        atexit(unmount_store); /* also when an assertion ends the run early */
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_full_disk),
        };
        int r = mount_store();
        if (r != 0)
                return r;
        r = test_run_group("test-aggregator-diskfull", tests, setup_or_undo, teardown);
        unmount_store();
        return r;
}
