/* SPDX-License-Identifier: MIT */
#pragma once

/* Model updates on the wire (DESIGN.md §8, docs/federation-protocol.md): a device sends
 * delta = local - base for every parameter tensor, compressed, then zstd. The server decodes
 * and validates everything before any value is used: names and shapes against the model's
 * layout, sizes against the body, finiteness, index order for top-k.
 *
 * Body (after zstd decompression), all integers little-endian:
 *   "EDUP"                    magic
 *   u32 format                UPD_FORMAT (1)
 *   u32 encoding              upd_encoding
 *   u64 base_version
 *   u32 n_tensors             must equal the layout's view count, in layout order
 *   per tensor:
 *     u16 name_len, name      exactly the layout's view name (no NUL)
 *     u32 rows, u32 cols      2-D views: shape[0], shape[1]; 1-D views: 1, shape[0]
 *     payload:
 *       UPD_FP32: rows*cols f32
 *       UPD_INT8: rows f32 scales (finite, >= 0), then rows*cols i8; value = q * scale
 *       UPD_TOPK: u32 k (<= rows*cols), k u32 flat indices strictly ascending, k f32 values
 *   nothing after the last tensor.
 *
 * int8 is symmetric per row: scale = max|x| / 127, q = round(x / scale) clamped to
 * [-127, 127] (a zero row has scale 0), so |x - q*scale| <= scale / 2.
 * top-k keeps, over the whole model, the k = max(1, ceil(fraction * n_params)) entries of
 * largest |delta + residual| (ties: lower flat index of the layout first); the residual of
 * what was not sent is kept by the device (error feedback) and added to the next delta.
 * Top-k indices are per tensor, into that tensor's row-major data. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define UPD_MAGIC "EDUP"
#define UPD_FORMAT 1
#define UPD_ZSTD_LEVEL 3

typedef enum {
        UPD_FP32 = 0,
        UPD_INT8 = 1,
        UPD_TOPK = 2,
        _UPD_ENCODING_MAX,
} upd_encoding;

/* "fp32", "int8", "topk" <-> enum; -EINVAL for anything else. */
const char *upd_encoding_to_string(upd_encoding e);
int upd_encoding_from_string(const char *s);

typedef struct {
        upd_encoding encoding;
        uint64_t base_version;
        size_t raw_size;   /* bytes before zstd */
        size_t nonzero;    /* entries sent (n_params except for top-k) */
        double l2_norm;    /* of the decoded delta */
} upd_info;

/* Encodes delta (layout->n_params floats in layout order) into a malloc'd zstd-compressed
 * body. residual (n_params floats, may be NULL = no error feedback) is added to delta before
 * encoding (top-k selection, int8 quantization) and then receives what the body does not
 * carry: for top-k the entries not sent, for int8 the rounding error, for fp32 zeros. delta
 * is not modified. topk_fraction is used only for UPD_TOPK and must be in (0, 1]; k is
 * computed in double from it. Returns -EINVAL (unknown encoding, bad fraction, a layout the
 * format cannot express), -EDOM (a NaN or infinity in delta + residual) or -ENOMEM; residual is
 * updated only on success. */
int upd_encode(upd_encoding enc, uint64_t base_version, const model_layout *layout,
               const float *delta, float topk_fraction, float *residual, void **ret_body,
               size_t *ret_size, upd_info *ret_info);

/* Decodes and validates body into delta (layout->n_params floats, all written; entries top-k
 * did not send are 0). max_raw bounds the decompressed size (the caller's limit on memory;
 * reject before allocating more). On failure returns -EBADMSG (malformed: bad magic, format,
 * truncation, trailing bytes, zstd error, sizes), -EPROTO (well-formed but wrong for this
 * model: names, shapes, count), -EDOM (a NaN or infinite value or scale), -EFBIG (over
 * max_raw), and writes a one-line reason into err (e.g. "tensor 4 'h.0.attn.qkv.weight':
 * shape 1x384, expected 384x128"). delta's contents are then unspecified. A zstd frame
 * must hold its content size (ZSTD_compress writes it) and be the whole body; one without
 * is -EBADMSG, as is one larger than any valid update for this layout. -EINVAL for NULL
 * arguments, -ENOMEM. */
int upd_decode(const void *body, size_t size, const model_layout *layout, size_t max_raw,
               float *delta, upd_info *ret_info, char *err, size_t err_size);

/* Reads just the header fields (encoding, base version; raw_size is the frame's content
 * size, the rest 0) after stream-decompressing only the first bytes (the first zstd block
 * must be complete); for logging and routing before the full decode. Validates magic, format
 * and encoding only: -EBADMSG otherwise. */
int upd_peek(const void *body, size_t size, upd_info *ret_info);
