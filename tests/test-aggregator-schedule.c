/* SPDX-License-Identifier: MIT */
/* edge-aggregator: the fleet's learning-rate schedule and the per-device step budgets
 * (docs/federation-protocol.md, Task). The pure functions against hand-computed values; then
 * an in-process server: the lr a task serves equals the schedule at the tokens merged into
 * its version (kept in the version row, durable, rebuilt from the update log for a store made
 * before the column), and devices whose rounds the server timed at different speeds get
 * different budgets, each bounded by what it was asked. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lr-schedule.h"
#include "macros.h"
#include "merger.h"
#include "model.h"
#include "round-budget.h"
#include "server.h"
#include "store.h"
#include "update-codec.h"
#include "test-files.h"
#include "test-http.h"
#include "aggregator-harness.h"

static test_agg_harness agg;

/* relative tolerance: the task carries 7 significant digits */
static void assert_close(double got, double want) {
        if (!(fabs(got - want) <= 1e-6 * fabs(want)))
                fail_msg("got %.10g, expected %.10g", got, want);
}

/* ---- the pure parts ---- */

static void test_lr_position(void **state) {
        /* K 4 x 10 steps x batch 8 x T 128 = 40960 tokens ahead of what is merged */
        assert_int_equal(agg_lr_position(0, 4, 10, 8, 128), 40960);
        assert_int_equal(agg_lr_position(1000000, 4, 10, 8, 128), 1040960);
        assert_int_equal(agg_lr_position(5, 0, 10, 8, 128), 5); /* no buffer, no lead */
        assert_true(agg_lr_position(UINT64_MAX - 1, 4, 10, 8, 128) == UINT64_MAX); /* saturates */
}

static void test_lr_schedule(void **state) {
        /* LR 0.001, warmup 1000 tokens, cosine to the horizon at 11000, LRMin 0: LR/10 */
        agg_lr_schedule s = { .kind = AGG_LR_COSINE, .lr = 0.001f, .lr_min = 0,
                              .warmup_tokens = 1000, .horizon_tokens = 11000 };

        assert_close(agg_lr_at(&s, 0), 0.001 * 1 / 1000);   /* warmup starts at LR/W, not 0 */
        assert_close(agg_lr_at(&s, 1), 0.001 * 1 / 1000);
        assert_close(agg_lr_at(&s, 250), 0.00025);
        assert_close(agg_lr_at(&s, 500), 0.0005);
        assert_close(agg_lr_at(&s, 999), 0.000999);
        assert_close(agg_lr_at(&s, 1000), 0.001);           /* the peak: cos(0) */
        /* a quarter of the cosine: 1e-4 + 9e-4 * (1 + cos(pi/4)) / 2 */
        assert_close(agg_lr_at(&s, 3500), 0.0001 + 0.0009 * (1 + 0.70710678118654752) / 2);
        assert_close(agg_lr_at(&s, 6000), 0.00055);         /* half way: the mean of both ends */
        /* three quarters: 1e-4 + 9e-4 * (1 - cos(pi/4)) / 2 */
        assert_close(agg_lr_at(&s, 8500), 0.0001 + 0.0009 * (1 - 0.70710678118654752) / 2);
        assert_close(agg_lr_at(&s, 11000), 0.0001);         /* the horizon: LRMin */
        assert_close(agg_lr_at(&s, 11001), 0.0001);
        assert_close(agg_lr_at(&s, 1000000000000ull), 0.0001); /* beyond: stays there */
        /* the schedule only falls after the warmup */
        for (uint64_t t = 1000; t < 11000; t += 100)
                assert_true(agg_lr_at(&s, t + 100) <= agg_lr_at(&s, t));

        /* an absolute LRMin */
        s.lr_min = 0.0002f;
        assert_close(agg_lr_at(&s, 6000), 0.0006);
        assert_close(agg_lr_at(&s, 20000), 0.0002);
        /* LRMin above LR is LR: flat after the warmup */
        s.lr_min = 0.005f;
        assert_close(agg_lr_at(&s, 6000), 0.001);
        assert_close(agg_lr_at(&s, 20000), 0.001);
        s.lr_min = 0;
        /* no warmup: LR from the first token */
        s.warmup_tokens = 0;
        assert_close(agg_lr_at(&s, 0), 0.001);
        assert_close(agg_lr_at(&s, 5500), 0.00055);
        /* a horizon inside the warmup: LRMin right after it */
        s.warmup_tokens = 1000;
        s.horizon_tokens = 500;
        assert_close(agg_lr_at(&s, 600), 0.0006);
        assert_close(agg_lr_at(&s, 1000), 0.0001);
        /* constant: LR whatever the tokens */
        s.kind = AGG_LR_CONSTANT;
        assert_close(agg_lr_at(&s, 0), 0.001);
        assert_close(agg_lr_at(&s, 1000000000000ull), 0.001);

        assert_int_equal(agg_lr_kind_from_string("cosine"), AGG_LR_COSINE);
        assert_int_equal(agg_lr_kind_from_string("constant"), AGG_LR_CONSTANT);
        assert_true(agg_lr_kind_from_string("linear") < 0);
}

static void test_budget(void **state) {
        /* a sample: the steps, bounded by what was asked, over the round's wall-clock */
        assert_close(agg_speed_sample(10, 50, 2000), 5.0);
        assert_close(agg_speed_sample(100, 50, 1000), 50.0); /* claims more than asked */
        assert_true(isnan(agg_speed_sample(0, 50, 1000)));
        assert_true(isnan(agg_speed_sample(10, 50, 0)));
        assert_true(isnan(agg_speed_sample(10, 50, -5))); /* the clock went back */

        /* smoothing: the first sample as it is, then halfway towards each new one */
        assert_close(agg_speed_smooth(NAN, 4.0, AGG_SPEED_ALPHA), 4.0);
        assert_close(agg_speed_smooth(0.0, 3.0, AGG_SPEED_ALPHA), 3.0);
        assert_close(agg_speed_smooth(4.0, 8.0, 0.5), 6.0);
        assert_close(agg_speed_smooth(4.0, 8.0, 0.25), 5.0);
        assert_close(agg_speed_smooth(4.0, NAN, 0.5), 4.0);

        /* RoundSeconds 10, LocalSteps 50, LocalStepsMin 1, MaxLocalSteps 0 (4 x 50) */
        agg_budget_params p = { .round_seconds = 10, .local_steps = 50, .min_steps = 1,
                                .max_steps = 0 };
        assert_int_equal(agg_round_budget(&p, 5.0), 50);
        assert_int_equal(agg_round_budget(&p, 2.25), 23);  /* round(22.5) */
        assert_int_equal(agg_round_budget(&p, 0.04), 1);   /* at least LocalStepsMin */
        assert_int_equal(agg_round_budget(&p, 100.0), 200); /* at most 4 x LocalSteps */
        assert_int_equal(agg_round_budget(&p, NAN), 50);   /* not measured: LocalSteps */
        p.max_steps = 120;
        assert_int_equal(agg_round_budget(&p, 100.0), 120);
        p.min_steps = 30;
        assert_int_equal(agg_round_budget(&p, 0.04), 30);
        p.max_steps = 20; /* a floor above the ceiling wins */
        assert_int_equal(agg_round_budget(&p, 100.0), 30);
        p.round_seconds = 0; /* off: LocalSteps for everyone */
        assert_int_equal(agg_round_budget(&p, 100.0), 50);
        assert_int_equal(agg_round_budget(&p, 0.04), 50);
        agg_budget_params big = { .round_seconds = 10, .local_steps = 1000000, .min_steps = 1 };
        assert_int_equal(agg_round_budget(&big, 1e9), AGG_MAX_BUDGET); /* what clients take */
}

/* ---- the server ---- */

static reply http(const char *path, const void *body, size_t size, const char *const *hdrs) {
        return test_http_request(agg.base_url, path, body, size, hdrs);
}

static void set(const char *kv) {
        char err[256], *a[] = { (char *) kv };
        if (agg_store_set(agg.store, a, 1, false, err, sizeof(err)) < 0)
                fail_msg("set %s: %s", kv, err);
}

/* Enrols a device; its Authorization header into auth. */
static void enroll(char *auth, size_t size) {
        char tok[AGG_ID_HEX], body[128], id[40] = "", secret[80] = "";

        assert_int_equal(agg_store_token_create(agg.store, 0, 1, tok), 0);
        snprintf(body, sizeof(body), "{\"token\": \"%s\"}", tok);
        reply r = http("/v1/enroll", body, strlen(body), NULL);
        assert_int_equal(r.status, 201);
        sscanf(strstr(r.body, "\"device_id\":\"") + 13, "%32[0-9a-f]", id);
        sscanf(strstr(r.body, "\"secret\":\"") + 10, "%64[0-9a-f]", secret);
        snprintf(auth, size, "Authorization: Bearer %s:%s", id, secret);
        free(r.body);
}

typedef struct {
        uint64_t version;
        double lr;
        long long local_steps;
        char etag[128];
} task;

static task get_task(const char *auth) {
        const char *h[] = { auth, NULL };
        reply r = http("/v1/task", NULL, 0, h);
        json_t *j;
        task t = {};

        assert_int_equal(r.status, 200);
        j = json_loads(r.body, 0, NULL);
        assert_non_null(j);
        t.version = (uint64_t) json_integer_value(json_object_get(j, "version"));
        assert_true(json_is_real(json_object_get(j, "lr")));
        t.lr = json_real_value(json_object_get(j, "lr"));
        t.local_steps = json_integer_value(json_object_get(j, "local_steps"));
        snprintf(t.etag, sizeof(t.etag), "%s", r.etag);
        json_decref(j);
        free(r.body);
        return t;
}

/* An update from base with tokens and the steps it claims; accepted. */
static void send_update(const char *auth, const char *key, uint64_t base, uint64_t tokens,
                        long steps) {
        _cleanup_free_ float *delta = malloc(agg.lay.n_params * sizeof(float));
        char k[96], b[64], t[64], st[64];
        void *body;
        size_t size;

        assert_non_null(delta);
        for (size_t i = 0; i < agg.lay.n_params; i++)
                delta[i] = (float) ((int) ((i * 2654435761u + tokens) % 2001u) - 1000) * 1e-7f;
        assert_int_equal(
                upd_encode(UPD_FP32, base, &agg.lay, delta, 0.01f, NULL, &body, &size, NULL), 0);
        snprintf(k, sizeof(k), "Idempotency-Key: %s", key);
        snprintf(b, sizeof(b), "X-Edged-Base-Version: %llu", (unsigned long long) base);
        snprintf(t, sizeof(t), "X-Edged-Tokens: %llu", (unsigned long long) tokens);
        snprintf(st, sizeof(st), "X-Edged-Steps: %ld", steps);
        const char *h[] = { auth, k, b, t, st, "Content-Type: application/octet-stream", NULL };
        reply r = http("/v1/update", body, size, h);
        if (r.status != 200 || !strstr(r.body, "\"accepted\""))
                fail_msg("update %s: %ld %s", key, r.status, r.body ? r.body : "");
        free(r.body);
        free(body);
}

static void merge(void) {
        bool merged = false;
        assert_int_equal(agg_merge_once(agg.store, NULL, &merged), 0);
        assert_true(merged);
}

/* LR 0.002, warmup 1000 tokens, horizon 21000, LRMin 0 (LR/10 = 2e-4), K = 2, LocalSteps 1,
 * Batch 1, T 128: the task's lr at each version is the formula at that version's merged
 * tokens plus one buffer of rounds (2 x 1 x 1 x 128 = 256 tokens), worked out by hand. */
static void test_served_lr(void **state) {
        char a[160];
        agg_version v;
        agg_store *other;
        task t0, t;

        set("LR=0.002");
        set("LocalSteps=1");
        set("Batch=1");
        set("LRWarmupTokens=1000");
        set("LRHorizonTokens=21000");
        enroll(a, sizeof(a));

        t0 = get_task(a);
        assert_int_equal(t0.version, 0);
        assert_close(t0.lr, 0.002 * 256 / 1000); /* nothing merged: the lead alone */
        assert_int_equal(t0.local_steps, 1);     /* RoundSeconds=0: LocalSteps */
        assert_null(strstr(t0.etag, "-s"));

        /* 300 + 200 tokens: warmup, (500 + 256)/1000 of LR */
        send_update(a, "lr-1", 0, 300, 10);
        send_update(a, "lr-2", 0, 200, 10);
        merge();
        t = get_task(a);
        assert_int_equal(t.version, 1);
        assert_string_not_equal(t.etag, t0.etag);
        assert_close(t.lr, 0.002 * 756 / 1000);

        /* 4000 + 6500 more: 11000 + 256, (11256 - 1000) / 20000 = 0.5128 down the cosine */
        send_update(a, "lr-3", 1, 4000, 10);
        send_update(a, "lr-4", 1, 6500, 10);
        merge();
        t = get_task(a);
        assert_int_equal(t.version, 2);
        assert_close(t.lr, 0.0002 + (0.002 - 0.0002) * (1 + cos(M_PI * 0.5128)) / 2);

        /* 2500 more: 13500 + 256, (13756 - 1000) / 20000 = 0.6378 of it */
        send_update(a, "lr-5", 2, 1500, 10);
        send_update(a, "lr-6", 2, 1000, 10);
        merge();
        t = get_task(a);
        assert_close(t.lr, 0.0002 + 0.0018 * (1 + cos(M_PI * 0.6378)) / 2);

        /* 10000 + 5000 more: 28500, past the horizon: LRMin */
        send_update(a, "lr-7", 3, 10000, 10);
        send_update(a, "lr-8", 3, 5000, 10);
        merge();
        t = get_task(a);
        assert_int_equal(t.version, 4);
        assert_close(t.lr, 0.0002);

        /* the clock is in each version row, and durable: another connection reads it */
        assert_int_equal(agg_store_open(agg.store_dir, &other), 0);
        static const uint64_t want[] = { 0, 500, 11000, 13500, 28500 };
        for (uint64_t i = 0; i < ARRAY_SIZE(want); i++) {
                assert_int_equal(agg_store_get_version(other, i, &v), 0);
                assert_int_equal(v.merged_tokens, want[i]);
        }
        agg_store_free(other);

        /* a store made before the column: it is rebuilt from the update log at open */
        {
                char path[256];
                sqlite3 *db;
                snprintf(path, sizeof(path), "%s/aggregator.db", agg.store_dir);
                assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
                sqlite3_busy_timeout(db, 5000);
                assert_int_equal(sqlite3_exec(db, "ALTER TABLE versions DROP COLUMN merged_tokens",
                                              NULL, NULL, NULL),
                                 SQLITE_OK);
                sqlite3_close(db);
        }
        assert_int_equal(agg_store_open(agg.store_dir, &other), 0);
        for (uint64_t i = 0; i < ARRAY_SIZE(want); i++) {
                assert_int_equal(agg_store_get_version(other, i, &v), 0);
                assert_int_equal(v.merged_tokens, want[i]);
        }
        agg_store_free(other);
        t = get_task(a);
        assert_close(t.lr, 0.0002);

        /* constant: LR whatever was merged */
        set("LRSchedule=constant");
        t = get_task(a);
        assert_close(t.lr, 0.002);
        set("LRSchedule=cosine");
        /* an absolute LRMin */
        set("LRMin=0.0005");
        t = get_task(a);
        assert_close(t.lr, 0.0005);
        set("LRMin=0");
}

/* Three devices, each round timed by the server: A takes 0.2 s for the 10 steps it was asked,
 * B 1 s; C claims 1000 steps in 0.5 s but was asked 10. RoundSeconds 2, MaxLocalSteps 1000. */
static void test_budget_by_speed(void **state) {
        char a[160], b[160], c[160], tag[32];
        task ta, tb, tc;

        set("LocalSteps=10");
        set("MaxLocalSteps=1000");
        set("RoundSeconds=2");
        enroll(a, sizeof(a));
        enroll(b, sizeof(b));
        enroll(c, sizeof(c));
        uint64_t v = get_task(a).version;

        /* not measured yet: LocalSteps, and the budget is in the ETag */
        ta = get_task(a);
        tb = get_task(b);
        tc = get_task(c);
        assert_int_equal(ta.local_steps, 10);
        assert_int_equal(tb.local_steps, 10);
        assert_int_equal(tc.local_steps, 10);
        assert_non_null(strstr(ta.etag, "-s10\""));

        usleep(200 * 1000);
        send_update(a, "speed-a", v, 1000, 10);
        usleep(300 * 1000);
        send_update(c, "speed-c", v, 1000, 1000);
        usleep(500 * 1000);
        send_update(b, "speed-b", v, 1000, 10);

        ta = get_task(a);
        tb = get_task(b);
        tc = get_task(c);
        printf("budgets: A %lld, B %lld, C %lld\n", ta.local_steps, tb.local_steps,
               tc.local_steps);
        /* A: 10 steps / 0.2 s x 2 s = 100 (less the requests' own time) */
        assert_true(ta.local_steps >= 50 && ta.local_steps <= 100);
        /* B: 10 steps / 1 s x 2 s = 20 */
        assert_true(tb.local_steps >= 12 && tb.local_steps <= 20);
        /* C: its claim counts up to the 10 it was asked: 10 / 0.5 s x 2 s = 40, not 4000 */
        assert_true(tc.local_steps >= 25 && tc.local_steps <= 40);
        assert_true(ta.local_steps > tc.local_steps && tc.local_steps > tb.local_steps);
        snprintf(tag, sizeof(tag), "-s%lld\"", ta.local_steps);
        assert_non_null(strstr(ta.etag, tag));
        assert_string_not_equal(ta.etag, tb.etag); /* same version, another budget */

        /* A's next round: asked ta.local_steps, done in 0.1 s: the speed moves half way */
        {
                agg_store *other;
                double before, after;
                bool open;
                const char *id = strstr(a, "Bearer ") + 7;
                char dev[AGG_ID_HEX];
                snprintf(dev, sizeof(dev), "%.32s", id);
                assert_int_equal(agg_store_open(agg.store_dir, &other), 0);
                assert_int_equal(agg_store_device_pace(other, dev, &before, &open), 0);
                assert_true(open); /* the task request above opened it */
                usleep(100 * 1000);
                send_update(a, "speed-a2", v, 1000, ta.local_steps);
                assert_int_equal(agg_store_device_pace(other, dev, &after, &open), 0);
                assert_false(open);
                double sample = (double) ta.local_steps / 0.1;
                /* halfway from before towards at most the sample (the requests take time) */
                assert_true(after > before && after <= before + 0.5 * (sample - before) + 1e-9);
                agg_store_free(other);
        }

        /* RoundSeconds=0: everyone gets LocalSteps again, and the ETag has no budget */
        set("RoundSeconds=0");
        ta = get_task(a);
        assert_int_equal(ta.local_steps, 10);
        assert_null(strstr(ta.etag, "-s"));
}

static void test_settings(void **state) {
        agg_settings s;
        model_config cfg;
        char err[256];

        model_config_by_name("tiny", &cfg);
        agg_settings_default(&s, &cfg);
        assert_int_equal(s.lr_schedule, AGG_LR_COSINE);
        assert_int_equal(s.lr_warmup_tokens, 1000000);
        assert_int_equal(s.lr_horizon_tokens, 1000000000);
        assert_true(s.lr_min == 0);
        assert_true(s.round_seconds == 0);
        assert_int_equal(s.local_steps_min, 1);
        assert_int_equal(s.max_local_steps, 0);
        assert_int_equal(agg_settings_apply(&s, "LRSchedule", "linear", err, sizeof(err)),
                         -EINVAL);
        assert_int_equal(agg_settings_apply(&s, "LRHorizonTokens", "0", err, sizeof(err)), -EINVAL);
        assert_int_equal(agg_settings_apply(&s, "RoundSeconds", "-1", err, sizeof(err)), -EINVAL);
        assert_int_equal(agg_settings_apply(&s, "LocalStepsMin", "0", err, sizeof(err)), -EINVAL);
        assert_int_equal(agg_settings_apply(&s, "LRMin", "0.0001", err, sizeof(err)), 0);
        assert_int_equal(agg_settings_apply(&s, "RoundSeconds", "30", err, sizeof(err)), 0);
        agg_lr_schedule ls;
        agg_budget_params bp;
        agg_settings_lr_schedule(&s, &ls);
        agg_settings_budget(&s, &bp);
        assert_true(ls.lr == s.lr && ls.lr_min == 0.0001f && ls.warmup_tokens == 1000000);
        assert_true(bp.round_seconds == 30 && bp.local_steps == 50 && bp.min_steps == 1);
}

static int setup(void **state) {
        return test_agg_harness_start(&agg, "test-aggregator-schedule");
}

static int teardown(void **state) {
        return test_agg_harness_stop(&agg, state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lr_schedule),
                cmocka_unit_test(test_lr_position),
                cmocka_unit_test(test_budget),
                cmocka_unit_test(test_settings),
                cmocka_unit_test(test_served_lr),
                cmocka_unit_test(test_budget_by_speed),
        };
        return test_run_group("test-aggregator-schedule", tests, setup, teardown);
}
