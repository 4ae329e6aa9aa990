/* SPDX-License-Identifier: MIT */
#pragma once

/* The little the service remembers across restarts besides checkpoints and overrides: a
 * user pause, and the harvest totals "edgectl status" shows. Kept as JSON in
 * <StateDirectory>/daemon-state.json, written atomically. */

#include <stdbool.h>
#include <stdint.h>

typedef struct {
        int64_t pause_until;  /* Unix time a timed user pause ends; 0: none */
        bool pause_indefinite;
        double core_seconds_total;
        double core_seconds_today;
        int today; /* local date as YYYYMMDD the "today" figure belongs to */
        uint64_t tokens_total;
} daemon_state;

/* A missing file is a fresh state (0). A malformed one is -EBADMSG with the reason logged;
 * the caller starts fresh and the next save replaces it. */
int daemon_state_load(const char *path, daemon_state *ret);
int daemon_state_save(const char *path, const daemon_state *s);

/* Adds harvested core-seconds; the "today" figure restarts when the local date changes. */
void daemon_state_add_harvest(daemon_state *s, int yyyymmdd, double core_s);
