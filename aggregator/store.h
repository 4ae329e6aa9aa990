/* SPDX-License-Identifier: MIT */
#pragma once

/* The aggregator's state in SQLite (WAL, synchronous=FULL) under <store>/aggregator.db:
 * settings, enrolment tokens, devices, model versions, the update log (with each update's
 * compressed body until it is merged) and metric counters. Every write is one transaction,
 * so a crash at any point leaves a consistent database. One connection, serialised by a
 * mutex: every call is short (the merge computes outside it). Model blobs live next to it
 * in <store>/blobs (blobs.h). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "settings.h"

#define AGG_DB_NAME "aggregator.db"
#define AGG_ID_HEX 33     /* 16 random bytes as hex + NUL */
#define AGG_SECRET_HEX 65 /* 32 random bytes as hex + NUL */

typedef struct agg_store agg_store;

typedef struct {
        uint64_t version;
        char blob[65];    /* sha256 of the model blob */
        char moments[65]; /* server optimizer state blob (merger.c), "" when none */
        int64_t created_at;
        double val_loss; /* NAN: not evaluated */
        int64_t n_updates;
        double merge_seconds;
        uint64_t merged_tokens; /* tokens of every update merged into versions 1..version: the
                                 * learning-rate schedule's clock (lr-schedule.h) */
} agg_version;

typedef struct {
        int64_t id;
        char device[AGG_ID_HEX];
        uint64_t base_version;
        uint64_t tokens;
        int64_t steps;
        double loss, norm, scale; /* scale: clipping factor applied at merge (1 = none) */
        uint64_t bytes;
        int64_t received_at;
} agg_update;

typedef struct {
        char id[AGG_ID_HEX];
        char name[128];
        int64_t enrolled_at, last_seen, telemetry_at;
        char *telemetry; /* JSON text or NULL; owned */
        int64_t n_updates;
} agg_device;

/* Creates <dir> (if needed), the database and blobs/; -EEXIST when a database is there. */
int agg_store_create(const char *dir, agg_store **ret);
/* Opens an existing store; -ENOENT (logged, naming the path) when there is none. */
int agg_store_open(const char *dir, agg_store **ret);
void agg_store_free(agg_store *s);
const char *agg_store_dir(const agg_store *s);
/* The fleet's stage token (64 hex; made at the first open, kept in the database): stage
 * servers of enrolled devices accept it (GET /v1/task, /v1/peers). NULL when the store could
 * not write one. Never logged. */
const char *agg_store_stage_token(const agg_store *s);

/* Settings: defaults for the stored model, then every stored row. */
int agg_store_load_settings(agg_store *s, agg_settings *ret);
/* Validates every KEY=VALUE against the current settings, then writes all of them and
 * bumps Generation in one transaction. On a bad item nothing is written; err says why. */
int agg_store_set(agg_store *s, char *const *kv, size_t n, bool allow_model, char *err,
                  size_t err_size);

/* A new enrolment token (32 hex chars, printed once; only its SHA-256 is kept). expires_s 0
 * = never, uses 0 = unlimited. */
int agg_store_token_create(agg_store *s, int64_t expires_s, int64_t uses, char ret[AGG_ID_HEX]);
/* Consumes one use of token and creates a device: -EACCES for an unknown, expired or used-up
 * token. */
int agg_store_enroll(agg_store *s, const char *token, const char *name, char ret_id[AGG_ID_HEX],
                     char ret_secret[AGG_SECRET_HEX]);
/* 0 when secret is the device's (constant-time compare of hashes), -EACCES otherwise; also
 * records last_seen. */
int agg_store_auth(agg_store *s, const char *device, const char *secret);

int agg_store_current_version(agg_store *s, agg_version *ret);
/* -ENOENT when there is no such version. */
int agg_store_get_version(agg_store *s, uint64_t version, agg_version *ret);
/* Newest first, at most max; *ret malloc'd. */
int agg_store_list_versions(agg_store *s, size_t max, agg_version **ret, size_t *ret_n);
/* Version 0 (init only). */
int agg_store_insert_version0(agg_store *s, const char *blob);

/* The update (device, key) if it is in the log: 0 with its id, -ENOENT otherwise. */
int agg_store_find_update(agg_store *s, const char *device, const char *key, int64_t *ret_id);
/* Appends an accepted update with its body, durably, bumping counter 'accepted' in the same
 * transaction. *ret_duplicate is true (and nothing written) when (device, key) exists. In the
 * same transaction it ends the device's open round (agg_store_round_begin), if any: the
 * device's smoothed speed takes in agg_speed_sample(u->steps, the round's budget, the time
 * since the round began). */
int agg_store_insert_update(agg_store *s, const agg_update *u, const char *key, const void *body,
                            size_t size, int64_t *ret_id, bool *ret_duplicate);
/* Oldest updates neither merged nor dropped, at most max; *ret malloc'd. */
int agg_store_pending(agg_store *s, size_t max, agg_update **ret, size_t *ret_n);
int64_t agg_store_count_pending(agg_store *s);
int agg_store_update_body(agg_store *s, int64_t id, void **ret_body, size_t *ret_size);
/* Marks updates dropped (too stale at merge time) and counts them. */
int agg_store_drop_updates(agg_store *s, const int64_t *ids, size_t n);
/* One transaction: inserts version row v (which must be current+1) and sets merged_into =
 * v for exactly these updates (all still pending, else nothing is written and -ESTALE),
 * freeing their bodies; its merged_tokens is version v-1's plus these updates' tokens
 * (v->merged_tokens is not read). */
int agg_store_commit_version(agg_store *s, const agg_version *v, const int64_t *ids, size_t n);
int agg_store_set_val_loss(agg_store *s, uint64_t version, double loss);

/* A device's pace (round-budget.h): its smoothed speed in steps per second (NAN when not
 * measured yet) and whether a round is open (begun, no update since). */
int agg_store_device_pace(agg_store *s, const char *device, double *ret_speed,
                          bool *ret_round_open);
/* Opens a round for device now (the server's clock), asked to run steps, unless one is open
 * already. Called at the device's task request; agg_store_insert_update ends it. */
int agg_store_round_begin(agg_store *s, const char *device, int steps);

int agg_store_telemetry(agg_store *s, const char *device, const char *json);
/* All devices, most recently seen first; free with agg_devices_free. */
int agg_store_list_devices(agg_store *s, agg_device **ret, size_t *ret_n);
void agg_devices_free(agg_device *d, size_t n);
int64_t agg_store_count_devices(agg_store *s, int64_t seen_since);
/* Updates received at or after since (any outcome that was stored). */
int64_t agg_store_count_updates_since(agg_store *s, int64_t since);
/* Totals for consistency checks: accepted (logged), merged, dropped, pending. */
int agg_store_update_totals(agg_store *s, int64_t *ret_logged, int64_t *ret_merged,
                            int64_t *ret_dropped);

/* Persistent counters (metrics that survive restarts). */
int agg_store_counter_get(agg_store *s, const char *name, int64_t *ret);
int agg_store_counters_add(agg_store *s, const char *const *names, const int64_t *deltas,
                           size_t n);
/* Every counter: fn(name, value). */
int agg_store_counters_foreach(agg_store *s, void (*fn)(const char *, int64_t, void *),
                               void *userdata);

/* Blobs referenced by the newest keep versions (model and moments), for pruning. */
int agg_store_live_blobs(agg_store *s, size_t keep, char (**ret)[65], size_t *ret_n);
