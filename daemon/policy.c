/* SPDX-License-Identifier: MIT */
/* The policy engine; the rules are documented in policy.h. */

#include <math.h>
#include <stddef.h>

#include "macros.h"
#include "policy.h"

static const char *const reason_names[_POLICY_REASON_MAX] = {
        [POLICY_REASON_NONE] = "none",
        [POLICY_REASON_NOT_IDLE] = "not-idle",
        [POLICY_REASON_HOT] = "hot",
        [POLICY_REASON_ON_BATTERY] = "on-battery",
        [POLICY_REASON_LOW_BATTERY] = "low-battery",
        [POLICY_REASON_OUTSIDE_HOURS] = "outside-hours",
        [POLICY_REASON_INTERFERENCE] = "interference",
        [POLICY_REASON_USER_PAUSED] = "user-paused",
        [POLICY_REASON_NO_DATA] = "no-data",
        [POLICY_REASON_NO_TASK] = "no-task",
        [POLICY_REASON_ERROR] = "error",
        [POLICY_REASON_DISK_FULL] = "disk-full",
};

static const char *const mode_names[_POLICY_MODE_MAX] = {
        [POLICY_OFF] = "off",
        [POLICY_PAUSED] = "paused",
        [POLICY_RUNNING] = "running",
};

const char *policy_reason_name(policy_reason r) {
        if ((unsigned) r >= _POLICY_REASON_MAX)
                return NULL;
        return reason_names[r];
}

const char *policy_mode_name(policy_mode m) {
        if ((unsigned) m >= _POLICY_MODE_MAX)
                return NULL;
        return mode_names[m];
}

static bool window_covers(const active_window *w, int weekday, int minute) {
        int yesterday = (weekday + 6) % 7;

        if (w->end_min > w->start_min)
                return (w->days & (1u << weekday)) && minute >= w->start_min && minute < w->end_min;
        /* Overnight (or 24 h when end == start): the evening part belongs to the start
         * day, the morning part to the day before. */
        if ((w->days & (1u << weekday)) && minute >= w->start_min)
                return true;
        return (w->days & (1u << yesterday)) && minute < w->end_min;
}

bool policy_in_active_hours(const policy_knobs *k, int weekday, int minute_of_day) {
        int n = MIN(k->n_active_windows, ACTIVE_WINDOWS_MAX);

        if (n <= 0)
                return true;
        /* A bad clock breakdown should not make the mask test shift into other bits. */
        if (weekday < 0 || weekday > 6 || minute_of_day < 0 || minute_of_day >= 24 * 60)
                return false;
        for (int i = 0; i < n; i++)
                if (window_covers(&k->active[i], weekday, minute_of_day))
                        return true;
        return false;
}

bool policy_on_battery(const sensors_sample_t *s) {
        if (s->n_batteries <= 0)
                return false;
        if (s->have_ac_supply)
                return !s->ac_online;
        /* Some boards expose a battery but no mains node: trust its own status. */
        return s->discharging;
}

int policy_idle_cores(int n_cpus, double avail_pct) {
        double pct = avail_pct;
        int n;

        if (n_cpus < 1)
                n_cpus = 1;
        if (!(pct > 0)) /* also NaN */
                pct = 0;
        if (pct > 100)
                pct = 100;
        /* A core that is free POLICY_CORE_FREE_FRACTION of the time counts as idle: the
         * daemon's own loop, kernel threads and the odd timer never leave a core 100 % free,
         * and on a quiet 2-core machine 99 % idle must mean two cores, not one. */
        n = (int) floor(n_cpus * pct / 100.0 + (1.0 - POLICY_CORE_FREE_FRACTION) + 1e-9);
        return MAX(1, MIN(n, n_cpus));
}

void policy_idle_push(policy_state *s, double window_s, double now_s, double interval_s,
                      double avail_pct) {
        policy_idle_slot *h;

        if (!(interval_s > 0))
                return;
        if (!(avail_pct >= 0))
                avail_pct = 0;
        if (avail_pct > 100)
                avail_pct = 100;
        if (s->idle_n > 0 && now_s < s->idle[s->idle_head].end_s)
                s->idle_n = 0; /* time ran backwards: a new clock, start over */

        if (s->idle_n > 0) {
                h = &s->idle[s->idle_head];
                /* Long windows would need more slots than we have: merge samples into
                 * slots of at least window/(SLOTS/2) so half the ring spans the window.
                 * Only contiguous samples merge, so a slot stays one stretch of time. */
                if (h->dur_s < window_s / (POLICY_IDLE_SLOTS / 2.0) &&
                    now_s - interval_s <= h->end_s + 0.5) {
                        h->avail_pct = (h->avail_pct * h->dur_s + avail_pct * interval_s) /
                                       (h->dur_s + interval_s);
                        h->dur_s += interval_s;
                        h->end_s = now_s;
                        return;
                }
        }

        s->idle_head = s->idle_n > 0 ? (s->idle_head + 1) % POLICY_IDLE_SLOTS : 0;
        if (s->idle_n < POLICY_IDLE_SLOTS)
                s->idle_n++;
        s->idle[s->idle_head] = (policy_idle_slot){
                .end_s = now_s,
                .dur_s = interval_s,
                .avail_pct = avail_pct,
        };
}

double policy_idle_average(const policy_state *s, double now_s, double window_s,
                           double *ret_cover) {
        double lo = now_s - window_s, cover = 0, sum = 0;

        for (int i = 0; i < s->idle_n; i++) {
                const policy_idle_slot *p =
                        &s->idle[(s->idle_head - i + POLICY_IDLE_SLOTS) % POLICY_IDLE_SLOTS];
                /* Only the part of a slot inside the window counts. */
                double ov = MIN(p->end_s, now_s) - MAX(p->end_s - p->dur_s, lo);

                if (ov > 0) {
                        cover += ov;
                        sum += p->avail_pct * ov;
                }
        }
        if (ret_cover)
                *ret_cover = cover;
        return cover > 0 ? sum / cover : 0;
}

double policy_brake_push(policy_state *s, double now_s, double interval_s, double excess_ms) {
        double sum = 0, cover = 0, lo = now_s - POLICY_BRAKE_WINDOW_SEC;

        s->brake_head = (s->brake_head + 1) % POLICY_BRAKE_SLOTS;
        s->brake_hist[s->brake_head].end_s = now_s;
        s->brake_hist[s->brake_head].dur_s = interval_s > 0 ? interval_s : 0;
        s->brake_hist[s->brake_head].excess_ms = excess_ms > 0 ? excess_ms : 0;
        if (s->brake_n < POLICY_BRAKE_SLOTS)
                s->brake_n++;
        for (int i = 0; i < s->brake_n; i++) {
                int j = (s->brake_head - i + POLICY_BRAKE_SLOTS) % POLICY_BRAKE_SLOTS;

                /* whole samples: the newest always counts, older ones if they end inside */
                if (i > 0 && s->brake_hist[j].end_s <= lo)
                        break;
                sum += s->brake_hist[j].excess_ms;
                cover += s->brake_hist[j].dur_s;
        }
        return sum / MAX(cover, POLICY_BRAKE_WINDOW_SEC);
}

/* The interference brake: steps down on excess while running, back up after quiet. */
static void brake_update(policy_state *s, const policy_input *in, const policy_state *prev,
                         bool was_running, double delay, double max_delay, int target) {
        double now = in->monotonic_s;

        if (delay > max_delay) {
                s->brake_last_s = now;
                if (was_running) {
                        int cur = in->cores_granted > 0 ? in->cores_granted : prev->cores;

                        if (s->brake_limit > 0 && s->brake_limit < cur)
                                cur = s->brake_limit;
                        if (cur <= 1) {
                                s->brake_pause = true;
                                s->brake_limit = 1;
                        } else
                                s->brake_limit = cur - 1;
                        s->brake_n = 0;
                }
                return;
        }

        if (!s->brake_pause && s->brake_limit <= 0)
                return;
        if (now - s->brake_last_s < POLICY_BRAKE_QUIET_SEC)
                return;
        /* One core per quiet period, so a returning foreground load is caught early. */
        if (s->brake_pause)
                s->brake_pause = false; /* limit stays at 1 */
        else
                s->brake_limit++;
        s->brake_last_s = now;
        if (s->brake_limit >= target)
                s->brake_limit = 0;
}

double policy_excess_delay_ms(const sensors_sample_t *smp) {
        uint64_t others = smp->latency_count > smp->interference_count
                                  ? smp->latency_count - smp->interference_count
                                  : 0;
        double baseline = 0, excess;

        if (smp->interval_s <= 0)
                return 0;
        if (others > 0 && smp->latency_sum_ns > smp->interference_sum_ns)
                baseline = (double) (smp->latency_sum_ns - smp->interference_sum_ns) / (double) others;
        excess = (double) smp->interference_sum_ns - baseline * (double) smp->interference_count;
        return excess > 0 ? excess / 1e6 / smp->interval_s : 0;
}

policy_decision policy_decide(const policy_knobs *k, const policy_input *in,
                              const policy_state *prev, policy_state *next) {
        /* Work on a copy so next may alias prev. */
        policy_state s = *prev;
        const sensors_sample_t *smp = &in->sample;
        policy_decision d = {};
        bool was_running = prev->started && prev->mode == POLICY_RUNNING;
        int n_cpus = in->n_cpus > 0 ? in->n_cpus : smp->n_cpus;
        double window = MAX(k->idle_window_sec, 1);
        double avail = smp->idle_pct + smp->harvester_pct;
        double cover, delay = 0;
        bool idle_ok, user_paused, on_batt;
        int target;

        policy_idle_push(&s, window, in->monotonic_s, smp->interval_s, avail);
        d.idle_avg_pct = policy_idle_average(&s, in->monotonic_s, window, &cover);
        if (was_running)
                idle_ok = d.idle_avg_pct >= k->min_idle_percent - POLICY_IDLE_HYSTERESIS_PCT;
        else
                idle_ok = cover >= window * POLICY_WINDOW_FILL &&
                          d.idle_avg_pct >= k->min_idle_percent;

        if (smp->have_temp) {
                if (smp->max_temp_c >= k->max_temperature_c)
                        s.hot = true;
                else if (smp->max_temp_c <= k->resume_temperature_c)
                        s.hot = false;
        }

        target = policy_idle_cores(n_cpus, avail);
        if (k->max_cores > 0)
                target = MIN(target, k->max_cores);

        d.delay_ms_per_s = policy_excess_delay_ms(smp);
        delay = policy_brake_push(&s, in->monotonic_s, smp->interval_s,
                                  d.delay_ms_per_s * MAX(smp->interval_s, 0));
        d.brake_ms_per_s = delay;
        brake_update(&s, in, prev, was_running, delay, k->max_foreground_delay_ms, target);

        user_paused = in->pause_indefinite || in->realtime_s < in->pause_until;
        on_batt = policy_on_battery(smp);

        d.mode = POLICY_PAUSED;
        if (in->disabled)
                d.mode = POLICY_OFF;
        else if (in->error)
                d.reason = POLICY_REASON_ERROR;
        else if (in->disk_full)
                d.reason = POLICY_REASON_DISK_FULL;
        else if (user_paused)
                d.reason = POLICY_REASON_USER_PAUSED;
        else if (!in->have_data)
                d.reason = POLICY_REASON_NO_DATA;
        else if (!in->have_task)
                d.reason = POLICY_REASON_NO_TASK;
        else if (!policy_in_active_hours(k, in->weekday, in->minute_of_day))
                d.reason = POLICY_REASON_OUTSIDE_HOURS;
        else if (on_batt && k->require_ac_power)
                d.reason = POLICY_REASON_ON_BATTERY;
        else if (on_batt && smp->battery_pct < k->min_battery_percent)
                d.reason = POLICY_REASON_LOW_BATTERY;
        else if (s.hot)
                d.reason = POLICY_REASON_HOT;
        else if (s.brake_pause)
                d.reason = POLICY_REASON_INTERFERENCE;
        else if (!idle_ok || (k->pause_on_user_active && in->user_active))
                d.reason = POLICY_REASON_NOT_IDLE;
        else {
                d.mode = POLICY_RUNNING;
                d.cores = s.brake_limit > 0 ? MIN(target, s.brake_limit) : target;
        }

        d.transition = !prev->started || prev->mode != d.mode || prev->reason != d.reason;
        d.cores_changed = d.mode == POLICY_RUNNING && (!was_running || prev->cores != d.cores);
        if (d.transition) {
                s.n_transitions++;
                if (d.mode == POLICY_RUNNING)
                        s.n_running++;
                else if (d.mode == POLICY_OFF)
                        s.n_off++;
                else
                        s.n_paused[d.reason]++;
                s.since_s = in->monotonic_s;
        }
        s.started = true;
        s.mode = d.mode;
        s.reason = d.reason;
        s.cores = d.cores;
        *next = s;
        return d;
}
