/* SPDX-License-Identifier: MIT */
/* GET /v1/peers?version=V: the stage servers of collaborative inference that devices
 * announced in their telemetry ("stage_url", "stage_version"), recently seen first, and the
 * fleet's stage token they accept. Only enrolled devices may ask (the list holds their
 * network addresses). */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server-internal.h"

#define PEERS_FRESH_S 600 /* telemetry older than this: the device may be gone */
#define PEERS_MAX 64

/* An announced URL is used by clients as given: only plain http(s)://host:port forms. */
static bool plausible_url(const char *u) {
        size_t n = strlen(u);
        if (n > 200 || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0))
                return false;
        for (const char *p = u; *p; p++)
                if (!(*p == ':' || *p == '/' || *p == '.' || *p == '-' || *p == '[' || *p == ']' ||
                      (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
                        return false;
        return true;
}

enum MHD_Result agg_api_peers(agg_request *rq) {
        const char *vs = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "version");
        unsigned long long want = 0;
        agg_device *d = NULL;
        size_t n = 0;
        char *end;

        if (!agg_authenticate(rq))
                return MHD_YES;
        if (vs && *vs) {
                errno = 0;
                want = strtoull(vs, &end, 10);
                if (errno || *end || *vs == '-')
                        return agg_respond_error(rq, MHD_HTTP_BAD_REQUEST, "bad-request",
                                                 "version must be a whole number");
        }
        if (agg_store_list_devices(rq->srv->store, &d, &n) < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                         "cannot read the devices");
        json_t *list = json_array();
        int64_t now = (int64_t) time(NULL);
        for (size_t i = 0; list && i < n && json_array_size(list) < PEERS_MAX; i++) {
                if (!d[i].telemetry || now - d[i].telemetry_at > PEERS_FRESH_S)
                        continue;
                json_t *t = json_loads(d[i].telemetry, 0, NULL);
                const char *url = json_string_value(json_object_get(t, "stage_url"));
                json_t *v = json_object_get(t, "stage_version");
                if (url && plausible_url(url) && json_is_integer(v) && json_integer_value(v) >= 0 &&
                    (!want || (unsigned long long) json_integer_value(v) == want))
                        json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:I}", "url", url,
                                                              "device", d[i].id, "version",
                                                              json_integer_value(v), "seen_at",
                                                              (json_int_t) d[i].telemetry_at));
                json_decref(t);
        }
        agg_devices_free(d, n);
        if (!list)
                return MHD_NO;
        /* and the fleet's stage token they accept, so edgectl generate --fleet needs one call */
        json_t *j = json_pack("{s:o}", "peers", list);
        const char *stage_token = agg_store_stage_token(rq->srv->store);
        if (j && stage_token)
                json_object_set_new(j, "stage_token", json_string(stage_token));
        return agg_respond_json(rq, MHD_HTTP_OK, j);
}
