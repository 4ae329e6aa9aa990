/* SPDX-License-Identifier: MIT */
/* The policy: one table row per case (knobs + input + previous state → decision), then a
 * few sequences where the state carried from call to call is the point (window filling,
 * the interference brake stepping down and back, transitions counted once). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "macros.h"
#include "policy.h"

/* ---- building rows ---- */

/* Rows start from defaults and name only what differs; a later designator overriding an
 * earlier one is exactly what we want here. */
#pragma GCC diagnostic ignored "-Woverride-init"

/* clang-format would mangle these row-building macros (it reads HM()s "*" as a pointer). */
// clang-format off

enum { MON = 1 << 0, TUE = 1 << 1, WED = 1 << 2, THU = 1 << 3, FRI = 1 << 4, SAT = 1 << 5,
       SUN = 1 << 6, WEEKDAYS = MON | TUE | WED | THU | FRI };

#define HM(h, m) ((h) * 60 + (m))
#define NOW 1000.0
#define REALTIME 1700000000

/* Balanced defaults of DESIGN.md §5. */
#define KNOBS(...)                                                                                 \
        {                                                                                          \
                .profile = PROFILE_BALANCED, .min_idle_percent = 60, .idle_window_sec = 30,        \
                .max_cores = 0, .max_temperature_c = 75, .resume_temperature_c = 65,               \
                .require_ac_power = true, .min_battery_percent = 80,                               \
                .max_foreground_delay_ms = 5, .max_memory_mib = 1024, .n_active_windows = 0,       \
                .pause_on_user_active = false, __VA_ARGS__                                         \
        }

/* An idle 8-CPU desktop on mains at noon on a Wednesday, everything available. */
#define IN(...)                                                                                    \
        {                                                                                          \
                .sample.interval_s = 1.0, .sample.n_cpus = 8, .sample.idle_pct = 90,               \
                .sample.foreground_pct = 10, .sample.harvester_pct = 0,                            \
                .sample.have_temp = true, .sample.max_temp_c = 50,                                 \
                .sample.have_ac_supply = true, .sample.ac_online = true,                           \
                .sample.n_batteries = 0, .realtime_s = REALTIME, .weekday = 2,                     \
                .minute_of_day = HM(12, 0), .monotonic_s = NOW, .n_cpus = 8,                       \
                .cores_granted = 0, .have_data = true, .have_task = true, __VA_ARGS__              \
        }

/* The previous state, described rather than built: hist_sec one-second samples at
 * hist_pct ending one second before now. */
typedef struct {
        bool fresh; /* zero state: nothing decided yet */
        policy_mode mode;
        policy_reason reason;
        int cores;
        double hist_pct;
        int hist_sec;
        bool hot;
        int brake_limit;
        bool brake_pause;
        double brake_age; /* seconds since the brake last acted */
        double brake_hist_ms; /* brake_hist_sec one-second samples with this excess delay */
        int brake_hist_sec;
} prev_spec;

#define PREV(...)                                                                                  \
        {                                                                                          \
                .mode = POLICY_PAUSED, .reason = POLICY_REASON_NOT_IDLE, .hist_pct = 90,           \
                .hist_sec = 60, .brake_age = 1000, __VA_ARGS__                                     \
        }
#define PREV_RUNNING(n, ...)                                                                       \
        PREV(.mode = POLICY_RUNNING, .reason = POLICY_REASON_NONE, .cores = (n), __VA_ARGS__)

typedef struct {
        policy_mode mode;
        policy_reason reason;
        int cores;
        bool transition;
        bool check_state; /* also compare the three below with the next state */
        bool hot;
        int brake_limit;
        bool brake_pause;
} expect_spec;

#define RUN(n, tr, ...) { .mode = POLICY_RUNNING, .cores = (n), .transition = (tr), __VA_ARGS__ }
#define PAUSE(r, tr, ...)                                                                          \
        { .mode = POLICY_PAUSED, .reason = POLICY_REASON_##r, .transition = (tr), __VA_ARGS__ }
#define OFF(tr) { .mode = POLICY_OFF, .transition = (tr) }
#define STATE(h, bl, bp) .check_state = true, .hot = (h), .brake_limit = (bl), .brake_pause = (bp)

typedef struct {
        const char *name;
        policy_knobs k;
        policy_input in;
        prev_spec p;
        expect_spec e;
} policy_case;

#define ROW(n, kn, i, pr, ex) { .name = (n), .k = kn, .in = i, .p = pr, .e = ex }
/* Same as ROW with default knobs/previous state. */
#define ROW_I(n, i, ex) { .name = (n), .k = KNOBS(), .in = i, .p = PREV(), .e = ex }

#define BATTERY(pct)                                                                               \
        .sample.n_batteries = 1, .sample.battery_pct = (pct), .sample.ac_online = false,           \
        .sample.discharging = true
#define REQUIRE_AC_NO .require_ac_power = false
#define WINDOW1(d, s, e)                                                                           \
        .n_active_windows = 1, .active = { { .days = (d), .start_min = (s), .end_min = (e) } }
#define EVENINGS WINDOW1(WEEKDAYS, HM(19, 0), HM(8, 0))
#define AT(wd, h, m) .weekday = (wd), .minute_of_day = HM(h, m)
#define IDLE(pct) .sample.idle_pct = (pct), .sample.foreground_pct = 100 - (pct)
#define INTERF_NS(ns) .sample.interference_sum_ns = (ns), .sample.interference_count = 1

// clang-format on

static const policy_case cases[] = {
        /* ---- idleness: start threshold, window filling, harvester share ---- */
        ROW("idle: exactly MinIdlePercent starts", KNOBS(), IN(IDLE(60)), PREV(.hist_pct = 60),
            RUN(5, true)), /* 4.8 cores: the fifth is 80 % free */
        ROW("idle: one below MinIdlePercent", KNOBS(), IN(IDLE(59)), PREV(.hist_pct = 59),
            PAUSE(NOT_IDLE, false)),
        ROW("idle: one above MinIdlePercent", KNOBS(), IN(IDLE(61)), PREV(.hist_pct = 61),
            RUN(5, true)),
        ROW("idle: harvester share counts as available", KNOBS(),
            IN(.sample.idle_pct = 30, .sample.harvester_pct = 40, .sample.foreground_pct = 30),
            PREV(.hist_pct = 70), RUN(5, true)),
        ROW("idle: mean of the window, not the last sample", KNOBS(), IN(IDLE(0)),
            PREV(.hist_pct = 100), RUN(1, true)),
        ROW("idle: one busy stretch pulls the mean under", KNOBS(), IN(IDLE(100)),
            PREV(.hist_pct = 58), PAUSE(NOT_IDLE, false)),
        ROW("idle: MinIdlePercent=0 always idle", KNOBS(.min_idle_percent = 0), IN(IDLE(0)),
            PREV(.hist_pct = 0), RUN(1, true)),
        ROW("idle: no history at all", KNOBS(), IN(), PREV(.hist_sec = 0), PAUSE(NOT_IDLE, false)),
        ROW("idle: window 90% observed starts (26 s + now)", KNOBS(), IN(), PREV(.hist_sec = 26),
            RUN(7, true)),
        ROW("idle: window 86% observed waits (25 s + now)", KNOBS(), IN(), PREV(.hist_sec = 25),
            PAUSE(NOT_IDLE, false)),
        ROW("idle: IdleWindowSec=10 fills sooner", KNOBS(.idle_window_sec = 10), IN(),
            PREV(.hist_sec = 8), RUN(7, true)),
        ROW("idle: IdleWindowSec=10 ignores older busy time", KNOBS(.idle_window_sec = 10), IN(),
            PREV(.hist_sec = 9), RUN(7, true)),

        /* ---- idleness hysteresis once running ---- */
        ROW("hyst: running, exactly Min-10 keeps running", KNOBS(),
            IN(IDLE(50), .cores_granted = 4), PREV_RUNNING(4, .hist_pct = 50), RUN(4, false)),
        ROW("hyst: running, one below Min-10 stops", KNOBS(), IN(IDLE(49), .cores_granted = 4),
            PREV_RUNNING(4, .hist_pct = 49), PAUSE(NOT_IDLE, true)),
        ROW("hyst: running, one above Min-10 keeps running", KNOBS(),
            IN(IDLE(51), .cores_granted = 4), PREV_RUNNING(4, .hist_pct = 51), RUN(4, false)),
        ROW("hyst: paused, between Min-10 and Min does not start", KNOBS(), IN(IDLE(55)),
            PREV(.hist_pct = 55), PAUSE(NOT_IDLE, false)),
        ROW("hyst: running, short history still judged", KNOBS(), IN(IDLE(50), .cores_granted = 4),
            PREV_RUNNING(4, .hist_sec = 0), RUN(4, false)),
        ROW("hyst: MinIdlePercent=80, 70 keeps running", KNOBS(.min_idle_percent = 80),
            IN(IDLE(70), .cores_granted = 5), PREV_RUNNING(5, .hist_pct = 70), RUN(5, false)),
        ROW("hyst: MinIdlePercent=80, 69 stops", KNOBS(.min_idle_percent = 80),
            IN(IDLE(69), .cores_granted = 5), PREV_RUNNING(5, .hist_pct = 69),
            PAUSE(NOT_IDLE, true)),

        /* ---- PauseOnUserActive ---- */
        ROW("user-active: knob on, seat active", KNOBS(.pause_on_user_active = true),
            IN(.user_active = true), PREV(), PAUSE(NOT_IDLE, false)),
        ROW("user-active: knob on, seat idle", KNOBS(.pause_on_user_active = true), IN(), PREV(),
            RUN(7, true)),
        ROW("user-active: knob off, seat active", KNOBS(), IN(.user_active = true), PREV(),
            RUN(7, true)),

        /* ---- temperature latch ---- */
        ROW_I("hot: exactly MaxTemperatureC", IN(.sample.max_temp_c = 75),
              PAUSE(HOT, true, STATE(true, 0, false))),
        ROW_I("hot: one below MaxTemperatureC", IN(.sample.max_temp_c = 74),
              RUN(7, true, STATE(false, 0, false))),
        ROW_I("hot: between, not latched", IN(.sample.max_temp_c = 70), RUN(7, true)),
        ROW("hot: latched, one above Resume stays", KNOBS(), IN(.sample.max_temp_c = 66),
            PREV(.reason = POLICY_REASON_HOT, .hot = true),
            PAUSE(HOT, false, STATE(true, 0, false))),
        ROW("hot: latched, exactly Resume clears", KNOBS(), IN(.sample.max_temp_c = 65),
            PREV(.reason = POLICY_REASON_HOT, .hot = true), RUN(7, true, STATE(false, 0, false))),
        ROW("hot: latched, one below Resume clears", KNOBS(), IN(.sample.max_temp_c = 64),
            PREV(.reason = POLICY_REASON_HOT, .hot = true), RUN(7, true)),
        ROW("hot: running, one above Max", KNOBS(), IN(.sample.max_temp_c = 76, .cores_granted = 7),
            PREV_RUNNING(7), PAUSE(HOT, true)),
        ROW("hot: no reading keeps the latch", KNOBS(),
            IN(.sample.have_temp = false, .sample.max_temp_c = 0),
            PREV(.reason = POLICY_REASON_HOT, .hot = true), PAUSE(HOT, false)),
        ROW_I("hot: no reading, not latched", IN(.sample.have_temp = false), RUN(7, true)),
        ROW("hot: custom 90/80, 85 runs",
            KNOBS(.max_temperature_c = 90, .resume_temperature_c = 80), IN(.sample.max_temp_c = 85),
            PREV(), RUN(7, true)),
        ROW("hot: custom 90/80, 85 latched stays",
            KNOBS(.max_temperature_c = 90, .resume_temperature_c = 80), IN(.sample.max_temp_c = 85),
            PREV(.reason = POLICY_REASON_HOT, .hot = true), PAUSE(HOT, false)),

        /* ---- power ---- */
        ROW_I("power: battery, AC offline", IN(BATTERY(100)), PAUSE(ON_BATTERY, true)),
        ROW_I("power: battery, AC online",
              IN(BATTERY(100), .sample.ac_online = true, .sample.discharging = false),
              RUN(7, true)),
        ROW_I("power: AC online, battery low and charging",
              IN(BATTERY(10), .sample.ac_online = true, .sample.discharging = false), RUN(7, true)),
        ROW_I("power: no battery, no AC node (desktop)", IN(.sample.have_ac_supply = false),
              RUN(7, true)),
        ROW_I("power: no battery, AC node offline", IN(.sample.ac_online = false), RUN(7, true)),
        ROW_I("power: battery without AC node, discharging",
              IN(BATTERY(100), .sample.have_ac_supply = false), PAUSE(ON_BATTERY, true)),
        ROW_I("power: battery without AC node, not discharging",
              IN(BATTERY(100), .sample.have_ac_supply = false, .sample.discharging = false),
              RUN(7, true)),
        ROW("power: RequireACPower=no, exactly MinBatteryPercent", KNOBS(REQUIRE_AC_NO),
            IN(BATTERY(80)), PREV(), RUN(7, true)),
        ROW("power: RequireACPower=no, one below MinBatteryPercent", KNOBS(REQUIRE_AC_NO),
            IN(BATTERY(79)), PREV(), PAUSE(LOW_BATTERY, true)),
        ROW("power: RequireACPower=no, one above MinBatteryPercent", KNOBS(REQUIRE_AC_NO),
            IN(BATTERY(81)), PREV(), RUN(7, true)),
        ROW("power: MinBatteryPercent=0 never low", KNOBS(REQUIRE_AC_NO, .min_battery_percent = 0),
            IN(BATTERY(1)), PREV(), RUN(7, true)),
        ROW("power: RequireACPower=no, on AC, low battery", KNOBS(REQUIRE_AC_NO),
            IN(BATTERY(5), .sample.ac_online = true, .sample.discharging = false), PREV(),
            RUN(7, true)),

        /* ---- ActiveHours ---- */
        ROW("hours: Mon-Fri 19-08, Wed 12:00", KNOBS(EVENINGS), IN(AT(2, 12, 0)), PREV(),
            PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Wed 19:00 (start)", KNOBS(EVENINGS), IN(AT(2, 19, 0)), PREV(),
            RUN(7, true)),
        ROW("hours: Mon-Fri 19-08, Wed 18:59", KNOBS(EVENINGS), IN(AT(2, 18, 59)), PREV(),
            PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Thu 07:59", KNOBS(EVENINGS), IN(AT(3, 7, 59)), PREV(),
            RUN(7, true)),
        ROW("hours: Mon-Fri 19-08, Thu 08:00 (end excluded)", KNOBS(EVENINGS), IN(AT(3, 8, 0)),
            PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Sat 03:00 (Fri night)", KNOBS(EVENINGS), IN(AT(5, 3, 0)), PREV(),
            RUN(7, true)),
        ROW("hours: Mon-Fri 19-08, Sat 20:00", KNOBS(EVENINGS), IN(AT(5, 20, 0)), PREV(),
            PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Sun 03:00", KNOBS(EVENINGS), IN(AT(6, 3, 0)), PREV(),
            PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Mon 03:00 (Sunday not listed)", KNOBS(EVENINGS), IN(AT(0, 3, 0)),
            PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Mon-Fri 19-08, Tue 03:00", KNOBS(EVENINGS), IN(AT(1, 3, 0)), PREV(),
            RUN(7, true)),
        ROW("hours: Fri 22-06, Sat 03:00", KNOBS(WINDOW1(FRI, HM(22, 0), HM(6, 0))),
            IN(AT(5, 3, 0)), PREV(), RUN(7, true)),
        ROW("hours: Fri 22-06, Fri 03:00", KNOBS(WINDOW1(FRI, HM(22, 0), HM(6, 0))),
            IN(AT(4, 3, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Fri 22-06, Fri 23:00", KNOBS(WINDOW1(FRI, HM(22, 0), HM(6, 0))),
            IN(AT(4, 23, 0)), PREV(), RUN(7, true)),
        ROW("hours: Fri 22-06, Sat 06:00", KNOBS(WINDOW1(FRI, HM(22, 0), HM(6, 0))),
            IN(AT(5, 6, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Fri 22-06, Sat 23:00", KNOBS(WINDOW1(FRI, HM(22, 0), HM(6, 0))),
            IN(AT(5, 23, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Sun 22-02 wraps into Monday", KNOBS(WINDOW1(SUN, HM(22, 0), HM(2, 0))),
            IN(AT(0, 1, 0)), PREV(), RUN(7, true)),
        ROW("hours: Sat-Mon 09-17, Sun 10:00", KNOBS(WINDOW1(SAT | SUN | MON, HM(9, 0), HM(17, 0))),
            IN(AT(6, 10, 0)), PREV(), RUN(7, true)),
        ROW("hours: Sat-Mon 09-17, Mon 10:00", KNOBS(WINDOW1(SAT | SUN | MON, HM(9, 0), HM(17, 0))),
            IN(AT(0, 10, 0)), PREV(), RUN(7, true)),
        ROW("hours: Sat-Mon 09-17, Tue 10:00", KNOBS(WINDOW1(SAT | SUN | MON, HM(9, 0), HM(17, 0))),
            IN(AT(1, 10, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: Sat-Mon 09-17, Fri 10:00", KNOBS(WINDOW1(SAT | SUN | MON, HM(9, 0), HM(17, 0))),
            IN(AT(4, 10, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: end == start is 24 h, Sun 08:00 from Sat",
            KNOBS(WINDOW1(SAT, HM(9, 0), HM(9, 0))), IN(AT(6, 8, 59)), PREV(), RUN(7, true)),
        ROW("hours: end == start is 24 h, Sun 09:00 ends", KNOBS(WINDOW1(SAT, HM(9, 0), HM(9, 0))),
            IN(AT(6, 9, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: end 24:00, 23:59", KNOBS(WINDOW1(WED, HM(18, 0), HM(24, 0))), IN(AT(2, 23, 59)),
            PREV(), RUN(7, true)),
        ROW("hours: two windows, weekend one matches",
            KNOBS(.n_active_windows = 2, .active = { { WEEKDAYS, HM(19, 0), HM(8, 0) },
                                                     { SAT | SUN, HM(10, 0), HM(18, 0) } }),
            IN(AT(6, 12, 0)), PREV(), RUN(7, true)),
        ROW("hours: two windows, none matches",
            KNOBS(.n_active_windows = 2, .active = { { WEEKDAYS, HM(19, 0), HM(8, 0) },
                                                     { SAT | SUN, HM(10, 0), HM(18, 0) } }),
            IN(AT(6, 9, 0)), PREV(), PAUSE(OUTSIDE_HOURS, true)),
        ROW("hours: leaving the window while running", KNOBS(EVENINGS),
            IN(AT(3, 8, 0), .cores_granted = 7), PREV_RUNNING(7), PAUSE(OUTSIDE_HOURS, true)),

        /* ---- cores ---- */
        ROW_I("cores: 8 CPUs 90% idle", IN(), RUN(7, true)),
        ROW_I("cores: 8 CPUs 100% idle", IN(IDLE(100)), RUN(8, true)),
        ROW_I("cores: 8 x 75% is exactly 6", IN(IDLE(75)), RUN(6, true)),
        ROW("cores: MaxCores=2", KNOBS(.max_cores = 2), IN(), PREV(), RUN(2, true)),
        ROW("cores: MaxCores=1", KNOBS(.max_cores = 1), IN(), PREV(), RUN(1, true)),
        ROW("cores: MaxCores above the idle estimate", KNOBS(.max_cores = 16), IN(IDLE(75)), PREV(),
            RUN(6, true)),
        ROW("cores: MaxCores above n_cpus", KNOBS(.max_cores = 16), IN(IDLE(100)), PREV(),
            RUN(8, true)),
        ROW_I("cores: n_cpus from the sample", IN(.n_cpus = 0, .sample.n_cpus = 4, IDLE(75)),
              RUN(3, true)),
        ROW_I("cores: 1 CPU, 99% idle is still 1", IN(.n_cpus = 1, IDLE(99)), RUN(1, true)),
        ROW_I("cores: 64 CPUs, 61% idle", IN(.n_cpus = 64, IDLE(61)), RUN(39, true)),
        ROW("cores: running, count changes without a transition", KNOBS(),
            IN(IDLE(100), .cores_granted = 7), PREV_RUNNING(7), RUN(8, false)),

        /* ---- interference brake ---- */
        ROW("brake: exactly MaxForegroundDelayMs over the window is fine", KNOBS(),
            IN(INTERF_NS(25000000), .cores_granted = 7), PREV_RUNNING(7),
            RUN(7, false, STATE(false, 0, false))),
        ROW("brake: one ns over drops a core", KNOBS(), IN(INTERF_NS(25000001), .cores_granted = 7),
            PREV_RUNNING(7), RUN(6, false, STATE(false, 6, false))),
        ROW("brake: a sample longer than the window is its own (10 s, 50 ms)", KNOBS(),
            IN(INTERF_NS(50000000), .sample.interval_s = 10, .cores_granted = 7), PREV_RUNNING(7),
            RUN(7, false)),
        ROW("brake: a sample longer than the window is its own (10 s, 52 ms)", KNOBS(),
            IN(INTERF_NS(52000000), .sample.interval_s = 10, .cores_granted = 7), PREV_RUNNING(7),
            RUN(6, false)),
        ROW("brake: one tick-long wait among quiet seconds is fine", KNOBS(),
            IN(INTERF_NS(12000000), .cores_granted = 7),
            PREV_RUNNING(7, .brake_hist_ms = 1, .brake_hist_sec = 4), RUN(7, false)),
        ROW("brake: the same wait alone, strong enough, drops at once", KNOBS(),
            IN(INTERF_NS(26000000), .cores_granted = 7), PREV_RUNNING(7), RUN(6, false)),
        ROW("brake: 6 ms/s for 5 s drops a core", KNOBS(), IN(INTERF_NS(6000000), .cores_granted = 7),
            PREV_RUNNING(7, .brake_hist_ms = 6, .brake_hist_sec = 4),
            RUN(6, false, STATE(false, 6, false))),
        ROW("brake: 6 ms/s for 4 s does not yet", KNOBS(), IN(INTERF_NS(6000000), .cores_granted = 7),
            PREV_RUNNING(7, .brake_hist_ms = 6, .brake_hist_sec = 3), RUN(7, false)),
        ROW("brake: steps from the current grant", KNOBS(),
            IN(INTERF_NS(45000000), .cores_granted = 3),
            PREV_RUNNING(3, .brake_limit = 3, .brake_age = 1),
            RUN(2, false, STATE(false, 2, false))),
        ROW("brake: at one core pauses", KNOBS(), IN(INTERF_NS(45000000), .cores_granted = 1),
            PREV_RUNNING(1, .brake_limit = 1, .brake_age = 1),
            PAUSE(INTERFERENCE, true, STATE(false, 1, true))),
        ROW("brake: MaxCores=1 and excess pauses at once", KNOBS(.max_cores = 1),
            IN(INTERF_NS(45000000), .cores_granted = 1), PREV_RUNNING(1), PAUSE(INTERFERENCE, true)),
        ROW("brake: MaxForegroundDelayMs=0, any delay counts", KNOBS(.max_foreground_delay_ms = 0),
            IN(INTERF_NS(1), .cores_granted = 7), PREV_RUNNING(7), RUN(6, false)),
        ROW("brake: MaxForegroundDelayMs=20, 15 ms/s is fine", KNOBS(.max_foreground_delay_ms = 20),
            IN(INTERF_NS(75000000), .cores_granted = 7), PREV_RUNNING(7), RUN(7, false)),
        ROW("brake: not running, excess does not step", KNOBS(), IN(INTERF_NS(45000000)), PREV(),
            RUN(7, true, STATE(false, 0, false))),
        ROW("brake: limit holds before the quiet period", KNOBS(), IN(.cores_granted = 3),
            PREV_RUNNING(3, .brake_limit = 3, .brake_age = POLICY_BRAKE_QUIET_SEC - 1),
            RUN(3, false, STATE(false, 3, false))),
        ROW("brake: one core back after the quiet period", KNOBS(), IN(.cores_granted = 3),
            PREV_RUNNING(3, .brake_limit = 3, .brake_age = POLICY_BRAKE_QUIET_SEC),
            RUN(4, false, STATE(false, 4, false))),
        ROW("brake: last core back clears the limit", KNOBS(), IN(.cores_granted = 6),
            PREV_RUNNING(6, .brake_limit = 6, .brake_age = POLICY_BRAKE_QUIET_SEC),
            RUN(7, false, STATE(false, 0, false))),
        ROW("brake: paused, quiet period not over", KNOBS(), IN(),
            PREV(.reason = POLICY_REASON_INTERFERENCE, .brake_limit = 1, .brake_pause = true,
                 .brake_age = POLICY_BRAKE_QUIET_SEC - 1),
            PAUSE(INTERFERENCE, false, STATE(false, 1, true))),
        ROW("brake: paused, resumes on one core", KNOBS(), IN(),
            PREV(.reason = POLICY_REASON_INTERFERENCE, .brake_limit = 1, .brake_pause = true,
                 .brake_age = POLICY_BRAKE_QUIET_SEC),
            RUN(1, true, STATE(false, 1, false))),
        ROW("brake: limit above a shrunken target", KNOBS(), IN(IDLE(65), .cores_granted = 5),
            PREV_RUNNING(5, .hist_pct = 65, .brake_limit = 6, .brake_age = 1), RUN(5, false)),

        /* ---- user pause ---- */
        ROW_I("pause: indefinite", IN(.pause_indefinite = true), PAUSE(USER_PAUSED, true)),
        ROW_I("pause: one second left", IN(.pause_until = REALTIME + 1), PAUSE(USER_PAUSED, true)),
        ROW_I("pause: ends exactly now", IN(.pause_until = REALTIME), RUN(7, true)),
        ROW_I("pause: ended a second ago", IN(.pause_until = REALTIME - 1), RUN(7, true)),

        /* ---- precedence: each pair, the higher one wins ---- */
        ROW_I("prec: OFF over error", IN(.disabled = true, .error = true), OFF(true)),
        ROW("prec: OFF stays OFF", KNOBS(), IN(.disabled = true),
            PREV(.mode = POLICY_OFF, .reason = POLICY_REASON_NONE), OFF(false)),
        ROW_I("prec: error over disk-full", IN(.error = true, .disk_full = true),
              PAUSE(ERROR, true)),
        ROW_I("prec: disk-full over user-paused", IN(.disk_full = true, .pause_indefinite = true),
              PAUSE(DISK_FULL, true)),
        ROW_I("prec: error over user-paused", IN(.error = true, .pause_indefinite = true),
              PAUSE(ERROR, true)),
        ROW_I("prec: user-paused over no-data", IN(.pause_indefinite = true, .have_data = false),
              PAUSE(USER_PAUSED, true)),
        ROW_I("prec: no-data over no-task", IN(.have_data = false, .have_task = false),
              PAUSE(NO_DATA, true)),
        ROW("prec: no-task over outside-hours", KNOBS(EVENINGS), IN(.have_task = false), PREV(),
            PAUSE(NO_TASK, true)),
        ROW("prec: outside-hours over on-battery", KNOBS(EVENINGS), IN(BATTERY(50)), PREV(),
            PAUSE(OUTSIDE_HOURS, true)),
        ROW_I("prec: on-battery over hot", IN(BATTERY(50), .sample.max_temp_c = 90),
              PAUSE(ON_BATTERY, true)),
        ROW("prec: low-battery over hot", KNOBS(REQUIRE_AC_NO),
            IN(BATTERY(50), .sample.max_temp_c = 90), PREV(), PAUSE(LOW_BATTERY, true)),
        ROW("prec: hot over interference", KNOBS(), IN(.sample.max_temp_c = 90),
            PREV(.reason = POLICY_REASON_INTERFERENCE, .brake_limit = 1, .brake_pause = true,
                 .brake_age = 1),
            PAUSE(HOT, true, STATE(true, 1, true))),
        ROW("prec: interference over not-idle", KNOBS(), IN(IDLE(10)),
            PREV(.reason = POLICY_REASON_INTERFERENCE, .hist_pct = 10, .brake_limit = 1,
                 .brake_pause = true, .brake_age = 1),
            PAUSE(INTERFERENCE, false)),
        ROW("prec: everything at once is error", KNOBS(EVENINGS, .pause_on_user_active = true),
            IN(.error = true, .pause_indefinite = true, .have_data = false, .have_task = false,
               BATTERY(5), .sample.max_temp_c = 99, IDLE(0), .user_active = true),
            PREV(.hist_pct = 0), PAUSE(ERROR, true)),

        /* ---- transitions ---- */
        ROW("trans: first decision is one", KNOBS(), IN(IDLE(0)), PREV(.fresh = true),
            PAUSE(NOT_IDLE, true)),
        ROW("trans: first decision OFF is one", KNOBS(), IN(.disabled = true), PREV(.fresh = true),
            OFF(true)),
        ROW("trans: reason change is one", KNOBS(), IN(.have_task = false),
            PREV(.reason = POLICY_REASON_NO_DATA), PAUSE(NO_TASK, true)),
        ROW("trans: same reason is none", KNOBS(), IN(.have_task = false),
            PREV(.reason = POLICY_REASON_NO_TASK), PAUSE(NO_TASK, false)),
};

static void build_prev(const policy_case *c, policy_state *s) {
        const prev_spec *p = &c->p;

        *s = (policy_state){};
        if (p->fresh)
                return;
        s->started = true;
        s->mode = p->mode;
        s->reason = p->reason;
        s->cores = p->cores;
        s->hot = p->hot;
        s->brake_limit = p->brake_limit;
        s->brake_pause = p->brake_pause;
        s->brake_last_s = c->in.monotonic_s - p->brake_age;
        for (int i = p->hist_sec; i >= 1; i--)
                policy_idle_push(s, c->k.idle_window_sec, c->in.monotonic_s - i, 1.0, p->hist_pct);
        for (int i = p->brake_hist_sec; i >= 1; i--)
                (void) policy_brake_push(s, c->in.monotonic_s - i, 1.0, p->brake_hist_ms);
}

#define CHECK(name, what, got, want)                                                               \
        do {                                                                                       \
                long long _g = (long long) (got), _w = (long long) (want);                         \
                if (_g != _w) {                                                                    \
                        print_error("\"%s\": %s = %lld, want %lld\n", (name), (what), _g, _w);     \
                        failed++;                                                                  \
                }                                                                                  \
        } while (0)

static void test_table(void **unused) {
        int failed = 0;

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const policy_case *c = &cases[i];
                policy_state prev, next;
                policy_decision d;
                uint64_t before;

                build_prev(c, &prev);
                d = policy_decide(&c->k, &c->in, &prev, &next);

                CHECK(c->name, "mode", d.mode, c->e.mode);
                CHECK(c->name, "reason", d.reason, c->e.reason);
                CHECK(c->name, "cores", d.cores, c->e.cores);
                CHECK(c->name, "transition", d.transition, c->e.transition);
                if (d.reason != c->e.reason)
                        print_error("\"%s\": got reason %s, want %s\n", c->name,
                                    policy_reason_name(d.reason), policy_reason_name(c->e.reason));
                if (c->e.check_state) {
                        CHECK(c->name, "next.hot", next.hot, c->e.hot);
                        CHECK(c->name, "next.brake_limit", next.brake_limit, c->e.brake_limit);
                        CHECK(c->name, "next.brake_pause", next.brake_pause, c->e.brake_pause);
                }

                /* The state carries the decision, and a transition is counted exactly once. */
                CHECK(c->name, "next.mode", next.mode, d.mode);
                CHECK(c->name, "next.reason", next.reason, d.reason);
                CHECK(c->name, "next.cores", next.cores, d.cores);
                CHECK(c->name, "n_transitions", next.n_transitions,
                      prev.n_transitions + d.transition);
                before = d.mode == POLICY_RUNNING ? prev.n_running
                         : d.mode == POLICY_OFF   ? prev.n_off
                                                  : prev.n_paused[d.reason];
                CHECK(c->name, "per-reason count",
                      d.mode == POLICY_RUNNING ? next.n_running
                      : d.mode == POLICY_OFF   ? next.n_off
                                               : next.n_paused[d.reason],
                      before + d.transition);
                CHECK(c->name, "cores only when running", d.mode == POLICY_RUNNING, d.cores > 0);
                CHECK(c->name, "reason only when paused", d.mode == POLICY_PAUSED,
                      d.reason != POLICY_REASON_NONE);
        }
        print_message("%zu policy cases, %d failures\n", sizeof(cases) / sizeof(cases[0]), failed);
        assert_int_equal(failed, 0);
}

/* ---- sequences ---- */

static const policy_knobs balanced = KNOBS();

/* Fresh state, 1 s samples at 90 % idle: paused until 27 s (90 % of 30) are observed. */
static void test_window_fills(void **unused) {
        policy_state s = {};
        int started_at = -1, transitions = 0;

        for (int t = 1; t <= 40; t++) {
                policy_input in = IN(.monotonic_s = t);
                policy_decision d = policy_decide(&balanced, &in, &s, &s);

                transitions += d.transition;
                if (d.mode == POLICY_RUNNING && started_at < 0)
                        started_at = t;
                if (t < 27)
                        assert_int_equal(d.reason, POLICY_REASON_NOT_IDLE);
                else
                        assert_int_equal(d.mode, POLICY_RUNNING);
        }
        assert_int_equal(started_at, 27);
        assert_int_equal(transitions, 2); /* first decision, then the start */
        assert_int_equal(s.n_transitions, 2);
        assert_int_equal(s.n_paused[POLICY_REASON_NOT_IDLE], 1);
        assert_int_equal(s.n_running, 1);
        assert_true(s.since_s == 27.0);
}

/* A 600 s window with 1 s samples: more samples than slots, merged so the ring spans it. */
static void test_long_window(void **unused) {
        policy_knobs k = KNOBS(.idle_window_sec = 600);
        policy_state s = {};
        int started_at = -1;
        double cover;

        for (int t = 1; t <= 700; t++) {
                policy_input in = IN(.monotonic_s = t, IDLE(t <= 100 ? 0 : 80));
                policy_decision d = policy_decide(&k, &in, &s, &s);

                if (d.mode == POLICY_RUNNING && started_at < 0)
                        started_at = t;
        }
        assert_true(s.idle_n <= POLICY_IDLE_SLOTS);
        /* Merged slots are treated as uniform, so the one straddling t = 100 may leak up to
         * one slot (~19 s) of zeros into the window. */
        double slot = 600.0 / (POLICY_IDLE_SLOTS / 2) + 1;
        assert_float_equal(policy_idle_average(&s, 700, 600, &cover), 80.0, 80.0 * slot / 600);
        assert_true(policy_idle_average(&s, 700, 600, NULL) < 80.0 + 1e-9);
        assert_float_equal(cover, 600.0, 1e-9);
        /* The mean reaches 60 at t = 400 (300 of 400 s at 80), but a start also needs 90 %
         * of the 600 s observed: t = 540. */
        print_message("long window: started at %d s\n", started_at);
        assert_int_equal(started_at, 540);
}

/* Excess delay every second steps 4 → 3 → 2 → 1 → paused; then quiet periods bring one
 * core back each until the limit is gone. The caller follows every grant. */
static void test_brake_sequence(void **unused) {
        policy_knobs k = KNOBS(.max_cores = 4);
        policy_state s = {};
        policy_decision d;
        int granted = 0, t = 0;
        uint64_t interference_pauses;

        /* Warm up to running on 4 cores. */
        for (t = 1; t <= 30; t++) {
                policy_input in = IN(.monotonic_s = t, .cores_granted = granted);
                d = policy_decide(&k, &in, &s, &s);
                granted = d.cores;
        }
        assert_int_equal(d.mode, POLICY_RUNNING);
        assert_int_equal(granted, 4);

        static const int steps[] = { 3, 2, 1, 0 };
        for (size_t i = 0; i < 4; i++, t++) {
                policy_input in =
                        IN(.monotonic_s = t, .cores_granted = granted, INTERF_NS(40000000));
                d = policy_decide(&k, &in, &s, &s);
                granted = d.cores;
                assert_int_equal(d.cores, steps[i]);
                assert_int_equal(d.transition, steps[i] == 0);
                assert_int_equal(d.cores_changed, steps[i] != 0);
        }
        assert_int_equal(d.reason, POLICY_REASON_INTERFERENCE);
        assert_true(d.delay_ms_per_s == 40.0);
        assert_true(d.brake_ms_per_s == 8.0); /* 40 ms in a window started afresh */
        double last_excess = t - 1;
        interference_pauses = s.n_paused[POLICY_REASON_INTERFERENCE];
        assert_int_equal(interference_pauses, 1);

        /* Quiet: every POLICY_BRAKE_QUIET_SEC one more core. */
        int want = 0;
        for (; t <= last_excess + 5 * POLICY_BRAKE_QUIET_SEC + 1; t++) {
                policy_input in = IN(.monotonic_s = t, .cores_granted = granted);
                int periods = (int) ((t - last_excess) / POLICY_BRAKE_QUIET_SEC);

                d = policy_decide(&k, &in, &s, &s);
                granted = d.cores;
                want = MIN(periods, 4);
                assert_int_equal(d.cores, want);
                assert_int_equal(d.mode, want ? POLICY_RUNNING : POLICY_PAUSED);
        }
        assert_int_equal(granted, 4);
        assert_int_equal(s.brake_limit, 0);
        assert_false(s.brake_pause);
        assert_int_equal(s.n_paused[POLICY_REASON_INTERFERENCE], 1);
        assert_int_equal(s.n_running, 2);

        /* A relapse while recovering restarts the quiet timer. */
        s.brake_limit = 2;
        s.brake_last_s = t - POLICY_BRAKE_QUIET_SEC;
        {
                policy_input in = IN(.monotonic_s = t, .cores_granted = 2, INTERF_NS(30000000));
                d = policy_decide(&k, &in, &s, &s);
                assert_int_equal(d.cores, 1);
                assert_true(s.brake_last_s == t);
        }
}

/* The brake's input on a quiet 2-core VM with both cores harvested: 56 one-second samples
 * as measured (ms/s, "edged --progress" with the brake off, 2026-11-26). Tick-long waits of
 * other daemons reach 5-10 ms/s now and then: judged sample by sample the balanced limit
 * (5) tripped three times a minute (with the brake on: 3 pauses in 60 s); over the
 * window none of these does. A sustained 6 ms/s
 * still steps down, one core per full window. */
static void test_brake_window(void **unused) {
        static const double quiet[] = {
                0.0, 0.0, 1.8, 5.3, 3.8, 4.1, 6.2, 1.4, 3.2, 3.8,
                2.6, 3.0, 8.6, 0.0, 1.1, 3.2, 0.7, 0.1, 1.6, 1.1,
                0.1, 3.4, 1.1, 0.0, 1.3, 5.0, 0.0, 2.6, 5.8, 4.1,
                0.4, 0.0, 2.6, 10.1, 1.1, 0.4, 0.5, 4.2, 5.4, 0.4,
                3.6, 1.4, 4.2, 6.4, 1.3, 1.1, 2.9, 1.8, 2.9, 2.1,
                2.4, 3.1, 3.3, 3.3, 0.0, 3.2,
        };
        policy_knobs k = KNOBS(.max_cores = 2);
        policy_state s = {};
        policy_decision d;
        int granted = 0, t;

        for (t = 1; t <= 30; t++) {
                policy_input in = IN(.monotonic_s = t, .cores_granted = granted);
                d = policy_decide(&k, &in, &s, &s);
                granted = d.cores;
        }
        assert_int_equal(granted, 2);
        for (int rep = 0; rep < 1; rep++)
                for (size_t i = 0; i < sizeof(quiet) / sizeof(quiet[0]); i++, t++) {
                        policy_input in = IN(.monotonic_s = t, .cores_granted = granted,
                                             INTERF_NS(quiet[i] * 1e6));
                        d = policy_decide(&k, &in, &s, &s);
                        granted = d.cores;
                        assert_int_equal(granted, 2);
                        assert_true(d.brake_ms_per_s <= 5.0);
                }

        /* A sustained 6 ms/s: the first step once five such seconds fill the window... */
        int first = 0, second = 0;
        for (int n = 1; n <= 12; n++, t++) {
                policy_input in = IN(.monotonic_s = t, .cores_granted = granted, INTERF_NS(6000000));
                d = policy_decide(&k, &in, &s, &s);
                if (d.mode == POLICY_RUNNING && d.cores == 1 && !first)
                        first = n;
                if (d.mode == POLICY_PAUSED && !second)
                        second = n;
                granted = d.cores;
        }
        /* ...the quiet seconds before still count in that window, so not before n = 5 */
        assert_true(first >= 1 && first <= 5);
        /* ...and the next only after a whole new window at one core, not the next second */
        assert_int_equal(second, first + 5);
        assert_int_equal(d.reason, POLICY_REASON_INTERFERENCE);
}

/* Temperature bouncing around the hysteresis band: each real change is one transition. */
static void test_transitions_counted_once(void **unused) {
        static const struct {
                double temp;
                policy_mode mode;
                bool transition;
        } seq[] = {
                { 50, POLICY_RUNNING, true }, { 74, POLICY_RUNNING, false },
                { 75, POLICY_PAUSED, true },  { 80, POLICY_PAUSED, false },
                { 70, POLICY_PAUSED, false }, { 66, POLICY_PAUSED, false },
                { 65, POLICY_RUNNING, true }, { 70, POLICY_RUNNING, false },
                { 76, POLICY_PAUSED, true },  { 64, POLICY_RUNNING, true },
        };
        policy_state s = {};
        policy_knobs k = KNOBS(.idle_window_sec = 1);

        for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
                policy_input in = IN(.monotonic_s = 100 + (double) i,
                                     .sample.max_temp_c = seq[i].temp, .cores_granted = s.cores);
                policy_decision d = policy_decide(&k, &in, &s, &s);

                assert_int_equal(d.mode, seq[i].mode);
                assert_int_equal(d.transition, seq[i].transition);
                if (d.mode == POLICY_PAUSED)
                        assert_int_equal(d.reason, POLICY_REASON_HOT);
        }
        assert_int_equal(s.n_transitions, 5);
        assert_int_equal(s.n_running, 3);
        assert_int_equal(s.n_paused[POLICY_REASON_HOT], 2);
        assert_int_equal(s.n_off, 0);
}

/* prev and next may be one object, and prev is not touched when they are not. */
static void test_alias_and_const(void **unused) {
        policy_input in = IN();
        policy_state a = {}, b = {}, copy;
        policy_decision d1, d2;

        policy_idle_push(&a, 30, 999, 30, 90);
        b = a;
        copy = a;
        d1 = policy_decide(&balanced, &in, &a, &a);
        d2 = policy_decide(&balanced, &in, &b, &copy);
        /* field by field: a byte compare would also compare padding, which no one sets */
        assert_int_equal(d1.mode, d2.mode);
        assert_int_equal(d1.reason, d2.reason);
        assert_int_equal(d1.cores, d2.cores);
        assert_int_equal(d1.transition, d2.transition);
        assert_int_equal(d1.cores_changed, d2.cores_changed);
        assert_true(d1.idle_avg_pct == d2.idle_avg_pct);
        assert_true(d1.delay_ms_per_s == d2.delay_ms_per_s);
        assert_int_equal(a.started, copy.started);
        assert_int_equal(a.mode, copy.mode);
        assert_int_equal(a.reason, copy.reason);
        assert_int_equal(a.cores, copy.cores);
        assert_int_equal(a.n_transitions, copy.n_transitions);
        assert_int_equal(a.idle_n, copy.idle_n);
        assert_int_equal(a.idle_head, copy.idle_head);
        assert_true(a.since_s == copy.since_s);
        assert_int_equal(a.hot, copy.hot);
        assert_int_equal(a.brake_limit, copy.brake_limit);
        assert_int_equal(a.brake_pause, copy.brake_pause);
        assert_true(a.brake_last_s == copy.brake_last_s);
        assert_int_equal(a.n_running, copy.n_running);
        assert_memory_equal(a.idle, copy.idle, sizeof(a.idle)); /* doubles only: no padding */
        assert_memory_equal(a.n_paused, copy.n_paused, sizeof(a.n_paused));
        assert_int_equal(d1.mode, POLICY_RUNNING);
        assert_int_equal(b.started, false);
}

/* Clocks that jump: backwards starts the ring over, a long gap (suspend) empties the window. */
static void test_clock_jumps(void **unused) {
        policy_state s = {};
        double cover;

        for (int t = 1; t <= 30; t++)
                policy_idle_push(&s, 30, t, 1, 90);
        assert_float_equal(policy_idle_average(&s, 30, 30, &cover), 90, 1e-9);
        assert_float_equal(cover, 30, 1e-9);

        policy_idle_push(&s, 30, 5000, 1, 90);
        policy_idle_average(&s, 5000, 30, &cover);
        assert_float_equal(cover, 1, 1e-9);

        policy_idle_push(&s, 30, 10, 1, 40);
        assert_int_equal(s.idle_n, 1);
        assert_float_equal(policy_idle_average(&s, 10, 30, &cover), 40, 1e-9);

        /* Nonsense in is clamped or ignored, never a NaN out. */
        policy_idle_push(&s, 30, 11, 0, 90);
        policy_idle_push(&s, 30, 11, -1, 90);
        assert_int_equal(s.idle_n, 1);
        policy_idle_push(&s, 30, 11, 1, 250);
        assert_float_equal(policy_idle_average(&s, 11, 30, &cover), 70, 1e-9);

        policy_state empty = {};
        assert_float_equal(policy_idle_average(&empty, 11, 30, &cover), 0, 0);
        assert_float_equal(cover, 0, 0);
}

/* Hand-computed: 100 other wakeups waited 2 ms in all (20 us each); 10 that found a harvester
 * waited 5.2 ms in all, of which 10 x 20 us would have happened anyway: 5.0 ms over 0.5 s is
 * 10 ms/s. */
static void test_excess_delay(void **unused) {
        sensors_sample_t smp = { .interval_s = 0.5,
                                 .latency_count = 110,
                                 .latency_sum_ns = 7200000,
                                 .interference_count = 10,
                                 .interference_sum_ns = 5200000 };
        assert_float_equal(policy_excess_delay_ms(&smp), 10.0, 1e-9);
        /* waits no longer than elsewhere: nothing is edged's doing */
        smp.interference_sum_ns = 150000;
        smp.latency_sum_ns = 2150000;
        assert_float_equal(policy_excess_delay_ms(&smp), 0.0, 0);
        /* no other wakeups to compare with: every wait counts */
        smp = (sensors_sample_t) { .interval_s = 1, .latency_count = 4, .latency_sum_ns = 3000000,
                                   .interference_count = 4, .interference_sum_ns = 3000000 };
        assert_float_equal(policy_excess_delay_ms(&smp), 3.0, 1e-9);
        smp.interval_s = 0;
        assert_float_equal(policy_excess_delay_ms(&smp), 0.0, 0);
}

static void test_helpers(void **unused) {
        static const char *const names[] = { "none",         "not-idle",    "hot",
                                             "on-battery",   "low-battery", "outside-hours",
                                             "interference", "user-paused", "no-data",
                                             "no-task",      "error",       "disk-full" };
        policy_knobs k = KNOBS();

        assert_int_equal(sizeof(names) / sizeof(names[0]), _POLICY_REASON_MAX);
        for (int r = 0; r < _POLICY_REASON_MAX; r++)
                assert_string_equal(policy_reason_name(r), names[r]);
        assert_null(policy_reason_name(_POLICY_REASON_MAX));
        assert_null(policy_reason_name((policy_reason) -1));
        assert_string_equal(policy_mode_name(POLICY_OFF), "off");
        assert_string_equal(policy_mode_name(POLICY_PAUSED), "paused");
        assert_string_equal(policy_mode_name(POLICY_RUNNING), "running");
        assert_null(policy_mode_name(_POLICY_MODE_MAX));

        assert_int_equal(policy_idle_cores(8, 0), 1);
        assert_int_equal(policy_idle_cores(8, 12.5), 1);
        assert_int_equal(policy_idle_cores(8, 21.8), 1); /* 1.744 cores free */
        assert_int_equal(policy_idle_cores(8, 21.9), 2); /* 1.752: the second is 75 % free */
        assert_int_equal(policy_idle_cores(8, 25), 2);
        assert_int_equal(policy_idle_cores(2, 99), 2); /* a quiet 2-core laptop */
        assert_int_equal(policy_idle_cores(2, 87), 1);
        assert_int_equal(policy_idle_cores(2, 88), 2); /* 0.2 cores of foreground */
        assert_int_equal(policy_idle_cores(2, 96), 2);
        assert_int_equal(policy_idle_cores(8, 150), 8);
        assert_int_equal(policy_idle_cores(0, 100), 1);
        assert_int_equal(policy_idle_cores(3, 100.0 * 2 / 3), 2);
        assert_int_equal(policy_idle_cores(10, 70), 7);
        /* 5 of 19 CPUs as the sensors compute it: 19 x 26.315...% / 100 is 4.999... */
        assert_int_equal(policy_idle_cores(19, 100.0 * 5 / 19), 5);
        assert_int_equal(policy_idle_cores(22, 100.0 * 17 / 22), 17);
        assert_int_equal(policy_idle_cores(8, NAN), 1);

        /* Every minute of the week against a brute-force reading of one overnight window. */
        k.n_active_windows = 1;
        k.active[0] =
                (active_window){ .days = FRI | SUN, .start_min = HM(22, 0), .end_min = HM(6, 0) };
        for (int wd = 0; wd < 7; wd++)
                for (int m = 0; m < 24 * 60; m++) {
                        int y = (wd + 6) % 7;
                        bool want = ((wd == 4 || wd == 6) && m >= HM(22, 0)) ||
                                    ((y == 4 || y == 6) && m < HM(6, 0));
                        assert_int_equal(policy_in_active_hours(&k, wd, m), want);
                }
        assert_false(policy_in_active_hours(&k, 7, 0));
        assert_false(policy_in_active_hours(&k, 5, -1));
        assert_false(policy_in_active_hours(&k, 5, 24 * 60));
        k.n_active_windows = 0;
        assert_true(policy_in_active_hours(&k, 3, 0));

        sensors_sample_t smp = {};
        assert_false(policy_on_battery(&smp));
        smp.n_batteries = 2;
        smp.have_ac_supply = true;
        assert_true(policy_on_battery(&smp));
        smp.ac_online = true;
        assert_false(policy_on_battery(&smp));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_window_fills),
                cmocka_unit_test(test_long_window),
                cmocka_unit_test(test_brake_sequence),
                cmocka_unit_test(test_brake_window),
                cmocka_unit_test(test_transitions_counted_once),
                cmocka_unit_test(test_alias_and_const),
                cmocka_unit_test(test_clock_jumps),
                cmocka_unit_test(test_helpers),
                cmocka_unit_test(test_excess_delay),
        };

        return test_run_group("test-policy", tests, NULL, NULL);
}
