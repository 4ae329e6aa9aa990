/* SPDX-License-Identifier: MIT */
#pragma once

/* The federation loop of a device (DESIGN.md §8): on its own thread, it enrolls, follows the
 * aggregator's task, hands the trainer each new base model, and every LocalSteps steps turns
 * the local progress into a compressed update, keeps it on disk until the aggregator has
 * acknowledged it, and sends telemetry. The trainer keeps training while the link is down;
 * a newer delta from the same base replaces the pending one under the same idempotency key,
 * so the aggregator never counts progress twice. */

#include <stdbool.h>
#include <stdint.h>

#include "fedclient.h"
#include "model.h"
#include "trainer.h"

typedef enum {
        FED_LINK_ENROLLING, /* no identity yet */
        FED_LINK_CONNECTED, /* the last request got an answer */
        FED_LINK_OFFLINE,   /* the last request failed; retrying with backoff */
        FED_LINK_REFUSED,   /* enrollment or authentication refused: needs the admin */
        _FED_LINK_MAX,
} fed_link;

typedef struct {
        fed_link link;
        bool have_task;
        uint64_t version;          /* of the current task */
        uint64_t base_version;     /* the trainer's base */
        float lr;                  /* the task's learning rate the trainer took at that base;
                                    * 0: none yet (the local schedule) */
        int local_steps;           /* the task's step budget per round; 0: no task yet */
        unsigned pending_updates;  /* 0 or 1 */
        uint64_t updates_sent, updates_acked, updates_duplicate, updates_rejected;
        uint64_t bytes_sent;
        char last_error[256];
} federation_status;

typedef struct federation federation;

int federation_start(const fed_options *o, federation **ret);
void federation_stop(federation *f);

/* Once the first task and its model are here: the model's config, so the manager can start
 * the trainer with it. -EAGAIN until then. */
int federation_model_config(federation *f, model_config *ret);
/* The trainer to work with (NULL to detach before stopping it). */
void federation_attach(federation *f, trainer *t);

void federation_get_status(federation *f, federation_status *ret);
/* Copies the fleet's stage token from the last task (64 hex + NUL) into ret; false (ret
 * "") when there is none. */
bool federation_stage_token(federation *f, char ret[65]);
/* The telemetry object (JSON text) to send at the next report; the manager refreshes it. */
void federation_set_telemetry(federation *f, const char *json);

const char *fed_link_to_string(fed_link l);
