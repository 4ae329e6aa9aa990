/* SPDX-License-Identifier: MIT */
#pragma once

/* Splitting a model's layers across the peers of a pipeline: each peer, in the given order,
 * gets a contiguous span, sized in proportion to its measured speed and no larger than its
 * memory allows. Pure. */

#include <stdint.h>

typedef struct {
        double speed;       /* relative throughput (e.g. layer-positions per second); > 0 */
        uint64_t mem_bytes; /* what the peer may use for this model */
} stage_plan_peer;

typedef struct {
        uint64_t layer_bytes; /* weights + KV cache of one layer */
        uint64_t first_bytes; /* extra on the first stage (token and position embeddings) */
        uint64_t last_bytes;  /* extra on the last stage (tied logits, final LayerNorm) */
} stage_plan_cost;

typedef struct {
        int peer;        /* index into the peers given */
        int first, last; /* layers, inclusive */
} stage_plan_span;

/* Plans n_layers over n_peers (at most 64). Peers whose share rounds to no layer are left
 * out; the spans come in peer order and cover 0..n_layers-1 exactly. Shares: speed-
 * proportional, capped by memory (water-filling), rounded by largest remainder (ties to the
 * earlier peer). -E2BIG when the peers' memory cannot hold the model, -EINVAL for bad
 * arguments. ret has room for n_peers spans. */
int stage_plan(int n_layers, const stage_plan_peer *peers, int n_peers, const stage_plan_cost *cost,
               stage_plan_span *ret, int *ret_n);

/* Peers that hold fixed spans (Layers=, Petals-style): a chain of spans covering
 * 0..n_layers-1, from layer 0 on taking the peer (alive[i], may be NULL for all) whose span
 * holds the next layer and reaches furthest, the faster on a tie; each serves from the next
 * layer to the end of its span. -E2BIG when some layer is held by no peer left. */
int stage_plan_cover(int n_layers, const stage_plan_span *held, const double *speed,
                     const unsigned char *alive, int n_peers, stage_plan_span *ret, int *ret_n);
