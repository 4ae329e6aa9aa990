/* SPDX-License-Identifier: MIT */
#pragma once

#include <sched.h>

/* The BLAS the kernels run on: kernel choice, thread count, and a description for status
 * and benchmarks. */

/* OpenBLAS picks its CPU kernel when it is loaded, from OPENBLAS_CORETYPE or by detecting
 * the CPU. A value inherited from a login environment can pin a much slower kernel (e.g.
 * Haswell on an AVX-512 machine), so programs call this first thing in main(): with
 * EDGED_BLAS_CORETYPE set (the admin's explicit choice) that kernel is used; otherwise an
 * inherited OPENBLAS_CORETYPE is dropped so OpenBLAS detects the CPU itself. It also sets
 * OPENBLAS_THREAD_TIMEOUT (unless given) so BLAS threads sleep as soon as a call ends.
 * These need a re-exec, which happens at most once. Returns only if no re-exec was needed
 * or it failed. */
void blas_choose_kernel(char **argv);
/* Why the kernel is what it is, e.g. "detected by OpenBLAS; dropped inherited
 * OPENBLAS_CORETYPE=Haswell"; for logs and benchmark output. */
const char *blas_kernel_origin(void);

void blas_set_threads(int n);
/* Places the threads of a BLAS call or par_for() (call after blas_set_threads()). With
 * n_cpus >= 1 the calling thread goes to cpus[0] and worker j (of OpenBLAS and of the pool)
 * to cpus[j % n_cpus]: threads that compute at the same time then sit on different CPUs,
 * and the scheduler does not migrate them into a busy foreground's way. With n_cpus 0
 * they may all run anywhere in *anywhere. Returns 0 or the first -errno. */
int blas_place_threads(const int *cpus, int n_cpus, const cpu_set_t *anywhere);
int blas_get_threads(void);
/* e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64 (detected by OpenBLAS)"
 */
const char *blas_describe(void);
const char *blas_kernel(void);
