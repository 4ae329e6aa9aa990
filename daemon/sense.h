/* SPDX-License-Identifier: MIT */
#pragma once

/* "edged sense": prints sensor samples, for users filing bugs and for checking a machine. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "sensors.h"

typedef struct {
        const char *root;
        unsigned interval_ms;
        long count; /* 0: until interrupted */
        bool json;
        bool no_bpf;
} sense_opts;

int sense_run(const sense_opts *o);

/* One human-readable line (no newline). */
void sense_format_line(const sensors_sample_t *s, const char *trigger, char *buf, size_t size);
/* The sample as a JSON object (new reference); the schema is documented in edged(8). */
json_t *sense_sample_json(const sensors_sample_t *s, const char *trigger);
