/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared between http.c (transport), api.c (the /v1 handlers) and statuspage.c. */

#include <microhttpd.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stddef.h>

#include "macros.h"
#include "merger.h"
#include "metrics.h"
#include "ratelimit.h"
#include "server.h"
#include "settings.h"
#include "store.h"

#define AGG_MAX_CONTROL_BODY (64u * 1024)

struct agg_server {
        struct MHD_Daemon *mhd;
        agg_store *store;
        agg_metrics *metrics;
        agg_ratelimit *ratelimit;
        agg_merger *merger;
        sem_t decode_slots; /* full-size delta buffers in flight at once */
        uint16_t port;
        char *tls_cert, *tls_key;
};

typedef struct {
        agg_server *srv;
        struct MHD_Connection *conn;
        agg_settings settings;
        char *body;
        size_t size, cap, limit;
        bool too_large, answered;
        char device[AGG_ID_HEX]; /* after authentication */
        char etag[96];           /* added to the response when set */
        int retry_after;         /* Retry-After when > 0 */
} agg_request;

/* Queues a response (takes ownership of body, malloc'd, may be NULL) with content type. */
enum MHD_Result agg_respond(agg_request *rq, unsigned status, const char *content_type,
                            char *body, size_t size);
/* {"error": reason, "message": ...}, counted under errors.<reason>. */
enum MHD_Result agg_respond_error(agg_request *rq, unsigned status, const char *reason,
                                  const char *fmt, ...) _printf_(4, 5);
/* Queues a jansson object (reference stolen) as JSON. */
struct json_t;
enum MHD_Result agg_respond_json(agg_request *rq, unsigned status, struct json_t *j);

/* Checks the bearer credentials and the rate limit; on failure has answered already. */
bool agg_authenticate(agg_request *rq);

enum MHD_Result agg_api_enroll(agg_request *rq);
enum MHD_Result agg_api_task(agg_request *rq);
enum MHD_Result agg_api_model(agg_request *rq, const char *version);
enum MHD_Result agg_api_update(agg_request *rq);
enum MHD_Result agg_api_telemetry(agg_request *rq);
enum MHD_Result agg_api_peers(agg_request *rq); /* peers.c */
enum MHD_Result agg_api_student(agg_request *rq, const char *rest); /* student-api.c */

/* Serves the content-addressed file at path (ETag the sha, If-None-Match, one Range);
 * 404 with the message gone when it is not there. */
enum MHD_Result agg_serve_blob(agg_request *rq, const char *path, const char *sha,
                               const char *gone);
enum MHD_Result agg_api_metrics(agg_request *rq);
enum MHD_Result agg_api_status_page(agg_request *rq);

/* The status page HTML (malloc'd). */
int agg_status_page_render(agg_store *s, agg_metrics *m, char **ret, size_t *ret_size);
