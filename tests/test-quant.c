/* SPDX-License-Identifier: MIT */
/* Quantized inference: binary16 scales, the error bound of every quantized weight against
 * the float original, SIMD kernels bit-identical to the portable ones on random and extreme
 * codes (and both close to a float64 product), quantized logits near the float model's on
 * the PyTorch fixture's model and bytes, deterministic generation, the file round trip and
 * corrupt files refused; and the kernels this CPU should run are the ones that run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "macros.h"
#include "model.h"
#include "quant-sample.h"
#include "quant.h"
#include "quantize.h"
#include "rng.h"
#include "safetensors.h"
#include "test-util.h"

/* Quantized logits against the float model's, as max |dz| / max |z| over all 64 x 256 logits
 * of the fixture's first sequence. The fixture's matrices are uniform in [-2^-5, 2^-5], the
 * worst case for max-scaled codes (trained weights are bell-shaped, see bench/quant.c for
 * losses). Measured here: int8 2.5 % (0.85 % of it from the weights alone; the rest from
 * the activations' 7-bit per-vector codes), int4 12.7 %. The bounds leave about 2x. */
#define TOL_LOGITS_INT8 0.05
#define TOL_LOGITS_INT4 0.25
/* The f32 kind through the same kernels: only the summation order differs from sgemm. */
#define TOL_LOGITS_F32 1e-5

static const quant_kind kinds[] = { QUANT_F32, QUANT_INT8, QUANT_INT4 };

static void fill_weights(float *w, size_t n, rng_t *r) {
        for (size_t i = 0; i < n; i++) {
                w[i] = 0.05f * rng_normal(r);
                if (rng_below(r, 97) == 0)
                        w[i] *= 20.0f; /* outliers, as trained matrices have */
                if (rng_below(r, 211) == 0)
                        w[i] = 0.0f;
        }
}

static void test_f16(void **state) {
        /* every positive finite binary16 survives the round trip, and rounding is upward */
        for (uint32_t h = 0; h < 0x7c00; h++) {
                float f = quant_f16_to_f32((uint16_t) h);
                assert_int_equal(quant_f16_from_f32_up(f), h);
                if (h > 0) {
                        float below = quant_f16_to_f32((uint16_t) (h - 1));
                        float mid = below + (f - below) * 0.25f;
                        if (mid > below)
                                assert_int_equal(quant_f16_from_f32_up(mid), h);
                }
        }
        assert_true(quant_f16_to_f32(0x3c00) == 1.0f);
        assert_true(quant_f16_to_f32(0x0001) == 0x1p-24f);
        assert_int_equal(quant_f16_from_f32_up(70000.0f), 0x7c00);
}

/* |w - dequant(w)| <= scale / 2 for every weight; the codes stay in range. */
static void test_error_bounds(void **state) {
        const int rows = 37, cols = 320;
        float *w = malloc(sizeof(float) * rows * cols), *d = malloc(sizeof(float) * rows * cols);
        rng_t r;

        rng_seed(&r, 1);
        fill_weights(w, (size_t) rows * cols, &r);
        for (int i = 0; i < cols; i++)
                w[5 * cols + i] = 0.0f; /* an all-zero row: scale 0, exact */
        for (size_t k = 1; k < ARRAY_SIZE(kinds); k++) {
                quant_matrix m;
                double worst = 0.0, worst_rel = 0.0;
                assert_int_equal(quant_matrix_new(&m, w, rows, cols, kinds[k]), 0);
                quant_matrix_dequantize(&m, d);
                for (int i = 0; i < rows; i++)
                        for (int j = 0; j < cols; j++) {
                                double err = fabs((double) w[i * cols + j] - d[i * cols + j]);
                                double bound = quant_matrix_bound(&m, i, j);
                                assert_true(err <= bound);
                                worst = fmax(worst, err);
                                if (bound > 0)
                                        worst_rel = fmax(worst_rel, err / bound);
                        }
                for (int j = 0; j < cols; j++)
                        assert_true(d[5 * cols + j] == 0.0f);
                if (kinds[k] == QUANT_INT8) {
                        for (int i = 0; i < rows; i++) {
                                float mx = 0;
                                for (int j = 0; j < cols; j++)
                                        mx = fmaxf(mx, fabsf(w[i * cols + j]));
                                assert_true(m.scale[i] == mx / 127.0f);
                        }
                        for (size_t i = 0; i < (size_t) rows * cols; i++)
                                assert_true(((int8_t *) m.data)[i] >= -127);
                } else {
                        for (size_t i = 0; i < (size_t) rows * cols / 2; i++) {
                                uint8_t b = ((uint8_t *) m.data)[i];
                                assert_true((b & 0xf) >= 1 && (b >> 4) >= 1);
                        }
                        /* the scale is the smallest binary16 at or above max / 7 */
                        for (int i = 0; i < rows; i++)
                                for (int g = 0; g < cols / QUANT_GROUP; g++) {
                                        float mx = 0;
                                        for (int j = 0; j < QUANT_GROUP; j++)
                                                mx = fmaxf(mx, fabsf(w[i * cols + g * 32 + j]));
                                        uint16_t h = m.scale16[i * (cols / QUANT_GROUP) + g];
                                        assert_true(quant_f16_to_f32(h) >= mx / 7.0f);
                                        if (h > 0)
                                                assert_true(quant_f16_to_f32(h - 1) < mx / 7.0f);
                                }
                }
                printf("quant: int%d: max |w - dequant| %.3g, at most %.3f of the bound scale/2\n",
                       (int) kinds[k], worst, worst_rel);
                quant_matrix_free(&m);
        }
        free(w);
        free(d);
}

/* A quant_matrix's product and the portable one through both entry points (float x, and
 * codes made by the SIMD quantizer), which must give the same bits. */
static void check_same_bits(const quant_matrix *m, const quant_acts *a, const float *bias, float *y,
                            float *yp) {
        quant_matvec_acts(m, a, bias, y);
        quant_matvec_acts_portable(m, a, bias, yp);
        assert_memory_equal(y, yp, sizeof(float) * m->rows);
}

/* The codes of x from the SIMD and the portable quantizer: every field the kernels read. */
static void check_same_acts(const float *x, int n, quant_kind kind, quant_acts *a) {
        static quant_acts b;
        quant_acts_set(a, x, n, kind);
        quant_acts_set_portable(&b, x, n, kind);
        assert_int_equal(a->n, n);
        assert_memory_equal(a->q8, b.q8, (size_t) n);
        if (kind == QUANT_INT8) {
                assert_memory_equal(a->scale, b.scale, sizeof(float));
                assert_memory_equal(a->u8, b.u8, (size_t) n);
        } else {
                assert_memory_equal(a->scale, b.scale, sizeof(float) * (n / QUANT_GROUP));
                assert_memory_equal(a->q16, b.q16, sizeof(int16_t) * n);
                assert_memory_equal(a->sum8, b.sum8, sizeof(a->sum8[0]) * (n / QUANT_GROUP));
        }
}

/* The activation codes against the float x they stand for: |x - xq * xs| <= xs / 2, codes in
 * range (7-bit per vector for int8, 8-bit per group for int4). */
static void check_acts_bound(const float *x, int n, const quant_acts *a) {
        for (int j = 0; j < n; j++) {
                bool i8 = a->kind == QUANT_INT8;
                float xs = i8 ? a->scale[0] : a->scale[j / QUANT_GROUP];
                int lim = i8 ? 64 : 127;
                assert_true(a->q8[j] >= -lim && a->q8[j] <= lim);
                if (i8)
                        assert_int_equal(a->u8[j], a->q8[j] + 64);
                else
                        assert_int_equal(a->q16[j], a->q8[j]);
                assert_true(fabs((double) x[j] - (double) a->q8[j] * xs) <= xs * 0.5 * (1 + 1e-6));
        }
}

/* The SIMD kernels give the same bits as the portable ones (they implement the same
 * arithmetic, quant.h). Both are within float rounding of a float64 product of the
 * dequantized weights and dequantized activations, and within the activation codes' bound
 * of the product with the float x. */
static void test_simd_matches_portable(void **state) {
        static const int shapes[][2] = { { 1, 32 },   { 7, 64 },   { 256, 128 }, { 33, 96 },
                                         { 64, 512 }, { 5, 2048 }, { 3, 4096 } };
        static quant_acts acts;
        rng_t r;

        rng_seed(&r, 2);
        printf("quant: kernels in use: %s\n", quant_simd_name());
        for (size_t s = 0; s < ARRAY_SIZE(shapes); s++) {
                int rows = shapes[s][0], cols = shapes[s][1];
                float *w = malloc(sizeof(float) * rows * cols),
                      *d = malloc(sizeof(float) * rows * cols);
                float *x = malloc(sizeof(float) * cols), *bias = malloc(sizeof(float) * rows);
                float *a = malloc(sizeof(float) * rows), *b = malloc(sizeof(float) * rows);

                fill_weights(w, (size_t) rows * cols, &r);
                for (int j = 0; j < cols; j++)
                        x[j] = rng_normal(&r) * (rng_below(&r, 50) == 0 ? 8.0f : 1.0f);
                for (int i = 0; i < rows; i++)
                        bias[i] = 0.1f * rng_normal(&r);
                for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
                        quant_matrix m;
                        assert_int_equal(quant_matrix_new(&m, w, rows, cols, kinds[k]), 0);
                        quant_matvec(&m, x, bias, a);
                        quant_matvec_portable(&m, x, bias, b);
                        assert_memory_equal(a, b, sizeof(float) * rows);
                        bool integer = kinds[k] != QUANT_F32;
                        if (integer) {
                                check_same_acts(x, cols, kinds[k], &acts);
                                check_acts_bound(x, cols, &acts);
                                check_same_bits(&m, &acts, bias, a, b);
                        }
                        quant_matrix_dequantize(&m, d);
                        for (int i = 0; i < rows; i++) {
                                double ref = bias[i], mag = fabs(bias[i]), act_err = 0.0;
                                for (int j = 0; j < cols; j++) {
                                        double xj = x[j];
                                        if (integer) {
                                                double xs = kinds[k] == QUANT_INT8
                                                                    ? acts.scale[0]
                                                                    : acts.scale[j / QUANT_GROUP];
                                                xj = (double) acts.q8[j] * xs;
                                                act_err += fabs((double) d[i * cols + j]) * xs / 2;
                                        }
                                        ref += (double) d[i * cols + j] * xj;
                                        mag += fabs((double) d[i * cols + j] * xj);
                                }
                                /* a few roundings of float per term, relative to sum |terms| */
                                assert_true(fabs(a[i] - ref) <= 1e-6 * mag + 1e-30);
                                if (integer) {
                                        double exact = bias[i];
                                        for (int j = 0; j < cols; j++)
                                                exact += (double) d[i * cols + j] * x[j];
                                        assert_true(fabs(a[i] - exact) <=
                                                    act_err * (1 + 1e-5) + 1e-6 * mag + 1e-30);
                                }
                        }
                        quant_matrix_free(&m);
                }
                free(w);
                free(d);
                free(x);
                free(bias);
                free(a);
                free(b);
        }
        printf("quant: %s and portable kernels bit-identical on %zu shapes x 3 kinds\n",
               quant_simd_name(), ARRAY_SIZE(shapes));
}

/* What quant.h promises: AVX2 (with F16C, for the int4 scales) on an x86-64 that has both,
 * NEON on aarch64, the portable C elsewhere. Asked of the CPU here, not of kernels/quant.c, so
 * that a dispatch falling back to the portable kernels unnoticed fails: the bit-identity above
 * would pass with the portable kernels on both sides. */
static const char *expected_kernels(void) {
#if defined(__x86_64__)
        unsigned a, b, c = 0, d;
        __builtin_cpu_init();
        bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
        return __builtin_cpu_supports("avx2") && f16c ? "avx2" : "portable";
#elif defined(__aarch64__)
        return "neon";
#else
        return "portable";
#endif
}

static void test_kernels_expected(void **state) {
        const char *want = expected_kernels();

        printf("quant: kernels in use: %s, expected on this CPU: %s\n", quant_simd_name(), want);
        assert_string_equal(quant_simd_name(), want);
        bool was = quant_force_portable(true);
        assert_string_equal(quant_simd_name(), "portable");
        quant_force_portable(was);
        assert_string_equal(quant_simd_name(), want);
}

/* Sets the code of weight (i, j): a signed byte, or the nibble q + 8 at byte j % 16 of its
 * group (low half for columns 0..15 of the group, high for 16..31). */
static void set_code(quant_matrix *m, int i, int j, int q) {
        size_t at = (size_t) i * m->cols + j;
        if (m->kind == QUANT_INT8) {
                ((int8_t *) m->data)[at] = (int8_t) q;
                return;
        }
        uint8_t *b = (uint8_t *) m->data + (at - j % 32) / 2 + j % 16;
        if (j % 32 < 16)
                *b = (uint8_t) ((*b & 0xf0) | (q + 8));
        else
                *b = (uint8_t) ((*b & 0x0f) | (q + 8) << 4);
}

/* Row i's code at column j: all +lim, all -lim, alternating or random signs, by i % 4. */
static int extreme_code(int i, int j, int lim, rng_t *r) {
        switch (i % 4) {
        case 0:
                return lim;
        case 1:
                return -lim;
        case 2:
                return j & 1 ? lim : -lim;
        default:
                return rng_below(r, 2) ? lim : -lim;
        }
}

/* Every code at its extreme, all one sign or alternating, against activations whose codes
 * are all at +-64 / +-127 (x = +-1: the maximum is 1), including 0 for int8's unsigned
 * operand (xq = -64) and the vpmaddubsw pair sums' limit (128 * 127 * 2); rows that leave
 * 1..3 past the four-row blocks, group counts 1, 3, 5 and the widest matrix. Compared with
 * the exact integer sum computed here, and the kernels with each other. */
static void test_adversarial_exact(void **state) {
        static const int shapes[][2] = { { 1, 32 }, { 2, 96 }, { 3, 160 },
                                         { 5, 32 }, { 9, 96 }, { 6, 4096 } };
        static quant_acts acts;
        rng_t r;

        rng_seed(&r, 3);
        for (size_t s = 0; s < ARRAY_SIZE(shapes); s++) {
                int rows = shapes[s][0], cols = shapes[s][1];
                float *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows);
                float *yp = malloc(sizeof(float) * rows);
                for (int pattern = 0; pattern < 6; pattern++) {
                        for (int j = 0; j < cols; j++) {
                                switch (pattern) {
                                case 0:
                                        x[j] = 1.0f;
                                        break;
                                case 1:
                                        x[j] = -1.0f;
                                        break;
                                case 2:
                                        x[j] = j & 1 ? -1.0f : 1.0f;
                                        break;
                                case 3:
                                        x[j] = rng_below(&r, 2) ? 1.0f : -1.0f;
                                        break;
                                /* NaN, +-inf and huge values: the same codes from both */
                                case 4:
                                        x[j] = j % 7 == 3 ? NAN : j % 11 == 5 ? -INFINITY : 1.0f;
                                        break;
                                default:
                                        x[j] = j % 5 == 0 ? 3e38f : (j % 5 == 1 ? 1e-35f : -1.0f);
                                }
                        }
                        for (size_t k = 1; k < ARRAY_SIZE(kinds); k++) {
                                quant_matrix m;
                                bool i8 = kinds[k] == QUANT_INT8;
                                assert_int_equal(quant_matrix_alloc(&m, rows, cols, kinds[k]), 0);
                                int lim = i8 ? 127 : 7;
                                for (int i = 0; i < rows; i++)
                                        for (int j = 0; j < cols; j++)
                                                set_code(&m, i, j, extreme_code(i, j, lim, &r));
                                if (i8)
                                        for (int i = 0; i < rows; i++)
                                                m.scale[i] = 0.5f + (float) i;
                                else
                                        for (size_t g = 0; g < (size_t) rows * (cols / 32); g++)
                                                m.scale16[g] = 0x3c00; /* 1.0 */
                                quant_matrix_finish(&m);
                                check_same_acts(x, cols, kinds[k], &acts);
                                if (pattern < 4) {
                                        /* the codes are exactly +-64 / +-127 */
                                        for (int j = 0; j < cols; j++)
                                                assert_int_equal(acts.q8[j],
                                                                 (x[j] > 0 ? 1 : -1) *
                                                                         (i8 ? 64 : 127));
                                }
                                check_same_bits(&m, &acts, NULL, y, yp);
                                quant_matvec(&m, x, NULL, y);
                                quant_matvec_portable(&m, x, NULL, yp);
                                assert_memory_equal(y, yp, sizeof(float) * rows);
                                /* int8: the exact integer through the defined roundings */
                                if (i8)
                                        for (int i = 0; i < rows; i++) {
                                                const int8_t *q =
                                                        (const int8_t *) m.data + (size_t) i * cols;
                                                int64_t dot = 0;
                                                for (int j = 0; j < cols; j++)
                                                        dot += q[j] * acts.q8[j];
                                                float want =
                                                        ((float) dot * acts.scale[0]) * m.scale[i];
                                                assert_memory_equal(&y[i], &want, sizeof(float));
                                        }
                                quant_matrix_free(&m);
                        }
                }
                free(x);
                free(y);
                free(yp);
        }
        printf("quant: %s and portable kernels bit-identical on extreme codes, NaN/inf inputs "
               "and row/group tails\n",
               quant_simd_name());
}

/* ---- the fixture's model and bytes ---- */

static model *fixture_model(uint8_t *tok, int *ret_T) {
        char path[4096];
        st_file *f = NULL;
        model_config cfg;
        model *m;

        assert_true(test_fixture_path("tiny_ref.safetensors", path, sizeof(path)));
        assert_int_equal(st_load(path, &f), 0);
        const st_tensor *t = st_find(f, "tokens");
        assert_non_null(t);
        int T = (int) t->shape[1];
        for (int i = 0; i < T; i++) {
                int32_t v;
                memcpy(&v, (const char *) t->data + 4 * i, 4);
                tok[i] = (uint8_t) v;
        }
        st_free(f);
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, T, &m), 0);
        test_fill_params_splitmix20(&m->layout, m->params);
        *ret_T = T;
        return m;
}

static void test_logits_vs_fp32(void **state) {
        static const double tol[] = { TOL_LOGITS_F32, TOL_LOGITS_INT8, TOL_LOGITS_INT4 };
        uint8_t tok[256];
        float logits[MODEL_VOCAB];
        int T;
        model *m = fixture_model(tok, &T);

        assert_int_equal(model_forward(m, tok, NULL, 1, T, NULL), 0);
        double zmax = test_max_abs(m->acts.logits, (size_t) T * MODEL_VOCAB);
        for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
                quant_model *q;
                sampler *s;
                double worst = 0.0;
                assert_int_equal(quant_model_from_model(m, kinds[k], kinds[k], &q), 0);
                assert_int_equal(quant_sampler_new(q, &s), 0);
                for (int t = 0; t < T; t++) {
                        assert_int_equal(sampler_feed(s, tok[t], logits), 0);
                        const float *ref = m->acts.logits + (size_t) t * MODEL_VOCAB;
                        for (int v = 0; v < MODEL_VOCAB; v++)
                                worst = fmax(worst, fabs(logits[v] - ref[v]) / zmax);
                }
                printf("quant: %-4s logits vs fp32 forward: max |dz| / max |z| = %.3g over %d "
                       "positions (tol %g); weights %zu bytes of %zu\n",
                       kinds[k] == QUANT_F32 ? "f32" : kinds[k] == QUANT_INT8 ? "int8" : "int4",
                       worst, T, tol[k], quant_model_weight_bytes(q),
                       m->layout.n_params * sizeof(float));
                assert_true(worst <= tol[k]);
                sampler_free(s);
                quant_model_free(q);
        }
        model_free(m);
}

static void test_generation_deterministic(void **state) {
        uint8_t tok[256], a[40], b[40], c[40];
        int T;
        model *m = fixture_model(tok, &T);
        sample_opts o = { .temperature = 0.9f, .top_k = 20, .seed = 11 };

        for (size_t k = 1; k < ARRAY_SIZE(kinds); k++) {
                quant_model *q;
                sampler *s;
                assert_int_equal(quant_model_from_model(m, kinds[k], kinds[k], &q), 0);
                assert_int_equal(quant_sampler_new(q, &s), 0);
                assert_int_equal(sample_generate(s, tok, 8, a, sizeof(a), &o), 40);
                assert_int_equal(sample_generate(s, tok, 8, b, sizeof(b), &o), 40);
                assert_memory_equal(a, b, sizeof(a));
                /* the portable kernels give the same bits, hence the same text */
                bool was = quant_force_portable(true);
                assert_int_equal(sample_generate(s, tok, 8, c, sizeof(c), &o), 40);
                quant_force_portable(was);
                assert_memory_equal(a, c, sizeof(a));
                o.seed = 12;
                assert_int_equal(sample_generate(s, tok, 8, c, sizeof(c), &o), 40);
                assert_memory_not_equal(a, c, sizeof(a));
                o.seed = 11;
                sampler_free(s);
                quant_model_free(q);
        }
        model_free(m);
}

/* ---- files ---- */

static char dir[] = "/tmp/test-quant-XXXXXX";

static void path_in_dir(char *buf, size_t n, const char *name) {
        snprintf(buf, n, "%s/%s", dir, name);
}

static void test_file_roundtrip(void **state) {
        uint8_t tok[256];
        float la[MODEL_VOCAB], lb[MODEL_VOCAB];
        char path[256];
        int T;
        model *m = fixture_model(tok, &T);

        path_in_dir(path, sizeof(path), "q.safetensors");
        for (size_t k = 1; k < ARRAY_SIZE(kinds); k++) {
                quant_model *q, *back;
                sampler *sa, *sb;
                assert_int_equal(quant_model_from_model(m, kinds[k], QUANT_INT8, &q), 0);
                assert_int_equal(quant_save(path, q, 42), 0);
                assert_int_equal(quant_file_detect(path), 1);
                assert_int_equal(quant_load(path, &back), 0);
                assert_int_equal(back->kind, kinds[k]);
                assert_int_equal(back->embed_kind, QUANT_INT8);
                assert_int_equal(quant_model_weight_bytes(back), quant_model_weight_bytes(q));
                assert_int_equal(quant_sampler_new(q, &sa), 0);
                assert_int_equal(quant_sampler_new(back, &sb), 0);
                for (int t = 0; t < 16; t++) {
                        assert_int_equal(sampler_feed(sa, tok[t], la), 0);
                        assert_int_equal(sampler_feed(sb, tok[t], lb), 0);
                        assert_memory_equal(la, lb, sizeof(la));
                }
                sampler_free(sa);
                sampler_free(sb);
                quant_model_free(q);
                quant_model_free(back);
        }
        model_free(m);
}

/* Each corruption is written by quant_save (which does not validate) or by truncating. */
static void test_corrupt_refused(void **state) {
        uint8_t tok[256];
        char path[256];
        int T;
        model *m = fixture_model(tok, &T);
        quant_model *q, *back = NULL;

        path_in_dir(path, sizeof(path), "bad.safetensors");
        /* int8 code -128 (outside the format) */
        assert_int_equal(quant_model_from_model(m, QUANT_INT8, QUANT_INT8, &q), 0);
        ((int8_t *) q->fc[1].data)[17] = -128;
        assert_int_equal(quant_save(path, q, 1), 0);
        assert_int_equal(quant_load(path, &back), -EBADMSG);
        assert_null(back);
        ((int8_t *) q->fc[1].data)[17] = 0;
        /* a NaN row scale */
        q->wte.scale[3] = NAN;
        assert_int_equal(quant_save(path, q, 1), 0);
        assert_int_equal(quant_load(path, &back), -EBADMSG);
        quant_model_free(q);

        /* int4: a NaN binary16 scale, then an out-of-range nibble */
        assert_int_equal(quant_model_from_model(m, QUANT_INT4, QUANT_INT4, &q), 0);
        uint16_t keep = q->qkv[0].scale16[5];
        q->qkv[0].scale16[5] = 0x7e00;
        assert_int_equal(quant_save(path, q, 1), 0);
        assert_int_equal(quant_load(path, &back), -EBADMSG);
        q->qkv[0].scale16[5] = keep;
        ((uint8_t *) q->attproj[1].data)[3] &= 0xf0;
        assert_int_equal(quant_save(path, q, 1), 0);
        assert_int_equal(quant_load(path, &back), -EBADMSG);
        quant_model_free(q);

        /* truncated in the middle of the data */
        assert_int_equal(quant_model_from_model(m, QUANT_INT4, QUANT_INT4, &q), 0);
        assert_int_equal(quant_save(path, q, 1), 0);
        assert_int_equal(truncate(path, 100000), 0);
        assert_true(quant_load(path, &back) < 0);
        quant_model_free(q);

        /* a training checkpoint is not a quantized file */
        float one = 1.0f;
        const st_tensor t = { .name = "x", .dtype = ST_F32, .ndim = 1, .shape = { 1 }, .data = &one,
                              .nbytes = 4 };
        const st_meta meta[] = { { "format", "edged-checkpoint-1" } };
        assert_int_equal(st_write(path, &t, 1, meta, 1), 0);
        assert_int_equal(quant_file_detect(path), 0);
        assert_int_equal(quant_load(path, &back), -EBADMSG);
        assert_null(back);
        unlink(path);
        model_free(m);
}

static int setup(void **state) {
        blas_set_threads(1);
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
        char path[256];
        path_in_dir(path, sizeof(path), "q.safetensors");
        unlink(path);
        return rmdir(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_f16),
                cmocka_unit_test(test_error_bounds),
                cmocka_unit_test(test_kernels_expected),
                cmocka_unit_test(test_simd_matches_portable),
                cmocka_unit_test(test_adversarial_exact),
                cmocka_unit_test(test_logits_vs_fp32),
                cmocka_unit_test(test_generation_deterministic),
                cmocka_unit_test(test_file_roundtrip),
                cmocka_unit_test(test_corrupt_refused),
        };
        return test_run_group("test-quant", tests, setup, teardown);
}
