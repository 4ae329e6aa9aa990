/* SPDX-License-Identifier: MIT */
#pragma once

/* The CPU time of a process and every thread it ever had, ended ones included, from a cgroup
 * of its own: cgroup v2 cpu.stat usage_usec, or v1 cpuacct.usage (ns). Per-thread
 * schedstat loses the time of threads that end inside a window, and edged's trainer starts
 * and stops worker threads when its core grant changes. Header-only, for bench/harvest.c. */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct {
        char dir[PATH_MAX - 32];
        bool v2; /* usage from cpu.stat (us); else cpuacct.usage (ns) */
} cgroup_cpu;

/* Creates a cgroup named name under the v2 hierarchy or v1's cpuacct one. -errno if neither
 * is there or writable (not root); then callers fall back to per-thread figures. */
static inline int cgroup_cpu_create(cgroup_cpu *cg, const char *name) {
        static const struct {
                const char *root, *probe;
                bool v2;
        } where[] = {
                { "/sys/fs/cgroup", "cgroup.controllers", true },
                { "/sys/fs/cgroup/unified", "cgroup.controllers", true },
                { "/sys/fs/cgroup/cpuacct", "cpuacct.usage", false },
        };
        int r = -ENOENT;

        for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
                char probe[PATH_MAX];
                snprintf(probe, sizeof(probe), "%s/%s", where[i].root, where[i].probe);
                if (access(probe, R_OK) < 0)
                        continue;
                snprintf(cg->dir, sizeof(cg->dir), "%s/%s", where[i].root, name);
                if (mkdir(cg->dir, 0755) < 0 && errno != EEXIST) {
                        r = -errno;
                        continue;
                }
                cg->v2 = where[i].v2;
                return 0;
        }
        cg->dir[0] = '\0';
        return r;
}

static inline int cgroup_cpu_write(const cgroup_cpu *cg, const char *file, const char *text) {
        char path[PATH_MAX];
        int fd, r = 0;

        snprintf(path, sizeof(path), "%s/%s", cg->dir, file);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (write(fd, text, strlen(text)) < 0)
                r = -errno;
        close(fd);
        return r;
}

/* Moves pid (all its threads) into the cgroup; what it starts later is born there. */
static inline int cgroup_cpu_join(const cgroup_cpu *cg, pid_t pid) {
        char text[32];

        if (!cg->dir[0])
                return -ENOENT;
        snprintf(text, sizeof(text), "%d\n", (int) pid);
        return cgroup_cpu_write(cg, "cgroup.procs", text);
}

/* CPU seconds used in the cgroup since it was made, or -1 when unknown. */
static inline double cgroup_cpu_usage_s(const cgroup_cpu *cg) {
        char path[PATH_MAX], line[128];
        unsigned long long v;
        double s = -1;
        FILE *f;

        if (!cg->dir[0])
                return -1;
        snprintf(path, sizeof(path), "%s/%s", cg->dir, cg->v2 ? "cpu.stat" : "cpuacct.usage");
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (s < 0 && fgets(line, sizeof(line), f))
                if (cg->v2 ? sscanf(line, "usage_usec %llu", &v) == 1 : sscanf(line, "%llu", &v) == 1)
                        s = (double) v * (cg->v2 ? 1e-6 : 1e-9);
        fclose(f);
        return s;
}

/* Moves whatever is left back to the root and removes the cgroup. */
static inline void cgroup_cpu_remove(cgroup_cpu *cg) {
        char path[PATH_MAX], parent[sizeof(cg->dir)];
        char *slash;
        FILE *f;

        if (!cg->dir[0])
                return;
        snprintf(path, sizeof(path), "%s/cgroup.procs", cg->dir);
        snprintf(parent, sizeof(parent), "%s", cg->dir);
        slash = strrchr(parent, '/');
        if (slash)
                *slash = '\0';
        f = fopen(path, "re");
        for (int pid; f && fscanf(f, "%d", &pid) == 1;) {
                cgroup_cpu up;
                snprintf(up.dir, sizeof(up.dir), "%s", parent);
                (void) cgroup_cpu_join(&up, pid);
        }
        if (f)
                fclose(f);
        (void) rmdir(cg->dir);
        cg->dir[0] = '\0';
}
