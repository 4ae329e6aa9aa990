/* SPDX-License-Identifier: MIT */
#pragma once

/* One call that tells the policy what the machine is doing: CPU use by class (idle,
 * foreground, edged's harvester threads) from the eBPF monitor or, without it, from
 * /proc; the hottest counted thermal zone; mains and battery; pressure; memory; load.
 * Every figure is over the interval since the previous sample. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define SENSORS_HIST_SLOTS 32

typedef enum {
        SENSORS_CPU_BPF,
        SENSORS_CPU_PROCFS,
} sensors_cpu_source;

typedef struct {
        const char *root;                  /* "/" unless a test points at a fake tree */
        const char *const *thermal_types;  /* zone types that count; NULL: the defaults */
        bool no_bpf;                       /* force the /proc fallback */
        pid_t keep_tid;                    /* see monitor_opts.keep_tid; 0: registered only */
} sensors_opts;

typedef struct {
        double interval_s;

        sensors_cpu_source cpu_source;
        const char *cpu_source_why; /* why not BPF; "" when BPF is in use */
        int n_cpus;
        double idle_pct, foreground_pct, harvester_pct; /* of all CPU time */
        uint64_t preemptions; /* foreground preempting a harvester thread (BPF only) */
        /* log2 histograms (BPF only); slot i counts waits in [2^i, 2^(i+1)) nanoseconds */
        uint64_t latency_hist[SENSORS_HIST_SLOTS];
        uint64_t interference_hist[SENSORS_HIST_SLOTS];
        uint64_t latency_count, latency_sum_ns, interference_count, interference_sum_ns;

        bool have_temp;
        double max_temp_c;
        int zones_counted, zones_bad;

        bool have_ac_supply, ac_online;
        int n_batteries;
        double battery_pct;
        bool discharging;

        bool have_psi;
        double psi_cpu_some, psi_memory_some, psi_memory_full, psi_io_some, psi_io_full;

        uint64_t mem_available_kib, mem_total_kib;
        double load1;
} sensors_sample_t;

typedef struct sensors sensors;

/* Never fails for want of BPF: the fallback is chosen and its reason recorded. Fails only
 * for a root without /proc/stat or out of memory. */
int sensors_new(const sensors_opts *o, sensors **ret);
sensors *sensors_free(sensors *s);

/* Threads whose CPU time counts as harvested rather than foreground. */
int sensors_add_harvester(sensors *s, pid_t tid);
int sensors_remove_harvester(sensors *s, pid_t tid);
/* Makes the set exactly tids: threads come and go (BLAS workers, io_uring workers). */
int sensors_set_harvesters(sensors *s, const pid_t *tids, size_t n);

/* The first call measures from sensors_new(). */
int sensors_sample(sensors *s, sensors_sample_t *ret);

/* CPU time of one thread in clock ticks from the text of /proc/<pid>/task/<tid>/stat
 * (utime + stime); the command name may hold spaces and parentheses. */
int sensors_parse_task_ticks(const char *text, uint64_t *ret);
