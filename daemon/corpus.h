/* SPDX-License-Identifier: MIT */
#pragma once

/* Training text for the foreground trainer: the bytes of every regular file under the given
 * paths, held in memory, split into a training part and a held-out part, sampled as random
 * windows of T+1 bytes by a seeded generator whose state is the data cursor. */

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

typedef struct {
        uint8_t *bytes;
        size_t size;       /* total */
        size_t train_size; /* bytes [0, train_size) train, the rest is held out */
        size_t n_files, n_skipped;
} corpus;

/* Reads paths (files or directories, recursively), at most max_bytes in all. Unreadable
 * entries are skipped with a warning and counted; no usable data at all is -ENODATA. */
int corpus_load(corpus *c, char *const *paths, size_t n_paths, size_t max_bytes);
void corpus_free(corpus *c);

/* Fills tokens/targets (B*T each) with B random windows from the training part. */
void corpus_train_batch(const corpus *c, rng_t *cursor, int B, int T, uint8_t *tokens,
                        uint8_t *targets);
/* Deterministic held-out window number i (wrapping), for validation loss. */
void corpus_val_batch(const corpus *c, size_t i, int B, int T, uint8_t *tokens, uint8_t *targets);
