/* SPDX-License-Identifier: MIT */
#pragma once

/* The practical matmul ceiling of this machine: square cblas_sgemm at the current BLAS
 * thread count, best of several runs after a warm-up run. Benchmarks divide what they
 * achieve by this figure (MFU), measured in the same run so a different kernel choice or a
 * noisy neighbour shows up on both sides. */

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double sgemm_peak_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* GFLOPS of the fastest of 'reps' C = A·B products of n×n matrices; < 0 when out of memory. */
static inline double sgemm_peak_gflops(int n, int reps) {
        size_t nn = (size_t) n * (size_t) n;
        float *a = NULL, *b = NULL, *c = NULL;
        double best = 0.0;

        if (posix_memalign((void **) &a, 64, nn * sizeof(float)) != 0 ||
            posix_memalign((void **) &b, 64, nn * sizeof(float)) != 0 ||
            posix_memalign((void **) &c, 64, nn * sizeof(float)) != 0) {
                free(a);
                free(b);
                return -1.0;
        }
        for (size_t i = 0; i < nn; i++) {
                a[i] = (float) (i % 13) * 0.01f - 0.06f;
                b[i] = (float) (i % 7) * 0.02f - 0.06f;
        }
        memset(c, 0, nn * sizeof(float));
        for (int r = 0; r <= reps; r++) { /* run 0 warms caches and BLAS threads up */
                double t0 = sgemm_peak_now();
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                            0.0f, c, n);
                double dt = sgemm_peak_now() - t0;
                double gflops = 2.0 * (double) nn * (double) n / dt * 1e-9;
                if (r > 0 && gflops > best)
                        best = gflops;
        }
        free(a);
        free(b);
        free(c);
        return best;
}
