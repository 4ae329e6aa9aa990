/* SPDX-License-Identifier: MIT */
/* The SIMD kernels must round exactly like the portable ones: no multiply-add may be fused
 * anywhere in this file (aarch64 and -march builds would otherwise fuse the portable loops). */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QUANT_AVX2 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define QUANT_NEON 1
#endif

#define LANES 8
#define BLOCK 32 /* columns per block: 4 steps of 8 lanes */

static bool force_portable;

bool quant_force_portable(bool on) {
        bool was = force_portable;
        force_portable = on;
        return was;
}

#if QUANT_AVX2
#include <cpuid.h>

static bool have_avx2(void) {
        static int cached = -1;
        if (cached < 0) {
                unsigned a, b, c = 0, d;
                __builtin_cpu_init();
                /* F16C by cpuid: clang 14's __builtin_cpu_supports does not know "f16c" */
                bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
                cached = __builtin_cpu_supports("avx2") && f16c;
        }
        return cached;
}
#endif

/* The one decision every kernel below dispatches on; the name reports it, so a test of the
 * name tests the dispatch. */
static bool use_simd(void) {
#if QUANT_AVX2
        return !force_portable && have_avx2();
#elif QUANT_NEON
        return !force_portable;
#else
        return false;
#endif
}

const char *quant_simd_name(void) {
        if (!use_simd())
                return "portable";
#if QUANT_AVX2
        return "avx2";
#else
        return "neon";
#endif
}

/* ---- binary16 ---- */

float quant_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t) (h & 0x8000) << 16, e = (h >> 10) & 0x1f, mant = h & 0x3ff;
        float f;

        if (e == 0)
                f = (float) mant * 0x1p-24f; /* zero and subnormals: exact */
        else if (e == 31)
                f = mant ? NAN : INFINITY;
        else {
                uint32_t bits = ((e + 112) << 23) | (mant << 13);
                memcpy(&f, &bits, sizeof(f));
        }
        return sign ? -f : f;
}

uint16_t quant_f16_from_f32_up(float f) {
        if (!(f > 0.0f))
                return f == 0.0f ? 0 : 0x7e00; /* only scales (>= 0) are converted */
        if (f < 0x1p-14f) {
                /* subnormal: units of 2^-24; 1024 units is the smallest normal's encoding */
                return (uint16_t) ceilf(f * 0x1p24f);
        }
        int e;
        float m = frexpf(f, &e); /* f = m * 2^e, m in [0.5, 1) */
        e -= 1;                  /* f = (2m) * 2^e, 2m in [1, 2) */
        if (e > 15)
                return 0x7c00;
        /* exact: 2m - 1 has at most 23 significant bits, scaled by a power of two */
        uint32_t mant = (uint32_t) ceilf((2.0f * m - 1.0f) * 1024.0f);
        uint32_t bits = ((uint32_t) (e + 15) << 10) + mant; /* mant == 1024 carries into e */
        return bits >= 0x7c00 ? 0x7c00 : (uint16_t) bits;
}

/* ---- formats ---- */

size_t quant_data_bytes(quant_kind kind, int rows, int cols) {
        size_t n = (size_t) rows * (size_t) cols;
        switch (kind) {
        case QUANT_F32:
                return n * sizeof(float);
        case QUANT_INT8:
                return n;
        case QUANT_INT4:
                return n / 2;
        }
        return 0;
}

size_t quant_scale_bytes(quant_kind kind, int rows, int cols) {
        switch (kind) {
        case QUANT_F32:
                return 0;
        case QUANT_INT8:
                return (size_t) rows * sizeof(float);
        case QUANT_INT4:
                return (size_t) rows * (size_t) (cols / QUANT_GROUP) * sizeof(uint16_t);
        }
        return 0;
}

size_t quant_matrix_bytes(const quant_matrix *m) {
        return quant_data_bytes(m->kind, m->rows, m->cols) +
               quant_scale_bytes(m->kind, m->rows, m->cols);
}

int quant_matrix_alloc(quant_matrix *ret, int rows, int cols, quant_kind kind) {
        quant_matrix m = { .kind = kind, .rows = rows, .cols = cols };

        if (rows < 1 || cols < BLOCK || cols % BLOCK != 0 || cols > QUANT_MAX_COLS ||
            (kind != QUANT_F32 && kind != QUANT_INT8 && kind != QUANT_INT4))
                return -EINVAL;
        m.data = calloc(1, quant_data_bytes(kind, rows, cols));
        if (kind == QUANT_INT8) {
                m.scale = calloc((size_t) rows, sizeof(float));
                m.rowsum = calloc((size_t) rows, sizeof(int32_t));
        }
        if (kind == QUANT_INT4)
                m.scale16 = calloc(quant_scale_bytes(kind, rows, cols), 1);
        if (!m.data || (kind == QUANT_INT8 && (!m.scale || !m.rowsum)) ||
            (kind == QUANT_INT4 && !m.scale16)) {
                quant_matrix_free(&m);
                return -ENOMEM;
        }
        *ret = m;
        return 0;
}

void quant_matrix_free(quant_matrix *m) {
        free(m->data);
        free(m->scale);
        free(m->scale16);
        free(m->rowsum);
        m->data = m->scale = NULL;
        m->scale16 = NULL;
        m->rowsum = NULL;
}

void quant_matrix_finish(quant_matrix *m) {
        if (m->kind != QUANT_INT8)
                return;
        for (int r = 0; r < m->rows; r++) {
                const int8_t *q = (const int8_t *) m->data + (size_t) r * m->cols;
                int32_t sum = 0;
                for (int j = 0; j < m->cols; j++)
                        sum += q[j];
                m->rowsum[r] = sum;
        }
}

static float max_abs(const float *w, int n) {
        float mx = 0.0f;
        for (int i = 0; i < n; i++)
                mx = fabsf(w[i]) > mx ? fabsf(w[i]) : mx;
        return mx;
}

/* Round half to even for |v| < 2^22 without a libm call (the sum is exact, then rounded to
 * an integer by the addition itself). */
static float round_even(float v) {
        return (v + 0x1.8p23f) - 0x1.8p23f;
}

/* round(w / scale) clamped to [-lim, lim]; the clamp only catches the last ulp. Inline
 * rounding rather than lroundf: the daemon quantizes a model per 'sample --quant' request. */
static int quantize_one(float w, float scale, int lim) {
        if (scale == 0.0f)
                return 0;
        float v = w / scale;
        v = v > (float) lim ? (float) lim : v < (float) -lim ? (float) -lim : v;
        return (int) round_even(v);
}

int quant_matrix_new(quant_matrix *ret, const float *w, int rows, int cols, quant_kind kind) {
        quant_matrix m;
        int r = quant_matrix_alloc(&m, rows, cols, kind);

        if (r < 0)
                return r;
        for (int i = 0; i < rows; i++) {
                const float *row = w + (size_t) i * cols;
                if (kind == QUANT_F32)
                        memcpy((float *) m.data + (size_t) i * cols, row, cols * sizeof(float));
                else if (kind == QUANT_INT8) {
                        int8_t *q = (int8_t *) m.data + (size_t) i * cols;
                        float scale = max_abs(row, cols) / 127.0f;
                        m.scale[i] = scale;
                        for (int j = 0; j < cols; j++)
                                q[j] = (int8_t) quantize_one(row[j], scale, 127);
                } else {
                        int groups = cols / QUANT_GROUP;
                        for (int g = 0; g < groups; g++) {
                                const float *gw = row + g * QUANT_GROUP;
                                uint8_t *q = (uint8_t *) m.data +
                                             ((size_t) i * groups + g) * (QUANT_GROUP / 2);
                                uint16_t h = quant_f16_from_f32_up(max_abs(gw, QUANT_GROUP) / 7.0f);
                                float scale = quant_f16_to_f32(h);
                                if (!isfinite(scale)) {
                                        quant_matrix_free(&m);
                                        return -ERANGE;
                                }
                                m.scale16[(size_t) i * groups + g] = h;
                                for (int j = 0; j < QUANT_GROUP / 2; j++) {
                                        int lo = quantize_one(gw[j], scale, 7) + 8;
                                        int hi = quantize_one(gw[j + QUANT_GROUP / 2], scale, 7) + 8;
                                        q[j] = (uint8_t) (lo | hi << 4);
                                }
                        }
                }
        }
        quant_matrix_finish(&m);
        *ret = m;
        return 0;
}

/* Columns [c0, c0 + n) of row r; c0 and n multiples of QUANT_GROUP. */
static void quant_matrix_cols(const quant_matrix *m, int r, int c0, int n, float *out) {
        size_t base = (size_t) r * m->cols + c0;

        if (m->kind == QUANT_F32)
                memcpy(out, (const float *) m->data + base, n * sizeof(float));
        else if (m->kind == QUANT_INT8) {
                const int8_t *q = (const int8_t *) m->data + base;
                for (int j = 0; j < n; j++)
                        out[j] = (float) q[j] * m->scale[r];
        } else {
                for (int g = 0; g < n / QUANT_GROUP; g++) {
                        const uint8_t *q = (const uint8_t *) m->data + base / 2 + g * QUANT_GROUP / 2;
                        float scale = quant_f16_to_f32(m->scale16[base / QUANT_GROUP + g]);
                        float *o = out + g * QUANT_GROUP;
                        for (int j = 0; j < QUANT_GROUP / 2; j++) {
                                o[j] = (float) ((q[j] & 0xf) - 8) * scale;
                                o[j + QUANT_GROUP / 2] = (float) ((q[j] >> 4) - 8) * scale;
                        }
                }
        }
}

void quant_matrix_row(const quant_matrix *m, int r, float *out) {
        quant_matrix_cols(m, r, 0, m->cols, out);
}

void quant_matrix_row_add(const quant_matrix *m, int r, float *out) {
        float row[QUANT_GROUP];

        /* a group at a time: no row-sized scratch */
        for (int c = 0; c < m->cols; c += QUANT_GROUP) {
                quant_matrix_cols(m, r, c, QUANT_GROUP, row);
                for (int j = 0; j < QUANT_GROUP; j++)
                        out[c + j] += row[j];
        }
}

void quant_matrix_dequantize(const quant_matrix *m, float *out) {
        for (int r = 0; r < m->rows; r++)
                quant_matrix_row(m, r, out + (size_t) r * m->cols);
}

float quant_matrix_bound(const quant_matrix *m, int r, int c) {
        if (m->kind == QUANT_INT8)
                return m->scale[r] / 2.0f;
        if (m->kind == QUANT_INT4)
                return quant_f16_to_f32(
                               m->scale16[(size_t) r * (m->cols / QUANT_GROUP) + c / QUANT_GROUP]) /
                       2.0f;
        return 0.0f;
}

/* ---- portable kernels: the definition of the arithmetic ---- */

static float reduce_lanes(const float *a) {
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static void matvec_f32_portable(const quant_matrix *m, const float *x, const float *bias,
                                float *out) {
        int blocks = m->cols / BLOCK;

        for (int r = 0; r < m->rows; r++) {
                const float *w = (const float *) m->data + (size_t) r * m->cols;
                float acc[LANES] = { 0 };
                for (int b = 0; b < blocks; b++, w += BLOCK) {
                        const float *xb = x + (size_t) b * BLOCK;
                        for (int l = 0; l < LANES; l++) {
                                float p0 = w[l] * xb[l], p1 = w[8 + l] * xb[8 + l];
                                float p2 = w[16 + l] * xb[16 + l], p3 = w[24 + l] * xb[24 + l];
                                acc[l] = acc[l] + ((p0 + p1) + (p2 + p3));
                        }
                }
                float y = reduce_lanes(acc);
                out[r] = bias ? y + bias[r] : y;
        }
}

/* Columns of lane l in a group: 2l, 2l + 1, 2l + 16, 2l + 17. */
static int lane_col(int l, int k) {
        return 2 * l + (k & 1) + (k >> 1) * 16;
}

/* One group's maximum |x|, with NaN ignored, as AVX2's maxps does. */
static float group_max(const float *x) {
        float mx = 0.0f;
        for (int j = 0; j < QUANT_GROUP; j++) {
                float a = fabsf(x[j]);
                mx = a > mx ? a : mx;
        }
        return mx;
}

/* Smaller maxima would overflow 127 / max; such a group is zero for the kernels. */
#define ACT_TINY 1e-30f

/* x * inv rounded half to even and clamped to [-lim, lim]; NaN becomes -lim, as maxps then
 * minps make it. */
static int act_code(float x, float inv, float lim) {
        float v = x * inv;
        v = v >= -lim ? v : -lim;
        v = v <= lim ? v : lim;
        return (int) round_even(v);
}

void quant_acts_set_portable(quant_acts *a, const float *x, int n, quant_kind kind) {
        a->kind = kind;
        a->n = n;
        if (kind == QUANT_INT8) {
                float mx = 0.0f, inv = 0.0f;
                for (int g = 0; g < n / QUANT_GROUP; g++) {
                        float m = group_max(x + g * QUANT_GROUP);
                        mx = m > mx ? m : mx;
                }
                a->scale[0] = 0.0f;
                if (mx >= ACT_TINY) {
                        inv = 64.0f / mx;
                        a->scale[0] = mx / 64.0f;
                }
                for (int j = 0; j < n; j++) {
                        int q = act_code(x[j], inv, 64.0f);
                        a->q8[j] = (int8_t) q;
                        a->u8[j] = (uint8_t) (q + 64);
                }
                return;
        }
        for (int g = 0; g < n / QUANT_GROUP; g++) {
                const float *xg = x + g * QUANT_GROUP;
                float mx = group_max(xg), inv = 0.0f;
                a->scale[g] = 0.0f;
                if (mx >= ACT_TINY) {
                        inv = 127.0f / mx;
                        a->scale[g] = mx / 127.0f;
                }
                for (int j = 0; j < QUANT_GROUP; j++) {
                        int q = act_code(xg[j], inv, 127.0f);
                        a->q16[g * QUANT_GROUP + j] = (int16_t) q;
                        a->q8[g * QUANT_GROUP + j] = (int8_t) q;
                }
                for (int l = 0; l < LANES; l++) {
                        int32_t sum = 0;
                        for (int k = 0; k < 4; k++)
                                sum += a->q16[g * QUANT_GROUP + lane_col(l, k)];
                        a->sum8[g][l] = 8 * sum;
                }
        }
}

/* int4 code of column c (0..31) of group g of row r. */
static int code4(const quant_matrix *m, int r, int g, int c) {
        const uint8_t *q = (const uint8_t *) m->data +
                           ((size_t) r * m->cols + (size_t) g * QUANT_GROUP) / 2;
        return (c < 16 ? q[c] & 0xf : q[c - 16] >> 4) - 8;
}

/* y = ((float) D * xs) * scale_r (+ bias), shared by every int8 kernel. */
static float int8_finish(const quant_matrix *m, const quant_acts *a, int r, int32_t dot,
                         const float *bias) {
        float y = ((float) dot * a->scale[0]) * m->scale[r];
        return bias ? y + bias[r] : y;
}

void quant_matvec_acts_portable(const quant_matrix *m, const quant_acts *a, const float *bias,
                                float *out) {
        int groups = m->cols / QUANT_GROUP;

        if (m->kind == QUANT_INT8) {
                for (int r = 0; r < m->rows; r++) {
                        const int8_t *q = (const int8_t *) m->data + (size_t) r * m->cols;
                        int32_t dot = 0;
                        for (int j = 0; j < m->cols; j++)
                                dot += q[j] * a->q8[j];
                        out[r] = int8_finish(m, a, r, dot, bias);
                }
                return;
        }
        for (int r = 0; r < m->rows; r++) {
                float acc[LANES] = { 0 };
                for (int g = 0; g < groups; g++) {
                        float d = quant_f16_to_f32(m->scale16[(size_t) r * groups + g]) *
                                  a->scale[g];
                        for (int l = 0; l < LANES; l++) {
                                int32_t i = 0;
                                for (int k = 0; k < 4; k++) {
                                        int c = lane_col(l, k);
                                        i += code4(m, r, g, c) * a->q16[g * QUANT_GROUP + c];
                                }
                                acc[l] = acc[l] + (float) i * d;
                        }
                }
                float y = reduce_lanes(acc);
                out[r] = bias ? y + bias[r] : y;
        }
}

void quant_matvec_portable(const quant_matrix *m, const float *x, const float *bias, float *out) {
        if (m->kind == QUANT_F32) {
                matvec_f32_portable(m, x, bias, out);
                return;
        }
        quant_acts a;
        quant_acts_set_portable(&a, x, m->cols, m->kind);
        quant_matvec_acts_portable(m, &a, bias, out);
}

/* ---- AVX2 ---- */

#if QUANT_AVX2
#define AVX2_FN __attribute__((target("avx2,f16c")))

AVX2_FN static inline __m256 avx2_block(const float *w, const float *xb) {
        __m256 p0 = _mm256_mul_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(xb));
        __m256 p1 = _mm256_mul_ps(_mm256_loadu_ps(w + 8), _mm256_loadu_ps(xb + 8));
        __m256 p2 = _mm256_mul_ps(_mm256_loadu_ps(w + 16), _mm256_loadu_ps(xb + 16));
        __m256 p3 = _mm256_mul_ps(_mm256_loadu_ps(w + 24), _mm256_loadu_ps(xb + 24));
        return _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3));
}

AVX2_FN static inline float avx2_reduce1(__m256 acc) {
        float a[LANES];
        _mm256_storeu_ps(a, acc);
        return reduce_lanes(a);
}

/* reduce_lanes of four accumulators at once: two rounds of hadd pair (a0+a1), (a2+a3), then
 * ((a0+a1)+(a2+a3)); the halves' sum adds ((a4+a5)+(a6+a7)) last, as reduce_lanes does. */
AVX2_FN static inline __m128 avx2_reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

AVX2_FN static void matvec_f32_avx2(const quant_matrix *m, const float *x, const float *bias,
                                    float *out) {
        int blocks = m->cols / BLOCK;

        for (int r = 0; r < m->rows; r++) {
                const float *w = (const float *) m->data + (size_t) r * m->cols;
                __m256 acc = _mm256_setzero_ps();
                for (int b = 0; b < blocks; b++, w += BLOCK)
                        acc = _mm256_add_ps(acc, avx2_block(w, x + b * BLOCK));
                float y = avx2_reduce1(acc);
                out[r] = bias ? y + bias[r] : y;
        }
}

/* max |x| over 32 floats, NaN ignored (maxps returns its second operand for a NaN). */
AVX2_FN static inline float avx2_group_max(const float *x) {
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++)
                mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absmask), mx);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        return _mm_cvtss_f32(m4);
}

/* Codes of 32 floats as int32 in column order, by act_code()'s arithmetic. */
AVX2_FN static inline void avx2_codes(const float *x, float inv, float lim, __m256i q[4]) {
        const __m256 lo = _mm256_set1_ps(-lim), hi = _mm256_set1_ps(lim);
        for (int k = 0; k < 4; k++) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), _mm256_set1_ps(inv));
                v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                q[k] = _mm256_cvtps_epi32(
                        _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
}

AVX2_FN static void acts_set_avx2(quant_acts *a, const float *x, int n, quant_kind kind) {
        const __m256i eight = _mm256_set1_epi16(8);
        __m256i q[4];

        a->kind = kind;
        a->n = n;
        if (kind == QUANT_INT8) {
                float mx = 0.0f, inv = 0.0f;
                for (int g = 0; g < n / QUANT_GROUP; g++) {
                        float m = avx2_group_max(x + g * QUANT_GROUP);
                        mx = m > mx ? m : mx;
                }
                a->scale[0] = 0.0f;
                if (mx >= ACT_TINY) {
                        inv = 64.0f / mx;
                        a->scale[0] = mx / 64.0f;
                }
                for (int g = 0; g < n / QUANT_GROUP; g++) {
                        avx2_codes(x + g * QUANT_GROUP, inv, 64.0f, q);
                        /* packs interleaves 128-bit halves; the permutes restore column order */
                        __m256i w0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8);
                        __m256i w1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xd8);
                        __m256i b = _mm256_permute4x64_epi64(_mm256_packs_epi16(w0, w1), 0xd8);
                        _mm256_storeu_si256((__m256i *) (a->q8 + g * QUANT_GROUP), b);
                        _mm256_storeu_si256((__m256i *) (a->u8 + g * QUANT_GROUP),
                                            _mm256_add_epi8(b, _mm256_set1_epi8(64)));
                }
                return;
        }
        for (int g = 0; g < n / QUANT_GROUP; g++) {
                const float *xg = x + g * QUANT_GROUP;
                float gmax = avx2_group_max(xg), inv = 0.0f;
                a->scale[g] = 0.0f;
                if (gmax >= ACT_TINY) {
                        inv = 127.0f / gmax;
                        a->scale[g] = gmax / 127.0f;
                }
                avx2_codes(xg, inv, 127.0f, q);
                __m256i w0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8);
                __m256i w1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xd8);
                _mm256_storeu_si256((__m256i *) (a->q16 + g * QUANT_GROUP), w0);
                _mm256_storeu_si256((__m256i *) (a->q16 + g * QUANT_GROUP + 16), w1);
                __m256i b8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(w0, w1), 0xd8);
                _mm256_storeu_si256((__m256i *) (a->q8 + g * QUANT_GROUP), b8);
                __m256i s8 = _mm256_add_epi32(_mm256_madd_epi16(w0, eight),
                                              _mm256_madd_epi16(w1, eight));
                _mm256_storeu_si256((__m256i *) a->sum8[g], s8);
        }
}

/* sum (xq + 64) * q over 32 columns, into eight int32 lanes: the unsigned codes times the
 * signed weights in one vpmaddubsw (never saturating, see quant.h), widened by vpmaddwd. */
AVX2_FN static inline __m256i dot_u8(__m256i u, const int8_t *w, __m256i ones) {
        return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *) w)),
                                 ones);
}

AVX2_FN static inline int32_t hsum_epi32(__m256i v) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        return _mm_cvtsi128_si32(s);
}

/* Four rows at a time share the activation loads and one reduction (integer: any order). */
AVX2_FN static void matvec_int8_avx2(const quant_matrix *m, const quant_acts *a,
                                     const float *bias, float *out) {
        const __m256i ones = _mm256_set1_epi16(1);
        const int8_t *w = m->data;
        size_t cols = (size_t) m->cols;
        int r = 0;

        for (; r + 4 <= m->rows; r += 4) {
                const int8_t *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
                __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
                for (size_t c = 0; c < cols; c += QUANT_GROUP) {
                        __m256i u = _mm256_loadu_si256((const __m256i *) (a->u8 + c));
                        acc0 = _mm256_add_epi32(acc0, dot_u8(u, w0 + c, ones));
                        acc1 = _mm256_add_epi32(acc1, dot_u8(u, w1 + c, ones));
                        acc2 = _mm256_add_epi32(acc2, dot_u8(u, w2 + c, ones));
                        acc3 = _mm256_add_epi32(acc3, dot_u8(u, w3 + c, ones));
                }
                __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(acc0, acc1),
                                              _mm256_hadd_epi32(acc2, acc3));
                __m128i d = _mm_add_epi32(_mm256_castsi256_si128(h),
                                          _mm256_extracti128_si256(h, 1));
                __m128i sums = _mm_loadu_si128((const __m128i *) (m->rowsum + r));
                d = _mm_sub_epi32(d, _mm_slli_epi32(sums, 6));
                /* int8_finish(), four rows at once: the same roundings */
                __m128 y = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(d), _mm_set1_ps(a->scale[0])),
                                      _mm_loadu_ps(m->scale + r));
                if (bias)
                        y = _mm_add_ps(y, _mm_loadu_ps(bias + r));
                _mm_storeu_ps(out + r, y);
        }
        for (; r < m->rows; r++) {
                __m256i acc = _mm256_setzero_si256();
                for (size_t c = 0; c < cols; c += QUANT_GROUP)
                        acc = _mm256_add_epi32(
                                acc, dot_u8(_mm256_loadu_si256((const __m256i *) (a->u8 + c)),
                                            w + r * cols + c, ones));
                out[r] = int8_finish(m, a, r, hsum_epi32(acc) - 64 * m->rowsum[r], bias);
        }
}

/* Lanes i_l of one int4 group against the codes x0 (columns 0..15) and x1 (16..31): the
 * nibbles q + 8 multiply as they are, and the 8 * sum(x) they add is
 * taken out after (exact integers either way). */
AVX2_FN static inline __m256i dot_i4(const uint8_t *q, __m256i x0, __m256i x1, __m256i sum8) {
        const __m128i low4 = _mm_set1_epi8(0x0f);
        __m128i v = _mm_loadu_si128((const __m128i *) q);
        __m256i w0 = _mm256_cvtepu8_epi16(_mm_and_si128(v, low4));
        __m256i w1 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), low4));
        __m256i i = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
        return _mm256_sub_epi32(i, sum8);
}

AVX2_FN static inline __m256 int_step(__m256 acc, __m256i i, __m256 d) {
        return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(i), d));
}

AVX2_FN static inline __m256 i4_scale(const quant_matrix *m, int r, int g, const quant_acts *a) {
        int groups = m->cols / QUANT_GROUP;
        return _mm256_set1_ps(_cvtsh_ss(m->scale16[(size_t) r * groups + g]) * a->scale[g]);
}

/* d_g = scale_g * xs_g for all groups of row r, eight at a time (the same two roundings as
 * one at a time: binary16 to float is exact). */
AVX2_FN static void i4_scales(const quant_matrix *m, int r, const quant_acts *a, float *d) {
        int groups = m->cols / QUANT_GROUP, g = 0;
        const uint16_t *sc = m->scale16 + (size_t) r * groups;
        for (; g + 8 <= groups; g += 8)
                _mm256_storeu_ps(d + g, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(
                                                              (const __m128i *) (sc + g))),
                                                      _mm256_loadu_ps(a->scale + g)));
        for (; g < groups; g++)
                d[g] = _cvtsh_ss(sc[g]) * a->scale[g];
}

/* Four rows at a time share the activation loads and one reduction; the rest one by one. */
AVX2_FN static void matvec_int4_avx2(const quant_matrix *m, const quant_acts *a,
                                     const float *bias, float *out) {
        int groups = m->cols / QUANT_GROUP, r = 0;
        const uint8_t *w4 = m->data;
        size_t stride = (size_t) m->cols / 2;

        for (; r + 4 <= m->rows; r += 4) {
                __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                                  _mm256_setzero_ps() };
                float d[4][QUANT_MAX_COLS / QUANT_GROUP];
                for (int k = 0; k < 4; k++)
                        i4_scales(m, r + k, a, d[k]);
                for (int g = 0; g < groups; g++) {
                        const int16_t *xq = a->q16 + g * QUANT_GROUP;
                        __m256i x0 = _mm256_loadu_si256((const __m256i *) xq);
                        __m256i x1 = _mm256_loadu_si256((const __m256i *) (xq + 16));
                        __m256i s8 = _mm256_loadu_si256((const __m256i *) a->sum8[g]);
                        for (int k = 0; k < 4; k++)
                                acc[k] = int_step(
                                        acc[k], dot_i4(w4 + (r + k) * stride + g * 16, x0, x1, s8),
                                        _mm256_broadcast_ss(&d[k][g]));
                }
                __m128 y = avx2_reduce4(acc[0], acc[1], acc[2], acc[3]);
                if (bias)
                        y = _mm_add_ps(y, _mm_loadu_ps(bias + r));
                _mm_storeu_ps(out + r, y);
        }
        for (; r < m->rows; r++) {
                __m256 acc = _mm256_setzero_ps();
                for (int g = 0; g < groups; g++) {
                        const int16_t *xq = a->q16 + g * QUANT_GROUP;
                        __m256i x0 = _mm256_loadu_si256((const __m256i *) xq);
                        __m256i x1 = _mm256_loadu_si256((const __m256i *) (xq + 16));
                        __m256i s8 = _mm256_loadu_si256((const __m256i *) a->sum8[g]);
                        acc = int_step(acc, dot_i4(w4 + r * stride + g * 16, x0, x1, s8),
                                       i4_scale(m, r, g, a));
                }
                float y = avx2_reduce1(acc);
                out[r] = bias ? y + bias[r] : y;
        }
}
#endif

/* ---- NEON: eight lanes as two quadwords ---- */

#if QUANT_NEON
static inline float32x4_t neon_block(const float *w, const float *xb) {
        float32x4_t p0 = vmulq_f32(vld1q_f32(w), vld1q_f32(xb));
        float32x4_t p1 = vmulq_f32(vld1q_f32(w + 8), vld1q_f32(xb + 8));
        float32x4_t p2 = vmulq_f32(vld1q_f32(w + 16), vld1q_f32(xb + 16));
        float32x4_t p3 = vmulq_f32(vld1q_f32(w + 24), vld1q_f32(xb + 24));
        return vaddq_f32(vaddq_f32(p0, p1), vaddq_f32(p2, p3));
}

static float neon_reduce(float32x4_t lo, float32x4_t hi) {
        float a[LANES];
        vst1q_f32(a, lo);
        vst1q_f32(a + 4, hi);
        return reduce_lanes(a);
}

static void matvec_f32_neon(const quant_matrix *m, const float *x, const float *bias,
                            float *out) {
        int blocks = m->cols / BLOCK;

        for (int r = 0; r < m->rows; r++) {
                const float *w = (const float *) m->data + (size_t) r * m->cols;
                float32x4_t lo = vdupq_n_f32(0.0f), hi = vdupq_n_f32(0.0f);
                for (int b = 0; b < blocks; b++, w += BLOCK) {
                        /* lanes 0..3 then 4..7 of each block: columns 8k + l */
                        lo = vaddq_f32(lo, neon_block(w, x + b * BLOCK));
                        hi = vaddq_f32(hi, neon_block(w + 4, x + b * BLOCK + 4));
                }
                float y = neon_reduce(lo, hi);
                out[r] = bias ? y + bias[r] : y;
        }
}

/* Lanes i_0..3 (columns 0..7 and 16..23, pairwise) and i_4..7 (8..15 and 24..31) of one
 * int4 group from signed codes w (columns 0..15) and v (16..31): products fit int16. */
static inline void neon_dot(int8x16_t w, int8x16_t v, const int8_t *x, int32x4_t *lo,
                            int32x4_t *hi) {
        int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
        *lo = vpadalq_s16(vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x0))),
                          vmull_s8(vget_low_s8(v), vget_low_s8(x1)));
        *hi = vpadalq_s16(vpaddlq_s16(vmull_s8(vget_high_s8(w), vget_high_s8(x0))),
                          vmull_s8(vget_high_s8(v), vget_high_s8(x1)));
}

/* sum q_c * xq_c over one int8 row: products of 7-bit by 8-bit codes fit int16 (64 * 127),
 * pairwise-added into int32 lanes; vdotq_s32 where the compiler may use the dot product
 * instructions (any order: the sum is an exact integer). */
static int32_t neon_dot_row(const int8_t *w, const int8_t *x, int cols) {
        int32x4_t acc = vdupq_n_s32(0);
        for (int c = 0; c < cols; c += 16) {
                int8x16_t a = vld1q_s8(w + c), b = vld1q_s8(x + c);
#if defined(__ARM_FEATURE_DOTPROD)
                acc = vdotq_s32(acc, a, b);
#else
                acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
                acc = vpadalq_s16(acc, vmull_s8(vget_high_s8(a), vget_high_s8(b)));
#endif
        }
        return vaddvq_s32(acc);
}

static void matvec_int_neon(const quant_matrix *m, const quant_acts *a, const float *bias,
                            float *out) {
        int groups = m->cols / QUANT_GROUP;
        const int8x16_t eight = vdupq_n_s8(8);
        const uint8x16_t low4 = vdupq_n_u8(0x0f);

        if (m->kind == QUANT_INT8) {
                for (int r = 0; r < m->rows; r++)
                        out[r] = int8_finish(m, a, r,
                                             neon_dot_row((const int8_t *) m->data +
                                                                  (size_t) r * m->cols,
                                                          a->q8, m->cols),
                                             bias);
                return;
        }
        for (int r = 0; r < m->rows; r++) {
                float32x4_t acc_lo = vdupq_n_f32(0.0f), acc_hi = vdupq_n_f32(0.0f);
                for (int g = 0; g < groups; g++) {
                        const uint8_t *q = (const uint8_t *) m->data +
                                           ((size_t) r * m->cols + g * QUANT_GROUP) / 2;
                        uint8x16_t b = vld1q_u8(q);
                        int8x16_t w = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, low4)), eight);
                        int8x16_t v = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight);
                        float d = quant_f16_to_f32(m->scale16[(size_t) r * groups + g]) *
                                  a->scale[g];
                        int32x4_t lo, hi;
                        neon_dot(w, v, a->q8 + g * QUANT_GROUP, &lo, &hi);
                        float32x4_t dv = vdupq_n_f32(d);
                        acc_lo = vaddq_f32(acc_lo, vmulq_f32(vcvtq_f32_s32(lo), dv));
                        acc_hi = vaddq_f32(acc_hi, vmulq_f32(vcvtq_f32_s32(hi), dv));
                }
                float y = neon_reduce(acc_lo, acc_hi);
                out[r] = bias ? y + bias[r] : y;
        }
}
#endif

/* ---- dispatch ---- */


void quant_acts_set(quant_acts *a, const float *x, int n, quant_kind kind) {
#if QUANT_AVX2
        if (use_simd()) {
                acts_set_avx2(a, x, n, kind);
                return;
        }
#endif
        quant_acts_set_portable(a, x, n, kind);
}

void quant_matvec_acts(const quant_matrix *m, const quant_acts *a, const float *bias, float *out) {
#if QUANT_AVX2
        if (use_simd()) {
                if (m->kind == QUANT_INT8)
                        matvec_int8_avx2(m, a, bias, out);
                else
                        matvec_int4_avx2(m, a, bias, out);
                return;
        }
#elif QUANT_NEON
        if (use_simd()) {
                matvec_int_neon(m, a, bias, out);
                return;
        }
#endif
        quant_matvec_acts_portable(m, a, bias, out);
}

void quant_matvec(const quant_matrix *m, const float *x, const float *bias, float *out) {
        if (m->kind != QUANT_F32) {
                quant_acts a;
                quant_acts_set(&a, x, m->cols, m->kind);
                quant_matvec_acts(m, &a, bias, out);
                return;
        }
#if QUANT_AVX2
        if (use_simd()) {
                matvec_f32_avx2(m, x, bias, out);
                return;
        }
#elif QUANT_NEON
        if (use_simd()) {
                matvec_f32_neon(m, x, bias, out);
                return;
        }
#endif
        matvec_f32_portable(m, x, bias, out);
}
