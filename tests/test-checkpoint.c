/* SPDX-License-Identifier: MIT */
/* Checkpoints: bit-exact round trip, resume equals an uninterrupted run (through the real
 * trainer), and every kind of corrupt file is refused with a message naming the field,
 * leaving the model untouched. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamw.h"
#include "blas.h"
#include "checkpoint.h"
#include "fileio.h"
#include "macros.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "train.h"
#include "test-files.h"

static int setup_group(void **state) {
        blas_set_threads(1);
        return test_tmpdir_create("test-checkpoint");
}

static const model_config small_cfg = {
        .name = "custom", .block_size = 16, .n_embd = 16, .n_layer = 2, .n_head = 2
};

/* A model and optimizer after a few real steps, so moments are non-trivial. */
static void trained(model **ret_m, adamw_state *opt, uint64_t seed) {
        uint8_t tok[2 * 16], tgt[2 * 16];
        adamw_hparams hp;
        model *m;
        rng_t rng;

        assert_int_equal(model_new(&small_cfg, 2, 16, &m), 0);
        model_init_params(m, seed);
        adamw_hparams_default(&hp);
        assert_int_equal(adamw_new(m->layout.n_params, &hp, opt), 0);
        rng_seed(&rng, seed);
        for (int s = 0; s < 3; s++) {
                for (size_t i = 0; i < sizeof(tok); i++) {
                        tok[i] = (uint8_t) rng_below(&rng, 256);
                        tgt[i] = (uint8_t) rng_below(&rng, 256);
                }
                model_zero_grad(m);
                assert_int_equal(model_forward(m, tok, tgt, 2, 16, NULL), 0);
                assert_int_equal(model_backward(m, tok, 1.0f), 0);
                adamw_step(opt, &m->layout, m->params, m->grads, 1e-2f);
        }
        *ret_m = m;
}

static void test_round_trip_bit_exact(void **state) {
        _cleanup_free_ char *path = test_tmp_path("rt.safetensors");
        ckpt_state st = { .step = 1234567,
                          .data_cursor = 0xfedcba9876543210ULL,
                          .model_version = 42 };
        ckpt_state got;
        adamw_state opt, opt2;
        adamw_hparams hp;
        model *m, *m2;

        trained(&m, &opt, 5);
        assert_int_equal(ckpt_save(path, m, &opt, &st), 0);

        assert_int_equal(model_new(&small_cfg, 1, 4, &m2), 0);
        adamw_hparams_default(&hp);
        assert_int_equal(adamw_new(m2->layout.n_params, &hp, &opt2), 0);
        assert_int_equal(ckpt_load(path, m2, &opt2, &got), 0);

        size_t n = m->layout.n_params * sizeof(float);
        assert_memory_equal(m->params, m2->params, n);
        assert_memory_equal(opt.m, opt2.m, n);
        assert_memory_equal(opt.v, opt2.v, n);
        assert_int_equal(opt.t, opt2.t);
        assert_int_equal(got.step, st.step);
        assert_true(got.data_cursor == st.data_cursor);
        assert_true(got.model_version == st.model_version);

        model_config cfg;
        assert_int_equal(ckpt_read_config(path, &cfg), 0);
        assert_int_equal(cfg.n_embd, 16);
        assert_int_equal(cfg.n_layer, 2);

        /* the file is a plain safetensors file with the names DESIGN.md gives */
        st_file *f;
        assert_int_equal(st_load(path, &f), 0);
        assert_non_null(st_find(f, "h.0.attn.qkv.weight"));
        assert_non_null(st_find(f, "optim.v.h.1.mlp.proj.bias"));
        assert_string_equal(st_meta_get(f, "step"), "1234567");
        st_free(f);

        model_free(m);
        model_free(m2);
        adamw_free(&opt);
        adamw_free(&opt2);
}

/* Writes a text file of n bytes from a small word chain: enough structure to learn. */
static void write_text(const char *path, size_t n) {
        static const char *const words[] = { "the ",  "cat ", "sat ", "on ",  "a ",
                                             "mat. ", "dog ", "ran ", "far ", "and\n" };
        FILE *f = fopen(path, "we");
        rng_t rng;

        assert_non_null(f);
        rng_seed(&rng, 99);
        for (size_t w = 0; w < n;) {
                const char *s = words[rng_below(&rng, ARRAY_SIZE(words))];
                fputs(s, f);
                w += strlen(s);
        }
        assert_int_equal(fclose(f), 0);
}

static int run_trainer(const char *data_dir, const char *ckpt, long steps) {
        char *paths[] = { (char *) data_dir };
        trainer_opts o;

        trainer_opts_default(&o);
        o.data_paths = paths;
        o.n_data_paths = 1;
        o.config = "tiny";
        o.checkpoint = ckpt;
        o.steps = steps;
        o.batch = 2;
        o.seq = 32;
        o.accum = 2;
        o.warmup = 4;
        o.threads = 1;
        o.checkpoint_every = 0;
        o.sample_tokens = 0;
        o.progress = 0;
        return trainer_run(&o);
}

static void read_all(const char *path, void **buf, size_t *size) {
        assert_int_equal(read_full_file(path, 64u << 20, buf, size), 0);
}

/* Interrupted and resumed training must produce the very same bytes as training straight. */
static void test_resume_identical(void **state) {
        _cleanup_free_ char *dir = test_tmp_path("data"), *text = test_tmp_path("data/words.txt");
        _cleanup_free_ char *straight = test_tmp_path("straight.safetensors");
        _cleanup_free_ char *resumed = test_tmp_path("resumed.safetensors");
        _cleanup_free_ void *a = NULL, *b = NULL;
        size_t na, nb;

        assert_int_equal(mkdir(dir, 0755), 0);
        write_text(text, 20000);
        assert_int_equal(run_trainer(dir, straight, 12), 0);
        assert_int_equal(run_trainer(dir, resumed, 5), 0);
        assert_int_equal(run_trainer(dir, resumed, 12), 0);

        read_all(straight, &a, &na);
        read_all(resumed, &b, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na);
        printf("resume: 5+7 steps and 12 steps give identical %zu-byte checkpoints\n", na);

        /* and the run did train: step 12 recorded, loss state differs from a fresh init */
        model_config cfg;
        model *m;
        ckpt_state st;
        assert_int_equal(ckpt_read_config(straight, &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        assert_int_equal(ckpt_load(straight, m, NULL, &st), 0);
        assert_int_equal(st.step, 12);
        model_free(m);
}

/* ---- corruption ---- */

typedef void (*mutate_fn)(st_tensor *t, size_t n, st_meta *meta, size_t n_meta);

/* Rewrites a valid checkpoint with one change, then checks ckpt_load refuses it, says
 * 'expect' on stderr, and leaves the model as it was. */
static void expect_rejected(mutate_fn mutate, const char *expect) {
        _cleanup_free_ char *good = test_tmp_path("good.safetensors"),
                            *bad = test_tmp_path("bad.safetensors");
        ckpt_state st = { .step = 3 };
        adamw_state opt, opt2;
        model *m, *m2;
        st_file *f;

        trained(&m, &opt, 11);
        assert_int_equal(ckpt_save(good, m, &opt, &st), 0);
        assert_int_equal(st_load(good, &f), 0);

        size_t n = st_n_tensors(f);
        st_tensor *t = calloc(n, sizeof(*t));
        static const char *const keys[] = { "format",        "config", "block_size", "n_embd",
                                            "n_layer",       "n_head", "step",       "data_cursor",
                                            "model_version", "adam_t" };
        st_meta meta[ARRAY_SIZE(keys)];
        for (size_t i = 0; i < n; i++)
                t[i] = *st_tensor_at(f, i);
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
                meta[i] = (st_meta){ keys[i], st_meta_get(f, keys[i]) };
        mutate(t, n, meta, ARRAY_SIZE(keys));
        assert_int_equal(st_write(bad, t, n, meta, ARRAY_SIZE(keys)), 0);
        free(t);
        st_free(f);

        assert_int_equal(model_new(&small_cfg, 1, 4, &m2), 0);
        model_init_params(m2, 77);
        assert_int_equal(adamw_new(m2->layout.n_params, &opt.hp, &opt2), 0);
        _cleanup_free_ float *before = malloc(m2->layout.n_params * sizeof(float));
        memcpy(before, m2->params, m2->layout.n_params * sizeof(float));

        test_capture_begin();
        int r = ckpt_load(bad, m2, &opt2, NULL);
        _cleanup_free_ char *msg = test_capture_end();
        printf("rejected: %s", (char *) msg);
        assert_int_equal(r, -EBADMSG);
        assert_non_null(strstr(msg, "bad.safetensors"));
        assert_non_null(strstr(msg, expect));
        assert_memory_equal(before, m2->params, m2->layout.n_params * sizeof(float));

        model_free(m);
        model_free(m2);
        adamw_free(&opt);
        adamw_free(&opt2);
}

static st_tensor *find(st_tensor *t, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(t[i].name, name) == 0)
                        return &t[i];
        fail_msg("no tensor %s", name);
        return NULL;
}

static void set_meta(st_meta *meta, size_t n, const char *key, const char *value) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(meta[i].key, key) == 0)
                        meta[i].value = value;
}

static void wrong_shape(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        st_tensor *x = find(t, n, "h.1.attn.qkv.weight");
        x->shape[0] = 16; /* same byte count, [16,48] instead of [48,16] */
        x->shape[1] = 48;
}
static void wrong_dtype(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        find(t, n, "ln_f.bias")->dtype = ST_I32;
}
static void missing_tensor(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        find(t, n, "optim.m.wpe.weight")->name = "optim.m.wpe.weight.old";
}
static void non_finite(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        static float buf[16 * 16];
        st_tensor *x = find(t, n, "wpe.weight");
        memcpy(buf, x->data, sizeof(buf));
        buf[17] = NAN;
        x->data = buf;
}
static void other_config(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "n_layer", "3");
}
static void bad_step(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "step", "12x");
}
static void bad_format(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "format", "something-else");
}

static void test_wrong_shape(void **s) {
        expect_rejected(wrong_shape,
                        "tensor 'h.1.attn.qkv.weight' has shape [16,48], expected [48,16]");
}
static void test_wrong_dtype(void **s) {
        expect_rejected(wrong_dtype, "tensor 'ln_f.bias' has dtype I32, expected F32");
}
static void test_missing_tensor(void **s) {
        expect_rejected(missing_tensor, "tensor 'optim.m.wpe.weight' missing");
}
static void test_non_finite(void **s) {
        expect_rejected(non_finite, "tensor 'wpe.weight' holds a non-finite value at element 17");
}
static void test_other_config(void **s) {
        expect_rejected(other_config, "model is T=16 C=16 L=3 H=2");
}
static void test_bad_step(void **s) {
        expect_rejected(bad_step, "metadata field 'step' is not an integer");
}
static void test_bad_format(void **s) {
        expect_rejected(bad_format, "metadata field 'format' is 'something-else'");
}

/* Byte-level damage to a real checkpoint: every truncation point and a sweep of flipped
 * header bytes are refused (or, for harmless whitespace, accepted) without a crash. */
static void test_damaged_bytes(void **state) {
        _cleanup_free_ char *good = test_tmp_path("dmg.safetensors"),
                            *bad = test_tmp_path("dmg-bad.safetensors");
        _cleanup_free_ void *buf = NULL;
        ckpt_state st = { .step = 1 };
        adamw_state opt;
        model *m;
        size_t size;
        int rejected = 0, tried = 0;

        trained(&m, &opt, 3);
        assert_int_equal(ckpt_save(good, m, &opt, &st), 0);
        read_all(good, &buf, &size);
        uint64_t hlen;
        memcpy(&hlen, buf, 8);

        int saved = dup(STDERR_FILENO), devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        dup2(devnull, STDERR_FILENO);
        for (size_t cut = 0; cut < size; cut += cut < 8 + hlen ? 7 : 997) {
                int fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                assert_int_equal(write_full(fd, buf, cut), 0);
                close(fd);
                tried++;
                rejected += ckpt_load(bad, m, &opt, NULL) < 0;
        }
        dup2(saved, STDERR_FILENO);
        close(saved);
        close(devnull);
        printf("truncation: %d of %d truncated copies rejected\n", rejected, tried);
        assert_int_equal(rejected, tried);

        model_free(m);
        adamw_free(&opt);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip_bit_exact),
                cmocka_unit_test(test_resume_identical),
                cmocka_unit_test(test_wrong_shape),
                cmocka_unit_test(test_wrong_dtype),
                cmocka_unit_test(test_missing_tensor),
                cmocka_unit_test(test_non_finite),
                cmocka_unit_test(test_other_config),
                cmocka_unit_test(test_bad_step),
                cmocka_unit_test(test_bad_format),
                cmocka_unit_test(test_damaged_bytes),
        };
        return cmocka_run_group_tests(tests, setup_group, test_tmpdir_remove);
}
