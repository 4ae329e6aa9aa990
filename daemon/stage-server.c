/* SPDX-License-Identifier: MIT */
#include "stage-server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "checkpoint.h"
#include "hash.h"
#include "log.h"
#include "macros.h"
#include "stage-host.h"
#include "stage-load.h"
#include "stage-wire.h"
#include "stage.h"
#include "time-util.h"

#define CONNECTION_TIMEOUT_S 30
#define MAX_CONNECTIONS 64
#define RELOAD_S 5.0
#define NO_MODEL_LIMIT ((size_t) 16 << 20)

struct stage_server {
        stage_server_opts o;
        char *listen, *token, *model_path, *state_dir, url[64];
        struct MHD_Daemon *mhd;
        pthread_mutex_t lock; /* host, model, paused */
        model *m;             /* parameters only: no gradients or activations */
        stage_weights span;   /* instead of m, with hold_span */
        stage_host *host;
        double speed;         /* layer-positions per second, measured at load */
        double last_load_try; /* a reload is tried at most every RELOAD_S */
        bool paused;
        char pause_reason[64];
        pthread_mutex_t token_lock; /* fleet_token: checked by every request */
        char fleet_token[65];       /* the aggregator's stage token, "" when none */
};

typedef struct {
        char *body;
        size_t size, cap, limit;
        bool too_large, answered;
} request;

static void model_params_free(model *m) {
        if (m)
                free(m->params);
        free(m);
}

/* Parameters alone, through the checkpoint loader's full validation. */
static int load_params(const char *path, model **ret, uint64_t *ret_version) {
        model_config cfg;
        ckpt_state cs;
        int r = ckpt_read_config(path, &cfg);
        if (r < 0)
                return r;
        model *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        model_layout_init(&m->layout, &cfg);
        m->params = malloc(m->layout.n_params * sizeof(float));
        if (!m->params) {
                free(m);
                return -ENOMEM;
        }
        model_tensors_bind(&m->p, &m->layout, m->params);
        r = ckpt_load(path, m, NULL, &cs);
        if (r < 0) {
                model_params_free(m);
                return r;
        }
        *ret = m;
        *ret_version = cs.model_version;
        return 0;
}

/* The federated task's newest model file, else the training checkpoint. */
static char *default_model_path(const char *state_dir) {
        DIR *d = opendir(state_dir);
        unsigned long long best = 0;
        bool found = false;
        char *p = NULL;
        struct dirent *de;

        for (int i = 0; d && i < 100000 && (de = readdir(d)); i++) {
                unsigned long long v;
                int len = 0;
                if (sscanf(de->d_name, "model-%llu.safetensors%n", &v, &len) == 1 &&
                    de->d_name[len] == 0 && (!found || v > best)) {
                        best = v;
                        found = true;
                }
        }
        if (d)
                closedir(d);
        if (found)
                return asprintf(&p, "%s/model-%llu.safetensors", state_dir, best) < 0 ? NULL : p;
        return asprintf(&p, "%s/checkpoint.safetensors", state_dir) < 0 ? NULL : p;
}

/* Positions through one layer per second, so planners can weigh this peer: a middle layer
 * of those held when there is one (no embedding or logits in the figure). */
static double measure_speed(const model_config *cfg, const model_tensors *p, int first, int last) {
        stage st;
        stage_session *ss = NULL;
        int C = cfg->n_embd, n = cfg->block_size < 16 ? cfg->block_size : 16;
        int layer = first == 0 && last > first ? first + 1 : first;
        float *x = calloc((size_t) n * C, sizeof(float)), *y = calloc((size_t) n * C, sizeof(float));
        double speed = 0;

        if (x && y && layer < cfg->n_layer - 1 && stage_init(&st, cfg, p, layer, layer) == 0 &&
            stage_session_new(&st, &ss) == 0) {
                double t0 = mono_now_s();
                if (stage_forward(&st, ss, 0, x, n, y) == 0 && mono_now_s() > t0)
                        speed = n / (mono_now_s() - t0);
        }
        stage_session_free(ss);
        free(x);
        free(y);
        return speed > 0 ? speed : 1.0;
}

/* hold_span: only the span's tensors, loaded once. */
static int ensure_span(stage_server *s, const char *path) {
        stage_host *h = NULL;
        int r;

        if (s->host)
                return -ENOENT;
        r = stage_load_span(path, s->o.first, s->o.last, &s->span);
        if (r < 0)
                return r;
        stage_host_limits lim = { .max_bytes = s->o.max_bytes, .idle_timeout_s = s->o.idle_timeout_s,
                                  .max_sessions = s->o.max_sessions };
        r = stage_host_new(&s->span.cfg, &s->span.p, s->span.version, s->span.bytes, &lim, &h);
        if (r >= 0)
                r = stage_host_hold(h, s->o.first, s->o.last);
        if (r < 0) {
                stage_host_free(h);
                stage_weights_done(&s->span);
                return r;
        }
        s->host = h;
        s->speed = measure_speed(&s->span.cfg, &s->span.p, s->o.first, s->o.last);
        log_info("inference: serving layers %d-%d of %s (version %" PRIu64 ", %zu MiB)", s->o.first,
                 s->o.last, path, s->span.version, s->span.bytes >> 20);
        return 0;
}

/* With the lock held: makes the host serve the current model file, if it changed. */
static int ensure_model(stage_server *s, uint64_t want_version) {
        _cleanup_free_ char *path = s->model_path ? strdup(s->model_path) : default_model_path(s->state_dir);
        model *m = NULL;
        stage_host *h = NULL;
        uint64_t version;
        int r;

        if (s->host && (want_version == UINT64_MAX || stage_host_version(s->host) == want_version))
                return 0;
        if (!path)
                return -ENOMEM;
        /* a request for another version must not make every call read the file again */
        if (s->host && mono_now_s() - s->last_load_try < RELOAD_S)
                return -ENOENT;
        s->last_load_try = mono_now_s();
        if (s->o.hold_span)
                return ensure_span(s, path);
        r = load_params(path, &m, &version);
        if (r < 0)
                return r;
        if (s->host && version == stage_host_version(s->host)) {
                model_params_free(m); /* the same model: keep its sessions */
                return -ENOENT;
        }
        size_t weights = m->layout.n_params * sizeof(float);
        stage_host_limits lim = { .max_bytes = s->o.max_bytes, .idle_timeout_s = s->o.idle_timeout_s,
                                  .max_sessions = s->o.max_sessions };
        r = stage_host_new(&m->layout.cfg, &m->p, version, weights, &lim, &h);
        if (r < 0) {
                model_params_free(m);
                return r;
        }
        stage_host_free(s->host);
        model_params_free(s->m);
        s->host = h;
        s->m = m;
        s->speed = measure_speed(&m->layout.cfg, &m->p, 0, m->layout.cfg.n_layer - 1);
        log_info("inference: serving %s (version %" PRIu64 ", %s, %.0f layer-positions/s)", path,
                 version, m->layout.cfg.name, s->speed);
        return 0;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               void *body, size_t size) {
        struct MHD_Response *resp =
                MHD_create_response_from_buffer(size, body ? body : (char *) "",
                                                body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        enum MHD_Result ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result respond_json(struct MHD_Connection *c, unsigned status, json_t *j) {
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!text)
                return MHD_NO;
        return respond(c, status, "application/json", text, strlen(text));
}

static enum MHD_Result respond_error(struct MHD_Connection *c, unsigned status, const char *word,
                                     const char *message) {
        return respond_json(c, status, json_pack("{s:s, s:s}", "error", word, "message", message));
}

/* Constant-time, so a token cannot be guessed byte by byte from timings: Token= (or the
 * device secret), or the fleet's stage token from the aggregator's task. */
static bool authorized(stage_server *s, struct MHD_Connection *c) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        char fleet[sizeof(s->fleet_token)];
        bool ok;

        if (!h || strncmp(h, "Bearer ", 7) != 0 || !h[7])
                return false;
        pthread_mutex_lock(&s->token_lock);
        memcpy(fleet, s->fleet_token, sizeof(fleet));
        pthread_mutex_unlock(&s->token_lock);
        ok = hash_equal_consttime(h + 7, s->token);
        ok |= fleet[0] && hash_equal_consttime(h + 7, fleet);
        explicit_bzero(fleet, sizeof(fleet));
        return ok;
}

static enum MHD_Result info(stage_server *s, struct MHD_Connection *c) {
        json_t *j;
        pthread_mutex_lock(&s->lock);
        int r = ensure_model(s, UINT64_MAX);
        if (r < 0) {
                pthread_mutex_unlock(&s->lock);
                return respond_error(c, 503, "no-model", "no model to serve yet");
        }
        const model_config *cfg = stage_host_config(s->host);
        size_t used = stage_host_bytes(s->host);
        j = json_pack("{s:I, s:{s:s, s:i, s:i, s:i, s:i}, s:f, s:I, s:I, s:I, s:I, s:i, s:b, s:s}",
                      "version", (json_int_t) stage_host_version(s->host), "config", "name", cfg->name,
                      "block_size", cfg->block_size, "n_embd", cfg->n_embd, "n_layer", cfg->n_layer,
                      "n_head", cfg->n_head, "speed", s->speed, "memory_bytes",
                      (json_int_t) s->o.max_bytes, "used_bytes", (json_int_t) used, "weight_bytes",
                      (json_int_t) (s->m ? s->m->layout.n_params * sizeof(float) : s->span.bytes), "session_bytes_per_layer",
                      (json_int_t) stage_session_bytes(cfg, 1), "sessions",
                      stage_host_n_sessions(s->host), "paused", s->paused, "reason",
                      s->paused ? s->pause_reason : "");
        /* the layers this server holds (all of them unless Layers= says otherwise) */
        if (j) {
                json_object_set_new(j, "first", json_integer(s->o.hold_span ? s->o.first : 0));
                json_object_set_new(j, "last", json_integer(s->o.hold_span ? s->o.last : cfg->n_layer - 1));
        }
        pthread_mutex_unlock(&s->lock);
        return respond_json(c, 200, j);
}

static enum MHD_Result stage_post(stage_server *s, struct MHD_Connection *c, const char *url,
                                  const request *rq) {
        unsigned long long version;
        int first, last, len = 0;
        stage_reply rep;

        if (sscanf(url, "/v1/stage/%llu/%d-%d%n", &version, &first, &last, &len) != 3 || url[len] ||
            first < 0 || last < first || last > 65535)
                return respond_error(c, 404, "not-found", "expected /v1/stage/{version}/{first}-{last}");
        pthread_mutex_lock(&s->lock);
        if (ensure_model(s, version) < 0 && !s->host) {
                pthread_mutex_unlock(&s->lock);
                return respond_error(c, 503, "no-model", "no model to serve yet");
        }
        stage_host_handle(s->host, version, first, last, rq->body, rq->size, !s->paused,
                          mono_now_s(), &rep);
        pthread_mutex_unlock(&s->lock);
        if (rep.status != 200) {
                if (rep.status == 503 && strcmp(rep.reason, "paused") == 0) {
                        char msg[128];
                        snprintf(msg, sizeof(msg), "%s (%s)", rep.detail, s->pause_reason);
                        return respond_error(c, 503, rep.reason, msg);
                }
                return respond_error(c, rep.status, rep.reason, rep.detail);
        }
        return respond(c, 200, "application/octet-stream", rep.body, rep.size);
}

static void set_idle_priority(void) {
        static __thread bool done;
        struct sched_param sp = { 0 };
        if (!done && pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0)
                log_debug("inference: cannot run at SCHED_IDLE");
        done = true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
        stage_server *s = cls;
        request *rq = *con_cls;

        if (!rq) {
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                *con_cls = rq;
                /* the largest valid message for the model served: a full window of hidden
                 * states; before a model is there, a bound of NO_MODEL_LIMIT */
                pthread_mutex_lock(&s->lock);
                const model_config *cfg = s->host ? stage_host_config(s->host) : NULL;
                rq->limit = cfg ? STAGE_WIRE_HEADER + (size_t) cfg->block_size * cfg->n_embd * sizeof(float)
                                : NO_MODEL_LIMIT;
                pthread_mutex_unlock(&s->lock);
                const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
                if (cl && strtoull(cl, NULL, 10) > rq->limit)
                        rq->too_large = true; /* refused once the request is complete */
                return MHD_YES;
        }
        if (*upload_size > 0) {
                size_t n = *upload_size;
                *upload_size = 0;
                if (rq->too_large || rq->size + n > rq->limit) {
                        rq->too_large = true;
                        return MHD_YES;
                }
                if (rq->size + n > rq->cap) {
                        size_t cap = MAX(rq->cap * 2, rq->size + n);
                        char *b = realloc(rq->body, MIN(cap, rq->limit));
                        if (!b)
                                return MHD_NO;
                        rq->body = b;
                        rq->cap = MIN(cap, rq->limit);
                }
                memcpy(rq->body + rq->size, upload, n);
                rq->size += n;
                return MHD_YES;
        }
        if (rq->answered)
                return MHD_YES;
        rq->answered = true;
        set_idle_priority();
        if (!authorized(s, c))
                return respond_error(c, 401, "unauthorized", "a valid bearer token is required");
        if (rq->too_large)
                return respond_error(c, 413, "too-large", "body larger than any stage message");
        if (!strcmp(url, "/v1/stage/info"))
                return !strcmp(method, "GET") ? info(s, c)
                                              : respond_error(c, 405, "bad-request", "use GET");
        if (!strncmp(url, "/v1/stage/", 10))
                return !strcmp(method, "POST") ? stage_post(s, c, url, rq)
                                               : respond_error(c, 405, "bad-request", "use POST");
        return respond_error(c, 404, "not-found", "no such resource");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
        request *rq = *con_cls;
        if (rq)
                free(rq->body);
        free(rq);
        *con_cls = NULL;
}

static int parse_listen(const char *s, struct sockaddr_in *ret) {
        char host[32];
        unsigned port;
        int len = 0;

        memset(ret, 0, sizeof(*ret));
        if (sscanf(s, "%31[0-9.]:%u%n", host, &port, &len) != 2 || s[len] || port > 65535 ||
            inet_pton(AF_INET, host, &ret->sin_addr) != 1)
                return -EINVAL;
        ret->sin_family = AF_INET;
        ret->sin_port = htons((uint16_t) port);
        return 0;
}

int stage_server_start(const stage_server_opts *o, stage_server **ret) {
        struct sockaddr_in sa;
        int r;

        if (!o->listen || parse_listen(o->listen, &sa) < 0)
                return log_error_errno(EINVAL, "inference: ListenAddress=%s is not ADDR:PORT",
                                       o->listen ? o->listen : "");
        if (!o->token || !*o->token)
                return log_error_errno(EPERM, "inference: no Token= and no fleet identity: "
                                              "refusing to serve unauthenticated");
        stage_server *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->o = *o;
        s->listen = strdup(o->listen);
        s->token = strdup(o->token);
        s->state_dir = strdup(o->state_dir ? o->state_dir : ".");
        s->model_path = o->model_path ? strdup(o->model_path) : NULL;
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->token_lock, NULL);
        snprintf(s->url, sizeof(s->url), "http://%s", o->listen);
        if (!s->listen || !s->token || !s->state_dir || (o->model_path && !s->model_path)) {
                stage_server_stop(s);
                return -ENOMEM;
        }
        pthread_mutex_lock(&s->lock);
        r = ensure_model(s, UINT64_MAX);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                log_info("inference: no model to serve yet; looking again on the first request");
        s->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                  on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
                                  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) CONNECTION_TIMEOUT_S,
                                  MHD_OPTION_CONNECTION_LIMIT, (unsigned) MAX_CONNECTIONS,
                                  MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
        if (!s->mhd) {
                stage_server_stop(s);
                return log_error_errno(EADDRINUSE, "inference: cannot listen on %s", o->listen);
        }
        log_info("inference: serving stages on %s", s->url);
        *ret = s;
        return 0;
}

void stage_server_set_paused(stage_server *s, bool paused, const char *reason) {
        if (!s)
                return;
        pthread_mutex_lock(&s->lock);
        s->paused = paused;
        snprintf(s->pause_reason, sizeof(s->pause_reason), "%s", reason ? reason : "");
        if (s->host)
                stage_host_expire(s->host, mono_now_s());
        pthread_mutex_unlock(&s->lock);
}

void stage_server_set_fleet_token(stage_server *s, const char *token) {
        if (!s)
                return;
        pthread_mutex_lock(&s->token_lock);
        snprintf(s->fleet_token, sizeof(s->fleet_token), "%s",
                 token && strlen(token) < sizeof(s->fleet_token) ? token : "");
        pthread_mutex_unlock(&s->token_lock);
}

void stage_server_stop(stage_server *s) {
        if (!s)
                return;
        if (s->mhd)
                MHD_stop_daemon(s->mhd);
        stage_host_free(s->host);
        model_params_free(s->m);
        stage_weights_done(&s->span);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->token_lock);
        explicit_bzero(s->fleet_token, sizeof(s->fleet_token));
        if (s->token)
                explicit_bzero(s->token, strlen(s->token));
        free(s->token);
        free(s->listen);
        free(s->state_dir);
        free(s->model_path);
        free(s);
}

const char *stage_server_url(const stage_server *s) {
        return s ? s->url : NULL;
}

int stage_server_version(stage_server *s, uint64_t *ret) {
        int r = -ENOENT;
        if (!s)
                return r;
        pthread_mutex_lock(&s->lock);
        if (s->host) {
                *ret = stage_host_version(s->host);
                r = 0;
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

char *stage_server_identity_secret(const char *state_dir) {
        char path[4096];
        json_error_t e;
        snprintf(path, sizeof(path), "%s/identity", state_dir);
        json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
        const char *secret = json_string_value(json_object_get(j, "secret"));
        char *r = secret && *secret ? strdup(secret) : NULL;
        json_decref(j);
        return r;
}
