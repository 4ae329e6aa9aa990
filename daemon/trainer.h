/* SPDX-License-Identifier: MIT */
#pragma once

/* The harvester: trains in a background thread at SCHED_IDLE, on as many cores as the
 * policy grants, and parks between two layers when the grant drops to zero. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "adamw.h"
#include "batch-source.h"
#include "model.h"

typedef struct {
        model_config cfg;
        int B, T, accum;
        lr_schedule sched;
        adamw_hparams hp;
        uint64_t seed;
        const char *checkpoint;        /* resumed from when present; saved to. A corrupt one
                                        * is renamed <name>.corrupt and <name>.prev, the one
                                        * before it, is used instead */
        double checkpoint_interval_s;  /* 0: only on request and at stop */
        batch_source src;              /* where batches come from */
        int val_every_steps;           /* 0: no validation loss */
        int val_batches;               /* held-out batches per measurement (default 4) */
} trainer_config;

typedef struct {
        long step;
        uint64_t tokens;
        float loss;     /* of the last step; NAN before the first */
        float val_loss; /* last held-out measurement; NAN before the first */
        int cores;  /* granted now */
        bool parked;
        uint64_t steps_abandoned; /* micro-batches cut short by a pause */
        uint64_t checkpoints;
        uint64_t data_wait_ns, step_ns; /* waiting for batches; whole steps (waits included) */
        int data_error;                 /* last batch source error (0 when the last step ran) */
        int save_error;                 /* of the last checkpoint attempt (0: written) */
} trainer_stats;

typedef struct trainer trainer;

/* Loads or initialises the model and starts the thread, parked (no cores). The calling
 * thread is the one that stays at normal priority (the event loop). */
int trainer_start(const trainer_config *c, trainer **ret);
/* Stops the thread, saves a last checkpoint, frees. */
int trainer_stop(trainer *t);

/* 0 parks the thread after the layer it is in; n > 0 runs on n cores. Returns at once. */
void trainer_set_cores(trainer *t, int cores);
/* Waits until the thread is parked; the time it took from the last trainer_set_cores(0). */
int trainer_wait_parked(trainer *t, double timeout_s, double *ret_latency_s);
/* Waits until at least 'step' optimizer steps are done. */
int trainer_wait_step(trainer *t, long step, double timeout_s);
void trainer_get_stats(trainer *t, trainer_stats *ret);

/* Saves a checkpoint between two steps (also while parked) and waits for it: 0, or the
 * save's error (-ENOSPC...), or -ETIMEDOUT. trainer_request_save() does not wait. */
int trainer_save_now(trainer *t, double timeout_s);
void trainer_request_save(trainer *t);
/* Copies the current parameters (taken between two optimizer steps) into m, which must
 * have the trainer's config. For sampling from the model as it is now. */
int trainer_copy_params(trainer *t, model *m);
const model_config *trainer_model_config(const trainer *t);

/* ---- federation (daemon/federation.c) ---- */

/* Local progress since the base model: what an update is made of. */
typedef struct {
        uint64_t base_version; /* the checkpoint's model_version after a restart */
        bool have_base;        /* base parameters are known (a delta can be computed) */
        long steps;            /* optimizer steps since the base */
        uint64_t tokens;
        float mean_loss;       /* over those steps; NAN before the first */
} trainer_round;

/* Makes params (n_params floats, the model of that version) the base of the next update,
 * between two steps: with replace_params the local parameters become it too and the round
 * starts over (a new task); without, only the base is set (after a restart, when the
 * checkpoint already holds local progress from that base). Waits up to timeout_s. */
int trainer_set_base(trainer *t, const float *params, uint64_t version, bool replace_params,
                     double timeout_s);
void trainer_get_round(trainer *t, trainer_round *ret);
/* Writes params - base into delta (n_params floats), between two steps; the round goes on
 * (a later delta from the same base supersedes this one). -ENOENT without a base. */
int trainer_take_delta(trainer *t, float *delta, trainer_round *ret, double timeout_s);
/* A constant learning rate from the federation task instead of the local schedule (0:
 * back to the schedule). */
void trainer_set_lr(trainer *t, float lr);
size_t trainer_n_params(const trainer *t);
long trainer_checkpoint_step(trainer *t); /* step of the last checkpoint written */

/* Every thread of the process but the caller of trainer_start: the trainer, the kernel
 * pool and OpenBLAS's workers, all at SCHED_IDLE. For registration with the monitor. */
int trainer_harvester_tids(trainer *t, pid_t *tids, size_t max, size_t *ret_n);
/* Puts every such thread at SCHED_IDLE (threads BLAS creates later inherit it from the
 * trainer thread; the ones it made at load time do not). */
int trainer_idle_threads(trainer *t);
