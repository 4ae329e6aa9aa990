/* SPDX-License-Identifier: MIT */
#pragma once

#include <time.h>

/* CLOCK_MONOTONIC in seconds: for intervals, rates and timeouts. */
static inline double mono_now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}
