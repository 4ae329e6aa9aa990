/* SPDX-License-Identifier: MIT */
#pragma once

/* The HTTP side of edge-aggregator (docs/federation-protocol.md) over libmicrohttpd: one
 * thread per connection (bounded), request bodies bounded before and while reading, and the
 * merge worker alongside. */

#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"
#include "store.h"

typedef struct {
        const char *listen; /* "ADDR:PORT" or "[ADDR]:PORT"; default 127.0.0.1:8080 */
        const char *tls_cert, *tls_key;
        bool insecure_public; /* allow plain HTTP on a non-loopback address */
        unsigned max_connections;
        bool no_merger; /* tests: merge by hand with agg_merge_once */
} agg_server_options;

typedef struct agg_server agg_server;

/* -EPERM (logged) for a public address without TLS or --insecure-public. */
int agg_server_start(agg_store *s, const agg_server_options *o, agg_server **ret);
uint16_t agg_server_port(const agg_server *srv);
agg_metrics *agg_server_metrics(agg_server *srv);
void agg_server_stop(agg_server *srv);

/* Parses "ADDR:PORT" / "[ADDR]:PORT" into a socket address; tells whether it is loopback. */
struct sockaddr_storage;
int agg_parse_listen(const char *s, struct sockaddr_storage *ret, unsigned *ret_len,
                     bool *ret_loopback);
