/* SPDX-License-Identifier: MIT */
#pragma once

/* The policy knobs of DESIGN.md §5 and the daemon's own settings, as the configuration
 * layer fills them and the policy reads them. Plain data: no I/O here. */

#include <stdbool.h>
#include <stdint.h>

typedef enum {
        PROFILE_QUIET,
        PROFILE_BALANCED,
        PROFILE_PERFORMANCE,
        _PROFILE_MAX,
} policy_profile;

/* One time window of ActiveHours: days is a bit mask (bit 0 = Monday ... bit 6 = Sunday) of
 * the days the window STARTS on; start/end in minutes after midnight; end <= start means the
 * window runs overnight into the next day. */
typedef struct {
        uint8_t days;
        uint16_t start_min, end_min;
} active_window;

#define ACTIVE_WINDOWS_MAX 16

typedef struct {
        policy_profile profile;
        int min_idle_percent;        /* MinIdlePercent */
        int idle_window_sec;         /* IdleWindowSec */
        int max_cores;               /* MaxCores, 0 = all idle ones */
        int max_temperature_c;       /* MaxTemperatureC */
        int resume_temperature_c;    /* ResumeTemperatureC */
        bool require_ac_power;       /* RequireACPower */
        int min_battery_percent;     /* MinBatteryPercent */
        int max_foreground_delay_ms; /* MaxForegroundDelayMs, per second of wall time */
        int max_memory_mib;          /* MaxMemoryMiB */
        int n_active_windows;        /* ActiveHours; 0 windows = always */
        active_window active[ACTIVE_WINDOWS_MAX];
        bool pause_on_user_active;   /* PauseOnUserActive */
} policy_knobs;

/* Where a knob's value came from, for "edgectl policy show". */
typedef enum {
        KNOB_BUILTIN,
        KNOB_PROFILE,  /* from the Profile= preset */
        KNOB_FILE,     /* a configuration file: see file and line */
        KNOB_RUNTIME,  /* edgectl override (overrides.conf) */
        KNOB_FLEET,    /* fleet policy from the aggregator */
} knob_origin;
