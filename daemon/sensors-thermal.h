/* SPDX-License-Identifier: MIT */
#pragma once

/* Thermal zones: <root>/sys/class/thermal/thermal_zoneN/{type,temp}. Only zones whose type
 * is on a list count (a laptop's wifi or NVMe zone says nothing about the CPU edged heats);
 * the reading is the hottest counted zone. Real zones misbehave: temp fails with ENODATA
 * or EIO (sensor asleep, firmware bug), holds garbage or an absurd value. Such zones are
 * skipped and counted, never fatal. */

#include <stdbool.h>
#include <stdint.h>

/* Valid readings, in millidegrees Celsius, inclusive; anything else is a broken sensor. */
#define SENSORS_TEMP_MIN_MILLICELSIUS (-40000)
#define SENSORS_TEMP_MAX_MILLICELSIUS 150000

/* The zone types that count by default, NULL-terminated: x86_pkg_temp, cpu-thermal,
 * cpu_thermal, soc_thermal, soc-thermal, k10temp, coretemp, acpitz, cpu. Entries of a type
 * list are fnmatch(3) patterns, so a plain name matches only itself and "cpu*" matches
 * every type that starts with "cpu". */
extern const char *const sensors_thermal_default_types[];

typedef struct {
        bool available;           /* <root>/sys/class/thermal exists */
        unsigned n_counted;       /* zones of a counted type with a valid reading */
        unsigned n_ignored;       /* zones whose type is not counted (temp not even read) */
        unsigned n_bad;           /* counted type (or unreadable type) but no valid reading */
        int64_t max_millicelsius; /* hottest counted zone; 0 if n_counted == 0 */
        double max_celsius;       /* the same in °C; NAN if n_counted == 0 */
        int hottest_zone;         /* N of its thermal_zoneN; -1 if none */
        char hottest_type[32];    /* its type; "" if none */
} sensors_thermal;

/* True if type matches one of the patterns (NULL: sensors_thermal_default_types). */
bool sensors_thermal_type_counted(const char *type, const char *const *types);

/* Parses the contents of a temp file: one integer in millidegrees, surrounding whitespace
 * allowed. -EINVAL for garbage or an empty file, -ERANGE outside the valid range above. */
int sensors_parse_thermal_temp(const char *text, int64_t *ret_millicelsius);

/* Reads every thermal_zone* below root (NULL: "/"), counting zones whose type matches types
 * (NULL: the defaults). A missing thermal class (containers, some VMs) gives
 * available = false and returns 0. Fails only if root or the class directory cannot be
 * opened for another reason, or out of memory (logged). */
int sensors_thermal_read(const char *root, const char *const *types, sensors_thermal *ret);
