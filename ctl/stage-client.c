/* SPDX-License-Identifier: MIT */
#include "stage-client.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stage-wire.h"
#include "stage.h"

#define INFO_MAX (64 * 1024)
#define REPLY_MAX (STAGE_WIRE_HEADER + (size_t) 4096 * 4096 * sizeof(float))

typedef struct {
        char *buf;
        size_t size, limit;
        int overflow;
} sink;

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
        sink *s = ud;
        size_t k = size * n;
        if (s->size + k > s->limit) {
                s->overflow = 1;
                return 0; /* aborts the transfer */
        }
        char *b = realloc(s->buf, s->size + k + 1);
        if (!b)
                return 0;
        memcpy(b + s->size, p, k);
        s->buf = b;
        s->size += k;
        s->buf[s->size] = 0;
        return k;
}

static void seterr(char *err, size_t size, const char *fmt, ...) {
        va_list ap;
        if (!err || !size)
                return;
        va_start(ap, fmt);
        vsnprintf(err, size, fmt, ap);
        va_end(ap);
}

/* One request; the reply body in *out (NUL-terminated), the HTTP status in *ret_status. */
static int http(CURL *c, const char *url, const char *token, const void *body, size_t body_size,
                long timeout_s, sink *out, long *ret_status, char *err, size_t err_size) {
        struct curl_slist *h = NULL;
        char auth[600];
        CURLcode cc;

        curl_easy_reset(c);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token ? token : "");
        h = curl_slist_append(h, auth);
        if (body)
                h = curl_slist_append(h, "Content-Type: application/octet-stream");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        if (body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_size);
        }
        cc = curl_easy_perform(c);
        curl_slist_free_all(h);
        explicit_bzero(auth, sizeof(auth));
        if (cc != CURLE_OK) {
                seterr(err, err_size, "%s: %s", url, out->overflow ? "reply too large" : curl_easy_strerror(cc));
                return -EHOSTUNREACH;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, ret_status);
        return 0;
}

/* {"error":..., "message":...} of a failed call, for the person reading. */
static void error_reply(const sink *s, long status, const char *url, char *err, size_t err_size) {
        json_t *j = s->buf ? json_loadb(s->buf, s->size, 0, NULL) : NULL;
        const char *word = json_string_value(json_object_get(j, "error"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        seterr(err, err_size, "%s: HTTP %ld %s%s%s", url, status, word ? word : "", msg ? ": " : "",
               msg ? msg : "");
        json_decref(j);
}

static int get_int(json_t *o, const char *key, long long min, long long max, long long *ret) {
        json_t *v = json_object_get(o, key);
        if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
                return -EBADMSG;
        *ret = json_integer_value(v);
        return 0;
}

int stage_client_info(const char *url, const char *token, stage_peer_info *ret, char *err,
                      size_t err_size) {
        CURL *c = curl_easy_init();
        sink s = { .limit = INFO_MAX };
        char full[1024];
        long status = 0;
        long long v[8];
        int r;

        if (!c)
                return -ENOMEM;
        snprintf(full, sizeof(full), "%s/v1/stage/info", url);
        r = http(c, full, token, NULL, 0, 10, &s, &status, err, err_size);
        curl_easy_cleanup(c);
        if (r == 0 && status != 200) {
                error_reply(&s, status, url, err, err_size);
                r = status == 401 ? -EACCES : -EHOSTUNREACH;
        }
        json_t *j = r == 0 ? json_loadb(s.buf ? s.buf : "", s.size, 0, NULL) : NULL;
        json_t *cfg = json_object_get(j, "config");
        json_t *speed = json_object_get(j, "speed");
        const char *name = json_string_value(json_object_get(cfg, "name"));
        if (r == 0 &&
            (get_int(j, "version", 0, INT64_MAX, &v[0]) < 0 || get_int(cfg, "block_size", 1, 4096, &v[1]) < 0 ||
             get_int(cfg, "n_embd", 1, 4096, &v[2]) < 0 || get_int(cfg, "n_layer", 1, 64, &v[3]) < 0 ||
             get_int(cfg, "n_head", 1, 4096, &v[4]) < 0 || get_int(j, "memory_bytes", 0, INT64_MAX, &v[5]) < 0 ||
             get_int(j, "used_bytes", 0, INT64_MAX, &v[6]) < 0 || get_int(j, "sessions", 0, 1 << 20, &v[7]) < 0 ||
             !json_is_number(speed) || !(json_number_value(speed) > 0) || !name)) {
                seterr(err, err_size, "%s: the info reply is malformed", url);
                r = -EBADMSG;
        }
        if (r == 0) {
                *ret = (stage_peer_info){ .version = (uint64_t) v[0], .speed = json_number_value(speed),
                                          .memory_bytes = (uint64_t) v[5], .used_bytes = (uint64_t) v[6],
                                          .sessions = (int) v[7],
                                          .paused = json_is_true(json_object_get(j, "paused")) };
                snprintf(ret->cfg.name, sizeof(ret->cfg.name), "%s", name);
                ret->cfg.block_size = (int) v[1];
                ret->cfg.n_embd = (int) v[2];
                ret->cfg.n_layer = (int) v[3];
                ret->cfg.n_head = (int) v[4];
                /* older servers do not say: they hold every layer */
                json_t *fj = json_object_get(j, "first"), *lj = json_object_get(j, "last");
                ret->first = json_is_integer(fj) ? (int) json_integer_value(fj) : 0;
                ret->last = json_is_integer(lj) ? (int) json_integer_value(lj) : ret->cfg.n_layer - 1;
                if (ret->first < 0 || ret->last < ret->first || ret->last >= ret->cfg.n_layer) {
                        seterr(err, err_size, "%s: holds an impossible span of layers", url);
                        r = -EBADMSG;
                } else if (model_config_validate(&ret->cfg) < 0) {
                        seterr(err, err_size, "%s: serves an invalid model", url);
                        r = -EBADMSG;
                }
        }
        json_decref(j);
        free(s.buf);
        return r;
}

char *stage_client_identity_credentials(const char *path) {
        json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        const char *id = json_string_value(json_object_get(j, "device_id"));
        const char *secret = json_string_value(json_object_get(j, "secret"));
        char *r = NULL;
        if (!id || !secret || strlen(id) > 64 || strlen(secret) > 128 || asprintf(&r, "%s:%s", id, secret) < 0)
                r = NULL;
        if (secret)
                explicit_bzero((char *) secret, strlen(secret));
        json_decref(j);
        return r;
}

int stage_client_fleet_peers(const char *fleet, const char *credentials, uint64_t version,
                             char **ret_urls, int max, int *ret_n, char ret_token[65], char *err,
                             size_t err_size) {
        CURL *c = curl_easy_init();
        sink s = { .limit = INFO_MAX * 4 };
        char full[1024];
        long status = 0;
        int r, n = 0;

        if (!c)
                return -ENOMEM;
        snprintf(full, sizeof(full), "%s/v1/peers?version=%" PRIu64, fleet, version);
        r = http(c, full, credentials, NULL, 0, 10, &s, &status, err, err_size);
        curl_easy_cleanup(c);
        if (r == 0 && status != 200) {
                error_reply(&s, status, fleet, err, err_size);
                r = -EHOSTUNREACH;
        }
        json_t *j = r == 0 ? json_loadb(s.buf ? s.buf : "", s.size, 0, NULL) : NULL;
        json_t *peers = json_object_get(j, "peers");
        if (r == 0 && !json_is_array(peers)) {
                seterr(err, err_size, "%s: the peers reply is malformed", fleet);
                r = -EBADMSG;
        }
        for (size_t i = 0; r == 0 && i < json_array_size(peers) && n < max; i++) {
                const char *u = json_string_value(json_object_get(json_array_get(peers, i), "url"));
                if (u && (!strncmp(u, "http://", 7) || !strncmp(u, "https://", 8)) && strlen(u) < 512)
                        ret_urls[n++] = strdup(u);
        }
        if (ret_token) {
                const char *t = json_string_value(json_object_get(j, "stage_token"));
                snprintf(ret_token, 65, "%s", r == 0 && t && strlen(t) == 64 ? t : "");
        }
        json_decref(j);
        if (s.buf)
                explicit_bzero(s.buf, s.size);
        free(s.buf);
        *ret_n = n;
        return r;
}

typedef struct {
        const stage_client_opts *o;
        const char *urls[PIPELINE_MAX_PEERS];
        CURL *curl[PIPELINE_MAX_PEERS]; /* one per peer: connections are reused */
} http_ctx;

static int http_call(void *ctx, int peer, uint64_t version, int first, int last, const void *req,
                     size_t req_size, void **ret, size_t *ret_size) {
        http_ctx *h = ctx;
        sink s = { .limit = REPLY_MAX };
        char url[1024], err[512], what[700];
        long status = 0;
        int r;

        snprintf(url, sizeof(url), "%s/v1/stage/%" PRIu64 "/%d-%d", h->urls[peer], version, first, last);
        r = http(h->curl[peer], url, h->o->token, req, req_size, 60, &s, &status, err, sizeof(err));
        if (r == 0 && status != 200) {
                error_reply(&s, status, h->urls[peer], err, sizeof(err));
                r = -EHOSTUNREACH;
        }
        if (r < 0) {
                free(s.buf);
                if (h->o->on_event) {
                        snprintf(what, sizeof(what), "peer lost: %s", err);
                        h->o->on_event(h->o->emit_ctx, what);
                }
                return r;
        }
        *ret = s.buf;
        *ret_size = s.size;
        return 0;
}

int stage_client_generate(const stage_client_opts *o, const uint8_t *prompt, size_t prompt_len,
                          uint8_t *out, size_t n_out, const sample_opts *so, pipeline_stats *ret_stats,
                          char *err, size_t err_size) {
        pipeline_opts po = { .call = http_call, .emit = o->emit };
        http_ctx h = { .o = o };
        stage_peer_info first = { 0 };
        int r, n = 0, orig[PIPELINE_MAX_PEERS];

        if (o->n_urls < 1) {
                seterr(err, err_size, "no peers");
                return -EINVAL;
        }
        for (int i = 0; i < o->n_urls && n < PIPELINE_MAX_PEERS; i++) {
                stage_peer_info pi;
                char why[512];
                if (stage_client_info(o->urls[i], o->token, &pi, why, sizeof(why)) < 0) {
                        if (o->on_event)
                                o->on_event(o->emit_ctx, why);
                        continue;
                }
                if (pi.paused) { /* it would refuse our session: leave it out of the plan */
                        if (o->on_event) {
                                snprintf(why, sizeof(why), "%s is paused; not using it", o->urls[i]);
                                o->on_event(o->emit_ctx, why);
                        }
                        continue;
                }
                if (n == 0)
                        first = pi;
                else if (pi.version != first.version || pi.cfg.n_layer != first.cfg.n_layer ||
                         pi.cfg.n_embd != first.cfg.n_embd || pi.cfg.block_size != first.cfg.block_size ||
                         pi.cfg.n_head != first.cfg.n_head)
                        continue; /* another model */
                h.urls[n] = o->urls[i];
                orig[n] = i;
                /* what the peer can still take for this model's layers and our session */
                uint64_t free_bytes = pi.memory_bytes > pi.used_bytes ? pi.memory_bytes - pi.used_bytes : 0;
                po.peers[n] = (stage_plan_peer){ .speed = pi.speed, .mem_bytes = pi.memory_bytes ? free_bytes : UINT64_MAX / 2 };
                if (o->equal_split)
                        po.peers[n] = (stage_plan_peer){ .speed = 1, .mem_bytes = UINT64_MAX / 2 };
                po.held[n] = (stage_plan_span){ .peer = n, .first = pi.first, .last = pi.last };
                if (pi.first != 0 || pi.last != pi.cfg.n_layer - 1)
                        po.fixed_spans = true;
                n++;
        }
        if (n == 0) {
                seterr(err, err_size, "no peer answered");
                return -EHOSTUNREACH;
        }
        po.cfg = first.cfg;
        po.version = first.version;
        po.n_peers = n;
        po.ctx = &h;
        /* the servers already hold every weight: plan on the caches they must add */
        po.cost = (stage_plan_cost){ .layer_bytes = stage_session_bytes(&first.cfg, 1) };
        for (int i = 0; i < n; i++)
                if (!(h.curl[i] = curl_easy_init())) {
                        r = -ENOMEM;
                        goto out;
                }
        po.emit_ctx = o->emit_ctx;
        r = pipeline_generate(&po, prompt, prompt_len, out, n_out, so, ret_stats);
        /* the plan names peers as the caller listed them */
        for (int i = 0; ret_stats && i < ret_stats->n_stages; i++)
                ret_stats->plan[i].peer = orig[ret_stats->plan[i].peer];
        if (r == -EHOSTUNREACH)
                seterr(err, err_size, "the peers left cannot run the model");
        else if (r < 0)
                seterr(err, err_size, "generation failed: %s", strerror(-r));
out:
        for (int i = 0; i < n; i++)
                if (h.curl[i])
                        curl_easy_cleanup(h.curl[i]);
        return r;
}
