/* SPDX-License-Identifier: MIT */
#include "privileges.h"

#include <dirent.h>
#include <errno.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "idle-sched.h"

#define DROP_WAIT_NS (2 * 1000000000LL) /* for every other thread to run its handler */

/* Capabilities belong to a thread, not to the process: each one must drop its own. Only
 * raw system calls here, since it also runs in a signal handler. */
static int drop_own(void) {
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[2] = {};

        /* the bounding set needs CAP_SETPCAP to shrink; without it there is nothing in it
         * we could use anyway once permitted is empty */
        for (int cap = 0; cap <= 63; cap++)
                if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
                        (void) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
                return -errno;
        if (syscall(SYS_capset, &hdr, data) < 0)
                return -errno;
        return 0;
}

static atomic_int handled, failed;

static void on_drop_signal(int sig) {
        int saved = errno;

        (void) sig;
        if (drop_own() < 0)
                atomic_fetch_add(&failed, 1);
        atomic_fetch_add(&handled, 1);
        errno = saved;
}

static int signal_one(pid_t tid, void *userdata) {
        int *sent = userdata;

        if (syscall(SYS_tgkill, getpid(), tid, SIGRTMIN) < 0)
                return errno == ESRCH ? 0 : -errno; /* ESRCH: it has just ended */
        (*sent)++;
        return 0;
}

static int thread_capabilities(pid_t tid, void *userdata) {
        unsigned long long *any = userdata, v;
        char path[64], line[256];
        FILE *f;

        snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int) tid);
        f = fopen(path, "re");
        if (!f)
                return errno == ENOENT ? 0 : -errno;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "CapPrm: %llx", &v) == 1 || sscanf(line, "CapEff: %llx", &v) == 1 ||
                    sscanf(line, "CapAmb: %llx", &v) == 1)
                        *any |= v;
        fclose(f);
        return 0;
}

/* Threads a library started before main() (OpenBLAS does, at load) hold what the process
 * started with: each is sent a signal whose handler drops its own, the way glibc makes
 * setuid() apply to every thread. */
int privileges_drop_all(void) {
        struct sigaction sa = { .sa_handler = on_drop_signal }, old;
        struct timespec tick = { 0, 1000000 };
        unsigned long long left = 0;
        int r, sent = 0;

        r = drop_own();
        if (r < 0)
                return r;
        atomic_store(&handled, 0);
        atomic_store(&failed, 0);
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGRTMIN, &sa, &old) < 0)
                return -errno;
        r = process_for_each_thread(gettid(), signal_one, &sent);
        for (long long waited = 0; r >= 0 && atomic_load(&handled) < sent && waited < DROP_WAIT_NS;
             waited += tick.tv_nsec)
                nanosleep(&tick, NULL);
        (void) sigaction(SIGRTMIN, &old, NULL);
        if (r < 0)
                return r;
        if (atomic_load(&failed) > 0)
                return -EPERM;
        /* a thread that blocks the signal, or started meanwhile from one that had not
         * dropped yet, still has them: then refuse, rather than claim to have none */
        r = process_for_each_thread(0, thread_capabilities, &left);
        if (r < 0)
                return r;
        return left ? -EPERM : 0;
}

int privileges_effective(unsigned long long *ret) {
        char line[256];
        FILE *f = fopen("/proc/self/status", "re");
        int r = -ENOENT;

        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "CapEff: %llx", ret) == 1) {
                        r = 0;
                        break;
                }
        fclose(f);
        return r;
}
