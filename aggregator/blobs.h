/* SPDX-License-Identifier: MIT */
#pragma once

/* Content-addressed blobs under <store>/blobs/<sha256>: model versions (edged checkpoints
 * without optimizer state) and the server optimizer's state (merger.c: FedAdam's moments m
 * then v as raw little-endian floats; Nesterov's m, acc and count). A blob is
 * complete and fsync'd before its name exists, so a name in the database always points at a
 * whole file; files no kept version names are pruned. */

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* "<dir>/blobs/<sha>" into a malloc'd string. */
int agg_blob_path(const char *dir, const char *sha, char **ret);
/* Saves m as version 'version' and returns its SHA-256. */
int agg_blob_save_model(const char *dir, const model *m, uint64_t version, char ret_sha[65]);
/* Loads blob sha into m (same config), checking its hash first. */
int agg_blob_load_model(const char *dir, const char *sha, model *m);
int agg_blob_save_bytes(const char *dir, const void *data, size_t size, char ret_sha[65]);
int agg_blob_save_floats(const char *dir, const float *data, size_t n, char ret_sha[65]);
/* Reads blob sha, checking its hash, into a malloc'd buffer; -EFBIG over max bytes. */
int agg_blob_load_bytes(const char *dir, const char *sha, size_t max, void **ret, size_t *ret_size);
/* Reads exactly n floats from blob sha. */
int agg_blob_load_floats(const char *dir, const char *sha, float *data, size_t n);
/* Removes every file in blobs/ not named in keep (and leftover temporary files). */
int agg_blob_prune(const char *dir, char (*keep)[65], size_t n_keep);
