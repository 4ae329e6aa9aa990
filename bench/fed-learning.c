/* SPDX-License-Identifier: MIT */
/* Federated learning benchmark (build/bench/fed-learning): does joining a fleet pay? The
 * fleet's model against what its members could have had without it, all in one run.
 *
 * Data: tinyshakespeare. The last 10 % (from the first speaker turn starting at or after
 * 90 % of the file) is held out for every run; validation loss is the mean over a fixed set
 * of consecutive T-byte windows of it. The first 90 % is split by speaker: a turn starts at a
 * line "NAME:" after a blank line (or at the start) and runs to the next turn; each turn goes
 * to device fnv1a64(NAME) % devices, so every device sees its own characters (non-IID). The
 * IID control deals the same turns to devices at random instead.
 *
 * The fleet: D devices, each running R rounds of H local steps of (B, T) (the defaults: 8 x
 * 18 x 10), simulated in process with the real arithmetic and no HTTP (bench/fed-ingest
 * measures the protocol). Devices have fixed speeds (1.0 to 1.5 time units per step, slowest
 * last); a device starts a round from the newest server version at that moment with the
 * fleet's learning rate at that moment (the aggregator's schedule at the tokens merged so far
 * plus one buffer of rounds, held for the round as a device does between rebases; one
 * schedule over the run's tokens), runs its steps with its own AdamW state
 * (kept across rounds, as edged keeps it), sends delta = local - base through upd_encode
 * (top-k: with its own residual), and the server upd_decodes it on arrival. With --dylu the
 * step budget follows the device's speed (H x fastest/own speed, as RoundSeconds= does), so
 * rounds end together. FedBuff: K updates per merge, weights agg_weights, agg_aggregate, then
 * the server optimizer (agg_fedavg, agg_fedadam or agg_nesterov, aggregator/merge.h);
 * MaxStaleness 8 (older updates dropped and counted). Updates left when every device is done
 * are merged as a last, smaller buffer. Two controls separate the causes of a gap: IID (the
 * same fleet on shards dealt at random: non-IID drift) and sync (devices wait for every merge
 * and K = devices: nothing is stale; what is left is local training and averaging).
 *
 * The yardsticks, each trained from the same initial model on the same held-out measure:
 *   large batch     DiLoCo's data-parallel baseline: as many optimizer steps as a fleet device
 *                   runs (R x H), each on the fleet's combined batch (D x B, accumulated
 *                   micro-batches) from all the data; learning rate x1, x2, x4, best kept.
 *   alone (shard)   what a member gets by not joining: one device, R x H steps on its own
 *                   shard; mean, min and max over the devices.
 *   alone (all)     one device on all the data for R x H steps: the pooled ideal no member has.
 *   sequential      D x R x H steps of (B, T) on all the data (equal tokens, one after
 *                   another: no parallel method can match it; for information).
 * Every schedule: linear warmup over 5 % of its steps, cosine to lr/10 at the end.
 *
 * Targets (issue 18, int8 updates): fleet <= 0.98 x large batch; fleet below every device
 * alone on its shard; <= 1.10 x sequential (aim); top-k within 1 % of int8. --curve repeats
 * the fleet and the devices alone at 1x, 4x and 16x the rounds: the fleet should be >= 10 %
 * below the devices' mean at 16x. --trace FILE writes per-merge diagnostics (held-out loss
 * before and after, delta norms and pairwise cosines, staleness, local losses, lr). */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "batch-source.h"
#include "blas.h"
#include "corpus.h"
#include "log.h"
#include "macros.h"
#include "merge.h"
#include "model.h"
#include "sgemm_peak.h"
#include "time-util.h"
#include "train-step.h"
#include "update-codec.h"

#define MAX_DEVICES 64
#define MAX_K 64
#define MAX_STALENESS 8
#define MAX_CORPUS (64u << 20)
#define HELD_OUT_FRACTION 0.10
#define MAX_VAL_BATCHES 128
#define TRACE_VAL_BATCHES 16 /* per-merge held-out loss: a fixed subset, cheaper */
#define DATA_SALT 0x5eed5eedULL

static const char *const default_corpus = "../shared/data/tinyshakespeare.txt";

static volatile sig_atomic_t interrupted;

typedef enum { SRV_FEDAVG, SRV_FEDADAM, SRV_NESTEROV } server_opt;
static const char *const server_opt_names[] = { "fedavg", "fedadam", "nesterov" };

typedef struct {
        server_opt opt;
        float lr;     /* 0: the optimizer's default */
        float mu;     /* nesterov */
        int period;   /* nesterov: merges per momentum step; 0: devices / K */
        float eps;    /* fedadam */
} server_cfg;

typedef struct {
        const char *config, *corpus, *trace_path;
        int devices, buffer, local_steps, rounds, B, T, threads;
        uint64_t seed; /* the initial model and every data order */
        float lr, weight_decay, topk;
        server_cfg server;
        bool quick, curve, dylu;
        unsigned only; /* bit per run (0: the default set) */
} bench_opts;

/* Device i's data order: the same in the fleet and alone. */
static uint64_t device_cursor(const bench_opts *o, int i) {
        return (o->seed + 1000 * (uint64_t) (i + 1)) ^ DATA_SALT;
}

static void on_signal(int sig) {
        interrupted = 1;
}

/* ---- data ---- */

typedef struct {
        uint8_t *bytes;
        size_t size;
        corpus c; /* over bytes: all of it trains */
        batch_source src;
        size_t turns;
} shard;

static uint64_t fnv1a64(const uint8_t *s, size_t n) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i < n; i++) {
                h ^= s[i];
                h *= 0x100000001b3ULL;
        }
        return h;
}

/* ---- data ---- */

/* Where a turn starts at p: a line "NAME:" (non-empty, no ':' before the end) after a blank
 * line or at the start of the text. Returns the name's length, 0 if not a turn start. */
static size_t turn_name(const uint8_t *t, size_t size, size_t p) {
        if (p > 0 && !(p >= 2 && t[p - 1] == '\n' && t[p - 2] == '\n'))
                return 0;
        size_t e = p;
        while (e < size && t[e] != '\n' && t[e] != ':' && e - p < 64)
                e++;
        if (e == p || e + 1 >= size || t[e] != ':' || t[e + 1] != '\n')
                return 0;
        return e - p;
}

static int read_file(const char *path, uint8_t **ret, size_t *ret_size) {
        FILE *f = fopen(path, "re");
        uint8_t *b;
        long n;

        if (!f)
                return -errno;
        if (fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || (size_t) n > MAX_CORPUS ||
            fseek(f, 0, SEEK_SET) < 0) {
                fclose(f);
                return -EFBIG;
        }
        b = malloc((size_t) n + 1);
        if (!b || fread(b, 1, (size_t) n, f) != (size_t) n) {
                free(b);
                fclose(f);
                return -EIO;
        }
        fclose(f);
        *ret = b;
        *ret_size = (size_t) n;
        return 0;
}

/* Splits text into held-out (from the first turn at or after 90 %) and device shards: by
 * speaker, or (iid) turn by turn at random. */
static int split_corpus(const uint8_t *t, size_t size, int devices, int T, bool iid,
                        shard *shards, size_t *ret_train_size, size_t *ret_turns) {
        size_t cut = (size_t) ((1.0 - HELD_OUT_FRACTION) * (double) size), turns = 0;
        size_t cap[MAX_DEVICES] = {};

        while (cut < size && turn_name(t, size, cut) == 0)
                cut++;
        if (cut >= size)
                return -ENODATA;
        for (size_t p = 0; p < cut;) {
                size_t name = turn_name(t, size, p);
                size_t e = p + 1;
                /* the turn runs to the next turn start (or the cut) */
                while (e < cut && turn_name(t, size, e) == 0)
                        e++;
                /* IID control: the same turns dealt at random, whoever speaks */
                uint64_t turn = turns;
                int d = iid    ? (int) (fnv1a64((const uint8_t *) &turn, sizeof(turn)) %
                                        (uint64_t) devices)
                        : name ? (int) (fnv1a64(t + p, name) % (uint64_t) devices)
                               : 0;
                shard *s = &shards[d];
                if (s->size + (e - p) > cap[d]) {
                        size_t nc = MAX(cap[d] * 2, s->size + (e - p));
                        uint8_t *b = realloc(s->bytes, nc);
                        if (!b)
                                return -ENOMEM;
                        s->bytes = b;
                        cap[d] = nc;
                }
                if (!s->bytes)
                        return -ENOMEM;
                memcpy(s->bytes + s->size, t + p, e - p);
                s->size += e - p;
                s->turns++;
                turns++;
                p = e;
        }
        for (int d = 0; d < devices; d++) {
                shard *s = &shards[d];
                if (s->size < (size_t) T + 2)
                        return -ENODATA;
                s->c = (corpus) { .bytes = s->bytes, .size = s->size, .train_size = s->size };
                s->src = batch_source_corpus(&s->c);
        }
        *ret_train_size = cut;
        *ret_turns = turns;
        return 0;
}

/* ---- the runs ---- */

typedef struct {
        const bench_opts *o;
        model *m;
        const model_layout *lay;
        corpus central, held;
        batch_source central_src, val_src;
        shard *shards, *shards_iid;
        int val_batches;
        uint8_t *tok, *tgt;
        float *init; /* version 0 */
        FILE *trace;
} bench_ctx;

static int val_loss_n(bench_ctx *b, int n, double *ret) {
        float l;
        int r = trainer_val_loss(b->m, &b->val_src, b->o->B, b->o->T, 0, n, b->tok, b->tgt, &l);
        *ret = l;
        return r;
}

static int val_loss(bench_ctx *b, double *ret) {
        return val_loss_n(b, b->val_batches, ret);
}

static lr_schedule schedule_over(float lr, long steps) {
        return (lr_schedule) { .lr_max = lr, .lr_min = lr / 10,
                               .warmup_steps = MAX(steps / 20, 1), .total_steps = steps };
}

/* One model trained alone from version 0: steps of accum x (B, T) from src at peak lr, on
 * its own schedule; its held-out loss. */
static int train_alone(bench_ctx *b, const batch_source *src, uint64_t cursor, long steps,
                       int accum, float lr, double *ret_val) {
        const bench_opts *o = b->o;
        lr_schedule sched = schedule_over(lr, steps);
        adamw_hparams hp;
        adamw_state opt = {};
        ckpt_state cs = { .data_cursor = cursor };
        int r;

        adamw_hparams_default(&hp);
        hp.weight_decay = o->weight_decay;
        if ((r = adamw_new(b->lay->n_params, &hp, &opt)) < 0)
                return r;
        memcpy(b->m->params, b->init, b->lay->n_params * sizeof(float));
        for (long s = 0; s < steps && !interrupted; s++) {
                float l;
                r = trainer_step(b->m, &opt, src, o->B, o->T, accum, lr_at(&sched, s), b->tok,
                                 b->tgt, &cs, &l, NULL, NULL);
                if (r < 0)
                        goto out;
        }
        r = interrupted ? -EINTR : val_loss(b, ret_val);
out:
        adamw_free(&opt);
        return r;
}

/* ---- the fleet ---- */

typedef struct {
        upd_encoding enc;
        server_cfg server;
        bool iid;
        bool sync; /* devices wait for each merge; K = devices, so no update is stale */
        int k;     /* updates per merge */
        int rounds;
        const char *name;
} fleet_spec;

typedef struct {
        double val_loss, seconds;
        double uplink_per_device; /* mean over devices of the sum of body sizes */
        long updates, merges, dropped, tokens;
        long stale_hist[MAX_STALENESS + 2];
        /* where the progress goes: means over merges */
        double delta_norm, pair_cos, merged_ratio, loss_start, loss_end, val_gain;
        long n_diag, n_pairs, n_val;
} fleet_result;

typedef struct {
        adamw_state opt;
        ckpt_state cs;
        float *residual; /* top-k only */
        double speed, finish_at;
        int steps, rounds_done;
        bool busy;
        void *body; /* the update in flight */
        size_t size;
        uint64_t base;
        float lr, loss_start, loss_end;
        double uplink;
} device;

typedef struct {
        float *delta[MAX_K];
        uint64_t base[MAX_K], tokens[MAX_K];
        int dev[MAX_K];
        float lr[MAX_K], loss_start[MAX_K], loss_end[MAX_K];
        size_t n;
} fedbuff;

typedef struct {
        server_cfg cfg;
        float *x;
        float *m, *v; /* fedadam: moments; nesterov: momentum and accumulated deltas */
        uint32_t count;
        int k;
        uint64_t version;
        long tokens_merged;
        double last_val; /* trace */
} server_state;

/* The aggregator's defaults (aggregator/settings.c) */
#define FEDAVG_LR 0.7f
#define FEDADAM_LR 0.01f
#define NESTEROV_LR 0.5f
#define NESTEROV_MOMENTUM 0.7f

static float server_lr_of(const server_cfg *c) {
        if (c->lr > 0)
                return c->lr;
        return c->opt == SRV_FEDADAM ? FEDADAM_LR : c->opt == SRV_NESTEROV ? NESTEROV_LR : FEDAVG_LR;
}

static double dot(const float *a, const float *c, size_t n) {
        double s = 0;
        for (size_t j = 0; j < n; j++)
                s += (double) a[j] * (double) c[j];
        return s;
}

static int server_merge(bench_ctx *b, const fleet_spec *spec, fedbuff *fb, server_state *sv,
                        float *agg, fleet_result *res) {
        const size_t n = b->lay->n_params;
        uint64_t tau[MAX_K], tokens[MAX_K];
        const float *d[MAX_K];
        double w[MAX_K], norms[MAX_K];
        size_t k = 0, idx[MAX_K];
        int r;

        for (size_t i = 0; i < fb->n; i++) {
                uint64_t s = sv->version - fb->base[i];
                res->stale_hist[MIN(s, (uint64_t) MAX_STALENESS + 1)]++;
                if (s > MAX_STALENESS) {
                        res->dropped++;
                        continue;
                }
                tau[k] = s;
                tokens[k] = fb->tokens[i];
                d[k] = fb->delta[i];
                idx[k] = i;
                res->updates++;
                k++;
        }
        if (k == 0) {
                fb->n = 0;
                return 0;
        }
        if ((r = agg_weights(tokens, tau, k, w)) < 0 ||
            (r = agg_aggregate(d, w, k, n, 0.0, agg)) < 0)
                return r;
        /* where the progress goes */
        double mean_norm = 0, cos_sum = 0, ls = 0, le = 0;
        long pairs = 0;
        for (size_t i = 0; i < k; i++) {
                norms[i] = sqrt(dot(d[i], d[i], n));
                mean_norm += norms[i] / (double) k;
                ls += fb->loss_start[idx[i]] / (double) k;
                le += fb->loss_end[idx[i]] / (double) k;
        }
        for (size_t i = 0; i < k; i++)
                for (size_t j = i + 1; j < k; j++, pairs++)
                        cos_sum += dot(d[i], d[j], n) / (norms[i] * norms[j] + 1e-30);
        double merged = sqrt(dot(agg, agg, n));
        res->delta_norm += mean_norm;
        res->merged_ratio += mean_norm > 0 ? merged / mean_norm : 0;
        res->loss_start += ls;
        res->loss_end += le;
        res->n_diag++;
        res->pair_cos += cos_sum;
        res->n_pairs += pairs;

        const float lr = server_lr_of(&sv->cfg);
        switch (sv->cfg.opt) {
        case SRV_FEDAVG:
                agg_fedavg(sv->x, agg, n, lr);
                break;
        case SRV_FEDADAM:
                agg_fedadam(sv->x, sv->m, sv->v, agg, n, lr,
                            sv->cfg.eps > 0 ? sv->cfg.eps : AGG_ADAM_EPS_DEFAULT);
                break;
        case SRV_NESTEROV: {
                int period = sv->cfg.period > 0 ? sv->cfg.period : MAX(1, b->o->devices / sv->k);
                agg_nesterov_params p = { .lr = lr, .mu = sv->cfg.mu, .period = (uint32_t) period };
                agg_nesterov(sv->x, sv->m, sv->v, &sv->count, agg, n, &p);
                break;
        }
        }
        sv->version++;
        res->merges++;
        for (size_t i = 0; i < k; i++)
                sv->tokens_merged += (long) tokens[i];

        if (b->trace) {
                double after;
                memcpy(b->m->params, sv->x, n * sizeof(float));
                if ((r = val_loss_n(b, MIN(TRACE_VAL_BATCHES, b->val_batches), &after)) < 0)
                        return r;
                res->val_gain += sv->last_val - after;
                res->n_val++;
                fprintf(b->trace, "%s\t%" PRIu64 "\t%zu\t", spec->name, sv->version, k);
                for (size_t i = 0; i < k; i++)
                        fprintf(b->trace, "%s%" PRIu64, i ? "," : "", tau[i]);
                fprintf(b->trace, "\t%.4f\t%.4f\t%.5f\t%.4f\t%.5f\t%.4f\t%.4f\t%.5f\n",
                        sv->last_val, after, mean_norm, pairs ? cos_sum / (double) pairs : 0,
                        merged, ls, le, (double) fb->lr[idx[0]]);
                sv->last_val = after;
        }
        fb->n = 0;
        return 0;
}

/* One device round, run when it starts (simulated time): its steps from the server's
 * current parameters at the fleet's learning rate of that moment; the encoded delta is what
 * it sends when it finishes. */
static int device_round(bench_ctx *b, const fleet_spec *spec, const shard *shards, device *dv,
                        int idx, const server_state *sv, const lr_schedule *fleet_sched,
                        float *delta) {
        const bench_opts *o = b->o;
        const size_t n = b->lay->n_params;
        const long tokens_per_step = (long) o->B * o->T;
        upd_info info;
        int r;

        /* as the aggregator serves it: at the tokens merged so far plus one buffer of rounds,
         * where this round's update is expected to be merged */
        dv->lr = lr_at(fleet_sched,
                       sv->tokens_merged / tokens_per_step + (long) sv->k * o->local_steps);
        memcpy(b->m->params, sv->x, n * sizeof(float));
        for (int s = 0; s < dv->steps; s++) {
                float l;
                r = trainer_step(b->m, &dv->opt, &shards[idx].src, o->B, o->T, 1, dv->lr, b->tok,
                                 b->tgt, &dv->cs, &l, NULL, NULL);
                if (r < 0)
                        return r;
                if (s == 0)
                        dv->loss_start = l;
                dv->loss_end = l;
        }
        for (size_t i = 0; i < n; i++)
                delta[i] = b->m->params[i] - sv->x[i];
        free(dv->body);
        dv->body = NULL;
        r = upd_encode(spec->enc, sv->version, b->lay, delta, o->topk,
                       spec->enc == UPD_TOPK ? dv->residual : NULL, &dv->body, &dv->size, &info);
        if (r < 0)
                return r;
        dv->base = sv->version;
        dv->uplink += (double) dv->size;
        return 0;
}

static int run_fleet(bench_ctx *b, const fleet_spec *spec, fleet_result *res) {
        const bench_opts *o = b->o;
        const size_t n = b->lay->n_params;
        const shard *shards = spec->iid ? b->shards_iid : b->shards;
        device dev[MAX_DEVICES] = {};
        fedbuff fb = {};
        server_state sv = { .cfg = spec->server, .k = spec->k };
        adamw_hparams hp;
        lr_schedule fleet_sched;
        long total_steps = 0;
        double t0 = mono_now_s(), now = 0;
        float *delta = malloc(n * sizeof(float)), *agg = malloc(n * sizeof(float));
        int r = 0;

        *res = (fleet_result) {};
        sv.x = malloc(n * sizeof(float));
        sv.m = calloc(n, sizeof(float));
        sv.v = calloc(n, sizeof(float));
        if (!delta || !agg || !sv.x || !sv.m || !sv.v) {
                r = -ENOMEM;
                goto out;
        }
        memcpy(sv.x, b->init, n * sizeof(float));
        adamw_hparams_default(&hp);
        hp.weight_decay = o->weight_decay;
        for (int i = 0; i < spec->k; i++)
                if (!(fb.delta[i] = malloc(n * sizeof(float)))) {
                        r = -ENOMEM;
                        goto out;
                }
        for (int i = 0; i < o->devices; i++) {
                device *dv = &dev[i];
                if ((r = adamw_new(n, &hp, &dv->opt)) < 0)
                        goto out;
                if (spec->enc == UPD_TOPK && !(dv->residual = calloc(n, sizeof(float)))) {
                        r = -ENOMEM;
                        goto out;
                }
                dv->cs.data_cursor = device_cursor(o, i);
                /* fixed speeds, slowest last: 1.0 .. 1.5 time units per step */
                dv->speed = 1.0 + 0.5 * (double) i / (double) MAX(o->devices - 1, 1);
                /* --dylu: the budget follows the speed, so every round takes as long */
                dv->steps = o->dylu ? MAX(1, (int) lround(o->local_steps / dv->speed))
                                    : o->local_steps;
                total_steps += (long) spec->rounds * dv->steps;
        }
        /* the aggregator's schedule: over the tokens the whole run will merge */
        fleet_sched = schedule_over(o->lr, total_steps);
        if (b->trace) {
                memcpy(b->m->params, sv.x, n * sizeof(float));
                if ((r = val_loss_n(b, MIN(TRACE_VAL_BATCHES, b->val_batches), &sv.last_val)) < 0)
                        goto out;
        }
        /* everyone starts from version 0 at time 0 */
        for (int i = 0; i < o->devices && !interrupted; i++) {
                if ((r = device_round(b, spec, shards, &dev[i], i, &sv, &fleet_sched, delta)) < 0)
                        goto out;
                dev[i].busy = true;
                dev[i].finish_at = now + dev[i].steps * dev[i].speed;
        }
        /* bounded: every iteration ends one device round */
        for (long ev = 0; ev < (long) o->devices * spec->rounds && !interrupted; ev++) {
                int next = -1;
                char err[256];
                for (int i = 0; i < o->devices; i++)
                        if (dev[i].busy && (next < 0 || dev[i].finish_at < dev[next].finish_at))
                                next = i;
                if (next < 0)
                        break;
                device *dv = &dev[next];
                now = dv->finish_at;
                dv->busy = false;
                dv->rounds_done++;
                /* the server: decode (validate) on arrival, merge at K */
                r = upd_decode(dv->body, dv->size, b->lay, 8 * n + 65536, fb.delta[fb.n], NULL,
                               err, sizeof(err));
                if (r < 0) {
                        fprintf(stderr, "fed-learning: decode: %s\n", err);
                        goto out;
                }
                fb.base[fb.n] = dv->base;
                fb.tokens[fb.n] = (uint64_t) dv->steps * (uint64_t) o->B * (uint64_t) o->T;
                fb.dev[fb.n] = next;
                fb.lr[fb.n] = dv->lr;
                fb.loss_start[fb.n] = dv->loss_start;
                fb.loss_end[fb.n] = dv->loss_end;
                fb.n++;
                if (fb.n == (size_t) spec->k && (r = server_merge(b, spec, &fb, &sv, agg, res)) < 0)
                        goto out;
                if (spec->sync) { /* everyone waits for the merge, then starts together */
                        if (fb.n != 0)
                                continue;
                        for (int i = 0; i < o->devices; i++)
                                if (!dev[i].busy && dev[i].rounds_done < spec->rounds) {
                                        r = device_round(b, spec, shards, &dev[i], i, &sv, &fleet_sched, delta);
                                        if (r < 0)
                                                goto out;
                                        dev[i].busy = true;
                                        dev[i].finish_at = now + dev[i].steps * dev[i].speed;
                                }
                        continue;
                }
                if (dv->rounds_done < spec->rounds) {
                        r = device_round(b, spec, shards, dv, next, &sv, &fleet_sched, delta);
                        if (r < 0)
                                goto out;
                        dv->busy = true;
                        dv->finish_at = now + dv->steps * dv->speed;
                }
        }
        if (interrupted) {
                r = -EINTR;
                goto out;
        }
        /* the last, partial buffer */
        if (fb.n > 0 && (r = server_merge(b, spec, &fb, &sv, agg, res)) < 0)
                goto out;
        memcpy(b->m->params, sv.x, n * sizeof(float));
        if ((r = val_loss(b, &res->val_loss)) < 0)
                goto out;
        for (int i = 0; i < o->devices; i++)
                res->uplink_per_device += dev[i].uplink / o->devices;
        res->tokens = sv.tokens_merged;
        res->seconds = mono_now_s() - t0;
out:
        for (int i = 0; i < o->devices; i++) {
                adamw_free(&dev[i].opt);
                free(dev[i].residual);
                free(dev[i].body);
        }
        for (int i = 0; i < MAX_K; i++)
                free(fb.delta[i]);
        free(sv.x);
        free(sv.m);
        free(sv.v);
        free(delta);
        free(agg);
        return r;
}

/* ---- options ---- */

enum {
        RUN_LARGE,
        RUN_ALONE,
        RUN_ALONE_ALL,
        RUN_SEQ,
        RUN_FEDAVG,
        RUN_FEDADAM,
        RUN_NESTEROV,
        RUN_FP32,
        RUN_TOPK,
        RUN_IID,
        RUN_SYNC,
        N_RUNS
};
static const char *const run_names[N_RUNS] = { "large",  "alone",    "alone-all", "seq",
                                                "fedavg", "fedadam",  "nesterov",  "fp32",
                                                "topk",   "iid",      "sync" };

static void usage(FILE *f) {
        fputs("Usage: fed-learning [OPTIONS]\n"
              "Does joining a fleet pay? FedBuff over speaker-split (non-IID) tinyshakespeare\n"
              "against a large-batch run, each device alone, and sequential training; uplink\n"
              "bytes and where the progress of each merge goes.\n\n"
              "  --corpus FILE       text (default ../shared/data/tinyshakespeare.txt)\n"
              "  --config NAME       model: tiny (default) or small\n"
              "  --devices N         devices = shards (default 8)\n"
              "  --buffer K          updates per merge (default 4)\n"
              "  --local-steps N     steps per device round (default 10)\n"
              "  --rounds N          rounds per device (default 18; --quick 4)\n"
              "  -B, --batch N       batch per device (default 8)\n"
              "  --lr X              peak learning rate (default 0.002)\n"
              "  --topk X            top-k fraction (default 0.01)\n"
              "  --threads N         BLAS threads (default 2)\n"
              "  --server-opt NAME   the fleet's optimizer: fedavg (default), nesterov, fedadam\n"
              "  --server-lr X       its learning rate (default: fedavg 0.7, nesterov 0.5, fedadam\n"
              "                      0.01)\n"
              "  --momentum X        nesterov momentum (default 0.7)\n"
              "  --period N          nesterov: merges per momentum step (default devices/K)\n"
              "  --adam-eps X        fedadam epsilon (default 0.001)\n"
              "  --dylu              step budget per round follows each device's speed\n"
              "  --only LIST         run only these of large,alone,alone-all,seq,fedavg,fedadam,\n"
              "                      nesterov,fp32,topk,iid,sync (fp32, topk, iid, sync: with the\n"
              "                      fleet's optimizer; sync: devices wait for every merge, K=devices)\n"
              "  --curve             the fleet and the devices alone at 1x, 4x, 16x the rounds\n"
              "  --trace FILE        per-merge diagnostics, tab-separated\n"
              "  --seed N            initial model and data orders (default 1)\n"
              "  --quick             fewer rounds\n",
              f);
}

static int parse_float(const char *s, double min, double max, float *ret) {
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (errno || end == s || *end || !(d >= min && d <= max))
                return -EINVAL;
        *ret = (float) d;
        return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
        enum { OPT_CORPUS = 0x100, OPT_CONFIG, OPT_DEVICES, OPT_BUFFER, OPT_LOCAL, OPT_ROUNDS,
               OPT_LR, OPT_TOPK, OPT_THREADS, OPT_QUICK, OPT_SERVER_LR, OPT_SERVER_OPT,
               OPT_MOMENTUM, OPT_PERIOD, OPT_ADAM_EPS, OPT_DYLU, OPT_ONLY, OPT_CURVE, OPT_TRACE, OPT_SEED };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "corpus", required_argument, NULL, OPT_CORPUS },
                { "config", required_argument, NULL, OPT_CONFIG },
                { "devices", required_argument, NULL, OPT_DEVICES },
                { "buffer", required_argument, NULL, OPT_BUFFER },
                { "local-steps", required_argument, NULL, OPT_LOCAL },
                { "rounds", required_argument, NULL, OPT_ROUNDS },
                { "batch", required_argument, NULL, 'B' },
                { "lr", required_argument, NULL, OPT_LR },
                { "topk", required_argument, NULL, OPT_TOPK },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "server-lr", required_argument, NULL, OPT_SERVER_LR },
                { "server-opt", required_argument, NULL, OPT_SERVER_OPT },
                { "momentum", required_argument, NULL, OPT_MOMENTUM },
                { "period", required_argument, NULL, OPT_PERIOD },
                { "adam-eps", required_argument, NULL, OPT_ADAM_EPS },
                { "dylu", no_argument, NULL, OPT_DYLU },
                { "only", required_argument, NULL, OPT_ONLY },
                { "curve", no_argument, NULL, OPT_CURVE },
                { "trace", required_argument, NULL, OPT_TRACE },
                { "seed", required_argument, NULL, OPT_SEED },
                {}
        };
        bool rounds_set = false;
        model_config cfg;
        char *end;
        int c;

        *o = (bench_opts) { .config = "tiny", .corpus = default_corpus, .devices = 8,
                            .buffer = 4, .local_steps = 10, .rounds = 18, .B = 8, .threads = 2,
                            .lr = 2e-3f, .weight_decay = 0.0f, .topk = 0.01f, .seed = 1,
                            .server = { .opt = SRV_FEDAVG, .mu = NESTEROV_MOMENTUM } };
        while ((c = getopt_long(argc, argv, "hB:", options, NULL)) >= 0) {
                long v = 0;
                if (c == OPT_DEVICES || c == OPT_BUFFER || c == OPT_LOCAL || c == OPT_ROUNDS ||
                    c == 'B' || c == OPT_THREADS || c == OPT_PERIOD || c == OPT_SEED) {
                        errno = 0;
                        v = strtol(optarg, &end, 10);
                        if (errno || end == optarg || *end || v < 1 || v > 100000)
                                return -EINVAL;
                }
                switch (c) {
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                case OPT_CORPUS:
                        o->corpus = optarg;
                        break;
                case OPT_CONFIG:
                        if (model_config_by_name(optarg, &cfg) < 0)
                                return -EINVAL;
                        o->config = optarg;
                        break;
                case OPT_DEVICES:
                        if (v > MAX_DEVICES)
                                return -EINVAL;
                        o->devices = (int) v;
                        break;
                case OPT_BUFFER:
                        if (v > MAX_K)
                                return -EINVAL;
                        o->buffer = (int) v;
                        break;
                case OPT_LOCAL:
                        o->local_steps = (int) v;
                        break;
                case OPT_ROUNDS:
                        o->rounds = (int) v;
                        rounds_set = true;
                        break;
                case 'B':
                        if (v > 256)
                                return -EINVAL;
                        o->B = (int) v;
                        break;
                case OPT_LR:
                        if (parse_float(optarg, 1e-6, 1, &o->lr) < 0)
                                return -EINVAL;
                        break;
                case OPT_TOPK:
                        if (parse_float(optarg, 1e-6, 1, &o->topk) < 0)
                                return -EINVAL;
                        break;
                case OPT_THREADS:
                        if (v > 64)
                                return -EINVAL;
                        o->threads = (int) v;
                        break;
                case OPT_QUICK:
                        o->quick = true;
                        break;
                case OPT_SERVER_LR:
                        if (parse_float(optarg, 1e-6, 100, &o->server.lr) < 0)
                                return -EINVAL;
                        break;
                case OPT_SERVER_OPT: {
                        size_t i = 0;
                        while (i < ARRAY_SIZE(server_opt_names) && strcmp(optarg, server_opt_names[i]))
                                i++;
                        if (i == ARRAY_SIZE(server_opt_names))
                                return -EINVAL;
                        o->server.opt = (server_opt) i;
                        break;
                }
                case OPT_MOMENTUM:
                        if (parse_float(optarg, 0, 0.999, &o->server.mu) < 0)
                                return -EINVAL;
                        break;
                case OPT_PERIOD:
                        o->server.period = (int) v;
                        break;
                case OPT_ADAM_EPS:
                        if (parse_float(optarg, 1e-12, 1, &o->server.eps) < 0)
                                return -EINVAL;
                        break;
                case OPT_DYLU:
                        o->dylu = true;
                        break;
                case OPT_ONLY:
                        for (char *save = NULL, *t = strtok_r(optarg, ",", &save); t;
                             t = strtok_r(NULL, ",", &save)) {
                                size_t i = 0;
                                while (i < N_RUNS && strcmp(t, run_names[i]))
                                        i++;
                                if (i == N_RUNS)
                                        return -EINVAL;
                                o->only |= 1u << i;
                        }
                        break;
                case OPT_CURVE:
                        o->curve = true;
                        break;
                case OPT_TRACE:
                        o->trace_path = optarg;
                        break;
                case OPT_SEED:
                        o->seed = (uint64_t) v;
                        break;
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc)
                return -EINVAL;
        if (o->quick && !rounds_set)
                o->rounds = 4;
        model_config_by_name(o->config, &cfg);
        o->T = cfg.block_size;
        return 0;
}

/* ---- report ---- */

typedef struct {
        bool ran;
        double val_loss, seconds;
        double large[3];                 /* lr x1, x2, x4 */
        double alone_mean, alone_min, alone_max;
        fleet_result fleet;
} run_result;

static double best_large(const run_result *r) {
        double best = INFINITY;
        for (int i = 0; i < 3; i++)
                best = MIN(best, r->large[i]);
        return best;
}

static void ratio(char *buf, size_t n, double x, double ref) {
        if (isfinite(ref) && ref > 0)
                snprintf(buf, n, "%.3f", x / ref);
        else
                snprintf(buf, n, "-");
}

static void print_fleet_row(const char *label, const run_result *r, double large, double alone,
                            double alone_all, double seq) {
        char a[16], c[16], d[16], e[16];
        const fleet_result *f = &r->fleet;
        long n = 0;
        double stale = 0;
        int max_stale = 0;

        for (int s = 0; s <= MAX_STALENESS + 1; s++) {
                n += f->stale_hist[s];
                stale += (double) s * (double) f->stale_hist[s];
                if (f->stale_hist[s])
                        max_stale = s;
        }
        ratio(a, sizeof(a), r->val_loss, large);
        ratio(c, sizeof(c), r->val_loss, alone);
        ratio(d, sizeof(d), r->val_loss, alone_all);
        ratio(e, sizeof(e), r->val_loss, seq);
        printf("%-24s %8.4f %7s %7s %7s %7s %8.2f MB %6ld %5.2f/%d %4ld %6.0f\n", label,
               r->val_loss, a, c, d, e, f->uplink_per_device / 1e6, f->merges,
               n ? stale / (double) n : 0, max_stale, f->dropped, r->seconds);
}

static void print_diag(const char *label, const fleet_result *f) {
        if (!f->n_diag)
                return;
        printf("%-24s %9.4f %9.3f %9.3f   %.3f -> %.3f", label, f->delta_norm / f->n_diag,
               f->n_pairs ? f->pair_cos / f->n_pairs : 0, f->merged_ratio / f->n_diag,
               f->loss_start / f->n_diag, f->loss_end / f->n_diag);
        if (f->n_val)
                printf("   %+.4f", f->val_gain / f->n_val);
        printf("   ");
        for (int s = 0; s <= MAX_STALENESS + 1; s++)
                if (f->stale_hist[s])
                        printf(" %s%d:%ld", s > MAX_STALENESS ? ">" : "", MIN(s, MAX_STALENESS),
                               f->stale_hist[s]);
        printf("\n");
}

static int run_alone_shards(bench_ctx *b, long steps, double *ret_mean, double *ret_min,
                            double *ret_max) {
        const bench_opts *o = b->o;
        double sum = 0, mn = INFINITY, mx = -INFINITY;
        int r;

        for (int i = 0; i < o->devices; i++) {
                double v;
                /* the same data order device i has in the fleet */
                r = train_alone(b, &b->shards[i].src, device_cursor(o, i),
                                steps, 1, o->lr, &v);
                if (r < 0)
                        return r;
                sum += v;
                mn = MIN(mn, v);
                mx = MAX(mx, v);
        }
        *ret_mean = sum / o->devices;
        *ret_min = mn;
        *ret_max = mx;
        return 0;
}

static fleet_spec fleet_spec_for(const bench_opts *o, int run) {
        fleet_spec s = { .enc = UPD_INT8, .server = o->server, .k = o->buffer,
                         .rounds = o->rounds, .name = run_names[run] };
        server_cfg def = { .mu = NESTEROV_MOMENTUM };
        switch (run) {
        case RUN_FEDAVG:
        case RUN_FEDADAM:
        case RUN_NESTEROV: {
                server_opt opt = (server_opt) (run - RUN_FEDAVG);
                if (opt != o->server.opt) { /* the other optimizers at their defaults */
                        s.server = def;
                        s.server.opt = opt;
                }
                break;
        }
        case RUN_FP32:
                s.enc = UPD_FP32;
                break;
        case RUN_TOPK:
                s.enc = UPD_TOPK;
                break;
        case RUN_IID:
                s.iid = true;
                break;
        case RUN_SYNC:
                s.sync = true;
                s.k = o->devices;
                break;
        }
        return s;
}

static int run_one(bench_ctx *b, int run, run_result *res) {
        const bench_opts *o = b->o;
        const long steps = (long) o->rounds * o->local_steps;
        double t0 = mono_now_s();
        int r = 0;

        switch (run) {
        case RUN_LARGE:
                for (int i = 0; i < 3 && r >= 0; i++)
                        r = train_alone(b, &b->central_src, (o->seed ^ DATA_SALT), steps, o->devices,
                                        o->lr * (float) (1 << i), &res->large[i]);
                res->val_loss = best_large(res);
                break;
        case RUN_ALONE:
                r = run_alone_shards(b, steps, &res->alone_mean, &res->alone_min, &res->alone_max);
                res->val_loss = res->alone_mean;
                break;
        case RUN_ALONE_ALL:
                r = train_alone(b, &b->central_src, (o->seed ^ DATA_SALT), steps, 1, o->lr,
                                &res->val_loss);
                break;
        case RUN_SEQ:
                r = train_alone(b, &b->central_src, (o->seed ^ DATA_SALT), steps * o->devices, 1, o->lr,
                                &res->val_loss);
                break;
        default: {
                fleet_spec spec = fleet_spec_for(o, run);
                r = run_fleet(b, &spec, &res->fleet);
                res->val_loss = res->fleet.val_loss;
        }
        }
        res->seconds = mono_now_s() - t0;
        res->ran = r >= 0;
        return r;
}

static const char *fleet_label(const bench_opts *o, int run, char *buf, size_t n) {
        fleet_spec s = fleet_spec_for(o, run);
        snprintf(buf, n, "fleet %s %s%s%s", server_opt_names[s.server.opt],
                 upd_encoding_to_string(s.enc), s.iid ? " IID" : "", s.sync ? " sync" : "");
        return buf;
}

/* The fleet and the devices alone at growing budgets: a device's own shard runs out, the
 * fleet's data does not. */
static int run_curve(bench_ctx *b) {
        const bench_opts *o = b->o;
        static const int mult[] = { 1, 4, 16 };
        double last_q = NAN;
        int r;

        printf("\nbudget curve: the fleet (%s int8) and each device alone on its shard\n",
               server_opt_names[o->server.opt]);
        printf("%-8s %8s %10s %10s %14s %8s %8s\n", "rounds", "steps", "fleet", "alone mean",
               "alone min..max", "ratio", "wall s");
        for (size_t i = 0; i < ARRAY_SIZE(mult) && !interrupted; i++) {
                int rounds = o->rounds * mult[i];
                fleet_spec spec = fleet_spec_for(o, RUN_FEDAVG + (int) o->server.opt);
                fleet_result fr;
                double mean, mn, mx, t0 = mono_now_s();

                spec.rounds = rounds;
                spec.name = "curve";
                if ((r = run_fleet(b, &spec, &fr)) < 0 ||
                    (r = run_alone_shards(b, (long) rounds * o->local_steps, &mean, &mn, &mx)) < 0)
                        return r;
                last_q = fr.val_loss / mean;
                printf("%-8d %8ld %10.4f %10.4f %6.4f..%6.4f %8.3f %8.0f\n", rounds,
                       (long) rounds * o->local_steps, fr.val_loss, mean, mn, mx, last_q,
                       mono_now_s() - t0);
                fflush(stdout);
        }
        printf("%s: at 16x the rounds the fleet's loss is %.1f %% below the devices' mean alone "
               "(>= 10 %%)\n",
               last_q <= 0.90 ? "PASS" : "MISS", 100 * (1 - last_q));
        return 0;
}

int main(int argc, char **argv) {
        run_result runs[N_RUNS] = {};
        shard shards[MAX_DEVICES] = {}, shards_iid[MAX_DEVICES] = {};
        bench_ctx b = {};
        model_config cfg;
        bench_opts o;
        uint8_t *text = NULL;
        size_t size = 0, train_size = 0, turns = 0, turns_iid = 0;
        double t_start = mono_now_s(), init_loss = NAN;
        unsigned want;
        int r, rc = EXIT_SUCCESS;

        blas_choose_kernel(argv);
        if (parse_args(argc, argv, &o) < 0) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        {
                struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };
                sigemptyset(&sa.sa_mask);
                sigaction(SIGINT, &sa, NULL);
                sigaction(SIGTERM, &sa, NULL);
        }
        log_open();
        blas_set_threads(o.threads);
        model_config_by_name(o.config, &cfg);
        want = o.only ? o.only : o.curve ? 0 : (1u << N_RUNS) - 1;

        r = read_file(o.corpus, &text, &size);
        if (r < 0) {
                fprintf(stderr, "fed-learning: %s: %s\n", o.corpus, strerror(-r));
                return EXIT_FAILURE;
        }
        r = split_corpus(text, size, o.devices, o.T, false, shards, &train_size, &turns);
        if (r >= 0)
                r = split_corpus(text, size, o.devices, o.T, true, shards_iid, &train_size,
                                 &turns_iid);
        if (r < 0) {
                fprintf(stderr, "fed-learning: %s: cannot split into %d shards: %s\n", o.corpus,
                        o.devices, strerror(-r));
                rc = EXIT_FAILURE;
                goto out;
        }
        if (o.trace_path && !(b.trace = fopen(o.trace_path, "we"))) {
                fprintf(stderr, "fed-learning: %s: %m\n", o.trace_path);
                rc = EXIT_FAILURE;
                goto out;
        }
        if (b.trace)
                fprintf(b.trace, "run\tversion\tk\tstaleness\tval_before\tval_after\t"
                                 "delta_norm_mean\tpair_cos_mean\tmerged_norm\tlocal_loss_start\t"
                                 "local_loss_end\tlr\n");
        b.o = &o;
        b.shards = shards;
        b.shards_iid = shards_iid;
        b.central = (corpus) { .bytes = text, .size = train_size, .train_size = train_size };
        b.held = (corpus) { .bytes = text + train_size, .size = size - train_size, .train_size = 0 };
        b.central_src = batch_source_corpus(&b.central);
        b.val_src = batch_source_corpus(&b.held);
        /* every window of the held-out part once (corpus_val_batch: consecutive windows) */
        b.val_batches = (int) MIN((b.held.size - 1) / (size_t) o.T / (size_t) o.B,
                                  (size_t) MAX_VAL_BATCHES);
        if (b.val_batches < 1) {
                fprintf(stderr, "fed-learning: the held-out part is too small\n");
                rc = EXIT_FAILURE;
                goto out;
        }
        if (model_new(&cfg, o.B, o.T, &b.m) < 0) {
                rc = EXIT_FAILURE;
                goto out;
        }
        b.lay = &b.m->layout;
        b.tok = malloc((size_t) o.B * o.T);
        b.tgt = malloc((size_t) o.B * o.T);
        b.init = malloc(b.lay->n_params * sizeof(float));
        if (!b.tok || !b.tgt || !b.init) {
                rc = EXIT_FAILURE;
                goto out;
        }
        model_init_params(b.m, o.seed);
        memcpy(b.init, b.m->params, b.lay->n_params * sizeof(float));
        if (val_loss(&b, &init_loss) < 0) {
                rc = EXIT_FAILURE;
                goto out;
        }

        const long steps = (long) o.rounds * o.local_steps;
        printf("edged federated learning benchmark\n");
        printf("BLAS: %s, %d thread%s; sgemm peak %.0f GFLOPS (n=512)\n", blas_describe(),
               o.threads, o.threads == 1 ? "" : "s", sgemm_peak_gflops(512, 3));
        printf("corpus %s: %zu bytes; held out %zu bytes from byte %zu (last ~10 %%, at a turn "
               "start): %d batches x %d windows x T=%d\n",
               o.corpus, size, size - train_size, train_size, b.val_batches, o.B, o.T);
        printf("training part %zu bytes in %zu speaker turns; shard bytes by speaker:", train_size,
               turns);
        for (int i = 0; i < o.devices; i++)
                printf(" %zu", shards[i].size);
        printf("\n  IID control (turns dealt at random):");
        for (int i = 0; i < o.devices; i++)
                printf(" %zu", shards_iid[i].size);
        printf("\nmodel %s (%zu params, seed %d, val loss at init %.4f); B=%d T=%d; AdamW b2=0.95, "
               "wd %g, clip 1.0; peak lr %g, warmup 5 %%, cosine to lr/10\n",
               cfg.name, b.lay->n_params, (int) o.seed, init_loss, o.B, o.T, (double) o.weight_decay,
               (double) o.lr);
        printf("fleet: %d devices x %d rounds x %d local steps%s, FedBuff K=%d, MaxStaleness %d,\n"
               "  speeds 1.0..1.5, AdamW kept per device, lr from the fleet's schedule at each "
               "rebase;\n  server %s lr %g", o.devices, o.rounds, o.local_steps,
               o.dylu ? " (scaled by speed)" : "", o.buffer, MAX_STALENESS,
               server_opt_names[o.server.opt], (double) server_lr_of(&o.server));
        if (o.server.opt == SRV_NESTEROV)
                printf(" momentum %g every %d merges", (double) o.server.mu,
                       o.server.period ? o.server.period : MAX(1, o.devices / o.buffer));
        if (o.server.opt == SRV_FEDADAM)
                printf(" eps %g", (double) (o.server.eps > 0 ? o.server.eps : AGG_ADAM_EPS_DEFAULT));
        printf("; top-k %g %% with error feedback\n", (double) o.topk * 100);
        printf("baselines: large batch %ld steps x %d x B (lr x1, x2, x4); alone %ld steps on its "
               "shard / on all; sequential %ld steps\n\n",
               steps, o.devices, steps, steps * o.devices);
        fflush(stdout);

        for (int i = 0; i < N_RUNS && !interrupted; i++) {
                char label[64];
                if (!(want & (1u << i)))
                        continue;
                r = run_one(&b, i, &runs[i]);
                if (r < 0) {
                        fprintf(stderr, "fed-learning: %s failed: %s\n", run_names[i], strerror(-r));
                        rc = EXIT_FAILURE;
                        continue;
                }
                printf("  %-24s done in %4.0f s: val loss %.4f\n",
                       i >= RUN_FEDAVG ? fleet_label(&o, i, label, sizeof(label)) : run_names[i],
                       runs[i].seconds, runs[i].val_loss);
                fflush(stdout);
        }

        const double large = runs[RUN_LARGE].ran ? runs[RUN_LARGE].val_loss : NAN;
        const double alone = runs[RUN_ALONE].ran ? runs[RUN_ALONE].alone_mean : NAN;
        const double alone_all = runs[RUN_ALONE_ALL].ran ? runs[RUN_ALONE_ALL].val_loss : NAN;
        const double seq = runs[RUN_SEQ].ran ? runs[RUN_SEQ].val_loss : NAN;
        const int fleet = RUN_FEDAVG + (int) o.server.opt;

        printf("\n%-24s %8s %7s %7s %7s %7s %11s %6s %7s %4s %6s\n", "run", "val loss", "/large",
               "/alone", "/all", "/seq", "uplink/dev", "merges", "stale", "drop", "wall s");
        if (runs[RUN_LARGE].ran)
                for (int i = 0; i < 3; i++) {
                        char l[32], a[16];
                        snprintf(l, sizeof(l), "large batch lr x%d%s", 1 << i,
                                 runs[RUN_LARGE].large[i] == large ? " *" : "");
                        ratio(a, sizeof(a), runs[RUN_LARGE].large[i], alone);
                        printf("%-24s %8.4f %7s %7s\n", l, runs[RUN_LARGE].large[i], "", a);
                }
        if (runs[RUN_ALONE].ran)
                printf("%-24s %8.4f %7s %7s  (devices %.4f .. %.4f)\n", "alone on own shard",
                       alone, "", "1.000", runs[RUN_ALONE].alone_min, runs[RUN_ALONE].alone_max);
        if (runs[RUN_ALONE_ALL].ran)
                printf("%-24s %8.4f\n", "alone on all data", alone_all);
        if (runs[RUN_SEQ].ran)
                printf("%-24s %8.4f\n", "sequential (equal tok)", seq);
        for (int i = RUN_FEDAVG; i < N_RUNS; i++) {
                char label[64];
                if (runs[i].ran)
                        print_fleet_row(fleet_label(&o, i, label, sizeof(label)), &runs[i], large,
                                        alone, alone_all, seq);
        }
        printf("val loss: mean over the held-out windows; * the large batch's best learning rate; "
               "uplink/dev: sum of a\ndevice's update bodies (mean over devices); stale: mean/max "
               "versions behind at merge\n\n");

        printf("where the progress goes (means over merges): |d_i| a device's delta; cos(d_i,d_j) "
               "pairwise in a buffer;\n|merged|/|d_i| the merged delta against one device's; "
               "local loss at a round's first -> last step;%s\nstaleness histogram (versions "
               "behind: updates)\n",
               b.trace ? "\nval gain: held-out loss before - after one merge;" : "");
        printf("%-24s %9s %9s %9s   %s%s\n", "run", "|d_i|", "cos", "merged", "local loss",
               b.trace ? "        val gain" : "");
        for (int i = RUN_FEDAVG; i < N_RUNS; i++) {
                char label[64];
                if (runs[i].ran)
                        print_diag(fleet_label(&o, i, label, sizeof(label)), &runs[i].fleet);
        }
        printf("\n");

        if (runs[fleet].ran) {
                double q = runs[fleet].val_loss / large;
                if (isfinite(q))
                        printf("%s: the fleet (%s int8) %.4f <= 0.98 x the large batch %.4f "
                               "(%.3f)\n",
                               q <= 0.98 ? "PASS" : "MISS", server_opt_names[o.server.opt],
                               runs[fleet].val_loss, large, q);
                if (runs[RUN_ALONE].ran)
                        printf("%s: the fleet %.4f below every device alone on its shard "
                               "(%.4f .. %.4f, mean %.4f)\n",
                               runs[fleet].val_loss < runs[RUN_ALONE].alone_min ? "PASS" : "MISS",
                               runs[fleet].val_loss, runs[RUN_ALONE].alone_min,
                               runs[RUN_ALONE].alone_max, alone);
                if (isfinite(alone_all))
                        printf("info: the fleet against one device on all the data (the pooled "
                               "ideal): %.3f\n",
                               runs[fleet].val_loss / alone_all);
                if (isfinite(seq))
                        printf("%s: against sequential at equal tokens %.3f (aim <= 1.10)\n",
                               runs[fleet].val_loss / seq <= 1.10 ? "PASS" : "MISS",
                               runs[fleet].val_loss / seq);
                if (runs[RUN_TOPK].ran) {
                        double d = runs[RUN_TOPK].val_loss / runs[fleet].val_loss - 1;
                        double x = runs[fleet].fleet.uplink_per_device /
                                   runs[RUN_TOPK].fleet.uplink_per_device;
                        /* one-sided: a lower loss than int8 is no loss of quality */
                        printf("%s: top-k %g %% val loss %+.2f %% of int8 (<= +1 %%), uplink "
                               "%.1fx smaller than int8\n",
                               d <= 0.01 ? "PASS" : "MISS", (double) o.topk * 100, 100 * d, x);
                }
                if (runs[RUN_IID].ran)
                        printf("info: IID control %.4f: non-IID drift costs %+.2f %%\n",
                               runs[RUN_IID].val_loss,
                               100 * (runs[fleet].val_loss / runs[RUN_IID].val_loss - 1));
        }
        if (o.curve && !interrupted && run_curve(&b) < 0)
                rc = EXIT_FAILURE;
        printf("\nbenchmark wall time %.0f s\n", mono_now_s() - t_start);
out:
        if (b.trace)
                fclose(b.trace);
        for (int i = 0; i < MAX_DEVICES; i++) {
                free(shards[i].bytes);
                free(shards_iid[i].bytes);
        }
        free(b.tok);
        free(b.tgt);
        free(b.init);
        model_free(b.m);
        free(text);
        if (interrupted)
                rc = EXIT_FAILURE;
        return rc;
}
