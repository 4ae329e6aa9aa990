/* SPDX-License-Identifier: MIT */
#pragma once

/* procfs sensors: pressure stall information (/proc/pressure/{cpu,memory,io}),
 * /proc/meminfo, /proc/loadavg and /proc/stat. Each has a pure parser (text → struct, no
 * I/O, no logging, for tests and fuzzers; text must be NUL-terminated) and a reader that
 * takes a root directory (NULL: "/"), logs once what went wrong naming the file, and
 * returns the negative errno.
 *
 * Parser errors: -EBADMSG malformed, -ERANGE a number out of range, -ENODATA a required
 * field missing. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- PSI ---- */

/* One line: "some avg10=0.12 avg60=0.05 avg300=0.01 total=12345". */
typedef struct {
        double avg10, avg60, avg300; /* percent of wall time some/all tasks were stalled */
        uint64_t total_us;           /* cumulative stall time */
} sensors_psi_line;

typedef struct {
        bool available; /* the file exists */
        sensors_psi_line some;
        bool have_full; /* cpu has no "full" line before Linux 5.13 (all zeros since) */
        sensors_psi_line full;
} sensors_psi_resource;

typedef struct {
        bool available; /* any of the three files exists (CONFIG_PSI on, not psi=0) */
        sensors_psi_resource cpu, memory, io;
} sensors_psi;

/* A "some" line is required, "full" optional; unknown keys are skipped, other lines
 * rejected. Sets available. */
int sensors_parse_psi(const char *text, sensors_psi_resource *ret);

/* Missing files (older kernel, CONFIG_PSI off, psi=0) give available = false, not an
 * error; a file that exists but does not parse is an error. */
int sensors_psi_read(const char *root, sensors_psi *ret);

/* ---- /proc/meminfo ---- */

typedef struct {
        uint64_t mem_total_kb;
        uint64_t mem_available_kb; /* the kernel's estimate of what can be allocated without
                                    * swapping (Linux >= 3.14) */
} sensors_meminfo;

/* Needs "MemTotal:" and "MemAvailable:" lines with a "kB" unit; other lines are skipped. */
int sensors_parse_meminfo(const char *text, sensors_meminfo *ret);
int sensors_meminfo_read(const char *root, sensors_meminfo *ret);

/* ---- /proc/loadavg ---- */

typedef struct {
        double load1, load5, load15;
        uint32_t n_runnable; /* scheduling entities running or runnable now */
        uint32_t n_threads;  /* all of them */
        uint32_t last_pid;
} sensors_loadavg;

/* Exactly "L1 L5 L15 RUNNABLE/TOTAL LASTPID". */
int sensors_parse_loadavg(const char *text, sensors_loadavg *ret);
int sensors_loadavg_read(const char *root, sensors_loadavg *ret);

/* ---- /proc/stat ---- */

/* Jiffies (USER_HZ) per state. guest and guest_nice are not kept: the kernel already
 * counts them in user and nice, so adding them would count guest time twice. */
typedef struct {
        uint64_t user, nice, system, idle, iowait, irq, softirq, steal;
} sensors_cpu_times;

typedef struct {
        uint32_t id; /* N of "cpuN" */
        sensors_cpu_times times;
} sensors_cpu_stat;

typedef struct {
        sensors_cpu_times all;  /* the "cpu" line: every CPU, offline ones included */
        sensors_cpu_stat *cpus; /* the "cpuN" lines, in file order: online CPUs only, so ids
                                 * can have holes */
        size_t n_cpus;
} sensors_stat;

/* Needs the "cpu" line and at least one "cpuN" line, with increasing N. Each needs at least
 * user nice system idle (missing later fields are 0: older kernels); fields past steal
 * are skipped. Other lines (intr, ctxt, ...) are skipped. Allocates ret->cpus: free with
 * sensors_stat_done(). On failure *ret is left empty (nothing to free). */
int sensors_parse_stat(const char *text, sensors_stat *ret);
int sensors_stat_read(const char *root, sensors_stat *ret);
void sensors_stat_done(sensors_stat *s);

/* Sum of all fields. */
uint64_t sensors_cpu_times_total(const sensors_cpu_times *t);

typedef struct {
        double idle_pct; /* idle + iowait */
        double busy_pct; /* everything else, steal included: 100 - idle_pct */
        uint64_t ticks;  /* jiffies elapsed in all */
} sensors_cpu_usage;

/* CPU use between two snapshots of the same CPU (or of "cpu" lines). A field that went
 * backwards (iowait can, on tickless kernels, and idle around CPU hotplug) counts as 0.
 * -EAGAIN if no tick elapsed: take the next snapshot later. */
int sensors_cpu_usage_between(const sensors_cpu_times *prev, const sensors_cpu_times *cur,
                              sensors_cpu_usage *ret);
