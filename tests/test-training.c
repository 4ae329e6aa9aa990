/* SPDX-License-Identifier: MIT */
/* Training mechanics: the learning-rate schedule against hand-computed values, gradient
 * accumulation against one large batch, clipping, determinism, and a learning test. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "blas.h"
#include "model.h"
#include "rng.h"

static const model_config cfg16 = {
        .name = "custom", .block_size = 16, .n_embd = 16, .n_layer = 2, .n_head = 2
};

static void random_bytes(uint8_t *buf, size_t n, uint64_t seed) {
        rng_t r;
        rng_seed(&r, seed);
        for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t) rng_below(&r, 256);
}

static void test_lr_schedule(void **state) {
        lr_schedule s = {
                .lr_max = 1e-3f, .lr_min = 1e-4f, .warmup_steps = 10, .total_steps = 110
        };

        /* warmup: (step+1)/10 of the peak */
        assert_float_equal(lr_at(&s, 0), 1e-4f, 1e-9f);
        assert_float_equal(lr_at(&s, 4), 5e-4f, 1e-9f);
        assert_float_equal(lr_at(&s, 9), 1e-3f, 1e-9f);
        /* cosine: at the start the peak, halfway the mean, at the end the floor */
        assert_float_equal(lr_at(&s, 10), 1e-3f, 1e-9f);
        assert_float_equal(lr_at(&s, 60), 5.5e-4f, 1e-9f);
        /* a quarter of the way: min + (max-min) * (1 + cos(pi/4)) / 2 = 1e-4 + 9e-4 * 0.853553 */
        assert_float_equal(lr_at(&s, 35), 8.681981e-4f, 1e-9f);
        assert_float_equal(lr_at(&s, 110), 1e-4f, 1e-9f);
        assert_float_equal(lr_at(&s, 500), 1e-4f, 1e-9f);
}

/* Two micro-batches of one sequence with loss scale 1/2 give the gradient of one batch of
 * two sequences. */
static void test_grad_accumulation(void **state) {
        uint8_t tok[2 * 16], tgt[2 * 16];
        model *big, *micro;
        float loss_big, l0, l1;

        assert_int_equal(model_new(&cfg16, 2, 16, &big), 0);
        assert_int_equal(model_new(&cfg16, 1, 16, &micro), 0);
        model_init_params(big, 3);
        model_init_params(micro, 3);
        random_bytes(tok, sizeof(tok), 1);
        random_bytes(tgt, sizeof(tgt), 2);

        model_zero_grad(big);
        assert_int_equal(model_forward(big, tok, tgt, 2, 16, &loss_big), 0);
        assert_int_equal(model_backward(big, tok, 1.0f), 0);

        model_zero_grad(micro);
        assert_int_equal(model_forward(micro, tok, tgt, 1, 16, &l0), 0);
        assert_int_equal(model_backward(micro, tok, 0.5f), 0);
        assert_int_equal(model_forward(micro, tok + 16, tgt + 16, 1, 16, &l1), 0);
        assert_int_equal(model_backward(micro, tok + 16, 0.5f), 0);

        assert_float_equal((l0 + l1) / 2, loss_big, 1e-6f);
        /* summation order differs, so compare against rounding noise: relative 1e-4, with a
         * floor of 1e-6 of the largest gradient for elements near zero */
        double gmax = 0.0, worst = 0.0;
        for (size_t i = 0; i < big->layout.n_params; i++)
                gmax = fmax(gmax, fabs(big->grads[i]));
        for (size_t i = 0; i < big->layout.n_params; i++) {
                double d = fabs(big->grads[i] - micro->grads[i]);
                worst = fmax(worst, d / (1e-4 * fabs(big->grads[i]) + 1e-6 * gmax));
        }
        printf("accumulation: worst difference %.3g of the bound (1e-4 relative + 1e-6 max|g|)\n",
               worst);
        assert_true(worst <= 1.0);
        model_free(big);
        model_free(micro);
}

/* Clipping scales the update as torch does: the step with a huge gradient and clipping to
 * 1.0 equals the step with the gradient pre-scaled to norm 1 and no clipping. */
static void test_clipping(void **state) {
        const size_t n = 1000;
        model_layout lay;
        adamw_hparams hp;
        adamw_state a, b;
        float pa[1000], pb[1000], ga[1000], gb[1000];
        rng_t r;

        /* a layout of exactly n parameters: one 1-D view */
        memset(&lay, 0, sizeof(lay));
        lay.n_views = 1;
        lay.views[0] = (model_view){
                .name = "x", .offset = 0, .numel = n, .ndim = 1, .shape = { (int) n }, .decay = true
        };
        rng_seed(&r, 4);
        for (size_t i = 0; i < n; i++) {
                pa[i] = pb[i] = rng_normal(&r);
                ga[i] = 50.0f * rng_normal(&r);
        }
        double norm = adamw_grad_norm(ga, n);
        for (size_t i = 0; i < n; i++)
                gb[i] = (float) (ga[i] * (1.0 / (norm + 1e-6)));

        adamw_hparams_default(&hp);
        hp.grad_clip = 1.0f;
        assert_int_equal(adamw_new(n, &hp, &a), 0);
        hp.grad_clip = 0.0f;
        assert_int_equal(adamw_new(n, &hp, &b), 0);
        for (int step = 0; step < 3; step++) {
                double na = adamw_step(&a, &lay, pa, ga, 1e-2f);
                adamw_step(&b, &lay, pb, gb, 1e-2f);
                assert_float_equal(na, norm, norm * 1e-6);
        }
        for (size_t i = 0; i < n; i++)
                assert_float_equal(pa[i], pb[i], 1e-6f);
        adamw_free(&a);
        adamw_free(&b);
}

/* The same seed gives bit-identical parameters after training; another seed does not. */
static void test_deterministic(void **state) {
        float *after[2];
        for (int run = 0; run < 2; run++) {
                uint8_t tok[2 * 16], tgt[2 * 16];
                adamw_hparams hp;
                adamw_state opt;
                model *m;

                assert_int_equal(model_new(&cfg16, 2, 16, &m), 0);
                model_init_params(m, 21);
                adamw_hparams_default(&hp);
                assert_int_equal(adamw_new(m->layout.n_params, &hp, &opt), 0);
                for (int s = 0; s < 5; s++) {
                        random_bytes(tok, sizeof(tok), 100 + (uint64_t) s);
                        random_bytes(tgt, sizeof(tgt), 200 + (uint64_t) s);
                        model_zero_grad(m);
                        assert_int_equal(model_forward(m, tok, tgt, 2, 16, NULL), 0);
                        assert_int_equal(model_backward(m, tok, 1.0f), 0);
                        adamw_step(&opt, &m->layout, m->params, m->grads, 1e-3f);
                }
                after[run] = malloc(m->layout.n_params * sizeof(float));
                memcpy(after[run], m->params, m->layout.n_params * sizeof(float));
                if (run == 1) {
                        assert_memory_equal(after[0], after[1], m->layout.n_params * sizeof(float));
                        model_init_params(m, 22);
                        assert_memory_not_equal(after[0], m->params,
                                                m->layout.n_params * sizeof(float));
                }
                model_free(m);
                adamw_free(&opt);
        }
        free(after[0]);
        free(after[1]);
}

/* The pool splits heads, rows and elements between threads; every thread count must give
 * the same gradients and update (up to BLAS summation order). 3 threads leave uneven
 * chunks; the shapes are big enough to pass every kernel's grain. */
static void test_threads_agree(void **state) {
        const model_config cfg = { .name = "custom", .block_size = 160, .n_embd = 64, .n_layer = 2, .n_head = 4 };
        enum { B = 8, T = 150 };
        uint8_t tok[B * T], tgt[B * T];
        float *grads[2], *params[2];
        int threads[2] = { 1, 3 };

        random_bytes(tok, sizeof(tok), 31);
        random_bytes(tgt, sizeof(tgt), 32);
        for (int k = 0; k < 2; k++) {
                adamw_hparams hp;
                adamw_state opt;
                model *m;

                blas_set_threads(threads[k]);
                assert_int_equal(model_new(&cfg, B, T, &m), 0);
                model_init_params(m, 5);
                adamw_hparams_default(&hp);
                assert_int_equal(adamw_new(m->layout.n_params, &hp, &opt), 0);
                model_zero_grad(m);
                assert_int_equal(model_forward(m, tok, tgt, B, T, NULL), 0);
                assert_int_equal(model_backward(m, tok, 1.0f), 0);
                grads[k] = malloc(m->layout.n_params * sizeof(float));
                memcpy(grads[k], m->grads, m->layout.n_params * sizeof(float));
                /* the same gradient into both updates: one AdamW step turns noise-sized
                 * gradient differences into +-lr moves, which would say nothing */
                memcpy(m->grads, grads[0], m->layout.n_params * sizeof(float));
                adamw_step(&opt, &m->layout, m->params, m->grads, 1e-3f);
                params[k] = malloc(m->layout.n_params * sizeof(float));
                memcpy(params[k], m->params, m->layout.n_params * sizeof(float));
                if (k == 1) {
                        double gmax = 0.0, worst_g = 0.0;
                        for (size_t i = 0; i < m->layout.n_params; i++)
                                gmax = fmax(gmax, fabs(grads[0][i]));
                        for (size_t i = 0; i < m->layout.n_params; i++)
                                worst_g = fmax(worst_g, fabs(grads[0][i] - grads[1][i]) /
                                                                (1e-4 * fabs(grads[0][i]) + 1e-6 * gmax));
                        printf("threads: 1 vs 3 threads, worst gradient difference %.3g of the bound "
                               "(1e-4 rel + 1e-6 max|g|); AdamW updates bit-identical\n",
                               worst_g);
                        assert_true(worst_g <= 1.0);
                        assert_memory_equal(params[0], params[1], m->layout.n_params * sizeof(float));
                }
                model_free(m);
                adamw_free(&opt);
        }
        blas_set_threads(1);
        for (int k = 0; k < 2; k++) {
                free(grads[k]);
                free(params[k]);
        }
}

/* Text from a small word chain: 10 words, each followed by any of them uniformly, so the
 * best possible loss is about ln(10)/4.3 bytes per word ~ 0.55 nats per byte. A model that
 * has learnt only byte frequencies stays above 2.3. */
#define LEARN_STEPS 300
#define LEARN_THRESHOLD 1.0f
static void test_learns(void **state) {
        static const char *const words[] = { "the ",  "cat ", "sat ", "on ",  "a ",
                                             "mat. ", "dog ", "ran ", "far ", "and\n" };
        enum { B = 8, T = 64, TEXT = 1 << 16 };
        static uint8_t text[TEXT];
        uint8_t tok[B * T], tgt[B * T];
        model_config cfg;
        adamw_hparams hp;
        adamw_state opt;
        model *m;
        rng_t r;
        float loss = 0.0f, first = 0.0f;

        rng_seed(&r, 7);
        for (size_t n = 0; n < TEXT;) {
                const char *w = words[rng_below(&r, 10)];
                for (size_t i = 0; w[i] && n < TEXT; i++)
                        text[n++] = (uint8_t) w[i];
        }
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, B, T, &m), 0);
        model_init_params(m, 1);
        adamw_hparams_default(&hp);
        assert_int_equal(adamw_new(m->layout.n_params, &hp, &opt), 0);
        lr_schedule sched = {
                .lr_max = 3e-3f, .lr_min = 3e-4f, .warmup_steps = 20, .total_steps = LEARN_STEPS
        };
        for (int s = 0; s < LEARN_STEPS; s++) {
                for (int b = 0; b < B; b++) {
                        size_t at = rng_below(&r, TEXT - T - 1);
                        memcpy(tok + b * T, text + at, T);
                        memcpy(tgt + b * T, text + at + 1, T);
                }
                model_zero_grad(m);
                assert_int_equal(model_forward(m, tok, tgt, B, T, &loss), 0);
                assert_int_equal(model_backward(m, tok, 1.0f), 0);
                adamw_step(&opt, &m->layout, m->params, m->grads, lr_at(&sched, s));
                if (s == 0)
                        first = loss;
        }
        printf("learning: tiny, %d steps of %dx%d: loss %.3f -> %.3f (threshold %.2f)\n",
               LEARN_STEPS, B, T, first, loss, LEARN_THRESHOLD);
        assert_true(first > 5.0f); /* starts near ln(256) = 5.55 */
        assert_true(loss < LEARN_THRESHOLD);
        model_free(m);
        adamw_free(&opt);
}

static int setup(void **state) {
        blas_set_threads(1);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lr_schedule), cmocka_unit_test(test_grad_accumulation),
                cmocka_unit_test(test_clipping),    cmocka_unit_test(test_deterministic),
                cmocka_unit_test(test_threads_agree), cmocka_unit_test(test_learns),
        };
        return test_run_group("test-training", tests, setup, NULL);
}
