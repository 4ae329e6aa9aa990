/* SPDX-License-Identifier: MIT */
#pragma once

/* Pipelined generation over stage servers: plan a split of the layers over the peers, chain
 * the stages for the prompt and then for every generated token, and when a peer fails,
 * re-plan over the survivors and replay the prompt plus the tokens generated so far on fresh
 * sessions. Output is emitted once per token, never repeated. The transport is a callback,
 * so the same loop runs over HTTP (edgectl generate) and in process (tests). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sample.h"
#include "stage-plan.h"

#define PIPELINE_MAX_PEERS 16

/* Sends one encoded stage message to peer (for span [first, last] of version) and returns
 * the reply body (malloc'd). A negative errno marks the peer as gone (the pipeline re-plans
 * without it); -ECANCELED stops the generation. */
typedef int (*pipeline_call_fn)(void *ctx, int peer, uint64_t version, int first, int last,
                                const void *req, size_t req_size, void **ret, size_t *ret_size);
typedef void (*pipeline_emit_fn)(void *ctx, uint8_t token);

typedef struct {
        model_config cfg;
        uint64_t version;
        stage_plan_cost cost;
        stage_plan_peer peers[PIPELINE_MAX_PEERS];
        int n_peers;
        /* peers that hold only some layers (Layers=): held[i] is peer i's span, and the
         * chain is planned by stage_plan_cover() instead of by speed and memory */
        bool fixed_spans;
        stage_plan_span held[PIPELINE_MAX_PEERS];
        pipeline_call_fn call;
        void *ctx;             /* for call */
        pipeline_emit_fn emit; /* each token once, as it is decided; may be NULL */
        void *emit_ctx;
        unsigned max_replans; /* 0: one per peer */
} pipeline_opts;

typedef struct {
        int replans;          /* times the split was planned again */
        uint64_t bytes_sent, bytes_received;
        int n_stages;         /* in the final plan */
        stage_plan_span plan[PIPELINE_MAX_PEERS];
        double first_token_s; /* from start to the first generated token */
} pipeline_stats;

/* The per-layer and per-end memory costs of cfg for planning (one session). */
void pipeline_default_cost(const model_config *cfg, stage_plan_cost *ret);

/* Like sample_generate(): feeds prompt (a newline if empty), then generates up to n_out
 * bytes into out, stopping at the block size. Returns the count or a negative errno
 * (-EHOSTUNREACH when no set of live peers can run the model any more). */
int pipeline_generate(const pipeline_opts *o, const uint8_t *prompt, size_t prompt_len,
                      uint8_t *out, size_t n_out, const sample_opts *so, pipeline_stats *ret_stats);
