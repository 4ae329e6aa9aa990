/* SPDX-License-Identifier: MIT */
#pragma once

/* AdamW (decoupled weight decay, bias correction), global gradient-norm clipping and a
 * cosine learning-rate schedule with linear warmup. Moments use the parameter layout. */

#include <stddef.h>

#include "model.h"

typedef struct {
        float beta1, beta2, eps, weight_decay;
        float grad_clip; /* max global L2 norm; <= 0 disables */
} adamw_hparams;

typedef struct {
        float lr_max, lr_min;
        long warmup_steps, total_steps;
} lr_schedule;

typedef struct {
        adamw_hparams hp;
        size_t n;
        float *m, *v;
        long t; /* updates applied so far */
} adamw_state;

void adamw_hparams_default(adamw_hparams *hp);
int adamw_new(size_t n_params, const adamw_hparams *hp, adamw_state *ret);
void adamw_free(adamw_state *s);

/* Global L2 norm of the gradient buffer (accumulated in double). */
double adamw_grad_norm(const float *grads, size_t n);

/* One update at learning rate lr: clips grads by the global norm (if enabled), then applies
 * AdamW with weight decay only on views marked decay. Returns the norm before clipping. */
double adamw_step(adamw_state *s, const model_layout *lay, float *params, float *grads, float lr);

/* Learning rate for step (0-based): linear warmup to lr_max over warmup_steps, then cosine
 * decay to lr_min at total_steps, lr_min after. */
float lr_at(const lr_schedule *s, long step);
