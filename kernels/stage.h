/* SPDX-License-Identifier: MIT */
#pragma once

/* One pipeline stage of collaborative inference: the contiguous span of transformer layers
 * [first, last] of a model, Petals-style. Stage 0 also embeds the tokens; the stage holding
 * the last layer also applies the final LayerNorm and the tied logits. Each session keeps
 * its own KV cache for the stage's layers only.
 *
 * The per-token arithmetic is the same sequence of operations as sampler_feed()
 * (kernels/sample.c), with the sampler's own attention and cache layout (sample_attend),
 * so chaining stages 0..k gives bit-identical logits to single-process generation. Pure: no I/O, no logging; a session never allocates after creation. */

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
        model_config cfg;
        int first, last;       /* layers held, inclusive */
        const model_tensors *p; /* only the span's layers (and wte/wpe/lnf as needed) are read */
} stage;

typedef struct stage_session stage_session;

static inline int stage_is_first(const stage *st) {
        return st->first == 0;
}
static inline int stage_is_last(const stage *st) {
        return st->last == st->cfg.n_layer - 1;
}
/* Floats per position coming in: 1 (a token id) for stage 0, else C. */
static inline int stage_in_width(const stage *st) {
        return stage_is_first(st) ? 1 : st->cfg.n_embd;
}
/* Floats per position going out: MODEL_VOCAB logits (last position only) for the last stage,
 * else C per position. */
static inline int stage_out_width(const stage *st) {
        return stage_is_last(st) ? MODEL_VOCAB : st->cfg.n_embd;
}

/* -EINVAL unless 0 <= first <= last < n_layer and the config is valid. */
int stage_init(stage *st, const model_config *cfg, const model_tensors *p, int first, int last);

/* Bytes of one session's KV cache and scratch for n_layers layers of cfg. */
size_t stage_session_bytes(const model_config *cfg, int n_layers);
/* Bytes of the parameters a stage [first, last] reads (its layers, plus wte+wpe on stage 0,
 * plus wte+lnf on the last stage). */
size_t stage_param_bytes(const model_config *cfg, int first, int last);

int stage_session_new(const stage *st, stage_session **ret);
void stage_session_free(stage_session *s);
/* Positions cached so far. */
int stage_session_pos(const stage_session *s);

/* Runs n positions starting at pos through the stage. pos may be at most the session's
 * position: an earlier pos rewinds the cache (a replay after a retry or a re-plan recomputes
 * the same values). in holds n * stage_in_width() floats (token ids as exact integers for
 * stage 0); out gets n * C floats, or MODEL_VOCAB logits for the last position on the last
 * stage. -ERANGE for a gap (pos > session position), -ENOSPC past the block size, -EINVAL
 * for a token id that is not an integer in [0, 255]. */
int stage_forward(const stage *st, stage_session *s, int pos, const float *in, int n, float *out);
