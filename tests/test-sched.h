/* SPDX-License-Identifier: MIT */
#pragma once

/* Clocks, CPU placement and scheduling for the tests that measure the scheduler
 * (test-monitor, test-sense): their measured threads run at SCHED_FIFO, so no SCHED_OTHER
 * work shares the CPU during a window, and two such tests take turns. */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(clockid_t clk) {
        struct timespec ts;

        clock_gettime(clk, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static inline void sleep_ns(uint64_t ns) {
        struct timespec ts = { .tv_sec = (time_t) (ns / 1000000000ULL),
                               .tv_nsec = (long) (ns % 1000000000ULL) };

        nanosleep(&ts, NULL);
}

/* For the calling thread only; -errno. */
static inline int pin_self(int cpu) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        return sched_setaffinity(0, sizeof(set), &set) < 0 ? -errno : 0;
}

static inline int set_sched(int policy, int prio) {
        struct sched_param sp = { .sched_priority = prio };

        return sched_setscheduler(0, policy, &sp) < 0 ? -errno : 0;
}

static inline int pin_and_sched(int cpu, int policy, int prio) {
        int r = pin_self(cpu);

        return r < 0 ? r : set_sched(policy, prio);
}

static inline void *test_sched_exit_at_once(void *arg) {
        return arg;
}

/* Makes the calling thread's latest switch-in one from a thread of ours. Here the kernel does
 * not report every switch (monitor_counters.missed_switches: the sandbox's own threads leave
 * the CPU unseen), and until the next reported one the monitor charges the CPU to the task it
 * saw last. A thread created here inherits the caller's SCHED_FIFO priority and CPU, so
 * joining it switches to it and back, and nothing else runs between. */
static inline int handoff(void) {
        pthread_t th;
        int r = pthread_create(&th, NULL, test_sched_exit_at_once, NULL);

        return r ? -r : -pthread_join(th, NULL);
}

/* test-monitor's and test-sense's SCHED_FIFO threads would share a CPU if both ran at once:
 * they take turns. The lock is held until exit. */
static inline void wait_for_other_runs(void) {
        int fd = open("/tmp/edged-test-monitor.lock", O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                      0666);

        if (fd >= 0 && flock(fd, LOCK_EX) < 0)
                close(fd);
}
