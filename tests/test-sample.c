/* SPDX-License-Identifier: MIT */
/* Generation: the KV-cache path gives the same logits as a full forward pass at every
 * position; greedy and seeded sampling are deterministic; top-k and temperature behave. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "blas.h"
#include "model.h"
#include "rng.h"
#include "sample.h"

static const model_config cfg = {
        .name = "custom", .block_size = 32, .n_embd = 32, .n_layer = 2, .n_head = 4
};

static model *new_model_with(const model_config *c) {
        model *m;
        rng_t r;

        assert_int_equal(model_new(c, 1, c->block_size, &m), 0);
        model_init_params(m, 9);
        /* larger weights than the init, so logits differ clearly between positions */
        rng_seed(&r, 10);
        for (size_t i = 0; i < m->layout.n_params; i++)
                m->params[i] += 0.05f * rng_normal(&r);
        return m;
}

static model *new_model(void) {
        return new_model_with(&cfg);
}

/* 150 positions: the full pass works in attention row blocks of 64, the cache one at a time */
#define KV_T 150
static void test_kv_cache_matches_forward(void **state) {
        const model_config long_cfg = {
                .name = "custom", .block_size = KV_T, .n_embd = 32, .n_layer = 2, .n_head = 4
        };
        model *m = new_model_with(&long_cfg);
        sampler *s;
        uint8_t tok[KV_T];
        float logits[MODEL_VOCAB];
        double worst = 0.0;
        rng_t r;

        rng_seed(&r, 1);
        for (int i = 0; i < KV_T; i++)
                tok[i] = (uint8_t) rng_below(&r, 256);
        assert_int_equal(model_forward(m, tok, NULL, 1, KV_T, NULL), 0);
        assert_int_equal(sampler_new(m, &s), 0);
        for (int t = 0; t < KV_T; t++) {
                assert_int_equal(sampler_feed(s, tok[t], logits), 0);
                const float *ref = m->acts.logits + (size_t) t * MODEL_VOCAB;
                for (int v = 0; v < MODEL_VOCAB; v++)
                        worst = fmax(worst, fabs(logits[v] - ref[v]) / fmax(fabs(ref[v]), 1e-2));
        }
        printf("kv cache: worst relative logit difference over %d positions %.3g (bound 1e-4: "
               "sgemm and the cached path sum in different orders)\n",
               KV_T, worst);
        assert_true(worst < 1e-4);
        /* the window is full now */
        assert_int_equal(sampler_feed(s, 0, logits), -ENOSPC);
        sampler_free(s);
        model_free(m);
}

static void test_greedy_deterministic(void **state) {
        model *m = new_model();
        sampler *s;
        uint8_t a[20], b[20];
        float logits[MODEL_VOCAB];
        sample_opts greedy = { .temperature = 0.0f };

        assert_int_equal(sampler_new(m, &s), 0);
        assert_int_equal(sample_generate(s, (const uint8_t *) "ab", 2, a, sizeof(a), &greedy), 20);
        assert_int_equal(sample_generate(s, (const uint8_t *) "ab", 2, b, sizeof(b), &greedy), 20);
        assert_memory_equal(a, b, sizeof(a));

        /* each greedy byte is the argmax of the full forward over the text so far */
        uint8_t text[22] = { 'a', 'b' };
        memcpy(text + 2, a, 20);
        assert_int_equal(model_forward(m, text, NULL, 1, 21, NULL), 0);
        for (int t = 1; t < 21; t++) {
                const float *l = m->acts.logits + (size_t) t * MODEL_VOCAB;
                int best = 0;
                for (int v = 1; v < MODEL_VOCAB; v++)
                        if (l[v] > l[best])
                                best = v;
                assert_int_equal(best, text[t + 1]);
        }
        /* generation stops at the block size */
        uint8_t longer[64];
        assert_int_equal(
                sample_generate(s, (const uint8_t *) "ab", 2, longer, sizeof(longer), &greedy), 31);
        (void) logits;
        sampler_free(s);
        model_free(m);
}

static void test_seeded_sampling(void **state) {
        model *m = new_model();
        sampler *s;
        uint8_t a[24], b[24], c[24];
        sample_opts o = { .temperature = 1.0f, .top_k = 0, .seed = 5 };

        assert_int_equal(sampler_new(m, &s), 0);
        assert_int_equal(sample_generate(s, NULL, 0, a, sizeof(a), &o), 24);
        assert_int_equal(sample_generate(s, NULL, 0, b, sizeof(b), &o), 24);
        assert_memory_equal(a, b, sizeof(a));
        o.seed = 6;
        assert_int_equal(sample_generate(s, NULL, 0, c, sizeof(c), &o), 24);
        assert_memory_not_equal(a, c, sizeof(a));
        sampler_free(s);
        model_free(m);
}

/* Distribution checks on hand-made logits: top-k never picks outside the k best, and the
 * empirical frequencies at temperature 1 follow the softmax. */
static void test_pick(void **state) {
        float base[MODEL_VOCAB], logits[MODEL_VOCAB];
        int count[MODEL_VOCAB] = { 0 };
        rng_t r;
        const int n = 20000;

        for (int v = 0; v < MODEL_VOCAB; v++)
                base[v] = -10.0f;
        base['x'] = 2.0f;
        base['y'] = 1.0f;
        base['z'] = 0.0f;
        rng_seed(&r, 3);

        sample_opts top2 = { .temperature = 1.0f, .top_k = 2 };
        for (int i = 0; i < 2000; i++) {
                memcpy(logits, base, sizeof(base));
                uint8_t t = sampler_pick(logits, &top2, &r);
                assert_true(t == 'x' || t == 'y');
        }
        sample_opts all = { .temperature = 1.0f };
        for (int i = 0; i < n; i++) {
                memcpy(logits, base, sizeof(base));
                count[sampler_pick(logits, &all, &r)]++;
        }
        double z = exp(2.0) + exp(1.0) + 1.0 + 253 * exp(-10.0);
        double px = exp(2.0) / z, py = exp(1.0) / z;
        printf("pick: x %.4f (softmax %.4f), y %.4f (softmax %.4f)\n", (double) count['x'] / n, px,
               (double) count['y'] / n, py);
        /* 5 standard deviations of a binomial with n = 20000 */
        assert_true(fabs((double) count['x'] / n - px) < 5 * sqrt(px * (1 - px) / n));
        assert_true(fabs((double) count['y'] / n - py) < 5 * sqrt(py * (1 - py) / n));

        sample_opts greedy = { .temperature = 0.0f };
        memcpy(logits, base, sizeof(base));
        assert_int_equal(sampler_pick(logits, &greedy, &r), 'x');
}

static int setup(void **state) {
        blas_set_threads(1);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kv_cache_matches_forward),
                cmocka_unit_test(test_greedy_deterministic),
                cmocka_unit_test(test_seeded_sampling),
                cmocka_unit_test(test_pick),
        };
        return test_run_group("test-sample", tests, setup, NULL);
}
