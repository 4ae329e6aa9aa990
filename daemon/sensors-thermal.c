/* SPDX-License-Identifier: MIT */
#include "sensors-thermal.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macros.h"
#include "sysfs-read.h"

#define THERMAL_DIR "sys/class/thermal"
#define ZONE_PREFIX "thermal_zone"

/* CPU package and SoC sensors by their usual names: Intel (x86_pkg_temp, coretemp), AMD
 * (k10temp), ARM SoCs (cpu-thermal on the Raspberry Pi, soc_thermal on Rockchip and others,
 * both spellings exist), ACPI's generic zone, and plain "cpu" (some Allwinner and Amlogic
 * boards). acpitz is often near the CPU on laptops; it is the only zone many have. */
const char *const sensors_thermal_default_types[] = {
        "x86_pkg_temp", "cpu-thermal", "cpu_thermal", "soc_thermal", "soc-thermal",
        "k10temp",      "coretemp",    "acpitz",      "cpu",         NULL,
};

bool sensors_thermal_type_counted(const char *type, const char *const *types) {
        if (!types)
                types = sensors_thermal_default_types;
        for (; *types; types++)
                if (fnmatch(*types, type, 0) == 0)
                        return true;
        return false;
}

int sensors_parse_thermal_temp(const char *text, int64_t *ret_millicelsius) {
        int64_t v;
        int r;

        /* Parse wide first so an absurd but well-formed number is -ERANGE, not garbage. */
        r = sysfs_parse_int64(text, INT64_MIN, INT64_MAX, &v);
        if (r < 0)
                return r;
        if (v < SENSORS_TEMP_MIN_MILLICELSIUS || v > SENSORS_TEMP_MAX_MILLICELSIUS)
                return -ERANGE;
        *ret_millicelsius = v;
        return 0;
}

static int zone_filter(const struct dirent *de) {
        return strncmp(de->d_name, ZONE_PREFIX, strlen(ZONE_PREFIX)) == 0;
}

static void free_dirents(struct dirent **list, int n) {
        for (int i = 0; i < n; i++)
                free(list[i]);
        free(list);
}

int sensors_thermal_read(const char *root, const char *const *types, sensors_thermal *ret) {
        _cleanup_close_ int root_fd = -1;
        struct dirent **list = NULL;
        sensors_thermal t = {
                .max_celsius = NAN,
                .hottest_zone = -1,
        };
        char path[512];
        int n, r;

        r = sysfs_root_open(root, &root_fd);
        if (r < 0)
                return log_error_errno(r, "Failed to open root directory %s: %m",
                                       root ? root : "/");

        /* Version order (thermal_zone2 before thermal_zone10) so ties pick the same zone. */
        n = scandirat(root_fd, THERMAL_DIR, &list, zone_filter, versionsort);
        if (n < 0) {
                r = -errno;
                if (r == -ENOENT || r == -ENOTDIR) {
                        *ret = t;
                        return 0;
                }
                return log_error_errno(r, "Failed to list %s: %m",
                                       sysfs_path(root, THERMAL_DIR, path, sizeof(path)));
        }
        t.available = true;

        for (int i = 0; i < n; i++) {
                const char *name = list[i]->d_name;
                char type[32], text[64];
                int64_t mc, id;

                snprintf(path, sizeof(path), THERMAL_DIR "/%s/type", name);
                r = sysfs_read_string_at(root_fd, path, type, sizeof(type));
                if (r < 0) {
                        log_debug("thermal: %s has no readable type, skipping: %s", name,
                                  strerror(-r));
                        t.n_bad++;
                        continue;
                }
                /* Do not read zones we ignore: some wake their device or fail noisily. */
                if (!sensors_thermal_type_counted(type, types)) {
                        t.n_ignored++;
                        continue;
                }

                snprintf(path, sizeof(path), THERMAL_DIR "/%s/temp", name);
                r = sysfs_read_at(root_fd, path, text, sizeof(text), NULL);
                if (r >= 0)
                        r = sensors_parse_thermal_temp(text, &mc);
                if (r < 0) {
                        log_debug("thermal: %s (%s) has no valid temperature, skipping: %s", name,
                                  type, strerror(-r));
                        t.n_bad++;
                        continue;
                }

                if (t.n_counted == 0 || mc > t.max_millicelsius) {
                        t.max_millicelsius = mc;
                        t.hottest_zone =
                                sysfs_parse_int64(name + strlen(ZONE_PREFIX), 0, INT32_MAX, &id) < 0
                                        ? -1
                                        : (int) id;
                        snprintf(t.hottest_type, sizeof(t.hottest_type), "%s", type);
                }
                t.n_counted++;
        }
        free_dirents(list, n);

        if (t.n_counted > 0)
                t.max_celsius = (double) t.max_millicelsius / 1000.0;
        *ret = t;
        return 0;
}
