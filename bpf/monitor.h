/* SPDX-License-Identifier: MIT */
/* The scheduler monitor's loader: opens, loads and attaches monitor.bpf.c, registers harvester
 * threads and reads the counters. Every function returns 0 or a negative errno. When the
 * monitor cannot run (no BTF, no CAP_BPF, verifier failure, forced off), monitor_open says why
 * in a human-readable string and the caller falls back to /proc/stat. */
#pragma once

#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "monitor-shared.h"

/* Per-CPU figures beyond this are summed into monitor_counters.total only. */
#define MONITOR_MAX_CPUS 256
#define MONITOR_MAX_PROGS 3

typedef enum {
        MONITOR_MODE_AUTO = 0, /* tp_btf, and raw_tp where that fails */
        MONITOR_MODE_TP_BTF,
        MONITOR_MODE_RAW_TP,
} monitor_mode;

/* Where run-queue latency comes from: the kernel's own sched_info stamps (CONFIG_SCHED_INFO;
 * only sched_switch is attached) or stamps taken by sched_wakeup/sched_wakeup_new programs.
 * Both measure from becoming runnable (woken, or preempted) to running, as runqlat does. */
typedef enum {
        MONITOR_LATENCY_AUTO = 0, /* sched_info, and the wakeup programs where that fails */
        MONITOR_LATENCY_SCHED_INFO,
        MONITOR_LATENCY_WAKEUP,
        MONITOR_LATENCY_OFF, /* no histograms: the cheapest hot path */
} monitor_latency;

typedef struct {
        pid_t tgid; /* process whose registered threads are harvesters; 0: the caller's */
        pid_t keep_tid; /* not 0: every thread of tgid but this one is a harvester, without
                         * registration (the daemon: all but its event loop's thread) */
        monitor_mode mode;
        monitor_latency latency;
        bool force_fail; /* fail with -ECANCELED, to test the fallback (also: environment
                          * EDGED_MONITOR_DISABLE=1) */
        bool verbose;    /* pass libbpf's messages to stderr (also: EDGED_MONITOR_VERBOSE=1) */
} monitor_opts;

/* Cumulative since monitor_open, including the interval in progress at the read. */
typedef struct {
        uint64_t idle_ns;       /* the idle task ran (includes iowait) */
        uint64_t foreground_ns; /* any task but a registered harvester thread */
        uint64_t harvester_ns;  /* registered harvester threads */
        uint64_t preemptions;   /* a foreground task replaced a still-runnable harvester thread */
        uint64_t switches;
        uint64_t missed_switches; /* the kernel did not report the switch away from the task
                                   * last switched in (seen in sandboxes that hide a task) */
        bool seen; /* a switch was seen on this CPU since open (else all zero: offline, or
                    * not in the opener's CPU affinity and never scheduled since) */
} monitor_cpu_counters;

/* Run-queue latency. Slot k counts latencies in [2^k, 2^(k+1)) ns; slot 0 also holds 0, the
 * last slot everything from 2^31 ns up. count and sum_ns are exact. */
typedef struct {
        uint64_t slots[MONITOR_HIST_SLOTS];
        uint64_t count;
        uint64_t sum_ns;
} monitor_hist;

typedef struct {
        uint64_t mono_ns;           /* CLOCK_MONOTONIC the in-progress intervals end at */
        unsigned n_cpus;            /* entries of cpu[] filled (possible CPUs, at most 256) */
        monitor_cpu_counters total; /* sum over all CPUs */
        monitor_cpu_counters cpu[MONITOR_MAX_CPUS];
        monitor_hist latency;      /* foreground tasks, runnable to running */
        monitor_hist interference; /* the part of latency where the task replaced a
                                    * harvester thread: the delay edged caused */
} monitor_counters;

/* Run time of the attached programs as the kernel counts it: zero unless BPF statistics are
 * on (bpf_enable_stats(BPF_STATS_RUN_TIME) or sysctl kernel.bpf_stats_enabled=1). */
typedef struct {
        char name[32];
        uint64_t run_cnt;
        uint64_t run_time_ns;
} monitor_prog_stat;

typedef struct monitor monitor;

/* opts may be NULL (defaults). On failure *ret is NULL and why (if not NULL) holds the reason,
 * e.g. "kernel has no BTF (...)", "no CAP_BPF (not root)", "verifier rejected
 * monitor_switch: ...". Not thread-safe against another monitor_open in the same process
 * (libbpf's print callback is global). */
int monitor_open(const monitor_opts *opts, monitor **ret, char *why, size_t why_len);
void monitor_close(monitor *m);

/* "tp_btf" or "raw_tp". */
const char *monitor_attach_mode(const monitor *m);
/* "sched_info", "wakeup" or "off". */
const char *monitor_latency_source(const monitor *m);
/* Why tp_btf or sched_info were not used where MONITOR_MODE_AUTO or MONITOR_LATENCY_AUTO fell
 * back, else NULL. */
const char *monitor_fallback_reason(const monitor *m);
unsigned monitor_n_cpus(const monitor *m);

/* tid must be a thread of the monitored process (-ESRCH otherwise). The class applies from the
 * thread's next switch-in. -E2BIG with MONITOR_MAX_HARVESTERS registered; removing an
 * unregistered tid is -ENOENT. */
int monitor_add_harvester(monitor *m, pid_t tid);
int monitor_remove_harvester(monitor *m, pid_t tid);

/* Never goes backwards between two reads of the same monitor: callers take deltas. Reads of
 * one monitor must not run concurrently (it keeps the last figures returned). */
int monitor_read(monitor *m, monitor_counters *ret);

/* Fills up to MONITOR_MAX_PROGS entries, one per loaded program (all are attached). */
int monitor_prog_stats(const monitor *m, monitor_prog_stat ret[MONITOR_MAX_PROGS], size_t *ret_n);

/* Percentile (0..100) of a histogram's slots, as the upper bound of the slot it falls in, in
 * ns; 0 for an empty histogram. */
uint64_t monitor_hist_percentile(const monitor_hist *h, double pct);
