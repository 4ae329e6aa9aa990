/* SPDX-License-Identifier: MIT */
#include "stats-history.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int stats_history_init(stats_history *h) {
        h->buckets = calloc(STATS_HISTORY_MINUTES, sizeof(stats_bucket));
        if (!h->buckets)
                return -ENOMEM;
        for (size_t i = 0; i < STATS_HISTORY_MINUTES; i++)
                h->buckets[i].minute = -1;
        h->first_minute = -1;
        return 0;
}

void stats_history_done(stats_history *h) {
        free(h->buckets);
        h->buckets = NULL;
}

static void counts_add(stats_counts *a, const stats_counts *b) {
        for (int i = 0; i < _POLICY_MODE_MAX; i++)
                a->state_s[i] += b->state_s[i];
        for (int i = 0; i < _POLICY_REASON_MAX; i++) {
                a->paused_s[i] += b->paused_s[i];
                a->pauses_begun[i] += b->pauses_begun[i];
        }
        a->transitions += b->transitions;
        a->tokens += b->tokens;
        a->steps += b->steps;
        a->checkpoints += b->checkpoints;
        a->core_s += b->core_s;
}

void stats_history_add(stats_history *h, int64_t now_s, const stats_counts *delta) {
        int64_t minute = now_s / 60;
        stats_bucket *b = &h->buckets[minute % STATS_HISTORY_MINUTES];

        if (minute < 0)
                return;
        if (b->minute != minute) {
                /* the clock went back past this slot's minute, or the slot is a week old */
                memset(&b->c, 0, sizeof(b->c));
                b->minute = minute;
        }
        if (h->first_minute < 0 || minute < h->first_minute)
                h->first_minute = minute;
        counts_add(&b->c, delta);
}

void stats_history_sum(const stats_history *h, int64_t since_s, int64_t now_s, stats_counts *ret,
                       int64_t *ret_since) {
        int64_t now_min = now_s / 60, from = since_s / 60;
        int64_t oldest = now_min - STATS_HISTORY_MINUTES + 1;

        memset(ret, 0, sizeof(*ret));
        if (from < oldest)
                from = oldest;
        if (h->first_minute >= 0 && from < h->first_minute)
                from = h->first_minute;
        for (int64_t m = from; m <= now_min; m++) {
                const stats_bucket *b = &h->buckets[m % STATS_HISTORY_MINUTES];
                if (m >= 0 && b->minute == m)
                        counts_add(ret, &b->c);
        }
        if (ret_since)
                *ret_since = from * 60 > since_s ? from * 60 : since_s;
}
