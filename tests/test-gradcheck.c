/* SPDX-License-Identifier: MIT */
/* Finite-difference check of every parameter tensor's gradient on random coordinates. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <math.h>
#include <stdio.h>

#include "model.h"
#include "rng.h"

/* T spans several attention row blocks (64 rows each), the last one partial */
#define B 2
#define T 150
#define N_COORDS 400
#define FD_EPS 1e-2f
/* Central differences in float32 carry O(eps^2) truncation and ~1e-7 * loss / eps rounding
 * error; the bound below is a few times what a correct gradient shows, and a wrong one
 * (a missing term, a transposed weight) misses it by orders of magnitude. */
#define REL_TOL 2e-2
#define ABS_TOL 2e-4
/* Where |g| <= ABS_TOL / (1 - REL_TOL), a zero analytic gradient passes the bound: most
 * coordinates must lie above that floor, so that a zero or tiny gradient everywhere (or a
 * loss that does not depend on the parameters) fails. Measured: 374 of 400 (93 %). */
#define FLOOR_G (ABS_TOL / (1.0 - REL_TOL))
#define MIN_ABOVE_FLOOR 0.8

static double loss_at(model *m, const uint8_t *tok, const uint8_t *tgt) {
        float loss;
        assert_int_equal(model_forward(m, tok, tgt, B, T, &loss), 0);
        double sum = 0.0;
        for (int i = 0; i < B * T; i++)
                sum += m->acts.losses[i];
        return sum / (B * T);
}

static void test_gradcheck(void **state) {
        model_config cfg = {
                .name = "custom", .block_size = 160, .n_embd = 32, .n_layer = 2, .n_head = 4
        };
        uint8_t tok[B * T], tgt[B * T];
        model *m;
        rng_t rng;

        assert_int_equal(model_new(&cfg, B, T, &m), 0);
        model_init_params(m, 7);
        rng_seed(&rng, 1);
        /* larger than GPT-2 init so every path carries signal */
        for (size_t i = 0; i < m->layout.n_params; i++)
                m->params[i] += 0.1f * rng_normal(&rng);
        for (int i = 0; i < B * T; i++) {
                tok[i] = (uint8_t) rng_below(&rng, 256);
                tgt[i] = (uint8_t) rng_below(&rng, 256);
        }
        loss_at(m, tok, tgt);
        model_zero_grad(m);
        assert_int_equal(model_backward(m, tok, 1.0f), 0);

        int fails = 0, checked = 0, above = 0;
        double worst = 0.0;
        for (int c = 0; c < N_COORDS; c++) {
                /* every view gets coordinates: cycle views, random element inside */
                const model_view *v = &m->layout.views[c % m->layout.n_views];
                size_t idx = v->offset + rng_below(&rng, v->numel);
                float saved = m->params[idx];

                m->params[idx] = saved + FD_EPS;
                double lp = loss_at(m, tok, tgt);
                m->params[idx] = saved - FD_EPS;
                double lm = loss_at(m, tok, tgt);
                m->params[idx] = saved;

                double fd = (lp - lm) / (2.0 * FD_EPS), an = m->grads[idx];
                double err = fabs(fd - an), scale = fmax(fabs(fd), fabs(an));
                if (err > REL_TOL * scale + ABS_TOL) {
                        fails++;
                        printf("  %s[%zu]: analytic %.6g finite-difference %.6g\n", v->name,
                               idx - v->offset, an, fd);
                }
                if (scale > 1e-3)
                        worst = fmax(worst, err / scale);
                /* both: a tiny analytic gradient must not count on the strength of fd */
                if (fmin(fabs(fd), fabs(an)) > FLOOR_G)
                        above++;
                checked++;
        }
        printf("gradcheck: %d coordinates over %zu tensors, worst relative error %.3g "
               "(|g|>1e-3), bound %.0e rel + %.0e abs; %d above the floor |g| > %.2g, "
               "%.0f %% needed\n",
               checked, m->layout.n_views, worst, REL_TOL, ABS_TOL, above, FLOOR_G,
               100.0 * MIN_ABOVE_FLOOR);
        assert_int_equal(fails, 0);
        assert_true(above >= MIN_ABOVE_FLOOR * checked);
        model_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_gradcheck),
        };
        return test_run_group("test-gradcheck", tests, NULL, NULL);
}
