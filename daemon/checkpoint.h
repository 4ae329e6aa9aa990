/* SPDX-License-Identifier: MIT */
#pragma once

/* Training checkpoints as safetensors: every parameter by name, AdamW moments as
 * "optim.m.<name>" / "optim.v.<name>", and in the metadata the model config, step, data
 * cursor and model version. Saved atomically; loaded only after full validation.
 *
 * Integrity, in the metadata: "data_sha256" is the SHA-256 (hex) of the data section, every
 * byte after the header (per view in layout order: its parameters, then optim.m and optim.v
 * when saved); "meta_sha256" that of the lines "key=value\n" for format, config,
 * block_size, n_embd, n_layer, n_head, step, data_cursor, model_version, adam_t and
 * data_sha256, in that order. ckpt_load refuses a file whose sums do not match, or that has
 * one without the other. Files from before the sums (same format string) have neither and
 * still load, so an upgrade never discards training; their next save adds them. */

#include <stdint.h>

#include "adamw.h"
#include "model.h"

#define CKPT_FORMAT "edged-checkpoint-1"

typedef struct {
        long step;              /* optimizer steps done */
        uint64_t data_cursor;   /* state of the batch sampler */
        uint64_t model_version; /* federated base version (0 = local only) */
} ckpt_state;

int ckpt_save(const char *path, const model *m, const adamw_state *opt, const ckpt_state *st);

/* Reads only the model config from path's metadata (no checksum verified). */
int ckpt_read_config(const char *path, model_config *ret_cfg);

/* Validates path against m's config and copies parameters into m, and, when opt is not
 * NULL, the AdamW moments and step count into opt (already allocated for m). Nothing is
 * modified unless the whole file is valid. Errors name the file and the field. */
int ckpt_load(const char *path, model *m, adamw_state *opt, ckpt_state *ret_state);

/* The step a checkpoint was taken at, from its header alone (no tensor data read, nothing
 * verified). */
int ckpt_read_step(const char *path, long *ret_step);
