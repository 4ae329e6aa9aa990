/* SPDX-License-Identifier: MIT */
/* Update bodies against the tiny layout, as the aggregator decodes them. The first byte picks
 * the mode: bit 0 set means the rest is an uncompressed body that the harness zstd-compresses
 * first (so mutations reach the body parser instead of breaking the frame); bits 1-2 pick
 * max_raw (the aggregator's bound, or small ones to hit -EFBIG). upd_peek sees the same body.
 * A body that decodes must satisfy what the header promises: finite values, zeros where
 * top-k sent nothing, a non-negative finite norm. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "fuzz-util.h"
#include "settings.h"
#include "update-codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static model_layout lay;
static float *delta;
static bool verbose;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        model_config cfg;

        fuzz_quiet();
        verbose = getenv("FUZZ_VERBOSE");
        if (model_config_by_name("tiny", &cfg) < 0)
                abort();
        model_layout_init(&lay, &cfg);
        delta = malloc(lay.n_params * sizeof(float));
        if (!delta)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ void *packed = NULL;
        const void *body;
        size_t body_size, max_raw;
        upd_info info, peek;
        char err[256];
        int r;

        if (size < 1 || size > 1024 * 1024)
                return -1;
        uint8_t mode = data[0];
        data++, size--;

        if (mode & 1) {
                size_t cap = ZSTD_compressBound(size);
                packed = malloc(cap);
                if (!packed)
                        abort();
                body_size = ZSTD_compress(packed, cap, data, size, 1);
                if (ZSTD_isError(body_size))
                        abort();
                body = packed;
        } else {
                /* exactly size bytes, so ASan sees reads past the end */
                packed = malloc(size ? size : 1);
                if (!packed)
                        abort();
                memcpy(packed, data, size);
                body = packed, body_size = size;
        }
        switch ((mode >> 1) & 3) {
        case 0:
        case 1:
                max_raw = agg_max_raw_bytes(&lay);
                break;
        case 2:
                max_raw = 4096;
                break;
        default:
                max_raw = 0;
                break;
        }

        (void) upd_peek(body, body_size, &peek);
        err[0] = 0;
        r = upd_decode(body, body_size, &lay, max_raw, delta, &info, err, sizeof(err));
        if (verbose)
                fprintf(stderr, "upd_decode: %d %s\n", r, err);
        if (r < 0) {
                /* every failure names its reason */
                if (r != -EINVAL && r != -ENOMEM && err[0] == 0)
                        abort();
                return 0;
        }
        if (info.raw_size > max_raw || !isfinite(info.l2_norm) || info.l2_norm < 0 ||
            info.nonzero > lay.n_params || info.encoding >= _UPD_ENCODING_MAX)
                abort();
        for (size_t i = 0; i < lay.n_params; i++)
                if (!isfinite(delta[i]))
                        abort();
        /* what decodes also peeks, to the same header */
        if (upd_peek(body, body_size, &peek) < 0 || peek.encoding != info.encoding ||
            peek.base_version != info.base_version)
                abort();
        return 0;
}
