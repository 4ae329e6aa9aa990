/* SPDX-License-Identifier: MIT */
#pragma once

/* One optimizer step over the corpus, and a fresh start: shared by the foreground trainer
 * ("edged train") and the harvester thread, so both draw the same data in the same order. */

#include <pthread.h>
#include <stdint.h>

#include "adamw.h"
#include "checkpoint.h"
#include "batch-source.h"
#include "model.h"

/* Initialises parameters from seed and the data cursor that goes with it. */
void trainer_fresh(model *m, uint64_t seed, ckpt_state *ret);

/* accum micro-batches of (B, T) drawn from cs->data_cursor, then AdamW at lr; advances
 * cs->step and cs->data_cursor. -ECANCELED when the model's yield hook stopped it, or the
 * source's error: then nothing is kept, cs is untouched and the same batches come next
 * time. Time spent waiting for data is added to *wait_ns (may be NULL); update_lock (may be
 * NULL) is held while the optimizer writes the parameters, so readers see whole steps. */
int trainer_step(model *m, adamw_state *opt, const batch_source *src, int B, int T, int accum,
                 float lr, uint8_t *tok, uint8_t *tgt, ckpt_state *cs, float *ret_loss,
                 uint64_t *wait_ns, pthread_mutex_t *update_lock);

/* Mean loss over n held-out batches starting at number first; -ECANCELED if the yield hook
 * stopped it. Leaves the gradients alone. */
int trainer_val_loss(model *m, const batch_source *src, int B, int T, uint64_t first, int n,
                     uint8_t *tok, uint8_t *tgt, float *ret_loss);
