/* SPDX-License-Identifier: MIT */
#pragma once

/* Per-device token buckets: rate tokens per second up to burst; each request takes one. */

#include <stdbool.h>

typedef struct agg_ratelimit agg_ratelimit;

int agg_ratelimit_new(agg_ratelimit **ret);
void agg_ratelimit_free(agg_ratelimit *rl);
/* Takes a token for key at time now (seconds, monotonic). false when empty, with
 * *ret_retry_after_s the whole seconds until one is there. */
bool agg_ratelimit_take(agg_ratelimit *rl, const char *key, double rate, double burst, double now,
                        int *ret_retry_after_s);
