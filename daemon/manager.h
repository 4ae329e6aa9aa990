/* SPDX-License-Identifier: MIT */
#pragma once

/* The service: an sd-event loop that samples the sensors every second, asks the policy,
 * grants the trainer its cores, answers the control socket and talks to systemd. It does
 * no heavy work itself. */

#include <stdbool.h>

typedef struct {
        const char *root;         /* "/" unless a test points at a fake tree */
        const char *config_file;  /* NULL: <root>/etc/edged/edged.conf */
        const char *state_dir;    /* NULL: StateDirectory= below the root */
        const char *control_path; /* NULL: /run/edged/control */
        double run_seconds;       /* stop by itself after this long; 0: until signalled */
        bool progress;            /* a status line per sample on stderr */
} manager_opts;

int manager_run(const manager_opts *o);
