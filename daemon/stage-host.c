/* SPDX-License-Identifier: MIT */
#include "stage-host.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "stage-wire.h"
#include "stage.h"

#define HOST_MAX_SESSIONS 1024

typedef struct {
        uint64_t id; /* 0: free slot */
        stage st;
        stage_session *s;
        size_t bytes;
        double last_used;
} host_session;

struct stage_host {
        model_config cfg;
        const model_tensors *p;
        uint64_t version;
        size_t weight_bytes, used_bytes;
        stage_host_limits lim;
        int n_sessions;
        int hold_first, hold_last; /* the layers whose weights are there */
        host_session *sessions;
};

int stage_host_new(const model_config *cfg, const model_tensors *p, uint64_t version,
                   size_t weight_bytes, const stage_host_limits *lim, stage_host **ret) {
        if (model_config_validate(cfg) < 0 || lim->max_sessions < 1 ||
            lim->max_sessions > HOST_MAX_SESSIONS || !(lim->idle_timeout_s > 0))
                return -EINVAL;
        stage_host *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->sessions = calloc((size_t) lim->max_sessions, sizeof(host_session));
        if (!h->sessions) {
                free(h);
                return -ENOMEM;
        }
        h->cfg = *cfg;
        h->p = p;
        h->version = version;
        h->weight_bytes = h->used_bytes = weight_bytes;
        h->lim = *lim;
        h->hold_first = 0;
        h->hold_last = cfg->n_layer - 1;
        *ret = h;
        return 0;
}

int stage_host_hold(stage_host *h, int first, int last) {
        if (first < 0 || last < first || last >= h->cfg.n_layer)
                return -EINVAL;
        h->hold_first = first;
        h->hold_last = last;
        return 0;
}

static void drop(stage_host *h, host_session *hs) {
        stage_session_free(hs->s);
        h->used_bytes -= hs->bytes;
        h->n_sessions--;
        memset(hs, 0, sizeof(*hs));
}

void stage_host_free(stage_host *h) {
        if (!h)
                return;
        for (int i = 0; i < h->lim.max_sessions; i++)
                if (h->sessions[i].id)
                        drop(h, &h->sessions[i]);
        free(h->sessions);
        free(h);
}

int stage_host_expire(stage_host *h, double now) {
        int n = 0;
        for (int i = 0; i < h->lim.max_sessions; i++)
                if (h->sessions[i].id && now - h->sessions[i].last_used > h->lim.idle_timeout_s) {
                        drop(h, &h->sessions[i]);
                        n++;
                }
        return n;
}

int stage_host_n_sessions(const stage_host *h) {
        return h->n_sessions;
}
size_t stage_host_bytes(const stage_host *h) {
        return h->used_bytes;
}
uint64_t stage_host_version(const stage_host *h) {
        return h->version;
}
const model_config *stage_host_config(const stage_host *h) {
        return &h->cfg;
}

static void fail(stage_reply *r, unsigned status, const char *reason, const char *detail) {
        *r = (stage_reply){ .status = status, .reason = reason, .detail = detail };
}

/* A new session for [first, last], within the slot and memory bounds. */
static host_session *open_session(stage_host *h, uint64_t id, int first, int last, double now,
                                  stage_reply *ret) {
        size_t bytes = stage_session_bytes(&h->cfg, last - first + 1);
        host_session *slot = NULL;

        stage_host_expire(h, now);
        for (int i = 0; i < h->lim.max_sessions && !slot; i++)
                if (!h->sessions[i].id)
                        slot = &h->sessions[i];
        if (!slot) {
                fail(ret, 503, "busy", "too many sessions");
                return NULL;
        }
        if (h->lim.max_bytes && h->used_bytes + bytes > h->lim.max_bytes) {
                fail(ret, 503, "memory", "the memory bound for inference is reached");
                return NULL;
        }
        if (stage_init(&slot->st, &h->cfg, h->p, first, last) < 0 ||
            stage_session_new(&slot->st, &slot->s) < 0) {
                fail(ret, 503, "memory", "out of memory");
                return NULL;
        }
        slot->id = id;
        slot->bytes = bytes;
        slot->last_used = now;
        h->used_bytes += bytes;
        h->n_sessions++;
        return slot;
}

void stage_host_handle(stage_host *h, uint64_t version, int first, int last, const void *body,
                       size_t size, bool accept_new, double now, stage_reply *ret) {
        int C = h->cfg.n_embd, T = h->cfg.block_size, L = h->cfg.n_layer;
        stage_wire_header in;
        float *data = NULL, *out = NULL;
        const char *why;
        host_session *hs = NULL;
        int r;

        if (version != h->version) {
                fail(ret, 404, "unknown-version", "this model version is not served here");
                return;
        }
        if (first < 0 || last < first || last >= L) {
                fail(ret, 404, "bad-span", "no such layer span in this model");
                return;
        }
        if (first < h->hold_first || last > h->hold_last) {
                fail(ret, 404, "bad-span", "this server does not hold these layers");
                return;
        }
        r = stage_wire_decode(body, size, &in, &data, &why);
        if (r == -ENOMEM) {
                fail(ret, 503, "memory", "out of memory");
                return;
        }
        if (r < 0) {
                fail(ret, 400, "bad-activations", why);
                return;
        }
        if (in.version != version || in.first != first || in.last != last) {
                fail(ret, 400, "bad-activations", "the header does not match the URL");
                goto out;
        }
        if (in.kind != (first == 0 ? STAGE_WIRE_TOKENS : STAGE_WIRE_HIDDEN) ||
            in.width != (uint32_t) (first == 0 ? 1 : C)) {
                fail(ret, 400, "bad-activations",
                     first == 0 ? "the first stage takes tokens of width 1"
                                : "hidden states must have the model's width");
                goto out;
        }
        if (in.pos + in.n_tokens > (uint32_t) T) {
                fail(ret, 413, "too-long", "past the model's context window");
                goto out;
        }
        for (int i = 0; i < h->lim.max_sessions && !hs; i++)
                if (h->sessions[i].id == in.session)
                        hs = &h->sessions[i];
        if (hs && (hs->st.first != first || hs->st.last != last)) {
                fail(ret, 409, "session-conflict", "the session holds another span");
                goto out;
        }
        if (!hs) {
                if (!accept_new) {
                        fail(ret, 503, "paused", "the device is paused: no new sessions");
                        goto out;
                }
                if (in.pos != 0) {
                        fail(ret, 409, "unknown-session", "no such session: start at position 0");
                        goto out;
                }
                hs = open_session(h, in.session, first, last, now, ret);
                if (!hs)
                        goto out;
        }
        if (in.pos > (uint32_t) stage_session_pos(hs->s)) {
                fail(ret, 409, "position-gap", "the position is past what the session holds");
                goto out;
        }
        int last_stage = last == L - 1;
        size_t n_out = last_stage ? MODEL_VOCAB : (size_t) in.n_tokens * C;
        out = malloc(n_out * sizeof(float));
        if (!out) {
                fail(ret, 503, "memory", "out of memory");
                goto out;
        }
        r = stage_forward(&hs->st, hs->s, (int) in.pos, data, (int) in.n_tokens, out);
        hs->last_used = now;
        if (r < 0) {
                fail(ret, 400, "bad-activations", "the stage refused the input");
                goto out;
        }
        stage_wire_header oh = in;
        oh.kind = last_stage ? STAGE_WIRE_LOGITS : STAGE_WIRE_HIDDEN;
        oh.width = last_stage ? MODEL_VOCAB : (uint32_t) C;
        if (last_stage) {
                oh.pos = in.pos + in.n_tokens - 1;
                oh.n_tokens = 1;
        }
        *ret = (stage_reply){ .status = 200 };
        if (stage_wire_encode(&oh, out, &ret->body, &ret->size) < 0)
                fail(ret, 503, "memory", "out of memory");
out:
        free(data);
        free(out);
}
