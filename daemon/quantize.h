/* SPDX-License-Identifier: MIT */
#pragma once

/* Quantized models as safetensors files ("edged quantize"), and loading them for
 * "edged sample", which recognises such a file by its metadata.
 *
 * File format "edged-quant-1" (kernels/quant.h defines the number formats):
 *   metadata  format=edged-quant-1, bits=8|4 (layer matrices), embed_bits=32|8|4 (wte, wpe),
 *             group_size=32, config, block_size, n_embd, n_layer, n_head, step (of the
 *             checkpoint it came from)
 *   1-D views (LayerNorm weights, biases): F32 under their checkpoint names
 *   a matrix NAME (rows x cols) at 32 bits: F32 "NAME" [rows, cols]
 *                               at 8 bits:  U8 "NAME.q8" [rows, cols], each byte a
 *                                           two's-complement int8 in [-127, 127] (numpy:
 *                                           .view(np.int8)); F32 "NAME.q8.scale" [rows]
 *                               at 4 bits:  U8 "NAME.q4" [rows, cols/2], nibbles q + 8 with
 *                                           q in [-7, 7], byte j of each 16-byte group holding
 *                                           columns j (low) and j + 16 (high); U8
 *                                           "NAME.q4.scale" [rows, cols/32, 2], each pair an
 *                                           IEEE binary16 little-endian (numpy: .view('<f2'))
 *   (U8 stands for I8 and F16, which common/safetensors does not know.)
 * Nothing else may be in the file; loading validates every tensor and value range. */

#include "quant-sample.h"

#define QUANT_FORMAT "edged-quant-1"

int quant_save(const char *path, const quant_model *q, long step);
/* Errors name the file and the field at fault. */
int quant_load(const char *path, quant_model **ret);
/* 1 if path's metadata says edged-quant-1, 0 if it is another safetensors file, or the
 * loader's error. */
int quant_file_detect(const char *path);

typedef struct {
        const char *input, *output;
        int bits;       /* 8 or 4 */
        int embed_bits; /* 32, 8 or 4; 0: the same as bits */
} quantize_opts;

/* "edged quantize": reads a checkpoint, writes the quantized model, reports the sizes. */
int quantize_run(const quantize_opts *o);

quant_kind quant_kind_of_bits(int bits);
