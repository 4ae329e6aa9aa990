/* SPDX-License-Identifier: MIT */
/* Federated learning benchmark (build/bench/fed-learning): does FedBuff with compressed
 * updates learn as well as training in one place, for the same tokens?
 *
 * Data: tinyshakespeare. The last 10 % (from the first speaker turn starting at or after
 * 90 % of the file) is held out for every configuration; validation loss is the mean over a
 * fixed set of consecutive T-byte windows of it. The first 90 % is split by speaker: a turn
 * starts at a line "NAME:" after a blank line (or at the start) and runs to the next turn;
 * each turn goes to device fnv1a64(NAME) % devices, so every device sees its own characters
 * (non-IID).
 *
 * Centralized: one model trained on the union of the shards (the whole training part, random
 * windows, i.e. shuffled) for S = devices x rounds x LocalSteps steps of (B, T).
 * Federated, once per encoding (fp32, int8, top-k with error feedback): an in-process
 * simulation with the real arithmetic and no HTTP (bench/fed-ingest measures the protocol).
 * Devices have fixed simulated speeds (1.0 to 1.5 time units per step, slowest last); a
 * device starts a round from the newest server version at that moment, runs LocalSteps real
 * trainer_step()s on its shard with its own AdamW state (kept across rounds, as edged keeps
 * its optimizer when it rebases), sends delta = local - base through upd_encode (top-k: with
 * its own residual, as daemon/federation.c; int8 and fp32 carry none), and the server
 * upd_decodes it on arrival. With K < devices updates per merge, bases lag: staleness
 * tau = current - base, weights agg_weights (tokens x 1/sqrt(1+tau)), agg_aggregate,
 * agg_fedavg with server LR 1.0, MaxStaleness 8 (older ones dropped and counted). Updates
 * left in the buffer when every device is done are merged as a last, smaller buffer, so
 * every configuration trains the same tokens. The learning rate follows the same schedule
 * (linear warmup, cosine to lr/10) over the same token count: a device's round uses the
 * schedule at the number of device steps started before it, plus its local step.
 *
 * Targets (issue 7): federated int8 within 5 % of the centralized validation loss; top-k
 * with >= 10x fewer uplink bytes than fp32 and <= 1 % loss difference (to federated fp32). */

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
#define SEED 1
#define DATA_SALT 0x5eed5eedULL

static const char *const default_corpus = "../shared/data/tinyshakespeare.txt";

static volatile sig_atomic_t interrupted;

typedef struct {
        const char *config, *corpus;
        int devices, buffer, local_steps, rounds, B, T, threads, warmup;
        float lr, weight_decay, topk, server_lr;
        bool quick, fedadam;
        unsigned only; /* bit per run (0: all) */
} bench_opts;

typedef enum { RUN_CENTRAL = -1 } run_kind; /* else an upd_encoding */

typedef struct {
        const char *name;
        int kind;
        bool ran;
        double val_loss, seconds;
        double uplink_per_device; /* mean over devices of the sum of body sizes */
        double uplink_min, uplink_max;
        long updates, merges, dropped;
        double mean_staleness;
        int max_staleness;
        double train_loss; /* mean of the last rounds / steps */
} run_result;

typedef struct {
        uint8_t *bytes;
        size_t size;
        corpus c; /* over bytes: all of it trains */
        batch_source src;
        size_t turns;
} shard;

typedef struct {
        adamw_state opt;
        ckpt_state cs;
        float *residual; /* top-k only */
        double speed, finish_at;
        int rounds_done;
        bool busy;
        /* the update in flight */
        void *body;
        size_t size;
        uint64_t base;
        double uplink;
        double loss_sum;
        long loss_n;
} device;

static void on_signal(int sig) {
        interrupted = 1;
}

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

/* Splits text into held-out (from the first turn at or after 90 %) and device shards. */
static int split_corpus(const uint8_t *t, size_t size, int devices, int T, shard *shards,
                        size_t *ret_train_size, size_t *ret_turns) {
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
                int d = name ? (int) (fnv1a64(t + p, name) % (uint64_t) devices) : 0;
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
        shard *shards;
        lr_schedule sched;
        long total_steps;
        int val_batches;
        uint8_t *tok, *tgt;
        float *init;           /* version 0 */
        float *adam_m, *adam_v; /* FedAdam's moments, fresh per run */
} bench_ctx;

static int val_loss(bench_ctx *b, double *ret) {
        float l;
        int r = trainer_val_loss(b->m, &b->val_src, b->o->B, b->o->T, 0, b->val_batches, b->tok,
                                 b->tgt, &l);
        *ret = l;
        return r;
}

static int run_central(bench_ctx *b, run_result *res) {
        const bench_opts *o = b->o;
        adamw_hparams hp;
        adamw_state opt = {};
        ckpt_state cs = { .data_cursor = SEED ^ DATA_SALT };
        double loss_sum = 0, t0 = mono_now_s();
        long loss_n = 0;
        int r;

        adamw_hparams_default(&hp);
        hp.weight_decay = o->weight_decay;
        if ((r = adamw_new(b->lay->n_params, &hp, &opt)) < 0)
                return r;
        memcpy(b->m->params, b->init, b->lay->n_params * sizeof(float));
        for (long s = 0; s < b->total_steps && !interrupted; s++) {
                float l;
                r = trainer_step(b->m, &opt, &b->central_src, o->B, o->T, 1, lr_at(&b->sched, s),
                                 b->tok, b->tgt, &cs, &l, NULL, NULL);
                if (r < 0)
                        goto out;
                if (s >= b->total_steps - b->total_steps / 10) {
                        loss_sum += l;
                        loss_n++;
                }
        }
        if (interrupted) {
                r = -EINTR;
                goto out;
        }
        res->train_loss = loss_n ? loss_sum / (double) loss_n : NAN;
        if ((r = val_loss(b, &res->val_loss)) < 0)
                goto out;
        res->seconds = mono_now_s() - t0;
        res->ran = true;
out:
        adamw_free(&opt);
        return r;
}

/* The server's side: K decoded deltas waiting, with their bases and tokens. */
typedef struct {
        float *delta[MAX_K];
        uint64_t base[MAX_K], tokens[MAX_K];
        size_t n;
} fedbuff;

static int server_merge(bench_ctx *b, fedbuff *fb, float *server, uint64_t *version, float *agg,
                        run_result *res) {
        uint64_t tau[MAX_K], tokens[MAX_K];
        const float *d[MAX_K];
        double w[MAX_K];
        size_t k = 0;
        int r;

        for (size_t i = 0; i < fb->n; i++) {
                uint64_t s = *version - fb->base[i];
                if (s > MAX_STALENESS) {
                        res->dropped++;
                        continue;
                }
                tau[k] = s;
                tokens[k] = fb->tokens[i];
                d[k] = fb->delta[i];
                res->mean_staleness += (double) s;
                res->max_staleness = MAX(res->max_staleness, (int) s);
                res->updates++;
                k++;
        }
        fb->n = 0;
        if (k == 0)
                return 0;
        if ((r = agg_weights(tokens, tau, k, w)) < 0 ||
            (r = agg_aggregate(d, w, k, b->lay->n_params, 0.0, agg)) < 0)
                return r;
        if (b->o->fedadam)
                agg_fedadam(server, b->adam_m, b->adam_v, agg, b->lay->n_params, b->o->server_lr);
        else
                agg_fedavg(server, agg, b->lay->n_params, b->o->server_lr);
        (*version)++;
        res->merges++;
        return 0;
}

/* One device round, run when it starts (simulated time): LocalSteps from the server's
 * current parameters, then the encoded delta is what it will send when it finishes. */
static int device_round(bench_ctx *b, device *dv, int idx, upd_encoding enc, const float *server,
                        uint64_t version, long steps_started, float *delta) {
        const bench_opts *o = b->o;
        const size_t n = b->lay->n_params;
        upd_info info;
        int r;

        memcpy(b->m->params, server, n * sizeof(float));
        for (int s = 0; s < o->local_steps; s++) {
                float l;
                r = trainer_step(b->m, &dv->opt, &b->shards[idx].src, o->B, o->T, 1,
                                 lr_at(&b->sched, steps_started + s), b->tok, b->tgt, &dv->cs, &l,
                                 NULL, NULL);
                if (r < 0)
                        return r;
                dv->loss_sum += l;
                dv->loss_n++;
        }
        for (size_t i = 0; i < n; i++)
                delta[i] = b->m->params[i] - server[i];
        free(dv->body);
        dv->body = NULL;
        r = upd_encode(enc, version, b->lay, delta, o->topk, enc == UPD_TOPK ? dv->residual : NULL,
                       &dv->body, &dv->size, &info);
        if (r < 0)
                return r;
        dv->base = version;
        dv->uplink += (double) dv->size;
        return 0;
}

static int run_federated(bench_ctx *b, upd_encoding enc, run_result *res) {
        const bench_opts *o = b->o;
        const size_t n = b->lay->n_params;
        device dev[MAX_DEVICES] = {};
        fedbuff fb = {};
        adamw_hparams hp;
        uint64_t version = 0;
        long steps_started = 0;
        double t0 = mono_now_s(), now = 0;
        float *server = malloc(n * sizeof(float)), *delta = malloc(n * sizeof(float)),
              *agg = malloc(n * sizeof(float));
        int r = 0;

        if (!server || !delta || !agg) {
                r = -ENOMEM;
                goto out;
        }
        memcpy(server, b->init, n * sizeof(float));
        free(b->adam_m);
        free(b->adam_v);
        b->adam_m = calloc(n, sizeof(float));
        b->adam_v = calloc(n, sizeof(float));
        if (!b->adam_m || !b->adam_v) {
                r = -ENOMEM;
                goto out;
        }
        adamw_hparams_default(&hp);
        hp.weight_decay = o->weight_decay;
        for (int i = 0; i < o->buffer; i++)
                if (!(fb.delta[i] = malloc(n * sizeof(float)))) {
                        r = -ENOMEM;
                        goto out;
                }
        for (int i = 0; i < o->devices; i++) {
                device *dv = &dev[i];
                if ((r = adamw_new(n, &hp, &dv->opt)) < 0)
                        goto out;
                if (enc == UPD_TOPK && !(dv->residual = calloc(n, sizeof(float)))) {
                        r = -ENOMEM;
                        goto out;
                }
                dv->cs.data_cursor = (SEED + 1000 * (uint64_t) (i + 1)) ^ DATA_SALT;
                /* fixed speeds, slowest last: 1.0 .. 1.5 time units per step */
                dv->speed = 1.0 + 0.5 * (double) i / (double) MAX(o->devices - 1, 1);
        }
        /* everyone starts from version 0 at time 0 */
        for (int i = 0; i < o->devices && !interrupted; i++) {
                if ((r = device_round(b, &dev[i], i, enc, server, version, steps_started, delta)) < 0)
                        goto out;
                steps_started += o->local_steps;
                dev[i].busy = true;
                dev[i].finish_at = now + o->local_steps * dev[i].speed;
        }
        /* bounded: every iteration ends one device round */
        for (long ev = 0; ev < (long) o->devices * o->rounds && !interrupted; ev++) {
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
                fb.tokens[fb.n] = (uint64_t) o->local_steps * (uint64_t) o->B * (uint64_t) o->T;
                fb.n++;
                if (fb.n == (size_t) o->buffer &&
                    (r = server_merge(b, &fb, server, &version, agg, res)) < 0)
                        goto out;
                if (dv->rounds_done < o->rounds) {
                        r = device_round(b, dv, next, enc, server, version, steps_started, delta);
                        if (r < 0)
                                goto out;
                        steps_started += o->local_steps;
                        dv->busy = true;
                        dv->finish_at = now + o->local_steps * dv->speed;
                }
        }
        if (interrupted) {
                r = -EINTR;
                goto out;
        }
        /* the last, partial buffer: the same tokens as the centralized run */
        if (fb.n > 0 && (r = server_merge(b, &fb, server, &version, agg, res)) < 0)
                goto out;
        memcpy(b->m->params, server, n * sizeof(float));
        if ((r = val_loss(b, &res->val_loss)) < 0)
                goto out;
        {
                double ls = 0, up = 0;
                long ln = 0;
                res->uplink_min = INFINITY;
                res->uplink_max = 0;
                for (int i = 0; i < o->devices; i++) {
                        up += dev[i].uplink;
                        res->uplink_min = MIN(res->uplink_min, dev[i].uplink);
                        res->uplink_max = MAX(res->uplink_max, dev[i].uplink);
                        ls += dev[i].loss_sum;
                        ln += dev[i].loss_n;
                }
                res->uplink_per_device = up / o->devices;
                res->train_loss = ln ? ls / (double) ln : NAN;
        }
        if (res->updates > 0)
                res->mean_staleness /= (double) res->updates;
        res->seconds = mono_now_s() - t0;
        res->ran = true;
out:
        for (int i = 0; i < o->devices; i++) {
                adamw_free(&dev[i].opt);
                free(dev[i].residual);
                free(dev[i].body);
        }
        for (int i = 0; i < MAX_K; i++)
                free(fb.delta[i]);
        free(server);
        free(delta);
        free(agg);
        return r;
}

/* ---- options ---- */

static void usage(FILE *f) {
        fputs("Usage: fed-learning [OPTIONS]\n"
              "Validation loss after the same tokens: centralized vs FedBuff with fp32, int8 and\n"
              "top-k updates over speaker-split (non-IID) tinyshakespeare; uplink bytes.\n\n"
              "  --corpus FILE       text (default ../shared/data/tinyshakespeare.txt)\n"
              "  --config NAME       model: tiny (default) or small\n"
              "  --devices N         devices = shards (default 8)\n"
              "  --buffer K          updates per merge (default 4)\n"
              "  --local-steps N     steps per device round (default 10)\n"
              "  --rounds N          rounds per device (default 18; --quick 4)\n"
              "  -B, --batch N       batch (default 8)\n"
              "  --lr X              peak learning rate (default 0.002)\n"
              "  --topk X            top-k fraction (default 0.01)\n"
              "  --threads N         BLAS threads (default 2)\n"
              "  --server-lr X       server learning rate (default 1.0; FedAdam 0.01)\n"
              "  --server-opt NAME   fedavg (default) or fedadam\n"
              "  --only LIST         run only these of central,fp32,int8,topk\n"
              "  --quick             fewer rounds (about a minute)\n",
              f);
}

static int parse_args(int argc, char **argv, bench_opts *o) {
        enum { OPT_CORPUS = 0x100, OPT_CONFIG, OPT_DEVICES, OPT_BUFFER, OPT_LOCAL, OPT_ROUNDS,
               OPT_LR, OPT_TOPK, OPT_THREADS, OPT_QUICK, OPT_SERVER_LR, OPT_SERVER_OPT,
               OPT_ONLY };
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
                { "only", required_argument, NULL, OPT_ONLY },
                {}
        };
        static const char *const run_names[] = { "central", "fp32", "int8", "topk" };
        bool rounds_set = false, server_lr_set = false;
        model_config cfg;
        char *end;
        int c;

        *o = (bench_opts) { .config = "tiny", .corpus = default_corpus, .devices = 8,
                            .buffer = 4, .local_steps = 10, .rounds = 18, .B = 8, .threads = 2,
                            .lr = 2e-3f, .weight_decay = 0.0f, .topk = 0.01f, .server_lr = 1.0f };
        while ((c = getopt_long(argc, argv, "hB:", options, NULL)) >= 0) {
                long v = 0;
                double d = 0;
                if (c == OPT_DEVICES || c == OPT_BUFFER || c == OPT_LOCAL || c == OPT_ROUNDS ||
                    c == 'B' || c == OPT_THREADS) {
                        errno = 0;
                        v = strtol(optarg, &end, 10);
                        if (errno || end == optarg || *end || v < 1 || v > 100000)
                                return -EINVAL;
                }
                if (c == OPT_LR || c == OPT_TOPK) {
                        d = strtod(optarg, &end);
                        if (end == optarg || *end || !(d > 0 && d <= 1))
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
                        o->lr = (float) d;
                        break;
                case OPT_TOPK:
                        o->topk = (float) d;
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
                        d = strtod(optarg, &end);
                        if (end == optarg || *end || !(d > 0 && d <= 100))
                                return -EINVAL;
                        o->server_lr = (float) d;
                        server_lr_set = true;
                        break;
                case OPT_SERVER_OPT:
                        if (strcmp(optarg, "fedavg") && strcmp(optarg, "fedadam"))
                                return -EINVAL;
                        o->fedadam = !strcmp(optarg, "fedadam");
                        break;
                case OPT_ONLY:
                        for (char *save = NULL, *t = strtok_r(optarg, ",", &save); t;
                             t = strtok_r(NULL, ",", &save)) {
                                size_t i = 0;
                                while (i < ARRAY_SIZE(run_names) && strcmp(t, run_names[i]))
                                        i++;
                                if (i == ARRAY_SIZE(run_names))
                                        return -EINVAL;
                                o->only |= 1u << i;
                        }
                        break;
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc)
                return -EINVAL;
        if (o->fedadam && !server_lr_set)
                o->server_lr = 0.01f;
        if (o->quick && !rounds_set)
                o->rounds = 4;
        model_config_by_name(o->config, &cfg);
        o->T = cfg.block_size;
        return 0;
}

static void print_row(const run_result *r, const run_result *central, const run_result *fp32) {
        char ratio[16] = "-", upl[24] = "-", upr[16] = "-", stale[24] = "-";

        if (!r->ran) {
                printf("%-12s failed\n", r->name);
                return;
        }
        if (central->ran)
                snprintf(ratio, sizeof(ratio), "%.3f", r->val_loss / central->val_loss);
        if (r->kind != RUN_CENTRAL) {
                snprintf(upl, sizeof(upl), "%.2f MB", r->uplink_per_device / 1e6);
                if (fp32->ran)
                        snprintf(upr, sizeof(upr), "%.1fx", fp32->uplink_per_device /
                                                                   r->uplink_per_device);
                snprintf(stale, sizeof(stale), "%.2f / %d", r->mean_staleness, r->max_staleness);
        }
        printf("%-12s %9.4f %9.4f %8s %12s %9s %10s %8ld %5ld %7.1f\n", r->name, r->val_loss,
               r->train_loss, ratio, upl, upr, stale, r->merges, r->dropped, r->seconds);
}

int main(int argc, char **argv) {
        run_result runs[4] = {
                { .name = "centralized", .kind = RUN_CENTRAL },
                { .name = "fed fp32", .kind = UPD_FP32 },
                { .name = "fed int8", .kind = UPD_INT8 },
                { .name = "fed top-k", .kind = UPD_TOPK },
        };
        shard shards[MAX_DEVICES] = {};
        bench_ctx b = {};
        model_config cfg;
        bench_opts o;
        uint8_t *text = NULL;
        size_t size = 0, train_size = 0, turns = 0;
        double t_start = mono_now_s(), init_loss = NAN;
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

        r = read_file(o.corpus, &text, &size);
        if (r < 0) {
                fprintf(stderr, "fed-learning: %s: %s\n", o.corpus, strerror(-r));
                return EXIT_FAILURE;
        }
        r = split_corpus(text, size, o.devices, o.T, shards, &train_size, &turns);
        if (r < 0) {
                fprintf(stderr, "fed-learning: %s: cannot split into %d speaker shards: %s\n",
                        o.corpus, o.devices, strerror(-r));
                rc = EXIT_FAILURE;
                goto out;
        }
        b.o = &o;
        b.shards = shards;
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
        b.total_steps = (long) o.devices * o.rounds * o.local_steps;
        b.sched = (lr_schedule) { .lr_max = o.lr, .lr_min = o.lr / 10,
                                  .warmup_steps = MAX(b.total_steps / 20, 1),
                                  .total_steps = b.total_steps };
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
        model_init_params(b.m, SEED);
        memcpy(b.init, b.m->params, b.lay->n_params * sizeof(float));
        if (val_loss(&b, &init_loss) < 0) {
                rc = EXIT_FAILURE;
                goto out;
        }

        printf("edged federated learning benchmark\n");
        printf("BLAS: %s, %d thread%s; sgemm peak %.0f GFLOPS (n=512)\n", blas_describe(),
               o.threads, o.threads == 1 ? "" : "s", sgemm_peak_gflops(512, 3));
        printf("corpus %s: %zu bytes; held out %zu bytes from byte %zu (last ~10 %%, at a turn "
               "start): %d batches x %d windows x T=%d\n",
               o.corpus, size, size - train_size, train_size, b.val_batches, o.B, o.T);
        printf("training part %zu bytes in %zu speaker turns, split by fnv1a64(speaker) %% %d:\n "
               " shard bytes:",
               train_size, turns, o.devices);
        for (int i = 0; i < o.devices; i++)
                printf(" %zu", shards[i].size);
        printf("\n");
        printf("model %s (%zu params, seed %d, val loss at init %.4f); B=%d T=%d; AdamW b2=0.95, "
               "wd %g, clip 1.0;\n  lr %g warmup %ld steps, cosine to %g at %ld steps\n",
               cfg.name, b.lay->n_params, SEED, init_loss, o.B, o.T, (double) o.weight_decay,
               (double) o.lr, b.sched.warmup_steps, (double) o.lr / 10, b.total_steps);
        printf("centralized: %ld steps = %.2f M tokens on the union of the shards\n",
               b.total_steps, (double) b.total_steps * o.B * o.T / 1e6);
        printf("federated: %d devices x %d rounds x %d local steps (same tokens), FedBuff K=%d, "
               "server %s lr %g,\n  MaxStaleness %d, device speeds 1.0..1.5, AdamW state "
               "kept per device across rounds; top-k %g %% with error feedback\n\n",
               o.devices, o.rounds, o.local_steps, o.buffer, o.fedadam ? "FedAdam" : "FedAvg",
               (double) o.server_lr, MAX_STALENESS,
               (double) o.topk * 100);
        fflush(stdout);

        for (int i = 0; i < 4 && !interrupted; i++) {
                if (o.only && !(o.only & (1u << i)))
                        continue;
                r = runs[i].kind == RUN_CENTRAL ? run_central(&b, &runs[i])
                                                 : run_federated(&b, (upd_encoding) runs[i].kind,
                                                                 &runs[i]);
                if (r < 0) {
                        fprintf(stderr, "fed-learning: %s failed: %s\n", runs[i].name,
                                strerror(-r));
                        rc = EXIT_FAILURE;
                }
                printf("  %-12s done in %.0f s: val loss %.4f\n", runs[i].name, runs[i].seconds,
                       runs[i].val_loss);
                fflush(stdout);
        }

        printf("\n%-12s %9s %9s %8s %12s %9s %10s %8s %5s %7s\n", "config", "val loss",
               "trainloss", "/central", "uplink/dev", "fp32/x", "stale avg/max", "merges", "drop",
               "wall s");
        for (int i = 0; i < 4; i++)
                if (!o.only || (o.only & (1u << i)))
                        print_row(&runs[i], &runs[0], &runs[1]);
        printf("val loss: mean over the held-out windows; trainloss: last 10 %% of steps "
               "(centralized) or all device steps;\nuplink/dev: sum of a device's update bodies "
               "(mean over devices)\n\n");

        if (runs[0].ran && runs[2].ran) {
                double q = runs[2].val_loss / runs[0].val_loss;
                printf("%s: federated int8 val loss %.4f within 5 %% of centralized %.4f "
                       "(%+.1f %%)\n",
                       q <= 1.05 ? "PASS" : "MISS", runs[2].val_loss, runs[0].val_loss,
                       100 * (q - 1));
        }
        if (runs[1].ran && runs[3].ran) {
                double x = runs[1].uplink_per_device / runs[3].uplink_per_device;
                double d = runs[3].val_loss / runs[1].val_loss - 1;
                /* one-sided: a lower loss than fp32 is no loss of quality */
                printf("%s: top-k uplink %.1fx smaller than fp32 (>= 10x) with val loss %+.2f %% "
                       "of federated fp32 (<= +1 %%)\n",
                       x >= 10 && d <= 0.01 ? "PASS" : "MISS", x, 100 * d);
        }
        if (runs[1].ran && runs[2].ran)
                printf("info: int8 uplink %.1fx smaller than fp32, val loss %+.2f %% of federated "
                       "fp32\n",
                       runs[1].uplink_per_device / runs[2].uplink_per_device,
                       100 * (runs[2].val_loss / runs[1].val_loss - 1));
        printf("\nbenchmark wall time %.0f s\n", mono_now_s() - t_start);
out:
        for (int i = 0; i < MAX_DEVICES; i++)
                free(shards[i].bytes);
        free(b.tok);
        free(b.tgt);
        free(b.init);
        free(b.adam_m);
        free(b.adam_v);
        model_free(b.m);
        free(text);
        if (interrupted)
                rc = EXIT_FAILURE;
        return rc;
}
