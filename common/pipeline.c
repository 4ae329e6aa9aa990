/* SPDX-License-Identifier: MIT */
#include "pipeline.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "stage-wire.h"
#include "stage.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

void pipeline_default_cost(const model_config *cfg, stage_plan_cost *ret) {
        size_t session = stage_session_bytes(cfg, 1) ;
        *ret = (stage_plan_cost){
                .layer_bytes = stage_param_bytes(cfg, 1, 1) + session,
                .first_bytes = (size_t) (MODEL_VOCAB + cfg->block_size) * cfg->n_embd * sizeof(float),
                .last_bytes = (size_t) (MODEL_VOCAB + 2) * cfg->n_embd * sizeof(float),
        };
        /* a middle layer's share above is exact when cfg has >= 3 layers; for fewer, the
         * per-layer part is the same formula */
        if (cfg->n_layer < 3)
                ret->layer_bytes = (uint64_t) (12 * cfg->n_embd + 13) * cfg->n_embd * sizeof(float) + session;
}

static uint64_t new_session_id(void) {
        uint64_t id = 0;
        if (getrandom(&id, sizeof(id), 0) != sizeof(id))
                id = (uint64_t) (now_s() * 1e9);
        return id ? id : 1;
}

typedef struct {
        const pipeline_opts *o;
        pipeline_stats *st;
        bool alive[PIPELINE_MAX_PEERS];
        stage_plan_span plan[PIPELINE_MAX_PEERS];
        int n_plan;
        uint64_t session;
} run;

static int replan(run *r) {
        stage_plan_peer peers[PIPELINE_MAX_PEERS];
        int map[PIPELINE_MAX_PEERS], n = 0, k;

        if (r->o->fixed_spans) {
                unsigned char alive[PIPELINE_MAX_PEERS];
                double speed[PIPELINE_MAX_PEERS];
                for (int i = 0; i < r->o->n_peers; i++) {
                        alive[i] = r->alive[i];
                        speed[i] = r->o->peers[i].speed;
                }
                k = stage_plan_cover(r->o->cfg.n_layer, r->o->held, speed, alive, r->o->n_peers,
                                     r->plan, &r->n_plan);
                if (k < 0)
                        return k == -E2BIG ? -EHOSTUNREACH : k;
                r->session = new_session_id();
                return 0;
        }

        for (int i = 0; i < r->o->n_peers; i++)
                if (r->alive[i]) {
                        peers[n] = r->o->peers[i];
                        map[n++] = i;
                }
        if (n == 0)
                return -EHOSTUNREACH;
        k = stage_plan(r->o->cfg.n_layer, peers, n, &r->o->cost, r->plan, &r->n_plan);
        if (k < 0)
                return k == -E2BIG ? -EHOSTUNREACH : k;
        for (int i = 0; i < r->n_plan; i++)
                r->plan[i].peer = map[r->plan[i].peer];
        r->session = new_session_id();
        return 0;
}

/* Runs tokens [pos, pos+n) through every stage; logits of the last one into logits. On a
 * peer failure returns -EPIPE with *ret_dead set. */
static int chain(run *r, const uint8_t *tokens, int pos, int n, float *logits, int *ret_dead) {
        const pipeline_opts *o = r->o;
        int C = o->cfg.n_embd;
        float *x = malloc((size_t) n * (size_t) (C > 1 ? C : 1) * sizeof(float));
        int ret = 0;

        if (!x)
                return -ENOMEM;
        for (int i = 0; i < n; i++)
                x[i] = (float) tokens[i];
        for (int s = 0; s < r->n_plan; s++) {
                const stage_plan_span *sp = &r->plan[s];
                bool last = sp->last == o->cfg.n_layer - 1;
                stage_wire_header h = { .kind = s == 0 ? STAGE_WIRE_TOKENS : STAGE_WIRE_HIDDEN,
                                        .version = o->version, .first = (uint16_t) sp->first,
                                        .last = (uint16_t) sp->last, .session = r->session,
                                        .pos = (uint32_t) pos, .n_tokens = (uint32_t) n,
                                        .width = s == 0 ? 1 : (uint32_t) C },
                                  rh;
                void *req = NULL, *resp = NULL;
                size_t req_size, resp_size = 0;
                float *data = NULL;
                const char *why;

                ret = stage_wire_encode(&h, x, &req, &req_size);
                if (ret < 0)
                        break;
                ret = o->call(o->ctx, sp->peer, o->version, sp->first, sp->last, req, req_size, &resp,
                              &resp_size);
                free(req);
                r->st->bytes_sent += req_size;
                if (ret == -ECANCELED)
                        break;
                if (ret >= 0) {
                        r->st->bytes_received += resp_size;
                        ret = stage_wire_decode(resp, resp_size, &rh, &data, &why);
                }
                free(resp);
                /* the reply must be exactly what this stage owes */
                if (ret >= 0 &&
                    (rh.session != r->session || rh.kind != (last ? STAGE_WIRE_LOGITS : STAGE_WIRE_HIDDEN) ||
                     rh.width != (last ? MODEL_VOCAB : (uint32_t) C) ||
                     rh.n_tokens != (last ? 1u : (uint32_t) n) ||
                     rh.pos != (last ? (uint32_t) (pos + n - 1) : (uint32_t) pos)))
                        ret = -EBADMSG;
                if (ret < 0) {
                        free(data);
                        *ret_dead = sp->peer;
                        ret = -EPIPE;
                        break;
                }
                free(x);
                x = data;
                if (last)
                        memcpy(logits, x, MODEL_VOCAB * sizeof(float));
        }
        free(x);
        return ret;
}

int pipeline_generate(const pipeline_opts *o, const uint8_t *prompt, size_t prompt_len,
                      uint8_t *out, size_t n_out, const sample_opts *so, pipeline_stats *ret_stats) {
        static const uint8_t newline[1] = { '\n' };
        pipeline_stats dummy;
        run r = { .o = o, .st = ret_stats ? ret_stats : &dummy };
        unsigned max_replans = o->max_replans ? o->max_replans : (unsigned) o->n_peers;
        int T = o->cfg.block_size, ret;
        float logits[MODEL_VOCAB];
        double t0 = now_s();
        size_t n = 0;
        rng_t rng;

        memset(r.st, 0, sizeof(*r.st));
        if (o->n_peers < 1 || o->n_peers > PIPELINE_MAX_PEERS || !o->call)
                return -EINVAL;
        if (prompt_len == 0) {
                prompt = newline;
                prompt_len = 1;
        }
        if (prompt_len > (size_t) T || prompt_len > STAGE_WIRE_MAX_TOKENS)
                return -E2BIG;
        /* every token fed so far: the prompt, then each generated one; a replay resends all */
        uint8_t *fed = malloc(prompt_len + n_out);
        if (!fed)
                return -ENOMEM;
        memcpy(fed, prompt, prompt_len);
        size_t n_fed = prompt_len, n_done = 0; /* n_done: positions the current sessions hold */

        for (int i = 0; i < o->n_peers; i++)
                r.alive[i] = true;
        rng_seed(&rng, so->seed);
        ret = replan(&r);
        /* bounded: each pass either feeds tokens or loses a peer, and replans are capped */
        while (ret >= 0) {
                int dead = -1;
                ret = chain(&r, fed + n_done, (int) n_done, (int) (n_fed - n_done), logits, &dead);
                if (ret == -EPIPE) {
                        r.alive[dead] = false;
                        if ((unsigned) ++r.st->replans > max_replans) {
                                ret = -EHOSTUNREACH;
                                break;
                        }
                        ret = replan(&r);
                        n_done = 0; /* fresh sessions: replay everything fed so far */
                        continue;
                }
                if (ret < 0)
                        break;
                n_done = n_fed;
                if (n >= n_out)
                        break;
                uint8_t tok = sampler_pick(logits, so, &rng);
                if (n == 0)
                        r.st->first_token_s = now_s() - t0;
                out[n++] = tok;
                if (o->emit)
                        o->emit(o->emit_ctx, tok);
                /* as sample_generate: stop at n_out, or when the window is full */
                if (n == n_out || n_fed >= (size_t) T)
                        break;
                fed[n_fed++] = tok;
        }
        r.st->n_stages = r.n_plan;
        memcpy(r.st->plan, r.plan, sizeof(r.plan));
        free(fed);
        return ret < 0 ? ret : (int) n;
}
