/* SPDX-License-Identifier: MIT */
/* Layout shared by monitor.bpf.c and its loader monitor.c. The includer provides __u32 and
 * __u64: vmlinux.h on the BPF side, <linux/types.h> in user space. */
#pragma once

/* Latency histograms: slot k counts latencies in [2^k, 2^(k+1)) ns; slot 0 also holds 0 ns
 * and the last slot everything from 2^31 ns (2.1 s) up. */
#define MONITOR_HIST_SLOTS 32
#define MONITOR_MAX_HARVESTERS 1024
#define MONITOR_MAX_WAKEUPS 16384

/* What a CPU runs: the idle task, any task that is not a registered harvester thread, or a
 * harvester thread (a TID in the harvesters map that belongs to the monitored process). */
#define MONITOR_CLASS_IDLE 0
#define MONITOR_CLASS_FOREGROUND 1
#define MONITOR_CLASS_HARVESTER 2
#define MONITOR_N_CLASSES 3

/* One element of the "cpus" array map per possible CPU, written only by sched_switch on that
 * CPU and read by user space through mmap. seq is odd while an update is in progress (a
 * seqlock), so a reader never pairs ns[] with a stale last_ns. The fields every switch writes
 * share the first cache line; the histograms are touched only when a latency is recorded. */
struct monitor_cpu {
        __u32 seq;
        __u32 cls;     /* MONITOR_CLASS_* of the task running since last_ns */
        __u64 last_ns; /* CLOCK_MONOTONIC of the last switch; 0 until the first one */
        __u64 ns[MONITOR_N_CLASSES];
        __u64 preemptions; /* a foreground task replaced a still-runnable harvester thread */
        __u64 switches;
        __u32 pid;         /* TID switched in at last_ns (0: the idle task) */
        __u32 missed;      /* switches whose prev was not the task last switched in */
        __u64 lat_sum_ns;  /* foreground run-queue latency, all */
        __u64 intf_sum_ns; /* the subset that replaced a harvester thread */
        __s64 clock_off;   /* CLOCK_MONOTONIC minus this CPU's scheduler clock; 0: unknown */
        __u64 lat[MONITOR_HIST_SLOTS];
        __u64 intf[MONITOR_HIST_SLOTS];
} __attribute__((aligned(64)));
