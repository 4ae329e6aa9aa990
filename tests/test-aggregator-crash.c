/* SPDX-License-Identifier: MIT */
/* edge-aggregator under kill -9: the real binary serves a store while several devices keep
 * sending updates (each resent with the same Idempotency-Key and body after a transport error
 * or 5xx, as edged does) and a killer SIGKILLs the server at random moments (during uploads and
 * merges alike) and restarts it on the same store. Afterwards the update log, the versions and
 * the blobs are checked against what the clients were told:
 *
 *   - every acknowledged key is stored exactly once, and nothing else is stored (every key was
 *     resent until it was acknowledged or refused with 409, so stored == acknowledged);
 *   - no key is ever answered "accepted" twice; a resend of an acknowledged key, also after all
 *     the restarts, is "duplicate";
 *   - versions are 0..V without gaps, each v >= 1 made of exactly BufferSize updates, the sum of
 *     n_updates equals the merged rows, merged rows are within MaxStaleness of their version,
 *     no row is both merged and dropped, and the buffer was merged in arrival order;
 *   - logged = merged + dropped + pending with pending < BufferSize once the server drained;
 *   - the durable counters agree with the rows; the retained blobs hash to their names and hold
 *     their version; PRAGMA integrity_check is "ok";
 *   - the versions are the update log replayed: every retained version's parameters and server
 *     optimizer state (FedAdam's moments; Nesterov's momentum, delta sum and count) equal bit
 *     for bit a recomputation from version 0 and the rows merged into each version.
 *
 * It runs once per ServerOptimizer, each on a store of its own: fedavg with kills at random
 * moments; fedadam and nesterov with every other kill aimed just after a merge became due, so
 * that some land between writing a version's blobs and committing it.
 *
 * EDGE_CRASH_SEED (default 1) fixes the deltas and the kill moments; EDGE_CRASH_KILLS (default
 * 24) the number of kills. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blobs.h"
#include "checkpoint.h"
#include "hash.h"
#include "macros.h"
#include "merge.h"
#include "model.h"
#include "store.h"
#include "update-codec.h"
#include "test-files.h"
#include "test-http.h"

#define N_DEVICES 3
#define BUFFER_K 3
#define MAX_STALENESS 8
#define DEFAULT_KILLS 24
#define KILL_MIN_MS 50
#define KILL_MAX_MS 600
#define KILL_PHASE_MAX_S 60.0
#define AIM_WAIT_MAX_MS 2000 /* an aimed kill waits this long at most for a merge to be due */
#define AIM_DELAY_MAX_MS 40  /* ... then comes within this */
#define DRAIN_MAX_S 30.0
#define RESOLVE_MAX_S 60.0 /* one update may be retried this long */

static char agg_bin[1024], store_dir[128], log_path[128], db_path[160], val_path[128];
static model_layout lay;
static uint64_t arg_seed = 1;
static unsigned arg_kills = DEFAULT_KILLS;
static bool keep_dir; /* this run's checks did not all pass: keep the scratch directory */
static bool keep_any;
static pid_t srv_pid; /* the running server (main thread only), killed by teardown */

/* ---- small utilities ---- */

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void sleep_ms(double ms) {
        struct timespec ts = { .tv_sec = (time_t) (ms / 1000),
                               .tv_nsec = (long) (fmod(ms, 1000) * 1e6) };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static uint64_t splitmix64(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* uniform in [0, 1) */
static double uniform(uint64_t *s) {
        return (double) (splitmix64(s) >> 11) * 0x1p-53;
}

/* The last bytes of the servers' stderr, for failure messages. */
static void print_log_tail(void) {
        char buf[4097];
        int fd = open(log_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return;
        off_t end = lseek(fd, 0, SEEK_END);
        off_t off = end > 4096 ? end - 4096 : 0;
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, off);
        close(fd);
        if (n > 0) {
                buf[n] = 0;
                fprintf(stderr, "--- tail of %s ---\n%s--- end ---\n", log_path, buf);
        }
}

/* ---- the real binary as a child ---- */

/* In the child of a multi-threaded parent: only async-signal-safe calls until exec. The
 * child keeps none of the parent's descriptors (client sockets would keep connections to
 * it half-open). */
static void child_exec(int out_fd, int err_fd, char *const *argv) {
        if (dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
                _exit(126);
        for (int fd = 3; fd < 4096; fd++)
                close(fd);
        execv(agg_bin, argv);
        _exit(127);
}

/* Runs edge-aggregator --store DIR args...; its stdout into out. Returns the exit status. */
static int run_tool(char *out, size_t out_size, ...) {
        char *argv[16] = { "edge-aggregator", "--store", store_dir };
        size_t n = 3, len = 0;
        int p[2], status = -1;
        va_list ap;

        va_start(ap, out_size);
        while (n < ARRAY_SIZE(argv) - 1 && (argv[n] = va_arg(ap, char *)))
                n++;
        va_end(ap);
        argv[n] = NULL;
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        int logfd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        assert_true(logfd >= 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                child_exec(p[1], logfd, argv);
        close(p[1]);
        close(logfd);
        for (;;) {
                ssize_t k = read(p[0], out + len, out_size - 1 - len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                len += (size_t) k;
                if (len == out_size - 1)
                        break;
        }
        out[len] = 0;
        close(p[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Starts "serve --listen 127.0.0.1:0" and reads the port from its first line of stdout. 0 on
 * success; -1 (child reaped) when it does not come up within 20 s. */
static int server_start(pid_t *ret_pid, unsigned *ret_port) {
        char *argv[] = { "edge-aggregator", "--store", store_dir, "serve", "--listen",
                         "127.0.0.1:0", NULL };
        char buf[512] = "";
        size_t len = 0;
        int p[2];
        double t0 = now_s();

        if (pipe2(p, O_CLOEXEC) < 0)
                return -1;
        int logfd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (logfd < 0)
                return -1;
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0)
                child_exec(p[1], logfd, argv);
        close(p[1]);
        close(logfd);
        while (!memchr(buf, '\n', len) && len < sizeof(buf) - 1 && now_s() - t0 < 20) {
                struct pollfd pfd = { .fd = p[0], .events = POLLIN };
                if (poll(&pfd, 1, 100) <= 0)
                        continue;
                ssize_t k = read(p[0], buf + len, sizeof(buf) - 1 - len);
                if (k <= 0)
                        break;
                len += (size_t) k;
        }
        buf[len] = 0;
        close(p[0]);
        const char *at = strstr(buf, " on port ");
        unsigned port = at ? (unsigned) strtoul(at + 9, NULL, 10) : 0;
        if (port == 0) {
                int status;
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fprintf(stderr, "edge-aggregator serve did not come up; stdout: '%s'\n", buf);
                return -1;
        }
        *ret_pid = srv_pid = pid;
        *ret_port = port;
        return 0;
}

/* ---- the shared view of the server: clients read the port, the killer changes it ---- */

static pthread_mutex_t srv_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned srv_port; /* 0 while the server is down */
static unsigned srv_instance; /* incremented at each start */
static bool srv_instance_started;
static int clients_stop;  /* __atomic: finish the update in flight, then return */
static int clients_abort; /* __atomic: return now (a check failed) */

static unsigned current_port_instance(unsigned *ret_instance) {
        pthread_mutex_lock(&srv_lock);
        unsigned p = srv_port;
        if (ret_instance)
                *ret_instance = srv_instance;
        pthread_mutex_unlock(&srv_lock);
        return p;
}

static unsigned current_port(void) {
        return current_port_instance(NULL);
}

/* p = 0: the server is down; else a new server run listens on p. */
static void set_port(unsigned p) {
        pthread_mutex_lock(&srv_lock);
        if (p && !srv_port && srv_instance_started)
                srv_instance++;
        srv_instance_started = srv_instance_started || p;
        srv_port = p;
        pthread_mutex_unlock(&srv_lock);
}

/* ---- HTTP client ---- */

/* GET when body is NULL; hdrs NULL-terminated. Safe in threads (no assertions); status -1 on a
 * transport error. */
static reply http(unsigned port, const char *path, const void *body, size_t size,
                  const char *const *hdrs) {
        test_http_options o = { .connect_timeout_ms = 2000, .in_thread = true };
        char base[32];

        snprintf(base, sizeof(base), "http://127.0.0.1:%u", port);
        return test_http_request_with(base, path, body, size, hdrs, &o);
}

static bool has_error(const reply *r, const char *reason) {
        char want[96];
        snprintf(want, sizeof(want), "\"error\":\"%s\"", reason);
        return r->body && strstr(r->body, want);
}

/* ---- devices ---- */

typedef struct {
        char key[48];
        uint64_t seq, base;
        unsigned accepted, duplicate; /* 200 replies of each kind for this key */
        bool refused;                 /* 409 stale or unknown-base: given up, never stored */
        bool resolved;                /* acknowledged or refused */
        bool in_log;                  /* found in the update log (check_database) */
        int64_t update_id;            /* from the first 200 */
        unsigned instance;            /* the server run (0 = first) that gave the first 200 */
        char first_status[12];        /* "accepted" or "duplicate" */
} sent_update;

typedef struct {
        int idx;
        char id[AGG_ID_HEX], secret[AGG_SECRET_HEX], auth[160];
        pthread_t thread;
        float *delta;
        sent_update *u;
        size_t n, cap;
        unsigned attempts, transport_errors, server_errors, rate_limited, stale, unknown_base,
                resends, deliberate;
        char failure[512]; /* the first unexpected event; the thread stops there */
} device;

static device devices[N_DEVICES];

/* The delta of update seq of device idx: small values from (seed, device, seq), so the same
 * body can be built again for the resend sweep at the end. */
static int make_body(device *d, uint64_t seq, uint64_t base, void **ret_body, size_t *ret_size) {
        uint64_t s = arg_seed * 0x100000001b3ULL ^ ((uint64_t) d->idx << 48) ^ (seq * 0x9e37ULL);
        for (size_t i = 0; i < lay.n_params; i++)
                d->delta[i] = (float) ((uniform(&s) * 2.0 - 1.0) * 1e-3);
        return upd_encode(UPD_INT8, base, &lay, d->delta, 0.01f, NULL, ret_body, ret_size, NULL);
}

static reply post_update(device *d, unsigned port, const sent_update *su, const void *body,
                         size_t size) {
        char k[96], b[64], t[64];
        snprintf(k, sizeof(k), "Idempotency-Key: %s", su->key);
        snprintf(b, sizeof(b), "X-Edged-Base-Version: %" PRIu64, su->base);
        snprintf(t, sizeof(t), "X-Edged-Tokens: %" PRIu64, 100 + su->seq % 400);
        const char *h[] = { d->auth, k, b, t, "X-Edged-Steps: 10", "X-Edged-Loss: 3.5",
                            "Content-Type: application/octet-stream", NULL };
        return http(port, "/v1/update", body, size, h);
}

_printf_(2, 3) static void device_fail(device *d, const char *fmt, ...) {
        va_list ap;
        if (d->failure[0])
                return;
        va_start(ap, fmt);
        vsnprintf(d->failure, sizeof(d->failure), fmt, ap);
        va_end(ap);
}

/* Sends su until the server acknowledges it (200) or refuses it for good (409), resending the
 * same key and body after transport errors, 5xx and 429 like a device does. -1 on anything
 * unexpected (recorded in d->failure). */
static int send_until_resolved(device *d, sent_update *su, const void *body, size_t size,
                               bool expect_duplicate) {
        double t0 = now_s();
        unsigned tries = 0;

        for (;;) {
                if (__atomic_load_n(&clients_abort, __ATOMIC_ACQUIRE)) {
                        device_fail(d, "aborted");
                        return -1;
                }
                if (now_s() - t0 > RESOLVE_MAX_S) {
                        device_fail(d, "%s: not acknowledged after %.0f s", su->key, RESOLVE_MAX_S);
                        return -1;
                }
                unsigned instance;
                unsigned port = current_port_instance(&instance);
                if (port == 0) {
                        sleep_ms(5);
                        continue;
                }
                if (tries++ > 0)
                        d->resends++;
                d->attempts++;
                reply r = post_update(d, port, su, body, size);
                if (r.status == 200) {
                        bool acc = r.body && strstr(r.body, "\"status\":\"accepted\"");
                        bool dup = r.body && strstr(r.body, "\"status\":\"duplicate\"");
                        if (acc == dup) {
                                device_fail(d, "%s: 200 without a status: %s", su->key,
                                            r.body ? r.body : "");
                                free(r.body);
                                return -1;
                        }
                        if (su->accepted + su->duplicate == 0) {
                                const char *id = strstr(r.body, "\"update_id\":");
                                su->update_id = id ? strtoll(id + 12, NULL, 10) : -1;
                                su->instance = instance;
                                snprintf(su->first_status, sizeof(su->first_status), "%s",
                                         acc ? "accepted" : "duplicate");
                        }
                        if (acc)
                                su->accepted++;
                        else
                                su->duplicate++;
                        free(r.body);
                        if (acc && su->accepted > 1) {
                                device_fail(d, "%s: accepted %u times", su->key, su->accepted);
                                return -1;
                        }
                        if (acc && expect_duplicate) {
                                device_fail(d, "%s: a resend of an acknowledged key was "
                                               "accepted again", su->key);
                                return -1;
                        }
                        su->resolved = true;
                        return 0;
                }
                if (r.status < 0 || r.status >= 500 || r.status == 429) {
                        if (r.status < 0)
                                d->transport_errors++;
                        else if (r.status == 429)
                                d->rate_limited++;
                        else
                                d->server_errors++;
                        free(r.body);
                        sleep_ms(10 + 20 * (tries % 4));
                        continue;
                }
                if (r.status == 409 && !expect_duplicate &&
                    (has_error(&r, "stale") || has_error(&r, "unknown-base"))) {
                        if (has_error(&r, "stale"))
                                d->stale++;
                        else
                                d->unknown_base++;
                        su->refused = true;
                        su->resolved = true;
                        free(r.body);
                        return 0;
                }
                device_fail(d, "%s (base %" PRIu64 "): unexpected %ld %s", su->key, su->base,
                            r.status, r.body ? r.body : "");
                free(r.body);
                return -1;
        }
}

/* The current version from GET /v1/task; -1 while the server is down. */
static int64_t fetch_version(device *d) {
        const char *h[] = { d->auth, NULL };
        unsigned port = current_port();
        int64_t v = -1;

        if (port == 0)
                return -1;
        reply r = http(port, "/v1/task", NULL, 0, h);
        if (r.status == 200 && r.body && strstr(r.body, "\"version\":"))
                v = strtoll(strstr(r.body, "\"version\":") + 10, NULL, 10);
        else if (r.status >= 0 && r.status != 429 && r.status < 500)
                device_fail(d, "GET /v1/task: unexpected %ld %s", r.status, r.body ? r.body : "");
        free(r.body);
        return v;
}

static void *device_main(void *userdata) {
        device *d = userdata;
        uint64_t rng = arg_seed ^ (0xd1ce0000ULL + (uint64_t) d->idx);

        while (!__atomic_load_n(&clients_stop, __ATOMIC_ACQUIRE) && !d->failure[0]) {
                _cleanup_free_ void *body = NULL;
                size_t size;
                int64_t v = fetch_version(d);
                if (v < 0) {
                        sleep_ms(10);
                        continue;
                }
                if (d->n == d->cap) {
                        size_t cap = d->cap ? 2 * d->cap : 256;
                        sent_update *nu = realloc(d->u, cap * sizeof(*nu));
                        if (!nu) {
                                device_fail(d, "out of memory");
                                break;
                        }
                        d->u = nu;
                        d->cap = cap;
                }
                sent_update *su = &d->u[d->n];
                *su = (sent_update){ .seq = d->n, .base = (uint64_t) v };
                snprintf(su->key, sizeof(su->key), "s%" PRIu64 "-d%d-%06zu", arg_seed, d->idx,
                         d->n);
                int r = make_body(d, su->seq, su->base, &body, &size);
                if (r < 0) {
                        device_fail(d, "upd_encode: %s", strerror(-r));
                        break;
                }
                d->n++;
                if (send_until_resolved(d, su, body, size, false) < 0)
                        break;
                /* now and then the acknowledgement "got lost": the device sends it again */
                if (su->accepted && uniform(&rng) < 0.1) {
                        d->deliberate++;
                        if (send_until_resolved(d, su, body, size, true) < 0)
                                break;
                }
                sleep_ms(150 + 300 * uniform(&rng));
        }
        return NULL;
}

static void enroll(unsigned port, const char *token, device *d) {
        char body[160];
        snprintf(body, sizeof(body), "{\"token\": \"%s\", \"name\": \"crash-%d\"}", token, d->idx);
        reply r = http(port, "/v1/enroll", body, strlen(body), NULL);
        if (r.status != 201)
                fail_msg("enroll: %ld %s", r.status, r.body ? r.body : "");
        assert_int_equal(sscanf(strstr(r.body, "\"device_id\":\"") + 13, "%32[0-9a-f]", d->id), 1);
        assert_int_equal(sscanf(strstr(r.body, "\"secret\":\"") + 10, "%64[0-9a-f]", d->secret),
                         1);
        snprintf(d->auth, sizeof(d->auth), "Authorization: Bearer %s:%s", d->id, d->secret);
        free(r.body);
}

/* ---- the database, read-only ---- */

static sqlite3 *db_open_ro(void) {
        sqlite3 *db = NULL;
        if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
                sqlite3_close(db);
                return NULL;
        }
        sqlite3_busy_timeout(db, 5000);
        return db;
}

/* One integer; -1 on error. */
static int64_t db_scalar(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        int64_t v = -1;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return v;
}

static int64_t pending_now(void) {
        sqlite3 *db = db_open_ro();
        if (!db)
                return -1;
        int64_t n = db_scalar(db, "SELECT count(*) FROM updates WHERE merged_into IS NULL AND "
                                  "dropped=0");
        sqlite3_close(db);
        return n;
}

static device *device_by_id(const char *id) {
        for (int i = 0; i < N_DEVICES; i++)
                if (!strcmp(devices[i].id, id))
                        return &devices[i];
        return NULL;
}

static sent_update *find_sent(device *d, const char *key) {
        /* keys are "s<seed>-d<idx>-<seq>": the seq indexes d->u */
        const char *dash = strrchr(key, '-');
        if (!dash)
                return NULL;
        size_t seq = strtoul(dash + 1, NULL, 10);
        if (seq >= d->n || strcmp(d->u[seq].key, key) != 0)
                return NULL;
        return &d->u[seq];
}

/* Files in blobs/ that no version row names (model or optimizer state): left by a kill between
 * writing a version's blobs and committing it (the next merge prunes them), or temporary files
 * of a write that was cut. With seen: also how many of them were not in *seen before (which
 * then gets them). */
typedef struct {
        char (*names)[256];
        size_t n, cap;
} name_set;

static unsigned unreferenced_blobs(sqlite3 *db, name_set *seen, unsigned *ret_new) {
        char dir[256];
        struct dirent *de;
        unsigned n = 0, fresh = 0;
        sqlite3_stmt *st = NULL;

        snprintf(dir, sizeof(dir), "%s/blobs", store_dir);
        DIR *d = opendir(dir);
        if (!d || sqlite3_prepare_v2(db, "SELECT count(*) FROM versions WHERE blob=?1 OR "
                                         "moments=?1",
                                     -1, &st, NULL) != SQLITE_OK) {
                if (d)
                        closedir(d);
                return 0;
        }
        while ((de = readdir(d))) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                        continue;
                sqlite3_reset(st);
                sqlite3_bind_text(st, 1, de->d_name, -1, SQLITE_TRANSIENT);
                if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int64(st, 0) > 0)
                        continue;
                n++;
                if (!seen)
                        continue;
                bool known = false;
                for (size_t i = 0; i < seen->n && !known; i++)
                        known = !strcmp(seen->names[i], de->d_name);
                if (known)
                        continue;
                fresh++;
                if (seen->n == seen->cap) {
                        size_t cap = seen->cap ? 2 * seen->cap : 64;
                        void *grown = realloc(seen->names, cap * sizeof(*seen->names));
                        if (!grown)
                                continue;
                        seen->names = grown;
                        seen->cap = cap;
                }
                snprintf(seen->names[seen->n++], sizeof(seen->names[0]), "%s", de->d_name);
        }
        sqlite3_finalize(st);
        closedir(d);
        if (ret_new)
                *ret_new = fresh;
        return n;
}

typedef struct {
        int64_t id, base, merged_into; /* merged_into -1: NULL */
        bool dropped;
} row;

static void check_database(unsigned *ret_versions, unsigned *ret_rows, unsigned *ret_merged,
                           unsigned *ret_dropped, unsigned *ret_pending, unsigned *ret_unevaluated,
                           unsigned *ret_orphans) {
        sqlite3 *db = db_open_ro();
        sqlite3_stmt *st = NULL;
        size_t n_rows = 0, cap = 1024, n_merged = 0, n_dropped = 0, n_pending = 0;
        row *rows = calloc(cap, sizeof(*rows));
        int rc;

        assert_non_null(db);
        assert_non_null(rows);

        /* integrity */
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        if (strcmp((const char *) sqlite3_column_text(st, 0), "ok") != 0)
                fail_msg("PRAGMA integrity_check: %s", sqlite3_column_text(st, 0));
        sqlite3_finalize(st);

        /* the update log against what the clients were told */
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT id, device, idem_key, base_version, "
                                            "merged_into, dropped FROM updates ORDER BY id",
                                            -1, &st, NULL),
                         SQLITE_OK);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *dev = (const char *) sqlite3_column_text(st, 1);
                const char *key = (const char *) sqlite3_column_text(st, 2);
                device *d = device_by_id(dev);
                if (!d)
                        fail_msg("update %lld from unknown device %s",
                                 (long long) sqlite3_column_int64(st, 0), dev);
                sent_update *su = find_sent(d, key);
                if (!su)
                        fail_msg("update %lld: key %s of device %d was never sent",
                                 (long long) sqlite3_column_int64(st, 0), key, d->idx);
                if (su->refused)
                        fail_msg("update %lld: key %s was refused (409) yet is stored",
                                 (long long) sqlite3_column_int64(st, 0), key);
                if (su->accepted + su->duplicate == 0)
                        fail_msg("update %lld: key %s is stored but was never acknowledged",
                                 (long long) sqlite3_column_int64(st, 0), key);
                /* a second row for (device, key) would be counted twice */
                if (su->in_log)
                        fail_msg("key %s of device %d is stored twice", key, d->idx);
                su->in_log = true;
                if ((uint64_t) sqlite3_column_int64(st, 3) != su->base)
                        fail_msg("key %s: stored base %lld, sent %" PRIu64, key,
                                 (long long) sqlite3_column_int64(st, 3), su->base);
                if (n_rows == cap) {
                        cap *= 2;
                        void *grown = realloc(rows, cap * sizeof(*rows));
                        assert_non_null(grown);
                        rows = grown;
                }
                row *x = &rows[n_rows++];
                x->id = sqlite3_column_int64(st, 0);
                x->base = sqlite3_column_int64(st, 3);
                x->merged_into = sqlite3_column_type(st, 4) == SQLITE_NULL
                                         ? -1
                                         : sqlite3_column_int64(st, 4);
                x->dropped = sqlite3_column_int64(st, 5) != 0;
                if (x->merged_into >= 0 && x->dropped)
                        fail_msg("update %lld is both merged into %lld and dropped",
                                 (long long) x->id, (long long) x->merged_into);
                if (x->merged_into >= 0)
                        n_merged++;
                else if (x->dropped)
                        n_dropped++;
                else
                        n_pending++;
        }
        assert_int_equal(rc, SQLITE_DONE);
        sqlite3_finalize(st);
        /* acknowledged ⊆ stored */
        size_t n_acked = 0;
        for (int i = 0; i < N_DEVICES; i++)
                for (size_t j = 0; j < devices[i].n; j++) {
                        sent_update *su = &devices[i].u[j];
                        if (su->accepted + su->duplicate == 0)
                                continue;
                        n_acked++;
                        if (!su->in_log) {
                                int64_t other = -1;
                                char q[128];
                                snprintf(q, sizeof(q), "SELECT count(*) FROM updates WHERE "
                                                       "id=%lld", (long long) su->update_id);
                                other = db_scalar(db, q);
                                fail_msg("key %s of device %d (base %" PRIu64 ") was "
                                         "acknowledged (%u accepted, %u duplicate; first 200 "
                                         "'%s' with update_id %lld from server run %u of %u) "
                                         "but is not in the update log: lost (rows with that "
                                         "id: %lld, rows in all: %zu)",
                                         su->key, i, su->base, su->accepted, su->duplicate,
                                         su->first_status, (long long) su->update_id,
                                         su->instance, srv_instance, (long long) other, n_rows);
                        }
                }
        assert_int_equal(n_rows, n_acked);

        /* versions: 0..V without gaps, each v >= 1 from BUFFER_K updates */
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT version, blob, n_updates, val_loss IS NULL "
                                            "FROM versions ORDER BY version",
                                            -1, &st, NULL),
                         SQLITE_OK);
        int64_t expect = 0, sum_n = 0, unevaluated = 0;
        size_t vcap = 256;
        char(*blobs)[65] = calloc(vcap, 65);
        assert_non_null(blobs);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                int64_t v = sqlite3_column_int64(st, 0), n = sqlite3_column_int64(st, 2);
                if (v != expect)
                        fail_msg("versions: found %lld where %lld was expected (a gap)",
                                 (long long) v, (long long) expect);
                if (v >= 1 && n != BUFFER_K)
                        fail_msg("version %lld: n_updates %lld, BufferSize is %d", (long long) v,
                                 (long long) n, BUFFER_K);
                if (v >= 1)
                        sum_n += n;
                if (v >= 1 && sqlite3_column_int64(st, 3))
                        unevaluated++;
                if ((size_t) v == vcap) {
                        vcap *= 2;
                        void *grown = realloc(blobs, vcap * 65);
                        assert_non_null(grown);
                        blobs = grown;
                }
                snprintf(blobs[v], 65, "%s", (const char *) sqlite3_column_text(st, 1));
                expect++;
        }
        assert_int_equal(rc, SQLITE_DONE);
        sqlite3_finalize(st);
        int64_t V = expect - 1;
        assert_true(V >= 0);

        /* the version arithmetic: each merged row belongs to one existing version, within the
         * staleness bound of that merge; per version exactly n_updates rows; sum = merged */
        int64_t *per_version = calloc((size_t) V + 1, sizeof(int64_t));
        int64_t last_merged_into = 0;
        assert_non_null(per_version);
        for (size_t i = 0; i < n_rows; i++) {
                row *x = &rows[i];
                if (x->merged_into >= 0) {
                        if (x->merged_into < 1 || x->merged_into > V)
                                fail_msg("update %lld merged into version %lld, which does not "
                                         "exist (0..%lld)",
                                         (long long) x->id, (long long) x->merged_into,
                                         (long long) V);
                        per_version[x->merged_into]++;
                        if (x->base > x->merged_into - 1 ||
                            x->merged_into - 1 - x->base > MAX_STALENESS)
                                fail_msg("update %lld (base %lld) merged into version %lld",
                                         (long long) x->id, (long long) x->base,
                                         (long long) x->merged_into);
                        /* FedBuff takes the oldest waiting updates first */
                        if (x->merged_into < last_merged_into)
                                fail_msg("update %lld merged into %lld after an older one went "
                                         "into %lld",
                                         (long long) x->id, (long long) x->merged_into,
                                         (long long) last_merged_into);
                        last_merged_into = x->merged_into;
                }
                if (x->dropped && x->base + MAX_STALENESS >= V)
                        fail_msg("update %lld (base %lld) dropped as stale, but the newest "
                                 "version is %lld",
                                 (long long) x->id, (long long) x->base, (long long) V);
        }
        for (int64_t v = 1; v <= V; v++)
                if (per_version[v] != BUFFER_K)
                        fail_msg("version %lld: %lld update rows merged into it, n_updates %d",
                                 (long long) v, (long long) per_version[v], BUFFER_K);
        assert_int_equal(sum_n, (int64_t) n_merged);
        assert_int_equal(n_rows, n_merged + n_dropped + n_pending);
        if (n_pending >= BUFFER_K)
                fail_msg("%zu updates still waiting after the drain (BufferSize %d)", n_pending,
                         BUFFER_K);
        free(per_version);

        /* the durable counters are written in the same transactions as the rows */
        assert_int_equal(db_scalar(db, "SELECT value FROM counters WHERE "
                                       "name='updates.accepted'"),
                         (int64_t) n_rows);
        int64_t dropped_counter = db_scalar(db, "SELECT value FROM counters WHERE "
                                                "name='updates.dropped-stale'");
        assert_int_equal(dropped_counter < 0 ? 0 : dropped_counter, (int64_t) n_dropped);

        /* retained blobs: the newest MaxStaleness + 1 versions, each hashing to its name and
         * holding its version; distinct versions have distinct blobs */
        model *m = NULL;
        assert_int_equal(model_new(&lay.cfg, 1, 1, &m), 0);
        for (int64_t v = V; v >= 0 && v >= V - MAX_STALENESS; v--) {
                char path[512], actual[HASH_SHA256_HEX];
                ckpt_state cs = {};
                snprintf(path, sizeof(path), "%s/blobs/%s", store_dir, blobs[v]);
                if (hash_sha256_file_hex(path, actual) < 0)
                        fail_msg("version %lld: blob %s is missing", (long long) v, path);
                if (strcmp(actual, blobs[v]) != 0)
                        fail_msg("version %lld: blob %s hashes to %s", (long long) v, blobs[v],
                                 actual);
                if (ckpt_load(path, m, NULL, &cs) < 0)
                        fail_msg("version %lld: %s is not a loadable checkpoint", (long long) v,
                                 path);
                if (cs.model_version != (uint64_t) v)
                        fail_msg("version %lld: its blob holds version %" PRIu64, (long long) v,
                                 cs.model_version);
                for (int64_t w = v + 1; w <= V; w++)
                        if (!strcmp(blobs[v], blobs[w]))
                                fail_msg("versions %lld and %lld share blob %s", (long long) v,
                                         (long long) w, blobs[v]);
        }
        model_free(m);
        /* files in blobs/ that no version references: reported only */
        unsigned orphans = unreferenced_blobs(db, NULL, NULL);
        free(blobs);
        free(rows);
        sqlite3_close(db);

        *ret_versions = (unsigned) V;
        *ret_rows = (unsigned) n_rows;
        *ret_merged = (unsigned) n_merged;
        *ret_dropped = (unsigned) n_dropped;
        *ret_pending = (unsigned) n_pending;
        *ret_unevaluated = (unsigned) unevaluated;
        *ret_orphans = orphans;
}

/* ---- the versions replayed from the update log ---- */

/* Every version again from version 0 (init --seed 3) and the rows merged into it, in id order
 * as the merger took them: each row's delta rebuilt from (seed, device, seq) and decoded as
 * the server decoded it, weighted by the row's tokens and staleness, averaged and applied with
 * the store's server optimizer. The arithmetic is the library's own (merge.h; test-aggregator
 * checks it against hand computations): here the point is that the published chain is that
 * arithmetic applied once to each merged update, in order, with the optimizer state carried
 * from each version to the next across every kill. The retained versions' parameters and
 * state blobs must equal the replay bit for bit. Returns how many versions were compared. */
static unsigned check_replay(void) {
        _cleanup_free_ agg_settings *set = malloc(sizeof(*set));
        size_t n = lay.n_params;
        _cleanup_free_ float *x = NULL, *m = NULL, *a = NULL, *agg = NULL, *pub = NULL;
        float *deltas[BUFFER_K] = {};
        uint64_t tokens[BUFFER_K], staleness[BUFFER_K];
        double w[BUFFER_K];
        uint32_t count = 0;
        unsigned compared = 0;
        agg_store *s;
        model *mod;
        sqlite3 *db;
        sqlite3_stmt *st = NULL;
        int rc;

        /* the settings as the server read them */
        assert_non_null(set);
        assert_int_equal(agg_store_open(store_dir, &s), 0);
        assert_int_equal(agg_store_load_settings(s, set), 0);
        agg_store_free(s);
        agg_nesterov_params np = { .lr = agg_settings_server_lr(set),
                                   .mu = set->server_momentum,
                                   .period = (uint32_t) set->server_momentum_period };

        assert_int_equal(model_new(&lay.cfg, 1, 1, &mod), 0);
        model_init_params(mod, 3);
        x = malloc(n * sizeof(float));
        pub = malloc(n * sizeof(float));
        m = calloc(n, sizeof(float));
        a = calloc(n, sizeof(float));
        agg = malloc(n * sizeof(float));
        assert_true(x && pub && m && a && agg);
        memcpy(x, mod->params, n * sizeof(float));
        for (int i = 0; i < BUFFER_K; i++) {
                deltas[i] = malloc(n * sizeof(float));
                assert_non_null(deltas[i]);
        }

        db = db_open_ro();
        assert_non_null(db);
        int64_t V = db_scalar(db, "SELECT max(version) FROM versions");
        assert_true(V >= 0);
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT device, idem_key, base_version, tokens, scale "
                                            "FROM updates WHERE merged_into=? ORDER BY id",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (int64_t v = 0; v <= V; v++) {
                if (v > 0) {
                        size_t k = 0;
                        sqlite3_reset(st);
                        sqlite3_bind_int64(st, 1, v);
                        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                                const char *dev = (const char *) sqlite3_column_text(st, 0);
                                const char *key = (const char *) sqlite3_column_text(st, 1);
                                device *d = device_by_id(dev);
                                sent_update *su = d ? find_sent(d, key) : NULL;
                                _cleanup_free_ void *body = NULL;
                                size_t size;
                                upd_info info;
                                char err[256];
                                if (!su || k == BUFFER_K)
                                        fail_msg("version %lld: row %s/%s cannot be replayed",
                                                 (long long) v, dev, key);
                                assert_int_equal(make_body(d, su->seq, su->base, &body, &size), 0);
                                if (upd_decode(body, size, &lay, agg_max_raw_bytes(&lay),
                                               deltas[k], &info, err, sizeof(err)) < 0)
                                        fail_msg("%s: %s", key, err);
                                double scale = sqlite3_column_double(st, 4);
                                if (scale != 1.0)
                                        for (size_t j = 0; j < n; j++)
                                                deltas[k][j] *= (float) scale;
                                tokens[k] = (uint64_t) sqlite3_column_int64(st, 3);
                                staleness[k] = (uint64_t) (v - 1) - su->base;
                                k++;
                        }
                        assert_int_equal(rc, SQLITE_DONE);
                        assert_int_equal(k, BUFFER_K);
                        assert_int_equal(agg_weights(tokens, staleness, k, w), 0);
                        assert_int_equal(agg_aggregate((const float *const *) deltas, w, k, n,
                                                       set->trim_fraction, agg),
                                         0);
                        float lr = agg_settings_server_lr(set);
                        if (set->optimizer == AGG_OPT_NESTEROV)
                                agg_nesterov(x, m, a, &count, agg, n, &np);
                        else if (set->optimizer == AGG_OPT_FEDADAM)
                                agg_fedadam(x, m, a, agg, n, lr, set->server_adam_eps);
                        else
                                agg_fedavg(x, agg, n, lr);
                }
                if (v < V - MAX_STALENESS)
                        continue;
                /* a retained version: its parameters and optimizer state */
                agg_version ver = {};
                sqlite3_stmt *q = NULL;
                assert_int_equal(sqlite3_prepare_v2(db, "SELECT blob, moments FROM versions "
                                                        "WHERE version=?",
                                                    -1, &q, NULL),
                                 SQLITE_OK);
                sqlite3_bind_int64(q, 1, v);
                assert_int_equal(sqlite3_step(q), SQLITE_ROW);
                snprintf(ver.blob, sizeof(ver.blob), "%s",
                         (const char *) sqlite3_column_text(q, 0));
                if (sqlite3_column_type(q, 1) != SQLITE_NULL)
                        snprintf(ver.moments, sizeof(ver.moments), "%s",
                                 (const char *) sqlite3_column_text(q, 1));
                sqlite3_finalize(q);
                assert_int_equal(agg_blob_load_model(store_dir, ver.blob, mod), 0);
                if (memcmp(mod->params, x, n * sizeof(float)) != 0) {
                        size_t j = 0;
                        while (j < n && mod->params[j] == x[j])
                                j++;
                        fail_msg("version %lld: parameter %zu is %.9g, the replay gives %.9g",
                                 (long long) v, j, (double) mod->params[j], (double) x[j]);
                }
                if (v > 0 && set->optimizer != AGG_OPT_FEDAVG) {
                        _cleanup_free_ void *buf = NULL;
                        size_t size;
                        bool nesterov = set->optimizer == AGG_OPT_NESTEROV;
                        if (!ver.moments[0])
                                fail_msg("version %lld has no optimizer state", (long long) v);
                        assert_int_equal(agg_blob_load_bytes(store_dir, ver.moments, 8 * n + 8,
                                                             &buf, &size),
                                         0);
                        assert_int_equal(size, 8 * n + (nesterov ? 8 : 0));
                        if (memcmp(buf, m, n * sizeof(float)) != 0 ||
                            memcmp((const float *) buf + n, a, n * sizeof(float)) != 0)
                                fail_msg("version %lld: the saved optimizer state is not the "
                                         "replay's",
                                         (long long) v);
                        if (nesterov) {
                                uint32_t saved;
                                memcpy(&saved, (const char *) buf + 8 * n + 4, 4);
                                if (saved != count || count != (uint64_t) v % np.period)
                                        fail_msg("version %lld: count %u saved, the replay has "
                                                 "%u (period %u)",
                                                 (long long) v, saved, count, np.period);
                        }
                }
                compared++;
        }
        sqlite3_finalize(st);
        sqlite3_close(db);
        for (int i = 0; i < BUFFER_K; i++)
                free(deltas[i]);
        model_free(mod);
        return compared;
}

/* ---- the test ---- */

static pid_t reap(pid_t pid, int *status) {
        pid_t r = waitpid(pid, status, 0);
        if (r == pid)
                srv_pid = 0;
        return r;
}

static void stop_clients(void) {
        __atomic_store_n(&clients_stop, 1, __ATOMIC_RELEASE);
        for (int i = 0; i < N_DEVICES; i++)
                if (devices[i].thread) {
                        pthread_join(devices[i].thread, NULL);
                        devices[i].thread = 0;
                }
}

typedef struct {
        const char *optimizer; /* ServerOptimizer; also the run's directory */
        bool aim_at_merges;    /* every other kill comes just after a merge became due */
} crash_run;

static const char *run_name = "";

/* A fresh store, log and devices for a run, under <scratch>/<name>. */
static void run_begin(const char *name) {
        char dir[96];

        run_name = name;
        snprintf(dir, sizeof(dir), "%s/%s", test_tmpdir, name);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(store_dir, sizeof(store_dir), "%s/store", dir);
        snprintf(log_path, sizeof(log_path), "%s/server.log", dir);
        snprintf(db_path, sizeof(db_path), "%s/aggregator.db", store_dir);
        snprintf(val_path, sizeof(val_path), "%s/validation.txt", dir);
        memset(devices, 0, sizeof(devices));
        pthread_mutex_lock(&srv_lock);
        srv_port = 0;
        srv_instance = 0;
        srv_instance_started = false;
        pthread_mutex_unlock(&srv_lock);
        __atomic_store_n(&clients_stop, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&clients_abort, 0, __ATOMIC_RELEASE);
}

static void kill9_run(const crash_run *run) {
        char out[4096], token[AGG_ID_HEX], optimizer[48];
        unsigned port, kills = 0, kills_merge_due = 0, kills_aimed = 0, kills_unpublished = 0;
        uint64_t rng = arg_seed * 0x2545f4914f6cdd1dULL + 17;
        double max_restart = 0;
        name_set seen = {};
        pid_t pid;
        int status;

        keep_dir = true; /* until every check passed */
        run_begin(run->optimizer);

        /* the store: tiny model, K = 3, int8, a small validation file */
        FILE *f = fopen(val_path, "we");
        assert_non_null(f);
        for (int i = 0; i < 60; i++)
                fprintf(f, "held-out line %d: pack my box with five dozen liquor jugs\n", i);
        assert_int_equal(fclose(f), 0);
        char buffer[16], staleness[32];
        snprintf(buffer, sizeof(buffer), "%d", BUFFER_K);
        snprintf(staleness, sizeof(staleness), "MaxStaleness=%d", MAX_STALENESS);
        if (run_tool(out, sizeof(out), "init", "--config", "tiny", "--buffer", buffer,
                     "--encoding", "int8", "--seed", "3", "--validation", val_path, (char *) NULL) != 0) {
                print_log_tail();
                fail_msg("edge-aggregator init failed");
        }
        snprintf(optimizer, sizeof(optimizer), "ServerOptimizer=%s", run->optimizer);
        assert_int_equal(run_tool(out, sizeof(out), "set", "RateLimitPerSec=100000",
                                  "RateLimitBurst=100000", staleness, optimizer, (char *) NULL),
                         0);
        assert_int_equal(run_tool(out, sizeof(out), "token", "create", "--uses", "3", (char *) NULL), 0);
        assert_int_equal(sscanf(out, "%32[0-9a-f]", token), 1);

        assert_int_equal(server_start(&pid, &port), 0);
        for (int i = 0; i < N_DEVICES; i++) {
                devices[i].idx = i;
                enroll(port, token, &devices[i]);
                devices[i].delta = malloc(lay.n_params * sizeof(float));
                assert_non_null(devices[i].delta);
        }
        set_port(port);
        for (int i = 0; i < N_DEVICES; i++)
                assert_int_equal(pthread_create(&devices[i].thread, NULL, device_main,
                                                &devices[i]),
                                 0);

        /* the killer */
        double t_start = now_s();
        while (kills < arg_kills && now_s() - t_start < KILL_PHASE_MAX_S) {
                bool aim = run->aim_at_merges && kills % 2 == 1;
                double up_ms = aim ? AIM_WAIT_MAX_MS
                                   : KILL_MIN_MS + (KILL_MAX_MS - KILL_MIN_MS) * uniform(&rng);
                double t_up = now_s();
                bool died = false;
                while ((now_s() - t_up) * 1000 < up_ms) {
                        if (waitpid(pid, &status, WNOHANG) == pid) {
                                srv_pid = 0;
                                died = true;
                                break;
                        }
                        if (aim && pending_now() >= BUFFER_K) {
                                /* the worker has been kicked: kill in the merge's first moments */
                                kills_aimed++;
                                sleep_ms(AIM_DELAY_MAX_MS * uniform(&rng));
                                break;
                        }
                        sleep_ms(aim ? 1 : 5);
                }
                if (died) {
                        stop_clients();
                        print_log_tail();
                        fail_msg("the server died by itself (status 0x%x) after kill %u", status,
                                 kills);
                }
                if (pending_now() >= BUFFER_K)
                        kills_merge_due++;
                set_port(0);
                assert_int_equal(kill(pid, SIGKILL), 0);
                assert_int_equal(reap(pid, &status), pid);
                if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
                        stop_clients();
                        print_log_tail();
                        fail_msg("the server ended with status 0x%x before SIGKILL arrived",
                                 status);
                }
                kills++;
                {
                        /* blobs of a version the kill kept from being committed */
                        sqlite3 *db = db_open_ro();
                        unsigned fresh = 0;
                        if (db) {
                                unreferenced_blobs(db, &seen, &fresh);
                                sqlite3_close(db);
                        }
                        kills_unpublished += fresh > 0;
                }
                double t_restart = now_s();
                if (server_start(&pid, &port) < 0) {
                        stop_clients();
                        print_log_tail();
                        fail_msg("the server does not start again after kill %u", kills);
                }
                double dt = now_s() - t_restart;
                max_restart = MAX(max_restart, dt);
                set_port(port);
        }
        double kill_phase = now_s() - t_start;

        /* the clients finish what they have in flight (acknowledged by the last server) */
        stop_clients();
        for (int i = 0; i < N_DEVICES; i++)
                if (devices[i].failure[0]) {
                        print_log_tail();
                        fail_msg("device %d: %s", i, devices[i].failure);
                }

        /* let the buffer drain: merge what it can */
        double t_drain = now_s();
        int64_t pending;
        while ((pending = pending_now()) >= BUFFER_K && now_s() - t_drain < DRAIN_MAX_S)
                sleep_ms(50);
        sleep_ms(300); /* the merge that may have just committed: its evaluation and pruning */
        double drain = now_s() - t_drain;
        if (pending >= BUFFER_K) {
                sqlite3 *db = db_open_ro();
                sqlite3_stmt *st = NULL;
                char integrity[256] = "?";
                if (db && sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) ==
                                  SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW)
                        snprintf(integrity, sizeof(integrity), "%s", sqlite3_column_text(st, 0));
                sqlite3_finalize(st);
                sqlite3_close(db);
                print_log_tail();
                fail_msg("%lld updates still waiting after %.0f s; integrity_check: %s",
                         (long long) pending, DRAIN_MAX_S, integrity);
        }
        set_port(0);
        assert_int_equal(kill(pid, SIGTERM), 0);
        assert_int_equal(reap(pid, &status), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                print_log_tail();
                fail_msg("serve did not exit cleanly on SIGTERM: status 0x%x", status);
        }

        unsigned versions, rows, merged, dropped, waiting, unevaluated, orphans;
        check_database(&versions, &rows, &merged, &dropped, &waiting, &unevaluated, &orphans);
        unsigned replayed = check_replay();

        /* one more start: every acknowledged key, resent with its body, is a duplicate */
        assert_int_equal(server_start(&pid, &port), 0);
        set_port(port);
        unsigned swept = 0;
        for (int i = 0; i < N_DEVICES; i++) {
                device *d = &devices[i];
                for (size_t j = 0; j < d->n; j++) {
                        sent_update *su = &d->u[j];
                        _cleanup_free_ void *body = NULL;
                        size_t size;
                        if (su->accepted + su->duplicate == 0)
                                continue;
                        assert_int_equal(make_body(d, su->seq, su->base, &body, &size), 0);
                        unsigned before = su->duplicate;
                        if (send_until_resolved(d, su, body, size, true) < 0 ||
                            su->duplicate != before + 1) {
                                print_log_tail();
                                fail_msg("device %d: resend after the restarts: %s", i,
                                         d->failure[0] ? d->failure : "not a duplicate");
                        }
                        su->duplicate--; /* not part of the crash phase's counts */
                        swept++;
                }
        }
        set_port(0);
        assert_int_equal(kill(pid, SIGTERM), 0);
        assert_int_equal(reap(pid, &status), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        /* the client side */
        unsigned sent = 0, acked = 0, acc = 0, dup_acks = 0, dup_only = 0, refused = 0,
                 attempts = 0, transport = 0, s5xx = 0, resends = 0, deliberate = 0, stale = 0,
                 unknown = 0;
        for (int i = 0; i < N_DEVICES; i++) {
                device *d = &devices[i];
                sent += (unsigned) d->n;
                attempts += d->attempts;
                transport += d->transport_errors;
                s5xx += d->server_errors;
                resends += d->resends;
                deliberate += d->deliberate;
                stale += d->stale;
                unknown += d->unknown_base;
                for (size_t j = 0; j < d->n; j++) {
                        sent_update *su = &d->u[j];
                        assert_true(su->resolved);
                        assert_true(su->accepted <= 1);
                        if (su->refused)
                                refused++;
                        if (su->accepted + su->duplicate > 0)
                                acked++;
                        acc += su->accepted;
                        dup_acks += su->duplicate;
                        if (su->duplicate > 0 && su->accepted == 0)
                                dup_only++;
                }
        }
        /* a version handed out by GET /v1/task is durable: never unknown after a restart */
        assert_int_equal(unknown, 0);
        assert_int_equal(acked + refused, sent);

        /* ... and changed nothing */
        {
                sqlite3 *db = db_open_ro();
                assert_non_null(db);
                assert_int_equal(db_scalar(db, "SELECT count(*) FROM updates"), (int64_t) rows);
                assert_int_equal(db_scalar(db, "SELECT max(version) FROM versions"),
                                 (int64_t) versions);
                assert_int_equal(db_scalar(db, "SELECT value FROM counters WHERE "
                                               "name='updates.accepted'"),
                                 (int64_t) rows);
                sqlite3_close(db);
        }

        printf("%s, seed %" PRIu64 ": %u kills in %.1f s (%u aimed at a merge, %u with a merge "
               "due, %u between writing a version's blobs and committing it; restart at most "
               "%.2f s)\n",
               run->optimizer, arg_seed, kills, kill_phase, kills_aimed, kills_merge_due,
               kills_unpublished, max_restart);
        printf("updates sent %u (%u POSTs: %u transport errors, %u 5xx, %u resends of the same "
               "key)\n",
               sent, attempts, transport, s5xx, resends);
        printf("acknowledged %u: %u accepted, %u duplicate replies (%u keys whose first 200 "
               "was lost in a kill, %u deliberate resends); refused %u (stale)\n",
               acked, acc, dup_acks, dup_only, deliberate, refused);
        printf("update log %u rows = acknowledged keys; %u merged, %u dropped (stale), %u "
               "waiting\n",
               rows, merged, dropped, waiting);
        printf("versions published %u (x %d updates; %u without validation loss); drain %.1f "
               "s; %u acknowledged keys resent after the last restart: all duplicate; %u "
               "unreferenced blob files\n",
               versions, BUFFER_K, unevaluated, drain, swept, orphans);
        printf("versions %u..%u replayed from the update log: parameters and %s state equal bit "
               "for bit\n",
               versions + 1 - replayed, versions, run->optimizer);
        assert_true(kills >= MIN(arg_kills, 20u));
        assert_int_equal(rows, acked);
        assert_true(replayed >= MIN(versions + 1, (unsigned) MAX_STALENESS + 1));
        free(seen.names);
        keep_dir = false;
}

static void test_kill9_fedavg(void **state) {
        kill9_run(&(crash_run){ .optimizer = "fedavg" });
}

static void test_kill9_fedadam(void **state) {
        kill9_run(&(crash_run){ .optimizer = "fedadam", .aim_at_merges = true });
}

static void test_kill9_nesterov(void **state) {
        kill9_run(&(crash_run){ .optimizer = "nesterov", .aim_at_merges = true });
}

/* $EDGE_AGGREGATOR_BIN, else edge-aggregator next to $EDGED_BIN (tests/run-tests sets it). */
static void find_binary(void) {
        const char *bin = getenv("EDGE_AGGREGATOR_BIN"), *edged = getenv("EDGED_BIN");

        if (bin)
                snprintf(agg_bin, sizeof(agg_bin), "%s", bin);
        else {
                const char *slash = edged ? strrchr(edged, '/') : NULL;
                if (slash)
                        snprintf(agg_bin, sizeof(agg_bin), "%.*s/edge-aggregator",
                                 (int) (slash - edged), edged);
                else
                        snprintf(agg_bin, sizeof(agg_bin), "build/edge-aggregator");
        }
}

static int setup(void **state) {
        const char *s;
        model_config cfg;

        if ((s = getenv("EDGE_CRASH_SEED")))
                arg_seed = strtoull(s, NULL, 10);
        if ((s = getenv("EDGE_CRASH_KILLS")) && atoi(s) > 0)
                arg_kills = (unsigned) atoi(s);
        if (test_tmpdir_create("test-aggregator-crash") < 0)
                return -1;
        model_config_by_name("tiny", &cfg);
        model_layout_init(&lay, &cfg);
        signal(SIGPIPE, SIG_IGN);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        return 0;
}

/* After each run, also a failed one: the server and the clients stopped, the devices freed. */
static int run_teardown(void **state) {
        if (srv_pid > 0) { /* a failed check left it running */
                kill(srv_pid, SIGKILL);
                waitpid(srv_pid, NULL, 0);
                srv_pid = 0;
        }
        __atomic_store_n(&clients_abort, 1, __ATOMIC_RELEASE);
        stop_clients();
        for (int i = 0; i < N_DEVICES; i++) {
                free(devices[i].delta);
                free(devices[i].u);
                devices[i].delta = NULL;
                devices[i].u = NULL;
        }
        if (keep_dir) {
                fprintf(stderr, "keeping %s/%s (store, server.log) for inspection; seed %" PRIu64
                                "\n",
                        test_tmpdir, run_name, arg_seed);
                keep_any = true;
                keep_dir = false;
        }
        return 0;
}

static int teardown(void **state) {
        curl_global_cleanup();
        if (keep_any)
                return 0;
        return test_tmpdir_remove(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_kill9_fedavg, run_teardown),
                cmocka_unit_test_teardown(test_kill9_fedadam, run_teardown),
                cmocka_unit_test_teardown(test_kill9_nesterov, run_teardown),
        };
        find_binary();
        if (access(agg_bin, X_OK) < 0) {
                printf("skipped: %s is not there (build it, or set EDGE_AGGREGATOR_BIN)\n",
                       agg_bin);
                return 77;
        }
        return cmocka_run_group_tests(tests, setup, teardown);
}
