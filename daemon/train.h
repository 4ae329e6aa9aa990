/* SPDX-License-Identifier: MIT */
#pragma once

/* The foreground trainer behind "edged train": no policy, just train, checkpoint, resume. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
        char **data_paths;
        size_t n_data_paths;
        const char *config;     /* NULL: the checkpoint's, else "small" */
        const char *checkpoint; /* resumed from when it exists, saved to */
        long steps;             /* total optimizer steps to reach */
        int batch, seq, accum;  /* micro-batch (B, T) and micro-batches per step */
        float lr, lr_min;
        long warmup;
        int threads; /* 0: all online CPUs */
        uint64_t seed;
        long checkpoint_every; /* steps; 0: only at the end */
        long eval_every;       /* steps; 0: only at the end */
        int sample_tokens;     /* bytes of sample text printed at the end */
        size_t max_data_bytes;
        int progress; /* -1 auto (TTY), 0 log lines, 1 progress line */
} trainer_opts;

void trainer_opts_default(trainer_opts *o);
/* Runs to completion or until SIGINT/SIGTERM; saves the checkpoint either way. */
int trainer_run(const trainer_opts *o);
