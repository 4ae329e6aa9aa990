/* SPDX-License-Identifier: MIT */
#pragma once

/* The BLAS the kernels run on: thread count and a description for status and benchmarks. */

void blas_set_threads(int n);
int blas_get_threads(void);
/* e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64, kernel Haswell" */
const char *blas_describe(void);
const char *blas_kernel(void);
