/* SPDX-License-Identifier: MIT */
#pragma once

/* The policy of DESIGN.md §5: a pure function (knobs, sample, clock, previous state) →
 * OFF / PAUSED(reason) / RUNNING(n cores). No I/O, no clock reads, no logging: the caller
 * supplies the time and logs a decision once when .transition is set.
 *
 * Rules (constants below):
 *  - Idleness: available CPU = idle% + harvester% (edged's own use is available to the
 *    person). Its time-weighted mean over IdleWindowSec must be >= MinIdlePercent to
 *    start, and the window must be at least POLICY_WINDOW_FILL observed (no start right
 *    after boot or a suspend). Once RUNNING, keep running while the mean stays
 *    >= MinIdlePercent - POLICY_IDLE_HYSTERESIS_PCT (exactly at the lower edge keeps
 *    running). PauseOnUserActive with the seat active also gives not-idle.
 *  - Temperature: latch "hot" at >= MaxTemperatureC, clear it at <= ResumeTemperatureC;
 *    in between it keeps its value. No reading at all leaves the latch as it was.
 *  - Power: on battery = a battery exists and the AC supply is offline (a battery without
 *    any AC supply node: when it is discharging). No battery counts as AC. RequireACPower
 *    pauses on-battery; otherwise below MinBatteryPercent (strictly) pauses low-battery.
 *  - ActiveHours: no windows = always. A window covers [start, end) on the days of its
 *    mask; end <= start runs overnight into the next day (end == start: 24 hours), so a
 *    Fri 22:00-06:00 window covers Sat 03:00 and a Sun window spills into Monday.
 *  - Cores: idle cores = floor(n_cpus x available% / 100), at least 1; MaxCores > 0
 *    caps that (never above n_cpus).
 *  - Interference brake: delay = the excess foreground wakeup delay of the samples in the
 *    last POLICY_BRAKE_WINDOW_SEC, in ms per second of that window (time not yet observed
 *    counts as no delay; a longer sample is its own window). So a single tick-long wait of
 *    some daemon on an otherwise quiet machine does not trip it, while a strong excess
 *    does at once (> window x limit in one sample). Above MaxForegroundDelayMs while
 *    RUNNING: drop one core below the current grant, or pause "interference" at one core,
 *    and start the window afresh (the next step is judged at the new grant). Each sample
 *    over the limit restarts a quiet timer; after POLICY_BRAKE_QUIET_SEC without excess one core comes back (from
 *    the pause: 1 core), then one more per further quiet period, until the brake no
 *    longer limits. Without BPF interference is not measured and the brake never fires.
 *  - Precedence when several apply: error > user-paused > no-data > no-task >
 *    outside-hours > on-battery > low-battery > hot > interference > not-idle.
 *    OFF (disabled) beats them all.
 *  - Transition = mode or reason changed (or the first decision); a change of the core
 *    count alone is not one (.cores_changed says so). Each transition is counted in the
 *    state: per pause reason, entries into RUNNING, into OFF, and in total. */

#include <stdbool.h>
#include <stdint.h>

#include "knobs.h"
#include "sensors.h"

#define POLICY_IDLE_HYSTERESIS_PCT 10.0 /* points below MinIdlePercent before a stop */
#define POLICY_WINDOW_FILL 0.9          /* share of IdleWindowSec observed before a start */
#define POLICY_BRAKE_QUIET_SEC 20.0     /* quiet time before the brake gives a core back */
#define POLICY_BRAKE_WINDOW_SEC 5.0     /* the brake judges the delay over this long */
#define POLICY_BRAKE_SLOTS 16           /* ring of recent delay samples */
#define POLICY_IDLE_SLOTS 64            /* ring of idle samples (merged for long windows) */
#define POLICY_CORE_FREE_FRACTION 0.75  /* a core this free counts as idle */

typedef enum {
        POLICY_OFF,
        POLICY_PAUSED,
        POLICY_RUNNING,
        _POLICY_MODE_MAX,
} policy_mode;

typedef enum {
        POLICY_REASON_NONE, /* RUNNING or OFF */
        POLICY_REASON_NOT_IDLE,
        POLICY_REASON_HOT,
        POLICY_REASON_ON_BATTERY,
        POLICY_REASON_LOW_BATTERY,
        POLICY_REASON_OUTSIDE_HOURS,
        POLICY_REASON_INTERFERENCE,
        POLICY_REASON_USER_PAUSED,
        POLICY_REASON_NO_DATA,
        POLICY_REASON_NO_TASK,
        POLICY_REASON_ERROR,
        POLICY_REASON_DISK_FULL, /* the last checkpoint could not be written: no space */
        _POLICY_REASON_MAX,
} policy_reason;

typedef struct {
        sensors_sample_t sample;
        int64_t realtime_s;  /* CLOCK_REALTIME seconds, for the user pause */
        int weekday;         /* local time: 0 = Monday ... 6 = Sunday */
        int minute_of_day;   /* local time: 0 ... 1439 */
        double monotonic_s;  /* CLOCK_MONOTONIC at the end of the sample interval */
        int n_cpus;          /* online CPUs; <= 0: take sample.n_cpus */
        int cores_granted;   /* cores the trainer runs with now (0 when paused) */
        int64_t pause_until; /* realtime seconds; paused while realtime_s < this */
        bool pause_indefinite;
        bool have_data, have_task;
        bool error;
        bool disk_full;   /* a checkpoint failed for want of space: training would be lost */
        bool user_active; /* logind: the seat is not idle */
        bool disabled;    /* OFF */
} policy_input;

typedef struct {
        double end_s, dur_s; /* monotonic end and length of the slot */
        double avail_pct;    /* time-weighted mean of idle% + harvester% over it */
} policy_idle_slot;

/* Zero-initialise before the first call; it is then carried from call to call. */
typedef struct {
        bool started; /* a decision has been made */
        policy_mode mode;
        policy_reason reason;
        int cores;
        double since_s; /* monotonic time of the last transition */

        policy_idle_slot idle[POLICY_IDLE_SLOTS];
        int idle_head, idle_n; /* newest slot, slots in use */

        bool hot;
        struct {
                double end_s, dur_s, excess_ms;
        } brake_hist[POLICY_BRAKE_SLOTS];
        int brake_head, brake_n; /* newest sample, samples in use */
        int brake_limit;     /* cores the brake allows; 0: no limit */
        bool brake_pause;    /* paused by the brake */
        double brake_last_s; /* last excess or step: the quiet timer starts here */

        uint64_t n_transitions, n_running, n_off;
        uint64_t n_paused[_POLICY_REASON_MAX];
} policy_state;

typedef struct {
        policy_mode mode;
        policy_reason reason;  /* POLICY_REASON_NONE unless PAUSED */
        int cores;             /* > 0 only when RUNNING */
        bool transition;       /* log this one */
        bool cores_changed;    /* RUNNING with another core count than before */
        double idle_avg_pct;   /* window mean of idle% + harvester%, for status */
        double delay_ms_per_s; /* foreground delay attributed to edged, this sample */
        double brake_ms_per_s; /* the same over the brake's window: what it compares */
} policy_decision;

/* next may be prev. */
policy_decision policy_decide(const policy_knobs *k, const policy_input *in,
                              const policy_state *prev, policy_state *next);

const char *policy_reason_name(policy_reason r); /* "not-idle", ...; "none"; NULL if invalid */
const char *policy_mode_name(policy_mode m);     /* "off", "paused", "running"; NULL if invalid */

/* The pieces policy_decide() is made of, pure as well (tests, edgectl). */
bool policy_in_active_hours(const policy_knobs *k, int weekday, int minute_of_day);
bool policy_on_battery(const sensors_sample_t *s);
/* The foreground wakeup delay edged caused, in ms per second of the sample: the waits of
 * wakeups that found a harvester thread on the CPU, minus what the same number of wakeups
 * waited on average elsewhere (wakeup latency that exists without edged: idle exit, IPIs,
 * the hypervisor). */
double policy_excess_delay_ms(const sensors_sample_t *s);
int policy_idle_cores(int n_cpus, double avail_pct);
/* Records a sample of interval_s ending at now_s with excess_ms of foreground delay, and
 * returns the delay over the brake's window in ms per second. */
double policy_brake_push(policy_state *s, double now_s, double interval_s, double excess_ms);
/* Records interval_s seconds ending at now_s at avail_pct; window_s sets the merge size. */
void policy_idle_push(policy_state *s, double window_s, double now_s, double interval_s,
                      double avail_pct);
/* Mean over (now_s - window_s, now_s]; *ret_cover gets the seconds observed. 0 if none. */
double policy_idle_average(const policy_state *s, double now_s, double window_s, double *ret_cover);
