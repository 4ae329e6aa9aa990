/* SPDX-License-Identifier: MIT */
#include "sensors-power.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macros.h"
#include "sysfs-read.h"

#define SUPPLY_DIR "sys/class/power_supply"

static const char *const status_names[] = {
        [SENSORS_BATTERY_UNKNOWN] = "Unknown",
        [SENSORS_BATTERY_CHARGING] = "Charging",
        [SENSORS_BATTERY_DISCHARGING] = "Discharging",
        [SENSORS_BATTERY_NOT_CHARGING] = "Not charging",
        [SENSORS_BATTERY_FULL] = "Full",
};

sensors_battery_status sensors_battery_status_from_string(const char *s) {
        for (size_t i = 0; i < ARRAY_SIZE(status_names); i++)
                if (strcmp(s, status_names[i]) == 0)
                        return (sensors_battery_status) i;
        return SENSORS_BATTERY_UNKNOWN;
}

const char *sensors_battery_status_to_string(sensors_battery_status s) {
        return (size_t) s < ARRAY_SIZE(status_names) ? status_names[s] : "Unknown";
}

sensors_supply_kind sensors_supply_kind_from_type(const char *type) {
        if (strcmp(type, "Battery") == 0)
                return SENSORS_SUPPLY_BATTERY;
        /* Kernels before 4.19 put the USB charger flavour in type (USB_DCP, USB_C, ...). */
        if (strcmp(type, "Mains") == 0 || strcmp(type, "USB") == 0 || strncmp(type, "USB_", 4) == 0)
                return SENSORS_SUPPLY_AC;
        return SENSORS_SUPPLY_OTHER;
}

void sensors_power_combine(const sensors_supply *supplies, size_t n, sensors_power *ret) {
        sensors_power p = {
                .battery_percent = NAN,
        };
        unsigned n_cap = 0, n_charging = 0, n_full = 0, n_not_charging = 0;
        double sum_cap = 0, sum_weighted = 0, sum_weight = 0;
        bool all_weighted = true;

        for (size_t i = 0; i < n; i++) {
                const sensors_supply *s = &supplies[i];

                p.n_bad += s->n_bad;
                if (s->device_scope || s->kind == SENSORS_SUPPLY_OTHER ||
                    (s->kind == SENSORS_SUPPLY_BATTERY && !s->present)) {
                        p.n_ignored++;
                        continue;
                }
                if (s->kind == SENSORS_SUPPLY_AC) {
                        p.have_ac = true;
                        p.ac_online = p.ac_online || s->online;
                        continue;
                }

                p.n_batteries++;
                switch (s->status) {
                case SENSORS_BATTERY_DISCHARGING:
                        p.any_discharging = true;
                        break;
                case SENSORS_BATTERY_CHARGING:
                        n_charging++;
                        break;
                case SENSORS_BATTERY_FULL:
                        n_full++;
                        break;
                case SENSORS_BATTERY_NOT_CHARGING:
                        n_not_charging++;
                        break;
                default:
                        break;
                }
                if (!isfinite(s->capacity))
                        continue;
                n_cap++;
                sum_cap += s->capacity;
                sum_weighted += s->capacity * (double) s->energy_full;
                sum_weight += (double) s->energy_full;
                all_weighted = all_weighted && s->energy_full > 0;
        }

        if (n_cap > 0)
                p.battery_percent = all_weighted ? sum_weighted / sum_weight : sum_cap / n_cap;
        if (p.any_discharging)
                p.status = SENSORS_BATTERY_DISCHARGING;
        else if (n_charging > 0)
                p.status = SENSORS_BATTERY_CHARGING;
        else if (p.n_batteries > 0 && n_full == p.n_batteries)
                p.status = SENSORS_BATTERY_FULL;
        else if (n_not_charging > 0)
                p.status = SENSORS_BATTERY_NOT_CHARGING;
        else
                p.status = SENSORS_BATTERY_UNKNOWN;
        *ret = p;
}

bool sensors_power_on_battery(const sensors_power *p) {
        if (p->n_batteries == 0)
                return false;
        return p->have_ac ? !p->ac_online : p->any_discharging;
}

/* Reads NAME/attr; r is 0, -ENOENT (absent) or another error (counted as bad by callers). */
static int read_attr_string(int root_fd, const char *name, const char *attr, char *buf,
                            size_t size) {
        char path[512];

        snprintf(path, sizeof(path), SUPPLY_DIR "/%s/%s", name, attr);
        return sysfs_read_string_at(root_fd, path, buf, size);
}

static int read_attr_u64(int root_fd, const char *name, const char *attr, uint64_t max,
                         uint64_t *ret) {
        char buf[64];
        int r;

        r = read_attr_string(root_fd, name, attr, buf, sizeof(buf));
        if (r < 0)
                return r;
        return sysfs_parse_uint64(buf, max, ret);
}

/* now/full as a percentage, capped at 100 (now may exceed a worn battery's full). */
static int capacity_from_pair(int root_fd, const char *name, const char *now_attr,
                              const char *full_attr, double *ret) {
        uint64_t now, full;
        int r;

        r = read_attr_u64(root_fd, name, full_attr, UINT64_MAX / 2, &full);
        if (r < 0)
                return r;
        r = read_attr_u64(root_fd, name, now_attr, UINT64_MAX / 2, &now);
        if (r < 0)
                return r;
        if (full == 0)
                return -ERANGE;
        *ret = MIN(100.0, 100.0 * (double) now / (double) full);
        return 0;
}

/* Absent attributes leave defaults; garbage and read errors are counted in s->n_bad. */
static void read_battery(int root_fd, const char *name, sensors_supply *s) {
        char buf[64];
        uint64_t v;
        int r;

        r = read_attr_u64(root_fd, name, "present", 1, &v);
        if (r >= 0)
                s->present = v == 1;
        else if (r != -ENOENT)
                s->n_bad++;
        if (!s->present)
                return;

        r = read_attr_string(root_fd, name, "status", buf, sizeof(buf));
        if (r >= 0)
                s->status = sensors_battery_status_from_string(buf);
        else if (r != -ENOENT)
                s->n_bad++;

        r = read_attr_u64(root_fd, name, "energy_full", UINT64_MAX / 2, &v);
        if (r >= 0)
                s->energy_full = v;
        else if (r != -ENOENT)
                s->n_bad++;

        r = read_attr_u64(root_fd, name, "capacity", 100, &v);
        if (r >= 0) {
                s->capacity = (double) v;
                return;
        }
        if (r != -ENOENT)
                s->n_bad++;
        if (capacity_from_pair(root_fd, name, "energy_now", "energy_full", &s->capacity) < 0 &&
            capacity_from_pair(root_fd, name, "charge_now", "charge_full", &s->capacity) < 0)
                s->capacity = NAN;
}

/* Returns false if the supply has no readable type (then nothing else is known). */
static bool read_supply(int root_fd, const char *name, sensors_supply *s) {
        char buf[64];
        uint64_t v;
        int r;

        *s = (sensors_supply){
                .present = true,
                .capacity = NAN,
        };
        r = read_attr_string(root_fd, name, "type", buf, sizeof(buf));
        if (r < 0) {
                log_debug("power: %s has no readable type, skipping: %s", name, strerror(-r));
                return false;
        }
        s->kind = sensors_supply_kind_from_type(buf);

        /* Decide on scope before touching anything else: reading a wireless mouse's
         * capacity can mean a round trip to the mouse. */
        r = read_attr_string(root_fd, name, "scope", buf, sizeof(buf));
        if (r >= 0)
                s->device_scope = strcmp(buf, "Device") == 0;
        else if (r != -ENOENT)
                s->n_bad++;
        if (s->device_scope)
                return true;

        switch (s->kind) {
        case SENSORS_SUPPLY_AC:
                r = read_attr_u64(root_fd, name, "online", 2, &v);
                if (r >= 0)
                        s->online = v > 0;
                else {
                        log_debug("power: %s has no valid online: %s", name, strerror(-r));
                        s->n_bad++;
                }
                break;
        case SENSORS_SUPPLY_BATTERY:
                read_battery(root_fd, name, s);
                break;
        default:
                break;
        }
        return true;
}

static int supply_filter(const struct dirent *de) {
        return de->d_name[0] != '.';
}

int sensors_power_read(const char *root, sensors_power *ret) {
        _cleanup_close_ int root_fd = -1;
        _cleanup_free_ sensors_supply *supplies = NULL;
        struct dirent **list = NULL;
        sensors_power p;
        unsigned n_typeless = 0;
        size_t n_supplies = 0;
        char path[512];
        int n, r;

        r = sysfs_root_open(root, &root_fd);
        if (r < 0)
                return log_error_errno(r, "Failed to open root directory %s: %m",
                                       root ? root : "/");

        n = scandirat(root_fd, SUPPLY_DIR, &list, supply_filter, versionsort);
        if (n < 0) {
                r = -errno;
                if (r == -ENOENT || r == -ENOTDIR) {
                        sensors_power_combine(NULL, 0, ret);
                        return 0;
                }
                return log_error_errno(r, "Failed to list %s: %m",
                                       sysfs_path(root, SUPPLY_DIR, path, sizeof(path)));
        }

        supplies = calloc(MAX(n, 1), sizeof(sensors_supply));
        if (!supplies) {
                for (int i = 0; i < n; i++)
                        free(list[i]);
                free(list);
                return log_error_errno(ENOMEM, "Out of memory");
        }
        for (int i = 0; i < n; i++) {
                if (read_supply(root_fd, list[i]->d_name, &supplies[n_supplies]))
                        n_supplies++;
                else
                        n_typeless++;
                free(list[i]);
        }
        free(list);

        sensors_power_combine(supplies, n_supplies, &p);
        p.available = true;
        p.n_bad += n_typeless;
        *ret = p;
        return 0;
}
