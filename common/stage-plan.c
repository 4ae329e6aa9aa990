/* SPDX-License-Identifier: MIT */
#include "stage-plan.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#define PLAN_MAX_PEERS 64

/* Layers peer i can hold when it sits at the given pipeline ends. */
static int capacity(const stage_plan_peer *p, const stage_plan_cost *c, bool is_first, bool is_last,
                    int n_layers) {
        uint64_t fixed = (is_first ? c->first_bytes : 0) + (is_last ? c->last_bytes : 0);
        if (p->mem_bytes <= fixed)
                return 0;
        uint64_t n = c->layer_bytes ? (p->mem_bytes - fixed) / c->layer_bytes : (uint64_t) n_layers;
        return n > (uint64_t) n_layers ? n_layers : (int) n;
}

/* One attempt over the active peers; counts[] gets layers per peer. */
static int plan_once(int L, const stage_plan_peer *peers, int n, const bool *active,
                     const stage_plan_cost *cost, int *counts) {
        int cap[PLAN_MAX_PEERS], fa = -1, la = -1, total_cap = 0, sum = 0;
        double share[PLAN_MAX_PEERS];
        bool fixed[PLAN_MAX_PEERS] = { false };
        double rem = L;

        for (int i = 0; i < n; i++)
                if (active[i]) {
                        if (fa < 0)
                                fa = i;
                        la = i;
                }
        if (fa < 0)
                return -E2BIG;
        for (int i = 0; i < n; i++) {
                cap[i] = active[i] ? capacity(&peers[i], cost, i == fa, i == la, L) : 0;
                total_cap += cap[i];
                share[i] = 0;
                counts[i] = 0;
        }
        if (total_cap < L)
                return -E2BIG;

        /* water-filling: a peer whose proportional share exceeds its capacity is fixed at it
         * and the rest is shared again among the others */
        for (int pass = 0; pass <= n; pass++) {
                double speed_sum = 0;
                bool any = false;
                for (int i = 0; i < n; i++)
                        if (active[i] && !fixed[i])
                                speed_sum += peers[i].speed;
                if (speed_sum <= 0)
                        break;
                double level = rem / speed_sum;
                for (int i = 0; i < n; i++)
                        if (active[i] && !fixed[i] && level * peers[i].speed > cap[i]) {
                                share[i] = cap[i];
                                fixed[i] = true;
                                rem -= cap[i];
                                any = true;
                        }
                if (!any) {
                        for (int i = 0; i < n; i++)
                                if (active[i] && !fixed[i])
                                        share[i] = level * peers[i].speed;
                        break;
                }
        }
        for (int i = 0; i < n; i++) {
                counts[i] = (int) floor(share[i] + 1e-9);
                if (counts[i] > cap[i])
                        counts[i] = cap[i];
                sum += counts[i];
        }
        /* largest remainder, ties to the earlier peer; bounded by L rounds */
        for (int round = 0; sum < L && round < L; round++) {
                int best = -1;
                double best_frac = -1;
                for (int i = 0; i < n; i++) {
                        double frac = share[i] - counts[i];
                        if (active[i] && counts[i] < cap[i] && frac > best_frac + 1e-9) {
                                best = i;
                                best_frac = frac;
                        }
                }
                if (best < 0)
                        return -E2BIG;
                counts[best]++;
                sum++;
        }
        return sum == L ? 0 : -E2BIG;
}

int stage_plan(int n_layers, const stage_plan_peer *peers, int n_peers, const stage_plan_cost *cost,
               stage_plan_span *ret, int *ret_n) {
        bool active[PLAN_MAX_PEERS];
        int counts[PLAN_MAX_PEERS];

        if (n_layers < 1 || n_peers < 1 || n_peers > PLAN_MAX_PEERS || !peers || !cost || !ret)
                return -EINVAL;
        for (int i = 0; i < n_peers; i++) {
                if (!(peers[i].speed > 0) || !isfinite(peers[i].speed))
                        return -EINVAL;
                active[i] = true;
        }
        /* a peer left with no layer drops out and the ends may move: plan again (each round
         * drops at least one peer, so at most n_peers rounds) */
        for (int round = 0; round < n_peers; round++) {
                int r = plan_once(n_layers, peers, n_peers, active, cost, counts);
                bool dropped = false;
                if (r < 0)
                        return r;
                for (int i = 0; i < n_peers; i++)
                        if (active[i] && counts[i] == 0) {
                                active[i] = false;
                                dropped = true;
                        }
                if (dropped)
                        continue;
                int n = 0, next = 0;
                for (int i = 0; i < n_peers; i++)
                        if (counts[i] > 0) {
                                ret[n++] = (stage_plan_span){ .peer = i, .first = next,
                                                              .last = next + counts[i] - 1 };
                                next += counts[i];
                        }
                *ret_n = n;
                return 0;
        }
        return -E2BIG;
}

int stage_plan_cover(int n_layers, const stage_plan_span *held, const double *speed,
                     const unsigned char *alive, int n_peers, stage_plan_span *ret, int *ret_n) {
        int next = 0, n = 0;

        if (n_layers < 1 || n_peers < 1 || n_peers > PLAN_MAX_PEERS || !held || !ret)
                return -EINVAL;
        /* each round covers at least one more layer: at most n_layers rounds */
        while (next < n_layers && n < n_peers) {
                int best = -1;
                for (int i = 0; i < n_peers; i++) {
                        if ((alive && !alive[i]) || held[i].first > next || held[i].last < next)
                                continue;
                        if (best < 0 || held[i].last > held[best].last ||
                            (held[i].last == held[best].last && speed && speed[i] > speed[best]))
                                best = i;
                }
                if (best < 0)
                        return -E2BIG;
                int last = held[best].last < n_layers - 1 ? held[best].last : n_layers - 1;
                ret[n++] = (stage_plan_span){ .peer = best, .first = next, .last = last };
                next = last + 1;
        }
        if (next < n_layers)
                return -E2BIG;
        *ret_n = n;
        return 0;
}
