/* SPDX-License-Identifier: MIT */
#pragma once

/* Power supply changes as they happen: an sd-device monitor on subsystem power_supply, so
 * pulling the plug pauses training at once rather than at the next sample. It hears the
 * events udev rebroadcasts; where no udev runs (containers, minimal VMs) nothing arrives
 * and the periodic sample remains the (slower) safety net. */

#include <systemd/sd-event.h>

typedef struct power_events power_events;

/* Called with the supply's sysname (e.g. "AC", "BAT0") and the uevent action. */
typedef void (*power_event_fn)(const char *sysname, const char *action, void *userdata);

/* Attaches to event loop e. Fails (negative errno) where netlink is not permitted; callers
 * log that once and rely on polling. */
int power_events_new(sd_event *e, power_event_fn fn, void *userdata, power_events **ret);
power_events *power_events_free(power_events *p);
