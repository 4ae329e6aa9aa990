/* SPDX-License-Identifier: MIT */
#pragma once

/* FedBuff arithmetic (docs/federation-protocol.md, "Aggregation"), pure: staleness
 * weighting, the weighted or trimmed mean of K deltas, and the server optimizers. */

#include <stddef.h>
#include <stdint.h>

#define AGG_ADAM_B1 0.9f
#define AGG_ADAM_B2 0.99f
#define AGG_ADAM_EPS 1e-3f

/* s(tau) = 1/sqrt(1 + tau) */
double agg_staleness_factor(uint64_t staleness);
/* w_i = tokens_i * s(staleness_i), normalised to sum 1. -EINVAL when all are 0. */
int agg_weights(const uint64_t *tokens, const uint64_t *staleness, size_t k, double *ret_w);

/* out[j] = sum_i w_i * deltas[i][j] (trim == 0), or the coordinate-wise trimmed mean: per
 * coordinate, the floor(trim * k) smallest and largest values are left out and the rest
 * averaged with their weights renormalised. */
int agg_aggregate(const float *const *deltas, const double *w, size_t k, size_t n, double trim,
                  float *out);

/* x += lr * delta */
void agg_fedavg(float *x, const float *delta, size_t n, float lr);
/* m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2; x += lr m / (sqrt(v) + eps). The protocol
 * writes the moments of -delta with x -= ...: the same step. */
void agg_fedadam(float *x, float *m, float *v, const float *delta, size_t n, float lr);

/* L2 norm, accumulated in double. */
double agg_l2_norm(const float *x, size_t n);
