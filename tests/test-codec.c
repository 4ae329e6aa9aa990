/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "macros.h"
#include "model.h"
#include "rng.h"
#include "update-codec.h"

#define MAX_RAW ((size_t) 64 << 20)

/* cmocka's assert_float_equal works in float */
#define assert_close(a, b, tol)                                                                    \
        do {                                                                                       \
                double _a = (a), _b = (b), _t = (tol);                                             \
                if (!(fabs(_a - _b) <= _t))                                                        \
                        fail_msg("%s = %.17g, %s = %.17g, differ by more than %g", #a, _a, #b, _b, \
                                 _t);                                                              \
        } while (0)

/* ---- helpers ------------------------------------------------------------------------- */

static void layout_named(const char *name, model_layout *lay) {
        model_config cfg;

        assert_int_equal(model_config_by_name(name, &cfg), 0);
        model_layout_init(lay, &cfg);
}

/* A few thousand parameters, for the fuzz loop. */
static void layout_micro(model_layout *lay) {
        model_config cfg = {
                .name = "custom", .block_size = 8, .n_embd = 8, .n_layer = 1, .n_head = 2
        };

        assert_int_equal(model_config_validate(&cfg), 0);
        model_layout_init(lay, &cfg);
}

static float *alloc_floats(size_t n) {
        float *p = calloc(n, sizeof(float));
        assert_non_null(p);
        return p;
}

static void fill_normal(float *x, size_t n, float std, uint64_t seed) {
        rng_t r;

        rng_seed(&r, seed);
        for (size_t i = 0; i < n; i++)
                x[i] = std * rng_normal(&r);
}

static void view_dims(const model_view *v, uint32_t *rows, uint32_t *cols) {
        *rows = v->ndim == 2 ? (uint32_t) v->shape[0] : 1;
        *cols = v->ndim == 2 ? (uint32_t) v->shape[1] : (uint32_t) v->shape[0];
}

static uint8_t *zcompress(const void *raw, size_t n, size_t *ret_size) {
        size_t bound = ZSTD_compressBound(n);
        uint8_t *out = malloc(bound);

        assert_non_null(out);
        *ret_size = ZSTD_compress(out, bound, raw, n, 3);
        assert_false(ZSTD_isError(*ret_size));
        return out;
}

static uint8_t *zdecompress(const void *body, size_t size, size_t *ret_size) {
        unsigned long long n = ZSTD_getFrameContentSize(body, size);
        uint8_t *out;

        assert_true(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN);
        out = malloc(n + 1);
        assert_non_null(out);
        *ret_size = ZSTD_decompress(out, n, body, size);
        assert_int_equal(*ret_size, n);
        return out;
}

static void encode(upd_encoding enc, uint64_t base, const model_layout *lay, const float *delta,
                   float fraction, float *residual, void **body, size_t *size, upd_info *info) {
        int r = upd_encode(enc, base, lay, delta, fraction, residual, body, size, info);
        if (r < 0)
                fail_msg("upd_encode(%s): %s", upd_encoding_to_string(enc), strerror(-r));
}

static void decode_ok(const void *body, size_t size, const model_layout *lay, float *delta,
                      upd_info *info) {
        char err[256] = "";
        int r = upd_decode(body, size, lay, MAX_RAW, delta, info, err, sizeof(err));
        if (r < 0)
                fail_msg("upd_decode: %s (%s)", strerror(-r), err);
}

static double l2_of(const float *x, size_t n) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
                s += (double) x[i] * x[i];
        return sqrt(s);
}

/* ---- building containers by hand ----------------------------------------------------- */

typedef struct {
        uint8_t *p;
        size_t n, cap;
} bbuf;

static void b_put(bbuf *b, const void *d, size_t n) {
        if (b->n + n > b->cap) {
                b->cap = MAX(b->cap * 2, b->n + n + 256);
                b->p = realloc(b->p, b->cap);
                assert_non_null(b->p);
        }
        memcpy(b->p + b->n, d, n);
        b->n += n;
}

static void b_u16(bbuf *b, uint16_t v) {
        uint8_t x[2] = { (uint8_t) v, (uint8_t) (v >> 8) };
        b_put(b, x, 2);
}

static void b_u32(bbuf *b, uint32_t v) {
        uint8_t x[4] = { (uint8_t) v, (uint8_t) (v >> 8), (uint8_t) (v >> 16),
                         (uint8_t) (v >> 24) };
        b_put(b, x, 4);
}

static void b_u64(bbuf *b, uint64_t v) {
        b_u32(b, (uint32_t) v);
        b_u32(b, (uint32_t) (v >> 32));
}

static void b_f32(bbuf *b, float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        b_u32(b, u);
}

static void b_i8(bbuf *b, int8_t q) {
        b_put(b, &q, 1);
}

static void put_head(bbuf *b, const char *name, uint32_t rows, uint32_t cols) {
        b_u16(b, (uint16_t) strlen(name));
        b_put(b, name, strlen(name));
        b_u32(b, rows);
        b_u32(b, cols);
}

/* Recognisable values the tests can check after decoding. */
static float default_fp32(size_t i) {
        return 1e-3f * (float) ((int) (i % 7) - 3);
}
static int8_t default_q(size_t i) {
        return (int8_t) ((int) (i % 5) - 2);
}
#define DEFAULT_SCALE 1e-3f

static void put_default_payload(bbuf *b, uint32_t enc, uint32_t rows, uint32_t cols) {
        size_t n = (size_t) rows * cols;

        switch (enc) {
        case UPD_FP32:
                for (size_t i = 0; i < n; i++)
                        b_f32(b, default_fp32(i));
                break;
        case UPD_INT8:
                for (uint32_t r = 0; r < rows; r++)
                        b_f32(b, DEFAULT_SCALE);
                for (size_t i = 0; i < n; i++)
                        b_i8(b, default_q(i));
                break;
        case UPD_TOPK: /* first and last element */
                b_u32(b, 2);
                b_u32(b, 0);
                b_u32(b, (uint32_t) n - 1);
                b_f32(b, 0.5f);
                b_f32(b, -0.25f);
                break;
        default:
                break;
        }
}

/* Writes tensor t (of shape rows x cols) itself; returns true to stop the container there. */
typedef bool (*spoil_fn)(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols);

typedef struct {
        const char *what;
        uint32_t enc;
        const char *magic;   /* NULL: "EDUP" */
        uint32_t format;     /* 0: UPD_FORMAT */
        int n_tensors_delta; /* added to the layout's count in the header */
        int spoil_tensor;    /* -1: none */
        spoil_fn spoil;
        size_t trailing; /* junk bytes after the last tensor */
        int expect;
        const char *reason;
} bad_case;

static void build_raw(bbuf *b, const model_layout *lay, const bad_case *c) {
        b->n = 0;
        b_put(b, c->magic ?: UPD_MAGIC, 4);
        b_u32(b, c->format ?: UPD_FORMAT);
        b_u32(b, c->enc);
        b_u64(b, 77);
        b_u32(b, (uint32_t) ((int) lay->n_views + c->n_tensors_delta));
        for (size_t t = 0; t < lay->n_views; t++) {
                const model_view *v = &lay->views[t];
                uint32_t rows, cols;

                view_dims(v, &rows, &cols);
                if ((int) t == c->spoil_tensor) {
                        if (c->spoil(b, v, rows, cols))
                                return;
                        continue;
                }
                put_head(b, v->name, rows, cols);
                put_default_payload(b, c->enc, rows, cols);
        }
        for (size_t i = 0; i < c->trailing; i++)
                b_put(b, "\0", 1);
}

/* ---- tests: names, format ---------------------------------------------------------------- */

static void test_encoding_strings(void **state) {
        assert_string_equal(upd_encoding_to_string(UPD_FP32), "fp32");
        assert_string_equal(upd_encoding_to_string(UPD_INT8), "int8");
        assert_string_equal(upd_encoding_to_string(UPD_TOPK), "topk");
        assert_null(upd_encoding_to_string(_UPD_ENCODING_MAX));
        assert_null(upd_encoding_to_string((upd_encoding) -1));
        assert_int_equal(upd_encoding_from_string("fp32"), UPD_FP32);
        assert_int_equal(upd_encoding_from_string("int8"), UPD_INT8);
        assert_int_equal(upd_encoding_from_string("topk"), UPD_TOPK);
        assert_int_equal(upd_encoding_from_string("FP32"), -EINVAL);
        assert_int_equal(upd_encoding_from_string("int8 "), -EINVAL);
        assert_int_equal(upd_encoding_from_string(""), -EINVAL);
        assert_int_equal(upd_encoding_from_string(NULL), -EINVAL);
}

/* Containers written by the test's own builder decode to the values it put in: the format is
 * what the header says, not just whatever the encoder writes. */
static void test_builder_containers_decode(void **state) {
        model_layout lay;
        bbuf b = {};

        layout_named("tiny", &lay);
        _cleanup_free_ float *out = alloc_floats(lay.n_params);
        for (uint32_t enc = 0; enc < _UPD_ENCODING_MAX; enc++) {
                bad_case c = { .enc = enc, .spoil_tensor = -1 };
                _cleanup_free_ uint8_t *body = NULL;
                upd_info info;
                size_t size;
                double l2 = 0;

                build_raw(&b, &lay, &c);
                body = zcompress(b.p, b.n, &size);
                /* NaN: everything must be written */
                memset(out, 0xff, lay.n_params * sizeof(float));
                decode_ok(body, size, &lay, out, &info);
                assert_int_equal(info.encoding, enc);
                assert_int_equal(info.base_version, 77);
                assert_int_equal(info.raw_size, b.n);
                for (size_t t = 0; t < lay.n_views; t++) {
                        const model_view *v = &lay.views[t];
                        for (size_t i = 0; i < v->numel; i++) {
                                float want = enc == UPD_FP32 ? default_fp32(i)
                                             : enc == UPD_INT8
                                                     ? (float) default_q(i) * DEFAULT_SCALE
                                             : i == 0            ? 0.5f
                                             : i == v->numel - 1 ? -0.25f
                                                                 : 0.0f;
                                if (out[v->offset + i] != want)
                                        fail_msg("%s tensor %s[%zu] = %g, want %g",
                                                 upd_encoding_to_string(enc), v->name, i,
                                                 (double) out[v->offset + i], (double) want);
                                l2 += (double) want * want;
                        }
                }
                assert_int_equal(info.nonzero, enc == UPD_TOPK ? 2 * lay.n_views : lay.n_params);
                assert_close(info.l2_norm, sqrt(l2), 1e-9 * sqrt(l2));
        }
        free(b.p);
}

/* ---- tests: round trips --------------------------------------------------------------- */

static void test_fp32_roundtrip(void **state) {
        model_layout lay;
        _cleanup_free_ void *body = NULL;
        _cleanup_free_ uint8_t *raw = NULL;
        size_t size, raw_size;
        upd_info info, dinfo;
        bbuf b = {};

        layout_named("tiny", &lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        _cleanup_free_ float *copy = alloc_floats(lay.n_params);
        _cleanup_free_ float *out = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 1);
        delta[5] = -0.0f;
        delta[6] = FLT_MAX;
        delta[7] = FLT_TRUE_MIN;
        memcpy(copy, delta, lay.n_params * sizeof(float));

        encode(UPD_FP32, 12345678901ULL, &lay, delta, 0, NULL, &body, &size, &info);
        assert_memory_equal(delta, copy, lay.n_params * sizeof(float)); /* not modified */
        assert_int_equal(info.encoding, UPD_FP32);
        assert_int_equal(info.base_version, 12345678901ULL);
        assert_int_equal(info.nonzero, lay.n_params);

        /* the raw container is byte for byte what the header describes */
        raw = zdecompress(body, size, &raw_size);
        assert_int_equal(info.raw_size, raw_size);
        b_put(&b, "EDUP", 4);
        b_u32(&b, 1);
        b_u32(&b, 0);
        b_u64(&b, 12345678901ULL);
        b_u32(&b, (uint32_t) lay.n_views);
        for (size_t t = 0; t < lay.n_views; t++) {
                uint32_t rows, cols;
                view_dims(&lay.views[t], &rows, &cols);
                put_head(&b, lay.views[t].name, rows, cols);
                for (size_t i = 0; i < lay.views[t].numel; i++)
                        b_f32(&b, delta[lay.views[t].offset + i]);
        }
        assert_int_equal(b.n, raw_size);
        assert_memory_equal(b.p, raw, raw_size);
        free(b.p);

        decode_ok(body, size, &lay, out, &dinfo);
        assert_memory_equal(out, delta, lay.n_params * sizeof(float)); /* bit exact, -0 too */
        assert_int_equal(dinfo.encoding, UPD_FP32);
        assert_int_equal(dinfo.base_version, 12345678901ULL);
        assert_int_equal(dinfo.raw_size, raw_size);
        assert_int_equal(dinfo.nonzero, lay.n_params);
        assert_close(dinfo.l2_norm, l2_of(delta, lay.n_params), 0);
        assert_close(info.l2_norm, dinfo.l2_norm, 0);
}

/* Checks out = int8(x) row by row against the header's bound, computed here. */
static void check_int8(const model_layout *lay, const float *x, const float *out) {
        for (size_t t = 0; t < lay->n_views; t++) {
                const model_view *v = &lay->views[t];
                uint32_t rows, cols;

                view_dims(v, &rows, &cols);
                for (size_t r = 0; r < rows; r++) {
                        const float *xr = x + v->offset + r * cols,
                                    *yr = out + v->offset + r * cols;
                        double rowmax = 0, scale;

                        for (size_t c = 0; c < cols; c++)
                                rowmax = fmax(rowmax, fabs((double) xr[c]));
                        scale = rowmax / 127;
                        for (size_t c = 0; c < cols; c++) {
                                double e = fabs((double) xr[c] - (double) yr[c]);
                                if (rowmax == 0)
                                        assert_true(yr[c] == 0.0f);
                                /* scale/2, plus float rounding of scale and q*scale */
                                else if (e > scale / 2 * (1 + 1e-5))
                                        fail_msg("%s row %zu col %zu: |%g - %g| > %g", v->name, r,
                                                 c, (double) xr[c], (double) yr[c], scale / 2);
                        }
                }
        }
}

static void test_int8_roundtrip(void **state) {
        model_layout lay;
        upd_info info, dinfo;
        size_t size, size2;

        layout_named("tiny", &lay);
        const model_view *wte = &lay.views[lay.wte], *lnf_b = &lay.views[lay.lnf_b];
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        _cleanup_free_ float *copy = alloc_floats(lay.n_params);
        _cleanup_free_ float *out = alloc_floats(lay.n_params);
        _cleanup_free_ float *res = alloc_floats(lay.n_params);
        _cleanup_free_ float *x = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 2);
        /* zero rows: a 2-D row and a whole 1-D tensor */
        memset(delta + wte->offset + 5 * (size_t) wte->shape[1], 0, wte->shape[1] * sizeof(float));
        memset(delta + lnf_b->offset, 0, lnf_b->numel * sizeof(float));
        delta[wte->offset + 7 * (size_t) wte->shape[1] + 3] = 0.5f; /* an outlier in a row */
        memcpy(copy, delta, lay.n_params * sizeof(float));

        {
                _cleanup_free_ void *body = NULL;
                _cleanup_free_ void *body2 = NULL;

                encode(UPD_INT8, 3, &lay, delta, 0, NULL, &body, &size, &info);
                assert_memory_equal(delta, copy, lay.n_params * sizeof(float));
                assert_int_equal(info.encoding, UPD_INT8);
                assert_int_equal(info.nonzero, lay.n_params);
                decode_ok(body, size, &lay, out, &dinfo);
                assert_int_equal(dinfo.encoding, UPD_INT8);
                assert_int_equal(dinfo.base_version, 3);
                assert_int_equal(dinfo.raw_size, info.raw_size);
                check_int8(&lay, delta, out);
                assert_close(dinfo.l2_norm, l2_of(out, lay.n_params), 0);
                assert_close(info.l2_norm, dinfo.l2_norm, 0);

                /* a zero residual changes nothing in the body and receives the rounding error */
                encode(UPD_INT8, 3, &lay, delta, 0, res, &body2, &size2, NULL);
                assert_int_equal(size2, size);
                assert_memory_equal(body2, body, size);
                for (size_t i = 0; i < lay.n_params; i++)
                        if (res[i] != delta[i] - out[i])
                                fail_msg("residual[%zu] = %g, want %g", i, (double) res[i],
                                         (double) (delta[i] - out[i]));
        }

        /* second round: the residual is fed back into what is quantized */
        {
                _cleanup_free_ void *body = NULL;
                _cleanup_free_ float *res_before = alloc_floats(lay.n_params);

                fill_normal(delta, lay.n_params, 1e-3f, 3);
                memcpy(res_before, res, lay.n_params * sizeof(float));
                for (size_t i = 0; i < lay.n_params; i++)
                        x[i] = delta[i] + res[i];
                encode(UPD_INT8, 4, &lay, delta, 0, res, &body, &size, NULL);
                decode_ok(body, size, &lay, out, NULL);
                check_int8(&lay, x, out);
                for (size_t i = 0; i < lay.n_params; i++)
                        assert_true(res[i] == x[i] - out[i]);
        }
}

typedef struct {
        float mag;
        uint32_t idx;
} mag_idx;

static int cmp_mag_desc(const void *a, const void *b) {
        const mag_idx *x = a, *y = b;
        if (x->mag != y->mag)
                return x->mag > y->mag ? -1 : 1;
        return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static size_t expected_k(size_t n, float fraction) {
        double k = ceil((double) fraction * (double) n);
        return k < 1 ? 1 : k > (double) n ? n : (size_t) k;
}

/* Encodes top-k and checks the selection, the values and the residual against a reference
 * computed here by sorting. */
static void check_topk(const model_layout *lay, const float *delta, float *res, float fraction) {
        size_t n = lay->n_params, k = expected_k(n, fraction), nonzero = 0;
        _cleanup_free_ void *body = NULL;
        _cleanup_free_ float *x = alloc_floats(n);
        _cleanup_free_ float *out = alloc_floats(n);
        _cleanup_free_ mag_idx *ref = calloc(n, sizeof(mag_idx));
        _cleanup_free_ uint8_t *chosen = calloc(n, 1);
        upd_info info, dinfo;
        size_t size;

        assert_non_null(ref);
        assert_non_null(chosen);
        for (size_t i = 0; i < n; i++) {
                x[i] = res ? delta[i] + res[i] : delta[i];
                ref[i] = (mag_idx){ fabsf(x[i]), (uint32_t) i };
        }
        qsort(ref, n, sizeof(*ref), cmp_mag_desc);
        for (size_t j = 0; j < k; j++)
                chosen[ref[j].idx] = 1;

        encode(UPD_TOPK, 9, lay, delta, fraction, res, &body, &size, &info);
        assert_int_equal(info.nonzero, k);
        decode_ok(body, size, lay, out, &dinfo);
        assert_int_equal(dinfo.encoding, UPD_TOPK);
        assert_int_equal(dinfo.nonzero, k);
        for (size_t i = 0; i < n; i++) {
                if (chosen[i] && out[i] != x[i])
                        fail_msg("element %zu (|x| %g) should be sent as %g, got %g", i,
                                 (double) fabsf(x[i]), (double) x[i], (double) out[i]);
                if (!chosen[i] && out[i] != 0)
                        fail_msg("element %zu (|x| %g) sent, k-th largest is %g", i,
                                 (double) fabsf(x[i]), (double) ref[k - 1].mag);
                nonzero += out[i] != 0;
                if (res && res[i] != x[i] - out[i])
                        fail_msg("residual[%zu] = %g, want %g", i, (double) res[i],
                                 (double) (x[i] - out[i]));
        }
        assert_int_equal(nonzero, k); /* no zeros among the inputs */
        assert_close(dinfo.l2_norm, l2_of(out, n), 0);
        assert_close(info.l2_norm, dinfo.l2_norm, 0);
}

static void test_topk_selection(void **state) {
        model_layout lay;

        layout_named("tiny", &lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        _cleanup_free_ float *res = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 4);
        check_topk(&lay, delta, NULL, 0.01f);
        check_topk(&lay, delta, NULL, 0.003f);    /* k = ceil(1337.856) */
        check_topk(&lay, delta, NULL, 1.0f);      /* everything */
        check_topk(&lay, delta, NULL, 1e-9f);     /* k = 1 */
        fill_normal(res, lay.n_params, 3e-3f, 5); /* the residual dominates the choice */
        check_topk(&lay, delta, res, 0.01f);

        /* all magnitudes within 2^-7 of each other: they share their upper 16 bits, so only
         * the low bits decide */
        for (size_t i = 0; i < lay.n_params; i++)
                delta[i] = (i % 3 ? 1.0f : -1.0f) * (1.0f + 1e-3f * fabsf(delta[i]));
        check_topk(&lay, delta, NULL, 0.01f);
        /* few distinct magnitudes: thousands of exact ties at the threshold */
        fill_normal(delta, lay.n_params, 1.0f, 15);
        for (size_t i = 0; i < lay.n_params; i++) {
                float q = roundf(delta[i] * 4) / 4;
                delta[i] = q != 0 ? q : 0.25f;
        }
        check_topk(&lay, delta, NULL, 0.01f);
        check_topk(&lay, delta, NULL, 0.3f);
}

/* Equal magnitudes: the lower flat index wins, across tensor boundaries too. */
static void test_topk_ties(void **state) {
        model_layout lay;
        size_t n, k;

        layout_micro(&lay);
        n = lay.n_params;
        k = expected_k(n, 0.1f);
        _cleanup_free_ float *delta = alloc_floats(n);
        _cleanup_free_ float *out = alloc_floats(n);
        for (size_t i = 0; i < n; i++)
                delta[i] = i % 2 ? -0.5f : 0.5f;
        delta[n - 1] = 2.0f; /* larger ones are taken first wherever they are */
        delta[n / 2] = -1.0f;
        check_topk(&lay, delta, NULL, 0.1f);

        _cleanup_free_ void *body = NULL;
        size_t size;
        encode(UPD_TOPK, 0, &lay, delta, 0.1f, NULL, &body, &size, NULL);
        decode_ok(body, size, &lay, out, NULL);
        assert_true(out[n - 1] == 2.0f && out[n / 2] == -1.0f);
        for (size_t i = 0; i < n - 1; i++)
                if (i != n / 2)
                        assert_true(out[i] == (i < k - 2 ? delta[i] : 0.0f));
}

/* Error feedback: what was not sent is sent later, so the cumulative sent update tracks the
 * cumulative delta, off by exactly the residual. */
static void test_topk_error_feedback(void **state) {
        model_layout lay;
        const int rounds = 30;
        const float fraction = 0.05f;
        double first_rel = 0, last_rel = 0;
        rng_t rng;

        layout_named("tiny", &lay);
        size_t n = lay.n_params;
        _cleanup_free_ float *mean = alloc_floats(n);
        _cleanup_free_ float *delta = alloc_floats(n);
        _cleanup_free_ float *res = alloc_floats(n);
        _cleanup_free_ float *out = alloc_floats(n);
        _cleanup_free_ double *sum_delta = calloc(n, sizeof(double));
        _cleanup_free_ double *sum_sent = calloc(n, sizeof(double));
        assert_non_null(sum_delta);
        assert_non_null(sum_sent);

        /* like gradients: a drift per coordinate plus noise */
        fill_normal(mean, n, 1e-3f, 6);
        rng_seed(&rng, 7);
        for (int round = 0; round < rounds; round++) {
                _cleanup_free_ void *body = NULL;
                float min_sent = INFINITY, max_res = 0;
                double err2 = 0, ref2 = 0, max_abs = 0;
                size_t size;

                for (size_t i = 0; i < n; i++)
                        delta[i] = mean[i] + 1e-3f * rng_normal(&rng);
                encode(UPD_TOPK, (uint64_t) round, &lay, delta, fraction, res, &body, &size, NULL);
                decode_ok(body, size, &lay, out, NULL);
                for (size_t i = 0; i < n; i++) {
                        sum_delta[i] += delta[i];
                        sum_sent[i] += out[i];
                        if (out[i] != 0)
                                min_sent = fminf(min_sent, fabsf(out[i]));
                        max_res = fmaxf(max_res, fabsf(res[i]));
                        max_abs = fmax(max_abs, fabs(sum_delta[i]));
                        err2 += (sum_delta[i] - sum_sent[i]) * (sum_delta[i] - sum_sent[i]);
                        ref2 += sum_delta[i] * sum_delta[i];
                }
                /* nothing left behind is larger than what was sent */
                assert_true(max_res <= min_sent);
                /* sum_sent + residual == sum_delta up to float rounding of the additions */
                for (size_t i = 0; i < n; i++) {
                        double gap = fabs(sum_sent[i] + res[i] - sum_delta[i]);
                        if (gap > 1e-6 * max_abs)
                                fail_msg("round %d element %zu: sent %g + residual %g != %g", round,
                                         i, sum_sent[i], (double) res[i], sum_delta[i]);
                }
                if (round == 4)
                        first_rel = sqrt(err2 / ref2);
                last_rel = sqrt(err2 / ref2);
        }
        /* the residual stays bounded while the sums grow: the relative gap shrinks */
        print_message("top-k %.0f%% error feedback: |sum_delta - sum_sent| / |sum_delta| %.3f "
                      "after 5 rounds, %.3f after %d\n",
                      fraction * 100.0, first_rel, last_rel, rounds);
        assert_true(last_rel < 0.5 * first_rel);
        assert_true(last_rel < 0.35);
}

static void test_compression(void **state) {
        model_layout lay;
        size_t sizes[_UPD_ENCODING_MAX];

        layout_named("tiny", &lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 8);
        for (int enc = 0; enc < _UPD_ENCODING_MAX; enc++) {
                _cleanup_free_ void *body = NULL;
                encode(enc, 1, &lay, delta, 0.01f, NULL, &body, &sizes[enc], NULL);
        }
        print_message("tiny (%zu params), normal(0, 1e-3) delta: fp32 %zu, int8 %zu (%.3f), "
                      "top-k 1%% %zu (%.4f) bytes\n",
                      lay.n_params, sizes[UPD_FP32], sizes[UPD_INT8],
                      (double) sizes[UPD_INT8] / (double) sizes[UPD_FP32], sizes[UPD_TOPK],
                      (double) sizes[UPD_TOPK] / (double) sizes[UPD_FP32]);
        assert_true(sizes[UPD_FP32] > 3 * lay.n_params); /* random mantissas do not compress */
        assert_true((double) sizes[UPD_INT8] < 0.35 * (double) sizes[UPD_FP32]);
        assert_true((double) sizes[UPD_TOPK] < 0.05 * (double) sizes[UPD_FP32]);
}

static void test_encode_errors(void **state) {
        model_layout lay;
        void *body = NULL;
        size_t size = 0;

        layout_micro(&lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        _cleanup_free_ float *res = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1.0f, 9);
        fill_normal(res, lay.n_params, 1.0f, 10);
        _cleanup_free_ float *res_copy = alloc_floats(lay.n_params);
        memcpy(res_copy, res, lay.n_params * sizeof(float));

        assert_int_equal(upd_encode(_UPD_ENCODING_MAX, 0, &lay, delta, 0, NULL, &body, &size, NULL),
                         -EINVAL);
        assert_int_equal(upd_encode(UPD_TOPK, 0, &lay, delta, 0, res, &body, &size, NULL), -EINVAL);
        assert_int_equal(upd_encode(UPD_TOPK, 0, &lay, delta, -0.1f, res, &body, &size, NULL),
                         -EINVAL);
        assert_int_equal(upd_encode(UPD_TOPK, 0, &lay, delta, 1.5f, res, &body, &size, NULL),
                         -EINVAL);
        assert_int_equal(upd_encode(UPD_TOPK, 0, &lay, delta, NAN, res, &body, &size, NULL),
                         -EINVAL);
        /* non-finite input (or sum with the residual) is refused before the residual moves */
        delta[100] = NAN;
        for (int enc = 0; enc < _UPD_ENCODING_MAX; enc++)
                assert_int_equal(upd_encode(enc, 0, &lay, delta, 0.1f, res, &body, &size, NULL),
                                 -EDOM);
        delta[100] = FLT_MAX;
        res[100] = FLT_MAX;
        res_copy[100] = FLT_MAX;
        assert_int_equal(upd_encode(UPD_INT8, 0, &lay, delta, 0, res, &body, &size, NULL), -EDOM);
        assert_memory_equal(res, res_copy, lay.n_params * sizeof(float));
        assert_null(body);
}

/* ---- tests: hostile bodies ------------------------------------------------------------ */

static void expect_fail(const void *body, size_t size, const model_layout *lay, size_t max_raw,
                        const char *what, int expect, const char *reason) {
        _cleanup_free_ float *out = alloc_floats(lay->n_params);
        char err[256];
        int r;

        memset(err, 'x', sizeof(err));
        r = upd_decode(body, size, lay, max_raw, out, NULL, err, sizeof(err));
        if (r != expect)
                fail_msg("%s: expected %s, got %s (\"%s\")", what, strerror(-expect),
                         r < 0 ? strerror(-r) : "success", r < 0 ? err : "");
        if (!strstr(err, reason) || strchr(err, '\n') || strlen(err) == 0)
                fail_msg("%s: reason \"%s\" does not say \"%s\"", what, err, reason);
}

#define QKV 4 /* h.0.attn.qkv.weight, 384x128 in tiny */

static bool spoil_name(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_head(b, "h.0.attn.qkv.weighX", rows, cols);
        put_default_payload(b, UPD_FP32, rows, cols);
        return false;
}

static bool spoil_name_binary(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        static const char name[] = "h.0\n\x01'evil'\xff";
        b_u16(b, sizeof(name) - 1);
        b_put(b, name, sizeof(name) - 1);
        b_u32(b, rows);
        b_u32(b, cols);
        put_default_payload(b, UPD_FP32, rows, cols);
        return false;
}

static bool spoil_shape(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_head(b, v->name, 1, rows * cols);
        put_default_payload(b, UPD_FP32, 1, rows * cols);
        return false;
}

static bool spoil_name_len(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        b_u16(b, 60000);
        b_put(b, v->name, strlen(v->name));
        return true;
}

static bool spoil_truncated(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_head(b, v->name, rows, cols);
        for (size_t i = 0; i < (size_t) rows * cols / 2; i++)
                b_f32(b, 0);
        return true;
}

static bool spoil_nan(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_head(b, v->name, rows, cols);
        for (size_t i = 0; i < (size_t) rows * cols; i++)
                b_f32(b, i == 1234 ? NAN : 0.0f);
        return false;
}

static bool spoil_neg_inf(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_head(b, v->name, rows, cols);
        for (size_t i = 0; i < (size_t) rows * cols; i++)
                b_f32(b, i == 7 ? -INFINITY : 0.0f);
        return false;
}

static void put_int8(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols, uint32_t bad_row,
                     float bad_scale, int8_t bad_q) {
        put_head(b, v->name, rows, cols);
        for (uint32_t r = 0; r < rows; r++)
                b_f32(b, r == bad_row ? bad_scale : 1e-3f);
        for (size_t i = 0; i < (size_t) rows * cols; i++)
                b_i8(b, i == (size_t) bad_row * cols ? bad_q : 1);
}

static bool spoil_inf_scale(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_int8(b, v, rows, cols, 2, INFINITY, 1);
        return false;
}

static bool spoil_nan_scale(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_int8(b, v, rows, cols, 2, NAN, 1);
        return false;
}

static bool spoil_neg_scale(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_int8(b, v, rows, cols, 2, -1e-3f, 1);
        return false;
}

static bool spoil_overflow_scale(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_int8(b, v, rows, cols, 2, FLT_MAX, 127);
        return false;
}

static bool spoil_q_min(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        put_int8(b, v, rows, cols, 2, 1e-3f, INT8_MIN);
        return false;
}

static void put_topk(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols, uint32_t k,
                     const uint32_t *idx, size_t n_idx, const float *val, size_t n_val) {
        put_head(b, v->name, rows, cols);
        b_u32(b, k);
        for (size_t i = 0; i < n_idx; i++)
                b_u32(b, idx[i]);
        for (size_t i = 0; i < n_val; i++)
                b_f32(b, val[i]);
}

static bool spoil_k_big(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 0, 1 };
        float val[] = { 1, 1 };
        put_topk(b, v, rows, cols, rows * cols + 1, idx, 2, val, 2);
        return false;
}

static bool spoil_k_huge(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 0, 1 };
        float val[] = { 1, 1 };
        put_topk(b, v, rows, cols, UINT32_MAX, idx, 2, val, 2);
        return false;
}

static bool spoil_k_short(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 0, 1, 2 };
        float val[] = { 1, 1 };
        put_topk(b, v, rows, cols, 3, idx, 3, val, 2);
        return true;
}

static bool spoil_not_ascending(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 5, 9, 9 };
        float val[] = { 1, 2, 3 };
        put_topk(b, v, rows, cols, 3, idx, 3, val, 3);
        return false;
}

static bool spoil_descending(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 5, 9, 8 };
        float val[] = { 1, 2, 3 };
        put_topk(b, v, rows, cols, 3, idx, 3, val, 3);
        return false;
}

static bool spoil_index_range(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 0, rows * cols };
        float val[] = { 1, 2 };
        put_topk(b, v, rows, cols, 2, idx, 2, val, 2);
        return false;
}

static bool spoil_topk_nan(bbuf *b, const model_view *v, uint32_t rows, uint32_t cols) {
        uint32_t idx[] = { 0, 17 };
        float val[] = { 1, NAN };
        put_topk(b, v, rows, cols, 2, idx, 2, val, 2);
        return false;
}

static void test_hostile_containers(void **state) {
        model_layout lay;
        bbuf b = {};
        const bad_case cases[] = {
                { "bad magic", UPD_FP32, .magic = "EDUQ", .spoil_tensor = -1, .expect = -EBADMSG,
                  .reason = "bad magic" },
                { "unknown format", UPD_FP32, .format = 2, .spoil_tensor = -1, .expect = -EBADMSG,
                  .reason = "unknown format 2" },
                { "unknown encoding", 3, .spoil_tensor = -1, .expect = -EBADMSG,
                  .reason = "unknown encoding 3" },
                { "unknown encoding (high)", 0x80000000u, .spoil_tensor = -1, .expect = -EBADMSG,
                  .reason = "unknown encoding 2147483648" },
                { "one tensor too few", UPD_FP32, .n_tensors_delta = -1, .spoil_tensor = -1,
                  .expect = -EPROTO, .reason = "27 tensors, expected 28" },
                { "one tensor too many", UPD_INT8, .n_tensors_delta = 1, .spoil_tensor = -1,
                  .expect = -EPROTO, .reason = "29 tensors, expected 28" },
                { "wrong name", UPD_FP32, .spoil_tensor = QKV, .spoil = spoil_name,
                  .expect = -EPROTO,
                  .reason =
                          "tensor 4: name 'h.0.attn.qkv.weighX', expected 'h.0.attn.qkv.weight'" },
                { "binary name", UPD_FP32, .spoil_tensor = QKV, .spoil = spoil_name_binary,
                  .expect = -EPROTO, .reason = "name 'h.0\?\?\?evil\?\?', expected" },
                { "wrong shape", UPD_FP32, .spoil_tensor = QKV, .spoil = spoil_shape,
                  .expect = -EPROTO,
                  .reason = "tensor 4 'h.0.attn.qkv.weight': shape 1x49152, expected 384x128" },
                { "name_len beyond the body", UPD_FP32, .spoil_tensor = QKV,
                  .spoil = spoil_name_len, .expect = -EBADMSG,
                  .reason = "tensor 4: name length 60000 beyond the body" },
                { "truncated tensor", UPD_FP32, .spoil_tensor = QKV, .spoil = spoil_truncated,
                  .expect = -EBADMSG, .reason = "tensor 4 'h.0.attn.qkv.weight': truncated" },
                { "NaN value", UPD_FP32, .spoil_tensor = QKV, .spoil = spoil_nan, .expect = -EDOM,
                  .reason = "tensor 4 'h.0.attn.qkv.weight': element 1234 is NaN" },
                { "-inf value", UPD_FP32, .spoil_tensor = 0, .spoil = spoil_neg_inf,
                  .expect = -EDOM, .reason = "tensor 0 'wte.weight': element 7 is -inf" },
                { "inf int8 scale", UPD_INT8, .spoil_tensor = QKV, .spoil = spoil_inf_scale,
                  .expect = -EDOM, .reason = "tensor 4 'h.0.attn.qkv.weight': row 2 scale is inf" },
                { "NaN int8 scale", UPD_INT8, .spoil_tensor = QKV, .spoil = spoil_nan_scale,
                  .expect = -EDOM, .reason = "row 2 scale is NaN" },
                { "negative int8 scale", UPD_INT8, .spoil_tensor = QKV, .spoil = spoil_neg_scale,
                  .expect = -EBADMSG, .reason = "row 2 has a negative scale" },
                { "int8 scale overflowing", UPD_INT8, .spoil_tensor = QKV,
                  .spoil = spoil_overflow_scale, .expect = -EDOM, .reason = "row 2: scale" },
                { "int8 -128", UPD_INT8, .spoil_tensor = QKV, .spoil = spoil_q_min,
                  .expect = -EBADMSG, .reason = "element 256 is -128" },
                { "k > rows*cols", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_k_big,
                  .expect = -EBADMSG, .reason = "k 49153 > 49152 elements" },
                { "k = 2^32-1", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_k_huge,
                  .expect = -EBADMSG, .reason = "k 4294967295 > 49152" },
                { "k beyond the body", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_k_short,
                  .expect = -EBADMSG, .reason = "truncated: 3 indices" },
                { "indices equal", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_not_ascending,
                  .expect = -EBADMSG, .reason = "indices not ascending at entry 2 (9 after 9)" },
                { "indices descending", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_descending,
                  .expect = -EBADMSG, .reason = "indices not ascending at entry 2 (8 after 9)" },
                { "index out of range", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_index_range,
                  .expect = -EBADMSG, .reason = "index 49152 out of range" },
                { "NaN top-k value", UPD_TOPK, .spoil_tensor = QKV, .spoil = spoil_topk_nan,
                  .expect = -EDOM, .reason = "value 1 (index 17) is NaN" },
                { "trailing bytes", UPD_TOPK, .spoil_tensor = -1, .trailing = 3, .expect = -EBADMSG,
                  .reason = "3 trailing bytes after the last tensor" },
                { "trailing byte (fp32)", UPD_FP32, .spoil_tensor = -1, .trailing = 1,
                  .expect = -EBADMSG, .reason = "1 trailing bytes" },
        };

        layout_named("tiny", &lay);
        assert_int_equal(lay.n_views, 28);
        assert_string_equal(lay.views[QKV].name, "h.0.attn.qkv.weight");
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                _cleanup_free_ uint8_t *body = NULL;
                size_t size;

                build_raw(&b, &lay, &cases[i]);
                body = zcompress(b.p, b.n, &size);
                expect_fail(body, size, &lay, MAX_RAW, cases[i].what, cases[i].expect,
                            cases[i].reason);
        }

        /* headers cut short */
        static const char header[] = "EDUP\1\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        static const size_t short_lens[] = { 0, 4, 16, 19 };
        for (size_t i = 0; i < ARRAY_SIZE(short_lens); i++) {
                _cleanup_free_ uint8_t *body = NULL;
                size_t size;

                body = zcompress(header, short_lens[i], &size);
                expect_fail(body, size, &lay, MAX_RAW, "short header", -EBADMSG,
                            "truncated header");
        }
        {
                bad_case c = { .enc = UPD_FP32, .spoil_tensor = -1 };
                _cleanup_free_ uint8_t *body = NULL;
                size_t size;

                build_raw(&b, &lay, &c);
                body = zcompress(b.p, 22, &size);
                expect_fail(body, size, &lay, MAX_RAW, "no tensor count", -EBADMSG,
                            "no tensor count");
        }

        /* the same container for another model: names/shapes are wrong for it */
        {
                bad_case c = { .enc = UPD_INT8, .spoil_tensor = -1 };
                model_layout small;
                _cleanup_free_ uint8_t *body = NULL;
                size_t size;

                layout_named("small", &small);
                build_raw(&b, &lay, &c);
                body = zcompress(b.p, b.n, &size);
                expect_fail(body, size, &small, MAX_RAW, "other model", -EPROTO,
                            "28 tensors, expected 52");
        }
        free(b.p);
}

static void test_hostile_zstd(void **state) {
        model_layout lay;
        _cleanup_free_ void *body = NULL;
        _cleanup_free_ uint8_t *garbage = malloc(4096), *two = NULL;
        _cleanup_free_ uint8_t *zgarbage = NULL;
        upd_info info;
        size_t size, zsize;
        rng_t r;

        layout_named("tiny", &lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 11);
        encode(UPD_INT8, 5, &lay, delta, 0, NULL, &body, &size, &info);

        expect_fail(body, 0, &lay, MAX_RAW, "empty", -EBADMSG, "empty body");
        expect_fail(body, size - 10, &lay, MAX_RAW, "truncated zstd", -EBADMSG,
                    "zstd frame truncated or corrupt");
        expect_fail(body, size / 2, &lay, MAX_RAW, "half the zstd", -EBADMSG,
                    "zstd frame truncated or corrupt");
        expect_fail(body, 3, &lay, MAX_RAW, "3 bytes", -EBADMSG, "not a zstd frame");

        assert_non_null(garbage);
        rng_seed(&r, 12);
        for (size_t i = 0; i < 4096; i++)
                garbage[i] = (uint8_t) rng_u64(&r);
        expect_fail(garbage, 4096, &lay, MAX_RAW, "garbage", -EBADMSG, "not a zstd frame");
        zgarbage = zcompress(garbage, 4096, &zsize);
        expect_fail(zgarbage, zsize, &lay, MAX_RAW, "zstd of garbage", -EBADMSG, "bad magic");

        /* a valid frame followed by another one, or by junk */
        two = malloc(size + zsize);
        assert_non_null(two);
        memcpy(two, body, size);
        memcpy(two + size, zgarbage, zsize);
        expect_fail(two, size + zsize, &lay, MAX_RAW, "two frames", -EBADMSG,
                    "bytes after the zstd frame");
        memcpy(two + size, "junk", 4);
        expect_fail(two, size + 4, &lay, MAX_RAW, "junk after", -EBADMSG,
                    "4 bytes after the zstd frame");

        /* the first block marked with the reserved block type (zstd frame format: after the
         * frame header descriptor, an optional window byte, dictionary id and content size) */
        {
                uint8_t fhd = ((uint8_t *) body)[4];
                static const size_t fcs_len[4] = { 0, 2, 4, 8 }, dict_len[4] = { 0, 1, 2, 4 };
                bool single = fhd >> 5 & 1;
                size_t at = 5 + !single + dict_len[fhd & 3] +
                            (fhd >> 6 == 0 ? single : fcs_len[fhd >> 6]);

                memcpy(two, body, size);
                two[at] |= 3 << 1;
                expect_fail(two, size, &lay, MAX_RAW, "reserved block type", -EBADMSG,
                            "zstd frame truncated or corrupt");
        }

        /* over the caller's limit: refused before allocating */
        expect_fail(body, size, &lay, info.raw_size - 1, "max_raw", -EFBIG, "over the limit");
        {
                char err[256] = "";
                _cleanup_free_ float *out = alloc_floats(lay.n_params);
                assert_int_equal(
                        upd_decode(body, size, &lay, info.raw_size, out, NULL, err, sizeof(err)),
                        0);
        }

        /* a frame without a content size */
        {
                ZSTD_CCtx *cctx = ZSTD_createCCtx();
                _cleanup_free_ uint8_t *raw = NULL, *nosize = NULL;
                size_t raw_size, n;

                raw = zdecompress(body, size, &raw_size);
                nosize = malloc(ZSTD_compressBound(raw_size));
                assert_non_null(nosize);
                assert_non_null(cctx);
                assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
                n = ZSTD_compress2(cctx, nosize, ZSTD_compressBound(raw_size), raw, raw_size);
                assert_false(ZSTD_isError(n));
                ZSTD_freeCCtx(cctx);
                assert_true(ZSTD_getFrameContentSize(nosize, n) == ZSTD_CONTENTSIZE_UNKNOWN);
                expect_fail(nosize, n, &lay, MAX_RAW, "no content size", -EBADMSG,
                            "without a content size");
        }

        /* a bomb: 128 MiB of zeros in a few KiB */
        {
                size_t big = (size_t) 128 << 20, n;
                _cleanup_free_ uint8_t *zeros = calloc(big, 1);
                _cleanup_free_ uint8_t *bomb = NULL;

                assert_non_null(zeros);
                memcpy(zeros, "EDUP", 4);
                bomb = zcompress(zeros, big, &n);
                assert_true(n < 64 << 10);
                expect_fail(bomb, n, &lay, MAX_RAW, "bomb", -EFBIG, "over the limit 67108864");
                /* with no caller limit, the largest valid body for the model still bounds it */
                expect_fail(bomb, n, &lay, SIZE_MAX, "bomb, no limit", -EBADMSG,
                            "larger than any update for this model");
        }
}

static void test_peek(void **state) {
        model_layout lay;
        upd_info info;

        layout_named("tiny", &lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-3f, 13);
        for (int enc = 0; enc < _UPD_ENCODING_MAX; enc++) {
                _cleanup_free_ void *body = NULL;
                upd_info einfo;
                size_t size;

                encode(enc, 1000 + (uint64_t) enc, &lay, delta, 0.01f, NULL, &body, &size, &einfo);
                memset(&info, 0xaa, sizeof(info));
                assert_int_equal(upd_peek(body, size, &info), 0);
                assert_int_equal(info.encoding, enc);
                assert_int_equal(info.base_version, 1000 + enc);
                assert_int_equal(info.raw_size, einfo.raw_size);
                /* only the first block (<= 128 KiB) is needed: a cut-off body still peeks */
                assert_int_equal(upd_peek(body, MIN(size, (size_t) 132 << 10), &info), 0);
                assert_int_equal(info.base_version, 1000 + enc);
                assert_int_equal(upd_peek(body, 3, &info), -EBADMSG);
                assert_int_equal(upd_peek(body, 0, &info), -EBADMSG);
        }

        /* raw headers built here */
        bbuf b = {};
        static const struct {
                const char *magic;
                uint32_t format, enc;
                int expect;
        } heads[] = {
                { "EDUP", 1, UPD_TOPK, 0 },
                { "EDUQ", 1, UPD_TOPK, -EBADMSG },
                { "EDUP", 0, UPD_TOPK, -EBADMSG },
                { "EDUP", 1, 3, -EBADMSG },
        };
        for (size_t i = 0; i < ARRAY_SIZE(heads); i++) {
                _cleanup_free_ uint8_t *body = NULL;
                size_t size;

                b.n = 0;
                b_put(&b, heads[i].magic, 4);
                b_u32(&b, heads[i].format);
                b_u32(&b, heads[i].enc);
                b_u64(&b, 0x0102030405060708ULL);
                body = zcompress(b.p, b.n, &size);
                assert_int_equal(upd_peek(body, size, &info), heads[i].expect);
                if (heads[i].expect == 0) {
                        assert_int_equal(info.encoding, UPD_TOPK);
                        assert_int_equal(info.base_version, 0x0102030405060708ULL);
                }
                /* one byte short of the header */
                free(body);
                body = zcompress(b.p, b.n - 1, &size);
                assert_int_equal(upd_peek(body, size, &info), -EBADMSG);
        }
        free(b.p);

        uint8_t garbage[64];
        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (uint8_t) (i * 37 + 11);
        assert_int_equal(upd_peek(garbage, sizeof(garbage), &info), -EBADMSG);
        assert_int_equal(upd_peek(NULL, 0, &info), -EBADMSG);
}

/* ---- fuzz ------------------------------------------------------------------------------- */

static void test_fuzz(void **state) {
        model_layout lay;
        uint8_t *raws[_UPD_ENCODING_MAX];
        size_t raw_sizes[_UPD_ENCODING_MAX];
        size_t results[5] = {}; /* ok, EBADMSG, EPROTO, EDOM, EFBIG */
        bbuf m = {};
        rng_t r;

        layout_micro(&lay);
        _cleanup_free_ float *delta = alloc_floats(lay.n_params);
        _cleanup_free_ float *out = alloc_floats(lay.n_params);
        fill_normal(delta, lay.n_params, 1e-2f, 14);
        for (int enc = 0; enc < _UPD_ENCODING_MAX; enc++) {
                _cleanup_free_ void *body = NULL;
                size_t size;

                encode(enc, 42, &lay, delta, 0.05f, NULL, &body, &size, NULL);
                raws[enc] = zdecompress(body, size, &raw_sizes[enc]);
        }

        rng_seed(&r, 2024);
        for (int it = 0; it < 3000; it++) {
                int enc = it % _UPD_ENCODING_MAX;
                size_t n = raw_sizes[enc], size;
                int muts = 1 + (int) rng_below(&r, 4);
                _cleanup_free_ uint8_t *body = NULL;
                char err[256] = "";
                int rc;

                m.n = 0;
                b_put(&m, raws[enc], n);
                for (int j = 0; j < muts; j++) {
                        /* half the time near the start, where the structure is dense */
                        size_t pos = rng_below(&r, 2) ? rng_below(&r, MIN(m.n, (size_t) 400))
                                                      : rng_below(&r, m.n);
                        switch (rng_below(&r, 6)) {
                        case 0:
                                m.p[pos] ^= (uint8_t) (1u << rng_below(&r, 8));
                                break;
                        case 1:
                                m.p[pos] = (uint8_t) rng_u64(&r);
                                break;
                        case 2:
                                m.p[pos] = rng_below(&r, 2) ? 0xff : 0x00;
                                break;
                        case 3: /* a u32 set to an edge value */
                                if (pos + 4 <= m.n) {
                                        static const uint32_t edges[] = { 0,          1,
                                                                          0x7fffffff, 0x80000000,
                                                                          0xffffffff, 0x7fc00000 };
                                        uint32_t v = edges[rng_below(&r, ARRAY_SIZE(edges))];
                                        memcpy(m.p + pos, &v, 4);
                                }
                                break;
                        case 4:
                                m.n = pos;
                                break;
                        default:
                                b_put(&m, "\x01\x02\x03", 1 + rng_below(&r, 3));
                                break;
                        }
                        if (m.n == 0)
                                break;
                }
                body = zcompress(m.p ?: (uint8_t *) "", m.n, &size);
                /* sometimes damage the compressed stream instead */
                if (it % 7 == 0 && size > 0)
                        body[rng_below(&r, size)] ^= (uint8_t) (1 + rng_below(&r, 255));

                rc = upd_decode(body, size, &lay, 1 << 20, out, NULL, err, sizeof(err));
                switch (rc) {
                case 0:
                        results[0]++;
                        for (size_t i = 0; i < lay.n_params; i++)
                                assert_true(isfinite(out[i]));
                        break;
                case -EBADMSG:
                        results[1]++;
                        break;
                case -EPROTO:
                        results[2]++;
                        break;
                case -EDOM:
                        results[3]++;
                        break;
                case -EFBIG:
                        results[4]++;
                        break;
                default:
                        fail_msg("iteration %d: unexpected %d (%s)", it, rc, err);
                }
                if (rc < 0 && (strlen(err) == 0 || strchr(err, '\n')))
                        fail_msg("iteration %d: bad reason \"%s\"", it, err);
        }
        print_message("fuzz: %zu ok, %zu EBADMSG, %zu EPROTO, %zu EDOM, %zu EFBIG\n", results[0],
                      results[1], results[2], results[3], results[4]);
        assert_true(results[0] > 0 && results[1] > 0 && results[2] > 0 && results[3] > 0);
        for (int enc = 0; enc < _UPD_ENCODING_MAX; enc++)
                free(raws[enc]);
        free(m.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_encoding_strings),
                cmocka_unit_test(test_builder_containers_decode),
                cmocka_unit_test(test_fp32_roundtrip),
                cmocka_unit_test(test_int8_roundtrip),
                cmocka_unit_test(test_topk_selection),
                cmocka_unit_test(test_topk_ties),
                cmocka_unit_test(test_topk_error_feedback),
                cmocka_unit_test(test_compression),
                cmocka_unit_test(test_encode_errors),
                cmocka_unit_test(test_hostile_containers),
                cmocka_unit_test(test_hostile_zstd),
                cmocka_unit_test(test_peek),
                cmocka_unit_test(test_fuzz),
        };
        return test_run_group("test-codec", tests, NULL, NULL);
}
