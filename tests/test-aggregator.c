/* SPDX-License-Identifier: MIT */
/* edge-aggregator: the protocol of docs/federation-protocol.md against an in-process server on
 * 127.0.0.1 (enrolment, task/ETag, model ranges, every update refusal reason and its metric,
 * durability, idempotency), the FedBuff arithmetic (weights, FedAvg, FedAdam and delayed
 * Nesterov against hand computations), the server optimizer settings, FedAdam and Nesterov
 * merged over several versions on real stores with a restart in the middle (against a double
 * reference, and bit for bit against a twin store never restarted), an optimizer change, and
 * the status page. kill -9 of the real binary: test-aggregator-crash. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

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
#include "aggregator-harness.h"

static test_agg_harness agg;
static char auth[160];

/* ---- a tiny HTTP client ---- */

/* GET when body is NULL; hdrs NULL-terminated; chunked sends the body without length. */
static reply http(const char *path, const void *body, size_t size, bool chunked,
                  const char *const *hdrs) {
        test_http_options o = { .chunked = chunked };
        return test_http_request_with(agg.base_url, path, body, size, hdrs, &o);
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
        return http("/v1/update", body, size, false, h);
}

static void *encode(const float *delta, uint64_t base, size_t *ret_size) {
        void *body;
        assert_int_equal(upd_encode(UPD_FP32, base, &agg.lay, delta, 0.01f, NULL, &body, ret_size,
                                    NULL),
                         0);
        return body;
}

static float pattern(size_t i, int which) {
        return (float) ((int) ((i * 2654435761u + (unsigned) which * 97u) % 2001u) - 1000) *
               1e-6f;
}

static int64_t metric(const char *line_prefix) {
        reply r = http("/metrics", NULL, 0, false, NULL);
        assert_int_equal(r.status, 200);
        char *p = strstr(r.body, line_prefix);
        int64_t v = p ? strtoll(p + strlen(line_prefix), NULL, 10) : 0;
        free(r.body);
        return v;
}

static void set(const char *kv) {
        char err[256], *a[] = { (char *) kv };
        assert_int_equal(agg_store_set(agg.store, a, 1, false, err, sizeof(err)), 0);
}

/* ---- setup ---- */

static int setup(void **state) {
        return test_agg_harness_start(&agg, "test-aggregator");
}

static int teardown(void **state) {
        return test_agg_harness_stop(&agg, state);
}

/* ---- tests ---- */

static void enroll(const char *token, reply *ret) {
        char body[128];
        snprintf(body, sizeof(body), "{\"token\": \"%s\", \"name\": \"box<1>\"}", token);
        *ret = http("/v1/enroll", body, strlen(body), false, NULL);
}

static void test_enroll(void **state) {
        char tok[AGG_ID_HEX], once[AGG_ID_HEX];
        reply r;

        assert_int_equal(agg_store_token_create(agg.store, 0, 0, tok), 0);
        assert_int_equal(agg_store_token_create(agg.store, 0, 1, once), 0);
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
        assert_int_equal(agg_store_token_create(agg.store, 1, 0, tok), 0);
        sleep(2);
        enroll(tok, &r);
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "bad-token"));
        free(r.body);
}

static void test_task_and_model(void **state) {
        const char *h[] = { auth, NULL };
        char inm[160];
        reply r = http("/v1/task", NULL, 0, false, h), r2, full, part;

        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "\"version\":0"));
        assert_non_null(strstr(r.body, "\"encoding\":\"fp32\""));
        assert_string_equal(r.etag, "\"0-1\"");
        snprintf(inm, sizeof(inm), "If-None-Match: %s", r.etag);
        const char *h2[] = { auth, inm, NULL };
        r2 = http("/v1/task", NULL, 0, false, h2);
        assert_int_equal(r2.status, 304);
        free(r.body);
        free(r2.body);

        const char *none[] = { NULL };
        r = http("/v1/task", NULL, 0, false, none);
        assert_int_equal(r.status, 401);
        assert_true(has_error(&r, "unauthorized"));
        free(r.body);

        full = http("/v1/model/0", NULL, 0, false, h);
        assert_int_equal(full.status, 200);
        assert_true(full.size > 1000);
        const char *h3[] = { auth, "Range: bytes=1000-", NULL };
        part = http("/v1/model/0", NULL, 0, false, h3);
        assert_int_equal(part.status, 206);
        assert_int_equal(part.size, full.size - 1000);
        assert_memory_equal(part.body, full.body + 1000, part.size);
        assert_string_equal(part.etag, full.etag);
        free(full.body);
        free(part.body);
        r = http("/v1/model/99", NULL, 0, false, h);
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
        _cleanup_free_ float *delta = calloc(agg.lay.n_params, sizeof(float));
        size_t size;
        char m[96];

        assert_non_null(delta);
        for (size_t i = 0; i < agg.lay.n_params; i++)
                delta[i] = pattern(i, 1);
        _cleanup_free_ void *body = encode(delta, 0, &size);

        /* auth */
        const char *noauth[] = { "Idempotency-Key: x", "X-Edged-Base-Version: 0",
                                 "X-Edged-Tokens: 1", "X-Edged-Steps: 1", NULL };
        expect_reject(http("/v1/update", body, size, false, noauth), 401, "unauthorized");
        const char *wrong[] = { "Authorization: Bearer 00000000000000000000000000000000:"
                                "0000000000000000000000000000000000000000000000000000000000000000",
                                "Idempotency-Key: x", NULL };
        expect_reject(http("/v1/update", body, size, false, wrong), 401, "unauthorized");
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
        _cleanup_free_ void *bnan = raw_fp32(&agg.lay, 0, delta, &n2, 0);
        expect_reject(send_update("k-nan", 0, 10, bnan, n2), 422, "not-finite");
        delta[17] = 0;
        _cleanup_free_ void *bshape = raw_fp32(&agg.lay, 0, delta, &n2, 1);
        expect_reject(send_update("k-shape", 0, 10, bshape, n2), 422, "wrong-shape");
        /* oversized: announced, and chunked */
        assert_true(size > 1024);
        set("MaxUpdateBytes=1024");
        expect_reject(send_update("k-big", 0, 10, body, size), 413, "too-large");
        const char *h[] = { auth, "Idempotency-Key: k-big2", "X-Edged-Base-Version: 0",
                            "X-Edged-Tokens: 1", "X-Edged-Steps: 1", NULL };
        expect_reject(http("/v1/update", body, size, true, h), 413, "too-large");
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
        assert_int_equal(agg_store_count_pending(agg.store), 0);
}

/* Accepted twice with the same key counts once; durable in a second connection to the DB. */
static void test_update_accept_and_merge_fedavg(void **state) {
        _cleanup_free_ float *d1 = malloc(agg.lay.n_params * sizeof(float)),
                             *d2 = malloc(agg.lay.n_params * sizeof(float));
        size_t s1, s2;
        agg_store *other;
        bool merged;
        reply r;

        for (size_t i = 0; i < agg.lay.n_params; i++) {
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

        assert_int_equal(agg_store_open(agg.store_dir, &other), 0);
        assert_int_equal(agg_store_count_pending(other), 1);
        agg_store_free(other);

        /* one update, K = 2: no merge yet */
        assert_int_equal(agg_merge_once(agg.store, NULL, &merged), 0);
        assert_false(merged);
        r = send_update("u2", 0, 300, b2, s2);
        assert_int_equal(r.status, 200);
        free(r.body);
        assert_int_equal(metric("edge_updates_total{result=\"accepted\"} "), 2);
        assert_int_equal(metric("edge_updates_total{result=\"duplicate\"} "), 1);

        assert_int_equal(agg_merge_once(agg.store, NULL, &merged), 0);
        assert_true(merged);

        agg_version v0, v1;
        assert_int_equal(agg_store_get_version(agg.store, 0, &v0), 0);
        assert_int_equal(agg_store_get_version(agg.store, 1, &v1), 0);
        assert_int_equal(v1.n_updates, 2);
        model *m0, *m1;
        assert_int_equal(model_new(&agg.lay.cfg, 1, 1, &m0), 0);
        assert_int_equal(model_new(&agg.lay.cfg, 1, 1, &m1), 0);
        assert_int_equal(agg_blob_load_model(agg.store_dir, v0.blob, m0), 0);
        assert_int_equal(agg_blob_load_model(agg.store_dir, v1.blob, m1), 0);
        for (size_t i = 0; i < agg.lay.n_params; i++) {
                /* token shares 100:300, both fresh; FedAvg at the default server rate 0.7 */
                double want = (double) m0->params[i] + 0.7 * (0.25 * d1[i] + 0.75 * d2[i]);
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
        assert_int_equal(agg_store_count_pending(agg.store), 0);
}

static void test_merge_fedadam(void **state) {
        _cleanup_free_ float *d1 = malloc(agg.lay.n_params * sizeof(float)),
                             *d2 = malloc(agg.lay.n_params * sizeof(float));
        size_t s1, s2;
        bool merged;
        reply r;

        set("ServerOptimizer=fedadam");
        set("ServerLR=0.01"); /* the older name of ServerLearningRate */
        set("ServerAdamEpsilon=0.004");
        for (size_t i = 0; i < agg.lay.n_params; i++) {
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
        assert_int_equal(agg_merge_once(agg.store, NULL, &merged), 0);
        assert_true(merged);

        agg_version v1, v2;
        assert_int_equal(agg_store_get_version(agg.store, 1, &v1), 0);
        assert_int_equal(agg_store_get_version(agg.store, 2, &v2), 0);
        assert_true(v2.moments[0]);
        model *m1, *m2;
        assert_int_equal(model_new(&agg.lay.cfg, 1, 1, &m1), 0);
        assert_int_equal(model_new(&agg.lay.cfg, 1, 1, &m2), 0);
        assert_int_equal(agg_blob_load_model(agg.store_dir, v1.blob, m1), 0);
        assert_int_equal(agg_blob_load_model(agg.store_dir, v2.blob, m2), 0);
        /* FedBuff weights as published: a1 is fresh (tau 0), a2 one version stale (tau 1),
         * 200 tokens each: w1 = 200 * 1 / 400 = 0.5, w2 = 200 * (1/sqrt(2)) / 400
         * = 1/(2 sqrt(2)) ~ 0.35355 (sum 0.854: the stale half counts for less) */
        double w1 = 0.5, w2 = 1.0 / (2.0 * sqrt(2.0));
        for (size_t i = 0; i < agg.lay.n_params; i++) {
                double d = w1 * d1[i] + w2 * d2[i];
                /* first FedAdam step from zero moments: m = 0.1 d, v = 0.01 d^2, with the
                 * store's ServerAdamEpsilon 4e-3 */
                double mm = 0.1 * d, vv = 0.01 * d * d;
                double want = m1->params[i] + 0.01 * mm / (sqrt(vv) + 4e-3);
                if (fabs(m2->params[i] - want) > 1e-5)
                        fail_msg("param %zu: %g, expected %g", i, (double) m2->params[i], want);
        }
        model_free(m1);
        model_free(m2);
        set("ServerOptimizer=fedavg");
        set("ServerLR=0");
        set("ServerAdamEpsilon=0.001");
}

static void test_clip_and_stale(void **state) {
        _cleanup_free_ float *d = malloc(agg.lay.n_params * sizeof(float));
        size_t sz;
        reply r;

        for (size_t i = 0; i < agg.lay.n_params; i++)
                d[i] = pattern(i, 5);
        _cleanup_free_ void *b = encode(d, 2, &sz);
        set("MaxUpdateNorm=0.01");
        set("ClipUpdates=yes");
        r = send_update("c1", 2, 10, b, sz);
        assert_int_equal(r.status, 200);
        free(r.body);
        agg_update *u;
        size_t n;
        assert_int_equal(agg_store_pending(agg.store, 10, &u, &n), 0);
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
        reply r = http("/", NULL, 0, false, NULL);
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
                r = http("/v1/task", NULL, 0, false, h);
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
        /* FedBuff as published: w_i = n_i s(tau_i) / sum_j n_j, sum_j n_j = 500;
         * s(0) = 1, s(3) = 1/sqrt(4) = 1/2:
         * w = 100/500, 100 * 0.5/500, 300/500 = 0.2, 0.1, 0.6 (sum 0.9, not renormalised) */
        assert_true(fabs(w[0] - 0.2) < 1e-12 && fabs(w[1] - 0.1) < 1e-12 &&
                    fabs(w[2] - 0.6) < 1e-12);
        /* K = 1: staleness still counts: 80 tokens, tau 3: w = 80 * 0.5 / 80 = 0.5 */
        uint64_t one[1] = { 80 }, st3[1] = { 3 };
        assert_int_equal(agg_weights(one, st3, 1, w), 0);
        assert_true(fabs(w[0] - 0.5) < 1e-12);
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
        agg_fedadam(x, m, v, dd, 2, 0.1f, AGG_ADAM_EPS_DEFAULT);
        assert_true(fabsf(x[0] - 0.1f * 0.05f / (0.05f + 1e-3f)) < 1e-7f);
        assert_true(fabsf(x[1] + 0.1f * 0.2f / (0.2f + 1e-3f)) < 1e-7f);
        /* epsilon is the caller's: m = 0.1 d = 0.05, sqrt(v) = sqrt(0.01 d^2) = 0.05; with
         * eps 0.05, x = 0.1 * 0.05 / (0.05 + 0.05) = 0.05 */
        float xe[1] = { 0 }, me[1] = { 0 }, ve[1] = { 0 }, de[1] = { 0.5f };
        agg_fedadam(xe, me, ve, de, 1, 0.1f, 0.05f);
        assert_true(fabsf(xe[0] - 0.05f) < 1e-7f);
}

/* ---- delayed Nesterov by hand ---- */

/* Values after one merge. lr = mu = 0.5 and dyadic deltas: every float operation is exact, so
 * the hand computation is compared with ==. */
typedef struct {
        float x[3], m[3], acc[3];
        uint32_t count;
} nesterov_want;

static const float nesterov_g[5][3] = {
        { 1, -2, 0.25f }, { 3, 2, 0.25f }, { -1, 0, 1 }, { 1, 4, -1 }, { 2, -2, 0.5f },
};

static void run_nesterov(uint32_t period, const nesterov_want *want, size_t n_merges) {
        float x[3] = { 1, 1, 1 }, m[3] = { 0, 0, 0 }, acc[3] = { 0, 0, 0 };
        uint32_t count = 0;
        agg_nesterov_params p = { .lr = 0.5f, .mu = 0.5f, .period = period };

        for (size_t k = 0; k < n_merges; k++) {
                const nesterov_want *w = &want[k];
                agg_nesterov(x, m, acc, &count, nesterov_g[k], 3, &p);
                for (int j = 0; j < 3; j++)
                        if (x[j] != w->x[j] || m[j] != w->m[j] || acc[j] != w->acc[j])
                                fail_msg("period %u, merge %zu, coordinate %d: x %g m %g acc %g, "
                                         "expected %g %g %g",
                                         period, k + 1, j, (double) x[j], (double) m[j],
                                         (double) acc[j], (double) w->x[j], (double) w->m[j],
                                         (double) w->acc[j]);
                if (count != w->count)
                        fail_msg("period %u, merge %zu: count %u, expected %u", period, k + 1,
                                 count, w->count);
        }
}

static void test_pure_nesterov(void **state) {
        /* x0 = (1, 1, 1); g1..g5 = nesterov_g. Period 2, lr 0.5, mu 0.5: at every merge
         * x += (lr/2) g = 0.25 g and acc += g; at every second merge m = 0.5 m + acc/2,
         * x += lr mu m = 0.25 m, acc = 0, count = 0. */
        static const nesterov_want p2[5] = {
                /* 1: x = 1 + 0.25 (1, -2, 0.25) = (1.25, 0.5, 1.0625); acc = g1 */
                { { 1.25f, 0.5f, 1.0625f }, { 0, 0, 0 }, { 1, -2, 0.25f }, 1 },
                /* 2: x = (1.25 + 0.75, 0.5 + 0.5, 1.0625 + 0.0625) = (2, 1, 1.125);
                 *    acc = g1 + g2 = (4, 0, 0.5): momentum step m = 0 + acc/2 = (2, 0, 0.25),
                 *    x += 0.25 m = (2.5, 1, 1.1875) */
                { { 2.5f, 1, 1.1875f }, { 2, 0, 0.25f }, { 0, 0, 0 }, 0 },
                /* 3: x += 0.25 (-1, 0, 1) = (2.25, 1, 1.4375); acc = g3; m unchanged */
                { { 2.25f, 1, 1.4375f }, { 2, 0, 0.25f }, { -1, 0, 1 }, 1 },
                /* 4: x += 0.25 (1, 4, -1) = (2.5, 2, 1.1875); acc = g3 + g4 = (0, 4, 0):
                 *    m = 0.5 (2, 0, 0.25) + (0, 2, 0) = (1, 2, 0.125), x += 0.25 m
                 *    = (2.75, 2.5, 1.21875). Over merges 3-4 that is DiLoCo's
                 *    x += lr (mean g + mu m) = 0.5 ((0, 2, 0) + 0.5 (1, 2, 0.125))
                 *    = (0.25, 1.5, 0.03125) from (2.5, 1, 1.1875): the same. */
                { { 2.75f, 2.5f, 1.21875f }, { 1, 2, 0.125f }, { 0, 0, 0 }, 0 },
                /* 5: x += 0.25 (2, -2, 0.5) = (3.25, 2, 1.34375); acc = g5 */
                { { 3.25f, 2, 1.34375f }, { 1, 2, 0.125f }, { 2, -2, 0.5f }, 1 },
        };
        /* Period 1: Nesterov at every merge, x += lr g, m = mu m + g, x += lr mu m (PyTorch
         * SGD nesterov=True on -g: x += lr (g + mu m)). */
        static const nesterov_want p1[3] = {
                /* 1: x = 1 + 0.5 g1 = (1.5, 0, 1.125); m = g1 = (1, -2, 0.25);
                 *    x += 0.25 m = (1.75, -0.5, 1.1875) */
                { { 1.75f, -0.5f, 1.1875f }, { 1, -2, 0.25f }, { 0, 0, 0 }, 0 },
                /* 2: x += 0.5 (3, 2, 0.25) = (3.25, 0.5, 1.3125); m = 0.5 (1, -2, 0.25)
                 *    + (3, 2, 0.25) = (3.5, 1, 0.375); x += 0.25 m = (4.125, 0.75, 1.40625) */
                { { 4.125f, 0.75f, 1.40625f }, { 3.5f, 1, 0.375f }, { 0, 0, 0 }, 0 },
                /* 3: x += 0.5 (-1, 0, 1) = (3.625, 0.75, 1.90625); m = 0.5 (3.5, 1, 0.375)
                 *    + (-1, 0, 1) = (0.75, 0.5, 1.1875); x += 0.25 m = (3.8125, 0.875, 2.203125) */
                { { 3.8125f, 0.875f, 2.203125f }, { 0.75f, 0.5f, 1.1875f }, { 0, 0, 0 }, 0 },
        };

        run_nesterov(2, p2, ARRAY_SIZE(p2));
        run_nesterov(1, p1, ARRAY_SIZE(p1));
}

/* ---- settings of the server optimizer ---- */

typedef struct {
        char optimizer[16], lr[32], momentum[32], period[32], eps[32];
        bool old_name;
} emitted;

static void collect(const char *k, const char *v, void *userdata) {
        emitted *e = userdata;
        if (!strcmp(k, "ServerOptimizer"))
                snprintf(e->optimizer, sizeof(e->optimizer), "%s", v);
        else if (!strcmp(k, "ServerLearningRate"))
                snprintf(e->lr, sizeof(e->lr), "%s", v);
        else if (!strcmp(k, "ServerMomentum"))
                snprintf(e->momentum, sizeof(e->momentum), "%s", v);
        else if (!strcmp(k, "ServerMomentumPeriod"))
                snprintf(e->period, sizeof(e->period), "%s", v);
        else if (!strcmp(k, "ServerAdamEpsilon"))
                snprintf(e->eps, sizeof(e->eps), "%s", v);
        else if (!strcmp(k, "ServerLR"))
                e->old_name = true;
}

static float stored_server_lr(agg_store *s) {
        _cleanup_free_ agg_settings *set = malloc(sizeof(*set));
        assert_non_null(set);
        assert_int_equal(agg_store_load_settings(s, set), 0);
        return set->server_lr;
}

static int64_t settings_rows(sqlite3 *db, const char *key) {
        sqlite3_stmt *st = NULL;
        int64_t n = -1;
        assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM settings WHERE key=?", -1,
                                            &st, NULL),
                         SQLITE_OK);
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
                n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return n;
}

static void test_settings_server_optimizer(void **state) {
        _cleanup_free_ agg_settings *s = malloc(sizeof(*s));
        model_config cfg;
        emitted e = {};
        char err[256];

        assert_non_null(s);
        model_config_by_name("tiny", &cfg);
        agg_settings_default(s, &cfg);
        /* the defaults are provisional (being measured): their ranges only */
        assert_int_equal(s->optimizer, AGG_OPT_FEDAVG);
        assert_true(s->server_momentum >= 0 && s->server_momentum < 1);
        assert_true(s->server_momentum_period >= 1);
        assert_true(s->server_adam_eps > 0);
        assert_int_equal(agg_settings_apply(s, "ServerOptimizer", "nesterov", err, sizeof(err)), 0);
        assert_int_equal(s->optimizer, AGG_OPT_NESTEROV);
        assert_true(agg_settings_server_lr(s) > 0);
        assert_int_equal(agg_settings_apply(s, "ServerOptimizer", "sgd", err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "nesterov"));

        /* the learning rate under both names; the newer wins when it is applied last */
        assert_int_equal(agg_settings_apply(s, "ServerLR", "0.25", err, sizeof(err)), 0);
        assert_true(agg_settings_server_lr(s) == 0.25f);
        assert_int_equal(agg_settings_apply(s, "ServerLearningRate", "0.5", err, sizeof(err)), 0);
        assert_true(agg_settings_server_lr(s) == 0.5f);
        assert_int_equal(agg_settings_apply(s, "ServerLearningRate", "-1", err, sizeof(err)),
                         -EINVAL);
        assert_string_equal(agg_settings_canonical_key("ServerLR"), "ServerLearningRate");
        assert_string_equal(agg_settings_canonical_key("LR"), "LR");
        assert_string_equal(agg_settings_old_key("ServerLearningRate"), "ServerLR");
        assert_null(agg_settings_old_key("ServerMomentum"));

        /* ranges: momentum [0, 1), period a whole number >= 1, epsilon > 0 */
        assert_int_equal(agg_settings_apply(s, "ServerMomentum", "1", err, sizeof(err)), -EINVAL);
        assert_int_equal(agg_settings_apply(s, "ServerMomentum", "-0.1", err, sizeof(err)),
                         -EINVAL);
        assert_int_equal(agg_settings_apply(s, "ServerMomentum", "0", err, sizeof(err)), 0);
        assert_int_equal(agg_settings_apply(s, "ServerMomentum", "0.95", err, sizeof(err)), 0);
        assert_true(s->server_momentum == 0.95f);
        assert_int_equal(agg_settings_apply(s, "ServerMomentumPeriod", "0", err, sizeof(err)),
                         -EINVAL);
        assert_int_equal(agg_settings_apply(s, "ServerMomentumPeriod", "1.5", err, sizeof(err)),
                         -EINVAL);
        assert_int_equal(agg_settings_apply(s, "ServerMomentumPeriod", "3", err, sizeof(err)), 0);
        assert_int_equal(s->server_momentum_period, 3);
        assert_int_equal(agg_settings_apply(s, "ServerAdamEpsilon", "0", err, sizeof(err)),
                         -EINVAL);
        assert_int_equal(agg_settings_apply(s, "ServerAdamEpsilon", "1e-8", err, sizeof(err)), 0);
        assert_true(s->server_adam_eps == 1e-8f);

        /* listed under the new name only */
        agg_settings_foreach(s, collect, &e);
        assert_string_equal(e.optimizer, "nesterov");
        assert_string_equal(e.lr, "0.5");
        assert_string_equal(e.momentum, "0.95");
        assert_string_equal(e.period, "3");
        assert_string_equal(e.eps, "1e-08");
        assert_false(e.old_name);

        /* a store written before the rename keeps its rate; a later 'set' under either name
         * replaces it rather than being shadowed by a row under the other name */
        _cleanup_free_ char *dir = test_tmp_path("alias-store"), *db_path = NULL;
        char *kv[] = { "Model=tiny" };
        agg_store *st;
        sqlite3 *db;
        assert_int_equal(agg_store_create(dir, &st), 0);
        assert_int_equal(agg_store_set(st, kv, 1, true, err, sizeof(err)), 0);
        assert_true(asprintf(&db_path, "%s/%s", dir, AGG_DB_NAME) > 0);
        assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        assert_int_equal(sqlite3_exec(db, "INSERT INTO settings(key, value) VALUES('ServerLR', "
                                          "'0.25')",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        assert_true(stored_server_lr(st) == 0.25f);
        char *kv_new[] = { "ServerLearningRate=0.5" }, *kv_old[] = { "ServerLR=0.125" };
        assert_int_equal(agg_store_set(st, kv_new, 1, false, err, sizeof(err)), 0);
        assert_true(stored_server_lr(st) == 0.5f);
        assert_int_equal(settings_rows(db, "ServerLR"), 0);
        assert_int_equal(agg_store_set(st, kv_old, 1, false, err, sizeof(err)), 0);
        assert_true(stored_server_lr(st) == 0.125f);
        assert_int_equal(settings_rows(db, "ServerLR"), 0);
        assert_int_equal(settings_rows(db, "ServerLearningRate"), 1);
        sqlite3_close(db);
        agg_store_free(st);
}

/* ---- merges on stores of their own: the optimizers over several versions, a restart ---- */

#define CHAIN_MERGES 6
#define CHAIN_RESTART 3      /* the store is closed and opened again after this many merges */
#define CHAIN_STALENESS 2    /* MaxStaleness: blobs of 3 versions are kept */
#define CHAIN_TOL 1e-6       /* float server against the double reference, on parameters */
#define CHAIN_STATE_TOL 1e-8 /* ... on the optimizer state (values ~1e-3 and below) */
#define NESTEROV_STATE_BYTES(n) (8 * (n) + 8)

/* What a restart could lose: the reference is also run with that loss, and the published
 * versions must be far from it. */
typedef enum { LOSE_NOTHING, LOSE_ALL, LOSE_COUNT, LOSE_SECOND } chain_loss;

/* The reference in double: parameters x and the optimizer's state (nesterov: m, the sum a of
 * the merged deltas and their count c; fedadam: m and the second moment in a). */
typedef struct {
        chain_loss loss;
        double *x, *m, *a;
        uint32_t c;
} chain_ref;

typedef struct {
        agg_optimizer opt;
        const char *settings[4];
        double lr, mu, eps; /* as the store holds them (floats) */
        uint32_t period;
} chain_opts;

/* One update of merge k (1-based): 'a' is fresh, 'b' as stale as the store allows. */
static void chain_update(int k, int which, uint64_t *ret_base, uint64_t *ret_tokens,
                         int *ret_pattern) {
        if (which == 0) {
                *ret_base = (uint64_t) k - 1;
                *ret_tokens = 100 + 50 * (uint64_t) k;
        } else {
                *ret_base = k - 1 >= CHAIN_STALENESS ? (uint64_t) (k - 1 - CHAIN_STALENESS) : 0;
                *ret_tokens = 300;
        }
        *ret_pattern = 20 + 2 * k + which;
}

static agg_store *chain_store(const char *name, const chain_opts *o, char **ret_dir) {
        char err[256], sha[65], staleness[32];
        agg_store *s;
        model *m;
        model_config cfg;

        snprintf(staleness, sizeof(staleness), "MaxStaleness=%d", CHAIN_STALENESS);
        char *kv[5 + ARRAY_SIZE(o->settings)] = { "Model=tiny", "BufferSize=2", "Encoding=fp32",
                                                  "MaxUpdateNorm=1000", staleness };
        size_t n = 5;
        for (size_t i = 0; i < ARRAY_SIZE(o->settings) && o->settings[i]; i++)
                kv[n++] = (char *) o->settings[i];
        *ret_dir = test_tmp_path(name);
        model_config_by_name("tiny", &cfg);
        assert_int_equal(agg_store_create(*ret_dir, &s), 0);
        if (agg_store_set(s, kv, n, true, err, sizeof(err)) < 0)
                fail_msg("%s", err);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, 7);
        assert_int_equal(agg_blob_save_model(*ret_dir, m, 0, sha), 0);
        assert_int_equal(agg_store_insert_version0(s, sha), 0);
        model_free(m);
        return s;
}

static void chain_put(agg_store *s, int k) {
        _cleanup_free_ float *d = malloc(agg.lay.n_params * sizeof(float));
        assert_non_null(d);
        for (int which = 0; which < 2; which++) {
                agg_update u = { .steps = 10, .loss = 3.5, .scale = 1 };
                char key[32];
                int64_t id;
                bool dup;
                size_t size;
                int pat;
                chain_update(k, which, &u.base_version, &u.tokens, &pat);
                for (size_t i = 0; i < agg.lay.n_params; i++)
                        d[i] = pattern(i, pat);
                _cleanup_free_ void *body = encode(d, u.base_version, &size);
                u.norm = agg_l2_norm(d, agg.lay.n_params);
                u.bytes = size;
                snprintf(u.device, sizeof(u.device), "0123456789abcdef0123456789abcde%d", which);
                snprintf(key, sizeof(key), "chain-%d-%d", k, which);
                assert_int_equal(agg_store_insert_update(s, &u, key, body, size, &id, &dup), 0);
                assert_false(dup);
        }
}

/* The merged delta of merge k, FedBuff as published, in double. */
static void chain_delta(int k, double *g) {
        uint64_t base[2], tokens[2];
        int pat[2];
        double w[2];

        for (int which = 0; which < 2; which++)
                chain_update(k, which, &base[which], &tokens[which], &pat[which]);
        for (int which = 0; which < 2; which++) {
                double tau = (double) ((uint64_t) k - 1 - base[which]);
                w[which] =
                        (double) tokens[which] / sqrt(1.0 + tau) / (double) (tokens[0] + tokens[1]);
        }
        for (size_t j = 0; j < agg.lay.n_params; j++)
                g[j] = w[0] * pattern(j, pat[0]) + w[1] * pattern(j, pat[1]);
}

static void chain_ref_step(const chain_opts *o, chain_ref *r, const double *g) {
        size_t n = agg.lay.n_params;

        if (o->opt == AGG_OPT_FEDADAM) {
                for (size_t j = 0; j < n; j++) {
                        r->m[j] = 0.9 * r->m[j] + 0.1 * g[j];
                        r->a[j] = 0.99 * r->a[j] + 0.01 * g[j] * g[j];
                        r->x[j] += o->lr * r->m[j] / (sqrt(r->a[j]) + o->eps);
                }
                return;
        }
        for (size_t j = 0; j < n; j++) {
                r->x[j] += o->lr / o->period * g[j];
                r->a[j] += g[j];
        }
        if (++r->c < o->period)
                return;
        for (size_t j = 0; j < n; j++) {
                r->m[j] = o->mu * r->m[j] + r->a[j] / o->period;
                r->x[j] += o->lr * o->mu * r->m[j];
                r->a[j] = 0;
        }
        r->c = 0;
}

static void chain_ref_restart(chain_ref *r) {
        size_t n = agg.lay.n_params;
        if (r->loss == LOSE_ALL || r->loss == LOSE_SECOND)
                memset(r->a, 0, n * sizeof(double));
        if (r->loss == LOSE_ALL)
                memset(r->m, 0, n * sizeof(double));
        if (r->loss == LOSE_ALL || r->loss == LOSE_COUNT)
                r->c = 0;
}

static bool near(double got, double want, double tol) {
        return fabs(got - want) <= tol + 1e-5 * fabs(want);
}

static model *load_version(agg_store *s, const char *dir, uint64_t version, agg_version *ret) {
        model *m;
        assert_int_equal(agg_store_get_version(s, version, ret), 0);
        assert_int_equal(model_new(&agg.lay.cfg, 1, 1, &m), 0);
        assert_int_equal(agg_blob_load_model(dir, ret->blob, m), 0);
        return m;
}

/* The optimizer state saved with version v, checked against the reference. */
static void check_state(const chain_opts *o, const char *dir, const agg_version *v,
                        const chain_ref *r) {
        size_t n = agg.lay.n_params, size;
        _cleanup_free_ void *buf = NULL;
        uint32_t count = 0;

        if (!v->moments[0])
                fail_msg("version %" PRIu64 " has no optimizer state", v->version);
        assert_int_equal(agg_blob_load_bytes(dir, v->moments, 16 * n, &buf, &size), 0);
        const float *m = buf, *a = (const float *) buf + n;
        if (o->opt == AGG_OPT_NESTEROV) {
                /* m[n] acc[n] "EDNM" count */
                assert_int_equal(size, NESTEROV_STATE_BYTES(n));
                assert_memory_equal((const char *) buf + 8 * n, "EDNM", 4);
                memcpy(&count, (const char *) buf + 8 * n + 4, 4);
                if (count != r->c)
                        fail_msg("version %" PRIu64 ": count %u saved, expected %u", v->version,
                                 count, r->c);
        } else
                assert_int_equal(size, 8 * n); /* m[n] v[n] */
        for (size_t j = 0; j < n; j++)
                if (!near(m[j], r->m[j], CHAIN_STATE_TOL) ||
                    !near(a[j], r->a[j], CHAIN_STATE_TOL * 1e-2))
                        fail_msg("version %" PRIu64 ", coordinate %zu: state %g %g, expected %g %g",
                                 v->version, j, (double) m[j], (double) a[j], r->m[j], r->a[j]);
}

static size_t count_files(const char *dir) {
        _cleanup_free_ char *path = NULL;
        assert_true(asprintf(&path, "%s/blobs", dir) > 0);
        return test_count_entries(path);
}

/* CHAIN_MERGES merges of two updates each (one fresh, one stale) through agg_merge_once on a
 * real store, closed and opened again after CHAIN_RESTART of them, beside a twin store that
 * is never restarted. Every published version must match the double reference, and the twin
 * bit for bit (parameters and the content-addressed state blob); versions after the restart
 * must be far from a reference that lost state in the restart. */
static void run_chain(const chain_opts *o, const char *name, const chain_loss *losses,
                      size_t n_losses) {
        _cleanup_free_ char *dir = NULL, *twin_dir = NULL;
        char twin_name[64];
        size_t n = agg.lay.n_params;
        chain_ref refs[4] = {};
        _cleanup_free_ double *g = malloc(n * sizeof(double));
        agg_store *s, *twin;
        model *x0;
        agg_version v0;
        bool merged;

        double max_err = 0, min_far[ARRAY_SIZE(refs)] = { INFINITY, INFINITY, INFINITY, INFINITY };

        assert_true(n_losses + 1 <= ARRAY_SIZE(refs));
        assert_non_null(g);
        snprintf(twin_name, sizeof(twin_name), "%s-twin", name);
        s = chain_store(name, o, &dir);
        twin = chain_store(twin_name, o, &twin_dir);
        x0 = load_version(s, dir, 0, &v0);
        for (size_t i = 0; i <= n_losses; i++) {
                chain_ref *r = &refs[i];
                r->loss = i == 0 ? LOSE_NOTHING : losses[i - 1];
                r->x = malloc(n * sizeof(double));
                r->m = calloc(n, sizeof(double));
                r->a = calloc(n, sizeof(double));
                assert_true(r->x && r->m && r->a);
                for (size_t j = 0; j < n; j++)
                        r->x[j] = x0->params[j];
        }
        model_free(x0);

        for (int k = 1; k <= CHAIN_MERGES; k++) {
                agg_version v, tv;
                chain_put(s, k);
                chain_put(twin, k);
                assert_int_equal(agg_merge_once(s, NULL, &merged), 0);
                assert_true(merged);
                assert_int_equal(agg_merge_once(twin, NULL, &merged), 0);
                assert_true(merged);
                chain_delta(k, g);
                for (size_t i = 0; i <= n_losses; i++)
                        chain_ref_step(o, &refs[i], g);

                model *x = load_version(s, dir, (uint64_t) k, &v);
                model *tx = load_version(twin, twin_dir, (uint64_t) k, &tv);
                for (size_t j = 0; j < n; j++) {
                        if (!near(x->params[j], refs[0].x[j], CHAIN_TOL))
                                fail_msg("%s, version %d, param %zu: %.9g, expected %.9g", name,
                                         k, j, (double) x->params[j], refs[0].x[j]);
                        max_err = MAX(max_err, fabs(x->params[j] - refs[0].x[j]));
                }
                check_state(o, dir, &v, &refs[0]);
                /* the restarted store and its twin: the same bits */
                if (memcmp(x->params, tx->params, n * sizeof(float)) != 0)
                        fail_msg("%s, version %d: the parameters differ from the twin's", name, k);
                assert_string_equal(v.moments, tv.moments);
                /* after the restart, far from every reference that lost state in it */
                for (size_t i = 1; i <= n_losses && k > CHAIN_RESTART; i++) {
                        double far = 0;
                        for (size_t j = 0; j < n; j++)
                                far = MAX(far, fabs(x->params[j] - refs[i].x[j]));
                        if (!(far > 10 * CHAIN_TOL))
                                fail_msg("%s, version %d: within %g of a reference that lost "
                                         "state %d in the restart",
                                         name, k, far, (int) refs[i].loss);
                        min_far[i] = MIN(min_far[i], far);
                }
                model_free(x);
                model_free(tx);

                if (k == CHAIN_RESTART) {
                        agg_store_free(s);
                        assert_int_equal(agg_store_open(dir, &s), 0);
                        for (size_t i = 0; i <= n_losses; i++)
                                chain_ref_restart(&refs[i]);
                }
        }

        /* pruning kept exactly the model and state blobs of the newest MaxStaleness + 1
         * versions, and those are whole (agg_blob_load_bytes checks the hash) */
        for (int k = CHAIN_MERGES - CHAIN_STALENESS; k <= CHAIN_MERGES; k++) {
                agg_version v;
                _cleanup_free_ void *buf = NULL;
                size_t size;
                assert_int_equal(agg_store_get_version(s, (uint64_t) k, &v), 0);
                assert_int_equal(agg_blob_load_bytes(dir, v.moments, 16 * n, &buf, &size), 0);
        }
        assert_int_equal(count_files(dir), 2 * (CHAIN_STALENESS + 1));

        printf("%s: %d versions (restart after %d) within %.2g of the reference, bit for bit "
               "the twin's; a restart losing",
               name, CHAIN_MERGES, CHAIN_RESTART, max_err);
        for (size_t i = 1; i <= n_losses; i++)
                printf("%s %s would be >= %.2g away", i > 1 ? "," : "",
                       refs[i].loss == LOSE_ALL     ? "all the state"
                       : refs[i].loss == LOSE_COUNT ? "the count"
                       : o->opt == AGG_OPT_FEDADAM  ? "the second moment"
                                                    : "the accumulated deltas",
                       min_far[i]);
        printf("\n");

        for (size_t i = 0; i <= n_losses; i++) {
                free(refs[i].x);
                free(refs[i].m);
                free(refs[i].a);
        }
        agg_store_free(s);
        agg_store_free(twin);
}

static void test_merge_nesterov_restart(void **state) {
        /* explicit knobs: the defaults are provisional */
        static const chain_opts o = {
                .opt = AGG_OPT_NESTEROV,
                .settings = { "ServerOptimizer=nesterov", "ServerLearningRate=0.6",
                              "ServerMomentum=0.8", "ServerMomentumPeriod=2" },
                .lr = (double) 0.6f,
                .mu = (double) 0.8f,
                .period = 2,
        };
        /* the restart comes after merge 3, mid-period (count 1, acc = g3): losing the
         * momentum, the count, or the accumulated delta would each change versions 4-6 */
        static const chain_loss losses[] = { LOSE_ALL, LOSE_COUNT, LOSE_SECOND };
        run_chain(&o, "nesterov", losses, ARRAY_SIZE(losses));

        /* period 1: the momentum steps at every merge, restored across the restart */
        static const chain_opts o1 = {
                .opt = AGG_OPT_NESTEROV,
                .settings = { "ServerOptimizer=nesterov", "ServerLearningRate=0.6",
                              "ServerMomentum=0.8", "ServerMomentumPeriod=1" },
                .lr = (double) 0.6f,
                .mu = (double) 0.8f,
                .period = 1,
        };
        static const chain_loss loss_all[] = { LOSE_ALL };
        run_chain(&o1, "nesterov-p1", loss_all, ARRAY_SIZE(loss_all));
}

static void test_merge_fedadam_restart(void **state) {
        static const chain_opts o = {
                .opt = AGG_OPT_FEDADAM,
                .settings = { "ServerOptimizer=fedadam", "ServerLearningRate=0.02",
                              "ServerAdamEpsilon=0.002" },
                .lr = (double) 0.02f,
                .eps = (double) 0.002f,
        };
        static const chain_loss losses[] = { LOSE_ALL, LOSE_SECOND };
        run_chain(&o, "fedadam", losses, ARRAY_SIZE(losses));
}

/* Changing ServerOptimizer: the new optimizer starts from zero instead of reading the other's
 * state (whose layout differs), and fedavg keeps none. */
static void test_merge_optimizer_switch(void **state) {
        static const chain_opts o = { .settings = { "ServerOptimizer=fedadam" } };
        _cleanup_free_ char *dir = NULL;
        _cleanup_free_ double *g = malloc(agg.lay.n_params * sizeof(double));
        size_t n = agg.lay.n_params, size;
        char err[256];
        agg_version v;
        bool merged;
        agg_store *s = chain_store("switch", &o, &dir);

        assert_non_null(g);
        /* v1: fedadam from zero */
        chain_put(s, 1);
        assert_int_equal(agg_merge_once(s, NULL, &merged), 0);
        assert_true(merged);
        assert_int_equal(agg_store_get_version(s, 1, &v), 0);
        {
                _cleanup_free_ void *buf = NULL;
                assert_int_equal(agg_blob_load_bytes(dir, v.moments, 16 * n, &buf, &size), 0);
                assert_int_equal(size, 8 * n);
        }
        /* v2: nesterov from zero, period 2: m stays 0, acc = g2, count 1, x += (lr/2) g2 */
        char *kv[] = { "ServerOptimizer=nesterov", "ServerLearningRate=0.5",
                       "ServerMomentumPeriod=2" };
        assert_int_equal(agg_store_set(s, kv, ARRAY_SIZE(kv), false, err, sizeof(err)), 0);
        chain_put(s, 2);
        assert_int_equal(agg_merge_once(s, NULL, &merged), 0);
        assert_true(merged);
        chain_delta(2, g);
        model *x1 = load_version(s, dir, 1, &v), *x2 = load_version(s, dir, 2, &v);
        for (size_t j = 0; j < n; j++)
                if (!near(x2->params[j], x1->params[j] + 0.25 * g[j], CHAIN_TOL))
                        fail_msg("v2 param %zu: %.9g, expected %.9g", j, (double) x2->params[j],
                                 x1->params[j] + 0.25 * g[j]);
        {
                _cleanup_free_ void *buf = NULL;
                uint32_t count;
                assert_int_equal(agg_blob_load_bytes(dir, v.moments, 16 * n, &buf, &size), 0);
                assert_int_equal(size, NESTEROV_STATE_BYTES(n));
                const float *m = buf, *acc = (const float *) buf + n;
                memcpy(&count, (const char *) buf + 8 * n + 4, 4);
                assert_int_equal(count, 1);
                for (size_t j = 0; j < n; j++)
                        if (m[j] != 0 || !near(acc[j], g[j], CHAIN_STATE_TOL))
                                fail_msg("v2 state %zu: m %g acc %g, expected 0 %g", j,
                                         (double) m[j], (double) acc[j], g[j]);
        }
        /* v3: fedadam again, from zero, not from Nesterov's m and acc */
        char *kv2[] = { "ServerOptimizer=fedadam", "ServerLearningRate=0.01" };
        assert_int_equal(agg_store_set(s, kv2, ARRAY_SIZE(kv2), false, err, sizeof(err)), 0);
        chain_put(s, 3);
        assert_int_equal(agg_merge_once(s, NULL, &merged), 0);
        assert_true(merged);
        chain_delta(3, g);
        model *x3 = load_version(s, dir, 3, &v);
        for (size_t j = 0; j < n; j++) {
                double mm = 0.1 * g[j], vv = 0.01 * g[j] * g[j];
                double want =
                        x2->params[j] + 0.01 * mm / (sqrt(vv) + (double) AGG_ADAM_EPS_DEFAULT);
                if (!near(x3->params[j], want, CHAIN_TOL))
                        fail_msg("v3 param %zu: %.9g, expected %.9g", j, (double) x3->params[j],
                                 want);
        }
        /* v4: fedavg keeps no state */
        char *kv3[] = { "ServerOptimizer=fedavg" };
        assert_int_equal(agg_store_set(s, kv3, 1, false, err, sizeof(err)), 0);
        chain_put(s, 4);
        assert_int_equal(agg_merge_once(s, NULL, &merged), 0);
        assert_true(merged);
        assert_int_equal(agg_store_get_version(s, 4, &v), 0);
        assert_string_equal(v.moments, "");
        model_free(x1);
        model_free(x2);
        model_free(x3);
        agg_store_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_pure_weights),
                cmocka_unit_test(test_pure_nesterov),
                cmocka_unit_test(test_settings_server_optimizer),
                cmocka_unit_test(test_merge_nesterov_restart),
                cmocka_unit_test(test_merge_fedadam_restart),
                cmocka_unit_test(test_merge_optimizer_switch),
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
        return test_run_group("test-aggregator", tests, setup, teardown);
}
