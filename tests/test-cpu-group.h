/* SPDX-License-Identifier: MIT */
#pragma once

/* A CPU cgroup of the test's own, for tests that need the daemons they start to make
 * progress on a machine that is busy with other work.
 *
 * edged's trainer threads are SCHED_IDLE: beside one busy loop per CPU they get almost
 * nothing, which is the product working, not a test result. The scheduler weighs a cgroup
 * as one entity against its siblings whatever the policies inside it, so a test process
 * moved into a group of its own (children inherit it) gets a normal share of the machine,
 * as a system service in its own unit would (edged.service itself uses CPUWeight=idle; the
 * tests that check edged yields to foreground work do not call this). Needs root and a
 * writable cgroup tree (v2, or v1's cpu controller); without them the test runs as before
 * and says so. The group is removed at exit; a group left by a killed test is empty and
 * inert. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char test_cpu_group_dir[256], test_cpu_group_parent[256];

static inline int test_cpu_group_write(const char *dir, const char *file, const char *text) {
        char path[320];
        int fd, r = 0;

        snprintf(path, sizeof(path), "%s/%s", dir, file);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (write(fd, text, strlen(text)) < 0)
                r = -errno;
        close(fd);
        return r;
}

static void test_cpu_group_leave(void) {
        char pid[32];

        if (!test_cpu_group_dir[0])
                return;
        snprintf(pid, sizeof(pid), "%d\n", (int) getpid());
        test_cpu_group_write(test_cpu_group_parent, "cgroup.procs", pid);
        rmdir(test_cpu_group_dir); /* EBUSY while a child daemon still lives in it */
        test_cpu_group_dir[0] = '\0';
}

/* Moves this process into <cpu hierarchy>/edged-test.<name>.<pid>. Returns 0, or -errno
 * after printing why it could not (the test goes on without it). */
static inline int test_cpu_group_enter(const char *name) {
        static const struct {
                const char *root, *probe;
        } where[] = {
                { "/sys/fs/cgroup", "cgroup.subtree_control" },
                { "/sys/fs/cgroup/cpu", "cpu.shares" },
        };
        char pid[32];
        int r = -ENOENT;

        if (geteuid() != 0) {
                printf("cpu group: not root, so no CPU cgroup of its own: under load the "
                       "daemons' SCHED_IDLE training may starve\n");
                return -EPERM;
        }
        snprintf(pid, sizeof(pid), "%d\n", (int) getpid());
        for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
                char probe[320];

                snprintf(probe, sizeof(probe), "%s/%s", where[i].root, where[i].probe);
                if (access(probe, W_OK) < 0)
                        continue;
                /* v2: the cpu controller must be on for the root's children */
                if (i == 0)
                        test_cpu_group_write(where[i].root, "cgroup.subtree_control", "+cpu");
                snprintf(test_cpu_group_dir, sizeof(test_cpu_group_dir), "%s/edged-test.%s.%d",
                         where[i].root, name, (int) getpid());
                snprintf(test_cpu_group_parent, sizeof(test_cpu_group_parent), "%s", where[i].root);
                if (mkdir(test_cpu_group_dir, 0755) < 0 && errno != EEXIST) {
                        r = -errno;
                        continue;
                }
                r = test_cpu_group_write(test_cpu_group_dir, "cgroup.procs", pid);
                if (r < 0) {
                        rmdir(test_cpu_group_dir);
                        continue;
                }
                atexit(test_cpu_group_leave);
                printf("cpu group: %s (a normal share of the CPUs however busy the machine)\n",
                       test_cpu_group_dir);
                return 0;
        }
        test_cpu_group_dir[0] = '\0';
        printf("cpu group: none (%s): under load the daemons' SCHED_IDLE training may starve\n",
               r == -ENOENT ? "no writable cgroup v2 tree or v1 cpu controller under /sys/fs/cgroup"
                            : strerror(-r));
        return r;
}
