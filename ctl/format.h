/* SPDX-License-Identifier: MIT */
#pragma once

/* edgectl's pure formatting: parsing and printing durations, times and amounts, an aligned
 * key/value table, sparklines, and the human renderings of the daemon's replies. Nothing here
 * does I/O or talks to the daemon, so every function has unit tests with exact strings
 * (tests/test-ctl-format.c). Strings returned through char ** are malloc'd. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "macros.h"

typedef struct ctl_style {
        bool color; /* ANSI colours (a TTY without NO_COLOR) */
        bool utf8;  /* block characters and the degree sign (a UTF-8 locale) */
        time_t now; /* for "in 10m" and "5m ago" */
} ctl_style;

/* "30s", "10m", "2h", "1h30m", "2d", or bare seconds "90": units d, h, m, s, each at most
 * once and largest first. -EINVAL for anything else (empty, "1.5h", "5x"), -ERANGE beyond
 * ten years. Zero is accepted; callers that need a positive duration check. */
int ctl_parse_duration(const char *s, uint64_t *ret_seconds);

/* The two largest units, the second left out when zero: "0s", "45s", "1m 30s", "1h",
 * "1h 5m", "2d 3h". Returns buf. */
char *ctl_format_duration(uint64_t seconds, char *buf, size_t size);

/* --since TIME: a Unix time ("1764000000"), a duration ago with or without a leading minus
 * ("-1h", "90m": a unit is required, bare digits are a Unix time), or "today" (local
 * midnight). -EINVAL otherwise. */
int ctl_parse_since(const char *s, time_t now, time_t *ret);

/* Core-seconds as core-hours: "0.00 core-h", "1.25 core-h", "123.4 core-h", "1234 core-h". */
char *ctl_format_core_hours(double core_seconds, char *buf, size_t size);

/* Counts with an SI suffix: "950", "12.3k", "1.23M", "4.56G". */
char *ctl_format_count(double n, char *buf, size_t size);

/* Bytes in binary units: "512 B", "1.5 KiB", "12.3 MiB", "1.0 GiB". */
char *ctl_format_bytes(double n, char *buf, size_t size);

/* One character per value scaled between the minimum and the maximum: ▁▂▃▄▅▆▇█ in UTF-8,
 * "_.,-=+*#" otherwise; a NaN is a space, all-equal values are the lowest level. Returns
 * buf (always NUL-terminated; values that do not fit are left off the end). */
char *ctl_sparkline(const double *v, size_t n, bool utf8, char *buf, size_t size);

/* An aligned two-column table: "Key:" padded to the longest key, a space, the value. */
typedef struct ctl_table {
        char **keys, **values;
        size_t n, allocated;
} ctl_table;

int ctl_table_add(ctl_table *t, const char *key, const char *fmt, ...) _printf_(3, 4);
int ctl_table_format(const ctl_table *t, char **ret);
void ctl_table_done(ctl_table *t);

/* Human renderings of replies (fields missing or null print as "-"; see
 * docs/control-protocol.md for the fields). */
int ctl_format_status(json_t *status, const ctl_style *style, char **ret);
int ctl_format_stats(json_t *stats, const ctl_style *style, char **ret);
/* policy-get: one row per knob "Key  Value  Origin" from "knobs", else the "show" text. */
int ctl_format_policy(json_t *policy, char **ret);
/* One knob's origin: "built-in", "profile", "runtime", "fleet", "/etc/edged/edged.conf:3",
 * with ", locked" appended when locked. Returns buf. */
char *ctl_format_origin(json_t *knob, char *buf, size_t size);
int ctl_format_checkpoints(json_t *list, const ctl_style *style, char **ret);
