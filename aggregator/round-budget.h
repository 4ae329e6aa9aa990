/* SPDX-License-Identifier: MIT */
#pragma once

/* Local work that scales with the device (docs/federation-protocol.md, Task): the aggregator
 * measures each device's speed itself, from when its rounds start and end on the server's
 * clock, and gives each device a step budget that fills RoundSeconds of wall-clock time, so
 * a slow device is not always stale and a fast one does not idle. Pure: no I/O. */

#include <stdint.h>

/* Weight of a new measurement in the smoothed speed. */
#define AGG_SPEED_ALPHA 0.5
/* The client accepts local_steps up to this. */
#define AGG_MAX_BUDGET 1000000

/* One round's speed in steps per second: min(claimed, asked) steps in elapsed_ms, where the
 * round began at the device's task request (asked: the budget that task gave) and ended when
 * its update arrived. The device's own number is only believed up to what it was asked.
 * NAN when the round tells nothing: no steps, or no time (a clock that went back). */
double agg_speed_sample(int64_t claimed, int64_t asked, int64_t elapsed_ms);

/* The smoothed speed: the first sample as it is (old not > 0), then the exponential moving
 * average old + alpha (sample - old). A NAN sample leaves old as it was. */
double agg_speed_smooth(double old, double sample, double alpha);

typedef struct {
        double round_seconds; /* 0: off, everyone gets local_steps */
        int local_steps;      /* LocalSteps: also for a device not measured yet */
        int min_steps;        /* LocalStepsMin, >= 1 */
        int max_steps;        /* MaxLocalSteps; 0: 4 x local_steps */
} agg_budget_params;

/* The task's local_steps for a device of smoothed speed: clamp(round(speed * round_seconds),
 * min_steps, max) with max = max_steps (0: 4 x local_steps), raised to min_steps if below it
 * and never above AGG_MAX_BUDGET. local_steps when round_seconds is 0 or the speed is not
 * known (not > 0). */
int agg_round_budget(const agg_budget_params *p, double speed);
