/* SPDX-License-Identifier: MIT */
/* Writes the generated seeds of fuzz/corpus (small valid inputs that are tedious to write
 * by hand): safetensors files and update bodies for the tiny layout. Deterministic; run by
 * "make fuzz-seeds", whose output is committed. Usage: gen-seeds <corpus-dir> */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zstd.h>

#include "checkpoint.h"
#include "safetensors.h"
#include "update-codec.h"

static int write_file(const char *dir, const char *name, uint8_t prefix, bool with_prefix,
                      const void *data, size_t size) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "we");
        if (!f)
                return -errno;
        if (with_prefix)
                fputc(prefix, f);
        fwrite(data, 1, size, f);
        if (fclose(f) != 0)
                return -errno;
        return 0;
}

/* A raw (uncompressed) body is the frame's content: decompress ours. */
static void *unzstd(const void *body, size_t size, size_t *ret_size) {
        unsigned long long n = ZSTD_getFrameContentSize(body, size);
        void *raw;

        if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN)
                return NULL;
        raw = malloc(n ? n : 1);
        if (!raw || ZSTD_isError(ZSTD_decompress(raw, n, body, size)))
                return NULL;
        *ret_size = n;
        return raw;
}

static int gen_safetensors(const char *corpus) {
        static const float w[6] = { 1, -2, 3.5f, 0, 1e-3f, -7 };
        static const int32_t idx[3] = { 7, 8, 9 };
        static const uint8_t bytes[5] = "abcde";
        const st_tensor t[] = {
                { .name = "w",
                  .dtype = ST_F32,
                  .ndim = 2,
                  .shape = { 2, 3 },
                  .data = w,
                  .nbytes = sizeof(w) },
                { .name = "idx",
                  .dtype = ST_I32,
                  .ndim = 1,
                  .shape = { 3 },
                  .data = idx,
                  .nbytes = sizeof(idx) },
                { .name = "b",
                  .dtype = ST_U8,
                  .ndim = 1,
                  .shape = { 5 },
                  .data = bytes,
                  .nbytes = sizeof(bytes) },
                { .name = "scalar", .dtype = ST_F32, .ndim = 0, .data = w, .nbytes = 4 },
        };
        const st_meta meta[] = { { "format", "edged-checkpoint-1" },
                                 { "step", "12" },
                                 { "config", "tiny" } };
        char path[1024];
        int r;

        snprintf(path, sizeof(path), "%.512s/safetensors/three.safetensors", corpus);
        if ((r = st_write(path, t, 4, meta, 3)) < 0)
                return r;
        snprintf(path, sizeof(path), "%.512s/safetensors/empty.safetensors", corpus);
        return st_write(path, NULL, 0, NULL, 0);
}

/* A whole checkpoint, sums included, small enough for the fuzzer's input cap: the micro
 * model fuzz-safetensors loads it into. */
static int gen_checkpoint(const char *corpus) {
        const model_config cfg = {
                .name = "custom", .block_size = 8, .n_embd = 8, .n_layer = 1, .n_head = 2
        };
        const ckpt_state st = { .step = 3, .data_cursor = 42, .model_version = 0 };
        adamw_hparams hp;
        adamw_state opt;
        model *m = NULL;
        char path[1024];
        int r;

        adamw_hparams_default(&hp);
        if ((r = model_new(&cfg, 1, 1, &m)) < 0 ||
            (r = adamw_new(m->layout.n_params, &hp, &opt)) < 0)
                return r;
        for (size_t i = 0; i < m->layout.n_params; i++) {
                m->params[i] = (float) ((int) (i % 17) - 8) * 0.01f;
                opt.m[i] = m->params[i] * 0.1f;
                opt.v[i] = m->params[i] * m->params[i];
        }
        opt.t = 3;
        snprintf(path, sizeof(path), "%.512s/safetensors/checkpoint.safetensors", corpus);
        r = ckpt_save(path, m, &opt, &st);
        adamw_free(&opt);
        model_free(m);
        return r;
}

int main(int argc, char **argv) {
        model_config cfg;
        model_layout lay;
        float *delta;
        void *body, *raw;
        size_t size, raw_size;
        upd_info info;
        char dir[512];
        int r;

        if (argc != 2) {
                fprintf(stderr, "usage: %s <corpus-dir>\n", argv[0]);
                return 2;
        }
        snprintf(dir, sizeof(dir), "%s/update", argv[1]);
        if (gen_safetensors(argv[1]) < 0 || gen_checkpoint(argv[1]) < 0) {
                fprintf(stderr, "gen-seeds: safetensors failed\n");
                return 1;
        }
        model_config_by_name("tiny", &cfg);
        model_layout_init(&lay, &cfg);
        delta = calloc(lay.n_params, sizeof(float));
        if (!delta)
                return 1;
        /* a sparse, deterministic delta: a few hundred entries of varied size and sign */
        for (size_t i = 0; i < lay.n_params; i += 997)
                delta[i] = (float) ((int) (i % 13) - 6) * 0.01f;

        /* top-k at 1/2000: about 200 entries, a few KB; also kept raw (mode byte 1) */
        r = upd_encode(UPD_TOPK, 3, &lay, delta, 0.0005f, NULL, &body, &size, &info);
        if (r < 0 || write_file(dir, "topk.zst", 0, true, body, size) < 0)
                return 1;
        raw = unzstd(body, size, &raw_size);
        if (!raw || write_file(dir, "topk.raw", 1, true, raw, raw_size) < 0)
                return 1;
        free(raw);
        free(body);
        r = upd_encode(UPD_TOPK, 0, &lay, delta, 0.00001f, NULL, &body, &size, &info);
        if (r < 0 || write_file(dir, "topk-small.zst", 0, true, body, size) < 0)
                return 1;
        raw = unzstd(body, size, &raw_size);
        if (!raw || write_file(dir, "topk-small.raw", 1, true, raw, raw_size) < 0)
                return 1;
        free(raw);
        free(body);
        /* dense encodings of a mostly-zero delta compress to little */
        memset(delta, 0, lay.n_params * sizeof(float));
        delta[5] = 0.5f;
        r = upd_encode(UPD_INT8, 7, &lay, delta, 0, NULL, &body, &size, &info);
        if (r < 0 || write_file(dir, "int8.zst", 0, true, body, size) < 0)
                return 1;
        free(body);
        r = upd_encode(UPD_FP32, 1, &lay, delta, 0, NULL, &body, &size, &info);
        if (r < 0 || write_file(dir, "fp32.zst", 0, true, body, size) < 0)
                return 1;
        free(body);
        free(delta);
        return 0;
}
