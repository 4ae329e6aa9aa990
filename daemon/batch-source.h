/* SPDX-License-Identifier: MIT */
#pragma once

/* Where training batches come from, so the same optimizer step runs over the in-memory
 * corpus ("edged train") or the io_uring loader (the service). Both draw a batch as a pure
 * function of the data cursor, which is what makes a resumed run repeat an uninterrupted
 * one. */

#include <stdint.h>

#include "corpus.h"
#include "loader.h"
#include "rng.h"

typedef struct {
        /* B windows of T tokens and their targets drawn at *cursor, which is advanced; the
         * time spent waiting for data is added to *wait_ns (may be NULL). 0 or -errno. */
        int (*train)(void *ctx, rng_t *cursor, int B, int T, uint8_t *tok, uint8_t *tgt,
                     uint64_t *wait_ns);
        /* Held-out batch number i: deterministic, wrapping. 0 or -errno. */
        int (*val)(void *ctx, uint64_t i, int B, int T, uint8_t *tok, uint8_t *tgt);
        void *ctx;
} batch_source;

batch_source batch_source_corpus(const corpus *c);
/* The loader's B and T are fixed when it is made; other shapes are -EINVAL. */
batch_source batch_source_loader(loader *l);
