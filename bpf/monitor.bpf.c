// SPDX-License-Identifier: MIT OR GPL-2.0-only
/* Scheduler monitor: per-CPU idle, foreground and harvester run time, how often a foreground
 * task preempted a harvester thread, and foreground run-queue latency (all, and the part that
 * waited behind a harvester thread). Modelled on libbpf-tools' runqlat: rodata config, tp_btf
 * programs with raw_tp twins that user space loads where tp_btf is missing.
 *
 * Latency is the time from becoming runnable (a wakeup, or a preemption, as runqlat counts
 * it) to running. Where the kernel keeps sched_info (CONFIG_SCHED_INFO, the usual case) it
 * already stamps that moment in task->sched_info.last_queued, so sched_switch alone does the
 * job. Otherwise sched_wakeup(_new) stamp the TID in an LRU hash and sched_switch looks it up.
 *
 * This runs on every context switch, so it stays small: one inlined array lookup, one clock
 * read and a few field loads per switch; a hash lookup only for tasks of the monitored process
 * (and, without sched_info, one LRU lookup when a foreground task is switched in). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "monitor-shared.h"

/* Set by user space before load; the verifier prunes on them. */
const volatile __u32 harvester_tgid = 0; /* harvesters are threads of this process */
/* When set, every thread of harvester_tgid but this one is a harvester, registered or not:
 * threads that come and go between two samples (BLAS workers, io_uring workers) are never
 * mistaken for foreground work waiting behind edged. */
const volatile __u32 keep_pid = 0;
const volatile bool track_latency = true;
const volatile bool use_sched_info = true; /* else the wakeup programs feed "wakeups" */

/* max_entries is set to the number of possible CPUs by user space. */
struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(map_flags, BPF_F_MMAPABLE);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct monitor_cpu);
} cpus SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, MONITOR_MAX_HARVESTERS);
        __type(key, __u32);
        __type(value, __u8);
} harvesters SEC(".maps");

/* Without sched_info: TID -> CLOCK_MONOTONIC when it became runnable, 0 once consumed.
 * Entries are reused in place rather than deleted (an update or delete costs far more than a
 * store through a lookup); the LRU evicts threads that are gone. */
struct {
        __uint(type, BPF_MAP_TYPE_LRU_HASH);
        __uint(max_entries, MONITOR_MAX_WAKEUPS);
        __type(key, __u32);
        __type(value, __u64);
} wakeups SEC(".maps");

/* Kernels before 5.14 call task_struct's state field "state". */
struct task_struct___pre514 {
        long state;
} __attribute__((preserve_access_index));

/* tp_btf programs get BTF-typed pointers and load fields directly; raw_tp ones must go
 * through bpf_probe_read_kernel. btf is a constant after inlining, so one branch is left. */
#define TASK_READ(btf, t, field) ((btf) ? (t)->field : BPF_CORE_READ(t, field))

#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *) &(x) = (v))
#define barrier() asm volatile("" ::: "memory")

static __always_inline long task_state(struct task_struct *t, bool btf) {
        struct task_struct___pre514 *o = (void *) t;

        if (bpf_core_field_exists(t->__state))
                return TASK_READ(btf, t, __state);
        return TASK_READ(btf, o, state);
}

static __always_inline int task_on_cpu(struct task_struct *t, bool btf) {
        if (bpf_core_field_exists(t->on_cpu))
                return TASK_READ(btf, t, on_cpu);
        return 0;
}

static __always_inline bool is_harvester(__u32 pid, __u32 tgid) {
        if (tgid != harvester_tgid)
                return false;
        if (keep_pid)
                return pid != keep_pid;
        return bpf_map_lookup_elem(&harvesters, &pid);
}

/* The daemon's event loop: its CPU time is foreground, but its waits are edged's own
 * business, not the person's, and must not feed the interference brake (they tripped it on
 * an idle machine: 14.7 ms/s right after training started). */
static __always_inline bool is_kept(__u32 pid, __u32 tgid) {
        return keep_pid && pid == keep_pid && tgid == harvester_tgid;
}

static __always_inline __u32 classify(struct task_struct *t, __u32 pid, bool btf) {
        if (pid == 0)
                return MONITOR_CLASS_IDLE;
        if (is_harvester(pid, TASK_READ(btf, t, tgid)))
                return MONITOR_CLASS_HARVESTER;
        return MONITOR_CLASS_FOREGROUND;
}

static __always_inline __u32 log2_u32(__u32 v) {
        __u32 r, shift;

        r = (v > 0xffff) << 4;
        v >>= r;
        shift = (v > 0xff) << 3;
        v >>= shift;
        r |= shift;
        shift = (v > 0xf) << 2;
        v >>= shift;
        r |= shift;
        shift = (v > 0x3) << 1;
        v >>= shift;
        r |= shift;
        r |= (v >> 1);
        return r;
}

static __always_inline __u32 hist_slot(__u64 ns) {
        __u32 hi = ns >> 32;
        __u32 slot = hi ? log2_u32(hi) + 32 : log2_u32(ns);

        return slot < MONITOR_HIST_SLOTS ? slot : MONITOR_HIST_SLOTS - 1;
}

/* Only this CPU writes c, with interrupts off: no atomics needed. */
static __always_inline void record_latency(struct monitor_cpu *c, __u64 delta, __u32 prev_cls) {
        __u32 slot = hist_slot(delta);

        c->lat[slot]++;
        c->lat_sum_ns += delta;
        if (prev_cls == MONITOR_CLASS_HARVESTER) {
                c->intf[slot]++;
                c->intf_sum_ns += delta;
        }
}

/* Without sched_info: remember when pid became runnable. */
static __always_inline void stamp(__u32 pid, __u64 now) {
        __u64 *ts = bpf_map_lookup_elem(&wakeups, &pid);

        if (ts)
                *ts = now;
        else
                bpf_map_update_elem(&wakeups, &pid, &now, BPF_ANY);
}

static __always_inline int on_wakeup(struct task_struct *p, bool btf) {
        __u32 pid = TASK_READ(btf, p, pid);

        if (!track_latency || use_sched_info || pid == 0)
                return 0;
        __u32 tgid = TASK_READ(btf, p, tgid);
        if (is_harvester(pid, tgid) || is_kept(pid, tgid))
                return 0;
        /* Woken while still on a CPU (it had not finished going to sleep): it never waits,
         * and a stamp left behind would be charged to its next, unrelated switch-in. */
        if (task_on_cpu(p, btf))
                return 0;
        stamp(pid, bpf_ktime_get_ns());
        return 0;
}

static __always_inline int on_switch(bool preempt, struct task_struct *prev,
                                     struct task_struct *next, bool btf) {
        __u32 cpu = bpf_get_smp_processor_id();
        struct monitor_cpu *c = bpf_map_lookup_elem(&cpus, &cpu);
        __u32 prev_pid, next_pid, prev_cls, next_cls;
        __u64 now, last, *ts;
        bool missed;

        if (!c)
                return 0;
        now = bpf_ktime_get_ns();
        last = c->last_ns;
        prev_pid = TASK_READ(btf, prev, pid);
        next_pid = TASK_READ(btf, next, pid);
        next_cls = classify(next, next_pid, btf);
        /* prev normally ran since the last switch, in the class it had then. If the switch
         * that put prev here was not reported, prev at least ran last: charge it the interval.
         * Before the first switch on this CPU nothing is known and nothing is charged. */
        missed = last && prev_pid != c->pid;
        prev_cls = missed ? classify(prev, prev_pid, btf) : c->cls;

        WRITE_ONCE(c->seq, c->seq + 1);
        barrier();
        if (last && prev_cls < MONITOR_N_CLASSES)
                c->ns[prev_cls] += now - last;
        c->last_ns = now;
        c->cls = next_cls;
        c->pid = next_pid;
        c->switches++;
        if (missed)
                c->missed++;
        if (prev_cls == MONITOR_CLASS_HARVESTER && next_cls == MONITOR_CLASS_FOREGROUND &&
            (preempt || task_state(prev, btf) == 0))
                c->preemptions++;
        barrier();
        WRITE_ONCE(c->seq, c->seq + 1);

        if (!track_latency)
                return 0;
        if (use_sched_info) {
                __u64 queued;
                __s64 delta;

                /* sched_info stamps in the scheduler's clock. prev's last_arrival is that
                 * clock at the switch we stamped "last" in ours (the idle task has none), so
                 * the two give this CPU's offset between the clocks. */
                if (last && !missed && prev_pid != 0) {
                        __u64 arrival = TASK_READ(btf, prev, sched_info.last_arrival);

                        if (arrival)
                                c->clock_off = (__s64) (last - arrival);
                }
                if (next_cls != MONITOR_CLASS_FOREGROUND || !c->clock_off ||
                    is_kept(next_pid, TASK_READ(btf, next, tgid)))
                        return 0;
                queued = TASK_READ(btf, next, sched_info.last_queued);
                if (!queued)
                        return 0;
                delta = (__s64) (now - queued) - c->clock_off;
                record_latency(c, delta > 0 ? (__u64) delta : 0, prev_cls);
                return 0;
        }

        /* A foreground task preempted is runnable again now, as sched_info would count it. */
        if (prev_cls == MONITOR_CLASS_FOREGROUND && (preempt || task_state(prev, btf) == 0) &&
            !is_kept(prev_pid, TASK_READ(btf, prev, tgid)))
                stamp(prev_pid, now);
        if (next_cls != MONITOR_CLASS_FOREGROUND)
                return 0;
        ts = bpf_map_lookup_elem(&wakeups, &next_pid);
        if (ts && *ts) {
                __u64 delta = now > *ts ? now - *ts : 0;

                *ts = 0;
                record_latency(c, delta, prev_cls);
        }
        return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(monitor_switch, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(preempt, prev, next, true);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(monitor_wakeup, struct task_struct *p) {
        return on_wakeup(p, true);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(monitor_wakeup_new, struct task_struct *p) {
        return on_wakeup(p, true);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(monitor_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(preempt, prev, next, false);
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(monitor_wakeup_raw, struct task_struct *p) {
        return on_wakeup(p, false);
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(monitor_wakeup_new_raw, struct task_struct *p) {
        return on_wakeup(p, false);
}

/* GPL-compatible: tracing programs may only use bpf_probe_read_kernel and attach to
 * tracepoints with a GPL-compatible licence. The project itself is MIT. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";
