/* SPDX-License-Identifier: MIT */
/* SHA-256 against the FIPS 180-2 test vectors, hex, file hashing and random ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <string.h>

#include "hash.h"
#include "test-files.h"

static void test_vectors(void **unused) {
        char hex[HASH_SHA256_HEX];

        hash_sha256_hex("abc", 3, hex);
        assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        hash_sha256_hex("", 0, hex);
        assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        hash_sha256_hex(two, strlen(two), hex);
        assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_file_and_random(void **unused) {
        char *path = test_tmp_path("million-a");
        char hex[HASH_SHA256_HEX], a[33], b[33];
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        for (int i = 0; i < 1000000; i++) /* longer than the read buffer */
                fputc('a', f);
        fclose(f);
        assert_int_equal(hash_sha256_file_hex(path, hex), 0);
        assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        assert_int_equal(hash_sha256_file_hex("/nonexistent/x", hex), -ENOENT);
        free(path);

        assert_int_equal(hash_random_hex(16, a), 0);
        assert_int_equal(hash_random_hex(16, b), 0);
        assert_int_equal(strlen(a), 32);
        assert_true(strspn(a, "0123456789abcdef") == 32);
        assert_string_not_equal(a, b);
        assert_true(hash_equal_consttime(a, a));
        assert_false(hash_equal_consttime(a, b));
        assert_false(hash_equal_consttime("abc", "abcd"));
}

static int setup(void **unused) {
        return test_tmpdir_create("test-hash");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vectors),
                cmocka_unit_test(test_file_and_random),
        };
        return test_run_group("test-hash", tests, setup, test_tmpdir_remove);
}
