/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "federation.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "hash.h"
#include "log.h"
#include "macros.h"
#include "update-codec.h"

#define BACKOFF_BASE_S 1.0
#define BACKOFF_MAX_S 300.0
#define BACKOFF_JITTER 0.25
#define TASK_POLL_S 30.0 /* between rounds, how often to look for a new version */
#define TRAINER_WAIT_S 60.0
/* a model file is its tensors (n_params floats) plus a header of names, shapes and metadata:
 * a few KiB for MODEL_MAX_VIEWS tensors; anything beyond this is not a model of that config */
#define MODEL_HEADER_MAX ((uint64_t) 1 << 20)

static const char *const link_names[_FED_LINK_MAX] = {
        [FED_LINK_ENROLLING] = "enrolling",
        [FED_LINK_CONNECTED] = "connected",
        [FED_LINK_OFFLINE] = "offline",
        [FED_LINK_REFUSED] = "refused",
};

const char *fed_link_to_string(fed_link l) {
        return l >= 0 && l < _FED_LINK_MAX ? link_names[l] : NULL;
}

struct federation {
        fedclient *client;
        char *state_dir;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        bool stop;

        /* under lock */
        federation_status st;
        trainer *trainer;
        bool have_config;
        model_config cfg;
        char *telemetry;
        char stage_token[65]; /* the task's, "" when none */

        /* the thread's own */
        fed_task task;         /* the last task; its model may not be here (yet, or ever) */
        char *model_path;      /* the last model that passed validation: the one to train from */
        uint64_t model_version;
        model_config model_cfg;
        float model_lr;        /* the rate the aggregator gave with that model's version */
        bool have_rejected;    /* the task's model failed validation: not fetched again */
        uint64_t rejected_version;
        char rejected_sha256[65];
        uint64_t based_on;     /* version handed to the trainer as base; UINT64_MAX: none */
        float *delta, *residual, *residual_work, *params;
        size_t n_params;
        unsigned attempt;      /* consecutive failures, for the backoff */
        bool need_rebase;      /* the round is over (update acknowledged or refused) */
        long pending_steps;    /* round steps in the pending update; 0: none made yet */
        double next_task_poll, next_report;
        rng_t jitter;
};

static void set_link(federation *f, fed_link link, const char *err) {
        pthread_mutex_lock(&f->lock);
        if (f->st.link != link && link != FED_LINK_CONNECTED)
                log_warning("aggregator %s: %s", link_names[link], err && *err ? err : "");
        else if (f->st.link != link)
                log_info("aggregator connected");
        f->st.link = link;
        if (err)
                snprintf(f->st.last_error, sizeof(f->st.last_error), "%s", err);
        pthread_mutex_unlock(&f->lock);
}

/* Sleeps up to s seconds; false when stopping. */
static bool nap(federation *f, double s) {
        struct timespec until;
        bool stop;

        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t) s;
        until.tv_nsec += (long) ((s - floor(s)) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&f->lock);
        if (!f->stop)
                pthread_cond_timedwait(&f->wake, &f->lock, &until);
        stop = f->stop;
        pthread_mutex_unlock(&f->lock);
        return !stop;
}

/* After a failure: offline (or refused) and a growing, jittered wait. */
static bool back_off(federation *f, int r, const char *err) {
        double u = (double) (rng_u64(&f->jitter) >> 11) / 9007199254740992.0;
        double d = fed_backoff_delay(f->attempt++, BACKOFF_BASE_S, BACKOFF_MAX_S, BACKOFF_JITTER, u);

        /* refused needs the admin (token, identity, a model too big for this device); the
         * device keeps asking, slowly, in case the admin fixes it on the aggregator's side */
        set_link(f, r == -EACCES || r == -ENOKEY || r == -EFBIG ? FED_LINK_REFUSED : FED_LINK_OFFLINE,
                 err);
        return nap(f, d);
}

static void contact_ok(federation *f) {
        f->attempt = 0;
        set_link(f, FED_LINK_CONNECTED, NULL);
}

static trainer *get_trainer(federation *f) {
        pthread_mutex_lock(&f->lock);
        trainer *t = f->trainer;
        pthread_mutex_unlock(&f->lock);
        return t;
}

static bool same_shape(const model_config *a, const model_config *b) {
        return a->block_size == b->block_size && a->n_embd == b->n_embd &&
               a->n_layer == b->n_layer && a->n_head == b->n_head;
}

/* Loads path as a complete, finite model of exactly cfg (ckpt_load checks names, shapes and
 * values); -EBADMSG when the file is no such model. */
static int load_model(const char *path, const model_config *cfg, model **ret) {
        model *m = NULL;
        ckpt_state cs;
        int r = model_new(cfg, 1, 1, &m);

        if (r >= 0)
                r = ckpt_load(path, m, NULL, &cs);
        if (r < 0) {
                model_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

/* Why the task's model cannot be trained here, decided before fetching it: another config
 * than the trainer's (a device trains one model; a restart picks up another), or a size no
 * model of its config has (which would also make us download and map up to the client's
 * limit for nothing). NULL when it may be fine. */
static const char *task_model_unfit(federation *f, trainer *t, char *buf, size_t size) {
        _cleanup_free_ model_layout *lay = malloc(sizeof(*lay));
        const model_config *c = &f->task.cfg;

        if (!lay)
                return "out of memory";
        if (t && !same_shape(trainer_model_config(t), c)) {
                const model_config *tc = trainer_model_config(t);
                snprintf(buf, size,
                         "it is a T=%d C=%d L=%d H=%d model, this device trains T=%d C=%d L=%d "
                         "H=%d (restart edged to change)",
                         c->block_size, c->n_embd, c->n_layer, c->n_head, tc->block_size,
                         tc->n_embd, tc->n_layer, tc->n_head);
                return buf;
        }
        model_layout_init(lay, c);
        uint64_t tensors = (uint64_t) lay->n_params * sizeof(float);
        if (f->task.model_bytes < tensors || f->task.model_bytes - tensors > MODEL_HEADER_MAX) {
                snprintf(buf, size,
                         "its %" PRIu64 " bytes cannot be a T=%d C=%d L=%d H=%d model (%" PRIu64
                         " bytes of tensors)",
                         f->task.model_bytes, c->block_size, c->n_embd, c->n_layer, c->n_head,
                         tensors);
                return buf;
        }
        return NULL;
}

/* The task's model is refused until the aggregator publishes another: training goes on from
 * the last good one, and the same blob is not fetched again and again. */
static void reject_model(federation *f, const char *why) {
        f->have_rejected = true;
        f->rejected_version = f->task.version;
        memcpy(f->rejected_sha256, f->task.model_sha256, sizeof(f->rejected_sha256));
        if (f->model_path)
                log_warning("not training from the aggregator's version %" PRIu64
                            ": %s; staying with version %" PRIu64,
                            f->task.version, why, f->model_version);
        else
                log_warning("not training from the aggregator's version %" PRIu64 ": %s",
                            f->task.version, why);
        pthread_mutex_lock(&f->lock);
        snprintf(f->st.last_error, sizeof(f->st.last_error), "model %" PRIu64 " refused: %s",
                 f->task.version, why);
        pthread_mutex_unlock(&f->lock);
}

/* Fetches the task and, when it names a model we do not have, that model. */
static int refresh_task(federation *f) {
        char err[256] = "", why[200];
        bool changed = false;
        model *m = NULL;
        int r = fed_get_task(f->client, &f->task, &changed, err, sizeof(err));

        if (r < 0)
                return back_off(f, r, err) ? r : -ESHUTDOWN;
        f->next_task_poll = mono_now_s() + TASK_POLL_S;
        pthread_mutex_lock(&f->lock);
        memcpy(f->stage_token, f->task.stage_token, sizeof(f->stage_token));
        f->st.local_steps = f->task.local_steps;
        pthread_mutex_unlock(&f->lock);
        /* the rate goes with the version it was served for (a 'set' on the aggregator may
         * change it for the same version) */
        if (f->model_path && f->model_version == f->task.version)
                f->model_lr = f->task.lr;
        /* a 304 says the task is the same, not that its model is here: a download may have
         * failed, so go by the version of the model at hand */
        if ((f->model_path && f->model_version == f->task.version) ||
            (f->have_rejected && f->rejected_version == f->task.version &&
             strcmp(f->rejected_sha256, f->task.model_sha256) == 0)) {
                contact_ok(f);
                return 0;
        }
        const char *unfit = task_model_unfit(f, get_trainer(f), why, sizeof(why));
        if (unfit) {
                contact_ok(f);
                reject_model(f, unfit);
                return 0;
        }
        char *path = NULL;
        r = fed_fetch_model(f->client, &f->task, &path, err, sizeof(err));
        /* the backoff resets only once the model is here too: else a blob that always breaks
         * off or fails its hash would be downloaded again every second */
        if (r < 0)
                return back_off(f, r, err) ? r : -ESHUTDOWN;
        contact_ok(f);
        /* the hash proves only that this is the blob the aggregator meant: it must also be a
         * model to train from, or it is not kept as the task's model file */
        r = load_model(path, &f->task.cfg, &m);
        model_free(m);
        if (r == -EBADMSG) {
                if (unlink(path) < 0 && errno != ENOENT)
                        (void) log_warning_errno(errno, "cannot remove %s: %m", path);
                free(path);
                reject_model(f, "not a valid model of its config (see above)");
                return 0;
        }
        if (r < 0) {
                free(path);
                snprintf(err, sizeof(err), "loading model %" PRIu64 ": %s", f->task.version,
                         strerror(-r));
                return back_off(f, r, err) ? r : -ESHUTDOWN;
        }
        free(f->model_path);
        f->model_path = path;
        f->model_version = f->task.version;
        f->model_cfg = f->task.cfg;
        f->model_lr = f->task.lr;
        pthread_mutex_lock(&f->lock);
        f->st.have_task = true;
        f->st.version = f->model_version;
        f->cfg = f->model_cfg;
        f->have_config = true;
        pthread_mutex_unlock(&f->lock);
        return 0;
}

/* Makes the model at hand the trainer's base; replace: the local parameters too. */
static int rebase(federation *f, trainer *t, bool replace) {
        model *m = NULL;
        int r;

        if (!same_shape(&f->model_cfg, trainer_model_config(t)))
                r = log_warning_errno(EPROTO, "the aggregator's model does not match the trainer's; restart edged");
        else
                r = load_model(f->model_path, &f->model_cfg, &m);
        /* the fleet's rate for this version, set before the base so that every step of the
         * round runs at it (the trainer reads it at each step) */
        if (r >= 0)
                trainer_set_lr(t, f->model_lr);
        if (r >= 0)
                r = trainer_set_base(t, m->params, f->model_version, replace, TRAINER_WAIT_S);
        model_free(m);
        if (r < 0) {
                trainer_set_lr(t, f->st.lr); /* the round goes on as it was */
                return log_warning_errno(r, "cannot take version %" PRIu64 " as the base: %m",
                                         f->model_version);
        }
        f->based_on = f->model_version;
        pthread_mutex_lock(&f->lock);
        f->st.base_version = f->model_version;
        f->st.lr = f->model_lr;
        pthread_mutex_unlock(&f->lock);
        log_info("training from the aggregator's version %" PRIu64 " at lr %g%s", f->model_version,
                 (double) f->model_lr, replace ? "" : " (resuming local progress)");
        return 0;
}

static void set_pending(federation *f, unsigned n) {
        pthread_mutex_lock(&f->lock);
        f->st.pending_updates = n;
        pthread_mutex_unlock(&f->lock);
}

static void count(federation *f, uint64_t *counter) {
        pthread_mutex_lock(&f->lock);
        (*counter)++;
        pthread_mutex_unlock(&f->lock);
}

/* Sends the pending update, if any: 1 when it is gone (acknowledged, or refused for good: the
 * round is over either way), 0 when there was none, -EAGAIN after a failure (backed off),
 * -ESHUTDOWN when stopping. */
static int send_pending(federation *f) {
        _cleanup_free_ void *body = NULL;
        fed_update_meta meta;
        fed_ack ack = { 0 };
        char err[256] = "";
        size_t size;
        int r = fed_pending_load(f->client, &meta, &body, &size);

        if (r == -ENOENT || r == -EBADMSG) {
                set_pending(f, 0);
                return 0;
        }
        if (r < 0)
                return -EAGAIN;
        set_pending(f, 1);
        count(f, &f->st.updates_sent);
        r = fed_send_update(f->client, &meta, body, size, &ack, err, sizeof(err));
        if (r == -EPROTO || r == -ESTALE || r == -EINVAL) {
                /* refused for good: this delta can never count; start over from the task */
                log_warning("update from version %" PRIu64 " refused: %s", meta.base_version, err);
                count(f, &f->st.updates_rejected);
                (void) fed_pending_drop(f->client);
                set_pending(f, 0);
                return 1;
        }
        if (r < 0)
                return back_off(f, r, err) ? -EAGAIN : -ESHUTDOWN;
        contact_ok(f);
        pthread_mutex_lock(&f->lock);
        f->st.updates_acked++;
        f->st.updates_duplicate += ack.duplicate;
        f->st.bytes_sent += size;
        pthread_mutex_unlock(&f->lock);
        memcpy(f->residual, f->residual_work, f->n_params * sizeof(float));
        log_info("update from version %" PRIu64 " (%ld steps) %s as #%" PRIu64
                 "; the aggregator is at version %" PRIu64,
                 meta.base_version, meta.steps, ack.duplicate ? "was already there" : "accepted",
                 ack.update_id, ack.version);
        (void) fed_pending_drop(f->client);
        set_pending(f, 0);
        return 1;
}

/* The local progress since the base becomes the pending update (replacing an unsent one from
 * the same base under its key, so it can never be counted twice). */
static int make_update(federation *f, trainer *t) {
        _cleanup_free_ void *old_body = NULL, *body = NULL;
        fed_update_meta meta = { 0 }, old;
        trainer_round round;
        model_layout lay;
        upd_info info;
        size_t size, old_size;
        int r;

        r = trainer_take_delta(t, f->delta, &round, TRAINER_WAIT_S);
        if (r < 0)
                return r;
        if (fed_pending_load(f->client, &old, &old_body, &old_size) >= 0 &&
            old.base_version == round.base_version)
                memcpy(meta.idempotency_key, old.idempotency_key, sizeof(meta.idempotency_key));
        /* the trainer's layout: the task may name another config since (refused, not trained) */
        model_layout_init(&lay, trainer_model_config(t));
        /* error feedback is committed only once the aggregator acknowledges */
        memcpy(f->residual_work, f->residual, f->n_params * sizeof(float));
        r = upd_encode(f->task.encoding, round.base_version, &lay, f->delta, f->task.topk_fraction,
                       f->task.encoding == UPD_TOPK ? f->residual_work : NULL, &body, &size, &info);
        if (r < 0)
                return log_warning_errno(r, "cannot encode the update: %m");
        meta.base_version = round.base_version;
        meta.steps = round.steps;
        meta.tokens = round.tokens;
        meta.loss = round.mean_loss;
        r = fed_pending_save(f->client, &meta, body, size);
        if (r < 0)
                return log_warning_errno(r, "cannot keep the update on disk: %m");
        f->pending_steps = round.steps;
        set_pending(f, 1);
        log_debug("update ready: version %" PRIu64 ", %ld steps, %zu bytes (%s), norm %.4g",
                  meta.base_version, meta.steps, size, upd_encoding_to_string(f->task.encoding),
                  info.l2_norm);
        return 0;
}

static void report(federation *f) {
        char err[256];
        char *json = NULL;

        pthread_mutex_lock(&f->lock);
        if (f->telemetry)
                json = strdup(f->telemetry);
        pthread_mutex_unlock(&f->lock);
        f->next_report = mono_now_s() + (f->task.report_interval_s > 0 ? f->task.report_interval_s : 60);
        if (json && fed_send_telemetry(f->client, json, err, sizeof(err)) < 0)
                log_debug("telemetry not sent: %s", err);
        free(json);
}

static int ensure_buffers(federation *f, size_t n) {
        if (f->n_params == n)
                return 0;
        free(f->delta);
        free(f->residual);
        free(f->residual_work);
        f->delta = malloc(n * sizeof(float));
        f->residual = calloc(n, sizeof(float));
        f->residual_work = malloc(n * sizeof(float));
        f->n_params = f->delta && f->residual && f->residual_work ? n : 0;
        return f->n_params ? 0 : -ENOMEM;
}

/* One pass of the loop: 1 when it already waited for the trainer (go again at once), 0 when
 * the caller should pause a moment, -ESHUTDOWN when stopping. */
static int step(federation *f) {
        trainer *t;
        trainer_round round;
        int r;

        /* without a model, ask every pass, unless the task's model was refused: then at the
         * usual pace, until the aggregator publishes another */
        if ((!f->model_path && !f->have_rejected) || f->need_rebase ||
            mono_now_s() >= f->next_task_poll) {
                r = refresh_task(f);
                if (r < 0)
                        return r == -ESHUTDOWN ? r : 0;
        }
        t = get_trainer(f);
        if (!t) {
                /* telemetry still goes out: a device without data may serve inference stages */
                if (mono_now_s() >= f->next_report)
                        report(f);
                return 0; /* the manager starts it once the config is known */
        }
        if (ensure_buffers(f, trainer_n_params(t)) < 0)
                return 0;
        trainer_get_round(t, &round);
        if (f->based_on == UINT64_MAX) {
                /* first contact since start: keep local progress only if it is from this very
                 * version (a restart), else start from the aggregator's model */
                trainer_stats ts;
                trainer_get_stats(t, &ts);
                (void) rebase(f, t, !(round.base_version == f->model_version && ts.step > 0));
                return 0;
        }
        r = send_pending(f);
        if (r == -ESHUTDOWN)
                return r;
        if (r > 0) {
                f->need_rebase = true; /* the next pass learns the newest version first */
                return 0;
        }
        if (f->need_rebase) {
                /* a new round from the newest model, refreshed at the top of this pass */
                if (rebase(f, t, true) >= 0) {
                        f->need_rebase = false;
                        f->pending_steps = 0;
                }
                return 0;
        }
        /* enough local steps, or enough more while an unsent update waits (offline) */
        if (round.have_base && round.steps >= f->pending_steps + f->task.local_steps) {
                if (make_update(f, t) >= 0) {
                        r = send_pending(f);
                        if (r == -ESHUTDOWN)
                                return r;
                        if (r > 0)
                                f->need_rebase = true;
                }
        } else if (f->model_version != f->based_on && round.steps == 0)
                (void) rebase(f, t, true);
        else if (round.steps < f->pending_steps + f->task.local_steps) {
                /* wake when the round is complete rather than a second late */
                trainer_stats ts;
                trainer_get_stats(t, &ts);
                (void) trainer_wait_step(t, ts.step + (f->pending_steps + f->task.local_steps - round.steps), 1.0);
                if (mono_now_s() >= f->next_report)
                        report(f);
                return 1; /* waited already */
        }
        if (mono_now_s() >= f->next_report)
                report(f);
        return 0;
}

static void *thread_main(void *arg) {
        federation *f = arg;
        struct sched_param sp = { 0 };
        char err[256] = "";
        int r;

        /* network waits and a little encoding: idle priority like the rest of the harvest */
        (void) sched_setscheduler(0, SCHED_IDLE, &sp);
        for (;;) {
                r = fed_ensure_identity(f->client, err, sizeof(err));
                if (r >= 0)
                        break;
                if (!back_off(f, r, err))
                        return NULL;
        }
        contact_ok(f);
        for (;;) {
                r = step(f);
                if (r < 0 || (r == 0 && !nap(f, 1.0)))
                        break;
                pthread_mutex_lock(&f->lock);
                bool stop = f->stop;
                pthread_mutex_unlock(&f->lock);
                if (stop)
                        break;
        }
        return NULL;
}

int federation_start(const fed_options *o, federation **ret) {
        federation *f = calloc(1, sizeof(*f));
        int r;

        if (!f)
                return -ENOMEM;
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->wake, NULL);
        f->based_on = UINT64_MAX;
        f->st.link = FED_LINK_ENROLLING;
        rng_seed(&f->jitter, (uint64_t) time(NULL) ^ (uint64_t) getpid());
        r = fed_client_new(o, &f->client);
        if (r >= 0)
                r = -pthread_create(&f->thread, NULL, thread_main, f);
        if (r < 0) {
                fed_client_free(f->client);
                pthread_mutex_destroy(&f->lock);
                pthread_cond_destroy(&f->wake);
                free(f);
                return r;
        }
        *ret = f;
        return 0;
}

void federation_stop(federation *f) {
        if (!f)
                return;
        pthread_mutex_lock(&f->lock);
        f->stop = true;
        pthread_cond_broadcast(&f->wake);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->thread, NULL);
        fed_client_free(f->client);
        free(f->model_path);
        free(f->delta);
        free(f->residual);
        free(f->residual_work);
        free(f->telemetry);
        explicit_bzero(f->stage_token, sizeof(f->stage_token));
        explicit_bzero(f->task.stage_token, sizeof(f->task.stage_token));
        pthread_mutex_destroy(&f->lock);
        pthread_cond_destroy(&f->wake);
        free(f);
}

int federation_model_config(federation *f, model_config *ret) {
        pthread_mutex_lock(&f->lock);
        bool have = f->have_config;
        if (have)
                *ret = f->cfg;
        pthread_mutex_unlock(&f->lock);
        return have ? 0 : -EAGAIN;
}

void federation_attach(federation *f, trainer *t) {
        pthread_mutex_lock(&f->lock);
        f->trainer = t;
        pthread_cond_broadcast(&f->wake);
        pthread_mutex_unlock(&f->lock);
}

void federation_get_status(federation *f, federation_status *ret) {
        pthread_mutex_lock(&f->lock);
        *ret = f->st;
        pthread_mutex_unlock(&f->lock);
}

bool federation_stage_token(federation *f, char ret[65]) {
        pthread_mutex_lock(&f->lock);
        memcpy(ret, f->stage_token, 65);
        pthread_mutex_unlock(&f->lock);
        return ret[0] != 0;
}

void federation_set_telemetry(federation *f, const char *json) {
        char *copy = json ? strdup(json) : NULL;
        pthread_mutex_lock(&f->lock);
        free(f->telemetry);
        f->telemetry = copy;
        pthread_mutex_unlock(&f->lock);
}
