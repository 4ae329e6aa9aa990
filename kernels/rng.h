/* SPDX-License-Identifier: MIT */
#pragma once

/* Small deterministic generators: the same seed gives the same numbers on every machine. */

#include <math.h>
#include <stdint.h>

typedef struct {
        uint64_t state;
} rng_t;

static inline uint64_t rng_splitmix64(uint64_t *state) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static inline void rng_seed(rng_t *r, uint64_t seed) {
        r->state = seed;
}

static inline uint64_t rng_u64(rng_t *r) {
        return rng_splitmix64(&r->state);
}

/* Uniform in [0, 1) with 24 random bits: exact in float. */
static inline float rng_uniform(rng_t *r) {
        return (float) (rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform integer in [0, n), n > 0, without modulo bias worth caring about for n << 2^32. */
static inline uint64_t rng_below(rng_t *r, uint64_t n) {
        return (uint64_t) (((unsigned __int128) rng_u64(r) * n) >> 64);
}

/* Standard normal by Box-Muller, in double for reproducibility. */
static inline float rng_normal(rng_t *r) {
        double u1 = ((double) (rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
        double u2 = (double) (rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
        return (float) (sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}
