/* SPDX-License-Identifier: MIT */
#pragma once

/* Counters and the Prometheus text (format 0.0.4) of /metrics. Counting is in memory and
 * cheap (a mutex); agg_metrics_flush adds what was counted to the store's persistent
 * counters, so totals survive restarts (the accepted count is written with the update
 * itself). */

#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct agg_metrics agg_metrics;

int agg_metrics_new(agg_metrics **ret);
void agg_metrics_free(agg_metrics *m);

/* Counter name += delta; names: "updates.<result>", "errors.<reason>", "http.bytes_received",
 * "http.bytes_sent", "staleness.<tau>", "merge.count", "merge.microseconds". */
void agg_metrics_add(agg_metrics *m, const char *name, int64_t delta);
/* Moves the counted deltas into the store. */
int agg_metrics_flush(agg_metrics *m, agg_store *s);
/* The /metrics body (malloc'd). */
int agg_metrics_render(agg_metrics *m, agg_store *s, char **ret, size_t *ret_size);
/* Current value of a counter (store + unflushed), for tests and the status page. */
int64_t agg_metrics_get(agg_metrics *m, agg_store *s, const char *name);
