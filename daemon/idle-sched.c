/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>

#include "idle-sched.h"

int process_for_each_thread(pid_t keep, int (*fn)(pid_t tid, void *userdata), void *userdata) {
        DIR *d = opendir("/proc/self/task");
        struct dirent *de;
        int r = 0;

        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                char *end;
                long tid = strtol(de->d_name, &end, 10);
                if (end == de->d_name || *end || (keep > 0 && tid == keep))
                        continue;
                r = fn((pid_t) tid, userdata);
                if (r < 0)
                        break;
        }
        closedir(d);
        return r;
}

int idle_sched_thread(pid_t tid) {
        struct sched_param p = { 0 };
        return sched_setscheduler(tid, SCHED_IDLE, &p) < 0 ? -errno : 0;
}

static int idle_one(pid_t tid, void *userdata) {
        int r = idle_sched_thread(tid);
        /* a thread that ended between the listing and now is no longer ours */
        return r == -ESRCH ? 0 : r;
}

int idle_sched_all_threads(pid_t keep) {
        return process_for_each_thread(keep, idle_one, NULL);
}
