/* SPDX-License-Identifier: MIT */
/* The /v1 handlers of docs/federation-protocol.md. Each validates everything it reads and
 * answers with the reasons the document lists. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobs.h"
#include "log.h"
#include "macros.h"
#include "server-internal.h"
#include "student.h"
#include "update-codec.h"

#define AGG_BACKLOG_FACTOR 4  /* updates waiting, in buffers of K, before devices are told to wait */
#define AGG_BACKLOG_RETRY_S 10
#define AGG_DISK_FULL_RETRY_S 60 /* a hint: space comes back when an admin makes room */

static const char *header(agg_request *rq, const char *name) {
        return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

/* The float's shortest decimal as a double: 0.001f is sent as 0.001, not 0.0010000000475. */
static double f2d(float x) {
        char b[32];
        snprintf(b, sizeof(b), "%.7g", (double) x);
        return strtod(b, NULL);
}

static bool disk_full(int r) {
        return r == -ENOSPC || r == -EDQUOT;
}

/* A write the store refused: 507 disk-full when the disk (or quota) is full, so admins and
 * devices can tell it from a passing failure; 503 storage otherwise. Nothing acknowledged is
 * touched either way: the failed transaction is rolled back. */
static enum MHD_Result storage_error(agg_request *rq, int r, const char *what) {
        if (disk_full(r)) {
                rq->retry_after = AGG_DISK_FULL_RETRY_S;
                return agg_respond_error(rq, MHD_HTTP_INSUFFICIENT_STORAGE, "disk-full",
                                         "the server's disk is full: cannot store %s now", what);
        }
        return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage", "cannot store %s now",
                                 what);
}

static bool printable_utf8ish(const char *s, size_t max) {
        size_t n = 0;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++, n++)
                if (*p < 0x20 || *p == 0x7f || n >= max)
                        return false;
        return true;
}

enum MHD_Result agg_api_enroll(agg_request *rq) {
        char id[AGG_ID_HEX], secret[AGG_SECRET_HEX];
        const char *token = NULL, *name = NULL;
        json_error_t jerr;
        json_t *j;
        int r;

        j = rq->body ? json_loadb(rq->body, rq->size, 0, &jerr) : NULL;
        if (!j || json_unpack(j, "{s:s, s?s}", "token", &token, "name", &name) < 0) {
                json_decref(j);
                return agg_respond_error(rq, MHD_HTTP_BAD_REQUEST, "bad-request",
                                         "expected {\"token\": \"...\", \"name\": \"...\"}");
        }
        if (name && !printable_utf8ish(name, 127)) {
                json_decref(j);
                return agg_respond_error(rq, MHD_HTTP_BAD_REQUEST, "bad-request",
                                         "name: at most 127 printable characters");
        }
        r = agg_store_enroll(rq->srv->store, token, name, id, secret);
        json_decref(j);
        if (r == -EACCES)
                return agg_respond_error(rq, MHD_HTTP_UNAUTHORIZED, "bad-token",
                                         "unknown, expired or used-up enrolment token");
        if (r < 0)
                return storage_error(rq, r, "the device");
        log_info("enrolled device %s", id);
        return agg_respond_json(rq, MHD_HTTP_CREATED,
                                json_pack("{s:s, s:s}", "device_id", id, "secret", secret));
}

enum MHD_Result agg_api_task(agg_request *rq) {
        const agg_settings *s = &rq->settings;
        _cleanup_free_ char *path = NULL;
        const char *inm;
        agg_student stu;
        agg_version cur;
        agg_lr_schedule sched;
        agg_budget_params budget;
        double speed;
        bool round_open;
        int local_steps;
        struct stat st;
        json_t *j, *pol;

        if (!agg_authenticate(rq))
                return MHD_YES;
        /* the fleet's learning rate (agg_lr_position); the version is in the ETag */
        agg_settings_lr_schedule(s, &sched);
        /* this device's step budget from its measured speed; the task request opens its
         * round (the update ends it), unless one is open already */
        agg_settings_budget(s, &budget);
        if (agg_store_device_pace(rq->srv->store, rq->device, &speed, &round_open) < 0) {
                speed = NAN; /* not measured: LocalSteps */
                round_open = true;
        }
        local_steps = agg_round_budget(&budget, speed);
        if (!round_open && agg_store_round_begin(rq->srv->store, rq->device, local_steps) < 0)
                log_debug("device %s: the round's start not recorded", rq->device);
        if (agg_store_current_version(rq->srv->store, &cur) < 0 ||
            agg_blob_path(agg_store_dir(rq->srv->store), cur.blob, &path) < 0 || stat(path, &st) < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                         "the current model is not readable");
        /* a newly published student changes the task too */
        bool student = agg_student_read(agg_store_dir(rq->srv->store), &stu) >= 0;
        /* a per-device budget is part of the task too: "-s<steps>" when RoundSeconds is on */
        char steps_tag[24] = "";
        if (s->round_seconds > 0)
                snprintf(steps_tag, sizeof(steps_tag), "-s%d", local_steps);
        snprintf(rq->etag, sizeof(rq->etag), "\"%" PRIu64 "-%" PRIu64 "%s%s%.12s\"", cur.version,
                 s->generation, steps_tag, student ? "-" : "", student ? stu.sha : "");
        inm = header(rq, MHD_HTTP_HEADER_IF_NONE_MATCH);
        if (inm && (!strcmp(inm, rq->etag) || !strcmp(inm, "*")))
                return agg_respond(rq, MHD_HTTP_NOT_MODIFIED, NULL, NULL, 0);
        pol = json_object();
        for (size_t i = 0; i < s->n_policy; i++)
                json_object_set_new(pol, s->policy_key[i], json_string(s->policy_value[i]));
        j = json_pack("{s:I, s:s, s:{s:i, s:i, s:i, s:i}, s:s, s:I, s:i, s:i, s:f, s:f, s:s, s:f, "
                      "s:i, s:i, s:o}",
                      "version", (json_int_t) cur.version, "model", s->cfg.name, "config",
                      "block_size", s->cfg.block_size, "n_embd", s->cfg.n_embd, "n_layer",
                      s->cfg.n_layer, "n_head", s->cfg.n_head, "model_sha256", cur.blob,
                      "model_bytes", (json_int_t) st.st_size, "local_steps", local_steps,
                      "batch", s->batch, "lr",
                      f2d(agg_lr_at(&sched, agg_lr_position(cur.merged_tokens, s->buffer_size,
                                                            s->local_steps, s->batch,
                                                            s->cfg.block_size))),
                      "weight_decay",
                      f2d(s->weight_decay), "encoding", upd_encoding_to_string(s->encoding),
                      "topk_fraction", f2d(s->topk_fraction), "max_staleness",
                      s->max_staleness, "report_interval_s", s->report_interval_s, "policy", pol);
        if (j && student)
                json_object_set_new(j, "student",
                                    json_pack("{s:s, s:s, s:I, s:I}", "model", stu.config,
                                              "model_sha256", stu.sha, "model_bytes",
                                              (json_int_t) stu.bytes, "teacher_version",
                                              (json_int_t) stu.teacher_version));
        /* the fleet's stage token: the stage servers of enrolled devices accept it */
        const char *stage_token = agg_store_stage_token(rq->srv->store);
        if (j && stage_token)
                json_object_set_new(j, "stage_token", json_string(stage_token));
        return agg_respond_json(rq, MHD_HTTP_OK, j);
}

enum MHD_Result agg_api_model(agg_request *rq, const char *vs) {
        _cleanup_free_ char *path = NULL;
        agg_version v;
        char *end, gone[64];

        if (!agg_authenticate(rq))
                return MHD_YES;
        errno = 0;
        unsigned long long version = strtoull(vs, &end, 10);
        if (errno || end == vs || *end || vs[0] == '-' || vs[0] == '+')
                return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found",
                                         "'%s' is not a version number", vs);
        if (agg_store_get_version(rq->srv->store, version, &v) < 0 ||
            agg_blob_path(agg_store_dir(rq->srv->store), v.blob, &path) < 0)
                return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found", "no version %llu",
                                         version);
        snprintf(gone, sizeof(gone), "version %llu has been pruned", version);
        return agg_serve_blob(rq, path, v.blob, gone);
}

enum MHD_Result agg_serve_blob(agg_request *rq, const char *path, const char *sha,
                               const char *gone) {
        const char *inm, *range;
        struct MHD_Response *resp;
        uint64_t off = 0, last;
        struct stat st;
        enum MHD_Result ret;
        unsigned status = MHD_HTTP_OK;
        char *end, buf[96];
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0) {
                if (fd >= 0)
                        close(fd);
                return agg_respond_error(rq, MHD_HTTP_NOT_FOUND, "not-found", "%s", gone);
        }
        snprintf(rq->etag, sizeof(rq->etag), "\"%s\"", sha);
        inm = header(rq, MHD_HTTP_HEADER_IF_NONE_MATCH);
        if (inm && (!strcmp(inm, rq->etag) || !strcmp(inm, "*"))) {
                close(fd);
                return agg_respond(rq, MHD_HTTP_NOT_MODIFIED, NULL, NULL, 0);
        }
        last = (uint64_t) st.st_size - 1;
        range = header(rq, MHD_HTTP_HEADER_RANGE);
        if (range && !strncmp(range, "bytes=", 6) && range[6] >= '0' && range[6] <= '9' &&
            !strchr(range, ',')) {
                unsigned long long a, b = last;
                errno = 0;
                a = strtoull(range + 6, &end, 10);
                bool ok = !errno && *end == '-';
                if (ok && end[1]) {
                        char *e2;
                        b = strtoull(end + 1, &e2, 10);
                        ok = !errno && !*e2 && b >= a;
                }
                if (ok) { /* a malformed Range is ignored (RFC 9110): the whole blob */
                        if (a >= (uint64_t) st.st_size) {
                                close(fd);
                                rq->etag[0] = 0;
                                return agg_respond_error(rq, MHD_HTTP_RANGE_NOT_SATISFIABLE,
                                                         "bad-request",
                                                         "range starts at %llu of %llu bytes", a,
                                                         (unsigned long long) st.st_size);
                        }
                        off = a;
                        last = MIN(b, (uint64_t) st.st_size - 1);
                        status = MHD_HTTP_PARTIAL_CONTENT;
                }
        }
        resp = MHD_create_response_from_fd_at_offset64(last - off + 1, fd, off);
        if (!resp) {
                close(fd);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, rq->etag);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "max-age=31536000, immutable");
        if (status == MHD_HTTP_PARTIAL_CONTENT) {
                snprintf(buf, sizeof(buf), "bytes %" PRIu64 "-%" PRIu64 "/%llu", off, last,
                         (unsigned long long) st.st_size);
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, buf);
        }
        ret = MHD_queue_response(rq->conn, status, resp);
        MHD_destroy_response(resp);
        agg_metrics_add(rq->srv->metrics, "http.bytes_sent", (int64_t) (last - off + 1));
        rq->answered = true;
        return ret;
}

static bool key_ok(const char *k) {
        size_t n = strlen(k);
        if (n < 1 || n > 64)
                return false;
        for (const char *p = k; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
                        return false;
        return true;
}

static bool parse_u64(const char *s, uint64_t *ret) {
        char *end;
        if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
                return false;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end)
                return false;
        *ret = v;
        return true;
}

_printf_(4, 5) static enum MHD_Result reject_update(agg_request *rq, unsigned status,
                                                    const char *reason, const char *fmt, ...) {
        char name[48], msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(name, sizeof(name), "updates.%s", reason);
        agg_metrics_add(rq->srv->metrics, name, 1);
        return agg_respond_error(rq, status, reason, "%s", msg);
}

static enum MHD_Result ack(agg_request *rq, bool dup, int64_t id, uint64_t version,
                           uint64_t staleness) {
        json_t *j = json_pack("{s:s, s:I, s:I}", "status", dup ? "duplicate" : "accepted",
                              "update_id", (json_int_t) id, "version", (json_int_t) version);
        if (j && !dup)
                json_object_set_new(j, "staleness", json_integer((json_int_t) staleness));
        return agg_respond_json(rq, MHD_HTTP_OK, j);
}

enum MHD_Result agg_api_update(agg_request *rq) {
        agg_store *store = rq->srv->store;
        const agg_settings *s = &rq->settings;
        _cleanup_free_ model_layout *lay = NULL;
        _cleanup_free_ float *delta = NULL;
        const char *key, *lossh;
        agg_update u = { .scale = 1.0, .loss = NAN };
        uint64_t steps = 0, staleness;
        agg_version cur, base;
        upd_info info;
        char err[256], detail[320];
        int64_t id;
        bool dup;
        int r;

        if (!agg_authenticate(rq))
                return MHD_YES;
        memcpy(u.device, rq->device, sizeof(u.device));
        key = header(rq, "Idempotency-Key");
        if (!key || !key_ok(key))
                return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-request", "%s",
                                     "Idempotency-Key: 1..64 characters of [A-Za-z0-9_-]");
        /* a resend is acknowledged whatever happened since: the device must not retry */
        if (agg_store_find_update(store, u.device, key, &id) == 0) {
                agg_metrics_add(rq->srv->metrics, "updates.duplicate", 1);
                if (agg_store_current_version(store, &cur) < 0)
                        return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage", "%s",
                                                 "cannot read the current version");
                return ack(rq, true, id, cur.version, 0);
        }
        if (!parse_u64(header(rq, "X-Edged-Base-Version"), &u.base_version) ||
            !parse_u64(header(rq, "X-Edged-Steps"), &steps) ||
            !parse_u64(header(rq, "X-Edged-Tokens"), &u.tokens) || u.tokens == 0 ||
            u.tokens > (1ull << 50) || steps > (1ull << 40))
                return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-request", "%s",
                                     "X-Edged-Base-Version, X-Edged-Steps and X-Edged-Tokens (> 0) "
                                     "must be whole numbers");
        u.steps = (int64_t) steps;
        lossh = header(rq, "X-Edged-Loss");
        if (lossh) {
                char *end;
                u.loss = strtod(lossh, &end);
                if (end == lossh || *end)
                        return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-request", "%s",
                                             "X-Edged-Loss is not a number");
        }
        if (agg_store_current_version(store, &cur) < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage", "%s",
                                         "cannot read the current version");
        if (u.base_version > cur.version ||
            agg_store_get_version(store, u.base_version, &base) < 0) {
                snprintf(detail, sizeof(detail), "%" PRIu64, u.base_version);
                return reject_update(rq, MHD_HTTP_CONFLICT, "unknown-base",
                                     "base version %s is not known here; fetch the task", detail);
        }
        staleness = cur.version - u.base_version;
        if (staleness > (uint64_t) s->max_staleness) {
                snprintf(detail, sizeof(detail), "%" PRIu64 " versions behind (at most %d)",
                         staleness, s->max_staleness);
                return reject_update(rq, MHD_HTTP_CONFLICT, "stale", "base version is %s", detail);
        }
        if (!rq->body || rq->size == 0)
                return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-encoding", "%s", "empty body");
        /* Backpressure: accepting faster than merges keep up only makes updates go stale and
         * be dropped later (bench/fed-ingest saw 64 % of acknowledged work wasted); a device
         * told to come back keeps its pending update and loses nothing. */
        int64_t pending = agg_store_count_pending(store);
        if (pending >= (int64_t) AGG_BACKLOG_FACTOR * s->buffer_size) {
                rq->retry_after = AGG_BACKLOG_RETRY_S;
                snprintf(detail, sizeof(detail), "%lld", (long long) pending);
                return reject_update(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "busy",
                                     "%s updates wait to be merged; retry later", detail);
        }

        lay = malloc(sizeof(*lay));
        if (!lay)
                return MHD_NO;
        model_layout_init(lay, &s->cfg);
        /* full-size buffers: bound how many requests hold one at once */
        sem_wait(&rq->srv->decode_slots);
        delta = malloc(lay->n_params * sizeof(float));
        r = delta ? upd_decode(rq->body, rq->size, lay, agg_max_raw_bytes(lay), delta, &info, err,
                               sizeof(err))
                  : -ENOMEM;
        free(TAKE_PTR(delta));
        sem_post(&rq->srv->decode_slots);
        switch (r) {
        case 0:
                break;
        case -EPROTO:
                return reject_update(rq, MHD_HTTP_UNPROCESSABLE_CONTENT, "wrong-shape", "%s", err);
        case -EDOM:
                return reject_update(rq, MHD_HTTP_UNPROCESSABLE_CONTENT, "not-finite", "%s", err);
        case -EFBIG:
                return reject_update(rq, MHD_HTTP_CONTENT_TOO_LARGE, "too-large", "%s", err);
        case -ENOMEM:
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage", "%s",
                                         "out of memory");
        default:
                return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-encoding", "%s",
                                     err[0] ? err : "malformed update body");
        }
        if (info.base_version != u.base_version)
                return reject_update(rq, MHD_HTTP_BAD_REQUEST, "bad-request", "%s",
                                     "X-Edged-Base-Version differs from the body's base version");
        if (!isfinite(info.l2_norm))
                return reject_update(rq, MHD_HTTP_UNPROCESSABLE_CONTENT, "not-finite", "%s",
                                     "the update's norm is not finite");
        u.norm = info.l2_norm;
        if (s->max_update_norm > 0 && info.l2_norm > s->max_update_norm) {
                if (!s->clip_updates) {
                        snprintf(detail, sizeof(detail), "%g > MaxUpdateNorm %g", info.l2_norm,
                                 s->max_update_norm);
                        return reject_update(rq, MHD_HTTP_UNPROCESSABLE_CONTENT, "norm-too-large",
                                             "L2 norm %s", detail);
                }
                u.scale = s->max_update_norm / info.l2_norm; /* applied at merge time */
                agg_metrics_add(rq->srv->metrics, "updates.clipped", 1);
        }
        r = agg_store_insert_update(store, &u, key, rq->body, rq->size, &id, &dup);
        if (disk_full(r)) {
                /* counted with the other refusals; the device keeps it and retries */
                rq->retry_after = AGG_DISK_FULL_RETRY_S;
                return reject_update(rq, MHD_HTTP_INSUFFICIENT_STORAGE, "disk-full", "%s",
                                     "the server's disk is full: cannot store the update now");
        }
        if (r < 0)
                return storage_error(rq, r, "the update");
        if (dup) { /* the same key raced in on another connection */
                agg_metrics_add(rq->srv->metrics, "updates.duplicate", 1);
                return ack(rq, true, id, cur.version, 0);
        }
        {
                char name[48];
                snprintf(name, sizeof(name), "staleness.%" PRIu64, MIN(staleness, (uint64_t) 64));
                agg_metrics_add(rq->srv->metrics, name, 1);
        }
        log_debug("update %lld from %s: base %" PRIu64 ", %" PRIu64 " tokens, norm %.3g",
                  (long long) id, u.device, u.base_version, u.tokens, u.norm);
        if (rq->srv->merger)
                agg_merger_kick(rq->srv->merger);
        return ack(rq, false, id, cur.version, staleness);
}

enum MHD_Result agg_api_telemetry(agg_request *rq) {
        json_error_t jerr;
        json_t *j;
        char *s;
        int r;

        if (!agg_authenticate(rq))
                return MHD_YES;
        j = rq->body ? json_loadb(rq->body, rq->size, 0, &jerr) : NULL;
        if (!json_is_object(j)) {
                json_decref(j);
                return agg_respond_error(rq, MHD_HTTP_BAD_REQUEST, "bad-request",
                                         "telemetry must be a JSON object");
        }
        s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(j);
        if (!s)
                return MHD_NO;
        r = agg_store_telemetry(rq->srv->store, rq->device, s);
        free(s);
        if (r < 0)
                return storage_error(rq, r, "telemetry");
        return agg_respond(rq, MHD_HTTP_NO_CONTENT, NULL, NULL, 0);
}

enum MHD_Result agg_api_metrics(agg_request *rq) {
        char *buf;
        size_t n;

        if (agg_metrics_render(rq->srv->metrics, rq->srv->store, &buf, &n) < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                         "cannot read the metrics");
        return agg_respond(rq, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, n);
}

enum MHD_Result agg_api_status_page(agg_request *rq) {
        char *buf;
        size_t n;

        if (agg_status_page_render(rq->srv->store, rq->srv->metrics, &buf, &n) < 0)
                return agg_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "storage",
                                         "cannot read the state");
        return agg_respond(rq, MHD_HTTP_OK, "text/html; charset=utf-8", buf, n);
}
