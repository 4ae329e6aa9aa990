/* SPDX-License-Identifier: MIT */
#pragma once

/* The device side of docs/federation-protocol.md over libcurl: identity (enrollment), task,
 * resumable model download, update upload, telemetry, and the one pending update kept on
 * disk while the aggregator is out of reach. Every call is blocking and makes at most one
 * attempt (plus the resume of a partial download); the caller (daemon/federation.c, on its
 * own thread) owns retries, using fed_backoff_delay(). Nothing here touches the model
 * beyond files; secrets are never logged.
 *
 * Errors: -ENETUNREACH/-ECONNREFUSED/-ETIMEDOUT/-EHOSTUNREACH for transport failures, and
 * -ECONNRESET when the connection broke mid-exchange (reset, truncated body, TLS failure), all
 * worth a retry with backoff; -EAGAIN for 5xx and 429 (retry later), -EACCES for 401 (bad
 * token or identity), -ESTALE for 409 stale/unknown-base (fetch the new task), -EBADMSG for a
 * malformed reply (also an unexpected status, e.g. a redirect, which is never followed),
 * -EPROTO for other 4xx (give up on this request), -EINVAL for bad arguments, -errno for
 * local I/O. On failure err (if not NULL) holds a one-line reason, with the server's
 * "error"/"message" when there was one (withheld if it contains the secret or the token). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "update-codec.h"

#define FED_MAX_POLICY 16

typedef struct {
        const char *server;       /* base URL, e.g. "http://127.0.0.1:8080" (no trailing /) */
        const char *enroll_token; /* used only when there is no identity yet; may be NULL */
        const char *ca_file;      /* https CA bundle, instead of the system's (NULL) */
        const char *state_dir;    /* identity, model-<v>.safetensors, pending-update */
        const char *device_name;  /* sent at enrollment; NULL: the hostname */
        long timeout_s;           /* per request (default 30); downloads: without progress */
        size_t max_model_bytes;   /* refuse bigger blobs (default 1 GiB) */
} fed_options;

typedef struct {
        uint64_t version;
        model_config cfg;
        char model_sha256[65];
        uint64_t model_bytes;
        int local_steps, batch;
        float lr, weight_decay, topk_fraction;
        upd_encoding encoding;
        int max_staleness, report_interval_s;
        size_t n_policy;
        char policy_key[FED_MAX_POLICY][32];
        char policy_value[FED_MAX_POLICY][128];
        /* the fleet's stage token (64 lowercase hex) the stage server accepts too; "" when
         * the task has none or a malformed one. Never logged. */
        char stage_token[65];
        char etag[80];
} fed_task;

typedef struct {
        uint64_t base_version;
        long steps;
        uint64_t tokens;
        float loss;
        char idempotency_key[33]; /* 32 hex chars, chosen by fed_pending_save */
} fed_update_meta;

typedef struct {
        bool duplicate; /* the server had it already: acknowledged, not counted again */
        uint64_t update_id, version;
        int staleness;
} fed_ack;

typedef struct fedclient fedclient;

int fed_client_new(const fed_options *o, fedclient **ret);
void fed_client_free(fedclient *c);

/* Loads <state_dir>/identity, or enrolls with the token and saves it (0600, atomically).
 * -ENOKEY when there is neither an identity nor a token. */
int fed_ensure_identity(fedclient *c, char *err, size_t err_size);
/* Device id (hex) once known, else NULL. */
const char *fed_device_id(const fedclient *c);

/* GET /v1/task with If-None-Match from the last call; *ret_changed is false on 304 (ret
 * then keeps the last task). Validates every field (known config, ranges). */
int fed_get_task(fedclient *c, fed_task *ret, bool *ret_changed, char *err, size_t err_size);

/* Makes <state_dir>/model-<version>.safetensors hold the task's model: downloads (resuming a
 * .part file with Range), checks size and SHA-256, renames; keeps only the newest two
 * model files. *ret_path is malloc'd. */
int fed_fetch_model(fedclient *c, const fed_task *t, char **ret_path, char *err, size_t err_size);

/* POST /v1/update with the body and headers from meta. */
int fed_send_update(fedclient *c, const fed_update_meta *meta, const void *body, size_t size,
                    fed_ack *ret, char *err, size_t err_size);

/* POST /v1/telemetry with this JSON object text. */
int fed_send_telemetry(fedclient *c, const char *json, char *err, size_t err_size);

/* The single pending update: <state_dir>/pending-update (header + body, atomically written,
 * 0600). Saving replaces any previous one (a newer delta from the same base supersedes it)
 * and picks a fresh idempotency key into meta unless meta already has one. load: -ENOENT
 * when none; -EBADMSG (file renamed *.corrupt) when damaged. */
int fed_pending_save(fedclient *c, fed_update_meta *meta, const void *body, size_t size);
int fed_pending_load(fedclient *c, fed_update_meta *ret_meta, void **ret_body, size_t *ret_size);
int fed_pending_drop(fedclient *c);

/* Pure: delay before retry number attempt (0-based): base * 2^attempt capped at max, times a
 * jitter factor 1 + jitter * (2u - 1) for u in [0, 1). */
double fed_backoff_delay(unsigned attempt, double base_s, double max_s, double jitter, double u);
