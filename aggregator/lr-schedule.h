/* SPDX-License-Identifier: MIT */
#pragma once

/* The fleet's learning-rate schedule (docs/federation-protocol.md, Task): the inner learning
 * rate every device trains at, as a function of the tokens merged into published versions so
 * far (the fleet's clock: it advances with the shared model, not with any one device). Pure:
 * no I/O.
 *
 *   constant:  lr(t) = LR
 *   cosine:    lr(t) = LR * max(t, 1) / W                                  t < W (warmup)
 *              lr(t) = m + (LR - m) * (1 + cos(pi * (t - W) / (H - W))) / 2  W <= t < H
 *              lr(t) = m                                                   t >= H
 *
 * with t the merged tokens, W = LRWarmupTokens, H = LRHorizonTokens, m = LRMin (0: LR/10;
 * never above LR). The warmup starts at LR/W rather than at 0 so that a task always carries
 * a positive rate (devices refuse 0); W = 0 starts at LR. With H <= W there is no cosine: m
 * right after the warmup. */

#include <stdint.h>

typedef enum { AGG_LR_COSINE, AGG_LR_CONSTANT } agg_lr_kind;

typedef struct {
        agg_lr_kind kind;
        float lr;     /* the peak rate, LR= */
        float lr_min; /* absolute; 0: lr / 10 */
        uint64_t warmup_tokens, horizon_tokens;
} agg_lr_schedule;

float agg_lr_at(const agg_lr_schedule *s, uint64_t tokens);

/* Where on the schedule a round that starts now trains: the tokens merged so far plus one
 * buffer of rounds (buffer x local_steps x batch x block_size), about where the round's own
 * update will be merged. At the merged tokens alone the schedule runs a buffer behind the
 * fleet, and a new fleet's first buffer trains at almost no rate: in bench/fed-learning (8
 * devices, K=4, 36 merges) that cost validation loss 2.90 against 2.50. */
uint64_t agg_lr_position(uint64_t merged_tokens, int buffer, int local_steps, int batch,
                         int block_size);

const char *agg_lr_kind_to_string(agg_lr_kind k);
/* -EINVAL for anything but "constant" or "cosine". */
int agg_lr_kind_from_string(const char *s);
