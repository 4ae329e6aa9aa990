/* SPDX-License-Identifier: MIT */
#pragma once

/* The merge worker: when BufferSize accepted updates wait, merges the oldest into version
 * v+1 (merge.h arithmetic), writes its blob, commits the version row and the updates'
 * merged_into in one transaction, evaluates it, prunes old blobs. Runs on its own thread,
 * so requests never wait for a merge; the store lock is held only for short transactions. */

#include <stdbool.h>

#include "metrics.h"
#include "store.h"

typedef struct agg_merger agg_merger;

/* One merge step if enough updates wait (dropping too-stale ones first). *ret_merged tells
 * whether a version was published. Synchronous; used by the worker and by tests. */
int agg_merge_once(agg_store *s, agg_metrics *metrics, bool *ret_merged);

/* Evaluates the newest version if it has no validation loss yet and ValidationFile is set. */
int agg_merge_eval_current(agg_store *s);

int agg_merger_start(agg_store *s, agg_metrics *metrics, agg_merger **ret);
/* Wakes the worker (after an accepted update). */
void agg_merger_kick(agg_merger *w);
void agg_merger_stop(agg_merger *w);
