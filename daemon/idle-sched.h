/* SPDX-License-Identifier: MIT */
#pragma once

/* SCHED_IDLE for the threads that do the heavy math: the kernel then runs them only when
 * nothing else wants the CPU, and preempts them at once when something does. */

#include <sys/types.h>

/* Calls fn for every thread of this process except keep (0: none kept); stops at the first
 * negative return and passes it on. */
int process_for_each_thread(pid_t keep, int (*fn)(pid_t tid, void *userdata), void *userdata);

/* Puts one thread (0: the calling one) under SCHED_IDLE; threads it starts later inherit it. */
int idle_sched_thread(pid_t tid);

/* Puts every thread of this process but keep under SCHED_IDLE. Call it again after a
 * library may have started threads (OpenBLAS grows its pool when asked for more). */
int idle_sched_all_threads(pid_t keep);
