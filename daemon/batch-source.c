/* SPDX-License-Identifier: MIT */
#include "batch-source.h"

#include <errno.h>

static int corpus_train(void *ctx, rng_t *cursor, int B, int T, uint8_t *tok, uint8_t *tgt,
                        uint64_t *wait_ns) {
        corpus_train_batch(ctx, cursor, B, T, tok, tgt);
        return 0;
}

static int corpus_val(void *ctx, uint64_t i, int B, int T, uint8_t *tok, uint8_t *tgt) {
        corpus_val_batch(ctx, (size_t) i, B, T, tok, tgt);
        return 0;
}

batch_source batch_source_corpus(const corpus *c) {
        return (batch_source) { .train = corpus_train, .val = corpus_val, .ctx = (void *) c };
}

static int loader_train(void *ctx, rng_t *cursor, int B, int T, uint8_t *tok, uint8_t *tgt,
                        uint64_t *wait_ns) {
        loader_batch_info info = { 0 };
        int r;

        if (B != loader_batch_size(ctx) || T != loader_window(ctx))
                return -EINVAL;
        r = loader_next_batch(ctx, cursor, tok, tgt, &info);
        if (wait_ns)
                *wait_ns += info.wait_ns;
        return r;
}

static int loader_val(void *ctx, uint64_t i, int B, int T, uint8_t *tok, uint8_t *tgt) {
        if (B != loader_batch_size(ctx) || T != loader_window(ctx))
                return -EINVAL;
        return loader_val_batch(ctx, i, tok, tgt, NULL);
}

batch_source batch_source_loader(loader *l) {
        return (batch_source) { .train = loader_train, .val = loader_val, .ctx = l };
}
