/* SPDX-License-Identifier: MIT */
#include "blas.h"

#include <cblas.h>
#include <stdio.h>

void blas_set_threads(int n) {
        openblas_set_num_threads(n);
}

int blas_get_threads(void) {
        return openblas_get_num_threads();
}

const char *blas_kernel(void) {
        return openblas_get_corename();
}

const char *blas_describe(void) {
        static char buf[256];
        snprintf(buf, sizeof(buf), "%s, kernel %s", openblas_get_config(), openblas_get_corename());
        return buf;
}
