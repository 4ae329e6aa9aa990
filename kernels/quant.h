/* SPDX-License-Identifier: MIT */
#pragma once

/* Weight-only quantization of the model's matrices, and the matrix-vector products that
 * read them. Activations stay float; each weight is turned back into a float inside the dot
 * product, so nothing but the weights' precision changes.
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
 * The product out = W x + b has one defined arithmetic, which the portable C, the AVX2 and
 * the NEON kernels all implement, so their results are bit-identical (tests/test-quant.c):
 * eight lanes; in each block of 32 columns, lane l (0..7) forms the products p_k of columns
 * 8k + l, k = 0..3, each rounded to float (never a fused multiply-add), and adds
 * t = (p0 + p1) + (p2 + p3) to its running sum: acc_l + t for f32 and int8, acc_l + t * scale_g
 * for int4. The lanes are then reduced as ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)); int8 multiplies
 * that by scale_r; the bias is added last. Every kind needs cols % 32 == 0. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QUANT_GROUP 32

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
/* Allocates an all-zero matrix of the kind, to be filled (e.g. from a file). */
int quant_matrix_alloc(quant_matrix *ret, int rows, int cols, quant_kind kind);
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

/* out(rows) = W x(cols) + bias (bias may be NULL), in the arithmetic described above. */
void quant_matvec(const quant_matrix *m, const float *x, const float *bias, float *out);
void quant_matvec_portable(const quant_matrix *m, const float *x, const float *bias, float *out);
