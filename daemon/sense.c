/* SPDX-License-Identifier: MIT */
#include "sense.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "log.h"
#include "macros.h"
#include "power-events.h"
#include "signal-pipe.h"

typedef struct {
        const sense_opts *o;
        sensors *sensors;
        sd_event *event;
        long printed;
        int error;
} sense_state;

static const char *source_name(sensors_cpu_source s) {
        return s == SENSORS_CPU_BPF ? "bpf" : "procfs";
}

void sense_format_line(const sensors_sample_t *s, const char *trigger, char *buf, size_t size) {
        char temp[32], power[64], psi[96];

        if (s->have_temp)
                snprintf(temp, sizeof(temp), "%.1f°C", s->max_temp_c);
        else
                snprintf(temp, sizeof(temp), "n/a");
        if (s->n_batteries > 0)
                snprintf(power, sizeof(power), "AC %s, battery %.0f%%%s",
                         s->ac_online ? "on" : "off", s->battery_pct,
                         s->discharging ? " discharging" : "");
        else
                snprintf(power, sizeof(power), "%s, no battery",
                         s->have_ac_supply ? (s->ac_online ? "AC on" : "AC off") : "mains");
        if (s->have_psi)
                snprintf(psi, sizeof(psi), "psi cpu %.2f mem %.2f io %.2f", s->psi_cpu_some,
                         s->psi_memory_some, s->psi_io_some);
        else
                snprintf(psi, sizeof(psi), "psi n/a");
        snprintf(buf, size,
                 "%-6s cpu idle %5.1f%% fg %5.1f%% harvest %5.1f%% (%s) | temp %s | %s | %s | "
                 "mem %.1f GiB free | load %.2f",
                 trigger, s->idle_pct, s->foreground_pct, s->harvester_pct,
                 source_name(s->cpu_source), temp, power, psi,
                 (double) s->mem_available_kib / (1024.0 * 1024.0), s->load1);
}

static json_t *hist_json(const uint64_t *h) {
        json_t *a = json_array();
        for (int i = 0; a && i < SENSORS_HIST_SLOTS; i++)
                json_array_append_new(a, json_integer((json_int_t) h[i]));
        return a;
}

json_t *sense_sample_json(const sensors_sample_t *s, const char *trigger) {
        return json_pack("{s:s, s:f, s:{s:s, s:s, s:i, s:f, s:f, s:f, s:I, s:o, s:o}, "
                         "s:{s:b, s:f, s:i, s:i}, s:{s:b, s:b, s:i, s:f, s:b}, "
                         "s:{s:b, s:f, s:f, s:f, s:f, s:f}, s:{s:I, s:I}, s:f}",
                         "trigger", trigger, "interval_s", s->interval_s,
                         "cpu", "source", source_name(s->cpu_source), "why_not_bpf",
                         s->cpu_source_why ? s->cpu_source_why : "", "n_cpus", s->n_cpus,
                         "idle_pct", s->idle_pct, "foreground_pct", s->foreground_pct,
                         "harvester_pct", s->harvester_pct, "preemptions",
                         (json_int_t) s->preemptions, "latency_hist_log2_ns",
                         hist_json(s->latency_hist), "interference_hist_log2_ns",
                         hist_json(s->interference_hist),
                         "thermal", "available", s->have_temp, "max_c", s->max_temp_c,
                         "zones_counted", s->zones_counted, "zones_bad", s->zones_bad,
                         "power", "ac_supply", s->have_ac_supply, "ac_online", s->ac_online,
                         "batteries", s->n_batteries, "battery_pct", s->battery_pct,
                         "discharging", s->discharging,
                         "psi", "available", s->have_psi, "cpu_some", s->psi_cpu_some,
                         "memory_some", s->psi_memory_some, "memory_full", s->psi_memory_full,
                         "io_some", s->psi_io_some, "io_full", s->psi_io_full,
                         "memory", "available_kib", (json_int_t) s->mem_available_kib,
                         "total_kib", (json_int_t) s->mem_total_kib,
                         "load1", s->load1);
}

static void print_sample(sense_state *st, const char *trigger) {
        sensors_sample_t s;
        int r = sensors_sample(st->sensors, &s);

        if (r < 0) {
                st->error = log_error_errno(r, "sampling failed: %m");
                sd_event_exit(st->event, 1);
                return;
        }
        if (st->o->json) {
                json_t *j = sense_sample_json(&s, trigger);
                char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
                if (text)
                        printf("%s\n", text);
                free(text);
                json_decref(j);
        } else {
                char line[512];
                sense_format_line(&s, trigger, line, sizeof(line));
                printf("%s\n", line);
        }
        fflush(stdout);
        if (st->o->count > 0 && ++st->printed >= st->o->count)
                sd_event_exit(st->event, 0);
}

static int on_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        sense_state *st = userdata;

        print_sample(st, "timer");
        /* time sources are one-shot: re-arm for the next interval */
        int r = sd_event_source_set_time_relative(src, (uint64_t) st->o->interval_ms * 1000);
        return r < 0 ? r : sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
}

static void on_power(const char *sysname, const char *action, void *userdata) {
        sense_state *st = userdata;
        char trigger[64];

        /* an unplug must be seen now, not at the next tick */
        snprintf(trigger, sizeof(trigger), "uevent:%s:%s", sysname, action);
        print_sample(st, trigger);
}

static void on_signal(int sig, void *userdata) {
        sense_state *st = userdata;
        sd_event_exit(st->event, 0);
}

int sense_run(const sense_opts *o) {
        sensors_opts so = { .root = o->root, .no_bpf = o->no_bpf };
        sense_state st = { .o = o };
        power_events *pe = NULL;
        int r;

        r = sensors_new(&so, &st.sensors);
        if (r < 0)
                return log_error_errno(r, "%s: cannot read sensors: %m", o->root);
        r = sd_event_new(&st.event);
        if (r < 0)
                goto out;
        r = signal_pipe_attach(st.event, on_signal, &st);
        if (r < 0)
                goto out;
        r = sd_event_add_time_relative(st.event, NULL, CLOCK_MONOTONIC,
                                       (uint64_t) o->interval_ms * 1000, 0, on_timer, &st);
        if (r < 0)
                goto out;
        /* only meaningful for the real machine: a fake tree gets no uevents */
        if (strcmp(o->root, "/") == 0) {
                r = power_events_new(st.event, on_power, &st, &pe);
                if (r < 0)
                        log_warning("power supply events unavailable (%s); polling every %u ms",
                                    strerror(-r), o->interval_ms);
        }
        r = sd_event_loop(st.event);
        if (st.error < 0)
                r = st.error;
out:
        power_events_free(pe);
        signal_pipe_detach();
        sd_event_unref(st.event);
        sensors_free(st.sensors);
        return r < 0 ? r : 0;
}
