/* SPDX-License-Identifier: MIT */
/* Collaborative inference without a network: stages chained in process give bit-identical
 * greedy (and seeded) generation to kernels/sample.c's single-process path, for 1, 2 and 3
 * stages and across a peer failing mid-generation; the planner splits by speed and memory
 * as computed by hand; the wire decoder refuses wrong sizes, NaN and truncation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "model.h"
#include "pipeline.h"
#include "rng.h"
#include "sample.h"
#include "stage-host.h"
#include "stage-plan.h"
#include "stage-wire.h"
#include "stage.h"

static const model_config cfg = {
        .name = "custom", .block_size = 64, .n_embd = 32, .n_layer = 4, .n_head = 4
};
#define N_OUT 30

static model *new_model(void) {
        model *m;
        rng_t r;

        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, 21);
        /* larger weights than the init, so greedy choices depend on every layer */
        rng_seed(&r, 22);
        for (size_t i = 0; i < m->layout.n_params; i++)
                m->params[i] += 0.08f * rng_normal(&r);
        return m;
}

static int reference(model *m, const char *prompt, uint8_t *out, size_t n_out, const sample_opts *so) {
        sampler *s;
        assert_int_equal(sampler_new(m, &s), 0);
        int n = sample_generate(s, (const uint8_t *) prompt, strlen(prompt), out, n_out, so);
        sampler_free(s);
        return n;
}

/* In-process peers: each a stage host over the same weights; fail_after > 0 makes a peer
 * vanish after that many calls. */
typedef struct {
        stage_host *host[4];
        int calls[4], fail_after[4];
} fake_net;

static int fake_call(void *ctx, int peer, uint64_t version, int first, int last, const void *req,
                     size_t req_size, void **ret, size_t *ret_size) {
        fake_net *n = ctx;
        stage_reply rep;

        if (n->fail_after[peer] && ++n->calls[peer] > n->fail_after[peer])
                return -ECONNREFUSED;
        stage_host_handle(n->host[peer], version, first, last, req, req_size, true, 0.0, &rep);
        if (rep.status != 200)
                return -EIO;
        *ret = rep.body;
        *ret_size = rep.size;
        return 0;
}

static void setup_net(fake_net *n, model *m, int peers) {
        stage_host_limits lim = { .max_bytes = 0, .idle_timeout_s = 60, .max_sessions = 8 };
        memset(n, 0, sizeof(*n));
        for (int i = 0; i < peers; i++)
                assert_int_equal(stage_host_new(&cfg, &m->p, 7, 0, &lim, &n->host[i]), 0);
}

static void free_net(fake_net *n) {
        for (int i = 0; i < 4; i++)
                stage_host_free(n->host[i]);
}

static int through(fake_net *net, int peers, const char *prompt, uint8_t *out, const sample_opts *so,
                   pipeline_stats *st) {
        pipeline_opts o = { .cfg = cfg, .version = 7, .n_peers = peers, .call = fake_call, .ctx = net };
        pipeline_default_cost(&cfg, &o.cost);
        for (int i = 0; i < peers; i++)
                o.peers[i] = (stage_plan_peer){ .speed = 1.0, .mem_bytes = 1u << 30 };
        return pipeline_generate(&o, (const uint8_t *) prompt, strlen(prompt), out, N_OUT, so, st);
}

static void test_pipeline_identical(void **state) {
        model *m = new_model();
        const char *prompt = "Permission is hereby granted";
        const sample_opts greedy = { .temperature = 0.0f }, hot = { .temperature = 0.9f, .top_k = 20, .seed = 5 };
        const sample_opts *modes[2] = { &greedy, &hot };
        uint8_t want[N_OUT], got[N_OUT];

        for (int k = 0; k < 2; k++) {
                int n = reference(m, prompt, want, N_OUT, modes[k]);
                assert_int_equal(n, N_OUT);
                for (int peers = 1; peers <= 3; peers++) {
                        fake_net net;
                        pipeline_stats st;
                        setup_net(&net, m, peers);
                        memset(got, 0, sizeof(got));
                        assert_int_equal(through(&net, peers, prompt, got, modes[k], &st), N_OUT);
                        assert_int_equal(st.n_stages, peers);
                        assert_int_equal(st.replans, 0);
                        assert_memory_equal(got, want, N_OUT);
                        printf("%s, %d stage%s: identical (%" PRIu64 " bytes sent)\n",
                               k ? "sampled" : "greedy", peers, peers > 1 ? "s" : "", st.bytes_sent);
                        free_net(&net);
                }
        }
        /* at the window's end both stop at the same token: 64 - 50 positions, plus the one
         * picked from the last logits */
        const char *longp = "0123456789012345678901234567890123456789012345678901";
        uint8_t w2[N_OUT], g2[N_OUT];
        fake_net net;
        pipeline_stats st;
        int n = reference(m, longp, w2, N_OUT, &greedy);
        assert_int_equal(n, 64 - 52 + 1);
        setup_net(&net, m, 2);
        assert_int_equal(through(&net, 2, longp, g2, &greedy, &st), n);
        assert_memory_equal(g2, w2, (size_t) n);
        free_net(&net);
        model_free(m);
}

/* The last peer vanishes after a few tokens: the pipeline re-plans over the other two,
 * replays, and the output is still exactly the single-process one, once. */
static void test_peer_failure(void **state) {
        model *m = new_model();
        uint8_t want[N_OUT], got[N_OUT];
        const sample_opts greedy = { .temperature = 0.0f };
        fake_net net;
        pipeline_stats st;

        assert_int_equal(reference(m, "The ", want, N_OUT, &greedy), N_OUT);
        for (int victim = 0; victim < 3; victim++) {
                setup_net(&net, m, 3);
                net.fail_after[victim] = 10;
                assert_int_equal(through(&net, 3, "The ", got, &greedy, &st), N_OUT);
                assert_int_equal(st.replans, 1);
                assert_int_equal(st.n_stages, 2);
                for (int i = 0; i < st.n_stages; i++)
                        assert_int_not_equal(st.plan[i].peer, victim);
                assert_memory_equal(got, want, N_OUT);
                free_net(&net);
        }
        /* every peer gone: a clear error, not a hang */
        setup_net(&net, m, 2);
        net.fail_after[0] = net.fail_after[1] = 3;
        assert_int_equal(through(&net, 2, "The ", got, &greedy, &st), -EHOSTUNREACH);
        free_net(&net);
        model_free(m);
}

/* Stronger than equal tokens: the logits of a chain of stages are the sampler's, bit for
 * bit, at every position, for every split of the 4 layers into 1, 2 and 3 stages. */
static void test_logits_bitwise(void **state) {
        static const int splits[][4] = { { 1, 3 }, { 2, 1, 3 }, { 2, 0, 3 }, { 2, 2, 3 },
                                         { 3, 0, 1, 3 }, { 3, 1, 2, 3 }, { 3, 0, 2, 3 } };
        model *m = new_model();
        sampler *ref;
        float want[MODEL_VOCAB], got[MODEL_VOCAB], x[64];

        assert_int_equal(sampler_new(m, &ref), 0);
        for (size_t k = 0; k < sizeof(splits) / sizeof(splits[0]); k++) {
                int n = splits[k][0];
                stage st[3];
                stage_session *ss[3];
                for (int i = 0; i < n; i++) {
                        int first = i == 0 ? 0 : splits[k][i] + 1, last = splits[k][i + 1];
                        assert_int_equal(stage_init(&st[i], &cfg, &m->p, first, last), 0);
                        assert_int_equal(stage_session_new(&st[i], &ss[i]), 0);
                }
                sampler_reset(ref);
                for (int pos = 0; pos < 50; pos++) {
                        uint8_t tok = (uint8_t) ("The quick brown fox jumps over the lazy dog. "[pos % 45]);
                        float in = tok;
                        assert_int_equal(sampler_feed(ref, tok, want), 0);
                        for (int i = 0; i < n; i++) {
                                float *out = i == n - 1 ? got : x;
                                assert_int_equal(stage_forward(&st[i], ss[i], pos, i == 0 ? &in : x, 1, out), 0);
                        }
                        assert_memory_equal(got, want, sizeof(want));
                }
                for (int i = 0; i < n; i++)
                        stage_session_free(ss[i]);
        }
        sampler_free(ref);
        model_free(m);
}

/* A rewind (replay from an earlier position) recomputes the same values. */
static void test_stage_rewind(void **state) {
        model *m = new_model();
        stage st;
        stage_session *s;
        float in[8], a[MODEL_VOCAB], b[MODEL_VOCAB];

        assert_int_equal(stage_init(&st, &cfg, &m->p, 0, 3), 0);
        assert_int_equal(stage_session_new(&st, &s), 0);
        for (int i = 0; i < 8; i++)
                in[i] = (float) ("abcdefgh"[i]);
        assert_int_equal(stage_forward(&st, s, 0, in, 8, a), 0);
        assert_int_equal(stage_session_pos(s), 8);
        assert_int_equal(stage_forward(&st, s, 9, in, 1, b), -ERANGE);
        assert_int_equal(stage_forward(&st, s, 4, in + 4, 4, b), 0);
        assert_memory_equal(a, b, sizeof(a));
        in[0] = 3.5f;
        assert_int_equal(stage_forward(&st, s, 0, in, 1, b), -EINVAL);
        assert_int_equal(stage_forward(&st, s, 60, in + 1, 5, b), -ERANGE);
        assert_int_equal(stage_init(&st, &cfg, &m->p, 2, 4), -EINVAL);
        assert_int_equal(stage_init(&st, &cfg, &m->p, 3, 2), -EINVAL);
        stage_session_free(s);
        model_free(m);
}

static void plan(int L, const double *speed, const uint64_t *mem, int n, const stage_plan_cost *c,
                 int expect_ret, const int *expect_counts) {
        stage_plan_peer p[8];
        stage_plan_span sp[8];
        int got = -1;

        for (int i = 0; i < n; i++)
                p[i] = (stage_plan_peer){ .speed = speed[i], .mem_bytes = mem[i] };
        assert_int_equal(stage_plan(L, p, n, c, sp, &got), expect_ret);
        if (expect_ret < 0)
                return;
        int next = 0, k = 0;
        for (int i = 0; i < n; i++) {
                if (expect_counts[i] == 0)
                        continue;
                assert_true(k < got);
                assert_int_equal(sp[k].peer, i);
                assert_int_equal(sp[k].first, next);
                assert_int_equal(sp[k].last, next + expect_counts[i] - 1);
                next += expect_counts[i];
                k++;
        }
        assert_int_equal(k, got);
        assert_int_equal(next, L);
}

static void test_planner(void **state) {
        const stage_plan_cost free_mem = { .layer_bytes = 10 }, edges = { .layer_bytes = 10, .first_bytes = 5, .last_bytes = 5 };
        const uint64_t big[4] = { 1000, 1000, 1000, 1000 };

        plan(8, (double[]){ 1, 1 }, big, 2, &free_mem, 0, (int[]){ 4, 4 });
        plan(8, (double[]){ 3, 1 }, big, 2, &free_mem, 0, (int[]){ 6, 2 });
        /* 8/3 each: floors 2,2,2, the two spare layers to the earlier peers */
        plan(8, (double[]){ 1, 1, 1 }, big, 3, &free_mem, 0, (int[]){ 3, 3, 2 });
        /* speeds 1:2:5 of 8 layers = 1, 2, 5 exactly */
        plan(8, (double[]){ 1, 2, 5 }, big, 3, &free_mem, 0, (int[]){ 1, 2, 5 });
        /* memory: the first peer holds (25-5)/10 = 2 layers, the rest goes to the second */
        plan(8, (double[]){ 1, 1 }, (uint64_t[]){ 25, 1000 }, 2, &edges, 0, (int[]){ 2, 6 });
        /* a fast peer capped at 3 of 12; the others share 9 as 1:2 */
        plan(12, (double[]){ 10, 1, 2 }, (uint64_t[]){ 35, 1000, 1000 }, 3, &edges, 0, (int[]){ 3, 3, 6 });
        /* 2 + 4 < 8 layers: does not fit */
        plan(8, (double[]){ 1, 1 }, (uint64_t[]){ 25, 45 + 5 - 10 }, 2, &edges, -E2BIG, NULL);
        /* a very slow peer gets no layer and drops out */
        plan(4, (double[]){ 100, 1 }, big, 2, &free_mem, 0, (int[]){ 4, 0 });
        plan(4, (double[]){ 1, 0 }, big, 2, &free_mem, -EINVAL, NULL);
        plan(0, (double[]){ 1 }, big, 1, &free_mem, -EINVAL, NULL);
}

/* Fixed spans (Layers=): a chain covering every layer, reaching furthest first. */
static void test_cover(void **state) {
        const stage_plan_span held[4] = { { 0, 0, 2 }, { 1, 3, 7 }, { 2, 0, 4 }, { 3, 5, 7 } };
        const double speed[4] = { 1, 1, 1, 5 };
        unsigned char alive[4] = { 1, 1, 1, 1 };
        stage_plan_span sp[4];
        int n = 0;

        /* from 0: peer 2 reaches 4; from 5: peers 1 and 3 reach 7, 3 is faster */
        assert_int_equal(stage_plan_cover(8, held, speed, alive, 4, sp, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(sp[0].peer, 2);
        assert_int_equal(sp[0].first, 0);
        assert_int_equal(sp[0].last, 4);
        assert_int_equal(sp[1].peer, 3);
        assert_int_equal(sp[1].first, 5);
        assert_int_equal(sp[1].last, 7);
        /* without peer 2: 0-2 from peer 0, then peer 1 serves 3-7 */
        alive[2] = 0;
        assert_int_equal(stage_plan_cover(8, held, speed, alive, 4, sp, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(sp[0].peer, 0);
        assert_int_equal(sp[1].peer, 1);
        assert_int_equal(sp[1].first, 3);
        assert_int_equal(sp[1].last, 7);
        /* without peers 1 and 2: layers 3-4 are held by nobody */
        alive[1] = 0;
        assert_int_equal(stage_plan_cover(8, held, speed, alive, 4, sp, &n), -E2BIG);
}

static void *encode(stage_wire_header h, const float *d, size_t *size) {
        void *b = NULL;
        assert_int_equal(stage_wire_encode(&h, d, &b, size), 0);
        return b;
}

static void test_wire(void **state) {
        stage_wire_header h = { .kind = STAGE_WIRE_HIDDEN, .version = 3, .first = 1, .last = 2,
                                .session = 99, .pos = 5, .n_tokens = 2, .width = 4 }, g;
        const float d[8] = { 1, -2, 3.5f, 0, 1e-30f, 7, 8, 9 };
        float *out = NULL;
        const char *why;
        size_t size;
        uint8_t *b = encode(h, d, &size);

        assert_int_equal(size, 48 + 8 * 4);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), 0);
        assert_int_equal(g.version, 3);
        assert_int_equal(g.first, 1);
        assert_int_equal(g.last, 2);
        assert_int_equal(g.session, 99);
        assert_int_equal(g.pos, 5);
        assert_int_equal(g.n_tokens, 2);
        assert_int_equal(g.width, 4);
        assert_memory_equal(out, d, sizeof(d));
        free(out);

        /* every truncation, and one byte too many */
        for (size_t cut = 0; cut < size; cut++)
                assert_int_equal(stage_wire_decode(b, cut, &g, &out, &why), -EBADMSG);
        uint8_t *longer = calloc(1, size + 1);
        memcpy(longer, b, size);
        assert_int_equal(stage_wire_decode(longer, size + 1, &g, &out, &why), -EBADMSG);
        free(longer);

        /* NaN and infinity anywhere in the data */
        const float bad[2] = { NAN, INFINITY };
        for (int k = 0; k < 2; k++) {
                memcpy(b + 48 + 6 * 4, &bad[k], 4);
                assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
                assert_non_null(strstr(why, "NaN"));
        }
        /* finite but huge: would overflow inside the stage */
        const float huge = -3e38f;
        memcpy(b + 48 + 6 * 4, &huge, 4);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
        assert_non_null(strstr(why, "out of range"));
        memcpy(b + 48 + 6 * 4, &d[6], 4);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), 0);
        free(out);

        /* a header claiming more tokens than the body holds */
        b[36] = 3;
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
        b[36] = 2;
        /* bad magic, zero session, first > last, kinds with the wrong width */
        b[0] = 'X';
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
        b[0] = 'E';
        free(b);
        h.session = 0;
        assert_int_equal(stage_wire_encode(&h, d, (void **) &b, &size), -EINVAL);
        h.session = 1;
        h.first = 3;
        assert_int_equal(stage_wire_encode(&h, d, (void **) &b, &size), -EINVAL);
        h.first = 1;
        h.kind = STAGE_WIRE_TOKENS;
        assert_int_equal(stage_wire_encode(&h, d, (void **) &b, &size), -EINVAL);
        /* token ids must be integers 0..255 */
        h.width = 1;
        b = encode(h, (const float[]){ 65, 256 }, &size);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
        free(b);
        b = encode(h, (const float[]){ 65, 66.5f }, &size);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), -EBADMSG);
        free(b);
        b = encode(h, (const float[]){ 65, 0 }, &size);
        assert_int_equal(stage_wire_decode(b, size, &g, &out, &why), 0);
        free(out);
        free(b);
}

/* The host refuses what does not fit the model with 4xx and a reason, and 503 when paused. */
static void test_host_rejects(void **state) {
        model *m = new_model();
        stage_host_limits lim = { .max_bytes = 0, .idle_timeout_s = 10, .max_sessions = 2 };
        stage_host *h;
        stage_reply rep;
        size_t size;
        float hidden[2 * 32] = { 0 };
        stage_wire_header hh = { .kind = STAGE_WIRE_HIDDEN, .version = 7, .first = 2, .last = 3,
                                 .session = 5, .pos = 0, .n_tokens = 2, .width = 32 };
        void *b;

        assert_int_equal(stage_host_new(&cfg, &m->p, 7, 0, &lim, &h), 0);
        b = encode(hh, hidden, &size);
        stage_host_handle(h, 7, 2, 3, b, size, false, 0, &rep);
        assert_int_equal(rep.status, 503);
        assert_string_equal(rep.reason, "paused");
        stage_host_handle(h, 7, 2, 3, b, size, true, 0, &rep);
        assert_int_equal(rep.status, 200);
        assert_int_equal(rep.size, 48 + 256 * 4);
        free(rep.body);
        /* a known session carries on while paused */
        stage_host_handle(h, 7, 2, 3, b, size, false, 1, &rep);
        assert_int_equal(rep.status, 200);
        free(rep.body);
        stage_host_handle(h, 8, 2, 3, b, size, true, 1, &rep);
        assert_int_equal(rep.status, 404);
        stage_host_handle(h, 7, 1, 3, b, size, true, 1, &rep);
        assert_int_equal(rep.status, 400);
        stage_host_handle(h, 7, 2, 3, b, size - 4, true, 1, &rep);
        assert_int_equal(rep.status, 400);
        assert_string_equal(rep.reason, "bad-activations");
        free(b);
        /* wrong width for this model */
        hh.width = 16;
        b = encode(hh, hidden, &size);
        stage_host_handle(h, 7, 2, 3, b, size, true, 1, &rep);
        assert_int_equal(rep.status, 400);
        free(b);
        /* a gap in positions */
        hh.width = 32;
        hh.pos = 9;
        b = encode(hh, hidden, &size);
        stage_host_handle(h, 7, 2, 3, b, size, true, 1, &rep);
        assert_int_equal(rep.status, 409);
        free(b);
        assert_int_equal(stage_host_n_sessions(h), 1);
        assert_int_equal(stage_host_expire(h, 100), 1);
        assert_int_equal(stage_host_n_sessions(h), 0);
        stage_host_free(h);
        model_free(m);
}

static int setup(void **state) {
        blas_set_threads(1);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_logits_bitwise),
                cmocka_unit_test(test_pipeline_identical), cmocka_unit_test(test_peer_failure),
                cmocka_unit_test(test_stage_rewind),       cmocka_unit_test(test_planner),
                cmocka_unit_test(test_cover),
                cmocka_unit_test(test_wire),               cmocka_unit_test(test_host_rejects),
        };
        return test_run_group("test-stage", tests, setup, NULL);
}
