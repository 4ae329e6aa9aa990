/* SPDX-License-Identifier: MIT */
#pragma once

/* SIGINT, SIGTERM and SIGHUP delivered to an sd-event loop through a self-pipe rather than
 * signalfd: signalfd needs the signal blocked in every thread, and OpenBLAS starts its
 * workers before main() with nothing blocked, so a signal could land on one of them and
 * take its default action (end the process) instead of reaching the loop. */

#include <systemd/sd-event.h>

typedef void (*signal_pipe_fn)(int sig, void *userdata);

/* One per process. */
int signal_pipe_attach(sd_event *e, signal_pipe_fn fn, void *userdata);
void signal_pipe_detach(void);
