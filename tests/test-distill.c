/* SPDX-License-Identifier: MIT */
/* Knowledge distillation: the loss and its gradient on a two-class case worked by hand; the
 * gradient at the logits and, through model_backward, at the parameters match finite
 * differences where they are large enough for the comparison to tell; distilling from a teacher
 * trained here lowers the student's held-out KL to it by a stated margin. */
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
#include "corpus.h"
#include "distill.h"
#include "model.h"
#include "rng.h"
#include "train-step.h"

#define V MODEL_VOCAB

/* Two classes, worked by hand (the other 254 logits at -1e4: exp(-1e4 / T) is 0 in double, so
 * they add nothing to either softmax, the KL or the gradient). T = 2:
 *   teacher t = (2 ln 3, 0): softmax(t / 2) = (3, 1) / 4         = q
 *   student z = (0, 2 ln 2): softmax(z / 2) = (1, 2) / 3         = p;  softmax(z) = (1, 4) / 5
 *   KL(q || p) = 3/4 ln((3/4) / (1/3)) + 1/4 ln((1/4) / (2/3)) = 3/4 ln(9/4) + 1/4 ln(3/8)
 *              = 3/4 * 0.8109302162 + 1/4 * -0.9808292530 = 0.3629903489
 *   alpha 0:   L = T^2 KL = 1.4519613956;  dL/dz = T (p - q) = 2 (1/3 - 3/4, 2/3 - 1/4)
 *              = (-5/6, 5/6)
 *   alpha 1/2, y = 1: CE = -ln(4/5) = 0.2231435513;  L = (0.2231435513 + 1.4519613956) / 2
 *              = 0.8375524735;  dL/dz = ((1/5, 4/5 - 1) + (-5/6, 5/6)) / 2 = (-19/60, 19/60),
 *              and over N = 2 equal rows the same L and half that gradient.
 * A wrong term moves L far past the tolerance: KL(p || q) gives 4 * 0.3835760966 = 1.534, T
 * instead of T^2 0.726, no temperature on the student 2.802, none on the teacher 2.817. */
#define HAND_TOL 1e-6
static void test_two_classes_by_hand(void **state) {
        float z[2 * V], t[2 * V], g[2 * V];
        const uint8_t y[2] = { 1, 1 };
        const double g_kl = 5.0 / 6.0, g_mix = 19.0 / 60.0;

        for (int i = 0; i < 2 * V; i++)
                z[i] = t[i] = -1e4f;
        for (int n = 0; n < 2; n++) {
                t[n * V + 0] = (float) (2.0 * log(3.0));
                t[n * V + 1] = 0.0f;
                z[n * V + 0] = 0.0f;
                z[n * V + 1] = (float) (2.0 * log(2.0));
        }

        double l = distill_loss(g, z, t, y, 1, 2.0f, 0.0f);
        printf("distill: two classes, T=2 alpha=0: L %.10f (by hand 1.4519613956), dL/dz %.8f "
               "%.8f (by hand -5/6, 5/6)\n",
               l, (double) g[0], (double) g[1]);
        assert_true(fabs(l - 1.4519613956) <= HAND_TOL);
        assert_true(fabs(g[0] + g_kl) <= HAND_TOL && fabs(g[1] - g_kl) <= HAND_TOL);
        for (int i = 2; i < V; i++)
                assert_true(g[i] == 0.0f);

        l = distill_loss(g, z, t, y, 1, 2.0f, 0.5f);
        printf("distill: two classes, T=2 alpha=0.5 y=1: L %.10f (by hand 0.8375524735), dL/dz "
               "%.8f %.8f (by hand -19/60, 19/60)\n",
               l, (double) g[0], (double) g[1]);
        assert_true(fabs(l - 0.8375524735) <= HAND_TOL);
        assert_true(fabs(g[0] + g_mix) <= HAND_TOL && fabs(g[1] - g_mix) <= HAND_TOL);

        l = distill_loss(g, z, t, y, 2, 2.0f, 0.5f);
        assert_true(fabs(l - 0.8375524735) <= HAND_TOL);
        for (int n = 0; n < 2; n++) {
                assert_true(fabs(g[n * V + 0] + g_mix / 2) <= HAND_TOL);
                assert_true(fabs(g[n * V + 1] - g_mix / 2) <= HAND_TOL);
        }
}

/* Where |fd| or |g| is at most the comparison's absolute floor, a zero (or tiny) gradient
 * would pass it: most coordinates must lie above the floor. Measured: 735..768 of 768 at the
 * logits, 113 of 120 parameters. */
#define MIN_ABOVE_FLOOR 0.8
/* max |dL/dz - fd| over max |dL/dz|; measured 1.2e-6..3.0e-6 over the four settings */
#define LOGIT_TOL 2e-5

/* dL/dz against central differences of the loss (computed in float64 from float logits). */
static void test_logit_gradient(void **state) {
        static const float settings[][2] = { { 1.0f, 0.5f }, { 2.0f, 0.3f }, { 4.0f, 0.0f },
                                             { 0.5f, 1.0f } };
        enum { N = 3 };
        float z[N * V], t[N * V], g[N * V];
        uint8_t y[N];
        rng_t r;

        rng_seed(&r, 4);
        for (int i = 0; i < N * V; i++) {
                z[i] = 2.0f * rng_normal(&r);
                t[i] = 2.0f * rng_normal(&r);
        }
        for (int n = 0; n < N; n++)
                y[n] = (uint8_t) rng_below(&r, V);
        for (size_t s = 0; s < sizeof(settings) / sizeof(settings[0]); s++) {
                float T = settings[s][0], alpha = settings[s][1];
                double worst = 0.0, gmax = 0.0;
                int above = 0;
                distill_loss(g, z, t, y, N, T, alpha);
                for (int i = 0; i < N * V; i++)
                        gmax = fmax(gmax, fabs(g[i]));
                for (int i = 0; i < N * V; i++) {
                        float keep = z[i], h = 1e-2f;
                        z[i] = keep + h;
                        double up = distill_loss(NULL, z, t, y, N, T, alpha);
                        float dup = z[i] - keep;
                        z[i] = keep - h;
                        double down = distill_loss(NULL, z, t, y, N, T, alpha);
                        float ddown = keep - z[i];
                        z[i] = keep;
                        double fd = (up - down) / ((double) dup + ddown);
                        worst = fmax(worst, fabs(fd - g[i]));
                        if (fmin(fabs(fd), fabs(g[i])) > LOGIT_TOL * gmax)
                                above++;
                }
                printf("distill: T=%g alpha=%g: max |dL/dz - finite difference| %.3g (max |dL/dz| "
                       "%.3g), %d of %d above the floor\n",
                       (double) T, (double) alpha, worst, gmax, above, N * V);
                /* O(h^2) truncation of the central difference: a wrong term (a missing T, a sign)
                 * would be of the order of gmax */
                assert_true(worst <= LOGIT_TOL * gmax);
                assert_true(above >= MIN_ABOVE_FLOOR * N * V);
        }
}

/* Through the whole student: distill_grad's parameter gradient against central differences
 * of the distillation loss of the student's logits, the teacher fixed. */
static void test_parameter_gradient(void **state) {
        enum { B = 2, T = 24, N_COORDS = 120 };
        const model_config cfg = { .name = "custom", .block_size = 32, .n_embd = 32, .n_layer = 2,
                                   .n_head = 4 };
        const float temp = 2.0f, alpha = 0.4f;
        uint8_t tok[B * T], tgt[B * T];
        float *scratch = malloc(sizeof(float) * B * T * V), *tlogits = malloc(sizeof(float) * B * T * V);
        model *s, *t;
        double loss;
        rng_t r;

        assert_int_equal(model_new(&cfg, B, T, &s), 0);
        assert_int_equal(model_new(&cfg, B, T, &t), 0);
        model_init_params(s, 1);
        model_init_params(t, 2);
        rng_seed(&r, 3);
        for (size_t i = 0; i < s->layout.n_params; i++) {
                s->params[i] += 0.1f * rng_normal(&r);
                t->params[i] += 0.3f * rng_normal(&r);
        }
        for (int i = 0; i < B * T; i++) {
                tok[i] = (uint8_t) rng_below(&r, V);
                tgt[i] = (uint8_t) rng_below(&r, V);
        }
        model_zero_grad(s);
        assert_int_equal(distill_grad(s, t, tok, tgt, B, T, temp, alpha, 1.0f, scratch, &loss), 0);
        memcpy(tlogits, t->acts.logits, sizeof(float) * B * T * V);

        int fails = 0, above = 0;
        double worst = 0.0;
        for (int c = 0; c < N_COORDS; c++) {
                const model_view *v = &s->layout.views[c % s->layout.n_views];
                size_t i = v->offset + rng_below(&r, v->numel);
                float keep = s->params[i], h = 1e-2f;
                double l[2];
                for (int k = 0; k < 2; k++) {
                        s->params[i] = keep + (k ? -h : h);
                        assert_int_equal(model_forward(s, tok, NULL, B, T, NULL), 0);
                        l[k] = distill_loss(NULL, s->acts.logits, tlogits, tgt, B * T, temp, alpha);
                }
                s->params[i] = keep;
                double fd = (l[0] - l[1]) / (2.0 * h), g = s->grads[i];
                double err = fabs(fd - g) / fmax(fabs(fd), 1e-2);
                worst = fmax(worst, err);
                /* the bounds of tests/test-gradcheck.c: float32 central differences */
                if (err > 2e-2 && fabs(fd - g) > 2e-4) {
                        printf("distill: %s[%zu]: grad %.6g, finite difference %.6g\n", v->name,
                               i - v->offset, g, fd);
                        fails++;
                }
                /* the floor of that bound: g = 0 passes where |fd| <= 2e-4 */
                if (fmin(fabs(fd), fabs(g)) > 2e-4)
                        above++;
        }
        printf("distill: %d parameter coordinates, worst relative error %.3g, %d over bounds, "
               "%d above the floor |g| > 2e-4\n",
               N_COORDS, worst, fails, above);
        assert_int_equal(fails, 0);
        assert_true(above >= MIN_ABOVE_FLOOR * N_COORDS);
        model_free(s);
        model_free(t);
        free(scratch);
        free(tlogits);
}

/* A tiny teacher trained TEACHER_STEPS on the licence texts; a fresh tiny student (another
 * seed) distilled for STUDENT_STEPS at temperature 1, alpha 0 (pure KL). Its held-out KL to the
 * teacher must fall to at most KL_RATIO of where it started (measured: 0.05) and to at most
 * HARD_RATIO of that of a student trained as long on the same bytes with the hard labels only
 * (alpha 1; measured: 0.51). (At temperature 2, alpha 0.2 the distilled student was not ahead
 * after so few steps: the softened targets do not aim at the temperature-1 KL measured here.) */
#define TEACHER_STEPS 200
#define STUDENT_STEPS 60
#define KL_RATIO 0.15
#define HARD_RATIO 0.75
static void test_distill_lowers_kl(void **state) {
        enum { B = 8, T = 64 };
        char *paths[] = { "/usr/share/common-licenses" };
        corpus data = { 0 };
        batch_source src = batch_source_corpus(&data);
        model_config cfg;
        model *teacher, *student;
        adamw_state opt;
        adamw_hparams hp;
        ckpt_state cs;
        uint8_t tok[B * T], tgt[B * T];
        float *scratch = malloc(sizeof(float) * B * T * V);
        float loss;
        double kl0, kl_distilled, kl_hard, dl;

        if (corpus_load(&data, paths, 1, 4u << 20) < 0)
                TEST_SKIP("no /usr/share/common-licenses to train the teacher on");
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        adamw_hparams_default(&hp);
        assert_int_equal(model_new(&cfg, B, T, &teacher), 0);
        assert_int_equal(adamw_new(teacher->layout.n_params, &hp, &opt), 0);
        trainer_fresh(teacher, 1, &cs);
        lr_schedule sched = { .lr_max = 2e-3f, .lr_min = 2e-4f, .warmup_steps = 20,
                              .total_steps = TEACHER_STEPS };
        while (cs.step < TEACHER_STEPS)
                assert_int_equal(trainer_step(teacher, &opt, &src, B, T, 1, lr_at(&sched, cs.step),
                                              tok, tgt, &cs, &loss, NULL, NULL),
                                 0);
        adamw_free(&opt);

        sched.total_steps = STUDENT_STEPS;
        sched.warmup_steps = 10;
        for (int run = 0; run < 2; run++) {
                float alpha = run == 0 ? 0.0f : 1.0f;
                assert_int_equal(model_new(&cfg, B, T, &student), 0);
                assert_int_equal(adamw_new(student->layout.n_params, &hp, &opt), 0);
                trainer_fresh(student, 7, &cs);
                assert_int_equal(distill_eval(student, teacher, &src, B, T, 4, tok, tgt, &kl0, NULL),
                                 0);
                for (long step = 0; step < STUDENT_STEPS; step++) {
                        rng_t cursor = { .state = cs.data_cursor };
                        assert_int_equal(src.train(src.ctx, &cursor, B, T, tok, tgt, NULL), 0);
                        cs.data_cursor = cursor.state;
                        model_zero_grad(student);
                        assert_int_equal(distill_grad(student, teacher, tok, tgt, B, T, 1.0f, alpha,
                                                      1.0f, scratch, &dl),
                                         0);
                        adamw_step(&opt, &student->layout, student->params, student->grads,
                                   lr_at(&sched, step));
                }
                double kl;
                assert_int_equal(distill_eval(student, teacher, &src, B, T, 4, tok, tgt, &kl, NULL),
                                 0);
                if (run == 0)
                        kl_distilled = kl;
                else
                        kl_hard = kl;
                printf("distill: student alpha %.1f: held-out KL(teacher||student) %.4f -> %.4f "
                       "nats/byte after %d steps\n",
                       (double) alpha, kl0, kl, STUDENT_STEPS);
                model_free(student);
                adamw_free(&opt);
        }
        assert_true(kl_distilled <= KL_RATIO * kl0);
        assert_true(kl_distilled <= HARD_RATIO * kl_hard);
        model_free(teacher);
        corpus_free(&data);
        free(scratch);
}

static int setup(void **state) {
        blas_set_threads(2);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_two_classes_by_hand),
                cmocka_unit_test(test_logit_gradient),
                cmocka_unit_test(test_parameter_gradient),
                cmocka_unit_test(test_distill_lowers_kl),
        };
        return test_run_group("test-distill", tests, setup, NULL);
}
