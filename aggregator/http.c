/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"
#include "server-internal.h"
#include "time-util.h"

#define DEFAULT_LISTEN "127.0.0.1:8080"
#define CONNECTION_TIMEOUT_S 120

int agg_parse_listen(const char *s, struct sockaddr_storage *ret, unsigned *ret_len,
                     bool *ret_loopback) {
        char host[128];
        const char *colon;
        char *end;
        long port;

        memset(ret, 0, sizeof(*ret));
        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                if (!close || close[1] != ':' || (size_t) (close - s - 1) >= sizeof(host))
                        return -EINVAL;
                snprintf(host, sizeof(host), "%.*s", (int) (close - s - 1), s + 1);
                colon = close + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon || (size_t) (colon - s) >= sizeof(host))
                        return -EINVAL;
                snprintf(host, sizeof(host), "%.*s", (int) (colon - s), s);
        }
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
                return -EINVAL;
        struct sockaddr_in *in4 = (struct sockaddr_in *) ret;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ret;
        if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
                in4->sin_family = AF_INET;
                in4->sin_port = htons((uint16_t) port);
                *ret_len = sizeof(*in4);
                *ret_loopback = (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
        } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t) port);
                *ret_len = sizeof(*in6);
                *ret_loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
        } else
                return -EINVAL;
        return 0;
}

enum MHD_Result agg_respond(agg_request *rq, unsigned status, const char *content_type,
                            char *body, size_t size) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(size, body ? body : (char *) "",
                                               body ? MHD_RESPMEM_MUST_FREE
                                                    : MHD_RESPMEM_PERSISTENT);
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        if (content_type)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
        if (rq->etag[0])
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, rq->etag);
        if (rq->retry_after > 0) {
                char v[16];
                snprintf(v, sizeof(v), "%d", rq->retry_after);
                MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
        }
        ret = MHD_queue_response(rq->conn, status, resp);
        MHD_destroy_response(resp);
        agg_metrics_add(rq->srv->metrics, "http.bytes_sent", (int64_t) size);
        rq->answered = true;
        return ret;
}

enum MHD_Result agg_respond_json(agg_request *rq, unsigned status, json_t *j) {
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!s)
                return MHD_NO;
        size_t n = strlen(s);
        /* one trailing newline: friendlier for curl users */
        char *t = realloc(s, n + 2);
        if (t) {
                s = t;
                s[n++] = '\n';
                s[n] = 0;
        }
        return agg_respond(rq, status, "application/json", s, n);
}

enum MHD_Result agg_respond_error(agg_request *rq, unsigned status, const char *reason,
                                  const char *fmt, ...) {
        char msg[512], name[48];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        for (char *p = msg; *p; p++) /* truncation may split UTF-8; keep the JSON valid */
                if ((unsigned char) *p >= 0x80)
                        *p = '?';
        snprintf(name, sizeof(name), "errors.%s", reason);
        agg_metrics_add(rq->srv->metrics, name, 1);
        log_debug("%u %s: %s", status, reason, msg);
        return agg_respond_json(rq, status, json_pack("{s:s, s:s}", "error", reason, "message", msg));
}

bool agg_authenticate(agg_request *rq) {
        const char *h = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_AUTHORIZATION);
        char id[AGG_ID_HEX], secret[AGG_SECRET_HEX];
        const char *cred, *colon;
        int retry;

        if (!h || strncmp(h, "Bearer ", 7) != 0) {
                agg_respond_error(rq, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                                  "an Authorization: Bearer <device_id>:<secret> header is needed");
                return false;
        }
        cred = h + 7;
        colon = strchr(cred, ':');
        if (!colon || colon - cred != AGG_ID_HEX - 1 || strlen(colon + 1) != AGG_SECRET_HEX - 1) {
                agg_respond_error(rq, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                                  "malformed device credentials");
                return false;
        }
        memcpy(id, cred, AGG_ID_HEX - 1);
        id[AGG_ID_HEX - 1] = 0;
        memcpy(secret, colon + 1, AGG_SECRET_HEX);
        if (agg_store_auth(rq->srv->store, id, secret) < 0) {
                agg_respond_error(rq, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                                  "unknown device or wrong secret");
                return false;
        }
        memcpy(rq->device, id, sizeof(id));
        if (!agg_ratelimit_take(rq->srv->ratelimit, id, rq->settings.rate_per_s,
                                rq->settings.rate_burst, mono_now_s(), &retry)) {
                rq->retry_after = retry;
                agg_respond_error(rq, MHD_HTTP_TOO_MANY_REQUESTS, "rate-limited",
                                  "too many requests from this device; retry in %d s", retry);
                return false;
        }
        return true;
}

static enum MHD_Result route(agg_request *rq, const char *method, const char *url) {
        bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        bool post = !strcmp(method, "POST");

        if (!strcmp(url, "/v1/enroll"))
                return post ? agg_api_enroll(rq)
                            : agg_respond_error(rq, MHD_HTTP_METHOD_NOT_ALLOWED, "bad-request",
                                                "use POST");
        if (!strcmp(url, "/v1/update"))
                return post ? agg_api_update(rq)
                            : agg_respond_error(rq, MHD_HTTP_METHOD_NOT_ALLOWED, "bad-request",
                                                "use POST");
        if (!strcmp(url, "/v1/telemetry"))
                return post ? agg_api_telemetry(rq)
                            : agg_respond_error(rq, MHD_HTTP_METHOD_NOT_ALLOWED, "bad-request",
                                                "use POST");
        if (!get)
                return agg_respond_error(rq, MHD_HTTP_METHOD_NOT_ALLOWED, "bad-request",
                                         "%s is not allowed on %s", method, url);
        if (!strcmp(url, "/v1/task"))
                return agg_api_task(rq);
        if (!strncmp(url, "/v1/model/", 10))
                return agg_api_model(rq, url + 10);
        if (!strcmp(url, "/v1/student") || !strncmp(url, "/v1/student/", 12))
                return agg_api_student(rq, url + 11);
        if (!strcmp(url, "/v1/peers"))
                return agg_api_peers(rq);
        if (!strcmp(url, "/metrics"))
                return agg_api_metrics(rq);
        if (!strcmp(url, "/"))
                return agg_api_status_page(rq);
        return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found", "no such resource");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
        agg_server *srv = cls;
        agg_request *rq = *con_cls;

        if (!rq) {
                const char *cl;
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                rq->srv = srv;
                rq->conn = conn;
                *con_cls = rq;
                if (agg_store_load_settings(srv->store, &rq->settings) < 0)
                        return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                                 "cannot read the settings");
                rq->limit = !strcmp(url, "/v1/update") ? rq->settings.max_update_bytes
                                                        : AGG_MAX_CONTROL_BODY;
                cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
                /* refuse before reading a byte of an announced oversized body */
                if (cl && strtoull(cl, NULL, 10) > rq->limit) {
                        if (!strcmp(url, "/v1/update"))
                                agg_metrics_add(srv->metrics, "updates.too-large", 1);
                        return agg_respond_error(rq, MHD_HTTP_CONTENT_TOO_LARGE, "too-large",
                                                 "body of %s bytes; at most %zu accepted", cl,
                                                 rq->limit);
                }
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;
                log_debug("upload %zu bytes (have %zu, limit %zu)", n, rq->size, rq->limit);
                agg_metrics_add(srv->metrics, "http.bytes_received", (int64_t) n);
                *upload_data_size = 0;
                if (rq->answered || rq->too_large)
                        return MHD_YES; /* discard */
                if (rq->size + n > rq->limit) {
                        /* chunked bodies announce no length: stop storing at the limit */
                        rq->too_large = true;
                        free(rq->body);
                        rq->body = NULL;
                        return MHD_YES;
                }
                if (rq->size + n + 1 > rq->cap) {
                        size_t cap = MAX(rq->cap * 2, rq->size + n + 1);
                        cap = MIN(cap, rq->limit + 1);
                        char *b = realloc(rq->body, cap);
                        if (!b)
                                return MHD_NO;
                        rq->body = b;
                        rq->cap = cap;
                }
                memcpy(rq->body + rq->size, upload_data, n);
                rq->size += n;
                rq->body[rq->size] = 0;
                return MHD_YES;
        }
        if (rq->answered)
                return MHD_YES;
        if (rq->too_large) {
                if (!strcmp(url, "/v1/update"))
                        agg_metrics_add(srv->metrics, "updates.too-large", 1);
                return agg_respond_error(rq, MHD_HTTP_CONTENT_TOO_LARGE, "too-large",
                                         "body over %zu bytes", rq->limit);
        }
        return route(rq, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
        agg_request *rq = *con_cls;
        if (!rq)
                return;
        free(rq->body);
        free(rq);
        *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
        char buf[512];
        vsnprintf(buf, sizeof(buf), fmt, ap);
        buf[strcspn(buf, "\n")] = 0;
        log_warning("http: %s", buf);
}

int agg_server_start(agg_store *s, const agg_server_options *o, agg_server **ret) {
        const char *listen = o->listen ? o->listen : DEFAULT_LISTEN;
        struct sockaddr_storage sa;
        unsigned sa_len, flags;
        bool loopback;
        agg_server *srv;
        size_t n;
        int r;

        if (agg_parse_listen(listen, &sa, &sa_len, &loopback) < 0)
                return log_error_errno(EINVAL, "--listen: '%s' is not ADDR:PORT or [ADDR]:PORT",
                                       listen);
        if (!!o->tls_cert != !!o->tls_key)
                return log_error_errno(EINVAL, "--tls-cert and --tls-key go together");
        if (!loopback && !o->tls_cert && !o->insecure_public)
                return log_error_errno(EPERM,
                                       "%s is not a loopback address: device secrets would cross "
                                       "the network in clear; give --tls-cert and --tls-key (or "
                                       "--insecure-public behind a TLS proxy)",
                                       listen);
        srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        srv->store = s;
        sem_init(&srv->decode_slots, 0, 2);
        if ((r = agg_metrics_new(&srv->metrics)) < 0 || (r = agg_ratelimit_new(&srv->ratelimit)) < 0)
                goto fail;
        if (o->tls_cert) {
                void *buf;
                if ((r = read_full_file(o->tls_cert, 1 << 20, &buf, &n)) < 0) {
                        log_error_errno(r, "%s: cannot read the TLS certificate: %m", o->tls_cert);
                        goto fail;
                }
                srv->tls_cert = buf;
                if ((r = read_full_file(o->tls_key, 1 << 20, &buf, &n)) < 0) {
                        log_error_errno(r, "%s: cannot read the TLS key: %m", o->tls_key);
                        goto fail;
                }
                srv->tls_key = buf;
        }
        flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                MHD_USE_ERROR_LOG | (o->tls_cert ? MHD_USE_TLS : 0) |
                (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
        struct MHD_OptionItem opts[] = {
                /* the logger must come first to catch everything */
                { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) on_mhd_log, NULL },
                { MHD_OPTION_SOCK_ADDR, 0, &sa },
                { MHD_OPTION_CONNECTION_LIMIT, o->max_connections ? o->max_connections : 64, NULL },
                { MHD_OPTION_PER_IP_CONNECTION_LIMIT, 16, NULL },
                { MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S, NULL },
                { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) on_completed, NULL },
                { o->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, srv->tls_cert },
                { MHD_OPTION_HTTPS_MEM_KEY, 0, srv->tls_key },
                { MHD_OPTION_END, 0, NULL },
        };
        srv->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_ARRAY, opts,
                                    MHD_OPTION_END);
        if (!srv->mhd) {
                r = log_error_errno(EADDRNOTAVAIL, "cannot listen on %s (address in use, not "
                                                   "local, or TLS files invalid)",
                                    listen);
                goto fail;
        }
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
        srv->port = info ? info->port : 0;
        if (!o->no_merger && (r = agg_merger_start(s, srv->metrics, &srv->merger)) < 0)
                goto fail;
        *ret = srv;
        return 0;
fail:
        agg_server_stop(srv);
        return r;
}

uint16_t agg_server_port(const agg_server *srv) {
        return srv->port;
}

agg_metrics *agg_server_metrics(agg_server *srv) {
        return srv->metrics;
}

void agg_server_stop(agg_server *srv) {
        if (!srv)
                return;
        if (srv->mhd)
                MHD_stop_daemon(srv->mhd);
        agg_merger_stop(srv->merger);
        if (srv->metrics)
                agg_metrics_flush(srv->metrics, srv->store);
        agg_metrics_free(srv->metrics);
        agg_ratelimit_free(srv->ratelimit);
        sem_destroy(&srv->decode_slots);
        free(srv->tls_cert);
        free(srv->tls_key);
        free(srv);
}
