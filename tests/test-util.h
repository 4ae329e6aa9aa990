/* SPDX-License-Identifier: MIT */
#pragma once

/* Helpers shared by the tests: deterministic parameters that tests/gen_fixtures.py generates
 * the same way, error measures for comparing float buffers, and where the fixtures are. */

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ---- parameters: "splitmix20-v1" (tests/gen_fixtures.py documents the same formula) ---- */

/* k = top 20 bits of splitmix64 with state = i (stateless: one value per flat index). */
static inline uint32_t test_splitmix20(uint64_t i) {
        uint64_t z = i + 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z = z ^ (z >> 31);
        return (uint32_t) (z >> 44);
}

static inline bool test_str_endswith(const char *s, const char *suffix) {
        size_t n = strlen(s), k = strlen(suffix);
        return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Scale and offset of a view: 2-D tensors (embeddings, matrices) 2^-5 around 0; LayerNorm
 * weights (the only 1-D ".weight" views) 2^-3 around 1; biases 2^-6 around 0. */
static inline void test_splitmix20_class(const model_view *v, float *ret_scale, float *ret_offset) {
        if (v->ndim == 2) {
                *ret_scale = 0x1p-5f;
                *ret_offset = 0.0f;
        } else if (test_str_endswith(v->name, ".weight")) {
                *ret_scale = 0x1p-3f;
                *ret_offset = 1.0f;
        } else {
                *ret_scale = 0x1p-6f;
                *ret_offset = 0.0f;
        }
}

/* value = offset + (k - 2^19) * scale / 2^19: every step is exact in float, so C and numpy
 * produce bit-identical buffers. */
static inline float test_splitmix20_value(uint64_t i, float scale, float offset) {
        int32_t k = (int32_t) test_splitmix20(i) - 524288;
        return offset + (float) k * (scale * 0x1p-19f);
}

/* Fills every view of the buffer by flat index (the layout decides which class each index is). */
static inline void test_fill_params_splitmix20(const model_layout *lay, float *params) {
        for (size_t vi = 0; vi < lay->n_views; vi++) {
                const model_view *v = &lay->views[vi];
                float scale, offset;
                test_splitmix20_class(v, &scale, &offset);
                for (size_t j = 0; j < v->numel; j++)
                        params[v->offset + j] = test_splitmix20_value(v->offset + j, scale, offset);
        }
}

/* ---- comparing buffers ---- */

typedef struct {
        double max_rel;  /* max_i |got_i - want_i| / max(|want_i|, floor); INFINITY on NaN/Inf */
        double max_abs;  /* max_i |got_i - want_i| */
        size_t worst;    /* index of max_rel */
        float got, want; /* at worst */
        double floor;
} test_err;

static inline double test_max_abs(const float *x, size_t n) {
        double m = 0.0;
        for (size_t i = 0; i < n; i++)
                if (fabs((double) x[i]) > m)
                        m = fabs((double) x[i]);
        return m;
}

static inline void test_err_add(test_err *e, size_t i, float got, float want) {
        double d = fabs((double) got - (double) want);
        if (isnan(d))
                d = INFINITY;
        double den = fmax(fabs((double) want), e->floor);
        double rel = den > 0 ? d / den : (d > 0 ? INFINITY : 0.0);
        if (d > e->max_abs)
                e->max_abs = d;
        if (rel > e->max_rel) {
                e->max_rel = rel;
                e->worst = i;
                e->got = got;
                e->want = want;
        }
}

/* Relative error with a floor: near-zero reference values are compared with an absolute
 * tolerance tol * floor instead of a relative one. NaN or infinite got values count as
 * infinitely wrong. */
static inline test_err test_compare(const float *got, const float *want, size_t n,
                                    double rel_floor) {
        test_err e = { .floor = rel_floor };
        if (n > 0) {
                e.got = got[0];
                e.want = want[0];
        }
        for (size_t i = 0; i < n; i++)
                test_err_add(&e, i, got[i], want[i]);
        return e;
}

/* Same for a gathered sample: got[idx[j]] against want[j]; worst is j. */
static inline test_err test_compare_at(const float *got, const int32_t *idx, const float *want,
                                       size_t n, double rel_floor) {
        test_err e = { .floor = rel_floor };
        if (n > 0) {
                e.got = got[idx[0]];
                e.want = want[0];
        }
        for (size_t j = 0; j < n; j++)
                test_err_add(&e, j, got[idx[j]], want[j]);
        return e;
}

/* Plain relative error of one scalar (floor 0). */
static inline double test_rel(double got, double want) {
        double d = fabs(got - want);
        if (!isfinite(d))
                return INFINITY;
        return want != 0 ? d / fabs(want) : (d > 0 ? INFINITY : 0.0);
}

/* Name of the view holding flat index i, or "?". */
static inline const char *test_view_name_at(const model_layout *lay, size_t i) {
        for (size_t vi = 0; vi < lay->n_views; vi++) {
                const model_view *v = &lay->views[vi];
                if (i >= v->offset && i < v->offset + v->numel)
                        return v->name;
        }
        return "?";
}

/* ---- fixtures ---- */

/* Directory of the committed fixtures: $EDGED_FIXTURES, else "tests/fixtures" (the tests run
 * from the repository root). */
static inline const char *test_fixtures_dir(void) {
        const char *d = getenv("EDGED_FIXTURES");
        return d && *d ? d : "tests/fixtures";
}

/* Writes "<fixtures dir>/<name>" into buf; returns false if it does not fit. */
static inline bool test_fixture_path(const char *name, char *buf, size_t size) {
        int r = snprintf(buf, size, "%s/%s", test_fixtures_dir(), name);
        return r > 0 && (size_t) r < size;
}
