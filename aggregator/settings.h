/* SPDX-License-Identifier: MIT */
#pragma once

/* The aggregator's settings (docs/edge-aggregator.8): typed values with defaults, parsed and
 * validated from the KEY=VALUE rows the store keeps. Fleet policy knobs are the keys
 * "Policy.<Knob>"; they go to devices verbatim in the task. Pure: no I/O. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr-schedule.h"
#include "model.h"
#include "round-budget.h"
#include "update-codec.h"

#define AGG_MAX_POLICY 16

typedef enum { AGG_OPT_FEDAVG, AGG_OPT_FEDADAM, AGG_OPT_NESTEROV } agg_optimizer;

typedef struct {
        model_config cfg;     /* "Model": fixed at init */
        uint64_t seed;        /* "Seed": of version 0, informational */
        int buffer_size;      /* K */
        agg_optimizer optimizer;
        float server_lr;            /* "ServerLearningRate" (alias "ServerLR"); 0: the
                                     * optimizer's default, agg_settings_server_lr */
        float server_momentum;      /* nesterov: mu, [0, 1) */
        int server_momentum_period; /* nesterov: merges per momentum step, >= 1 */
        float server_adam_eps;      /* fedadam: epsilon, > 0 */
        int max_staleness;
        uint64_t max_update_bytes;
        double max_update_norm; /* 0: no bound */
        bool clip_updates;
        double trim_fraction; /* [0, 0.5) */
        int local_steps, batch;
        float lr, weight_decay, topk_fraction;
        /* the fleet's learning-rate schedule over merged tokens (lr-schedule.h); lr the peak */
        agg_lr_kind lr_schedule;
        uint64_t lr_warmup_tokens, lr_horizon_tokens;
        float lr_min; /* 0: lr / 10 */
        /* per-device step budgets (round-budget.h) */
        double round_seconds; /* 0: off, every device gets local_steps */
        int local_steps_min, max_local_steps; /* max 0: 4 x local_steps */
        upd_encoding encoding;
        int report_interval_s;
        char validation_file[4096]; /* empty: no evaluation */
        double rate_per_s;          /* per-device request rate, token bucket */
        int rate_burst;
        size_t n_policy;
        char policy_key[AGG_MAX_POLICY][32];
        char policy_value[AGG_MAX_POLICY][128];
        uint64_t generation; /* bumped by every 'set': part of the task's ETag */
} agg_settings;

/* Defaults for a model of cfg (sizes derived from its parameter count). */
void agg_settings_default(agg_settings *s, const model_config *cfg);

/* Validates value for key and stores it into s. -EINVAL with a reason in err for a bad value,
 * -ENOKEY for an unknown key. Keys are case-sensitive, as in the man page. */
int agg_settings_apply(agg_settings *s, const char *key, const char *value, char *err,
                       size_t err_size);

/* The effective server learning rate: ServerLearningRate, or when it is 0 the optimizer's
 * default, whose numbers live in this function only (settings.c). */
float agg_settings_server_lr(const agg_settings *s);

/* The name a key is stored and listed under: "ServerLearningRate" for its older spelling
 * "ServerLR" (still accepted), key itself otherwise. */
const char *agg_settings_canonical_key(const char *key);
/* The older spelling of canonical key that is still accepted, or NULL. */
const char *agg_settings_old_key(const char *key);

/* The fleet's learning-rate schedule and the per-device step budget the settings make. */
void agg_settings_lr_schedule(const agg_settings *s, agg_lr_schedule *ret);
void agg_settings_budget(const agg_settings *s, agg_budget_params *ret);

/* Every known key with its current value, for 'init' and 'status': calls fn per key. */
typedef void (*agg_settings_fn)(const char *key, const char *value, void *userdata);
void agg_settings_foreach(const agg_settings *s, agg_settings_fn fn, void *userdata);

/* Default upper bound of an update body and of its decompressed size for a layout. */
uint64_t agg_default_max_update_bytes(size_t n_params);
size_t agg_max_raw_bytes(const model_layout *lay);
