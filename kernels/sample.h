/* SPDX-License-Identifier: MIT */
#pragma once

/* Autoregressive generation with a KV cache: each new token costs one position's work. */

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "rng.h"

typedef struct {
        float temperature; /* 0 = greedy */
        int top_k;         /* 0 = no limit */
        uint64_t seed;
} sample_opts;

typedef struct sampler sampler;

/* Reads weights from m (not copied; m must outlive the sampler). */
int sampler_new(const model *m, sampler **ret);
void sampler_free(sampler *s);

/* Clears the cache. */
void sampler_reset(sampler *s);
/* Feeds one token at the next position; writes logits (256) for the following token.
 * Returns -ENOSPC when the block size is full. */
int sampler_feed(sampler *s, uint8_t token, float *ret_logits);
/* Picks a token from logits per opts (modifies logits). */
uint8_t sampler_pick(float *logits, const sample_opts *opts, rng_t *rng);

/* Feeds the prompt then generates up to n_out bytes into out; stops early at the block
 * size. Returns the number of bytes generated or a negative errno. */
int sample_generate(sampler *s, const uint8_t *prompt, size_t prompt_len, uint8_t *out,
                    size_t n_out, const sample_opts *opts);
