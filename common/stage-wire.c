/* SPDX-License-Identifier: MIT */
#include "stage-wire.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "stage-wire assumes a little-endian host (the wire is little-endian fp32)"
#endif

static void put16(uint8_t *p, uint16_t v) {
        memcpy(p, &v, 2);
}
static void put32(uint8_t *p, uint32_t v) {
        memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v) {
        memcpy(p, &v, 8);
}
static uint16_t get16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, 2);
        return v;
}
static uint32_t get32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
}
static uint64_t get64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, 8);
        return v;
}

/* The header rules shared by both directions; NULL when fine. */
static const char *header_problem(const stage_wire_header *h) {
        if (h->kind < 0 || h->kind >= _STAGE_WIRE_KIND_MAX)
                return "unknown kind";
        if (h->first > h->last)
                return "first layer after last layer";
        if (h->session == 0)
                return "session id is zero";
        if (h->n_tokens < 1 || h->n_tokens > STAGE_WIRE_MAX_TOKENS)
                return "token count out of range";
        if (h->width < 1 || h->width > STAGE_WIRE_MAX_WIDTH)
                return "width out of range";
        if (h->kind == STAGE_WIRE_TOKENS && h->width != 1)
                return "tokens must have width 1";
        if (h->kind == STAGE_WIRE_LOGITS && (h->width != 256 || h->n_tokens != 1))
                return "logits must be one row of 256";
        if (h->pos > (uint32_t) INT32_MAX - h->n_tokens)
                return "position out of range";
        return NULL;
}

size_t stage_wire_size(const stage_wire_header *h) {
        /* bounded by the limits above: at most 4096 * 65536 * 4 bytes, no overflow */
        return STAGE_WIRE_HEADER + (size_t) h->n_tokens * h->width * sizeof(float);
}

int stage_wire_encode(const stage_wire_header *h, const float *data, void **ret, size_t *ret_size) {
        if (header_problem(h))
                return -EINVAL;
        size_t size = stage_wire_size(h);
        uint8_t *b = calloc(1, size);
        if (!b)
                return -ENOMEM;
        memcpy(b, STAGE_WIRE_MAGIC, 4);
        put16(b + 4, STAGE_WIRE_FORMAT);
        put16(b + 6, (uint16_t) h->kind);
        put64(b + 8, h->version);
        put16(b + 16, h->first);
        put16(b + 18, h->last);
        put64(b + 24, h->session);
        put32(b + 32, h->pos);
        put32(b + 36, h->n_tokens);
        put32(b + 40, h->width);
        memcpy(b + STAGE_WIRE_HEADER, data, size - STAGE_WIRE_HEADER);
        *ret = b;
        *ret_size = size;
        return 0;
}

int stage_wire_decode(const void *buf, size_t size, stage_wire_header *ret_h, float **ret_data,
                      const char **why) {
        const uint8_t *b = buf;
        stage_wire_header h;
        const char *bad;

        *why = NULL;
        if (!buf || size < STAGE_WIRE_HEADER) {
                *why = "shorter than the header";
                return -EBADMSG;
        }
        if (memcmp(b, STAGE_WIRE_MAGIC, 4) != 0 || get16(b + 4) != STAGE_WIRE_FORMAT) {
                *why = "not a stage message (magic or format)";
                return -EBADMSG;
        }
        if (get32(b + 20) != 0 || get32(b + 44) != 0) {
                *why = "reserved fields are not zero";
                return -EBADMSG;
        }
        h = (stage_wire_header){
                .kind = (stage_wire_kind) get16(b + 6),
                .version = get64(b + 8),
                .first = get16(b + 16),
                .last = get16(b + 18),
                .session = get64(b + 24),
                .pos = get32(b + 32),
                .n_tokens = get32(b + 36),
                .width = get32(b + 40),
        };
        bad = header_problem(&h);
        if (bad) {
                *why = bad;
                return -EBADMSG;
        }
        if (size != stage_wire_size(&h)) {
                *why = size < stage_wire_size(&h) ? "truncated: fewer values than n_tokens * width"
                                                  : "more bytes than n_tokens * width";
                return -EBADMSG;
        }
        size_t n = (size_t) h.n_tokens * h.width;
        float *d = malloc(n * sizeof(float));
        if (!d)
                return -ENOMEM;
        memcpy(d, b + STAGE_WIRE_HEADER, n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
                if (!isfinite(d[i])) {
                        *why = "a value is NaN or infinite";
                        free(d);
                        return -EBADMSG;
                }
                if (fabsf(d[i]) > STAGE_WIRE_MAX_ABS) {
                        *why = "a value is out of range (magnitude over 1e8)";
                        free(d);
                        return -EBADMSG;
                }
                if (h.kind == STAGE_WIRE_TOKENS && (d[i] < 0.0f || d[i] > 255.0f || d[i] != floorf(d[i]))) {
                        *why = "a token id is not an integer in 0..255";
                        free(d);
                        return -EBADMSG;
                }
        }
        *ret_h = h;
        *ret_data = d;
        return 0;
}
