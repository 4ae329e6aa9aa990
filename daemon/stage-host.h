/* SPDX-License-Identifier: MIT */
#pragma once

/* The transport-free half of stage serving: one model's weights, a table of sessions (each
 * a stage [first, last] with its own KV cache), and the handling of one request body into a
 * reply body or an HTTP status with a reason. The HTTP server (stage-server.c) and the
 * in-process tests both drive it. Not thread-safe: the caller serialises calls. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
        size_t max_bytes;      /* weights + every session's cache; 0 = unbounded */
        double idle_timeout_s; /* a session unused this long is dropped */
        int max_sessions;      /* 1..1024 */
} stage_host_limits;

typedef struct stage_host stage_host;

typedef struct {
        unsigned status;    /* 200, or an HTTP error status */
        const char *reason; /* error: a short machine word ("bad-activations", ...) */
        const char *detail; /* error: what was wrong, for people (static string) */
        void *body;         /* 200: the encoded reply (malloc'd, the caller frees) */
        size_t size;
} stage_reply;

/* p (the full model's parameters) must outlive the host. */
int stage_host_new(const model_config *cfg, const model_tensors *p, uint64_t version,
                   size_t weight_bytes, const stage_host_limits *lim, stage_host **ret);
void stage_host_free(stage_host *h);
/* The host holds only layers [first, last] (stage-load.h): other spans get 404. */
int stage_host_hold(stage_host *h, int first, int last);

/* One POST /v1/stage/{version}/{first}-{last}. accept_new false (the device is paused)
 * refuses new sessions with 503 while known ones carry on. now: monotonic seconds. */
void stage_host_handle(stage_host *h, uint64_t version, int first, int last, const void *body,
                       size_t size, bool accept_new, double now, stage_reply *ret);

/* Drops sessions idle longer than the timeout; returns how many. */
int stage_host_expire(stage_host *h, double now);
int stage_host_n_sessions(const stage_host *h);
size_t stage_host_bytes(const stage_host *h);
uint64_t stage_host_version(const stage_host *h);
const model_config *stage_host_config(const stage_host *h);
