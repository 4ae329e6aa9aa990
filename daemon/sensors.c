/* SPDX-License-Identifier: MIT */
#include "sensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macros.h"
#include "monitor.h"
#include "sensors-power.h"
#include "sensors-proc.h"
#include "sensors-thermal.h"
#include "sysfs-read.h"

#define MAX_HARVESTERS 64

struct sensors {
        char *root;
        const char *const *thermal_types;
        monitor *monitor; /* NULL: /proc fallback */
        char why_not_bpf[256];

        pid_t harvesters[MAX_HARVESTERS];
        size_t n_harvesters;

        /* the previous sample's cumulative figures */
        uint64_t prev_ns;
        monitor_counters *prev_bpf;
        sensors_cpu_times prev_stat;
        uint64_t prev_harvester_ticks;
};

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

int sensors_parse_task_ticks(const char *text, uint64_t *ret) {
        /* fields after the command's closing parenthesis: state is field 3, utime 14, stime 15 */
        const char *p = strrchr(text, ')');
        uint64_t v[2];
        int field = 2, got = 0;

        if (!p)
                return -EBADMSG;
        for (p++; *p && got < 2;) {
                while (*p == ' ')
                        p++;
                if (!*p || *p == '\n')
                        break;
                field++;
                const char *end = p + strcspn(p, " \n");
                if (field == 14 || field == 15) {
                        int r = sysfs_parse_uint64_n(p, (size_t) (end - p), UINT64_MAX / 4, &v[got]);
                        if (r < 0)
                                return r;
                        got++;
                }
                p = end;
        }
        if (got < 2)
                return -EBADMSG;
        *ret = v[0] + v[1];
        return 0;
}

/* Ticks used by the registered harvester threads; threads that ended count no more. */
static uint64_t harvester_ticks(const sensors *s) {
        uint64_t total = 0;
        int root_fd;

        if (s->n_harvesters == 0 || sysfs_root_open(s->root, &root_fd) < 0)
                return 0;
        for (size_t i = 0; i < s->n_harvesters; i++) {
                char path[64], buf[1024];
                uint64_t ticks;

                snprintf(path, sizeof(path), "proc/%d/task/%d/stat", (int) getpid(),
                         (int) s->harvesters[i]);
                if (sysfs_read_at(root_fd, path, buf, sizeof(buf), NULL) >= 0 &&
                    sensors_parse_task_ticks(buf, &ticks) >= 0)
                        total += ticks;
        }
        close(root_fd);
        return total;
}

static int read_cpu_baseline(sensors *s) {
        if (s->monitor)
                return monitor_read(s->monitor, s->prev_bpf);

        _cleanup_(sensors_stat_done) sensors_stat st = { 0 };
        int r = sensors_stat_read(s->root, &st);
        if (r < 0)
                return r;
        s->prev_stat = st.all;
        s->prev_harvester_ticks = harvester_ticks(s);
        return 0;
}

int sensors_new(const sensors_opts *o, sensors **ret) {
        sensors *s = calloc(1, sizeof(*s));
        int r;

        if (!s)
                return -ENOMEM;
        s->root = strdup(o->root ? o->root : "/");
        s->prev_bpf = calloc(1, sizeof(*s->prev_bpf));
        if (!s->root || !s->prev_bpf) {
                sensors_free(s);
                return -ENOMEM;
        }
        s->thermal_types = o->thermal_types;

        if (o->no_bpf)
                snprintf(s->why_not_bpf, sizeof(s->why_not_bpf), "disabled by the caller");
        else if (strcmp(s->root, "/") != 0)
                /* the kernel's scheduler is not part of a fake tree */
                snprintf(s->why_not_bpf, sizeof(s->why_not_bpf), "reading a fake root (%s)", s->root);
        else if (monitor_open(&(monitor_opts) { .keep_tid = o->keep_tid }, &s->monitor,
                              s->why_not_bpf, sizeof(s->why_not_bpf)) < 0)
                s->monitor = NULL;
        if (!s->monitor)
                log_info("CPU figures from /proc/stat: the eBPF monitor is not in use (%s)",
                         s->why_not_bpf);

        r = read_cpu_baseline(s);
        if (r < 0) {
                sensors_free(s);
                return r;
        }
        s->prev_ns = now_ns();
        *ret = s;
        return 0;
}

sensors *sensors_free(sensors *s) {
        if (s) {
                monitor_close(s->monitor);
                free(s->prev_bpf);
                free(s->root);
                free(s);
        }
        return NULL;
}

int sensors_add_harvester(sensors *s, pid_t tid) {
        if (s->n_harvesters >= MAX_HARVESTERS)
                return -E2BIG;
        if (s->monitor) {
                int r = monitor_add_harvester(s->monitor, tid);
                if (r < 0)
                        return r;
        }
        s->harvesters[s->n_harvesters++] = tid;
        return 0;
}

int sensors_remove_harvester(sensors *s, pid_t tid) {
        for (size_t i = 0; i < s->n_harvesters; i++)
                if (s->harvesters[i] == tid) {
                        s->harvesters[i] = s->harvesters[--s->n_harvesters];
                        return s->monitor ? monitor_remove_harvester(s->monitor, tid) : 0;
                }
        return -ENOENT;
}

static bool tid_in(const pid_t *tids, size_t n, pid_t tid) {
        for (size_t i = 0; i < n; i++)
                if (tids[i] == tid)
                        return true;
        return false;
}

int sensors_set_harvesters(sensors *s, const pid_t *tids, size_t n) {
        int r = 0;

        for (size_t i = 0; i < s->n_harvesters;)
                if (!tid_in(tids, n, s->harvesters[i]))
                        (void) sensors_remove_harvester(s, s->harvesters[i]);
                else
                        i++;
        for (size_t i = 0; i < n && r >= 0; i++)
                if (!tid_in(s->harvesters, s->n_harvesters, tids[i]))
                        r = sensors_add_harvester(s, tids[i]);
        return r;
}

static double pct(uint64_t part, uint64_t whole) {
        return whole ? 100.0 * (double) part / (double) whole : 0.0;
}

static int sample_cpu_bpf(sensors *s, sensors_sample_t *out) {
        _cleanup_free_ monitor_counters *cur = malloc(sizeof(*cur));
        int r;

        if (!cur)
                return -ENOMEM;
        r = monitor_read(s->monitor, cur);
        if (r < 0)
                return r;
        const monitor_cpu_counters *a = &s->prev_bpf->total, *b = &cur->total;
        uint64_t idle = b->idle_ns - a->idle_ns, fg = b->foreground_ns - a->foreground_ns;
        uint64_t hv = b->harvester_ns - a->harvester_ns, all = idle + fg + hv;

        out->cpu_source = SENSORS_CPU_BPF;
        out->cpu_source_why = "";
        out->n_cpus = (int) cur->n_cpus;
        out->idle_pct = pct(idle, all);
        out->foreground_pct = pct(fg, all);
        out->harvester_pct = pct(hv, all);
        out->preemptions = b->preemptions - a->preemptions;
        for (int i = 0; i < SENSORS_HIST_SLOTS && i < MONITOR_HIST_SLOTS; i++) {
                out->latency_hist[i] = cur->latency.slots[i] - s->prev_bpf->latency.slots[i];
                out->interference_hist[i] =
                        cur->interference.slots[i] - s->prev_bpf->interference.slots[i];
        }
        out->latency_count = cur->latency.count - s->prev_bpf->latency.count;
        out->latency_sum_ns = cur->latency.sum_ns - s->prev_bpf->latency.sum_ns;
        out->interference_count = cur->interference.count - s->prev_bpf->interference.count;
        out->interference_sum_ns = cur->interference.sum_ns - s->prev_bpf->interference.sum_ns;
        memcpy(s->prev_bpf, cur, sizeof(*cur));
        return 0;
}

static int sample_cpu_procfs(sensors *s, sensors_sample_t *out) {
        _cleanup_(sensors_stat_done) sensors_stat st = { 0 };
        sensors_cpu_usage use;
        int r;

        r = sensors_stat_read(s->root, &st);
        if (r < 0)
                return r;
        out->cpu_source = SENSORS_CPU_PROCFS;
        out->cpu_source_why = s->why_not_bpf;
        out->n_cpus = (int) st.n_cpus;
        uint64_t hticks = harvester_ticks(s);
        uint64_t hdelta = hticks > s->prev_harvester_ticks ? hticks - s->prev_harvester_ticks : 0;
        r = sensors_cpu_usage_between(&s->prev_stat, &st.all, &use);
        if (r == -EAGAIN) {
                /* no tick elapsed: nothing measurable yet, keep the baseline */
                out->idle_pct = 100.0;
                return 0;
        }
        if (r < 0)
                return r;
        out->idle_pct = use.idle_pct;
        out->harvester_pct = MIN(pct(hdelta, use.ticks), use.busy_pct);
        out->foreground_pct = use.busy_pct - out->harvester_pct;
        s->prev_stat = st.all;
        s->prev_harvester_ticks = hticks;
        return 0;
}

int sensors_sample(sensors *s, sensors_sample_t *ret) {
        sensors_sample_t out = { 0 };
        sensors_thermal th;
        sensors_power pw;
        sensors_psi psi;
        sensors_meminfo mem;
        sensors_loadavg load;
        uint64_t t = now_ns();
        int r;

        out.interval_s = (double) (t - s->prev_ns) * 1e-9;
        r = s->monitor ? sample_cpu_bpf(s, &out) : sample_cpu_procfs(s, &out);
        if (r < 0)
                return r;
        s->prev_ns = t;

        /* the rest are optional on a given machine: absent means "not reported" */
        if (sensors_thermal_read(s->root, s->thermal_types, &th) >= 0) {
                out.have_temp = th.n_counted > 0;
                out.max_temp_c = out.have_temp ? th.max_celsius : 0.0;
                out.zones_counted = (int) th.n_counted;
                out.zones_bad = (int) th.n_bad;
        }
        if (sensors_power_read(s->root, &pw) >= 0) {
                out.have_ac_supply = pw.have_ac;
                out.ac_online = pw.ac_online;
                out.n_batteries = (int) pw.n_batteries;
                out.battery_pct = pw.n_batteries > 0 ? pw.battery_percent : 0.0;
                out.discharging = pw.any_discharging;
        }
        if (sensors_psi_read(s->root, &psi) >= 0 && psi.available) {
                out.have_psi = true;
                out.psi_cpu_some = psi.cpu.some.avg10;
                out.psi_memory_some = psi.memory.some.avg10;
                out.psi_memory_full = psi.memory.have_full ? psi.memory.full.avg10 : 0.0;
                out.psi_io_some = psi.io.some.avg10;
                out.psi_io_full = psi.io.have_full ? psi.io.full.avg10 : 0.0;
        }
        if (sensors_meminfo_read(s->root, &mem) >= 0) {
                out.mem_available_kib = mem.mem_available_kb;
                out.mem_total_kib = mem.mem_total_kb;
        }
        if (sensors_loadavg_read(s->root, &load) >= 0)
                out.load1 = load.load1;
        *ret = out;
        return 0;
}
