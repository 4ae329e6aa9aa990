/* SPDX-License-Identifier: MIT */
#include "merge.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

double agg_staleness_factor(uint64_t staleness) {
        return 1.0 / sqrt(1.0 + (double) staleness);
}

int agg_weights(const uint64_t *tokens, const uint64_t *staleness, size_t k, double *ret_w) {
        double sum = 0, total = 0;

        for (size_t i = 0; i < k; i++) {
                ret_w[i] = (double) tokens[i] * agg_staleness_factor(staleness[i]);
                sum += ret_w[i];
                total += (double) tokens[i];
        }
        if (!(sum > 0))
                return -EINVAL;
        for (size_t i = 0; i < k; i++)
                ret_w[i] /= total;
        return 0;
}

typedef struct {
        float v;
        double w;
} wval;

static int cmp_wval(const void *a, const void *b) {
        float x = ((const wval *) a)->v, y = ((const wval *) b)->v;
        return (x > y) - (x < y);
}

int agg_aggregate(const float *const *deltas, const double *w, size_t k, size_t n, double trim,
                  float *out) {
        size_t cut = trim > 0 ? (size_t) floor(trim * (double) k) : 0;

        if (k == 0 || 2 * cut >= k)
                return -EINVAL;
        if (cut == 0) {
                for (size_t j = 0; j < n; j++) {
                        double acc = 0;
                        for (size_t i = 0; i < k; i++)
                                acc += w[i] * (double) deltas[i][j];
                        out[j] = (float) acc;
                }
                return 0;
        }
        wval *buf = malloc(k * sizeof(*buf));
        if (!buf)
                return -ENOMEM;
        for (size_t j = 0; j < n; j++) {
                double acc = 0, ws = 0;
                for (size_t i = 0; i < k; i++)
                        buf[i] = (wval){ deltas[i][j], w[i] };
                qsort(buf, k, sizeof(*buf), cmp_wval);
                for (size_t i = cut; i < k - cut; i++) {
                        acc += buf[i].w * (double) buf[i].v;
                        ws += buf[i].w;
                }
                out[j] = ws > 0 ? (float) (acc / ws) : 0.0f;
        }
        free(buf);
        return 0;
}

void agg_fedavg(float *x, const float *delta, size_t n, float lr) {
        for (size_t j = 0; j < n; j++)
                x[j] += lr * delta[j];
}

void agg_fedadam(float *x, float *m, float *v, const float *delta, size_t n, float lr, float eps) {
        for (size_t j = 0; j < n; j++) {
                float d = delta[j];
                m[j] = AGG_ADAM_B1 * m[j] + (1.0f - AGG_ADAM_B1) * d;
                v[j] = AGG_ADAM_B2 * v[j] + (1.0f - AGG_ADAM_B2) * d * d;
                x[j] += lr * m[j] / (sqrtf(v[j]) + eps);
        }
}

void agg_nesterov(float *x, float *m, float *acc, uint32_t *count, const float *g, size_t n,
                  const agg_nesterov_params *p) {
        uint32_t period = p->period > 0 ? p->period : 1;
        float step = p->lr / (float) period;

        for (size_t j = 0; j < n; j++) {
                x[j] += step * g[j];
                acc[j] += g[j];
        }
        if (++*count < period)
                return;
        for (size_t j = 0; j < n; j++) {
                m[j] = p->mu * m[j] + acc[j] / (float) period;
                x[j] += p->lr * p->mu * m[j];
                acc[j] = 0;
        }
        *count = 0;
}

double agg_l2_norm(const float *x, size_t n) {
        double s = 0;
        for (size_t j = 0; j < n; j++)
                s += (double) x[j] * (double) x[j];
        return sqrt(s);
}
