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

/* The matrices the generator multiplies by, per layer; SAMPLER_LOGITS is the tied wte. */
typedef enum {
        SAMPLER_QKV,
        SAMPLER_ATTPROJ,
        SAMPLER_FC,
        SAMPLER_FCPROJ,
        SAMPLER_LOGITS,
} sampler_matrix;

/* What the generator needs from a model's weights, so that the same KV-cache loop runs over
 * float weights (sampler_new) or quantized ones (kernels/quant-sample.h). */
typedef struct {
        const model_config *cfg;
        /* LayerNorm weights and biases (ln1, ln2, lnf) are read from here, as floats */
        const model_tensors *p;
        /* out = W x + b for matrix 'which' of layer 'layer' (ignored for SAMPLER_LOGITS,
         * which has no bias) */
        void (*matvec)(const void *ctx, sampler_matrix which, int layer, const float *x,
                       float *out);
        /* out(C) = wte[token] + wpe[pos] */
        void (*embed)(const void *ctx, uint8_t token, int pos, float *out);
        const void *ctx;
} sampler_weights;

/* The attention the sampler runs for one position of one layer, for other generators that
 * must give its bits (kernels/stage.c). Cache layout: keys transposed, kt holds C rows of
 * t_pad = sample_kv_t_pad(T) floats (row c: key channel c at every position), so that a
 * query meets all keys along contiguous rows; values vc are (T, C). */
int sample_kv_t_pad(int T);
/* Stores position pos's key k(C) and value v(C). */
void sample_kv_store(float *kt, float *vc, int t_pad, int C, int pos, const float *k,
                     const float *v);
/* y(C) = causal attention of q(C) over positions 0..pos (stored), H heads; scores: t_pad
 * floats of scratch. */
void sample_attend(const float *q, const float *kt, const float *vc, int t_pad, int C, int H,
                   int pos, float *scores, float *y);

/* Reads weights from m (not copied; m must outlive the sampler). */
int sampler_new(const model *m, sampler **ret);
/* The same over any weights; *w is copied, what it points to must outlive the sampler. */
int sampler_new_weights(const sampler_weights *w, sampler **ret);
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
