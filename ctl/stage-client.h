/* SPDX-License-Identifier: MIT */
#pragma once

/* The HTTP side of collaborative inference for clients (edgectl generate, tests, bench):
 * ask stage servers what they serve, and run pipeline_generate() over them with libcurl. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline.h"

typedef struct {
        uint64_t version;
        model_config cfg;
        double speed;          /* layer-positions per second */
        uint64_t memory_bytes; /* the server's bound (weights + caches) */
        uint64_t used_bytes;
        int sessions;
        int paused;
        int first, last; /* the layers it holds (all unless it runs with Layers=) */
} stage_peer_info;

/* GET {url}/v1/stage/info. err gets the reason on failure. */
int stage_client_info(const char *url, const char *token, stage_peer_info *ret, char *err,
                      size_t err_size);

/* GET {fleet}/v1/peers?version=V (V 0: any) with the device credentials "ID:SECRET" of an
 * enrolled device: up to max URLs (malloc'd strings), and into ret_token (when not NULL) the
 * fleet's stage token the peers accept, "" when the reply has none (64 hex otherwise). */
int stage_client_fleet_peers(const char *fleet, const char *credentials, uint64_t version,
                             char **ret_urls, int max, int *ret_n, char ret_token[65], char *err,
                             size_t err_size);
/* "ID:SECRET" from an edged identity file (JSON with device_id and secret), malloc'd. */
char *stage_client_identity_credentials(const char *path);

typedef struct {
        const char *const *urls;
        int n_urls;
        const char *token;
        pipeline_emit_fn emit;
        void *emit_ctx;
        void (*on_event)(void *ctx, const char *what); /* progress for people; may be NULL */
        bool equal_split; /* ignore measured speed and memory: equal spans in URL order */
} stage_client_opts;

/* Asks every peer for its info, keeps those serving the same model as the first that
 * answers, weighs them by speed and memory and generates. */
int stage_client_generate(const stage_client_opts *o, const uint8_t *prompt, size_t prompt_len,
                          uint8_t *out, size_t n_out, const sample_opts *so, pipeline_stats *ret_stats,
                          char *err, size_t err_size);
