/* SPDX-License-Identifier: MIT */
/* sysfs and procfs text: every pure parser the sensors use, on the same input (they are
 * cheap, and text meant for one is good garbage for the others), plus the strict number
 * parsers over exact lengths. Checks the ranges the parsers promise. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-util.h"
#include "sensors-power.h"
#include "sensors-proc.h"
#include "sensors-thermal.h"
#include "sensors.h"
#include "sysfs-read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        fuzz_quiet();
        return 0;
}

static void check_psi_line(const sensors_psi_line *l) {
        if (!(l->avg10 >= 0) || !(l->avg60 >= 0) || !(l->avg300 >= 0))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *text = NULL, *copy = NULL;
        sensors_psi_resource psi;
        sensors_meminfo mi;
        sensors_loadavg la;
        sensors_stat st;
        int64_t i64, mc;
        uint64_t u64;
        double d;

        if (size > 256 * 1024)
                return -1;
        text = fuzz_strndup(data, size);

        if (sensors_parse_task_ticks(text, &u64) < 0)
                u64 = 0;
        if (sensors_parse_psi(text, &psi) >= 0) {
                check_psi_line(&psi.some);
                if (psi.have_full)
                        check_psi_line(&psi.full);
        }
        (void) sensors_parse_meminfo(text, &mi);
        if (sensors_parse_loadavg(text, &la) >= 0 &&
            (!(la.load1 >= 0) || !(la.load5 >= 0) || !(la.load15 >= 0)))
                abort();
        if (sensors_parse_stat(text, &st) >= 0) {
                sensors_cpu_usage u;
                for (size_t i = 0; i < st.n_cpus; i++) {
                        if (i > 0 && st.cpus[i].id <= st.cpus[i - 1].id)
                                abort();
                        (void) sensors_cpu_times_total(&st.cpus[i].times);
                        /* against the all-CPU line: any pair of snapshots must be safe */
                        if (sensors_cpu_usage_between(&st.cpus[i].times, &st.all, &u) >= 0 &&
                            (!(u.idle_pct >= 0 && u.idle_pct <= 100) || !isfinite(u.busy_pct)))
                                abort();
                }
                sensors_stat_done(&st);
        }
        if (sensors_parse_thermal_temp(text, &mc) >= 0 &&
            (mc < SENSORS_TEMP_MIN_MILLICELSIUS || mc > SENSORS_TEMP_MAX_MILLICELSIUS))
                abort();
        (void) sensors_battery_status_from_string(text);
        (void) sensors_supply_kind_from_type(text);
        (void) sensors_thermal_type_counted(text, NULL);

        /* the strict number parsers, over the exact bytes (no NUL to stop at) and as text */
        if (sysfs_parse_int64_n(text, strlen(text), -1000, 1000, &i64) >= 0 &&
            (i64 < -1000 || i64 > 1000))
                abort();
        (void) sysfs_parse_uint64_n(text, strlen(text), UINT64_MAX, &u64);
        if (sysfs_parse_decimal_n(text, strlen(text), 0, 100, &d) >= 0 && !(d >= 0 && d <= 100))
                abort();
        (void) sysfs_parse_int64(text, INT64_MIN, INT64_MAX, &i64);
        (void) sysfs_parse_uint64(text, 100, &u64);
        (void) sysfs_parse_decimal(text, -1e18, 1e18, &d);
        copy = strdup(text);
        if (!copy)
                abort();
        (void) sysfs_strip(copy);
        return 0;
}
