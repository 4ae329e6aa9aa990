/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "train-step.h"
#include "trainer.h"

#include <glob.h>
#include <libgen.h>
#include <stdio.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "blas.h"
#include "checkpoint.h"
#include "idle-sched.h"
#include "log.h"
#include "macros.h"


struct trainer {
        trainer_config c;
        model *m;
        adamw_state opt;
        ckpt_state cs;
        uint8_t *tok, *tgt;

        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake, changed;
        pthread_mutex_t params_lock; /* held while the optimizer writes the parameters */
        long saved_step;
        long val_due; /* step at which the next validation loss is measured */
        double park_requested_at;
        double park_latency;
        trainer_stats stats;
        double last_save; /* trainer thread only */

        /* federation: requests served between steps like save requests (under lock) */
        float *base; /* parameters of the base model; NULL until set */
        const float *req_params;
        float *req_delta;
        uint64_t req_version;
        uint64_t req_done; /* counts served requests */
        uint64_t save_attempts;
        trainer_round round;
        double round_loss_sum;
        int req_result;
        bool req_replace;

        pid_t keep_tid;    /* the event loop's thread: stays at normal priority */
        int running_cores; /* trainer thread only */
        bool parked;
        bool idle_warned;
        cpu_set_t allowed; /* the CPUs the service may use (CPUAffinity=, taskset) */
        atomic_int cores;           /* read between layers without the lock */
        atomic_bool stop;
        atomic_bool save_requested; /* read by the hook without the lock */
        atomic_bool fed_request;    /* a set-base or delta request is waiting */
        _Atomic float task_lr;
};


int trainer_idle_threads(trainer *t) {
        return idle_sched_all_threads(t->keep_tid);
}

typedef struct {
        pid_t *tids;
        size_t max, n;
} tid_list;

static int collect_one(pid_t tid, void *userdata) {
        tid_list *l = userdata;
        if (l->n < l->max)
                l->tids[l->n] = tid;
        l->n++;
        return 0;
}

int trainer_harvester_tids(trainer *t, pid_t *tids, size_t max, size_t *ret_n) {
        tid_list l = { .tids = tids, .max = max };
        int r = process_for_each_thread(t->keep_tid, collect_one, &l);
        if (r < 0)
                return r;
        *ret_n = MIN(l.n, max);
        return l.n > max ? -E2BIG : 0;
}

static char *with_suffix(const char *path, const char *suffix) {
        char *p = NULL;
        return asprintf(&p, "%s%s", path, suffix) < 0 ? NULL : p;
}

/* The newest checkpoint is kept as <name>.prev while the next one is written, so a newest
 * one found corrupt later still leaves a good one to resume from. */
/* The newest checkpoint becomes <name>.prev through a hard link and a rename, so that at every
 * instant <name> is a complete checkpoint (a kill between two renames once left only .prev);
 * then the new one replaces <name> atomically. Without hard links (vfat) the old way: rename
 * to .prev, and back if the save fails. */
static void save(trainer *t) {
        _cleanup_free_ char *prev = NULL, *prev_tmp = NULL;
        bool rotated = false;
        int r;

        if (!t->c.checkpoint || !(prev = with_suffix(t->c.checkpoint, ".prev")) ||
            !(prev_tmp = with_suffix(t->c.checkpoint, ".prev.tmp")))
                return;
        (void) unlink(prev_tmp);
        if (link(t->c.checkpoint, prev_tmp) == 0) {
                (void) rename(prev_tmp, prev);
                /* rename() between two links of one file succeeds doing nothing */
                (void) unlink(prev_tmp);
        }
        else if (errno != ENOENT)
                rotated = rename(t->c.checkpoint, prev) == 0;
        r = ckpt_save(t->c.checkpoint, t->m, &t->opt, &t->cs);
        if (r < 0 && rotated)
                (void) rename(prev, t->c.checkpoint); /* the last good one stays the newest */
        pthread_mutex_lock(&t->lock);
        if (r < 0 && t->stats.save_error != r)
                log_warning_errno(r, "%s: checkpoint not written, keeping the previous one: %m",
                                  t->c.checkpoint);
        else if (r >= 0 && t->stats.save_error < 0)
                log_info("%s: checkpoints are written again", t->c.checkpoint);
        t->stats.save_error = r < 0 ? r : 0;
        if (r >= 0) {
                t->stats.checkpoints++;
                t->saved_step = t->cs.step;
        }
        t->save_attempts++;
        pthread_cond_broadcast(&t->changed);
        pthread_mutex_unlock(&t->lock);
}

/* Loads path if it is there. A corrupt file is renamed <path>.corrupt (kept for a bug report,
 * never overwritten by the next save) and reported as -ENOENT so the caller falls back. */
static int load_or_quarantine(trainer *t, const char *path) {
        _cleanup_free_ char *bad = NULL;
        int r;

        if (access(path, F_OK) < 0)
                return -ENOENT;
        r = ckpt_load(path, t->m, &t->opt, &t->cs);
        if (r != -EBADMSG)
                return r;
        bad = with_suffix(path, ".corrupt");
        if (bad && rename(path, bad) == 0)
                log_warning("%s is corrupt; kept as %s", path, bad);
        return -ENOENT;
}

/* A kill in the middle of a save leaves its temporary file (".#<name>.XXXXXX", tens of MB)
 * and maybe <name>.prev.tmp behind; nothing else ever removes them. */
static void remove_leftovers(const char *checkpoint) {
        _cleanup_free_ char *dir_copy = strdup(checkpoint), *base_copy = strdup(checkpoint);
        _cleanup_free_ char *pattern = NULL, *prev_tmp = with_suffix(checkpoint, ".prev.tmp");
        glob_t g;

        if (!dir_copy || !base_copy ||
            asprintf(&pattern, "%s/.#%s.*", dirname(dir_copy), basename(base_copy)) < 0)
                return;
        if (glob(pattern, GLOB_NOSORT, NULL, &g) == 0) {
                for (size_t i = 0; i < g.gl_pathc; i++)
                        if (unlink(g.gl_pathv[i]) == 0)
                                log_info("removed %s, left by an interrupted save", g.gl_pathv[i]);
                globfree(&g);
        }
        if (prev_tmp)
                (void) unlink(prev_tmp);
}

static int resume(trainer *t) {
        const trainer_config *c = &t->c;
        _cleanup_free_ char *prev = NULL;
        int r;

        if (c->checkpoint) {
                remove_leftovers(c->checkpoint);
                r = load_or_quarantine(t, c->checkpoint);
                if (r >= 0)
                        log_info("resumed from %s at step %ld", c->checkpoint, t->cs.step);
                if (r != -ENOENT)
                        return r;
                prev = with_suffix(c->checkpoint, ".prev");
                if (!prev)
                        return -ENOMEM;
                r = load_or_quarantine(t, prev);
                if (r >= 0)
                        log_warning("resumed from the previous checkpoint %s at step %ld", prev,
                                    t->cs.step);
                if (r != -ENOENT)
                        return r;
        }
        trainer_fresh(t->m, c->seed, &t->cs);
        return 0;
}

/* One optimizer step; -ECANCELED when a pause cut it short (nothing of it is kept). */
static int one_step(trainer *t) {
        const trainer_config *c = &t->c;
        uint64_t wait_ns = 0;
        double t0 = mono_now_s();
        float loss;
        int r = trainer_step(t->m, &t->opt, &c->src, c->B, c->T, c->accum,
                             atomic_load(&t->task_lr) > 0 ? atomic_load(&t->task_lr)
                                                          : lr_at(&c->sched, t->cs.step),
                             t->tok, t->tgt, &t->cs, &loss,
                             &wait_ns, &t->params_lock);

        pthread_mutex_lock(&t->lock);
        t->stats.data_wait_ns += wait_ns;
        if (r >= 0 || r == -ECANCELED)
                t->stats.step_ns += (uint64_t) ((mono_now_s() - t0) * 1e9);
        if (r >= 0) {
                t->stats.step = t->cs.step;
                t->stats.tokens += (uint64_t) c->B * (uint64_t) c->T * (uint64_t) c->accum;
                t->stats.loss = loss;
                t->stats.data_error = 0;
                t->round.steps++;
                t->round.tokens += (uint64_t) c->B * (uint64_t) c->T * (uint64_t) c->accum;
                t->round_loss_sum += loss;
                t->round.mean_loss = (float) (t->round_loss_sum / (double) t->round.steps);
                pthread_cond_broadcast(&t->changed);
        }
        pthread_mutex_unlock(&t->lock);
        if (r >= 0) /* %a: exact, so runs can be compared bit for bit (tests/test-resume.c) */
                log_debug("step %ld loss %a", t->cs.step, (double) loss);
        return r;
}

/* Held-out loss every val_every_steps; a pause in the middle just means trying again after
 * the next step. */
static void maybe_validate(trainer *t) {
        const trainer_config *c = &t->c;
        float loss;

        if (c->val_every_steps <= 0 || t->cs.step < t->val_due)
                return;
        if (trainer_val_loss(t->m, &c->src, c->B, c->T, 0, c->val_batches > 0 ? c->val_batches : 4,
                             t->tok, t->tgt, &loss) < 0)
                return;
        t->val_due = t->cs.step + c->val_every_steps;
        pthread_mutex_lock(&t->lock);
        t->stats.val_loss = loss;
        pthread_mutex_unlock(&t->lock);
}

/* A failed step (no data yet, files gone, I/O errors) is retried after a second; it is
 * logged once per distinct error, not once a second. */
static void step_failed(trainer *t, int r) {
        struct timespec until;

        pthread_mutex_lock(&t->lock);
        if (t->stats.data_error != r)
                log_warning_errno(r, "training step failed, retrying: %m");
        t->stats.data_error = r;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (!atomic_load(&t->stop))
                pthread_cond_timedwait(&t->wake, &t->lock, &until);
        pthread_mutex_unlock(&t->lock);
}

static bool take_save_request(trainer *t) {
        return atomic_exchange(&t->save_requested, false);
}

/* Runs the waiting set-base or delta request; called with the lock held, between steps or
 * inside one (the parameters are those of the last whole step either way). */
static void serve_fed_request(trainer *t) {
        const size_t n = t->m->layout.n_params;
        int r = 0;

        if (t->req_delta) {
                if (!t->base)
                        r = -ENOENT;
                else
                        for (size_t i = 0; i < n; i++)
                                t->req_delta[i] = t->m->params[i] - t->base[i];
        } else {
                if (!t->base && !(t->base = malloc(n * sizeof(float))))
                        r = -ENOMEM;
                if (r >= 0) {
                        memcpy(t->base, t->req_params, n * sizeof(float));
                        if (t->req_replace) {
                                pthread_mutex_lock(&t->params_lock);
                                memcpy(t->m->params, t->req_params, n * sizeof(float));
                                pthread_mutex_unlock(&t->params_lock);
                        }
                        t->cs.model_version = t->req_version;
                        t->round = (trainer_round) { .base_version = t->req_version,
                                                     .have_base = true,
                                                     .mean_loss = NAN };
                        t->round_loss_sum = 0;
                }
        }
        t->req_result = r;
        t->req_done++;
        pthread_cond_broadcast(&t->changed);
}

/* With every allowed CPU granted, one computing thread per CPU: left free to move, the
 * scheduler's balancing pulls a SCHED_IDLE thread next to a waking foreground task, which
 * then waits behind it (measured: 38 preemptions of 60 bursts unpinned, 7 pinned). With
 * fewer cores granted the foreground's CPU is not known, so they stay free. */
static void place_threads(trainer *t, int cores) {
        int cpus[CPU_SETSIZE], n = 0;

        if (cores > 0 && cores >= CPU_COUNT(&t->allowed))
                for (int c = 0; c < CPU_SETSIZE && n < cores; c++)
                        if (CPU_ISSET(c, &t->allowed))
                                cpus[n++] = c;
        int r = blas_place_threads(cpus, n, &t->allowed);
        if (r < 0)
                (void) log_full_errno(LOG_LEVEL_DEBUG, r, "cannot place the training threads: %m");
}

/* Waits while the grant is zero, answering save requests meanwhile. Called between steps
 * and from the model's hook inside a step: parking mid-step keeps the half-done step (its
 * activations and gradients) instead of throwing it away, and a checkpoint taken then holds
 * the last whole step, which is all that is in params, optimizer and cursor. Returns false
 * when the trainer is stopping. */
static bool park_while_paused(trainer *t) {
        pthread_mutex_lock(&t->lock);
        for (;;) {
                if (atomic_load(&t->stop))
                        break;
                if (atomic_exchange(&t->fed_request, false)) {
                        serve_fed_request(t); /* under the lock: short, and callers wait */
                        continue;
                }
                bool save_now = take_save_request(t);
                if (save_now || (atomic_load(&t->cores) == 0 && !t->parked)) {
                        if (!save_now) {
                                t->parked = true;
                                t->park_latency = mono_now_s() - t->park_requested_at;
                                pthread_cond_broadcast(&t->changed);
                        }
                        pthread_mutex_unlock(&t->lock);
                        if (save_now) {
                                save(t);
                                t->last_save = mono_now_s();
                        }
                        pthread_mutex_lock(&t->lock);
                        continue;
                }
                if (atomic_load(&t->cores) > 0)
                        break;
                pthread_cond_wait(&t->wake, &t->lock);
        }
        t->parked = false;
        pthread_mutex_unlock(&t->lock);
        if (atomic_load(&t->stop))
                return false;

        int want = atomic_load(&t->cores);
        if (want > 0 && want != t->running_cores) {
                /* free them first: OpenBLAS only reaches the workers of its current count */
                place_threads(t, 0);
                blas_set_threads(want);
                t->running_cores = want;
                place_threads(t, want);
                int r = trainer_idle_threads(t);
                /* a thread left at normal priority competes with the person's programs */
                if (r < 0 && !t->idle_warned) {
                        log_warning_errno(r, "a training thread cannot be put at SCHED_IDLE: %m");
                        t->idle_warned = true;
                }
        }
        return true;
}

/* The model's hook, between layers: parks right there while paused; aborts only to stop. */
static bool should_yield(void *userdata) {
        trainer *t = userdata;

        if (atomic_load(&t->stop))
                return true;
        if (atomic_load(&t->cores) > 0 && !atomic_load(&t->save_requested) &&
            !atomic_load(&t->fed_request))
                return false;
        return !park_while_paused(t);
}

static void *thread_main(void *arg) {
        trainer *t = arg;

        /* before any BLAS call from here, so threads it starts inherit the class */
        idle_sched_thread(0);
        if (sched_getaffinity(0, sizeof(t->allowed), &t->allowed) < 0)
                CPU_ZERO(&t->allowed); /* never "all granted": threads stay free */
        t->last_save = mono_now_s();
        while (park_while_paused(t)) {
                int r = one_step(t);
                if (r == -ECANCELED) {
                        pthread_mutex_lock(&t->lock);
                        t->stats.steps_abandoned++;
                        pthread_mutex_unlock(&t->lock);
                        continue;
                }
                if (r < 0) {
                        step_failed(t, r);
                        continue;
                }
                maybe_validate(t);
                if (t->c.checkpoint_interval_s > 0 &&
                    mono_now_s() - t->last_save >= t->c.checkpoint_interval_s) {
                        save(t);
                        t->last_save = mono_now_s();
                }
        }
        pthread_mutex_lock(&t->lock);
        t->parked = true;
        pthread_cond_broadcast(&t->changed);
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

int trainer_start(const trainer_config *c, trainer **ret) {
        trainer *t = calloc(1, sizeof(*t));
        int r;

        if (!t)
                return -ENOMEM;
        t->c = *c;
        t->keep_tid = (pid_t) syscall(SYS_gettid);
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->wake, NULL);
        pthread_cond_init(&t->changed, NULL);
        pthread_mutex_init(&t->params_lock, NULL);
        t->stats.loss = NAN;
        t->stats.val_loss = NAN;
        atomic_init(&t->cores, 0);
        atomic_init(&t->stop, false);

        r = model_new(&c->cfg, c->B, c->T, &t->m);
        if (r >= 0)
                r = adamw_new(t->m->layout.n_params, &c->hp, &t->opt);
        t->tok = malloc((size_t) c->B * c->T);
        t->tgt = malloc((size_t) c->B * c->T);
        if (r >= 0 && (!t->tok || !t->tgt))
                r = -ENOMEM;
        if (r >= 0)
                r = resume(t);
        if (r < 0)
                goto fail;
        t->stats.step = t->cs.step;
        t->saved_step = t->cs.step;
        t->val_due = t->cs.step;
        t->round = (trainer_round) { .base_version = t->cs.model_version, .mean_loss = NAN };
        atomic_init(&t->task_lr, 0.0f);
        atomic_init(&t->fed_request, false);
        t->m->yield = should_yield;
        t->m->yield_userdata = t;
        r = -pthread_create(&t->thread, NULL, thread_main, t);
        if (r < 0)
                goto fail;
        *ret = t;
        return 0;
fail:
        model_free(t->m);
        adamw_free(&t->opt);
        free(t->tok);
        free(t->tgt);
        free(t);
        return r;
}

int trainer_stop(trainer *t) {
        if (!t)
                return 0;
        pthread_mutex_lock(&t->lock);
        atomic_store(&t->stop, true);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->lock);
        pthread_join(t->thread, NULL);
        save(t);
        model_free(t->m);
        adamw_free(&t->opt);
        free(t->tok);
        free(t->tgt);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->wake);
        pthread_cond_destroy(&t->changed);
        pthread_mutex_destroy(&t->params_lock);
        free(t->base);
        free(t);
        return 0;
}

void trainer_set_cores(trainer *t, int cores) {
        if (cores < 0)
                cores = 0;
        pthread_mutex_lock(&t->lock);
        if (cores != atomic_load(&t->cores)) {
                if (cores == 0)
                        t->park_requested_at = mono_now_s();
                atomic_store(&t->cores, cores);
                t->stats.cores = cores;
                /* only on a change: a paused trainer is not woken once a second for nothing */
                pthread_cond_broadcast(&t->wake);
        }
        pthread_mutex_unlock(&t->lock);
}

static int wait_until(trainer *t, double timeout_s, bool (*done)(trainer *t, long arg), long arg) {
        struct timespec deadline;
        int r = 0;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += (time_t) timeout_s;
        deadline.tv_nsec += (long) ((timeout_s - floor(timeout_s)) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&t->lock);
        while (!done(t, arg) && r == 0)
                r = pthread_cond_timedwait(&t->changed, &t->lock, &deadline);
        bool ok = done(t, arg);
        pthread_mutex_unlock(&t->lock);
        return ok ? 0 : -ETIMEDOUT;
}

static bool is_parked(trainer *t, long arg) {
        return t->parked;
}

static bool reached_step(trainer *t, long step) {
        return t->stats.step >= step;
}

int trainer_wait_parked(trainer *t, double timeout_s, double *ret_latency_s) {
        int r = wait_until(t, timeout_s, is_parked, 0);
        if (r >= 0 && ret_latency_s) {
                pthread_mutex_lock(&t->lock);
                *ret_latency_s = t->park_latency;
                pthread_mutex_unlock(&t->lock);
        }
        return r;
}

int trainer_wait_step(trainer *t, long step, double timeout_s) {
        return wait_until(t, timeout_s, reached_step, step);
}

void trainer_get_stats(trainer *t, trainer_stats *ret) {
        pthread_mutex_lock(&t->lock);
        *ret = t->stats;
        ret->parked = t->parked;
        pthread_mutex_unlock(&t->lock);
}

static bool save_attempted(trainer *t, long attempts) {
        return t->save_attempts > (uint64_t) attempts;
}

void trainer_request_save(trainer *t) {
        pthread_mutex_lock(&t->lock);
        atomic_store(&t->save_requested, true);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->lock);
}

int trainer_save_now(trainer *t, double timeout_s) {
        pthread_mutex_lock(&t->lock);
        long before = (long) t->save_attempts;
        pthread_mutex_unlock(&t->lock);
        trainer_request_save(t);
        int r = wait_until(t, timeout_s, save_attempted, before);
        if (r < 0)
                return r;
        pthread_mutex_lock(&t->lock);
        r = t->stats.save_error;
        pthread_mutex_unlock(&t->lock);
        return r;
}

int trainer_copy_params(trainer *t, model *m) {
        if (m->layout.n_params != t->m->layout.n_params)
                return -EINVAL;
        pthread_mutex_lock(&t->params_lock);
        memcpy(m->params, t->m->params, t->m->layout.n_params * sizeof(float));
        pthread_mutex_unlock(&t->params_lock);
        return 0;
}

const model_config *trainer_model_config(const trainer *t) {
        return &t->c.cfg;
}

long trainer_checkpoint_step(trainer *t) {
        pthread_mutex_lock(&t->lock);
        long s = t->saved_step;
        pthread_mutex_unlock(&t->lock);
        return s;
}

static bool request_served(trainer *t, long before) {
        return t->req_done > (uint64_t) before;
}

/* One federation request at a time; the caller is the federation thread. */
static int fed_request(trainer *t, const float *params, uint64_t version, bool replace,
                       float *delta, double timeout_s) {
        pthread_mutex_lock(&t->lock);
        long before = (long) t->req_done;
        t->req_params = params;
        t->req_version = version;
        t->req_replace = replace;
        t->req_delta = delta;
        atomic_store(&t->fed_request, true);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->lock);
        int r = wait_until(t, timeout_s, request_served, before);
        pthread_mutex_lock(&t->lock);
        if (r >= 0)
                r = t->req_result;
        else
                atomic_store(&t->fed_request, false); /* not served: withdraw it */
        t->req_params = NULL;
        t->req_delta = NULL;
        pthread_mutex_unlock(&t->lock);
        return r;
}

int trainer_set_base(trainer *t, const float *params, uint64_t version, bool replace_params,
                     double timeout_s) {
        return fed_request(t, params, version, replace_params, NULL, timeout_s);
}

int trainer_take_delta(trainer *t, float *delta, trainer_round *ret, double timeout_s) {
        int r = fed_request(t, NULL, 0, false, delta, timeout_s);
        if (r >= 0 && ret)
                trainer_get_round(t, ret);
        return r;
}

void trainer_get_round(trainer *t, trainer_round *ret) {
        pthread_mutex_lock(&t->lock);
        *ret = t->round;
        pthread_mutex_unlock(&t->lock);
}

void trainer_set_lr(trainer *t, float lr) {
        atomic_store(&t->task_lr, lr > 0 ? lr : 0);
}

size_t trainer_n_params(const trainer *t) {
        return t->m->layout.n_params;
}
