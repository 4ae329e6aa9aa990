/* SPDX-License-Identifier: MIT */
#pragma once

/* [Inference] Serve=yes: edged serves spans of layers of its model to peers over HTTP
 * (libmicrohttpd, one thread running at SCHED_IDLE, like the trainer):
 *
 *   GET  /v1/stage/info                        JSON: version, config, speed, memory, state
 *   POST /v1/stage/{version}/{first}-{last}    stage-wire activations in, activations out
 *
 * Every request carries "Authorization: Bearer TOKEN" (Token=, or the device secret of the
 * fleet identity; also the fleet's stage token from the aggregator's task); errors are JSON
 * {"error": word, "message": text}. While the device is paused new sessions get 503
 * {"error":"paused"}; sessions already open finish. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct stage_server stage_server;

typedef struct {
        const char *listen;     /* IPv4 "ADDR:PORT" */
        const char *token;      /* required bearer token (non-empty) */
        const char *model_path; /* NULL: newest <state_dir>/model-*.safetensors, else checkpoint */
        const char *state_dir;
        size_t max_bytes;       /* weights + KV caches */
        double idle_timeout_s;
        int max_sessions;
        /* hold only layers [first, last] of the model (stage-load.h): a device serves its
         * share of a model that would not fit it whole; false: the whole model */
        bool hold_span;
        int first, last;
} stage_server_opts;

int stage_server_start(const stage_server_opts *o, stage_server **ret);
/* Called every policy decision: pause state, and idle sessions expire. */
void stage_server_set_paused(stage_server *s, bool paused, const char *reason);
void stage_server_stop(stage_server *s);
/* Also accept this token (the fleet's, from the aggregator's task); NULL or "": no longer. */
void stage_server_set_fleet_token(stage_server *s, const char *token);
/* "http://ADDR:PORT" (what peers and the aggregator are told). */
const char *stage_server_url(const stage_server *s);

/* The model version served; -ENOENT before a model is loaded. */
int stage_server_version(stage_server *s, uint64_t *ret);

/* The device secret from <state_dir>/identity, malloc'd; NULL when not enrolled. */
char *stage_server_identity_secret(const char *state_dir);
