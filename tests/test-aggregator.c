/* SPDX-License-Identifier: MIT */
/* edge-aggregator: the protocol of docs/federation-protocol.md against an in-process server on
 * 127.0.0.1 (enrolment, task/ETag, model ranges, every update refusal reason and its metric,
 * durability, idempotency), the FedBuff arithmetic (FedAvg and FedAdam against hand
 * computations), the status page, and kill -9 of the real binary during merges. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include "blas.h"
#include "blobs.h"
#include "macros.h"
#include "merge.h"
#include "merger.h"
#include "model.h"
#include "server.h"
#include "store.h"
#include "update-codec.h"
#include "test-files.h"
#include "test-http.h"

static agg_store *store;
static agg_server *server;
static model_layout lay;
static char base_url[64], auth[160], store_dir[128];

/* ---- a tiny HTTP client ---- */

typedef struct {
        const void *data;
        size_t size, off;
} upload;

static size_t on_read(char *p, size_t sz, size_t n, void *ud) {
        upload *u = ud;
        size_t k = MIN(sz * n, u->size - u->off);
        memcpy(p, (const char *) u->data + u->off, k);
        u->off += k;
        return k;
}

/* method GET when body NULL; hdrs NULL-terminated; chunked sends the body without length. */
static reply http(const char *base, const char *path, const void *body, size_t size, bool chunked,
                  const char *const *hdrs) {
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        char url[256];
        reply r = {};
        upload up = { body, size, 0 };

        snprintf(url, sizeof(url), "%s%s", base, path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, reply_on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, reply_on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
        for (size_t i = 0; hdrs && hdrs[i]; i++)
                h = curl_slist_append(h, hdrs[i]);
        h = curl_slist_append(h, "Expect:");
        if (body) {
                curl_easy_setopt(c, CURLOPT_POST, 1L);
                if (chunked) {
                        h = curl_slist_append(h, "Transfer-Encoding: chunked");
                        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
                        curl_easy_setopt(c, CURLOPT_READDATA, &up);
                } else {
                        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) size);
                }
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        CURLcode cc = curl_easy_perform(c);
        if (cc == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        else
                r.status = -1;
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return r;
}

static bool has_error(const reply *r, const char *reason) {
        char want[96];
        snprintf(want, sizeof(want), "\"error\":\"%s\"", reason);
        return r->body && strstr(r->body, want);
}

/* ---- update bodies ---- */

/* Writes a raw fp32 body by hand (so NaN and wrong shapes can be sent) and zstd-compresses it. */
static void *raw_fp32(const model_layout *l, uint64_t base, const float *delta, size_t *ret_size,
                      int bad_rows) {
        size_t cap = 64 + l->n_views * 64 + 4 * l->n_params + 4096, n = 0;
        uint8_t *raw = malloc(cap);
        uint32_t u;
        assert_non_null(raw);
#define PUT(p, k)                                                                                  \
        do {                                                                                       \
                memcpy(raw + n, (p), (k));                                                         \
                n += (k);                                                                          \
        } while (0)
        PUT("EDUP", 4);
        u = UPD_FORMAT;
        PUT(&u, 4);
        u = UPD_FP32;
        PUT(&u, 4);
        PUT(&base, 8);
        u = (uint32_t) l->n_views;
        PUT(&u, 4);
        for (size_t i = 0; i < l->n_views; i++) {
                const model_view *v = &l->views[i];
                uint16_t nl = (uint16_t) strlen(v->name);
                uint32_t rows = v->ndim == 2 ? (uint32_t) v->shape[0] : 1;
                uint32_t cols = v->ndim == 2 ? (uint32_t) v->shape[1] : (uint32_t) v->shape[0];
                PUT(&nl, 2);
                PUT(v->name, nl);
                if (i == 3 && bad_rows) {
                        rows += (uint32_t) bad_rows;
                        cols = (uint32_t) (v->numel / rows) ? cols : cols;
                }
                PUT(&rows, 4);
                PUT(&cols, 4);
                PUT(delta + v->offset, 4 * v->numel);
        }
#undef PUT
        size_t zcap = ZSTD_compressBound(n);
        void *z = malloc(zcap);
        size_t zn = ZSTD_compress(z, zcap, raw, n, 1);
        assert_false(ZSTD_isError(zn));
        free(raw);
        *ret_size = zn;
        return z;
}

static reply send_update(const char *key, uint64_t base, uint64_t tokens, const void *body,
                         size_t size) {
        char k[96], b[64], t[64];
        snprintf(k, sizeof(k), "Idempotency-Key: %s", key);
        snprintf(b, sizeof(b), "X-Edged-Base-Version: %llu", (unsigned long long) base);
        snprintf(t, sizeof(t), "X-Edged-Tokens: %llu", (unsigned long long) tokens);
        const char *h[] = { auth, k, b, t, "X-Edged-Steps: 10", "X-Edged-Loss: 3.5",
                            "Content-Type: application/octet-stream", NULL };
        return http(base_url, "/v1/update", body, size, false, h);
}

static void *encode(const float *delta, uint64_t base, size_t *ret_size) {
        void *body;
        assert_int_equal(upd_encode(UPD_FP32, base, &lay, delta, 0.01f, NULL, &body, ret_size,
                                    NULL),
                         0);
        return body;
}

static float pattern(size_t i, int which) {
        return (float) ((int) ((i * 2654435761u + (unsigned) which * 97u) % 2001u) - 1000) *
               1e-6f;
}

static int64_t metric(const char *line_prefix) {
        reply r = http(base_url, "/metrics", NULL, 0, false, NULL);
        assert_int_equal(r.status, 200);
        char *p = strstr(r.body, line_prefix);
        int64_t v = p ? strtoll(p + strlen(line_prefix), NULL, 10) : 0;
        free(r.body);
        return v;
}

static void set(const char *kv) {
        char err[256], *a[] = { (char *) kv };
        assert_int_equal(agg_store_set(store, a, 1, false, err, sizeof(err)), 0);
}

/* ---- setup ---- */

static int setup(void **state) {
        model_config cfg;
        char err[256], sha[65];
        model *m;
        agg_server_options o = { .listen = "127.0.0.1:0", .no_merger = true };

        blas_set_threads(1);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (test_tmpdir_create("test-aggregator") < 0)
                return -1;
        snprintf(store_dir, sizeof(store_dir), "%s/store", test_tmpdir);
        model_config_by_name("tiny", &cfg);
        model_layout_init(&lay, &cfg);
        char *kv[] = { "Model=tiny", "BufferSize=2", "Encoding=fp32", "MaxUpdateNorm=1000",
                       "RateLimitPerSec=1000", "RateLimitBurst=1000" };
        if (agg_store_create(store_dir, &store) < 0 ||
            agg_store_set(store, kv, ARRAY_SIZE(kv), true, err, sizeof(err)) < 0 ||
            model_new(&cfg, 1, 1, &m) < 0)
                return -1;
        model_init_params(m, 7);
        if (agg_blob_save_model(store_dir, m, 0, sha) < 0 || agg_store_insert_version0(store, sha) < 0)
                return -1;
        model_free(m);
        if (agg_server_start(store, &o, &server) < 0)
                return -1;
        snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%u", agg_server_port(server));
        return 0;
}

static int teardown(void **state) {
        agg_server_stop(server);
        agg_store_free(store);
        curl_global_cleanup();
        return test_tmpdir_remove(state);
}

/* ---- tests ---- */

static void enroll(const char *token, reply *ret) {
        char body[128];
        snprintf(body, sizeof(body), "{\"token\": \"%s\", \"name\": \"box<1>\"}", token);
        *ret = http(base_url, "/v1/enroll", body, strlen(body), false, NULL);
}

static void test_enroll(void **state) {
        char tok[AGG_ID_HEX], once[AGG_ID_HEX];
        reply r;

        assert_int_equal(agg_store_token_create(store, 0, 0, tok), 0);
        assert_int_equal(agg_store_token_create(store, 0, 1, once), 0);
        enroll("0123456789abcdef0123456789abcdef", &r);
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "bad-token"));
        free(r.body);
        enroll(once, &r);
        assert_int_equal(r.status, 201);
        free(r.body);
        enroll(once, &r); /* used up */
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "bad-token"));
        free(r.body);
        enroll(tok, &r);
        assert_int_equal(r.status, 201);
        char id[40] = "", secret[80] = "";
        assert_non_null(strstr(r.body, "\"device_id\":\""));
        sscanf(strstr(r.body, "\"device_id\":\"") + 13, "%32[0-9a-f]", id);
        sscanf(strstr(r.body, "\"secret\":\"") + 10, "%64[0-9a-f]", secret);
        assert_int_equal(strlen(id), 32);
        assert_int_equal(strlen(secret), 64);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s:%s", id, secret);
        free(r.body);
}

static void test_expired_token(void **state) {
        char tok[AGG_ID_HEX];
        reply r;
        assert_int_equal(agg_store_token_create(store, 1, 0, tok), 0);
        sleep(2);
        enroll(tok, &r);
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "bad-token"));
        free(r.body);
}

static void test_task_and_model(void **state) {
        const char *h[] = { auth, NULL };
        char inm[160];
        reply r = http(base_url, "/v1/task", NULL, 0, false, h), r2, full, part;

        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"version\":0"));
        assert_non_null(strstr(r.body, "\"encoding\":\"fp32\""));
        assert_string_equal(r.etag, "\"0-1\"");
        snprintf(inm, sizeof(inm), "If-None-Match: %s", r.etag);
        const char *h2[] = { auth, inm, NULL };
        r2 = http(base_url, "/v1/task", NULL, 0, false, h2);
        assert_int_equal(r2.status, 304);
        free(r.body);
        free(r2.body);

        const char *none[] = { NULL };
        r = http(base_url, "/v1/task", NULL, 0, false, none);
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "unauthorized"));
        free(r.body);

        full = http(base_url, "/v1/model/0", NULL, 0, false, h);
        assert_int_equal(full.status, 200);
        assert_true(full.size > 1000);
        const char *h3[] = { auth, "Range: bytes=1000-", NULL };
        part = http(base_url, "/v1/model/0", NULL, 0, false, h3);
        assert_int_equal(part.status, 206);
        assert_int_equal(part.size, full.size - 1000);
        assert_memory_equal(part.body, full.body + 1000, part.size);
        assert_string_equal(part.etag, full.etag);
        free(full.body);
        free(part.body);
        r = http(base_url, "/v1/model/99", NULL, 0, false, h);
        assert_int_equal(r.status, 404);
        assert_true(has_error(&r, "not-found"));
        free(r.body);
}

static void expect_reject(reply r, long status, const char *reason) {
        if (r.status != status || !has_error(&r, reason))
                fail_msg("expected %ld %s, got %ld %s", status, reason, r.status,
                         r.body ? r.body : "");
        free(r.body);
}

static void test_update_refusals(void **state) {
        _cleanup_free_ float *delta = calloc(lay.n_params, sizeof(float));
        size_t size;
        char m[96];

        assert_non_null(delta);
        for (size_t i = 0; i < lay.n_params; i++)
                delta[i] = pattern(i, 1);
        _cleanup_free_ void *body = encode(delta, 0, &size);

        /* auth */
        const char *noauth[] = { "Idempotency-Key: x", "X-Edged-Base-Version: 0",
                                 "X-Edged-Tokens: 1", "X-Edged-Steps: 1", NULL };
        expect_reject(http(base_url, "/v1/update", body, size, false, noauth), 401, "unauthorized");
        const char *wrong[] = { "Authorization: Bearer 00000000000000000000000000000000:"
                                "0000000000000000000000000000000000000000000000000000000000000000",
                                "Idempotency-Key: x", NULL };
        expect_reject(http(base_url, "/v1/update", body, size, false, wrong), 401, "unauthorized");
        /* unknown base */
        size_t s5;
        _cleanup_free_ void *b5 = encode(delta, 5, &s5);
        expect_reject(send_update("k-unknown", 5, 10, b5, s5), 409, "unknown-base");
        /* garbage, truncated */
        char garbage[4096];
        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (char) (i * 7 + 3);
        expect_reject(send_update("k-garbage", 0, 10, garbage, sizeof(garbage)), 400,
                      "bad-encoding");
        expect_reject(send_update("k-trunc", 0, 10, body, size / 2), 400, "bad-encoding");
        /* NaN, wrong shape: hand-made bodies */
        delta[17] = NAN;
        size_t n2;
        _cleanup_free_ void *bnan = raw_fp32(&lay, 0, delta, &n2, 0);
        expect_reject(send_update("k-nan", 0, 10, bnan, n2), 422, "not-finite");
        delta[17] = 0;
        _cleanup_free_ void *bshape = raw_fp32(&lay, 0, delta, &n2, 1);
        expect_reject(send_update("k-shape", 0, 10, bshape, n2), 422, "wrong-shape");
        /* oversized: announced, and chunked */
        assert_true(size > 1024);
        set("MaxUpdateBytes=1024");
        expect_reject(send_update("k-big", 0, 10, body, size), 413, "too-large");
        const char *h[] = { auth, "Idempotency-Key: k-big2", "X-Edged-Base-Version: 0",
                            "X-Edged-Tokens: 1", "X-Edged-Steps: 1", NULL };
        expect_reject(http(base_url, "/v1/update", body, size, true, h), 413, "too-large");
        set("MaxUpdateBytes=10000000");
        /* norm bound */
        set("MaxUpdateNorm=0.01");
        expect_reject(send_update("k-norm", 0, 10, body, size), 422, "norm-too-large");
        set("MaxUpdateNorm=1000");
        /* bad headers */
        expect_reject(send_update("bad key!", 0, 10, body, size), 400, "bad-request");
        expect_reject(send_update("k-zero", 0, 0, body, size), 400, "bad-request");

        /* every reason counted */
        static const char *const reasons[] = { "unknown-base", "bad-encoding", "not-finite",
                                               "wrong-shape", "too-large", "norm-too-large" };
        for (size_t i = 0; i < ARRAY_SIZE(reasons); i++) {
                snprintf(m, sizeof(m), "edge_updates_total{result=\"%s\"} ", reasons[i]);
                assert_true(metric(m) >= 1);
        }
        assert_int_equal(metric("edge_updates_total{result=\"bad-encoding\"} "), 2);
        assert_int_equal(metric("edge_updates_total{result=\"too-large\"} "), 2);
        assert_int_equal(metric("edge_http_errors_total{reason=\"unauthorized\"} "), 3);
        assert_int_equal(agg_store_count_pending(store), 0);
}

/* Accepted twice with the same key counts once; durable in a second connection to the DB. */
static void test_update_accept_and_merge_fedavg(void **state) {
        _cleanup_free_ float *d1 = malloc(lay.n_params * sizeof(float)),
                             *d2 = malloc(lay.n_params * sizeof(float));
        size_t s1, s2;
        agg_store *other;
        bool merged;
        reply r;

        for (size_t i = 0; i < lay.n_params; i++) {
                d1[i] = pattern(i, 1);
                d2[i] = pattern(i, 2);
        }
        _cleanup_free_ void *b1 = encode(d1, 0, &s1);
        _cleanup_free_ void *b2 = encode(d2, 0, &s2);
        r = send_update("u1", 0, 100, b1, s1);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"status\":\"accepted\""));
        assert_non_null(strstr(r.body, "\"staleness\":0"));
        free(r.body);
        r = send_update("u1", 0, 100, b1, s1);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"status\":\"duplicate\""));
        free(r.body);

        assert_int_equal(agg_store_open(store_dir, &other), 0);
        assert_int_equal(agg_store_count_pending(other), 1);
        agg_store_free(other);

        /* one update, K = 2: no merge yet */
        assert_int_equal(agg_merge_once(store, NULL, &merged), 0);
        assert_false(merged);
        r = send_update("u2", 0, 300, b2, s2);
        assert_int_equal(r.status, 200);
        free(r.body);
        assert_int_equal(metric("edge_updates_total{result=\"accepted\"} "), 2);
        assert_int_equal(metric("edge_updates_total{result=\"duplicate\"} "), 1);

        assert_int_equal(agg_merge_once(store, NULL, &merged), 0);
        assert_true(merged);

        agg_version v0, v1;
        assert_int_equal(agg_store_get_version(store, 0, &v0), 0);
        assert_int_equal(agg_store_get_version(store, 1, &v1), 0);
        assert_int_equal(v1.n_updates, 2);
        model *m0, *m1;
        assert_int_equal(model_new(&lay.cfg, 1, 1, &m0), 0);
        assert_int_equal(model_new(&lay.cfg, 1, 1, &m1), 0);
        assert_int_equal(agg_blob_load_model(store_dir, v0.blob, m0), 0);
        assert_int_equal(agg_blob_load_model(store_dir, v1.blob, m1), 0);
        for (size_t i = 0; i < lay.n_params; i++) {
                double want = (double) m0->params[i] + 0.25 * d1[i] + 0.75 * d2[i];
                if (fabs(m1->params[i] - want) > 1e-6)
                        fail_msg("param %zu: %g, expected %g", i, (double) m1->params[i], want);
        }
        model_free(m0);
        model_free(m1);

        /* a resend after the merge is still a duplicate, never counted again */
        r = send_update("u1", 0, 100, b1, s1);
        assert_non_null(strstr(r.body, "\"status\":\"duplicate\""));
        assert_non_null(strstr(r.body, "\"version\":1"));
        free(r.body);
        assert_int_equal(agg_store_count_pending(store), 0);
}

static void test_merge_fedadam(void **state) {
        _cleanup_free_ float *d1 = malloc(lay.n_params * sizeof(float)),
                             *d2 = malloc(lay.n_params * sizeof(float));
        size_t s1, s2;
        bool merged;
        reply r;

        set("ServerOptimizer=fedadam");
        set("ServerLR=0.01");
        for (size_t i = 0; i < lay.n_params; i++) {
                d1[i] = pattern(i, 3);
                d2[i] = pattern(i, 4);
        }
        _cleanup_free_ void *b1 = encode(d1, 1, &s1);
        _cleanup_free_ void *b2 = encode(d2, 0, &s2); /* one version stale */
        r = send_update("a1", 1, 200, b1, s1);
        assert_int_equal(r.status, 200);
        free(r.body);
        r = send_update("a2", 0, 200, b2, s2);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"staleness\":1"));
        free(r.body);
        assert_int_equal(agg_merge_once(store, NULL, &merged), 0);
        assert_true(merged);

        agg_version v1, v2;
        assert_int_equal(agg_store_get_version(store, 1, &v1), 0);
        assert_int_equal(agg_store_get_version(store, 2, &v2), 0);
        assert_true(v2.moments[0]);
        model *m1, *m2;
        assert_int_equal(model_new(&lay.cfg, 1, 1, &m1), 0);
        assert_int_equal(model_new(&lay.cfg, 1, 1, &m2), 0);
        assert_int_equal(agg_blob_load_model(store_dir, v1.blob, m1), 0);
        assert_int_equal(agg_blob_load_model(store_dir, v2.blob, m2), 0);
        double w1 = 200.0, w2 = 200.0 / sqrt(2.0), s = w1 + w2;
        w1 /= s;
        w2 /= s;
        for (size_t i = 0; i < lay.n_params; i++) {
                double d = w1 * d1[i] + w2 * d2[i];
                double mm = 0.1 * d, vv = 0.01 * d * d;
                double want = m1->params[i] + 0.01 * mm / (sqrt(vv) + 1e-3);
                if (fabs(m2->params[i] - want) > 1e-5)
                        fail_msg("param %zu: %g, expected %g", i, (double) m2->params[i], want);
        }
        model_free(m1);
        model_free(m2);
        set("ServerOptimizer=fedavg");
        set("ServerLR=0");
}

static void test_clip_and_stale(void **state) {
        _cleanup_free_ float *d = malloc(lay.n_params * sizeof(float));
        size_t sz;
        reply r;

        for (size_t i = 0; i < lay.n_params; i++)
                d[i] = pattern(i, 5);
        _cleanup_free_ void *b = encode(d, 2, &sz);
        set("MaxUpdateNorm=0.01");
        set("ClipUpdates=yes");
        r = send_update("c1", 2, 10, b, sz);
        assert_int_equal(r.status, 200);
        free(r.body);
        agg_update *u;
        size_t n;
        assert_int_equal(agg_store_pending(store, 10, &u, &n), 0);
        assert_int_equal(n, 1);
        assert_true(fabs(u[0].scale * u[0].norm - 0.01) < 1e-6);
        free(u);
        set("MaxUpdateNorm=1000");
        set("ClipUpdates=no");

        set("MaxStaleness=1");
        _cleanup_free_ void *b0 = encode(d, 0, &sz);
        expect_reject(send_update("s1", 0, 10, b0, sz), 409, "stale");
        set("MaxStaleness=8");
}

static void test_status_page(void **state) {
        reply r = http(base_url, "/", NULL, 0, false, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "Model version: <strong>2</strong>"));
        assert_non_null(strstr(r.body, "<svg"));
        assert_non_null(strstr(r.body, "box&lt;1&gt;")); /* escaped */
        assert_null(strstr(r.body, "<script"));
        free(r.body);
}

static void test_rate_limit(void **state) {
        const char *h[] = { auth, NULL };
        reply r = {};
        set("RateLimitPerSec=0.01");
        set("RateLimitBurst=2");
        for (int i = 0; i < 40 && r.status != 429; i++) {
                free(r.body);
                r = http(base_url, "/v1/task", NULL, 0, false, h);
        }
        assert_int_equal(r.status, 429);
        assert_true(has_error(&r, "rate-limited"));
        assert_true(atoi(r.retry_after) >= 1);
        free(r.body);
        set("RateLimitPerSec=1000");
        set("RateLimitBurst=1000");
}

static void test_pure_weights(void **state) {
        uint64_t tok[3] = { 100, 100, 300 }, st[3] = { 0, 3, 0 };
        double w[3];
        assert_int_equal(agg_weights(tok, st, 3, w), 0);
        double a = 100, b = 100 / 2.0, c = 300, s = a + b + c;
        assert_true(fabs(w[0] - a / s) < 1e-12 && fabs(w[1] - b / s) < 1e-12 &&
                    fabs(w[2] - c / s) < 1e-12);
        uint64_t zero[1] = { 0 }, st0[1] = { 0 };
        assert_int_equal(agg_weights(zero, st0, 1, w), -EINVAL);

        float x0[4] = { 1, 2, 3, 4 }, x1[4] = { 2, 2, 2, 2 }, x2[4] = { 100, -100, 3, 4 },
              x3[4] = { 0, 0, 0, 0 };
        const float *d[4] = { x0, x1, x2, x3 };
        double ww[4] = { 0.25, 0.25, 0.25, 0.25 };
        float out[4];
        assert_int_equal(agg_aggregate(d, ww, 4, 4, 0.0, out), 0);
        assert_true(fabsf(out[0] - 25.75f) < 1e-5f && fabsf(out[1] + 24.0f) < 1e-5f);
        /* trim 0.25 of 4: drop min and max per coordinate */
        assert_int_equal(agg_aggregate(d, ww, 4, 4, 0.25, out), 0);
        assert_true(fabsf(out[0] - 1.5f) < 1e-6f && fabsf(out[1] - 1.0f) < 1e-6f &&
                    fabsf(out[2] - 2.5f) < 1e-6f && fabsf(out[3] - 3.0f) < 1e-6f);
        assert_int_equal(agg_aggregate(d, ww, 4, 4, 0.49, out), 0);

        float x[2] = { 0, 0 }, m[2] = { 0, 0 }, v[2] = { 0, 0 }, dd[2] = { 0.5f, -2.0f };
        agg_fedadam(x, m, v, dd, 2, 0.1f);
        assert_true(fabsf(x[0] - 0.1f * 0.05f / (0.05f + 1e-3f)) < 1e-7f);
        assert_true(fabsf(x[1] + 0.1f * 0.2f / (0.2f + 1e-3f)) < 1e-7f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_pure_weights),
                cmocka_unit_test(test_enroll),
                cmocka_unit_test(test_expired_token),
                cmocka_unit_test(test_task_and_model),
                cmocka_unit_test(test_update_refusals),
                cmocka_unit_test(test_update_accept_and_merge_fedavg),
                cmocka_unit_test(test_merge_fedadam),
                cmocka_unit_test(test_clip_and_stale),
                cmocka_unit_test(test_status_page),
                cmocka_unit_test(test_rate_limit),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
