/* SPDX-License-Identifier: MIT */
#pragma once

/* What the service did, minute by minute, for "edgectl stats --since": time in each state
 * and pause reason, pauses begun, tokens, steps, checkpoints and harvested core-seconds.
 * A ring of one-minute buckets covering STATS_HISTORY_MINUTES; pure, no I/O. */

#include <stdint.h>

#include "policy.h"

#define STATS_HISTORY_MINUTES (7 * 24 * 60)

typedef struct {
        double state_s[_POLICY_MODE_MAX];
        double paused_s[_POLICY_REASON_MAX];
        uint64_t pauses_begun[_POLICY_REASON_MAX];
        uint64_t transitions, tokens, steps, checkpoints;
        double core_s;
} stats_counts;

typedef struct {
        int64_t minute; /* Unix time / 60; -1 = empty */
        stats_counts c;
} stats_bucket;

typedef struct {
        stats_bucket *buckets; /* STATS_HISTORY_MINUTES of them */
        int64_t first_minute;  /* oldest minute ever recorded, -1 before the first */
} stats_history;

int stats_history_init(stats_history *h);
void stats_history_done(stats_history *h);

/* Adds the figures of one interval that ended at Unix time now_s to its minute. */
void stats_history_add(stats_history *h, int64_t now_s, const stats_counts *delta);

/* Sums the minutes from since_s (rounded down to its minute, and clamped to what the ring
 * still holds) to now_s. *ret_since gets the time the sum really starts from. */
void stats_history_sum(const stats_history *h, int64_t since_s, int64_t now_s, stats_counts *ret,
                       int64_t *ret_since);
