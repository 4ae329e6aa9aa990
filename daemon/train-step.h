/* SPDX-License-Identifier: MIT */
#pragma once

/* One optimizer step over the corpus, and a fresh start: shared by the foreground trainer
 * ("edged train") and the harvester thread, so both draw the same data in the same order. */

#include <stdint.h>

#include "adamw.h"
#include "checkpoint.h"
#include "corpus.h"
#include "model.h"

/* Initialises parameters from seed and the data cursor that goes with it. */
void trainer_fresh(model *m, uint64_t seed, ckpt_state *ret);

/* accum micro-batches of (B, T) drawn from cs->data_cursor, then AdamW at lr; advances
 * cs->step and cs->data_cursor. -ECANCELED when the model's yield hook stopped it: then
 * nothing is kept, cs is untouched and the same batches come next time. */
int trainer_step(model *m, adamw_state *opt, const corpus *data, int B, int T, int accum,
                 float lr, uint8_t *tok, uint8_t *tgt, ckpt_state *cs, float *ret_loss);
