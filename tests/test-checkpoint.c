/* SPDX-License-Identifier: MIT */
/* Checkpoints: bit-exact round trip, resume equals an uninterrupted run (through the real
 * trainer), every kind of corrupt file is refused with a message naming the field, leaving
 * the model untouched, and a sweep of flipped bits over the header and the data never loads
 * different weights. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adamw.h"
#include "blas.h"
#include "checkpoint.h"
#include "fileio.h"
#include "hash.h"
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
        /* data_sha256 is what sha256sum says of the bytes after the header */
        _cleanup_free_ void *buf = NULL;
        char want[HASH_SHA256_HEX];
        uint64_t hlen;
        size_t size;
        assert_int_equal(read_full_file(path, 64u << 20, &buf, &size), 0);
        memcpy(&hlen, buf, 8);
        hash_sha256_hex((const char *) buf + 8 + hlen, size - 8 - hlen, want);
        assert_string_equal(st_meta_get(f, "data_sha256"), want);
        assert_int_equal(strlen(st_meta_get(f, "meta_sha256")), HASH_SHA256_HEX - 1);
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
        _cleanup_free_ char *log_straight = NULL, *log_first = NULL, *log_second = NULL;
        _cleanup_free_ void *a = NULL, *b = NULL;
        char line[512];
        long step5 = -1;
        size_t na, nb;

        assert_int_equal(mkdir(dir, 0755), 0);
        write_text(text, 20000);
        test_capture_begin();
        int r = run_trainer(dir, straight, 12);
        log_straight = test_capture_end();
        assert_int_equal(r, 0);
        test_capture_begin();
        r = run_trainer(dir, resumed, 5);
        log_first = test_capture_end();
        assert_int_equal(r, 0);
        assert_int_equal(ckpt_read_step(resumed, &step5), 0);
        assert_int_equal(step5, 5);
        test_capture_begin();
        r = run_trainer(dir, resumed, 12);
        log_second = test_capture_end();
        assert_int_equal(r, 0);

        /* the same bytes would come from a second run that ignored the file and trained 12
         * steps afresh: its log must say it resumed at step 5 and show only steps 6..12 */
        snprintf(line, sizeof(line), "resuming from %s at step 5\n", resumed);
        assert_null(strstr(log_straight, "resuming from"));
        assert_null(strstr(log_first, "resuming from"));
        assert_non_null(strstr(log_second, line));
        for (int s = 1; s <= 12; s++) {
                char want[32];
                snprintf(want, sizeof(want), "step %d/12 ", s);
                assert_non_null(strstr(log_straight, want));
                if (s <= 5)
                        assert_null(strstr(log_second, want));
                else
                        assert_non_null(strstr(log_second, want));
        }
        printf("resume: the first run saved step %ld; the second logged \"%.*s\" and trained "
               "steps 6..12 only\n",
               step5, (int) strcspn(line, "\n"), line);

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
 * 'expect' on stderr, and leaves the model as it was. Without with_sums the copy has no
 * checksums, as files from before them: the other checks must hold on their own. A meta
 * value set to NULL drops the field. */
static void expect_rejected_sums(mutate_fn mutate, const char *expect, bool with_sums) {
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
        static const char *const keys[] = {
                "format", "config",      "block_size",    "n_embd", "n_layer",     "n_head",
                "step",   "data_cursor", "model_version", "adam_t", "data_sha256", "meta_sha256"
        };
        size_t n_keys = ARRAY_SIZE(keys) - (with_sums ? 0 : 2), n_kept = 0;
        st_meta meta[ARRAY_SIZE(keys)];
        for (size_t i = 0; i < n; i++)
                t[i] = *st_tensor_at(f, i);
        for (size_t i = 0; i < n_keys; i++)
                meta[i] = (st_meta){ keys[i], st_meta_get(f, keys[i]) };
        mutate(t, n, meta, n_keys);
        for (size_t i = 0; i < n_keys; i++)
                if (meta[i].value)
                        meta[n_kept++] = meta[i];
        assert_int_equal(st_write(bad, t, n, meta, n_kept), 0);
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

static void expect_rejected(mutate_fn mutate, const char *expect) {
        expect_rejected_sums(mutate, expect, false);
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
/* the lowest mantissa bit of one weight: finite, plausible, and wrong */
static void weight_lsb(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        static uint8_t buf[16 * 16 * 4];
        st_tensor *x = find(t, n, "optim.v.wpe.weight");
        memcpy(buf, x->data, sizeof(buf));
        buf[4 * 37] ^= 1;
        x->data = buf;
}
static void other_step(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "step", "4");
}
static void no_meta_sum(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "meta_sha256", NULL);
}
static void no_data_sum(st_tensor *t, size_t n, st_meta *m, size_t nm) {
        set_meta(m, nm, "data_sha256", NULL);
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
static void test_data_checksum(void **s) {
        expect_rejected_sums(weight_lsb, "data checksum does not match", true);
}
static void test_meta_checksum(void **s) {
        expect_rejected_sums(other_step, "metadata checksum does not match", true);
}
static void test_half_checksum(void **s) {
        expect_rejected_sums(no_meta_sum, "metadata field 'meta_sha256' missing", true);
        expect_rejected_sums(no_data_sum, "metadata field 'data_sha256' missing", true);
}

/* A file written before the checksums existed (same format string, neither field) still
 * loads, bit for bit: upgrading edged never discards training. */
static void test_old_file_loads(void **state) {
        _cleanup_free_ char *good = test_tmp_path("new.safetensors"),
                            *old = test_tmp_path("old.safetensors");
        ckpt_state st = { .step = 7, .data_cursor = 99, .model_version = 3 }, got;
        adamw_state opt, opt2;
        model *m, *m2;
        st_file *f;

        trained(&m, &opt, 13);
        assert_int_equal(ckpt_save(good, m, &opt, &st), 0);
        assert_int_equal(st_load(good, &f), 0);
        size_t n = st_n_tensors(f);
        _cleanup_free_ st_tensor *t = calloc(n, sizeof(*t));
        static const char *const keys[] = { "format",        "config", "block_size", "n_embd",
                                            "n_layer",       "n_head", "step",       "data_cursor",
                                            "model_version", "adam_t" };
        st_meta meta[ARRAY_SIZE(keys)];
        assert_non_null(t);
        for (size_t i = 0; i < n; i++)
                t[i] = *st_tensor_at(f, i);
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
                meta[i] = (st_meta){ keys[i], st_meta_get(f, keys[i]) };
        assert_int_equal(st_write(old, t, n, meta, ARRAY_SIZE(keys)), 0);
        st_free(f);

        assert_int_equal(model_new(&small_cfg, 1, 4, &m2), 0);
        assert_int_equal(adamw_new(m2->layout.n_params, &opt.hp, &opt2), 0);
        assert_int_equal(ckpt_load(old, m2, &opt2, &got), 0);
        size_t bytes = m->layout.n_params * sizeof(float);
        assert_memory_equal(m->params, m2->params, bytes);
        assert_memory_equal(opt.m, opt2.m, bytes);
        assert_memory_equal(opt.v, opt2.v, bytes);
        assert_int_equal(opt.t, opt2.t);
        assert_int_equal(got.step, 7);
        assert_true(got.data_cursor == 99 && got.model_version == 3);
        /* and its next save carries the sums */
        assert_int_equal(ckpt_save(old, m2, &opt2, &got), 0);
        assert_int_equal(st_load(old, &f), 0);
        assert_non_null(st_meta_get(f, "data_sha256"));
        assert_non_null(st_meta_get(f, "meta_sha256"));
        st_free(f);
        printf("a checkpoint without checksums loads bit for bit; saved again, it has them\n");
        model_free(m);
        model_free(m2);
        adamw_free(&opt);
        adamw_free(&opt2);
}

/* ---- flipped bits ---- */

typedef struct {
        const char *path; /* the damaged copy, one flip at a time */
        int fd;
        model *m;
        adamw_state *opt;
        const model *want_m; /* what an accepted load must give */
        const adamw_state *want_opt;
        ckpt_state want_st;
        const float *sentinel; /* m's parameters before any load */
        size_t bytes;
} sweep;

typedef struct {
        long tried, refused, same, different, bad_message;
        char first_bad[256];
} sweep_count;

static void sweep_reset(const sweep *w) {
        memcpy(w->m->params, w->sentinel, w->bytes);
        memset(w->opt->m, 0, w->bytes);
        memset(w->opt->v, 0, w->bytes);
        w->opt->t = -1;
}

static bool sweep_untouched(const sweep *w, const ckpt_state *got) {
        for (size_t i = 0; i < w->bytes / sizeof(float); i++)
                if (w->opt->m[i] != 0.0f || w->opt->v[i] != 0.0f)
                        return false;
        return memcmp(w->m->params, w->sentinel, w->bytes) == 0 && w->opt->t == -1 &&
               got->step == -1;
}

static bool sweep_same(const sweep *w, const ckpt_state *got) {
        return memcmp(w->m->params, w->want_m->params, w->bytes) == 0 &&
               memcmp(w->opt->m, w->want_opt->m, w->bytes) == 0 &&
               memcmp(w->opt->v, w->want_opt->v, w->bytes) == 0 && w->opt->t == w->want_opt->t &&
               got->step == w->want_st.step && got->data_cursor == w->want_st.data_cursor &&
               got->model_version == w->want_st.model_version;
}

static void sweep_note(sweep_count *c, const char *fmt, ...) _printf_(2, 3);
static void sweep_note(sweep_count *c, const char *fmt, ...) {
        va_list ap;

        if (c->first_bad[0])
                return;
        va_start(ap, fmt);
        vsnprintf(c->first_bad, sizeof(c->first_bad), fmt, ap);
        va_end(ap);
}

/* XORs the byte at pos with x, loads the file, and puts the byte back. stderr is being
 * captured: a refusal must leave the model as it was and add a message naming the file
 * (and saying expect, when set); an accepted load must give exactly the saved state. */
static void sweep_one(const sweep *w, sweep_count *c, const uint8_t *orig, size_t pos, uint8_t x,
                      const char *expect) {
        uint8_t b = orig[pos] ^ x;
        ckpt_state got = { .step = -1 };
        char msg[512] = "";
        long before, end;
        int r;

        fflush(stderr);
        before = lseek(fileno(test_capture_file), 0, SEEK_END);
        assert_int_equal(pwrite(w->fd, &b, 1, (off_t) pos), 1);
        r = ckpt_load(w->path, w->m, w->opt, &got);
        assert_int_equal(pwrite(w->fd, &orig[pos], 1, (off_t) pos), 1);
        c->tried++;
        if (r >= 0) {
                if (sweep_same(w, &got))
                        c->same++;
                else {
                        c->different++;
                        sweep_note(c, "byte %zu ^ 0x%02x loaded a different state", pos, x);
                }
                sweep_reset(w);
                return;
        }
        c->refused++;
        if (!sweep_untouched(w, &got)) {
                c->different++;
                sweep_note(c, "byte %zu ^ 0x%02x was refused but changed the model", pos, x);
        }
        fflush(stderr);
        end = lseek(fileno(test_capture_file), 0, SEEK_END);
        if (end > before) {
                size_t n = (size_t) MIN(end - before, (long) sizeof(msg) - 1);
                assert_int_equal(pread(fileno(test_capture_file), msg, n, before), (ssize_t) n);
                msg[n] = 0;
        }
        if (!strstr(msg, w->path) || (expect && !strstr(msg, expect))) {
                c->bad_message++;
                sweep_note(c, "byte %zu ^ 0x%02x refused with '%.*s'", pos, x,
                           (int) strcspn(msg, "\n"), msg);
        }
        sweep_reset(w);
}

/* Single flipped bits and bytes. Header: every byte (the length field included) with each
 * of its 8 bits and with all 8. Data: the first and last byte of every tensor (so both
 * moments of every view), every bit of the section's first and last byte, and one byte in
 * 53 with a bit chosen by its position. A header flip may be refused or load the very same
 * state; a data flip must be refused as a checksum mismatch. None may load anything else. */
static void test_flip_sweep(void **state) {
        _cleanup_free_ char *good = test_tmp_path("flip.safetensors"),
                            *bad = test_tmp_path("flip-bad.safetensors");
        _cleanup_free_ uint8_t *buf = NULL;
        static const char *const data_msg = "data checksum does not match";
        ckpt_state st = { .step = 21, .data_cursor = 0x1234567, .model_version = 6 };
        sweep_count hc = { 0 }, dc = { 0 };
        adamw_state opt, opt2;
        model *m, *m2;
        size_t size, data;
        uint64_t hlen;
        st_file *f;

        trained(&m, &opt, 17);
        assert_int_equal(ckpt_save(good, m, &opt, &st), 0);
        read_all(good, (void **) &buf, &size);
        memcpy(&hlen, buf, 8);
        data = 8 + hlen;
        assert_true(data < size);
        int fd = open(bad, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write_full(fd, buf, size), 0);

        assert_int_equal(model_new(&small_cfg, 1, 4, &m2), 0);
        model_init_params(m2, 77);
        assert_int_equal(adamw_new(m2->layout.n_params, &opt.hp, &opt2), 0);
        size_t bytes = m2->layout.n_params * sizeof(float);
        _cleanup_free_ float *sentinel = malloc(bytes);
        assert_non_null(sentinel);
        memcpy(sentinel, m2->params, bytes);
        const sweep w = { .path = bad,
                          .fd = fd,
                          .m = m2,
                          .opt = &opt2,
                          .want_m = m,
                          .want_opt = &opt,
                          .want_st = st,
                          .sentinel = sentinel,
                          .bytes = bytes };
        sweep_reset(&w);

        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        test_capture_begin();
        for (size_t pos = 0; pos < data; pos++) {
                for (int bit = 0; bit < 8; bit++)
                        sweep_one(&w, &hc, buf, pos, (uint8_t) (1u << bit), NULL);
                sweep_one(&w, &hc, buf, pos, 0xff, NULL);
        }
        assert_int_equal(st_parse(buf, size, "flip", &f), 0);
        for (size_t i = 0; i < st_n_tensors(f); i++) {
                const st_tensor *t = st_tensor_at(f, i);
                size_t at = (size_t) ((const uint8_t *) t->data - buf);
                sweep_one(&w, &dc, buf, at, (uint8_t) (1u << (i % 8)), data_msg);
                sweep_one(&w, &dc, buf, at + t->nbytes - 1, 0x80, data_msg); /* a sign */
        }
        st_free(f);
        for (int bit = 0; bit < 8; bit++) {
                sweep_one(&w, &dc, buf, data, (uint8_t) (1u << bit), data_msg);
                sweep_one(&w, &dc, buf, size - 1, (uint8_t) (1u << bit), data_msg);
        }
        for (size_t pos = data + 1; pos < size - 1; pos += 53)
                sweep_one(&w, &dc, buf, pos, (uint8_t) (1u << (pos % 8)), data_msg);
        _cleanup_free_ char *log = test_capture_end();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        close(fd);

        printf("header (%zu bytes): %ld flips: %ld refused, %ld loaded the same state, %ld "
               "anything else\n",
               data, hc.tried, hc.refused, hc.same, hc.different);
        printf("data (%zu bytes): %ld flips: %ld refused as a checksum mismatch, %ld anything "
               "else\n",
               size - data, dc.tried, dc.refused - dc.bad_message, dc.tried - dc.refused);
        printf("%ld loads in %.1f s\n", hc.tried + dc.tried,
               (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        if (hc.first_bad[0] || dc.first_bad[0])
                fail_msg("%s", hc.first_bad[0] ? hc.first_bad : dc.first_bad);
        assert_int_equal(hc.tried, 9 * (long) data);
        assert_int_equal(hc.refused + hc.same, hc.tried);
        assert_int_equal(dc.refused, dc.tried);
        assert_true(dc.tried > 1000);

        model_free(m);
        model_free(m2);
        adamw_free(&opt);
        adamw_free(&opt2);
}

/* Byte-level damage to a real checkpoint: every truncation point is refused without a
 * crash. */
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
                cmocka_unit_test(test_data_checksum),
                cmocka_unit_test(test_meta_checksum),
                cmocka_unit_test(test_half_checksum),
                cmocka_unit_test(test_old_file_loads),
                cmocka_unit_test(test_flip_sweep),
                cmocka_unit_test(test_damaged_bytes),
        };
        return test_run_group("test-checkpoint", tests, setup_group, test_tmpdir_remove);
}
