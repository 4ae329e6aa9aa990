/* SPDX-License-Identifier: MIT */
/* safetensors: st_parse on the raw bytes, every accessor on what it accepts (reading each
 * tensor's data, which must lie inside the buffer), then the checkpoint readers on the same
 * bytes as a file (a memfd), against a tiny model and a micro one (T=8 C=8 L=1 H=2): a
 * whole micro checkpoint fits the input cap, so the checksum and value checks are reached
 * (fuzz/gen-seeds.c writes one). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "fuzz-util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static model *tiny, *micro;
static adamw_state opt, micro_opt;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        model_config cfg;
        adamw_hparams hp;

        fuzz_quiet();
        if (model_config_by_name("tiny", &cfg) < 0 || model_new(&cfg, 1, 1, &tiny) < 0)
                abort();
        adamw_hparams_default(&hp);
        if (adamw_new(tiny->layout.n_params, &hp, &opt) < 0)
                abort();
        cfg = (model_config){
                .name = "custom", .block_size = 8, .n_embd = 8, .n_layer = 1, .n_head = 2
        };
        if (model_new(&cfg, 1, 1, &micro) < 0 ||
            adamw_new(micro->layout.n_params, &hp, &micro_opt) < 0)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        st_file *f = NULL;
        char path[32];

        if (size > 1024 * 1024)
                return -1;
        /* A copy of exactly size bytes, so ASan sees any read past the end. */
        uint8_t *buf = malloc(size ? size : 1);
        if (!buf)
                abort();
        memcpy(buf, data, size);
        if (st_parse(buf, size, "fuzz", &f) >= 0) {
                uint64_t sum = 0;

                for (size_t i = 0; i < st_n_tensors(f); i++) {
                        const st_tensor *t = st_tensor_at(f, i);
                        const uint8_t *p = t->data;

                        if (st_find(f, t->name) == NULL)
                                abort();
                        for (uint64_t k = 0; k < t->nbytes; k++)
                                sum += p[k];
                }
                (void) st_meta_get(f, "format");
                (void) st_source(f);
                /* keep the loop */
                if (sum == 0x5a5a5a5a5a5a5a5aull)
                        (void) st_n_tensors(f);
                st_free(f);
        }

        int fd = fuzz_memfd(data, size, path);
        model_config cfg;
        ckpt_state st;
        long step;
        (void) ckpt_read_config(path, &cfg);
        (void) ckpt_read_step(path, &step);
        (void) ckpt_load(path, tiny, &opt, &st);
        (void) ckpt_load(path, micro, &micro_opt, &st);
        close(fd);
        free(buf);
        return 0;
}
