/* SPDX-License-Identifier: MIT */
#include "power-events.h"

#include <errno.h>
#include <stdlib.h>
#include <systemd/sd-device.h>

struct power_events {
        sd_device_monitor *monitor;
        power_event_fn fn;
        void *userdata;
};

static const char *action_name(sd_device *d) {
        static const char *const names[_SD_DEVICE_ACTION_MAX] = {
                [SD_DEVICE_ADD] = "add",       [SD_DEVICE_REMOVE] = "remove",
                [SD_DEVICE_CHANGE] = "change", [SD_DEVICE_MOVE] = "move",
                [SD_DEVICE_ONLINE] = "online", [SD_DEVICE_OFFLINE] = "offline",
                [SD_DEVICE_BIND] = "bind",     [SD_DEVICE_UNBIND] = "unbind",
        };
        sd_device_action_t a;

        if (sd_device_get_action(d, &a) < 0 || a < 0 || a >= _SD_DEVICE_ACTION_MAX)
                return "unknown";
        return names[a];
}

static int on_device(sd_device_monitor *m, sd_device *d, void *userdata) {
        power_events *p = userdata;
        const char *sysname = NULL;

        if (sd_device_get_sysname(d, &sysname) < 0)
                sysname = "?";
        p->fn(sysname, action_name(d), p->userdata);
        return 0;
}

int power_events_new(sd_event *e, power_event_fn fn, void *userdata, power_events **ret) {
        power_events *p = calloc(1, sizeof(*p));
        int r;

        if (!p)
                return -ENOMEM;
        p->fn = fn;
        p->userdata = userdata;
        r = sd_device_monitor_new(&p->monitor);
        if (r >= 0)
                r = sd_device_monitor_filter_add_match_subsystem_devtype(p->monitor, "power_supply",
                                                                         NULL);
        if (r >= 0)
                r = sd_device_monitor_attach_event(p->monitor, e);
        if (r >= 0)
                r = sd_device_monitor_set_description(p->monitor, "power-supply-events");
        if (r >= 0)
                r = sd_device_monitor_start(p->monitor, on_device, p);
        if (r < 0) {
                power_events_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

power_events *power_events_free(power_events *p) {
        if (p) {
                sd_device_monitor_unref(p->monitor);
                free(p);
        }
        return NULL;
}
