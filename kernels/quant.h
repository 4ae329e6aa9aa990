/* SPDX-License-Identifier: MIT */
#pragma once

/* Quantization of the model's matrices, and the matrix-vector products that read them.
 *
 * Formats (a matrix is rows x cols, rows = output channels, cols = input channels):
 *   int8  per-row symmetric: scale_r = max_j |w_rj| / 127 (float32), q = round(w / scale_r)
 *         in [-127, 127], one signed byte each; w ~ q * scale_r.
 *   int4  group-wise symmetric, groups of QUANT_GROUP consecutive columns of a row:
 *         scale_g = max |w| / 7 over the group, rounded UP to IEEE binary16 (so no value
 *         leaves [-7, 7]); q = round(w / scale_g) in [-7, 7], stored as the nibble q + 8.
 *         Byte j (0..15) of a group holds column j in its low nibble and column j + 16 in
 *         its high nibble (the layout SIMD unpacks with one mask and one shift).
 *   f32   plain floats (for comparisons through the same kernels).
 * Rounding is to nearest, so |w - dequant(q)| <= scale / 2 for every weight.
 *
 * Products. f32 matrices multiply float activations: eight lanes; in each block of 32
 * columns, lane l (0..7) forms the products p_k of columns 8k + l, k = 0..3, each rounded to
 * float (never a fused multiply-add), and adds t = (p0 + p1) + (p2 + p3) to its running sum.
 *
 * int8 and int4 matrices multiply integer activations, quantized per call (integer dot
 * products are what makes them fast); all integer sums below are exact.
 *
 * int8: x is quantized per vector to 7 bits: xs = max |x| / 64, xq_c = round-half-even(x_c *
 * (64 / max)) in [-64, 64] (an all-zero x has xs = 0). 64 and not 127 so that AVX2's
 * vpmaddubsw, which multiplies the unsigned xq + 64 by the signed weight codes, never
 * saturates its 16-bit pair sums (2 * 128 * 127 < 2^15), the reduced range fbgemm's x86
 * kernels use for the same reason. The row's D = sum_c q_c * xq_c is an int32 (AVX2 forms
 * sum (xq_c + 64) q_c - 64 * rowsum_r); y = ((float) D * xs) * scale_r, plus the bias.
 *
 * int4: x is quantized per group of 32 columns to 8 bits, xs_g = max |x| / 127 over the
 * group, xq_c = round-half-even(x_c * (127 / max)) in [-127, 127]. In each group, lane l
 * (0..7) holds the integer i_l = sum of q_c * xq_c over the four columns c in {2l, 2l+1,
 * 2l+16, 2l+17} (the order AVX2's widening multiply-adds and NEON's pairwise adds produce),
 * turned into a float (exact: |i_l| <= 4 * 127 * 7) and added as acc_l + i_l * d_g, with
 * d_g = scale_g * xs_g; each product and sum rounded to float.
 *
 * Then, for f32 and int4, the lanes are reduced as ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)) and
 * the bias is added last. This is the one arithmetic the portable C, the AVX2 and the NEON
 * kernels implement, so their results are bit-identical (tests/test-quant.c). Every kind
 * needs cols % 32 == 0 and cols <= QUANT_MAX_COLS; int8 codes must stay in [-127, 127]
 * (-128 would saturate vpmaddubsw; quant_matrix_new never makes it, files holding it are
 * refused). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QUANT_GROUP 32
/* Widest matrix the kernels take (the activation codes live on the stack): medium's MLP
 * projection has 2048 columns. */
#define QUANT_MAX_COLS 4096

typedef enum {
        QUANT_F32 = 32,
        QUANT_INT8 = 8,
        QUANT_INT4 = 4,
} quant_kind;

typedef struct {
        quant_kind kind;
        int rows, cols;
        void *data;      /* f32: rows*cols floats; int8: rows*cols int8; int4: rows*cols/2 */
        float *scale;    /* int8: one per row */
        uint16_t *scale16; /* int4: binary16, rows * cols/QUANT_GROUP */
        int32_t *rowsum;   /* int8: each row's sum of codes, derived from data for the kernels */
} quant_matrix;

/* Which kernels quant_matvec() runs: "avx2", "neon" or "portable". */
const char *quant_simd_name(void);
/* Forces the portable kernels (tests, benchmarks); returns the previous setting. */
bool quant_force_portable(bool on);

/* IEEE binary16 <-> float; the conversion up rounds toward +infinity. Finite inputs only. */
float quant_f16_to_f32(uint16_t h);
uint16_t quant_f16_from_f32_up(float f);

/* Quantizes w (rows x cols, row-major) into a new matrix. int4 needs cols % QUANT_GROUP == 0;
 * -EINVAL otherwise, -ENOMEM. */
int quant_matrix_new(quant_matrix *ret, const float *w, int rows, int cols, quant_kind kind);
/* Allocates an all-zero matrix of the kind, to be filled (e.g. from a file), then completed
 * by quant_matrix_finish(). */
int quant_matrix_alloc(quant_matrix *ret, int rows, int cols, quant_kind kind);
/* Computes what the kernels derive from the codes (int8 row sums); quant_matrix_new() and
 * quant_sampler_new() call it. */
void quant_matrix_finish(quant_matrix *m);
void quant_matrix_free(quant_matrix *m);

/* Bytes of the data plus the scales. */
size_t quant_matrix_bytes(const quant_matrix *m);
size_t quant_data_bytes(quant_kind kind, int rows, int cols);
size_t quant_scale_bytes(quant_kind kind, int rows, int cols);

/* Row r as floats (cols). */
void quant_matrix_row(const quant_matrix *m, int r, float *out);
void quant_matrix_dequantize(const quant_matrix *m, float *out);
/* out(cols) += row r */
void quant_matrix_row_add(const quant_matrix *m, int r, float *out);
/* The error bound of row r's column c: scale / 2 (0 for f32). */
float quant_matrix_bound(const quant_matrix *m, int r, int c);

/* An activation vector quantized for the int8 or the int4 kernels (see above). */
typedef struct {
        quant_kind kind;                               /* QUANT_INT8 or QUANT_INT4 */
        int n;                                         /* columns */
        float scale[QUANT_MAX_COLS / QUANT_GROUP];     /* int8: xs in [0]; int4: xs_g */
        int32_t sum8[QUANT_MAX_COLS / QUANT_GROUP][8]; /* int4: 8 * sum of lane l's codes, the
                                                          nibbles' offset, taken out once */
        int16_t q16[QUANT_MAX_COLS];                   /* int4: codes, widened for AVX2 */
        int8_t q8[QUANT_MAX_COLS];                     /* codes (NEON, portable) */
        uint8_t u8[QUANT_MAX_COLS];                    /* int8: codes + 64 (AVX2) */
} quant_acts;

/* Quantizes x(n) for matrices of kind (int8 or int4), n % QUANT_GROUP == 0 and
 * n <= QUANT_MAX_COLS. */
void quant_acts_set(quant_acts *a, const float *x, int n, quant_kind kind);
void quant_acts_set_portable(quant_acts *a, const float *x, int n, quant_kind kind);

/* out(rows) = W x(cols) + bias (bias may be NULL), in the arithmetic described above: float
 * x for f32 matrices, x quantized by quant_acts_set() for int8 and int4. */
void quant_matvec(const quant_matrix *m, const float *x, const float *bias, float *out);
void quant_matvec_portable(const quant_matrix *m, const float *x, const float *bias, float *out);
/* The same for int8 and int4 from already quantized activations (a->n == m->cols, a->kind ==
 * m->kind). */
void quant_matvec_acts(const quant_matrix *m, const quant_acts *a, const float *bias, float *out);
void quant_matvec_acts_portable(const quant_matrix *m, const quant_acts *a, const float *bias,
                                float *out);
