/* SPDX-License-Identifier: MIT */
#include "lr-schedule.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "macros.h"

float agg_lr_at(const agg_lr_schedule *s, uint64_t t) {
        double peak = s->lr;
        double lo = s->lr_min > 0 ? fmin(s->lr_min, peak) : peak / 10.0;

        if (s->kind == AGG_LR_CONSTANT)
                return s->lr;
        if (t < s->warmup_tokens)
                return (float) (peak * (double) (t > 0 ? t : 1) / (double) s->warmup_tokens);
        if (t >= s->horizon_tokens)
                return (float) lo;
        /* here W <= t < H, so H > W */
        double p = (double) (t - s->warmup_tokens) /
                   (double) (s->horizon_tokens - s->warmup_tokens);
        return (float) (lo + (peak - lo) * 0.5 * (1.0 + cos(M_PI * p)));
}

uint64_t agg_lr_position(uint64_t merged_tokens, int buffer, int local_steps, int batch,
                         int block_size) {
        uint64_t lead = (uint64_t) MAX(buffer, 0) * (uint64_t) MAX(local_steps, 0) *
                        (uint64_t) MAX(batch, 0) * (uint64_t) MAX(block_size, 0);
        return merged_tokens > UINT64_MAX - lead ? UINT64_MAX : merged_tokens + lead;
}

const char *agg_lr_kind_to_string(agg_lr_kind k) {
        return k == AGG_LR_CONSTANT ? "constant" : "cosine";
}

int agg_lr_kind_from_string(const char *s) {
        if (!strcmp(s, "cosine"))
                return AGG_LR_COSINE;
        if (!strcmp(s, "constant"))
                return AGG_LR_CONSTANT;
        return -EINVAL;
}
