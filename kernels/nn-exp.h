/* SPDX-License-Identifier: MIT */
#pragma once

/* One expf approximation for every kernel that needs it (nn.c's softmax, GELU and loss; the
 * sampler's attention), inline so that the loops calling it vectorise. */

#include <stdint.h>

/* Cephes-style expf: range reduction by ln 2, degree-6 polynomial, 2^n through the
 * exponent bits. Branch-free so that the loops calling it vectorise. */
static inline float nn_exp_fast(float x) {
        x = x > 88.3f ? 88.3f : x;
        x = x < -87.3f ? -87.3f : x;
        /* round to nearest by the 1.5*2^23 trick: rintf does not vectorise on baseline x86-64 */
        float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        float r = x - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        union {
                int32_t i;
                float f;
        } scale = { .i = ((int32_t) n + 127) << 23 };
        return p * scale.f;
}
