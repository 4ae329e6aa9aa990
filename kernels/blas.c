/* SPDX-License-Identifier: MIT */
#include "blas.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel.h"

#define REEXEC_MARK "EDGED_BLAS_REEXEC"

static char origin[160];

void blas_choose_kernel(char **argv) {
        const char *wanted = getenv("EDGED_BLAS_CORETYPE");
        const char *current = getenv("OPENBLAS_CORETYPE");
        const char *why = getenv(REEXEC_MARK);
        bool set_timeout = !getenv("OPENBLAS_THREAD_TIMEOUT");

        if (why) {
                snprintf(origin, sizeof(origin), "%s", why);
                unsetenv(REEXEC_MARK);
                return;
        }
        /* OpenBLAS's threads spin for ~2^28 cycles after each call by default, holding cores
         * the pool (and the machine's owner) could use; 2^4 makes them sleep at once. */
        if (set_timeout)
                setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);
        if (wanted && *wanted) {
                snprintf(origin, sizeof(origin), "EDGED_BLAS_CORETYPE=%s", wanted);
                if (current && strcmp(current, wanted) == 0 && !set_timeout)
                        return;
                setenv("OPENBLAS_CORETYPE", wanted, 1);
        } else if (current) {
                snprintf(origin, sizeof(origin),
                         "detected by OpenBLAS; dropped inherited OPENBLAS_CORETYPE=%s", current);
                unsetenv("OPENBLAS_CORETYPE");
        } else if (!set_timeout)
                return;
        setenv(REEXEC_MARK, origin, 1);
        execv("/proc/self/exe", argv);
        /* no /proc: run with the kernel we have, and say so */
        unsetenv(REEXEC_MARK);
        snprintf(origin, sizeof(origin), "inherited (re-exec failed)");
}

const char *blas_kernel_origin(void) {
        const char *env = getenv("OPENBLAS_CORETYPE");

        /* blas_choose_kernel was not called (tests, say): describe what OpenBLAS saw */
        if (!origin[0]) {
                if (env)
                        snprintf(origin, sizeof(origin),
                                 "OPENBLAS_CORETYPE=%s from the environment", env);
                else
                        snprintf(origin, sizeof(origin), "detected by OpenBLAS");
        }
        return origin;
}

/* One knob for all the engine's threads: BLAS's and the pool's between BLAS calls. */
void blas_set_threads(int n) {
        openblas_set_num_threads(n);
        par_set_threads(n);
}

int blas_place_threads(const int *cpus, int n_cpus, const cpu_set_t *anywhere) {
        int n_blas = openblas_get_num_threads(), n_pool = par_get_threads();
        int n = n_blas > n_pool ? n_blas : n_pool, ret = 0;

        for (int j = 0; j < n; j++) {
                cpu_set_t one;
                const cpu_set_t *set = anywhere;
                int r = 0;

                if (n_cpus > 0) {
                        CPU_ZERO(&one);
                        CPU_SET(cpus[j % n_cpus], &one);
                        set = &one;
                }
                if (j == 0)
                        r = -pthread_setaffinity_np(pthread_self(), sizeof(*set), set);
                else {
                        /* OpenBLAS numbers its workers from 0; the caller is its last index */
                        if (j < n_blas &&
                            openblas_setaffinity(j - 1, sizeof(*set), (cpu_set_t *) set) != 0)
                                r = -EINVAL;
                        if (j < n_pool && r == 0)
                                r = par_pin_worker(j, set);
                }
                if (r < 0 && ret == 0)
                        ret = r;
        }
        return ret;
}

int blas_get_threads(void) {
        return openblas_get_num_threads();
}

const char *blas_kernel(void) {
        return openblas_get_corename();
}

const char *blas_describe(void) {
        static char buf[384];
        /* the config string already names the kernel */
        snprintf(buf, sizeof(buf), "%s (%s)", openblas_get_config(), blas_kernel_origin());
        return buf;
}
