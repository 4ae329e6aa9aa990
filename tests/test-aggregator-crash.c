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
 *     for bit a recomputation from version 0 and the rows merged into each version;
 *   - each retained version, recomputed from its predecessor and the K bodies the update log
 *     says went into it with this test's own decoder and arithmetic, matches its stored
 *     parameters and optimizer state within the float rounding bound (check_recompute);
 *   - every row is the update the acknowledgements named (update_id), merged into a version
 *     after the one the "accepted" reply named;
 *   - kills landed during merges (the store after the kill shows a full buffer uncommitted;
 *     at least one per run), and each merge so cut short was redone with the same K updates.
 *
 * It runs once per ServerOptimizer, each on a store of its own: fedavg with every fourth kill
 * aimed just after a merge became due and the rest at random moments; fedadam and nesterov
 * with every other kill aimed, so that some land between writing a version's blobs and
 * committing it. Time limits stretch by EDGED_TEST_TIME_FACTOR (test-run.h).
 *
 * EDGE_CRASH_SEED (default 1) fixes the deltas and the kill moments; EDGE_CRASH_KILLS (default
 * 24) the number of kills. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

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
#include <zstd.h>

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
#define AIM_DELAY_MAX_MS 40 /* an aimed kill comes within this once a merge is due */
/* Time limits, all stretched by test_limit_s() (EDGED_TEST_TIME_FACTOR) */
#define KILL_PHASE_MAX_S 60.0
#define AIM_WAIT_MAX_MS 2000 /* an aimed kill waits this long at most for a merge to be due */
#define DRAIN_MAX_S 30.0
#define RESOLVE_MAX_S 60.0 /* one update may be retried this long */
#define START_MAX_S 20.0   /* serve prints its port */
#define CONNECT_MAX_MS 2000
#define DB_BUSY_MAX_MS 5000
#define SETTLE_MS 300 /* after the drain: the last merge's evaluation and pruning */

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
 * success; -1 (child reaped) when it does not come up within START_MAX_S. */
static int server_start(pid_t *ret_pid, unsigned *ret_port) {
        char *argv[] = { "edge-aggregator", "--store",     store_dir, "serve",
                         "--listen",        "127.0.0.1:0", NULL };
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
        while (!memchr(buf, '\n', len) && len < sizeof(buf) - 1 &&
               now_s() - t0 < test_limit_s(START_MAX_S)) {
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
static unsigned srv_port;     /* 0 while the server is down */
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
        test_http_options o = { .connect_timeout_ms = (long) test_limit_s(CONNECT_MAX_MS),
                                .in_thread = true };
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
        int64_t update_id;            /* from the first 200; every later 200 names it too */
        int64_t ack_version;          /* the version the "accepted" reply named, else -1 */
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

/* X-Edged-Tokens of an update: the weights of the merge depend on it */
static uint64_t tokens_of(const sent_update *su) {
        return 100 + su->seq % 400;
}

static reply post_update(device *d, unsigned port, const sent_update *su, const void *body,
                         size_t size) {
        char k[96], b[64], t[64];
        snprintf(k, sizeof(k), "Idempotency-Key: %s", su->key);
        snprintf(b, sizeof(b), "X-Edged-Base-Version: %" PRIu64, su->base);
        snprintf(t, sizeof(t), "X-Edged-Tokens: %" PRIu64, tokens_of(su));
        const char *h[] = { d->auth,
                            k,
                            b,
                            t,
                            "X-Edged-Steps: 10",
                            "X-Edged-Loss: 3.5",
                            "Content-Type: application/octet-stream",
                            NULL };
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
                if (now_s() - t0 > test_limit_s(RESOLVE_MAX_S)) {
                        device_fail(d, "%s: not acknowledged after %.0f s", su->key,
                                    test_limit_s(RESOLVE_MAX_S));
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
                        const char *id = strstr(r.body, "\"update_id\":");
                        int64_t update_id = id ? strtoll(id + 12, NULL, 10) : -1;
                        if (su->accepted + su->duplicate == 0) {
                                su->update_id = update_id;
                                su->instance = instance;
                                snprintf(su->first_status, sizeof(su->first_status), "%s",
                                         acc ? "accepted" : "duplicate");
                        } else if (update_id != su->update_id) {
                                device_fail(d, "%s: acknowledged as update %lld, then as %lld",
                                            su->key, (long long) su->update_id,
                                            (long long) update_id);
                                free(r.body);
                                return -1;
                        }
                        if (acc) {
                                const char *ver = strstr(r.body, "\"version\":");
                                su->ack_version = ver ? strtoll(ver + 10, NULL, 10) : -1;
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
                                device_fail(d,
                                            "%s: a resend of an acknowledged key was "
                                            "accepted again",
                                            su->key);
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
                *su = (sent_update){ .seq = d->n, .base = (uint64_t) v, .ack_version = -1 };
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
        assert_int_equal(sscanf(strstr(r.body, "\"secret\":\"") + 10, "%64[0-9a-f]", d->secret), 1);
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
        sqlite3_busy_timeout(db, (int) test_limit_s(DB_BUSY_MAX_MS));
        return db;
}

/* One integer; -1 on error. */
static int64_t db_scalar(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        int64_t v = -1;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
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

/* The update a row of version v names (columns col: device, col + 1: key), as this test sent
 * it; fails the test when it did not send it or v already holds K of them. */
static sent_update *sent_of_row(sqlite3_stmt *st, int col, long long v, size_t k, device **ret_d) {
        const char *dev = (const char *) sqlite3_column_text(st, col);
        const char *key = (const char *) sqlite3_column_text(st, col + 1);
        device *d = device_by_id(dev);
        sent_update *su = d ? find_sent(d, key) : NULL;

        if (!su || k == BUFFER_K)
                fail_msg("version %lld: row %s/%s was not sent by this test, or one too many", v,
                         dev, key);
        *ret_d = d;
        return su;
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
        if (!d || sqlite3_prepare_v2(db,
                                     "SELECT count(*) FROM versions WHERE blob=?1 OR "
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
                /* the row is the one the acknowledgements named, and it was merged only
                 * into a version published after the "accepted" reply's */
                if (sqlite3_column_int64(st, 0) != su->update_id)
                        fail_msg("key %s is row %lld, but was acknowledged as update %lld", key,
                                 (long long) sqlite3_column_int64(st, 0),
                                 (long long) su->update_id);
                if (sqlite3_column_type(st, 4) != SQLITE_NULL && su->ack_version >= 0 &&
                    sqlite3_column_int64(st, 4) <= su->ack_version)
                        fail_msg("key %s, accepted at version %lld, is merged into version %lld",
                                 key, (long long) su->ack_version,
                                 (long long) sqlite3_column_int64(st, 4));
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
                                snprintf(q, sizeof(q),
                                         "SELECT count(*) FROM updates WHERE "
                                         "id=%lld",
                                         (long long) su->update_id);
                                other = db_scalar(db, q);
                                fail_msg("key %s of device %d (base %" PRIu64 ") was "
                                         "acknowledged (%u accepted, %u duplicate; first 200 "
                                         "'%s' with update_id %lld from server run %u of %u) "
                                         "but is not in the update log: lost (rows with that "
                                         "id: %lld, rows in all: %zu)",
                                         su->key, i, su->base, su->accepted, su->duplicate,
                                         su->first_status, (long long) su->update_id, su->instance,
                                         srv_instance, (long long) other, n_rows);
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

/* ---- the store after a kill: was a merge cut short? ---- */

typedef struct {
        int64_t version;       /* the current version when the kill came */
        int64_t ids[BUFFER_K]; /* the buffer being merged: the next version's updates */
} cut_merge;

/* Whether a merge is under way, as the store shows it; after a kill, whether the kill cut
 * one short: a full buffer of updates within the staleness bound waits (the upload that
 * filled it kicked the merge worker, and only the version's commit ends the wait) and the
 * current version has its validation loss (else the worker may still be evaluating that, not
 * merging). The merger takes the oldest first, so the buffer is the K oldest of them. 1 yes,
 * 0 no, -1 the store could not be read. */
static int merge_underway(cut_merge *ret) {
        sqlite3 *db = db_open_ro();
        sqlite3_stmt *st = NULL;
        int64_t version = -1, evaluated = 0;
        size_t k = 0;
        int rc, r = -1;

        if (!db)
                return -1;
        if (sqlite3_prepare_v2(db,
                               "SELECT version, val_loss IS NOT NULL FROM versions ORDER BY "
                               "version DESC LIMIT 1",
                               -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
                version = sqlite3_column_int64(st, 0);
                evaluated = sqlite3_column_int64(st, 1);
        }
        sqlite3_finalize(st);
        st = NULL;
        if (version >= 0 && sqlite3_prepare_v2(db,
                                               "SELECT id FROM updates WHERE merged_into IS NULL "
                                               "AND dropped=0 AND base_version + ?1 >= ?2 ORDER "
                                               "BY id LIMIT ?3",
                                               -1, &st, NULL) == SQLITE_OK) {
                sqlite3_bind_int64(st, 1, MAX_STALENESS);
                sqlite3_bind_int64(st, 2, version);
                sqlite3_bind_int64(st, 3, BUFFER_K);
                while ((rc = sqlite3_step(st)) == SQLITE_ROW && k < BUFFER_K)
                        ret->ids[k++] = sqlite3_column_int64(st, 0);
                if (rc == SQLITE_DONE)
                        r = evaluated && k == BUFFER_K;
        }
        sqlite3_finalize(st);
        sqlite3_close(db);
        ret->version = version;
        return r;
}

/* Each merge a kill cut short was done again after the restart, once: the version after the
 * one current at the kill is made of exactly the buffer that was waiting. */
static void check_cut_merges(const cut_merge *cuts, size_t n) {
        sqlite3 *db = db_open_ro();
        sqlite3_stmt *st = NULL;

        assert_non_null(db);
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT id FROM updates WHERE merged_into=? ORDER "
                                            "BY id",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (size_t i = 0; i < n; i++) {
                size_t k = 0;
                sqlite3_reset(st);
                sqlite3_bind_int64(st, 1, cuts[i].version + 1);
                while (sqlite3_step(st) == SQLITE_ROW) {
                        int64_t id = sqlite3_column_int64(st, 0);
                        if (k >= BUFFER_K || id != cuts[i].ids[k])
                                fail_msg("version %lld holds update %lld, but the merge a kill "
                                         "cut short was of updates %lld..%lld",
                                         (long long) cuts[i].version + 1, (long long) id,
                                         (long long) cuts[i].ids[0],
                                         (long long) cuts[i].ids[BUFFER_K - 1]);
                        k++;
                }
                if (k != BUFFER_K)
                        fail_msg("version %lld: %zu updates; a kill cut its merge short with "
                                 "%d waiting",
                                 (long long) cuts[i].version + 1, k, BUFFER_K);
        }
        sqlite3_finalize(st);
        sqlite3_close(db);
}

/* A server's state after some version: parameters, optimizer state, Nesterov's count */
typedef struct {
        int64_t version;
        float *x, *m, *a;
        uint32_t count;
} opt_state;

/* ---- the versions replayed from the update log ---- */

/* Every version again from version 0 (init --seed 3) and the rows merged into it, in id order
 * as the merger took them: each row's delta rebuilt from (seed, device, seq) and decoded as
 * the server decoded it, weighted by the row's tokens and staleness, averaged and applied with
 * the store's server optimizer. The arithmetic is the library's own (merge.h; test-aggregator
 * checks it against hand computations): here the point is that the published chain is that
 * arithmetic applied once to each merged update, in order, with the optimizer state carried
 * from each version to the next across every kill. The retained versions' parameters and
 * state blobs must equal the replay bit for bit. Returns how many versions were compared;
 * pred receives the replay's state of the newest version whose blobs were pruned, the
 * predecessor of the oldest retained one (its version stays -1 when none was). */
static unsigned check_replay(const agg_settings *set, opt_state *pred) {
        size_t n = lay.n_params;
        _cleanup_free_ float *x = NULL, *m = NULL, *a = NULL, *agg = NULL, *pub = NULL;
        float *deltas[BUFFER_K] = {};
        uint64_t tokens[BUFFER_K], staleness[BUFFER_K];
        double w[BUFFER_K];
        uint32_t count = 0;
        unsigned compared = 0;
        model *mod;
        sqlite3 *db;
        sqlite3_stmt *st = NULL;
        int rc;

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
                if (v > 0 && v == V - MAX_STALENESS) {
                        pred->version = v - 1;
                        memcpy(pred->x, x, n * sizeof(float));
                        memcpy(pred->m, m, n * sizeof(float));
                        memcpy(pred->a, a, n * sizeof(float));
                        pred->count = count;
                }
                if (v > 0) {
                        size_t k = 0;
                        sqlite3_reset(st);
                        sqlite3_bind_int64(st, 1, v);
                        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                                const char *key = (const char *) sqlite3_column_text(st, 1);
                                device *d;
                                sent_update *su = sent_of_row(st, 0, v, k, &d);
                                _cleanup_free_ void *body = NULL;
                                size_t size;
                                upd_info info;
                                char err[256];
                                assert_int_equal(make_body(d, su->seq, su->base, &body, &size), 0);
                                if (upd_decode(body, size, &lay, agg_max_raw_bytes(&lay), deltas[k],
                                               &info, err, sizeof(err)) < 0)
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
                assert_int_equal(sqlite3_prepare_v2(db,
                                                    "SELECT blob, moments FROM versions "
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
                        assert_int_equal(
                                agg_blob_load_bytes(store_dir, ver.moments, 8 * n + 8, &buf, &size),
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

/* ---- each retained version recomputed from its predecessor ---- */

static uint32_t le32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

/* An update body (int8, the encoding this test sends) decoded into delta by the format of
 * update-codec.h, written apart from the codec so that a bug its encoder and decoder share
 * cannot cancel out. false, with a reason, on anything unexpected. */
static bool decode_int8(const void *body, size_t size, uint64_t base, float *delta, char *why,
                        size_t why_size) {
        unsigned long long raw_n = ZSTD_getFrameContentSize(body, size);
        _cleanup_free_ uint8_t *raw = NULL;
        const uint8_t *p, *end;

#define NEED(bytes, what)                                                                          \
        do {                                                                                       \
                if ((size_t) (end - p) < (size_t) (bytes)) {                                       \
                        snprintf(why, why_size, "truncated at %.48s", what);                       \
                        return false;                                                              \
                }                                                                                  \
        } while (0)
        if (raw_n == ZSTD_CONTENTSIZE_ERROR || raw_n == ZSTD_CONTENTSIZE_UNKNOWN ||
            raw_n > 8 * lay.n_params + 65536) {
                snprintf(why, why_size, "zstd frame content size %llu", raw_n);
                return false;
        }
        raw = malloc(raw_n ? raw_n : 1);
        if (!raw || ZSTD_decompress(raw, raw_n, body, size) != raw_n) {
                snprintf(why, why_size, "zstd: does not decompress to %llu bytes", raw_n);
                return false;
        }
        p = raw;
        end = raw + raw_n;
        NEED(24, "the header");
        if (memcmp(p, "EDUP", 4) != 0 || le32(p + 4) != 1 || le32(p + 8) != 1 ||
            (le32(p + 12) | (uint64_t) le32(p + 16) << 32) != base || le32(p + 20) != lay.n_views) {
                snprintf(why, why_size, "header: not format 1, int8, base %" PRIu64 ", %zu tensors",
                         base, lay.n_views);
                return false;
        }
        p += 24;
        for (size_t t = 0; t < lay.n_views; t++) {
                const model_view *v = &lay.views[t];
                uint32_t rows = v->ndim == 2 ? (uint32_t) v->shape[0] : 1;
                uint32_t cols = (uint32_t) v->shape[v->ndim == 2 ? 1 : 0];
                size_t len = strlen(v->name);

                NEED(2, v->name);
                if ((size_t) (p[0] | p[1] << 8) != len) {
                        snprintf(why, why_size, "tensor %zu: name length", t);
                        return false;
                }
                p += 2;
                NEED(len + 8, v->name);
                if (memcmp(p, v->name, len) != 0 || le32(p + len) != rows ||
                    le32(p + len + 4) != cols) {
                        snprintf(why, why_size, "tensor %zu: not %.48s %ux%u", t, v->name, rows,
                                 cols);
                        return false;
                }
                p += len + 8;
                NEED(4 * (size_t) rows + (size_t) rows * cols, v->name);
                const uint8_t *q = p + 4 * (size_t) rows;
                for (uint32_t r = 0; r < rows; r++) {
                        uint32_t bits = le32(p + 4 * r);
                        float scale;
                        memcpy(&scale, &bits, sizeof(scale));
                        if (!isfinite(scale) || scale < 0) {
                                snprintf(why, why_size, "%.48s: row %u: scale %g", v->name, r,
                                         (double) scale);
                                return false;
                        }
                        for (uint32_t c = 0; c < cols; c++)
                                delta[v->offset + (size_t) r * cols + c] =
                                        (float) (int8_t) q[(size_t) r * cols + c] * scale;
                }
                p = q + (size_t) rows * cols;
        }
#undef NEED
        if (p != end) {
                snprintf(why, why_size, "%zu bytes after the last tensor", (size_t) (end - p));
                return false;
        }
        return true;
}

/* A value computed in double from the server's float inputs, and a bound on how far the
 * server's float arithmetic can be from it (running error analysis, Higham, "Accuracy and
 * Stability of Numerical Algorithms", ch. 3): every float operation rounds once, by at most
 * u = 2^-24 relative (a contracted multiply-add rounds less), and carries its operands'
 * errors. u is raised a little to cover this side's own double roundings. */
typedef struct {
        double v, e;
} rv;

#define RV_U (0x1p-24 + 0x1p-44)
#define RV_TINY 0x1p-140 /* results near the subnormal range round absolutely */

static rv rv_in(float x) {
        return (rv){ x, 0 };
}

static rv rv_round(double v, double e) {
        return (rv){ v, e + RV_U * (fabs(v) + e) + RV_TINY };
}

static rv rv_add(rv a, rv b) {
        return rv_round(a.v + b.v, a.e + b.e);
}

static rv rv_mul(rv a, rv b) {
        return rv_round(a.v * b.v, fabs(a.v) * b.e + fabs(b.v) * a.e + a.e * b.e);
}

/* |b.v| > b.e */
static rv rv_div(rv a, rv b) {
        double v = a.v / b.v;
        return rv_round(v, (a.e + fabs(v) * b.e) / (fabs(b.v) - b.e));
}

static rv rv_sqrt(rv a) {
        double v = sqrt(fmax(a.v, 0)), lo = sqrt(fmax(a.v - a.e, 0));
        double e = v + lo > 0 ? fmin(a.e / (v + lo), sqrt(a.e)) : sqrt(a.e);
        return rv_round(v, e);
}

typedef struct {
        unsigned versions;     /* recomputed */
        int64_t first;         /* the oldest of them */
        size_t values;         /* parameters and optimizer state values compared */
        size_t not_nearest;    /* ... not equal to the recomputed value rounded to float */
        double max_diff;       /* the largest |stored - recomputed| */
        double max_of_bound;   /* the largest |stored - recomputed| / its bound */
        double max_bound;      /* the largest bound */
        double min_separation; /* the smallest (over versions) largest move / largest bound */
} recompute_stats;

static void compare_value(int64_t v, const char *what, size_t j, float stored, rv r,
                          recompute_stats *st) {
        double diff = fabs((double) stored - r.v);
        if (!(diff <= r.e))
                fail_msg("version %lld: %s[%zu] is %.9g; recomputed from its predecessor and its "
                         "updates: %.9g within %.3g",
                         (long long) v, what, j, (double) stored, r.v, r.e);
        st->values++;
        st->not_nearest += stored != (float) r.v;
        st->max_diff = fmax(st->max_diff, diff);
        st->max_of_bound = fmax(st->max_of_bound, diff / r.e);
        st->max_bound = fmax(st->max_bound, r.e);
}

/* Loads version v's parameters and, with state, its optimizer state (zeros without one) into
 * x, m and a (2n floats after x for fedadam's m and v or Nesterov's m and acc). */
static void load_version(sqlite3 *db, const agg_settings *set, int64_t v, model *mod,
                         opt_state *o) {
        size_t n = lay.n_params;
        sqlite3_stmt *q = NULL;
        char blob[80] = "", moments[80] = "";

        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT blob, moments FROM versions WHERE version=?",
                                            -1, &q, NULL),
                         SQLITE_OK);
        sqlite3_bind_int64(q, 1, v);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        snprintf(blob, sizeof(blob), "%s", (const char *) sqlite3_column_text(q, 0));
        if (sqlite3_column_type(q, 1) != SQLITE_NULL)
                snprintf(moments, sizeof(moments), "%s", (const char *) sqlite3_column_text(q, 1));
        sqlite3_finalize(q);
        if (agg_blob_load_model(store_dir, blob, mod) < 0)
                fail_msg("version %lld: blob %s does not load", (long long) v, blob);
        memcpy(o->x, mod->params, n * sizeof(float));
        memset(o->m, 0, n * sizeof(float));
        memset(o->a, 0, n * sizeof(float));
        o->count = 0;
        o->version = v;
        if (set->optimizer == AGG_OPT_FEDAVG || !moments[0])
                return;
        _cleanup_free_ void *buf = NULL;
        size_t size, want = 8 * n + (set->optimizer == AGG_OPT_NESTEROV ? 8 : 0);
        assert_int_equal(agg_blob_load_bytes(store_dir, moments, 8 * n + 8, &buf, &size), 0);
        if (size != want)
                fail_msg("version %lld: optimizer state of %zu bytes, not %zu", (long long) v, size,
                         want);
        memcpy(o->m, buf, n * sizeof(float));
        memcpy(o->a, (const float *) buf + n, n * sizeof(float));
        if (set->optimizer == AGG_OPT_NESTEROV)
                memcpy(&o->count, (const char *) buf + 8 * n + 4, sizeof(o->count));
}

/* Every retained version v >= 1 recomputed from version v-1 (its blobs; the replay's state
 * for the oldest retained version, whose predecessor was pruned) and the K updates the update
 * log says were merged into v, with arithmetic of this test's own: the bodies rebuilt from
 * (seed, device, seq) and decoded by decode_int8 (which must agree with the codec bit for
 * bit), the FedBuff weights tokens_i / sqrt(1 + staleness_i) / sum(tokens) with the tokens and
 * staleness the devices sent, their weighted sum in double, and the server optimizer of
 * merge.h. The stored parameters and optimizer state must lie within the rounding bound of
 * the server's float arithmetic around that value (rv: about 2^-24 times the magnitudes that
 * went into each value, cancellation included); and
 * each version must move its parameters by far more than that bound, so that a wrong buffer,
 * weight or optimizer step cannot hide inside it. */
static void check_recompute(const agg_settings *set, const opt_state *pred, recompute_stats *st) {
        size_t n = lay.n_params;
        _cleanup_free_ float *px = malloc(n * sizeof(float)), *pm = malloc(n * sizeof(float)),
                             *pa = malloc(n * sizeof(float)), *cx = malloc(n * sizeof(float)),
                             *cm = malloc(n * sizeof(float)), *ca = malloc(n * sizeof(float)),
                             *check = malloc(n * sizeof(float));
        opt_state prev = { .x = px, .m = pm, .a = pa }, cur = { .x = cx, .m = cm, .a = ca };
        float *deltas[BUFFER_K] = {};
        uint32_t period =
                set->server_momentum_period > 0 ? (uint32_t) set->server_momentum_period : 1;
        rv lr = rv_in(agg_settings_server_lr(set)), mu = rv_in(set->server_momentum);
        rv b1 = rv_in(AGG_ADAM_B1), b2 = rv_in(AGG_ADAM_B2), eps = rv_in(set->server_adam_eps);
        rv c1 = rv_add(rv_in(1.0f), rv_in(-AGG_ADAM_B1)),
           c2 = rv_add(rv_in(1.0f), rv_in(-AGG_ADAM_B2));
        rv nstep = rv_div(lr, rv_in((float) period));
        sqlite3_stmt *q = NULL;
        model *mod;
        sqlite3 *db;
        int rc;

        assert_true(px && pm && pa && cx && cm && ca && check);
        *st = (recompute_stats){ .min_separation = INFINITY };
        for (int i = 0; i < BUFFER_K; i++) {
                deltas[i] = malloc(n * sizeof(float));
                assert_non_null(deltas[i]);
        }
        assert_int_equal(model_new(&lay.cfg, 1, 1, &mod), 0);
        db = db_open_ro();
        assert_non_null(db);
        int64_t V = db_scalar(db, "SELECT max(version) FROM versions");
        int64_t first = MAX(V - MAX_STALENESS, (int64_t) 1);
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT id, device, idem_key, tokens, scale FROM "
                                            "updates WHERE merged_into=? ORDER BY id",
                                            -1, &q, NULL),
                         SQLITE_OK);
        st->first = first;
        for (int64_t v = first; v <= V; v++) {
                uint64_t tokens[BUFFER_K], total = 0;
                double w[BUFFER_K];
                size_t k = 0;

                /* the predecessor */
                if (v - 1 >= V - MAX_STALENESS)
                        load_version(db, set, v - 1, mod, &prev);
                else {
                        assert_int_equal(pred->version, v - 1);
                        memcpy(prev.x, pred->x, n * sizeof(float));
                        memcpy(prev.m, pred->m, n * sizeof(float));
                        memcpy(prev.a, pred->a, n * sizeof(float));
                        prev.count = pred->count;
                }
                /* its K updates, as the devices sent them */
                sqlite3_reset(q);
                sqlite3_bind_int64(q, 1, v);
                while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
                        const char *key = (const char *) sqlite3_column_text(q, 2);
                        device *d;
                        sent_update *su = sent_of_row(q, 1, v, k, &d);
                        _cleanup_free_ void *body = NULL;
                        size_t size;
                        upd_info info;
                        char why[256];

                        if (su->base > (uint64_t) v - 1)
                                fail_msg("version %lld holds %s, based on version %" PRIu64,
                                         (long long) v, key, su->base);
                        /* the tokens header the device sent; no clipping at these norms */
                        tokens[k] = tokens_of(su);
                        if ((uint64_t) sqlite3_column_int64(q, 3) != tokens[k] ||
                            sqlite3_column_double(q, 4) != 1.0)
                                fail_msg("%s: stored with %lld tokens and scale %g; sent %" PRIu64
                                         " tokens, far below MaxUpdateNorm",
                                         key, (long long) sqlite3_column_int64(q, 3),
                                         sqlite3_column_double(q, 4), tokens[k]);
                        total += tokens[k];
                        w[k] = (double) tokens[k] /
                               sqrt(1.0 + (double) ((uint64_t) v - 1 - su->base));
                        assert_int_equal(make_body(d, su->seq, su->base, &body, &size), 0);
                        if (!decode_int8(body, size, su->base, deltas[k], why, sizeof(why)))
                                fail_msg("%s: %s", key, why);
                        if (upd_decode(body, size, &lay, agg_max_raw_bytes(&lay), check, &info, why,
                                       sizeof(why)) < 0)
                                fail_msg("%s: the codec refuses it: %s", key, why);
                        if (memcmp(check, deltas[k], n * sizeof(float)) != 0)
                                fail_msg("%s: the codec decodes it differently", key);
                        k++;
                }
                assert_int_equal(rc, SQLITE_DONE);
                if (k != BUFFER_K)
                        fail_msg("version %lld: %zu updates merged into it", (long long) v, k);
                for (size_t i = 0; i < k; i++)
                        w[i] /= (double) total;

                load_version(db, set, v, mod, &cur);
                bool momentum = prev.count + 1 >= period;
                if (set->optimizer == AGG_OPT_NESTEROV &&
                    cur.count != (momentum ? 0 : prev.count + 1))
                        fail_msg("version %lld: Nesterov count %u after %u (period %u)",
                                 (long long) v, cur.count, prev.count, period);
                double moved = 0, bound = 0;
                for (size_t j = 0; j < n; j++) {
                        double A = 0, S = 0;
                        for (size_t i = 0; i < k; i++) {
                                A += w[i] * (double) deltas[i][j];
                                S += fabs(w[i] * (double) deltas[i][j]);
                        }
                        /* the server's sum in double, rounded to float */
                        rv g = rv_round(A, (4 * BUFFER_K + 8) * 0x1p-53 * S), x = rv_in(prev.x[j]);
                        if (set->optimizer == AGG_OPT_FEDAVG)
                                x = rv_add(x, rv_mul(lr, g));
                        else if (set->optimizer == AGG_OPT_FEDADAM) {
                                rv m = rv_add(rv_mul(b1, rv_in(prev.m[j])), rv_mul(c1, g));
                                rv s = rv_add(rv_mul(b2, rv_in(prev.a[j])),
                                              rv_mul(rv_mul(c2, g), g));
                                x = rv_add(x, rv_div(rv_mul(lr, m), rv_add(rv_sqrt(s), eps)));
                                compare_value(v, "m", j, cur.m[j], m, st);
                                compare_value(v, "v", j, cur.a[j], s, st);
                        } else {
                                rv m = rv_in(prev.m[j]), acc = rv_add(rv_in(prev.a[j]), g);
                                x = rv_add(x, rv_mul(nstep, g));
                                if (momentum) {
                                        m = rv_add(rv_mul(mu, m),
                                                   rv_div(acc, rv_in((float) period)));
                                        x = rv_add(x, rv_mul(rv_mul(lr, mu), m));
                                        acc = (rv){ 0, 0 };
                                }
                                compare_value(v, "m", j, cur.m[j], m, st);
                                compare_value(v, "acc", j, cur.a[j], acc, st);
                        }
                        compare_value(v, "parameter", j, cur.x[j], x, st);
                        moved = fmax(moved, fabs((double) cur.x[j] - (double) prev.x[j]));
                        bound = fmax(bound, x.e);
                }
                st->min_separation = fmin(st->min_separation, moved / bound);
                st->versions++;
        }
        sqlite3_finalize(q);
        sqlite3_close(db);
        for (int i = 0; i < BUFFER_K; i++)
                free(deltas[i]);
        model_free(mod);
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
        unsigned aim_every;    /* every aim_every-th kill comes just after a merge became due */
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

static cut_merge *cuts; /* the merges this run's kills cut short; freed by run_teardown */
static size_t n_cuts;

static void kill9_run(const crash_run *run) {
        char out[4096], token[AGG_ID_HEX], optimizer[48];
        unsigned port, kills = 0, kills_aimed = 0, kills_unpublished = 0, kills_unread = 0;
        uint64_t rng = arg_seed * 0x2545f4914f6cdd1dULL + 17;
        double max_restart = 0;
        name_set seen = {};
        _cleanup_free_ agg_settings *set = NULL;
        opt_state pred = {};
        pid_t pid;
        int status;

        if (access(agg_bin, X_OK) < 0)
                TEST_SKIP("%.100s is not there (build it, or set EDGE_AGGREGATOR_BIN)", agg_bin);
        set = malloc(sizeof(*set));
        assert_non_null(set);
        keep_dir = true; /* until every check passed */
        run_begin(run->optimizer);
        cuts = calloc(arg_kills, sizeof(*cuts));
        n_cuts = 0;
        assert_non_null(cuts);

        /* the store: tiny model, K = 3, int8, a small validation file */
        FILE *f = fopen(val_path, "we");
        assert_non_null(f);
        for (int i = 0; i < 60; i++)
                fprintf(f, "held-out line %d: pack my box with five dozen liquor jugs\n", i);
        assert_int_equal(fclose(f), 0);
        char buffer[16], staleness[32];
        snprintf(buffer, sizeof(buffer), "%d", BUFFER_K);
        snprintf(staleness, sizeof(staleness), "MaxStaleness=%d", MAX_STALENESS);
        if (run_tool(out, sizeof(out), "init", "--config", "tiny", "--buffer", buffer, "--encoding",
                     "int8", "--seed", "3", "--validation", val_path, (char *) NULL) != 0) {
                print_log_tail();
                fail_msg("edge-aggregator init failed");
        }
        snprintf(optimizer, sizeof(optimizer), "ServerOptimizer=%s", run->optimizer);
        assert_int_equal(run_tool(out, sizeof(out), "set", "RateLimitPerSec=100000",
                                  "RateLimitBurst=100000", staleness, optimizer, (char *) NULL),
                         0);
        assert_int_equal(
                run_tool(out, sizeof(out), "token", "create", "--uses", "3", (char *) NULL), 0);
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
                assert_int_equal(pthread_create(&devices[i].thread, NULL, device_main, &devices[i]),
                                 0);

        /* the killer */
        double t_start = now_s();
        while (kills < arg_kills && now_s() - t_start < test_limit_s(KILL_PHASE_MAX_S)) {
                bool aim = run->aim_every && kills % run->aim_every == run->aim_every - 1;
                double up_ms = aim ? test_limit_s(AIM_WAIT_MAX_MS)
                                   : KILL_MIN_MS + (KILL_MAX_MS - KILL_MIN_MS) * uniform(&rng);
                double t_up = now_s();
                bool died = false;
                while ((now_s() - t_up) * 1000 < up_ms) {
                        if (waitpid(pid, &status, WNOHANG) == pid) {
                                srv_pid = 0;
                                died = true;
                                break;
                        }
                        cut_merge scratch;
                        if (aim && merge_underway(&scratch) > 0) {
                                /* kill in the merge's first moments */
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
                        int cut = merge_underway(&cuts[n_cuts]);
                        kills_unread += cut < 0;
                        n_cuts += cut > 0;
                        /* the blobs prove a merge was under way: the store must say so too */
                        if (fresh > 0 && cut == 0) {
                                stop_clients();
                                fail_msg("kill %u left a version's blobs uncommitted, but no "
                                         "merge under way in the store",
                                         kills);
                        }
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
        while ((pending = pending_now()) >= BUFFER_K &&
               now_s() - t_drain < test_limit_s(DRAIN_MAX_S))
                sleep_ms(50);
        sleep_ms(test_limit_s(SETTLE_MS));
        double drain = now_s() - t_drain;
        if (pending >= BUFFER_K) {
                sqlite3 *db = db_open_ro();
                sqlite3_stmt *st = NULL;
                char integrity[256] = "?";
                if (db &&
                    sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW)
                        snprintf(integrity, sizeof(integrity), "%s", sqlite3_column_text(st, 0));
                sqlite3_finalize(st);
                sqlite3_close(db);
                print_log_tail();
                fail_msg("%lld updates still waiting after %.0f s; integrity_check: %s",
                         (long long) pending, test_limit_s(DRAIN_MAX_S), integrity);
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
        check_cut_merges(cuts, n_cuts);
        {
                /* the settings as the server read them */
                agg_store *s;
                assert_int_equal(agg_store_open(store_dir, &s), 0);
                assert_int_equal(agg_store_load_settings(s, set), 0);
                agg_store_free(s);
        }
        pred = (opt_state){ .version = -1,
                            .x = malloc(lay.n_params * sizeof(float)),
                            .m = malloc(lay.n_params * sizeof(float)),
                            .a = malloc(lay.n_params * sizeof(float)) };
        assert_true(pred.x && pred.m && pred.a);
        unsigned replayed = check_replay(set, &pred);
        recompute_stats rs;
        check_recompute(set, &pred, &rs);

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

        printf("%s, seed %" PRIu64 ": %u kills in %.1f s (%u aimed at a merge; restart at most "
               "%.2f s)\n",
               run->optimizer, arg_seed, kills, kill_phase, kills_aimed, max_restart);
        printf("kills during a merge: %zu (a full buffer waited uncommitted; %u of them after "
               "the version's blobs were written); each merge redone once after the restart "
               "with the same %d updates%s\n",
               n_cuts, kills_unpublished, BUFFER_K,
               kills_unread ? " (the store unreadable after some kills)" : "");
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
        printf("versions %lld..%u recomputed each from its predecessor and its %d updates: "
               "%zu values within the float rounding bound: max |difference| %.3g (bounds up to "
               "%.3g; at most %.4f of its bound; %zu not the float nearest the exact value); "
               "each version moved its parameters >= %.0fx the bound\n",
               (long long) rs.first, versions, BUFFER_K, rs.values, rs.max_diff, rs.max_bound,
               rs.max_of_bound, rs.not_nearest, rs.min_separation);
        assert_true(kills >= MIN(arg_kills, 20u));
        /* kills during uploads alone would leave the merge's crash safety untested */
        if (n_cuts == 0)
                fail_msg("none of the %u kills came during a merge (%u aimed at one)", kills,
                         kills_aimed);
        assert_int_equal(rows, acked);
        assert_true(replayed >= MIN(versions + 1, (unsigned) MAX_STALENESS + 1));
        if (versions == 0)
                fail_msg("no version was published: nothing to recompute");
        assert_int_equal(rs.versions, MIN(versions, (unsigned) MAX_STALENESS + 1));
        /* else the tolerance could hide a wrong buffer, weight or step */
        if (rs.min_separation < 100)
                fail_msg("a version moved its parameters by only %.0fx the rounding bound",
                         rs.min_separation);
        free(pred.x);
        free(pred.m);
        free(pred.a);
        free(seen.names);
        keep_dir = false;
}

static void test_kill9_fedavg(void **state) {
        kill9_run(&(crash_run){ .optimizer = "fedavg", .aim_every = 4 });
}

static void test_kill9_fedadam(void **state) {
        kill9_run(&(crash_run){ .optimizer = "fedadam", .aim_every = 2 });
}

static void test_kill9_nesterov(void **state) {
        kill9_run(&(crash_run){ .optimizer = "nesterov", .aim_every = 2 });
}

/* $EDGE_AGGREGATOR_BIN; else the one of this test's own build (BUILD/tests/<this> ->
 * BUILD/edge-aggregator), so that the sanitizer build tests its own server; else the one next
 * to $EDGED_BIN (tests/run-tests sets it). */
static void find_binary(void) {
        const char *bin = getenv("EDGE_AGGREGATOR_BIN"), *edged = getenv("EDGED_BIN");
        char self[sizeof(agg_bin) - 32];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

        if (n > 0) {
                char *cut;
                self[n] = 0;
                for (int i = 0; i < 2 && (cut = strrchr(self, '/')); i++)
                        *cut = 0;
                snprintf(agg_bin, sizeof(agg_bin), "%s/edge-aggregator", self);
        }
        if (bin)
                snprintf(agg_bin, sizeof(agg_bin), "%s", bin);
        else if (n > 0 && access(agg_bin, X_OK) == 0)
                return;
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
        free(cuts);
        cuts = NULL;
        n_cuts = 0;
        if (keep_dir) {
                fprintf(stderr,
                        "keeping %s/%s (store, server.log) for inspection; seed %" PRIu64 "\n",
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
        printf("server: %s\n", agg_bin);
        return test_run_group("test-aggregator-crash", tests, setup, teardown);
}
