/* SPDX-License-Identifier: MIT */
#pragma once

/* Loads only what one stage [first, last] reads from a model file (its layers; wte and wpe
 * for stage 0; wte and ln_f for the last stage) into one compact buffer, so a device holds
 * its share of a model that would not fit it whole. Same validation as ckpt_load(): config
 * from the metadata, dtype, shape and finiteness of every tensor read. */

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
        model_config cfg;
        uint64_t version;
        int first, last;
        float *buf;        /* owned */
        size_t bytes;      /* of buf */
        model_tensors p;   /* pointers into buf for the span's tensors, NULL elsewhere */
} stage_weights;

int stage_load_span(const char *path, int first, int last, stage_weights *ret);
void stage_weights_done(stage_weights *w);
