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

const char *quant_simd_name(void) {
#if QUANT_AVX2
        if (!force_portable && have_avx2())
                return "avx2";
#elif QUANT_NEON
        if (!force_portable)
                return "neon";
#endif
        return "portable";
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

        if (rows < 1 || cols < BLOCK || cols % BLOCK != 0 ||
            (kind != QUANT_F32 && kind != QUANT_INT8 && kind != QUANT_INT4))
                return -EINVAL;
        m.data = calloc(1, quant_data_bytes(kind, rows, cols));
        if (kind == QUANT_INT8)
                m.scale = calloc((size_t) rows, sizeof(float));
        if (kind == QUANT_INT4)
                m.scale16 = calloc(quant_scale_bytes(kind, rows, cols), 1);
        if (!m.data || (kind == QUANT_INT8 && !m.scale) || (kind == QUANT_INT4 && !m.scale16)) {
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
        m->data = m->scale = NULL;
        m->scale16 = NULL;
}

static float max_abs(const float *w, int n) {
        float mx = 0.0f;
        for (int i = 0; i < n; i++)
                mx = fabsf(w[i]) > mx ? fabsf(w[i]) : mx;
        return mx;
}

/* round(w / scale) clamped to [-lim, lim]; the clamp only catches the last ulp. */
static int quantize_one(float w, float scale, int lim) {
        if (scale == 0.0f)
                return 0;
        long q = lroundf(w / scale);
        return (int) (q > lim ? lim : q < -lim ? -lim : q);
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

/* Weight w(row, column 8k + l) of one block, as a float, into wk[4][8]. */
static void block_weights(const quant_matrix *m, int r, int b, float wk[4][LANES]) {
        size_t col0 = (size_t) b * BLOCK;
        if (m->kind == QUANT_F32) {
                const float *w = (const float *) m->data + (size_t) r * m->cols + col0;
                for (int k = 0; k < 4; k++)
                        for (int l = 0; l < LANES; l++)
                                wk[k][l] = w[k * LANES + l];
        } else if (m->kind == QUANT_INT8) {
                const int8_t *q = (const int8_t *) m->data + (size_t) r * m->cols + col0;
                for (int k = 0; k < 4; k++)
                        for (int l = 0; l < LANES; l++)
                                wk[k][l] = (float) q[k * LANES + l];
        } else {
                /* one block is one group: byte j holds columns j (low) and j + 16 (high) */
                const uint8_t *q = (const uint8_t *) m->data + ((size_t) r * m->cols + col0) / 2;
                for (int j = 0; j < 16; j++) {
                        wk[j / LANES][j % LANES] = (float) ((q[j] & 0xf) - 8);
                        wk[2 + j / LANES][j % LANES] = (float) ((q[j] >> 4) - 8);
                }
        }
}

void quant_matvec_portable(const quant_matrix *m, const float *x, const float *bias, float *out) {
        int blocks = m->cols / BLOCK;

        for (int r = 0; r < m->rows; r++) {
                float acc[LANES] = { 0 };
                for (int b = 0; b < blocks; b++) {
                        float wk[4][LANES], p[4][LANES];
                        const float *xb = x + (size_t) b * BLOCK;
                        block_weights(m, r, b, wk);
                        for (int k = 0; k < 4; k++)
                                for (int l = 0; l < LANES; l++)
                                        p[k][l] = wk[k][l] * xb[k * LANES + l];
                        float s = m->kind == QUANT_INT4
                                          ? quant_f16_to_f32(m->scale16[(size_t) r * blocks + b])
                                          : 1.0f;
                        for (int l = 0; l < LANES; l++) {
                                float t = (p[0][l] + p[1][l]) + (p[2][l] + p[3][l]);
                                acc[l] = m->kind == QUANT_INT4 ? acc[l] + t * s : acc[l] + t;
                        }
                }
                float y = reduce_lanes(acc);
                if (m->kind == QUANT_INT8)
                        y = y * m->scale[r];
                out[r] = bias ? y + bias[r] : y;
        }
}

/* ---- AVX2 ---- */

#if QUANT_AVX2
#define AVX2_FN __attribute__((target("avx2,f16c")))

AVX2_FN static inline float avx2_finish(const quant_matrix *m, int r, __m256 acc,
                                        const float *bias) {
        float a[LANES];
        _mm256_storeu_ps(a, acc);
        float y = reduce_lanes(a);
        if (m->kind == QUANT_INT8)
                y = y * m->scale[r];
        return bias ? y + bias[r] : y;
}

AVX2_FN static inline __m256 avx2_block(__m256 w0, __m256 w1, __m256 w2, __m256 w3,
                                        const float *xb) {
        __m256 p0 = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
        __m256 p1 = _mm256_mul_ps(w1, _mm256_loadu_ps(xb + 8));
        __m256 p2 = _mm256_mul_ps(w2, _mm256_loadu_ps(xb + 16));
        __m256 p3 = _mm256_mul_ps(w3, _mm256_loadu_ps(xb + 24));
        return _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3));
}

AVX2_FN static inline __m256 i8_to_ps(const int8_t *q) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) q)));
}

AVX2_FN static inline __m256 u4_to_ps(__m128i nibbles, __m256i eight) {
        return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(nibbles), eight));
}

AVX2_FN static void matvec_avx2(const quant_matrix *m, const float *x, const float *bias,
                                float *out) {
        int blocks = m->cols / BLOCK;
        const __m128i low4 = _mm_set1_epi8(0x0f);
        const __m256i eight = _mm256_set1_epi32(8);

        for (int r = 0; r < m->rows; r++) {
                __m256 acc = _mm256_setzero_ps();
                if (m->kind == QUANT_F32) {
                        const float *w = (const float *) m->data + (size_t) r * m->cols;
                        for (int b = 0; b < blocks; b++, w += BLOCK)
                                acc = _mm256_add_ps(acc, avx2_block(_mm256_loadu_ps(w),
                                                                    _mm256_loadu_ps(w + 8),
                                                                    _mm256_loadu_ps(w + 16),
                                                                    _mm256_loadu_ps(w + 24),
                                                                    x + b * BLOCK));
                } else if (m->kind == QUANT_INT8) {
                        const int8_t *q = (const int8_t *) m->data + (size_t) r * m->cols;
                        for (int b = 0; b < blocks; b++, q += BLOCK)
                                acc = _mm256_add_ps(acc, avx2_block(i8_to_ps(q), i8_to_ps(q + 8),
                                                                    i8_to_ps(q + 16),
                                                                    i8_to_ps(q + 24),
                                                                    x + b * BLOCK));
                } else {
                        const uint8_t *q = (const uint8_t *) m->data + (size_t) r * blocks * 16;
                        const uint16_t *sc = m->scale16 + (size_t) r * blocks;
                        for (int b = 0; b < blocks; b++, q += 16) {
                                __m128i v = _mm_loadu_si128((const __m128i *) q);
                                __m128i lo = _mm_and_si128(v, low4);
                                __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
                                __m256 t = avx2_block(u4_to_ps(lo, eight),
                                                      u4_to_ps(_mm_srli_si128(lo, 8), eight),
                                                      u4_to_ps(hi, eight),
                                                      u4_to_ps(_mm_srli_si128(hi, 8), eight),
                                                      x + b * BLOCK);
                                __m256 s = _mm256_set1_ps(_cvtsh_ss(sc[b]));
                                acc = _mm256_add_ps(acc, _mm256_mul_ps(t, s));
                        }
                }
                out[r] = avx2_finish(m, r, acc, bias);
        }
}
#endif

/* ---- NEON: eight lanes as two quadwords ---- */

#if QUANT_NEON
typedef struct {
        float32x4_t a, b;
} f8;

static inline f8 f8_add(f8 x, f8 y) {
        return (f8){ vaddq_f32(x.a, y.a), vaddq_f32(x.b, y.b) };
}

static inline f8 f8_mul(f8 x, f8 y) {
        return (f8){ vmulq_f32(x.a, y.a), vmulq_f32(x.b, y.b) };
}

static inline f8 f8_load(const float *p) {
        return (f8){ vld1q_f32(p), vld1q_f32(p + 4) };
}

static inline f8 s16_to_f8(int16x8_t v) {
        return (f8){ vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))),
                     vcvtq_f32_s32(vmovl_s16(vget_high_s16(v))) };
}

static inline f8 neon_block(f8 w0, f8 w1, f8 w2, f8 w3, const float *xb) {
        f8 p0 = f8_mul(w0, f8_load(xb)), p1 = f8_mul(w1, f8_load(xb + 8));
        f8 p2 = f8_mul(w2, f8_load(xb + 16)), p3 = f8_mul(w3, f8_load(xb + 24));
        return f8_add(f8_add(p0, p1), f8_add(p2, p3));
}

static void matvec_neon(const quant_matrix *m, const float *x, const float *bias, float *out) {
        int blocks = m->cols / BLOCK;

        for (int r = 0; r < m->rows; r++) {
                f8 acc = { vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) };
                if (m->kind == QUANT_F32) {
                        const float *w = (const float *) m->data + (size_t) r * m->cols;
                        for (int b = 0; b < blocks; b++, w += BLOCK)
                                acc = f8_add(acc, neon_block(f8_load(w), f8_load(w + 8),
                                                             f8_load(w + 16), f8_load(w + 24),
                                                             x + b * BLOCK));
                } else if (m->kind == QUANT_INT8) {
                        const int8_t *q = (const int8_t *) m->data + (size_t) r * m->cols;
                        for (int b = 0; b < blocks; b++, q += BLOCK) {
                                int8x16_t v0 = vld1q_s8(q), v1 = vld1q_s8(q + 16);
                                acc = f8_add(acc,
                                             neon_block(s16_to_f8(vmovl_s8(vget_low_s8(v0))),
                                                        s16_to_f8(vmovl_s8(vget_high_s8(v0))),
                                                        s16_to_f8(vmovl_s8(vget_low_s8(v1))),
                                                        s16_to_f8(vmovl_s8(vget_high_s8(v1))),
                                                        x + b * BLOCK));
                        }
                } else {
                        const uint8_t *q = (const uint8_t *) m->data + (size_t) r * blocks * 16;
                        const uint16_t *sc = m->scale16 + (size_t) r * blocks;
                        const int8x16_t eight = vdupq_n_s8(8);
                        for (int b = 0; b < blocks; b++, q += 16) {
                                uint8x16_t v = vld1q_u8(q);
                                int8x16_t lo = vsubq_s8(
                                        vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), eight);
                                int8x16_t hi =
                                        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
                                f8 t = neon_block(s16_to_f8(vmovl_s8(vget_low_s8(lo))),
                                                  s16_to_f8(vmovl_s8(vget_high_s8(lo))),
                                                  s16_to_f8(vmovl_s8(vget_low_s8(hi))),
                                                  s16_to_f8(vmovl_s8(vget_high_s8(hi))),
                                                  x + b * BLOCK);
                                float32x4_t s = vdupq_n_f32(quant_f16_to_f32(sc[b]));
                                acc = f8_add(acc, (f8){ vmulq_f32(t.a, s), vmulq_f32(t.b, s) });
                        }
                }
                float a[LANES];
                vst1q_f32(a, acc.a);
                vst1q_f32(a + 4, acc.b);
                float y = reduce_lanes(a);
                if (m->kind == QUANT_INT8)
                        y = y * m->scale[r];
                out[r] = bias ? y + bias[r] : y;
        }
}
#endif

void quant_matvec(const quant_matrix *m, const float *x, const float *bias, float *out) {
#if QUANT_AVX2
        if (!force_portable && have_avx2()) {
                matvec_avx2(m, x, bias, out);
                return;
        }
#elif QUANT_NEON
        if (!force_portable) {
                matvec_neon(m, x, bias, out);
                return;
        }
#endif
        quant_matvec_portable(m, x, bias, out);
}
