/* SPDX-License-Identifier: MIT */
#pragma once

/* Held-out loss of a model version: mean cross-entropy over a fixed, deterministic set of
 * windows of the server's ValidationFile, so versions are comparable. */

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define AGG_EVAL_WINDOWS 32
#define AGG_EVAL_MAX_BYTES (256u << 20)

/* m must have activations for (1, block_size). Windows of T+1 bytes (T = block_size, or less
 * for a short text) at evenly spaced offsets. -ENODATA when the text has fewer than 2 bytes. */
int agg_eval_loss(model *m, const uint8_t *text, size_t size, double *ret_loss);
/* Reads path (at most AGG_EVAL_MAX_BYTES) and evaluates; errors name the file. */
int agg_eval_file(model *m, const char *path, double *ret_loss);
