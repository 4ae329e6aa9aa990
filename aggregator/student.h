/* SPDX-License-Identifier: MIT */
#pragma once

/* A distilled student published beside the federated teacher ("edge-aggregator student
 * publish"): a small model made by "edged distill" from one of the teacher's versions, for
 * devices that cannot run the teacher. The weights live as a content-addressed blob under
 * <store>/student/blobs/, described by <store>/student.json (written atomically, so a reader
 * sees the old student or the new one, never half of one). One student at a time: publishing
 * replaces the previous one. */

#include <stdbool.h>
#include <stdint.h>

#include "hash.h"

#define AGG_STUDENT_JSON "student.json"

typedef struct {
        char sha[HASH_SHA256_HEX];
        char config[16];          /* "tiny", "small", "medium" */
        uint64_t teacher_version; /* the version it was distilled from */
        uint64_t bytes;
        int64_t published;        /* unix seconds */
        uint64_t n_params;
} agg_student;

/* Validates the checkpoint at path (config, shapes, finite values), stores it and makes it
 * the published student. */
int agg_student_publish(const char *store_dir, const char *ckpt_path, uint64_t teacher_version,
                        agg_student *ret);

/* -ENOENT when none is published; -EBADMSG (logged) when student.json is damaged. */
int agg_student_read(const char *store_dir, agg_student *ret);

/* "<store>/student/blobs/<sha>" into a malloc'd string. */
int agg_student_blob_path(const char *store_dir, const char *sha, char **ret);
