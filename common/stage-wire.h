/* SPDX-License-Identifier: MIT */
#pragma once

/* The activation wire format of collaborative inference (POST /v1/stage/...): a fixed
 * 48-byte little-endian header, then n_tokens * width fp32 values, nothing else.
 *
 *   offset size field
 *        0    4 magic "EDST"
 *        4    2 format (1)
 *        6    2 kind: 0 tokens (width 1, integer ids 0..255), 1 hidden states (width C),
 *                     2 logits (width 256, the last position only)
 *        8    8 model version
 *       16    2 first layer      18  2 last layer (inclusive) of the stage it is for/from
 *       20    4 flags (0)
 *       24    8 session id (non-zero)
 *       32    4 position of the first token
 *       36    4 n_tokens (>= 1)
 *       40    4 width
 *       44    4 reserved (0)
 *       48      data
 *
 * The decoder checks every field, the exact total length (no truncation, no trailing bytes)
 * and every value (NaN, infinities and magnitudes over STAGE_WIRE_MAX_ABS rejected) before
 * the caller sees any of it. */

#include <stddef.h>
#include <stdint.h>

#define STAGE_WIRE_MAGIC "EDST"
#define STAGE_WIRE_FORMAT 1
#define STAGE_WIRE_HEADER 48
#define STAGE_WIRE_MAX_TOKENS 4096
#define STAGE_WIRE_MAX_WIDTH 65536
/* Hidden states and logits beyond this magnitude are refused: finite but huge values would
 * overflow to infinities and NaN inside LayerNorm and attention. */
#define STAGE_WIRE_MAX_ABS 1e8f

typedef enum {
        STAGE_WIRE_TOKENS = 0,
        STAGE_WIRE_HIDDEN = 1,
        STAGE_WIRE_LOGITS = 2,
        _STAGE_WIRE_KIND_MAX,
} stage_wire_kind;

typedef struct {
        stage_wire_kind kind;
        uint64_t version;
        uint16_t first, last;
        uint64_t session;
        uint32_t pos, n_tokens, width;
} stage_wire_header;

/* Bytes of a message with this header. */
size_t stage_wire_size(const stage_wire_header *h);

/* Writes header and data into a malloc'd buffer. -EINVAL for a header the decoder would
 * refuse (the data is not checked). */
int stage_wire_encode(const stage_wire_header *h, const float *data, void **ret, size_t *ret_size);

/* Validates buf completely; on success *ret_h is the header and *ret_data a malloc'd copy of
 * the values (aligned). -EBADMSG with a short reason in why (a static string) otherwise. */
int stage_wire_decode(const void *buf, size_t size, stage_wire_header *ret_h, float **ret_data,
                      const char **why);
