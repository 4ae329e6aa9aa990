/* SPDX-License-Identifier: MIT */
#pragma once

/* The service's state, shared by the event loop (manager.c) and the control commands
 * (manager-commands.c). Everything here is touched only from the event loop's thread. */

#include <systemd/sd-event.h>

#include "conf.h"
#include "control.h"
#include "daemon-state.h"
#include "federation.h"
#include "loader.h"
#include "manager.h"
#include "policy.h"
#include "power-events.h"
#include "sensors.h"
#include "stage-server.h"
#include "stats-history.h"
#include "trainer.h"

#include "version.h"

typedef struct manager {
        const manager_opts *o;
        sd_event *event;
        sd_event_source *tick, *inotify;
        conf conf;
        char *state_dir, *data_dir, *checkpoint, *state_file;
        loader *loader;
        sensors *sensors;
        trainer *trainer;
        control_server *control;
        power_events *power;
        federation *fed; /* NULL: standalone */
        stage_server *stage; /* [Inference] Serve=yes: collaborative inference */
        double last_serve_try;
        model *sample_model; /* a copy of the parameters to sample from, made on demand */

        policy_state ps;
        policy_decision last;
        daemon_state ds;
        stats_history history;
        sensors_sample_t sample;

        uint64_t prev_tokens, prev_checkpoints;
        long prev_step;
        double prev_mono, prev_harvested, tokens_per_s, started, last_state_save, last_data_try;
        double last_save_retry;
        bool data_changed, data_denied;
        unsigned telemetry_ticks;
} manager;

extern const control_command manager_commands[];
extern const size_t manager_n_commands;

int manager_load_conf(manager *m);
/* Samples, decides and applies the decision now (every period, and at once after a user
 * pause or a power event). */
void manager_decide(manager *m);
/* Writes daemon-state.json now (after a user pause changes, and periodically). */
void manager_save_state(manager *m);
