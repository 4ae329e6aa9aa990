/* SPDX-License-Identifier: MIT */
#include "hash.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

void hash_sha256(const void *data, size_t size, uint8_t out[HASH_SHA256_LEN]) {
        unsigned int len = 0;
        EVP_Digest(data, size, out, &len, EVP_sha256(), NULL);
}

void hash_hex(const void *data, size_t size, char *out) {
        static const char digits[] = "0123456789abcdef";
        const uint8_t *p = data;
        for (size_t i = 0; i < size; i++) {
                out[2 * i] = digits[p[i] >> 4];
                out[2 * i + 1] = digits[p[i] & 15];
        }
        out[2 * size] = 0;
}

void hash_sha256_hex(const void *data, size_t size, char out[HASH_SHA256_HEX]) {
        uint8_t d[HASH_SHA256_LEN];
        hash_sha256(data, size, d);
        hash_hex(d, sizeof(d), out);
}

/* The OpenSSL context is the opaque type. */
int hash_sha256_begin(hash_sha256_ctx **ret) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();

        if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
                EVP_MD_CTX_free(ctx);
                *ret = NULL;
                return -ENOMEM;
        }
        *ret = (hash_sha256_ctx *) ctx;
        return 0;
}

void hash_sha256_update(hash_sha256_ctx *ctx, const void *data, size_t size) {
        EVP_DigestUpdate((EVP_MD_CTX *) ctx, data, size);
}

void hash_sha256_end_hex(hash_sha256_ctx *ctx, char out[HASH_SHA256_HEX]) {
        uint8_t d[HASH_SHA256_LEN];
        unsigned int len = 0;

        EVP_DigestFinal_ex((EVP_MD_CTX *) ctx, d, &len);
        EVP_MD_CTX_free((EVP_MD_CTX *) ctx);
        hash_hex(d, sizeof(d), out);
}

int hash_sha256_file_hex(const char *path, char out[HASH_SHA256_HEX]) {
        uint8_t buf[1 << 16];
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY), r;
        hash_sha256_ctx *ctx;
        ssize_t n;

        if (fd < 0)
                return -errno;
        r = hash_sha256_begin(&ctx);
        while (r == 0 && (n = read(fd, buf, sizeof(buf))) != 0) {
                if (n < 0) {
                        if (errno != EINTR)
                                r = -errno;
                        continue;
                }
                hash_sha256_update(ctx, buf, (size_t) n);
        }
        if (ctx) {
                char hex[HASH_SHA256_HEX];
                hash_sha256_end_hex(ctx, hex);
                if (r == 0)
                        memcpy(out, hex, sizeof(hex));
        }
        close(fd);
        return r;
}

int hash_random_hex(size_t n_bytes, char *out) {
        uint8_t buf[256];
        size_t got = 0;

        if (n_bytes > sizeof(buf))
                return -E2BIG;
        while (got < n_bytes) {
                ssize_t n = getrandom(buf + got, n_bytes - got, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                got += (size_t) n;
        }
        hash_hex(buf, n_bytes, out);
        return 0;
}

int hash_equal_consttime(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        unsigned char diff = la != lb;
        for (size_t i = 0; i < la && i < lb; i++)
                diff |= (unsigned char) (a[i] ^ b[i]);
        return diff == 0;
}
