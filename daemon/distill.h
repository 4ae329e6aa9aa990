/* SPDX-License-Identifier: MIT */
#pragma once

/* Knowledge distillation ("edged distill"): a student model learns from a trained teacher's
 * soft targets as well as from the bytes themselves. A foreground command, but at SCHED_IDLE
 * like the service's trainer, so it only takes CPU time nothing else wants.
 *
 * Per position, with student logits z, teacher logits t, target byte y, temperature T and
 * weight alpha (softmax_T(x) = softmax(x / T)):
 *   L = alpha * CE(y, softmax(z)) + (1 - alpha) * T^2 * KL(softmax_T(t) || softmax_T(z))
 * averaged over the N = B*T positions. Its gradient at the logits is
 *   dL/dz = [alpha * (softmax(z) - onehot(y)) + (1 - alpha) * T * (softmax_T(z) - softmax_T(t))] / N
 * (the T^2 keeps the soft term's gradient scale independent of T, as in Hinton et al. 2015). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adamw.h"
#include "batch-source.h"
#include "checkpoint.h"
#include "model.h"

/* The loss above over N rows of V = MODEL_VOCAB logits; when dlogits is not NULL also writes
 * dL/dz there (N x V). */
double distill_loss(float *dlogits, const float *s_logits, const float *t_logits,
                    const uint8_t *targets, size_t N, float temperature, float alpha);

/* Teacher forward, student forward and backward of the distillation loss on one batch;
 * accumulates into the student's gradients (scaled by loss_scale) and returns the loss.
 * scratch holds B*T*V floats. The backward reuses model_backward: the gradient above is
 * handed to it as the "probabilities" p' = N * dL/dz + onehot(y), from which the
 * cross-entropy backward forms (p' - onehot(y)) / N = dL/dz. */
int distill_grad(model *student, model *teacher, const uint8_t *tok, const uint8_t *tgt, int B,
                 int T, float temperature, float alpha, float loss_scale, float *scratch,
                 double *ret_loss);

/* Mean KL(teacher || student) per byte (nats, temperature 1) and the student's cross-entropy
 * over n held-out batches starting at batch 0. */
int distill_eval(model *student, model *teacher, const batch_source *src, int B, int T, int n,
                 uint8_t *tok, uint8_t *tgt, double *ret_kl, double *ret_ce);

typedef struct {
        const char *teacher;        /* checkpoint */
        const char *student_config; /* "tiny" (default), "small", "medium" */
        char **data_paths;
        size_t n_data_paths;
        const char *checkpoint; /* the student's: resumed from when it exists, saved to */
        long steps;
        int batch, seq; /* seq 0: the smaller block size of the two models */
        float lr, lr_min;
        long warmup;
        float temperature, alpha;
        int threads;
        uint64_t seed;
        long eval_every; /* steps; 0: only at the start and the end */
        size_t max_data_bytes;
        bool normal_priority; /* false: every thread at SCHED_IDLE, as the trainer */
} distill_opts;

void distill_opts_default(distill_opts *o);
int distill_run(const distill_opts *o);
