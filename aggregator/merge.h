/* SPDX-License-Identifier: MIT */
#pragma once

/* FedBuff arithmetic (docs/federation-protocol.md, "Aggregation"), pure: staleness
 * weighting, the weighted or trimmed mean of K deltas, and the server optimizers. */

#include <stddef.h>
#include <stdint.h>

#define AGG_ADAM_B1 0.9f
#define AGG_ADAM_B2 0.99f
#define AGG_ADAM_EPS_DEFAULT 1e-3f

/* s(tau) = 1/sqrt(1 + tau) */
double agg_staleness_factor(uint64_t staleness);
/* FedBuff as published (Nguyen et al. 2022, Algorithm 1): w_i = tokens_i * s(staleness_i) /
 * sum_j tokens_j. Only the token shares are normalised: a stale update counts for less and a
 * buffer of stale updates moves the model less (even with K = 1). -EINVAL when all are 0. */
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
void agg_fedadam(float *x, float *m, float *v, const float *delta, size_t n, float lr, float eps);

/* Delayed Nesterov (Liu et al. 2024, arXiv:2401.09135), on the merged delta g (a descent
 * direction, as a device's delta is). State: m, the momentum; acc, the sum of the g merged
 * since the last momentum step; *count, how many. At every merge
 *     x += (lr / period) g;  acc += g;  count++
 * and when count reaches period
 *     m = mu m + acc / period;  x += lr mu m;  acc = 0;  count = 0.
 * Over one period this is DiLoCo's outer Nesterov step x += lr (g_avg + mu m) on the mean of
 * the period's merges, with the gradient part applied as each merge arrives rather than held
 * back; period 1 is Nesterov at every merge (PyTorch SGD, nesterov=True, on -g). The momentum
 * moves once per period, so a stale buffer cannot compound through it merge after merge. */
typedef struct {
        float lr, mu;
        uint32_t period; /* merges per momentum step, >= 1 */
} agg_nesterov_params;
void agg_nesterov(float *x, float *m, float *acc, uint32_t *count, const float *g, size_t n,
                  const agg_nesterov_params *p);

/* L2 norm, accumulated in double. */
double agg_l2_norm(const float *x, size_t n);
