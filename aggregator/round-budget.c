/* SPDX-License-Identifier: MIT */
#include "round-budget.h"

#include <math.h>

double agg_speed_sample(int64_t claimed, int64_t asked, int64_t elapsed_ms) {
        int64_t steps = claimed < asked ? claimed : asked;

        if (steps <= 0 || elapsed_ms <= 0)
                return NAN;
        return (double) steps * 1000.0 / (double) elapsed_ms;
}

double agg_speed_smooth(double old, double sample, double alpha) {
        if (!(sample > 0) || !isfinite(sample))
                return old;
        if (!(old > 0) || !isfinite(old))
                return sample;
        return old + alpha * (sample - old);
}

int agg_round_budget(const agg_budget_params *p, double speed) {
        double lo = p->min_steps > 0 ? p->min_steps : 1;
        double hi = p->max_steps > 0 ? p->max_steps : 4.0 * p->local_steps;

        if (!(p->round_seconds > 0) || !(speed > 0) || !isfinite(speed))
                return p->local_steps;
        if (hi < lo)
                hi = lo;
        if (hi > AGG_MAX_BUDGET)
                hi = AGG_MAX_BUDGET;
        double x = round(speed * p->round_seconds);
        return (int) (x < lo ? lo : x > hi ? hi : x);
}
