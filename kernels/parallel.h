/* SPDX-License-Identifier: MIT */
#pragma once

/* A small pool for the work between two BLAS calls (attention heads, elementwise layers),
 * which would otherwise run on one core while the others wait. The caller's thread takes
 * part, so a pool of n threads starts n-1 workers. */

#include <sched.h>

#define PAR_MAX_THREADS 16

/* Processes items [begin, end); worker is 0..n-1 and indexes per-thread scratch. */
typedef void (*par_fn)(void *ctx, long begin, long end, int worker);

/* Sets the number of threads (clamped to 1..PAR_MAX_THREADS); starts or stops workers. */
int par_set_threads(int n);
int par_get_threads(void);

/* Restricts pool worker (1..n-1) to the CPUs in set. Returns 0 or -errno. */
int par_pin_worker(int worker, const cpu_set_t *set);

/* Splits [0, n_items) into one contiguous chunk per thread, each of at least grain items
 * (waking a thread costs microseconds: small jobs run inline), and waits for all of them.
 * Not reentrant: call from one thread at a time. With blas_inside, BLAS is made
 * single-threaded for the duration, since each chunk calls it on its own. */
void par_for(long n_items, long grain, par_fn fn, void *ctx, int blas_inside);
