/* SPDX-License-Identifier: MIT */
/* The whole daemon against a hostile aggregator: the real edged, in the foreground on a fake
 * machine and federated with a libmicrohttpd server in this process (127.0.0.1, an ephemeral
 * port) that, phase by phase, sends oversized, endless, truncated, wrong-shape, NaN-filled,
 * badly hashed, garbage-JSON, header-flooding, slow-loris, 5xx and redirecting answers (the
 * first enrollments are garbage too). After every phase the daemon must be alive and
 * answering on its control socket within STATUS_LATENCY_MAX_S, still train from the last good
 * model (version 1, whose file stays), keep no refused model as a model-<v>.safetensors file,
 * and stay under its memory bound; at the end it must take a good new version, exit cleanly
 * on SIGTERM, leave a valid checkpoint based on that version, have sent nothing to the
 * redirect target and written nothing outside its state directory (HOME, TMPDIR and the
 * working directory point at a watched empty directory; the machine root is compared before
 * and after). A second run is a fresh device whose very first model is NaN-filled.
 *
 * Memory bound: VmHWM at most MEM_BOUND_MIB above what it was after the first good round.
 * The daemon's documented limits make the hostile bodies cost almost nothing: JSON replies
 * are capped at 64 KiB (fedclient.c FED_JSON_MAX) and headers at curl's 300 KiB, model bodies
 * stream to a .part file and are cut at the task's model_bytes, which must fit the task's
 * config (federation.c: tensors plus at most 1 MiB of header), and a model is loaded only
 * once its size and SHA-256 match and its config is the trainer's (tiny: 1.7 MB). The
 * hostile bodies offered are far larger than the bound (256 MiB, 72 MB of headers, endless).
 *
 * About two minutes, 35 s of it the slow-loris phase: the daemon gives up on a download
 * below 1 KiB/s for 30 s (fedclient.c), and there is no knob to shorten that.
 * EDGED_HOSTILE_ONLY=text runs only the phases whose name has it; EDGED_TEST_KEEP_LOG=path
 * keeps a copy of the daemon's log. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"
#include "test-cpu-group.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>

#include "checkpoint.h"
#include "fileio.h"
#include "hash.h"
#include "macros.h"
#include "model.h"
#include "safetensors.h"
#include "test-files.h"
#include "daemon-harness.h"

#define TOKEN "hostile-fleet-token-42"
#define DEVICE_ID "0123456789abcdef0123456789abcdef"
#define SECRET "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e7abcd"
#define MEM_BOUND_MIB 64
#define ENDLESS ((uint64_t) 512 << 20) /* what "endless" bodies send at most */
#define HUGE_CL ((uint64_t) 256 << 20)
#define SLOW_BYTE_MS 2000 /* slow-loris: one byte every 2 s */
#define PHASE_TIMEOUT_S 20.0
#define GARBAGE_TIMEOUT_S 30.0 /* about one garbage answer per round of the daemon (3 s) */
#define SLOW_TIMEOUT_S 50.0    /* the daemon's stall limit is 30 s (fedclient.c) */
#define STATUS_LATENCY_MAX_S 2.0
#define STATE_BYTES_MAX ((uint64_t) 64 << 20)
#define PADDING ((uint64_t) 96 << 20)
#define JUNK_HEADERS 800 /* of JUNK_HEADER_SIZE bytes: under curl's limit for one header */
#define JUNK_HEADER_SIZE 90000
#define PADDED_SERVED_MAX ((uint64_t) 16 << 20)

typedef enum {
        K_GOOD,
        K_OVER_CL,       /* Content-Length 256 MiB, then zeros */
        K_OVER_CHUNKED,  /* no Content-Length, zeros without end */
        K_OVER_DECLARED, /* the task itself declares a 2 GiB model */
        K_PADDED,        /* the task declares 96 MiB more than its config's model has */
        K_TRUNCATED,     /* the body breaks off halfway; resumed ranges break at once */
        K_SHORT_CL,      /* Content-Length shorter than the task's model_bytes */
        K_SHAPE,         /* a transposed tensor, right hash */
        K_NAMES,         /* a renamed tensor, right hash */
        K_CONFIG,        /* a valid model of another, larger config */
        K_NAN,           /* all NaN, right hash */
        K_INF,           /* some +Inf, right hash */
        K_BAD_SHA,       /* other bytes than the task's SHA-256 */
        K_BAD_RANGE,     /* 206 with a bogus Content-Range, 416, 304, odd ETags */
        K_GARBAGE,       /* garbage JSON in task, update and telemetry replies */
        K_SLOW,          /* the model body one byte every SLOW_BYTE_MS */
        K_5XX,           /* 500/503 everywhere */
        K_REDIRECT,      /* 301/302/307/308 to another server */
        K_HEADERS,       /* 72 MB of response headers on the task */
} kind;

typedef struct {
        uint8_t *data;
        size_t size;
        char hex[HASH_SHA256_HEX];
} blob;

static blob good1, good2, b_shape, b_names, b_wide, b_nan, b_inf;

static struct {
        pthread_mutex_t lock;
        struct MHD_Daemon *d, *other;
        unsigned port, other_port;
        atomic_bool stopping;
        atomic_uint_least64_t served; /* body bytes handed to MHD */
        atomic_uint phase;

        kind k;
        uint64_t good_version, hostile_version; /* hostile 0: none announced */
        const blob *good;

        unsigned hits; /* hostile answers served in this phase */
        unsigned n_task;
        unsigned n_req, req_at_hit; /* requests of any kind; their count at the first hit */
        double last_hit;
        unsigned n_enroll, n_model, n_update, n_telemetry, rot, garbage_served;
        unsigned other_hits, other_auth; /* requests to the redirect target, with credentials */
        uint64_t update_id;
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

static char root[512], conf[600], state_parent[600], state[700], watch[600], control[100],
        log_path[600], bin[PATH_MAX];
static pid_t pid;
static char *root_before;

/* ---- blobs ---- */

static void blob_from_file(blob *b, const char *path) {
        void *data = NULL;
        assert_int_equal(read_full_file(path, (size_t) 1 << 30, &data, &b->size), 0);
        b->data = data;
        assert_int_equal(hash_sha256_file_hex(path, b->hex), 0);
}

/* A tiny model as the aggregator publishes it (no optimizer state), after fill. */
static void make_model_blob(blob *b, const model_config *cfg, uint64_t seed, uint64_t version,
                            void (*fill)(model *m)) {
        _cleanup_free_ char *path = test_tmp_path("blob.safetensors");
        model *m = NULL;

        assert_int_equal(model_new(cfg, 1, 1, &m), 0);
        model_init_params(m, seed);
        if (fill)
                fill(m);
        assert_int_equal(ckpt_save(path, m, NULL, &(ckpt_state){ .model_version = version }), 0);
        model_free(m);
        blob_from_file(b, path);
        unlink(path);
}

static void fill_nan(model *m) {
        for (size_t i = 0; i < m->layout.n_params; i++)
                m->params[i] = NAN;
}

static void fill_inf(model *m) {
        for (size_t i = 0; i < m->layout.n_params; i += 97)
                m->params[i] = INFINITY;
}

/* The tiny model's tensors with the checkpoint's metadata, but view 0 transposed (shape) or
 * one tensor renamed (names): only the tensors are wrong, the header is well-formed. */
static void make_bad_tensor_blob(blob *b, bool rename) {
        _cleanup_free_ char *path = test_tmp_path("bad.safetensors");
        model_config cfg;
        model *m = NULL;
        st_tensor t[MODEL_MAX_VIEWS];
        char evil[MODEL_NAME_MAX + 8];

        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, 7);
        const model_layout *lay = &m->layout;
        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                t[i] = (st_tensor){ .name = v->name,
                                    .dtype = ST_F32,
                                    .ndim = (unsigned) v->ndim,
                                    .shape = { (uint64_t) v->shape[0], (uint64_t) v->shape[1] },
                                    .data = m->params + v->offset,
                                    .nbytes = v->numel * sizeof(float) };
        }
        if (rename) {
                snprintf(evil, sizeof(evil), "%s.evil", lay->views[3].name);
                t[3].name = evil;
        } else {
                t[0].shape[0] = (uint64_t) lay->views[0].shape[1];
                t[0].shape[1] = (uint64_t) lay->views[0].shape[0];
        }
        const st_meta meta[] = {
                { "format", CKPT_FORMAT }, { "config", "tiny" },   { "block_size", "128" },
                { "n_embd", "128" },       { "n_layer", "2" },     { "n_head", "4" },
                { "step", "0" },           { "data_cursor", "0" }, { "model_version", "9" },
                { "adam_t", "0" },
        };
        assert_int_equal(st_write(path, t, lay->n_views, meta, ARRAY_SIZE(meta)), 0);
        model_free(m);
        blob_from_file(b, path);
        unlink(path);
}

/* ---- the hostile server ---- */

typedef struct {
        const uint8_t *data; /* NULL: zeros */
        size_t avail;        /* bytes of data; beyond, zeros */
        uint64_t limit;      /* end of stream */
        uint64_t start;      /* of data, for 206 */
        uint64_t break_at;   /* > 0: the connection breaks here */
        unsigned trickle_ms;
        unsigned phase; /* trickles end with their phase, as a stalled peer would be cut off */
        uint8_t *owned;
} body_reader;

static ssize_t read_body(void *cls, uint64_t pos, char *buf, size_t max) {
        body_reader *b = cls;
        size_t n;

        if (atomic_load(&srv.stopping))
                return MHD_CONTENT_READER_END_WITH_ERROR;
        if (b->break_at > 0 && pos >= b->break_at)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        if (pos >= b->limit)
                return MHD_CONTENT_READER_END_OF_STREAM;
        n = (size_t) MIN((uint64_t) max, b->limit - pos);
        if (b->break_at > 0)
                n = (size_t) MIN((uint64_t) n, b->break_at - pos);
        if (b->trickle_ms) {
                for (unsigned i = 0; i < b->trickle_ms / 50 && !atomic_load(&srv.stopping); i++)
                        usleep(50 * 1000);
                if (atomic_load(&srv.phase) != b->phase)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
                n = 1;
        }
        for (size_t i = 0; i < n; i++) {
                uint64_t p = b->start + pos + i;
                buf[i] = (char) (b->data && p < b->avail ? b->data[p] : 0);
        }
        atomic_fetch_add(&srv.served, n);
        return (ssize_t) n;
}

static void free_reader(void *cls) {
        body_reader *b = cls;
        free(b->owned);
        free(b);
}

/* size: the Content-Length (MHD_SIZE_UNKNOWN: chunked); the reader decides what follows. */
static enum MHD_Result send_reader(struct MHD_Connection *conn, int status, uint64_t size,
                                   body_reader *b, const char *ctype, const char *h1,
                                   const char *v1, const char *h2, const char *v2) {
        body_reader *copy = malloc(sizeof(*copy));
        struct MHD_Response *resp;
        enum MHD_Result ret;

        assert_non_null(copy);
        *copy = *b;
        resp = MHD_create_response_from_callback(size, 16384, read_body, copy, free_reader);
        assert_non_null(resp);
        if (ctype)
                MHD_add_response_header(resp, "Content-Type", ctype);
        if (h1)
                MHD_add_response_header(resp, h1, v1);
        if (h2)
                MHD_add_response_header(resp, h2, v2);
        ret = MHD_queue_response(conn, (unsigned) status, resp);
        MHD_destroy_response(resp);
        return ret;
}

/* Takes text (malloc'd). */
static enum MHD_Result send_owned(struct MHD_Connection *conn, int status, char *text, size_t size,
                                  const char *h1, const char *v1) {
        body_reader b = {
                .data = (uint8_t *) text, .avail = size, .limit = size, .owned = (uint8_t *) text
        };
        return send_reader(conn, status, size, &b, "application/json", h1, v1, NULL, NULL);
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, const char *text) {
        return send_owned(conn, status, strdup(text), strlen(text), NULL, NULL);
}

static char *repeat(char c, size_t n, const char *prefix, const char *suffix) {
        size_t lp = strlen(prefix), ls = strlen(suffix);
        char *s = malloc(lp + n + ls + 1);
        assert_non_null(s);
        memcpy(s, prefix, lp);
        memset(s + lp, c, n);
        memcpy(s + lp + n, suffix, ls + 1);
        return s;
}

#define HYPER "\"local_steps\": 5, \"batch\": 4, \"lr\": 0.001"

/* hyper: the local_steps, batch and lr members; extra: more members (a repeated key makes
 * the reply invalid JSON for the daemon, which rejects duplicates). */
static char *task_json(uint64_t version, const char *name, const char *config, const blob *b,
                       uint64_t bytes, const char *hyper, const char *extra) {
        char *s;
        assert_true(asprintf(&s,
                             "{\"version\": %" PRIu64 ", \"model\": \"%s\"%s%s,"
                             " \"model_sha256\": \"%s\", \"model_bytes\": %" PRIu64 ", %s,"
                             " \"weight_decay\": 0, \"encoding\": \"int8\","
                             " \"max_staleness\": 100, \"report_interval_s\": 1%s}",
                             version, name, config ? ", \"config\": " : "", config ? config : "",
                             b->hex, bytes, hyper ? hyper : HYPER, extra ? extra : "") > 0);
        return s;
}

/* In the order served: a run gets through the first five or six. */
static const char *const garbage_names[] = {
        "1 MiB of '['",       "60000-deep nesting", "wrong types",      "out-of-range numbers",
        "path as model name", "integer overflow",   "60 KB model name", "binary bytes",
        "negative version",   "empty body",         "duplicate keys",   "huge local_steps",
};

/* Garbage variant i of the task reply (status 200). */
static char *garbage_task(unsigned i, size_t *ret_size) {
        char *s = NULL;

        switch (i % ARRAY_SIZE(garbage_names)) {
        case 0:
                s = repeat('[', 1 << 20, "", "");
                break;
        case 1:
                s = repeat('[', 60000, "{\"version\":", "");
                break;
        case 2:
                s = strdup(
                        "{\"version\": \"1\", \"model\": 7, \"model_sha256\": [], \"model_bytes\": "
                        "{}, \"local_steps\": \"many\", \"lr\": true, \"policy\": []}");
                break;
        case 3:
                s = task_json(1, "tiny", NULL, &good1, good1.size,
                              "\"local_steps\": -5, \"batch\": 0, \"lr\": 1e308", NULL);
                break;
        case 4:
                /* valid in all but taste: the name must not become a path anywhere */
                s = task_json(
                        1, "../../../x",
                        "{\"block_size\": 128, \"n_embd\": 128, \"n_layer\": 2, \"n_head\": 4}",
                        &good1, good1.size, NULL, NULL);
                break;
        case 5:
                s = strdup("{\"version\": 99999999999999999999999999, \"model_bytes\": 1e999}");
                break;
        case 6:
                s = repeat('A', 60000, "{\"version\": 1, \"model\": \"", "\"}");
                break;
        case 7:
                s = malloc(4096);
                assert_non_null(s);
                for (int k = 0; k < 4096; k++)
                        s[k] = (char) (k * 131 + 7);
                *ret_size = 4096;
                return s;
        case 8:
                s = task_json((uint64_t) -1, "tiny", NULL, &good1, good1.size, NULL, NULL);
                break;
        case 9:
                s = strdup("");
                break;
        case 10:
                s = task_json(1, "tiny", NULL, &good1, good1.size, NULL,
                              ", \"version\": 5, \"model_bytes\": 1");
                break;
        case 11:
                s = task_json(1, "tiny", NULL, &good1, good1.size,
                              "\"local_steps\": 1000000000000, \"batch\": 4, \"lr\": -0.5", NULL);
                break;
        }
        assert_non_null(s);
        *ret_size = strlen(s);
        return s;
}

static void hit(void) {
        if (srv.hits++ == 0)
                srv.req_at_hit = srv.n_req;
        srv.last_hit = harness_now();
}

static const blob *hostile_blob(kind k) {
        switch (k) {
        case K_SHAPE:
                return &b_shape;
        case K_NAMES:
                return &b_names;
        case K_CONFIG:
                return &b_wide;
        case K_NAN:
                return &b_nan;
        case K_INF:
                return &b_inf;
        case K_BAD_SHA:
                return &good1; /* the task says good1's hash; the body is good2 */
        default:
                return &good2;
        }
}

static enum MHD_Result serve_task(struct MHD_Connection *conn, const char *inm) {
        char etag[64], *body;
        size_t size;
        kind k;
        uint64_t v, hv;
        const blob *g;

        pthread_mutex_lock(&srv.lock);
        srv.n_task++;
        k = srv.k, v = srv.good_version, hv = srv.hostile_version, g = srv.good;
        unsigned n = srv.n_task, rot = srv.rot;
        if (k == K_5XX)
                hit();
        if (k == K_GARBAGE && n % 3 != 0) {
                hit();
                srv.rot++;
                srv.garbage_served = MAX(srv.garbage_served, srv.rot);
        }
        if (k == K_REDIRECT && n % 3 == 0)
                hit();
        if (k == K_HEADERS)
                hit();
        if (k == K_OVER_DECLARED || k == K_PADDED || k == K_CONFIG)
                hit(); /* the model need not be asked for: the task says enough */
        pthread_mutex_unlock(&srv.lock);

        if (k == K_5XX)
                return n % 2 ? send_json(conn, 503, "<html>Service Unavailable</html>")
                             : send_json(conn, 500, "{\"error\": 5}");
        if (k == K_GARBAGE && n % 3 != 0) {
                body = garbage_task(rot, &size);
                return send_owned(conn, 200, body, size, "ETag", rot % 3 ? "\"g\"" : "\x01\x7f");
        }
        if (k == K_HEADERS) {
                char *junk = repeat('h', JUNK_HEADER_SIZE, "", ""), name[32];
                struct MHD_Response *resp =
                        MHD_create_response_from_buffer(2, (void *) "{}", MHD_RESPMEM_PERSISTENT);
                assert_non_null(resp);
                for (int i = 0; i < JUNK_HEADERS; i++) {
                        snprintf(name, sizeof(name), "X-Junk-%d", i);
                        MHD_add_response_header(resp, name, junk);
                }
                free(junk);
                enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
                MHD_destroy_response(resp);
                return ret;
        }
        if (k == K_REDIRECT && n % 3 == 0) {
                char loc[128];
                snprintf(loc, sizeof(loc), "http://localhost:%u/v1/task", srv.other_port);
                body = strdup("{}");
                return send_owned(conn, 302, body, 2, "Location", loc);
        }
        if (hv) {
                const blob *b = hostile_blob(k);
                uint64_t bytes = k == K_OVER_DECLARED ? (uint64_t) 2 << 30
                                 : k == K_PADDED      ? good2.size + PADDING
                                 : k == K_BAD_SHA     ? good2.size
                                                      : b->size;
                const char *cfg =
                        k == K_CONFIG ? "{\"block_size\": 128, \"n_embd\": 256, \"n_layer\": 4, "
                                        "\"n_head\": 4}"
                                      : NULL;
                v = hv;
                body = task_json(hv, k == K_CONFIG ? "wide" : "tiny", cfg, b, bytes, NULL, NULL);
        } else
                body = task_json(v, "tiny", NULL, g, g->size, NULL, NULL);
        /* a weak ETag per body: the daemon's If-None-Match gets a 304 as from the real one */
        snprintf(etag, sizeof(etag), "\"%" PRIu64 "-%d\"", v, (int) k);
        if (k == K_BAD_RANGE)
                snprintf(
                        etag, sizeof(etag), "\"%" PRIu64 "-%s\"", v,
                        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"); /* too long to keep */
        if (inm && strcmp(inm, etag) == 0) {
                free(body);
                return send_owned(conn, 304, strdup(""), 0, "ETag", etag);
        }
        return send_owned(conn, 200, body, strlen(body), "ETag", etag);
}

static enum MHD_Result serve_good_model(struct MHD_Connection *conn, const blob *b,
                                        const char *range) {
        char etag[80], cr[96];
        uint64_t start = 0;
        body_reader r = { .data = b->data, .avail = b->size, .limit = b->size };

        snprintf(etag, sizeof(etag), "\"%s\"", b->hex);
        if (range && sscanf(range, "bytes=%" SCNu64 "-", &start) == 1 && start < b->size) {
                snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%zu/%zu", start, b->size - 1, b->size);
                r.start = start;
                r.limit = b->size - start;
                return send_reader(conn, 206, r.limit, &r, "application/octet-stream",
                                   "Content-Range", cr, "ETag", etag);
        }
        return send_reader(conn, 200, b->size, &r, "application/octet-stream", "ETag", etag,
                           "Accept-Ranges", "bytes");
}

static enum MHD_Result serve_model(struct MHD_Connection *conn, uint64_t version,
                                   const char *range) {
        char loc[128];
        kind k;
        uint64_t hv, gv;
        const blob *g;

        pthread_mutex_lock(&srv.lock);
        srv.n_model++;
        k = srv.k, hv = srv.hostile_version, gv = srv.good_version, g = srv.good;
        unsigned n = srv.n_model;
        if (hv && version == hv && k != K_OVER_DECLARED && k != K_PADDED && k != K_CONFIG)
                hit();
        pthread_mutex_unlock(&srv.lock);

        if (!hv || version != hv) {
                if (version == gv)
                        return serve_good_model(conn, g, range);
                if (version == 1)
                        return serve_good_model(conn, &good1, range);
                return send_json(conn, 404, "{\"error\": \"not-found\"}");
        }

        body_reader r = { .data = good2.data, .avail = good2.size, .limit = good2.size };
        switch (k) {
        case K_OVER_CL:
                r.data = NULL;
                r.limit = HUGE_CL;
                return send_reader(conn, 200, HUGE_CL, &r, "application/octet-stream", NULL, NULL,
                                   NULL, NULL);
        case K_PADDED:
                r.limit = good2.size + PADDING;
                return send_reader(conn, 200, r.limit, &r, "application/octet-stream", NULL, NULL,
                                   NULL, NULL);
        case K_OVER_CHUNKED:
        case K_OVER_DECLARED:
                r.limit = ENDLESS; /* good2's bytes, then zeros */
                return send_reader(conn, 200, MHD_SIZE_UNKNOWN, &r, "application/octet-stream",
                                   NULL, NULL, NULL, NULL);
        case K_TRUNCATED:
                if (range) {
                        uint64_t start = 0;
                        char cr[96];
                        if (sscanf(range, "bytes=%" SCNu64 "-", &start) != 1 || start >= good2.size)
                                return send_json(conn, 416, "{\"error\": \"bad-request\"}");
                        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%zu/%zu", start, good2.size - 1,
                                 good2.size);
                        r.start = start;
                        r.limit = good2.size - start;
                        r.break_at = 1000;
                        return send_reader(conn, 206, r.limit, &r, "application/octet-stream",
                                           "Content-Range", cr, NULL, NULL);
                }
                r.break_at = good2.size / 2;
                return send_reader(conn, 200, good2.size, &r, "application/octet-stream", NULL,
                                   NULL, NULL, NULL);
        case K_SHORT_CL:
                r.limit = good2.size - 100;
                return send_reader(conn, 200, r.limit, &r, "application/octet-stream", NULL, NULL,
                                   NULL, NULL);
        case K_SHAPE:
        case K_NAMES:
        case K_CONFIG:
        case K_NAN:
        case K_INF:
                return serve_good_model(conn, hostile_blob(k), NULL);
        case K_BAD_SHA:
                return serve_good_model(conn, &good2, range); /* the task said good1's hash */
        case K_BAD_RANGE:
                if (n % 3 == 0)
                        return send_reader(conn, 206, good2.size, &r, "application/octet-stream",
                                           "Content-Range", "bytes 0-10/5", NULL, NULL);
                if (n % 3 == 1)
                        return send_json(conn, 416, "{\"error\": \"bad-request\"}");
                return send_owned(conn, 304, strdup(""), 0, "ETag", "\"whatever\"");
        case K_SLOW:
                r.trickle_ms = SLOW_BYTE_MS;
                r.phase = atomic_load(&srv.phase);
                return send_reader(conn, 200, good2.size, &r, "application/octet-stream", NULL,
                                   NULL, NULL, NULL);
        case K_5XX:
                return send_json(conn, 500, "{\"error\": \"storage\"}");
        case K_REDIRECT:
                snprintf(loc, sizeof(loc), "http://localhost:%u/v1/model/%" PRIu64, srv.other_port,
                         version);
                return send_owned(conn, n % 2 ? 301 : 307, strdup("{}"), 2, "Location", loc);
        default:
                return serve_good_model(conn, &good2, range);
        }
}

static enum MHD_Result serve_enroll(struct MHD_Connection *conn) {
        char loc[128];
        unsigned n;

        pthread_mutex_lock(&srv.lock);
        n = srv.n_enroll++;
        pthread_mutex_unlock(&srv.lock);
        /* the first enrollments are garbage, then it works */
        switch (n) {
        case 0:
                return send_owned(conn, 201, repeat('[', 1 << 20, "", ""), 1 << 20, NULL, NULL);
        case 1: {
                char *s = repeat('f', 60000, "{\"device_id\": 123, \"secret\": \"", "\"}");
                return send_owned(conn, 201, s, strlen(s), NULL, NULL);
        }
        case 2:
                snprintf(loc, sizeof(loc), "http://localhost:%u/v1/enroll", srv.other_port);
                return send_owned(conn, 307, strdup("{}"), 2, "Location", loc);
        default:
                return send_json(conn, 201,
                                 "{\"device_id\":\"" DEVICE_ID "\",\"secret\":\"" SECRET "\"}");
        }
}

static enum MHD_Result serve_update(struct MHD_Connection *conn) {
        char loc[128], *s;
        kind k;
        unsigned n;
        uint64_t id, v;

        pthread_mutex_lock(&srv.lock);
        n = ++srv.n_update;
        k = srv.k;
        id = ++srv.update_id;
        v = srv.good_version;
        /* garbage acks are served but not counted: the task's variants are what the phase
         * waits for */
        if (k == K_5XX || (k == K_REDIRECT && n % 2))
                hit();
        pthread_mutex_unlock(&srv.lock);

        if (k == K_5XX)
                return send_json(conn, 502, "<html>Bad Gateway</html>");
        if (k == K_GARBAGE && n % 2) {
                switch ((n / 2) % 3) {
                case 0:
                        return send_owned(conn, 200, repeat('{', 1 << 20, "", ""), 1 << 20, NULL,
                                          NULL);
                case 1:
                        return send_json(conn, 200,
                                         "{\"status\":\"accepted\",\"update_id\":-1,\"version\":"
                                         "\"x\",\"staleness\":1e300}");
                default:
                        return send_json(conn, 409, "{\"error\": [\"stale\"], \"message\": 7}");
                }
        }
        if (k == K_REDIRECT && n % 2) {
                snprintf(loc, sizeof(loc), "http://localhost:%u/v1/update", srv.other_port);
                return send_owned(conn, 307, strdup("{}"), 2, "Location", loc);
        }
        assert_true(asprintf(&s,
                             "{\"status\":\"accepted\",\"update_id\":%" PRIu64
                             ",\"version\":%" PRIu64 ",\"staleness\":0}",
                             id, v) > 0);
        return send_owned(conn, 200, s, strlen(s), NULL, NULL);
}

static enum MHD_Result serve_telemetry(struct MHD_Connection *conn) {
        char loc[128];
        kind k;

        pthread_mutex_lock(&srv.lock);
        srv.n_telemetry++;
        k = srv.k;
        pthread_mutex_unlock(&srv.lock);
        if (k == K_GARBAGE)
                return send_owned(conn, 200, repeat('"', 1 << 20, "", ""), 1 << 20, NULL, NULL);
        if (k == K_5XX)
                return send_json(conn, 503, "{}");
        if (k == K_REDIRECT) {
                snprintf(loc, sizeof(loc), "http://localhost:%u/v1/telemetry", srv.other_port);
                return send_owned(conn, 308, strdup("{}"), 2, "Location", loc);
        }
        return send_owned(conn, 204, strdup(""), 0, NULL, NULL);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls) {
        static int marker;
        const char *auth;

        if (!*con_cls) {
                *con_cls = &marker;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0; /* bodies are not kept */
                return MHD_YES;
        }
        pthread_mutex_lock(&srv.lock);
        srv.n_req++;
        pthread_mutex_unlock(&srv.lock);
        if (strcmp(url, "/v1/enroll") == 0 && strcmp(method, "POST") == 0)
                return serve_enroll(conn);
        auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
        if (!auth || strcmp(auth, "Bearer " DEVICE_ID ":" SECRET) != 0)
                return send_json(conn, 401, "{\"error\":\"unauthorized\"}");
        if (strcmp(url, "/v1/task") == 0)
                return serve_task(
                        conn, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match"));
        if (strncmp(url, "/v1/model/", 10) == 0)
                return serve_model(conn, strtoull(url + 10, NULL, 10),
                                   MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range"));
        if (strcmp(url, "/v1/update") == 0)
                return serve_update(conn);
        if (strcmp(url, "/v1/telemetry") == 0)
                return serve_telemetry(conn);
        return send_json(conn, 404, "{\"error\":\"not-found\"}");
}

/* The redirect target: counts whoever comes, and whether they brought the device's secret. */
static enum MHD_Result other_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                     const char *method, const char *version,
                                     const char *upload_data, size_t *upload_data_size,
                                     void **con_cls) {
        static int marker;

        if (!*con_cls) {
                *con_cls = &marker;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }
        pthread_mutex_lock(&srv.lock);
        srv.other_hits++;
        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"))
                srv.other_auth++;
        pthread_mutex_unlock(&srv.lock);
        return send_json(conn, 200, "{}");
}

static struct MHD_Daemon *server_start(MHD_AccessHandlerCallback h, unsigned *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
        struct MHD_Daemon *d;
        const union MHD_DaemonInfo *info;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        d = MHD_start_daemon(
                MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, h,
                NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) 120,
                /* room for the junk headers (only touched when used) */
                MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                (size_t) JUNK_HEADERS * (JUNK_HEADER_SIZE + 64) + (1 << 20), MHD_OPTION_END);
        assert_non_null(d);
        info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        assert_non_null(info);
        *ret_port = info->port;
        assert_true(*ret_port > 0);
        return d;
}

/* ---- the daemon ---- */

static pid_t start_daemon(void) {
        pid_t p = fork();

        if (p == 0) {
                const char *asan = getenv("ASAN_OPTIONS");
                char opts[512];

                if (!freopen(log_path, "a", stderr) || chdir(watch) < 0)
                        _exit(126);
                setenv("HOME", watch, 1);
                setenv("TMPDIR", watch, 1);
                setenv("XDG_RUNTIME_DIR", watch, 1);
                setenv("XDG_CACHE_HOME", watch, 1);
                setenv("XDG_CONFIG_HOME", watch, 1);
                setenv("XDG_DATA_HOME", watch, 1);
                setenv("XDG_STATE_HOME", watch, 1);
                /* ASan's quarantine would count as growth of the sanitized build */
                snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=8", asan ? asan : "",
                         asan && *asan ? ":" : "");
                setenv("ASAN_OPTIONS", opts, 1);
                execl(bin, "edged", "--root", root, "--config", conf, "--state-dir", state,
                      "--control", control, "--run-seconds", "600", (char *) NULL);
                _exit(127);
        }
        return p;
}

static bool alive(void) {
        int st;
        return pid > 0 && waitpid(pid, &st, WNOHANG) == 0;
}

static long long vm_hwm_kib(void) {
        char path[64], line[256];
        long long kib = -1;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "VmHWM:", 6) == 0)
                        kib = strtoll(line + 6, NULL, 10);
        fclose(f);
        return kib;
}

typedef struct {
        long long base_version, acked, step;
        double loss, latency;
        char link[32], last_error[256];
        bool ok;
} dstatus;

static dstatus get_status(void) {
        dstatus d = { .base_version = -1, .loss = NAN };
        double t0 = harness_now();
        json_t *s = harness_request(control, "{\"cmd\":\"status\"}\n");
        json_t *a = json_object_get(s, "aggregator");

        d.latency = harness_now() - t0;
        d.ok = s && a;
        if (d.ok) {
                d.base_version = json_integer_value(json_object_get(a, "base_version"));
                d.acked = json_integer_value(json_object_get(a, "updates_acked"));
                d.step = json_integer_value(json_object_get(s, "step"));
                d.loss = json_is_number(json_object_get(s, "loss"))
                                 ? json_number_value(json_object_get(s, "loss"))
                                 : NAN;
                snprintf(d.link, sizeof(d.link), "%s",
                         json_string_value(json_object_get(a, "state")) ?: "");
                snprintf(d.last_error, sizeof(d.last_error), "%s",
                         json_string_value(json_object_get(a, "last_error")) ?: "");
        }
        json_decref(s);
        return d;
}

static bool state_has(const char *name) {
        char path[900];
        snprintf(path, sizeof(path), "%s/%s", state, name);
        return access(path, F_OK) == 0;
}

/* ---- file listings ---- */

static char *listing;
static size_t listing_len, listing_n;
static uint64_t listing_bytes;
static size_t listing_skip;
static bool listing_times;

static int list_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        char line[1200];
        int n;

        if (ftw->level == 0)
                return 0;
        if (listing_times)
                n = snprintf(line, sizeof(line), "%s %lld %lld.%09ld\n", path + listing_skip,
                             (long long) st->st_size, (long long) st->st_mtim.tv_sec,
                             st->st_mtim.tv_nsec);
        else
                n = snprintf(line, sizeof(line), "%s%s %lld\n", path + listing_skip,
                             S_ISDIR(st->st_mode) ? "/" : "", (long long) st->st_size);
        char *p = realloc(listing, listing_len + (size_t) n + 1);
        if (!p)
                return -1;
        listing = p;
        memcpy(listing + listing_len, line, (size_t) n + 1);
        listing_len += (size_t) n;
        listing_n++;
        if (S_ISREG(st->st_mode))
                listing_bytes += (uint64_t) st->st_size;
        return 0;
}

/* Every entry under dir ("rel size[ mtime]" lines, in nftw order), malloc'd. */
static char *list_tree(const char *dir, bool times, size_t *ret_n, uint64_t *ret_bytes) {
        listing = strdup("");
        listing_len = listing_n = 0;
        listing_bytes = 0;
        listing_skip = strlen(dir) + 1;
        listing_times = times;
        assert_int_equal(nftw(dir, list_entry, 16, FTW_PHYS), 0);
        if (ret_n)
                *ret_n = listing_n;
        if (ret_bytes)
                *ret_bytes = listing_bytes;
        return TAKE_PTR(listing);
}

/* ---- phases ---- */

typedef struct {
        const char *name;
        kind k;
        bool announce; /* a new version whose model is the hostile part */
        unsigned min_hits;
        bool refused; /* the model arrives whole and must be refused: status says so */
} phase;

/* Failures back off exponentially (1 s doubling); a model that arrives whole but is refused
 * resets that, so the two kinds alternate to keep the run short. */
static const phase phases[] = {
        { "oversized: Content-Length 256 MiB", K_OVER_CL, true, 1, false },
        { "oversized: chunked, endless", K_OVER_CHUNKED, true, 1, false },
        { "oversized: task declares 2 GiB", K_OVER_DECLARED, true, 1, true },
        { "truncated body, resume breaks", K_TRUNCATED, true, 2, false }, /* 2: the resume too */
        { "task: 96 MiB more than the config", K_PADDED, true, 1, true },
        { "Content-Length short of model_bytes", K_SHORT_CL, true, 1, false },
        { "bad SHA-256", K_BAD_SHA, true, 1, false },
        { "wrong tensor shape (hash right)", K_SHAPE, true, 1, true },
        { "bogus 206/416/304, bad ETags", K_BAD_RANGE, true, 2, false },
        { "wrong tensor name (hash right)", K_NAMES, true, 1, true },
        { "redirects to another host", K_REDIRECT, true, 3, false },
        { "another, larger config", K_CONFIG, true, 1, true },
        { "72 MB of headers on the task", K_HEADERS, false, 1, false },
        { "NaN-filled model (hash right)", K_NAN, true, 1, true },
        { "5xx everywhere", K_5XX, false, 1, false },
        { "Inf in the model (hash right)", K_INF, true, 1, true },
        { "garbage JSON (task, update, telemetry)", K_GARBAGE, false, 5, false },
        { "slow-loris model body", K_SLOW, true, 1, false },
};

static long long hwm_bound_kib;
static uint64_t next_version = 2;

static void run_phase(const phase *p) {
        double t0 = harness_now(), timeout = p->k == K_SLOW      ? SLOW_TIMEOUT_S
                                             : p->k == K_GARBAGE ? GARBAGE_TIMEOUT_S
                                                                 : PHASE_TIMEOUT_S;
        double worst_latency = 0;
        unsigned hits = 0, reqs = 0, req_at_hit = 0;
        uint64_t hv = p->announce ? next_version++ : 0;
        bool done = false;
        dstatus d;

        pthread_mutex_lock(&srv.lock);
        srv.k = p->k;
        srv.hostile_version = hv;
        srv.hits = 0;
        pthread_mutex_unlock(&srv.lock);
        uint64_t served0 = atomic_load(&srv.served);

        /* until the hostile answers were served and the daemon came back for more (its one
         * federation thread is done with them then), or said it refused the model, or, for
         * answers that fail at once, a moment passed: the next phase's answers, and the checks
         * after it, see whatever the daemon made of them */
        while (!done && harness_now() - t0 < timeout) {
                usleep(200 * 1000);
                d = get_status();
                if (!d.ok)
                        fail_msg("phase '%s': no status reply after %.1f s (daemon %s)", p->name,
                                 harness_now() - t0, alive() ? "alive" : "gone");
                worst_latency = MAX(worst_latency, d.latency);
                pthread_mutex_lock(&srv.lock);
                hits = srv.hits, reqs = srv.n_req, req_at_hit = srv.req_at_hit;
                double since_hit = harness_now() - srv.last_hit;
                pthread_mutex_unlock(&srv.lock);
                char refused[64];
                snprintf(refused, sizeof(refused), "model %" PRIu64 " refused", hv);
                done = hits >= p->min_hits &&
                       (reqs > req_at_hit || (p->refused && strstr(d.last_error, refused)) ||
                        (!p->refused && p->k != K_SLOW && since_hit > 0.5));
        }
        pthread_mutex_lock(&srv.lock);
        srv.k = K_GOOD;
        srv.hostile_version = 0;
        pthread_mutex_unlock(&srv.lock);
        atomic_fetch_add(&srv.phase, 1);

        d = get_status();
        long long hwm = vm_hwm_kib();
        uint64_t served = atomic_load(&srv.served) - served0;
        printf("  %-40s %2u hits %5.1f s  sent %9" PRIu64 " B  VmHWM %6lld KiB  status <= %.2f s"
               "  link %s: %.90s\n",
               p->name, hits, harness_now() - t0, served, hwm, worst_latency, d.link, d.last_error);
        assert_true(alive());
        assert_true(d.ok);
        assert_true(hits >= 1);
        if (!done)
                fail_msg("phase '%s': %u of %u hostile answers, daemon stuck?", p->name, hits,
                         p->min_hits);
        assert_true(worst_latency < STATUS_LATENCY_MAX_S);
        /* the last good model is still the base */
        if (d.base_version != 1)
                fail_msg("phase '%s': base version is %lld, expected the last good 1", p->name,
                         d.base_version);
        /* and its file, to train from again after a restart */
        if (!state_has("model-1.safetensors"))
                fail_msg("phase '%s': the last good model file model-1.safetensors is gone",
                         p->name);
        if (hv) {
                char name[64];
                snprintf(name, sizeof(name), "model-%" PRIu64 ".safetensors", hv);
                if (state_has(name))
                        fail_msg("phase '%s': the rejected model was kept as %s", p->name, name);
        }
        /* a size no model of the config has is refused before it is downloaded */
        if (p->k == K_PADDED && served > PADDED_SERVED_MAX)
                fail_msg("phase '%s': the daemon took %" PRIu64 " bytes of a model its config "
                         "rules out",
                         p->name, served);
        if (hwm > hwm_bound_kib)
                fail_msg("phase '%s': VmHWM %lld KiB over the bound %lld KiB", p->name, hwm,
                         hwm_bound_kib);
}

static void test_hostile_aggregator(void **unused) {
        double t0 = harness_now();
        dstatus d = { 0 };
        long long base_hwm;

        pid = start_daemon();
        assert_true(pid > 0);

        /* three garbage enrollments (oversized, wrong types, redirect), then a good one */
        while (harness_now() - t0 < 30 && !(srv.n_enroll >= 4 && state_has("identity")))
                usleep(100 * 1000);
        printf("enrolled after %u attempts, %.1f s\n", srv.n_enroll, harness_now() - t0);
        assert_true(alive());
        assert_true(state_has("identity"));
        assert_int_equal(srv.n_enroll, 4);

        /* a good round: version 1 is the base and an update was acknowledged */
        double t1 = harness_now();
        while (harness_now() - t1 < 40 && !(d.base_version == 1 && d.acked >= 1))
                usleep(200 * 1000), d = get_status();
        printf("version 1 in use, %lld updates acknowledged, step %lld, after %.1f s\n", d.acked,
               d.step, harness_now() - t1);
        assert_int_equal(d.base_version, 1);
        assert_true(d.acked >= 1);
        base_hwm = vm_hwm_kib();
        assert_true(base_hwm > 0);
        hwm_bound_kib = base_hwm + MEM_BOUND_MIB * 1024LL;
        printf("VmHWM after the good round: %lld KiB; bound %lld KiB (+%d MiB)\n", base_hwm,
               hwm_bound_kib, MEM_BOUND_MIB);

        /* EDGED_HOSTILE_ONLY=text: only the phases whose name has it (when chasing one) */
        const char *only = getenv("EDGED_HOSTILE_ONLY");
        for (size_t i = 0; i < ARRAY_SIZE(phases); i++)
                if (!only || strstr(phases[i].name, only))
                        run_phase(&phases[i]);

        /* a good new version after all that: the daemon takes it */
        uint64_t final = next_version++;
        pthread_mutex_lock(&srv.lock);
        srv.good = &good2;
        srv.good_version = final;
        pthread_mutex_unlock(&srv.lock);
        double t2 = harness_now();
        long long step0 = get_status().step;
        while (harness_now() - t2 < 45 && (d = get_status()).base_version != (long long) final)
                usleep(200 * 1000);
        printf("good version %" PRIu64 " taken after %.1f s (link %s)\n", final, harness_now() - t2,
               d.link);
        assert_int_equal(d.base_version, (long long) final);
        assert_true(harness_now() - t2 < 45);
        /* and it trains on */
        assert_true(harness_wait_int(control, "step", step0 + 5, test_limit_s(30)));
        d = get_status();
        printf("step %lld, loss %.3f; total %.0f s; VmHWM %lld KiB\n", d.step, d.loss,
               harness_now() - t0, vm_hwm_kib());
        assert_true(isfinite(d.loss) && d.loss > 0 && d.loss < 10);
        assert_true(vm_hwm_kib() <= hwm_bound_kib);

        printf("garbage task variants served: %u of %zu\n",
               MIN(srv.garbage_served, (unsigned) ARRAY_SIZE(garbage_names)),
               ARRAY_SIZE(garbage_names));
        printf("redirect target: %u requests, %u with credentials\n", srv.other_hits,
               srv.other_auth);
        assert_int_equal(srv.other_hits, 0);

        int status = harness_stop(pid, SIGTERM);
        pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);

        /* nothing outside the state directory */
        size_t n;
        uint64_t bytes;
        _cleanup_free_ char *w = list_tree(watch, false, &n, NULL);
        if (n)
                fail_msg("written in HOME/TMPDIR/cwd:\n%s", w);
        _cleanup_free_ char *sp = list_tree(state_parent, false, NULL, NULL);
        _cleanup_free_ char *st = list_tree(state, false, &n, &bytes);
        printf("state directory: %zu entries, %" PRIu64 " bytes:\n%s", n, bytes, st);
        /* only state/ and what is in it */
        for (char *line = sp; *line;) {
                char *nl = strchr(line, '\n');
                if (strncmp(line, "state/", 6) != 0)
                        fail_msg("written next to the state directory: %.*s", (int) (nl - line),
                                 line);
                line = nl + 1;
        }
        assert_true(bytes < STATE_BYTES_MAX);
        _cleanup_free_ char *root_after = list_tree(root, true, NULL, NULL);
        if (strcmp(root_before, root_after) != 0)
                fail_msg("the machine root changed:\nbefore:\n%s\nafter:\n%s", root_before,
                         root_after);
        /* the model files left are the good ones: the last two good versions at most */
        DIR *dir = opendir(state);
        struct dirent *de;
        assert_non_null(dir);
        while ((de = readdir(dir))) {
                uint64_t v;
                if (sscanf(de->d_name, "model-%" SCNu64 ".", &v) == 1 && v != 1 && v != final)
                        fail_msg("state directory keeps %s, a hostile version", de->d_name);
        }
        closedir(dir);
        char fin[64];
        snprintf(fin, sizeof(fin), "model-%" PRIu64 ".safetensors", final);
        assert_true(state_has(fin));

        /* the checkpoint it left is valid, finite, and based on the good final version */
        _cleanup_free_ char *ckpt = NULL;
        model_config tiny;
        model *m = NULL;
        ckpt_state cs;
        assert_true(asprintf(&ckpt, "%s/checkpoint.safetensors", state) > 0);
        assert_int_equal(model_config_by_name("tiny", &tiny), 0);
        assert_int_equal(model_new(&tiny, 1, 1, &m), 0);
        assert_int_equal(ckpt_load(ckpt, m, NULL, &cs), 0);
        model_free(m);
        printf("checkpoint: step %ld, base version %" PRIu64 "\n", cs.step, cs.model_version);
        assert_int_equal(cs.model_version, final);
}

/* A fresh device whose very first model is NaN-filled (right hash): it must not start a
 * trainer from it, keep it, or hammer the aggregator for it; it waits for another version. */
static void test_first_model_refused(void **unused) {
        unsigned tasks0, tasks1;
        dstatus d = { 0 };
        double t0;

        snprintf(state_parent, sizeof(state_parent), "%s/var2", test_tmpdir);
        snprintf(state, sizeof(state), "%s/state", state_parent);
        snprintf(control, sizeof(control), "%s/control2", test_tmpdir);
        assert_int_equal(mkdir(state_parent, 0755), 0);
        assert_int_equal(mkdir(state, 0700), 0);
        pthread_mutex_lock(&srv.lock);
        srv.k = K_GOOD;
        srv.hostile_version = 0;
        srv.good = &b_nan;
        srv.good_version = 1;
        pthread_mutex_unlock(&srv.lock);

        pid = start_daemon();
        assert_true(pid > 0);
        t0 = harness_now();
        while (harness_now() - t0 < 30 && !strstr(d.last_error, "model 1 refused"))
                usleep(200 * 1000), d = get_status();
        printf("first model refused after %.1f s: %s\n", harness_now() - t0, d.last_error);
        assert_non_null(strstr(d.last_error, "model 1 refused"));

        /* no trainer from it, no file of it, and no task request every second meanwhile */
        tasks0 = srv.n_task;
        usleep(5 * 1000 * 1000);
        tasks1 = srv.n_task;
        d = get_status();
        printf("task requests in the next 5 s: %u; model_version %lld, step %lld, VmHWM %lld KiB\n",
               tasks1 - tasks0, d.base_version, d.step, vm_hwm_kib());
        assert_true(alive());
        assert_true(d.ok);
        assert_true(tasks1 - tasks0 <= 1);
        assert_int_equal(d.base_version, 0);
        assert_int_equal(d.step, 0);
        assert_false(state_has("model-1.safetensors"));
        assert_false(state_has("checkpoint.safetensors"));
        assert_true(vm_hwm_kib() <= hwm_bound_kib);

        int status = harness_stop(pid, SIGTERM);
        pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        size_t n;
        _cleanup_free_ char *w = list_tree(watch, false, &n, NULL);
        if (n)
                fail_msg("written in HOME/TMPDIR/cwd:\n%s", w);
}

static int setup(void **unused) {
        const char *b = getenv("EDGED_BIN");
        model_config tiny, wide = {
                .name = "wide", .block_size = 128, .n_embd = 256, .n_layer = 4, .n_head = 4
        };
        char *r = NULL;
        FILE *f;

        if (!realpath(b ? b : "build/edged", bin)) {
                fprintf(stderr, "cannot find %s\n", b ? b : "build/edged");
                return -1;
        }
        if (test_tmpdir_create("test-hostile-aggregator") < 0 ||
            harness_make_root("laptop-ac", &r) < 0)
                return -1;
        snprintf(root, sizeof(root), "%s", r);
        free(r);
        snprintf(conf, sizeof(conf), "%s/edged.conf", test_tmpdir);
        snprintf(state_parent, sizeof(state_parent), "%s/var", test_tmpdir);
        snprintf(state, sizeof(state), "%s/state", state_parent);
        snprintf(watch, sizeof(watch), "%s/home", test_tmpdir);
        snprintf(control, sizeof(control), "%s/control", test_tmpdir);
        snprintf(log_path, sizeof(log_path), "%s/edged.log", test_tmpdir);
        if (mkdir(state_parent, 0755) < 0 || mkdir(state, 0700) < 0 || mkdir(watch, 0755) < 0)
                return -1;

        assert_int_equal(model_config_by_name("tiny", &tiny), 0);
        make_model_blob(&good1, &tiny, 1, 1, NULL);
        make_model_blob(&good2, &tiny, 2, 2, NULL);
        make_model_blob(&b_nan, &tiny, 3, 3, fill_nan);
        make_model_blob(&b_inf, &tiny, 4, 4, fill_inf);
        make_model_blob(&b_wide, &wide, 5, 5, NULL);
        make_bad_tensor_blob(&b_shape, false);
        make_bad_tensor_blob(&b_names, true);
        assert_int_equal(good1.size, good2.size);

        srv.good = &good1;
        srv.good_version = 1;
        srv.d = server_start(handler, &srv.port);
        srv.other = server_start(other_handler, &srv.other_port);
        printf("hostile aggregator on 127.0.0.1:%u, redirect target on port %u\n", srv.port,
               srv.other_port);

        f = fopen(conf, "we");
        if (!f)
                return -1;
        fprintf(f,
                "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\nMaxCores=1\n"
                "RequireACPower=no\nMinBatteryPercent=0\n"
                "[Daemon]\nDataDirectory=/data\n"
                "[Federation]\nServer=http://127.0.0.1:%u\nEnrollToken=" TOKEN "\n",
                srv.port);
        if (fclose(f) != 0)
                return -1;
        root_before = list_tree(root, true, NULL, NULL);
        return 0;
}

static int teardown(void **unused) {
        if (pid > 0) {
                harness_stop(pid, SIGKILL);
                pid = 0;
        }
        atomic_store(&srv.stopping, true);
        if (srv.d)
                MHD_stop_daemon(srv.d);
        if (srv.other)
                MHD_stop_daemon(srv.other);
        /* the daemon's log helps when something failed; it goes away with the rest */
        _cleanup_free_ char *cmd = NULL;
        if (getenv("EDGED_TEST_KEEP_LOG") &&
            asprintf(&cmd, "cp '%s' '%s'", log_path, getenv("EDGED_TEST_KEEP_LOG")) > 0)
                (void) !system(cmd);
        free(good1.data), free(good2.data), free(b_shape.data), free(b_names.data);
        free(b_wide.data), free(b_nan.data), free(b_inf.data), free(root_before);
        return test_tmpdir_remove(unused);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_hostile_aggregator),
                cmocka_unit_test(test_first_model_refused),
        };
        test_cpu_group_enter("hostile-aggregator");
        return test_run_group("test-hostile-aggregator", tests, setup, teardown);
}
