/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"
#include "safetensors.h"
#include "test-files.h"

static int setup_group(void **state) {
        return test_tmpdir_create("test-safetensors");
}

/* Number of entries in dir (without . and ..); names concatenated into *names if given. */
static int count_entries(const char *dir, char *names, size_t size) {
        DIR *d = opendir(dir);
        struct dirent *de;
        int n = 0;

        if (!d)
                return -errno;
        if (names)
                names[0] = 0;
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                n++;
                if (names) {
                        strncat(names, de->d_name, size - strlen(names) - 2);
                        strcat(names, " ");
                }
        }
        closedir(d);
        return n;
}

static unsigned count_lines(const char *s) {
        unsigned n = 0;
        for (; *s; s++)
                n += *s == '\n';
        return n;
}

/* Asserts exactly one log line, starting with "<what>: " and containing substr. */
static void assert_one_error(const char *log, const char *what, const char *substr) {
        if (count_lines(log) != 1 || strncmp(log, what, strlen(what)) != 0 ||
            log[strlen(what)] != ':' || !strstr(log, substr))
                fail_msg("expected one error line from '%s' containing \"%s\", got \"%s\"", what,
                         substr, log);
        assert_true(log[strlen(log) - 1] == '\n');
}

/* ---- building files by hand ------------------------------------------------------ */

/* 8-byte LE header length (given explicitly), header text, data bytes. */
static uint8_t *make_raw(uint64_t header_len_field, const char *json, const void *data,
                         size_t data_len, size_t *ret_size) {
        size_t jl = strlen(json);
        uint8_t *b = malloc(8 + jl + data_len + 1);

        assert_non_null(b);
        for (int i = 0; i < 8; i++)
                b[i] = (uint8_t) (header_len_field >> (8 * i));
        memcpy(b + 8, json, jl);
        if (data_len)
                memcpy(b + 8 + jl, data, data_len);
        *ret_size = 8 + jl + data_len;
        return b;
}

static uint8_t *make_st(const char *json, const void *data, size_t data_len, size_t *ret_size) {
        return make_raw(strlen(json), json, data, data_len, ret_size);
}

static void expect_bad(const void *buf, size_t size, const char *substr) {
        _cleanup_free_ char *log = NULL;
        st_file *f = NULL;
        int r;

        test_capture_begin();
        r = st_parse(buf, size, "bad.st", &f);
        log = test_capture_end();
        if (r != -EBADMSG)
                fail_msg("expected -EBADMSG for \"%s\", got %d (log \"%s\")", substr, r, log);
        assert_null(f);
        assert_one_error(log, "bad.st", substr);
}

static void expect_bad_json(const char *json, size_t data_len, const char *substr) {
        uint8_t zeros[64] = { 0 };
        size_t size;
        _cleanup_free_ uint8_t *b = NULL;

        assert_true(data_len <= sizeof zeros);
        b = make_st(json, zeros, data_len, &size);
        expect_bad(b, size, substr);
}

/* ---- tests ----------------------------------------------------------------------- */

static void test_dtypes(void **state) {
        assert_int_equal(st_dtype_size(ST_F32), 4);
        assert_int_equal(st_dtype_size(ST_I32), 4);
        assert_int_equal(st_dtype_size(ST_I64), 8);
        assert_int_equal(st_dtype_size(ST_U8), 1);
        assert_int_equal(st_dtype_size(_ST_DTYPE_MAX), 0);
        assert_string_equal(st_dtype_name(ST_F32), "F32");
        assert_string_equal(st_dtype_name(ST_I32), "I32");
        assert_string_equal(st_dtype_name(ST_I64), "I64");
        assert_string_equal(st_dtype_name(ST_U8), "U8");
        assert_null(st_dtype_name(_ST_DTYPE_MAX));
        assert_null(st_dtype_name((st_dtype) -1));
}

static uint32_t f32_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

static void check_same(const st_file *f, const st_tensor *want, size_t n) {
        assert_int_equal(st_n_tensors(f), n);
        for (size_t i = 0; i < n; i++) {
                const st_tensor *t = st_tensor_at(f, i);
                assert_non_null(t);
                assert_string_equal(t->name, want[i].name); /* file order = write order */
                assert_int_equal(t->dtype, want[i].dtype);
                assert_int_equal(t->ndim, want[i].ndim);
                for (unsigned d = 0; d < t->ndim; d++)
                        assert_int_equal(t->shape[d], want[i].shape[d]);
                assert_int_equal(t->nbytes, want[i].nbytes);
                if (t->nbytes)
                        assert_memory_equal(t->data, want[i].data, t->nbytes);
                assert_ptr_equal(st_find(f, want[i].name), t);
        }
        assert_null(st_tensor_at(f, n));
        assert_null(st_find(f, "nope"));
        assert_null(st_find(f, ""));
}

static void test_roundtrip(void **state) {
        float f1[6] = { 1.0f, -0.0f, INFINITY, -INFINITY, 1e-45f, 3.14159265f };
        uint32_t nan_bits = 0x7fc01234u; /* NaN with a payload must survive bit-exactly */
        float scalar;
        int32_t i1[5] = { INT32_MIN, -1, 0, 1, INT32_MAX };
        int64_t l1[4] = { INT64_MIN, -1, 0x0102030405060708LL, INT64_MAX };
        uint8_t u1[7] = { 0, 1, 2, 127, 128, 254, 255 };
        uint8_t u8d[2] = { 42, 43 };
        float after_u8[3] = { -1.5f, 2.5f, 1e30f };
        float empty_unused = 0;

        memcpy(&scalar, &nan_bits, 4);
        st_tensor t[] = {
                { .name = "h.0.attn.qkv.weight",
                  .dtype = ST_F32,
                  .ndim = 2,
                  .shape = { 2, 3 },
                  .data = f1,
                  .nbytes = 24 },
                { .name = "scalar", .dtype = ST_F32, .ndim = 0, .data = &scalar, .nbytes = 4 },
                { .name = "ints",
                  .dtype = ST_I32,
                  .ndim = 1,
                  .shape = { 5 },
                  .data = i1,
                  .nbytes = 20 },
                { .name = "longs",
                  .dtype = ST_I64,
                  .ndim = 2,
                  .shape = { 2, 2 },
                  .data = l1,
                  .nbytes = 32 },
                { .name = "bytes",
                  .dtype = ST_U8,
                  .ndim = 1,
                  .shape = { 7 },
                  .data = u1,
                  .nbytes = 7 },
                { .name = "empty",
                  .dtype = ST_F32,
                  .ndim = 2,
                  .shape = { 0, 4 },
                  .data = &empty_unused,
                  .nbytes = 0 },
                { .name = "eight.dims",
                  .dtype = ST_U8,
                  .ndim = 8,
                  .shape = { 1, 1, 1, 2, 1, 1, 1, 1 },
                  .data = u8d,
                  .nbytes = 2 },
                { .name = "after_u8",
                  .dtype = ST_F32,
                  .ndim = 1,
                  .shape = { 3 },
                  .data = after_u8,
                  .nbytes = 12 },
                { .name = "a",
                  .dtype = ST_I32,
                  .ndim = 1,
                  .shape = { 1 },
                  .data = &i1[4],
                  .nbytes = 4 },
        };
        st_meta m[] = {
                { "step", "1234" },
                { "model", "small \"quoted\"\nnewline \xc3\xa9" },
                { "empty", "" },
        };
        _cleanup_free_ char *path = test_tmp_path("rt.safetensors");
        _cleanup_free_ char *dir = test_tmp_path("rt");
        _cleanup_free_ char *path2 = NULL;
        char names[512];
        struct stat st;
        st_file *f = NULL;

        assert_int_equal(mkdir(dir, 0755), 0);
        assert_true(asprintf(&path2, "%s/ckpt.safetensors", dir) > 0);

        assert_int_equal(st_write(path2, t, ARRAY_SIZE(t), m, ARRAY_SIZE(m)), 0);
        /* Exactly the target is left in the directory, with mode 0640 (a model can recite its private training text). */
        assert_int_equal(count_entries(dir, names, sizeof names), 1);
        assert_string_equal(names, "ckpt.safetensors ");
        assert_int_equal(stat(path2, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0640);

        assert_int_equal(st_load(path2, &f), 0);
        check_same(f, t, ARRAY_SIZE(t));
        assert_int_equal(f32_bits(*(const float *) st_find(f, "scalar")->data), nan_bits);
        assert_string_equal(st_meta_get(f, "step"), "1234");
        assert_string_equal(st_meta_get(f, "model"), m[1].value);
        assert_string_equal(st_meta_get(f, "empty"), "");
        assert_null(st_meta_get(f, "nope"));
        assert_string_equal(st_source(f), path2);

        /* Layout: header length a multiple of 8, so data is 8-byte aligned in the mapping,
         * and the file is exactly header + data. */
        const uint8_t *d0 = st_find(f, "h.0.attn.qkv.weight")->data;
        assert_int_equal((uintptr_t) d0 % 8, 0);
        uint64_t total = 0;
        for (size_t i = 0; i < ARRAY_SIZE(t); i++)
                total += t[i].nbytes;
        _cleanup_free_ uint8_t *raw = NULL;
        size_t raw_size;
        assert_int_equal(read_full_file(path2, SIZE_MAX, (void **) &raw, &raw_size), 0);
        assert_int_equal(raw_size, (size_t) st.st_size);
        uint64_t hl = 0;
        for (int i = 0; i < 8; i++)
                hl |= (uint64_t) raw[i] << (8 * i);
        assert_int_equal(hl % 8, 0);
        assert_int_equal(8 + hl + total, raw_size);
        assert_int_equal(raw[8], '{');
        assert_memory_equal(raw + 8 + hl, f1, 24); /* first tensor first */
        st_free(f);

        /* The same bytes parse from a caller buffer too. */
        f = NULL;
        assert_int_equal(st_parse(raw, raw_size, "mem", &f), 0);
        check_same(f, t, ARRAY_SIZE(t));
        assert_string_equal(st_source(f), "mem");
        st_free(f);

        /* Replacing an existing file (atomically) works and leaves no temp file. */
        st_tensor t2[] = { { .name = "only",
                             .dtype = ST_I64,
                             .ndim = 1,
                             .shape = { 1 },
                             .data = &l1[2],
                             .nbytes = 8 } };
        assert_int_equal(st_write(path2, t2, 1, NULL, 0), 0);
        assert_int_equal(count_entries(dir, NULL, 0), 1);
        f = NULL;
        assert_int_equal(st_load(path2, &f), 0);
        check_same(f, t2, 1);
        assert_null(st_meta_get(f, "step"));
        st_free(f);

        /* No tensors and no metadata: a valid (empty) file. */
        assert_int_equal(st_write(path, NULL, 0, NULL, 0), 0);
        f = NULL;
        assert_int_equal(st_load(path, &f), 0);
        assert_int_equal(st_n_tensors(f), 0);
        st_free(f);
        st_free(NULL);
}

/* A file assembled byte by byte, independently of st_write: header not padded (so data
 * starts at an odd offset), entries out of offset order, metadata in the middle. */
static void test_handmade(void **state) {
        static const char json[] =
                "{\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                "\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},"
                "\"a\":{\"data_offsets\":[0,4],\"shape\":[],\"dtype\":\"F32\"},"
                "\"c\":{\"dtype\":\"I64\",\"shape\":[1,1],\"data_offsets\":[12,20]},"
                "\"d\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[20,23]}}";
        static const uint8_t data[23] = {
                0x00, 0x00, 0xc0, 0x3f,                         /* a: 1.5f */
                0x07, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, /* b: 7, -2 */
                0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* c: 0x0102030405060708 */
                0x01, 0x02, 0xff,                               /* d: 1, 2, 255 */
        };
        size_t hl = sizeof json - 1, size = 8 + hl + sizeof data;
        _cleanup_free_ uint8_t *buf = malloc(size);
        st_file *f = NULL;
        const st_tensor *t;
        float fv;
        int32_t iv[2];
        int64_t lv;

        assert_true(hl % 8 != 0); /* exercise unaligned data */
        assert_true(hl < 65536);
        memset(buf, 0, 8);
        buf[0] = (uint8_t) hl;
        buf[1] = (uint8_t) (hl >> 8);
        memcpy(buf + 8, json, hl);
        memcpy(buf + 8 + hl, data, sizeof data);

        assert_int_equal(st_parse(buf, size, "hand", &f), 0);
        assert_int_equal(st_n_tensors(f), 4);
        assert_string_equal(st_tensor_at(f, 0)->name, "b");
        assert_string_equal(st_tensor_at(f, 1)->name, "a");
        assert_string_equal(st_tensor_at(f, 2)->name, "c");
        assert_string_equal(st_tensor_at(f, 3)->name, "d");

        t = st_find(f, "a");
        assert_int_equal(t->dtype, ST_F32);
        assert_int_equal(t->ndim, 0);
        assert_int_equal(t->nbytes, 4);
        assert_ptr_equal(t->data, buf + 8 + hl);
        memcpy(&fv, t->data, 4);
        assert_true(fv == 1.5f);

        t = st_find(f, "b");
        assert_int_equal(t->dtype, ST_I32);
        assert_int_equal(t->ndim, 1);
        assert_int_equal(t->shape[0], 2);
        assert_ptr_equal(t->data, buf + 8 + hl + 4);
        memcpy(iv, t->data, 8);
        assert_int_equal(iv[0], 7);
        assert_int_equal(iv[1], -2);

        t = st_find(f, "c");
        assert_int_equal(t->dtype, ST_I64);
        assert_int_equal(t->ndim, 2);
        assert_int_equal(t->shape[0], 1);
        assert_int_equal(t->shape[1], 1);
        memcpy(&lv, t->data, 8);
        assert_true(lv == 0x0102030405060708LL);

        t = st_find(f, "d");
        assert_int_equal(t->dtype, ST_U8);
        assert_int_equal(t->nbytes, 3);
        assert_memory_equal(t->data, "\x01\x02\xff", 3);

        assert_string_equal(st_meta_get(f, "format"), "pt");
        assert_string_equal(st_meta_get(f, "k"), "v");
        st_free(f);

        /* Pretty-printed header with trailing padding spaces parses the same way. */
        static const char pretty[] = "{\n  \"x\" : { \"dtype\" : \"U8\", \"shape\" : [ 2 ],\n"
                                     "  \"data_offsets\" : [ 0 , 2 ] }\n}   \t  ";
        size_t s2;
        _cleanup_free_ uint8_t *b2 = make_st(pretty, "\x05\x06", 2, &s2);
        f = NULL;
        assert_int_equal(st_parse(b2, s2, "pretty", &f), 0);
        assert_int_equal(st_n_tensors(f), 1);
        assert_memory_equal(st_find(f, "x")->data, "\x05\x06", 2);
        st_free(f);
}

static void test_reject_size(void **state) {
        size_t size;
        uint8_t small[7] = { 0 };
        _cleanup_free_ uint8_t *b = NULL, *b2 = NULL;

        expect_bad(NULL, 0, "file is empty");
        expect_bad(small, 7, "file too short (7 bytes");

        /* Header length field past the end of the file. */
        b = make_raw(100, "{}", NULL, 0, &size);
        expect_bad(b, size, "header length 100 past end of file (size 10)");
        /* Huge header length (> ST_MAX_HEADER), and one that would overflow size - 8 + N. */
        b2 = make_raw((uint64_t) ST_MAX_HEADER + 1, "{}", NULL, 0, &size);
        expect_bad(b2, size, "header length 67108865 exceeds the maximum");
        b2[7] = 0xff;
        expect_bad(b2, size, "exceeds the maximum");
        /* Header length shorter than the JSON: the JSON is cut. */
        free(b);
        b = make_raw(5, "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", NULL, 0,
                     &size);
        expect_bad(b, size, "not valid JSON");
        /* Zero-length header. */
        free(b);
        b = make_raw(0, "", NULL, 0, &size);
        expect_bad(b, size, "not valid JSON");
}

static void test_reject_header(void **state) {
        static const struct {
                const char *json;
                size_t data_len;
                const char *msg;
        } cases[] = {
                { "{\"a\":", 0, "header is not valid JSON: line 1 column" },
                { "{\"a\":1,}", 0, "header is not valid JSON: line 1 column 8" },
                { "{}x", 0, "not valid JSON" },
                { "{\"a\xff\":1}", 0, "not valid JSON" },     /* invalid UTF-8 */
                { "{\"a\\u0000b\":1}", 0, "not valid JSON" }, /* NUL in a name */
                { "[1, 2]", 0, "header is not a JSON object" },
                { "\"str\"", 0, "not valid JSON: line 1 column 5: '[' or '{' expected" },
                { "{\"a\":5}", 0, "tensor 'a': entry is not an object" },
                { "{\"\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0,
                  "tensor with an empty name" },
                { "{\"a\\nb\":5}", 0, "tensor 'a\\x0ab': entry is not an object" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                  "tensor 'a': unknown key 'x'" },
                { "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': missing dtype" },
                { "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': missing shape" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                  "tensor 'a': missing data_offsets" },
                { "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': dtype is not a string" },
                { "{\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                  "tensor 'a': unknown dtype 'F16'" },
                { "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "unknown dtype 'f32'" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': shape is not an array" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': shape[1] is not a non-negative integer" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
                  "shape[0] is not a non-negative integer" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
                  "shape[0] is not a non-negative integer" },
                { "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                  1, "tensor 'a': shape has 9 dimensions (max 8)" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,"
                  "0]}}",
                  0, "tensor 'a': shape [4294967296, 4294967296] overflows" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                  "tensor 'a': data_offsets is not an array of two integers" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                  "data_offsets is not an array of two integers" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4,
                  "data_offsets is not an array of two integers" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                  "tensor 'a': data_offsets are not non-negative integers" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4,
                  "data_offsets are not non-negative integers" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
                  "tensor 'a': data_offsets [8, 4] end before begin" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3,
                  "tensor 'a': data_offsets [0, 4] past end of data (size 3" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,"
                  "9223372036854775804]}}",
                  4, "past end of data" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'a': data_offsets [0, 4] span 4 bytes, but F32 [2] needs 8" },
                { "{\"a\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[0,8]}}", 8,
                  "span 8 bytes, but I64 [1, 2] needs 16" },
                { "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
                  12, "tensors 'a' [0, 8] and 'b' [4, 12] overlap" },
                { "{\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                  8, "and 'a' [0, 8] overlap" },
                { "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                  16, "tensors 'a' [0, 16] and 'b' [4, 8] overlap" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                  12, "hole in data buffer: bytes [4, 8) before tensor 'b'" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  "hole in data buffer: bytes [0, 4) before tensor 'a'" },
                { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                  "hole in data buffer: bytes [4, 8) after the last tensor" },
                { "{\"__metadata__\":{}}", 4, "no tensors but 4 bytes of data" },
                { "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                  2, "duplicate object key" },
                { "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "duplicate object key" },
                { "{\"__metadata__\":[]}", 0, "__metadata__ is not an object" },
                { "{\"__metadata__\":{\"step\":\"1\",\"n\":5}}", 0,
                  "__metadata__ key 'n': value is not a string" },
                { "{\"__metadata__\":{\"n\":null}}", 0,
                  "__metadata__ key 'n': value is not a string" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
                expect_bad_json(cases[i].json, cases[i].data_len, cases[i].msg);

        /* Sanity check of the helper: zero-size tensors are fine anywhere at the cursor. */
        size_t size;
        _cleanup_free_ uint8_t *b =
                make_st("{\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"e\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                        "abcd", 4, &size);
        st_file *f = NULL;
        assert_int_equal(st_parse(b, size, "ok", &f), 0);
        assert_int_equal(st_n_tensors(f), 3);
        assert_int_equal(st_find(f, "z")->nbytes, 0);
        st_free(f);
}

static void test_load_errors(void **state) {
        _cleanup_free_ char *missing = test_tmp_path("missing.st"),
                            *empty = test_tmp_path("empty.st"), *trunc = test_tmp_path("trunc.st"),
                            *log = NULL;
        uint8_t data[16];
        st_tensor t = {
                .name = "w", .dtype = ST_U8, .ndim = 1, .shape = { 16 }, .data = data, .nbytes = 16
        };
        st_file *f = NULL;
        int r, fd;

        test_capture_begin();
        r = st_load(missing, &f);
        log = test_capture_end();
        assert_int_equal(r, -ENOENT);
        assert_one_error(log, missing, "cannot open: No such file or directory");
        free(log);

        test_capture_begin();
        r = st_load(test_tmpdir, &f);
        log = test_capture_end();
        assert_int_equal(r, -EISDIR);
        assert_one_error(log, test_tmpdir, "not a regular file");
        free(log);

        fd = open(empty, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);
        test_capture_begin();
        r = st_load(empty, &f);
        log = test_capture_end();
        assert_int_equal(r, -EBADMSG);
        assert_one_error(log, empty, "file is empty");
        free(log);

        /* A valid file, then cut by one byte: data truncated. */
        memset(data, 0x5a, sizeof data);
        assert_int_equal(st_write(trunc, &t, 1, NULL, 0), 0);
        assert_int_equal(st_load(trunc, &f), 0);
        st_free(f);
        f = NULL;
        struct stat st;
        assert_int_equal(stat(trunc, &st), 0);
        assert_int_equal(truncate(trunc, st.st_size - 1), 0);
        test_capture_begin();
        r = st_load(trunc, &f);
        log = test_capture_end();
        assert_int_equal(r, -EBADMSG);
        assert_null(f);
        assert_one_error(log, trunc, "tensor 'w': data_offsets [0, 16] past end of data (size 15");
        free(log);

        /* Cut to 5 bytes. */
        assert_int_equal(truncate(trunc, 5), 0);
        test_capture_begin();
        r = st_load(trunc, &f);
        log = test_capture_end();
        assert_int_equal(r, -EBADMSG);
        assert_one_error(log, trunc, "file too short (5 bytes");
        /* 'log' freed by cleanup */
}

static void test_write_errors(void **state) {
        _cleanup_free_ char *bad = test_tmp_path("no-such-dir/x.safetensors"),
                            *nodir = test_tmp_path("no-such-dir"), *dir = test_tmp_path("werr"),
                            *target = NULL, *file = NULL, *log = NULL;
        float v[4] = { 1, 2, 3, 4 };
        st_tensor t[2] = {
                { .name = "w",
                  .dtype = ST_F32,
                  .ndim = 1,
                  .shape = { 4 },
                  .data = v,
                  .nbytes = 16 },
                { .name = "w2",
                  .dtype = ST_F32,
                  .ndim = 2,
                  .shape = { 2, 2 },
                  .data = v,
                  .nbytes = 16 },
        };
        struct stat st;
        int r;

        assert_int_equal(mkdir(dir, 0755), 0);

        /* Directory missing: error, nothing created. */
        int before = count_entries(test_tmpdir, NULL, 0);
        test_capture_begin();
        r = st_write(bad, t, 2, NULL, 0);
        log = test_capture_end();
        assert_int_equal(r, -ENOENT);
        assert_one_error(log, bad, "cannot create temporary file: No such file or directory");
        assert_int_equal(stat(nodir, &st), -1);
        assert_int_equal(count_entries(test_tmpdir, NULL, 0), before);
        free(log);

        /* Target is a directory: the rename fails, the temp file is removed. */
        assert_true(asprintf(&target, "%s/isdir.st", dir) > 0);
        assert_int_equal(mkdir(target, 0755), 0);
        test_capture_begin();
        r = st_write(target, t, 2, NULL, 0);
        log = test_capture_end();
        assert_int_equal(r, -EISDIR);
        assert_int_equal(count_lines(log), 1);
        assert_true(strstr(log, "cannot commit"));
        assert_int_equal(count_entries(dir, NULL, 0), 1);
        assert_int_equal(count_entries(target, NULL, 0), 0);
        free(log);

        /* A write that fails midway (file size limit, as ENOSPC would): error, temp file
         * removed, an existing target left intact. */
        _cleanup_free_ char *keep = NULL;
        _cleanup_free_ uint8_t *bigbuf = calloc(1, 1 << 20);
        st_tensor tb = { .name = "big",
                         .dtype = ST_U8,
                         .ndim = 1,
                         .shape = { 1 << 20 },
                         .data = bigbuf,
                         .nbytes = 1 << 20 };
        struct rlimit old_lim, lim;
        st_file *f = NULL;

        assert_non_null(bigbuf);
        assert_true(asprintf(&keep, "%s/keep.st", dir) > 0);
        assert_int_equal(st_write(keep, t, 2, NULL, 0), 0);
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
        lim = old_lim;
        lim.rlim_cur = 65536 + 3; /* odd, so writev returns a short count first */
        void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
        test_capture_begin();
        r = st_write(keep, &tb, 1, NULL, 0);
        log = test_capture_end();
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
        signal(SIGXFSZ, old_sig);
        assert_int_equal(r, -EFBIG);
        assert_one_error(log, keep, "cannot write");
        free(log);
        log = NULL;
        assert_int_equal(count_entries(dir, NULL, 0), 2); /* isdir.st and keep.st only */
        assert_int_equal(st_load(keep, &f), 0);
        assert_int_equal(st_n_tensors(f), 2);
        st_free(f);
        assert_int_equal(unlink(keep), 0);

        /* Invalid arguments: -EINVAL, one message, no file. */
        assert_true(asprintf(&file, "%s/inval.st", dir) > 0);
        static const struct {
                int which;
                const char *msg;
        } cases[] = {
                { 0, "tensor 'w': nbytes 15 does not match" },
                { 1, "duplicate tensor name 'w'" },
                { 2, "tensor name '__metadata__' is reserved" },
                { 3, "tensor 'w' has no data" },
                { 4, "tensor 0 has no name" },
                { 5, "tensor 'w': 9 dimensions (max 8)" },
                { 6, "duplicate metadata key 'k'" },
                { 7, "tensor 'w': invalid dtype 7" },
                { 8, "metadata key 'k': value is not valid UTF-8" },
                { 9, "tensor 'w': nbytes 0 does not match" },
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                st_tensor tt[2] = { t[0], t[1] };
                st_meta m[2] = { { "k", "v" }, { "k2", "v2" } };
                switch (cases[i].which) {
                case 0:
                        tt[0].nbytes = 15;
                        break;
                case 1:
                        tt[1].name = "w";
                        break;
                case 2:
                        tt[1].name = "__metadata__";
                        break;
                case 3:
                        tt[0].data = NULL;
                        break;
                case 4:
                        tt[0].name = "";
                        break;
                case 5:
                        tt[0].ndim = 9;
                        break;
                case 6:
                        m[1].key = "k";
                        break;
                case 7:
                        tt[0].dtype = (st_dtype) 7;
                        break;
                case 8:
                        m[0].value = "\xff\xfe";
                        break;
                case 9: /* shape product overflows 64 bits */
                        tt[0].ndim = 2;
                        tt[0].shape[0] = tt[0].shape[1] = UINT64_C(1) << 32;
                        tt[0].nbytes = 0;
                        break;
                }
                test_capture_begin();
                r = st_write(file, tt, 2, m, 2);
                log = test_capture_end();
                assert_int_equal(r, -EINVAL);
                assert_one_error(log, file, cases[i].msg);
                free(log);
                log = NULL;
                assert_int_equal(count_entries(dir, NULL, 0), 1);
        }
}

static void test_fileio(void **state) {
        _cleanup_free_ char *p = test_tmp_path("fileio.bin"), *dir = test_tmp_path("fio"),
                            *tmp = NULL, *names = NULL;
        _cleanup_free_ uint8_t *src = malloc(3000 * 7), *back = NULL;
        _cleanup_free_ struct iovec *iov = calloc(3001, sizeof(struct iovec));
        size_t n;
        struct stat st;
        int fd;

        assert_non_null(src);
        assert_non_null(iov);
        for (size_t i = 0; i < 3000 * 7; i++)
                src[i] = (uint8_t) (i * 31 + 7);
        /* More iovecs than IOV_MAX, of varying lengths including 0. */
        size_t off = 0;
        for (size_t i = 0; i < 3001; i++) {
                size_t len = i % 13 == 0 ? 0 : MIN((size_t) (i % 11) + 1, 3000 * 7 - off);
                iov[i] = (struct iovec){ src + off, len };
                off += len;
        }
        assert_true(off > 3000 * 5);

        assert_int_equal(mkdir(dir, 0700), 0);
        assert_true(asprintf(&names, "%s/out.bin", dir) > 0);
        assert_int_equal(atomic_file_open(names, 0640, &tmp, &fd), 0);
        assert_non_null(strstr(tmp, "/.#out.bin."));
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0640);
        assert_int_equal(writev_full(fd, iov, 3001), 0);
        assert_int_equal(write_full(fd, "tail", 4), 0);
        assert_int_equal(atomic_file_commit(fd, tmp, names), 0);
        assert_int_equal(access(tmp, F_OK), -1);
        assert_int_equal(count_entries(dir, NULL, 0), 1);
        assert_int_equal(read_full_file(names, SIZE_MAX, (void **) &back, &n), 0);
        assert_int_equal(n, off + 4);
        assert_memory_equal(back, src, off);
        assert_memory_equal(back + off, "tail", 4);
        assert_int_equal(back[n], 0); /* NUL-terminated */
        free(back);
        back = NULL;

        /* Limits and errors. */
        assert_int_equal(read_full_file(names, off + 3, (void **) &back, &n), -EFBIG);
        assert_int_equal(read_full_file(names, off + 4, (void **) &back, &n), 0);
        free(back);
        back = NULL;
        assert_int_equal(read_full_file(p, 100, (void **) &back, &n), -ENOENT);
        assert_int_equal(read_full_file(dir, 100, (void **) &back, &n), -EISDIR);
        /* A stream (not a regular file): /proc/self/status has st_size 0. */
        assert_int_equal(read_full_file("/proc/self/status", 1 << 20, (void **) &back, &n), 0);
        assert_true(n > 0);
        assert_non_null(strstr((char *) back, "Name:"));
        free(back);
        back = NULL;
        assert_int_equal(read_full_file("/proc/self/status", 10, (void **) &back, &n), -EFBIG);

        /* Abort removes the temp file. */
        free(tmp);
        tmp = NULL;
        assert_int_equal(atomic_file_open(names, 0600, &tmp, &fd), 0);
        assert_int_equal(access(tmp, F_OK), 0);
        atomic_file_abort(fd, tmp);
        assert_int_equal(access(tmp, F_OK), -1);
        assert_int_equal(count_entries(dir, NULL, 0), 1);
        free(tmp);
        tmp = NULL;

        /* Bad target names. */
        assert_int_equal(atomic_file_open("", 0600, &tmp, &fd), -EINVAL);
        free(names);
        assert_true(asprintf(&names, "%s/", dir) > 0);
        assert_int_equal(atomic_file_open(names, 0600, &tmp, &fd), -EISDIR);
        assert_int_equal(count_entries(dir, NULL, 0), 1);
}

/* ---- fuzz ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) {
        /* xorshift64* */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dULL;
}

static void test_fuzz(void **state) {
        _cleanup_free_ char *path = test_tmp_path("fuzz.st");
        _cleanup_free_ uint8_t *orig = NULL;
        float w[6] = { 1, 2, 3, 4, 5, 6 };
        int32_t ids[3] = { 7, 8, 9 };
        uint8_t b[5] = { 1, 2, 3, 4, 5 };
        int64_t big[2] = { -1, 1 };
        st_tensor t[] = {
                { .name = "h.0.w",
                  .dtype = ST_F32,
                  .ndim = 2,
                  .shape = { 2, 3 },
                  .data = w,
                  .nbytes = 24 },
                { .name = "ids",
                  .dtype = ST_I32,
                  .ndim = 1,
                  .shape = { 3 },
                  .data = ids,
                  .nbytes = 12 },
                { .name = "b", .dtype = ST_U8, .ndim = 1, .shape = { 5 }, .data = b, .nbytes = 5 },
                { .name = "big",
                  .dtype = ST_I64,
                  .ndim = 1,
                  .shape = { 2 },
                  .data = big,
                  .nbytes = 16 },
        };
        st_meta m[] = { { "step", "10" }, { "cursor", "12345" } };
        static const char interesting[] = "{}[]\":,-0123456789eE. \\u\x00\xff";
        size_t orig_size;
        unsigned ok = 0, bad = 0;

        assert_int_equal(st_write(path, t, ARRAY_SIZE(t), m, ARRAY_SIZE(m)), 0);
        assert_int_equal(read_full_file(path, 1 << 20, (void **) &orig, &orig_size), 0);
        uint64_t hl = 0;
        for (int i = 0; i < 8; i++)
                hl |= (uint64_t) orig[i] << (8 * i);

        for (unsigned iter = 0; iter < 2000; iter++) {
                size_t size = orig_size;
                uint8_t *buf = malloc(orig_size); /* exact size: ASan catches any overread */
                unsigned nmut = 1 + (unsigned) (rnd() % 3);

                assert_non_null(buf);
                memcpy(buf, orig, orig_size);
                if (iter % 5 == 0) {
                        /* Data bytes only: must still be accepted. */
                        for (unsigned j = 0; j < nmut; j++)
                                buf[8 + hl + rnd() % (orig_size - 8 - hl)] ^=
                                        (uint8_t) (1 + rnd() % 255);
                        nmut = 0;
                }
                for (unsigned j = 0; j < nmut; j++) {
                        if (size == 0)
                                break;
                        size_t pos = (size_t) (rnd() % 4 == 0 ? rnd() % size
                                                              : 8 + rnd() % hl); /* mostly header */
                        pos %= size;
                        switch (rnd() % 5) {
                        case 0:
                                buf[pos] ^= (uint8_t) (1u << (rnd() % 8));
                                break;
                        case 1:
                                buf[pos] = (uint8_t) interesting[rnd() % (sizeof interesting - 1)];
                                break;
                        case 2:
                                buf[pos] = (uint8_t) rnd();
                                break;
                        case 3:
                                size = (size_t) (rnd() % (size + 1));
                                break; /* truncate */
                        case 4:
                                buf[rnd() % 8] = (uint8_t) rnd();
                                break; /* header length */
                        }
                }
                uint8_t *exact = malloc(size ? size : 1);
                assert_non_null(exact);
                memcpy(exact, buf, size);
                free(buf);

                st_file *f = NULL;
                test_capture_begin();
                int r = st_parse(exact, size, "fuzz", &f);
                char *log = test_capture_end();
                if (r == 0) {
                        ok++;
                        assert_string_equal(log, "");
                        for (size_t i = 0; i < st_n_tensors(f); i++) {
                                const st_tensor *x = st_tensor_at(f, i);
                                uint64_t need = st_dtype_size(x->dtype);
                                assert_true(x->name[0] != 0);
                                assert_true(x->ndim <= ST_MAX_DIMS);
                                for (unsigned d = 0; d < x->ndim; d++)
                                        need *= x->shape[d];
                                assert_int_equal(need, x->nbytes);
                                assert_true((const uint8_t *) x->data >= exact + 8);
                                assert_true(x->nbytes <= size);
                                assert_true((const uint8_t *) x->data + x->nbytes <= exact + size);
                                unsigned sum = 0;
                                for (uint64_t k = 0; k < x->nbytes; k++)
                                        sum += ((const uint8_t *) x->data)[k];
                                (void) sum;
                                assert_ptr_equal(st_find(f, x->name), x);
                        }
                        st_free(f);
                } else {
                        bad++;
                        assert_true(iter % 5 != 0);
                        assert_int_equal(r, -EBADMSG);
                        assert_null(f);
                        assert_int_equal(count_lines(log), 1);
                        assert_true(strncmp(log, "fuzz: ", 6) == 0);
                }
                free(log);
                free(exact);
        }
        /* Both outcomes must occur, or the mutations are not testing anything. */
        printf("fuzz: %u accepted, %u rejected\n", ok, bad);
        assert_true(ok >= 400);
        assert_true(bad > 500);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dtypes),        cmocka_unit_test(test_roundtrip),
                cmocka_unit_test(test_handmade),      cmocka_unit_test(test_reject_size),
                cmocka_unit_test(test_reject_header), cmocka_unit_test(test_load_errors),
                cmocka_unit_test(test_write_errors),  cmocka_unit_test(test_fileio),
                cmocka_unit_test(test_fuzz),
        };
        return test_run_group("test-safetensors", tests, setup_group, test_tmpdir_remove);
}
