/* SPDX-License-Identifier: MIT */
#pragma once

/* SHA-256 (OpenSSL's libcrypto), hex, and random identifiers from the kernel's CSPRNG: for
 * content-addressed model blobs, device secrets and idempotency keys. */

#include <stddef.h>
#include <stdint.h>

#define HASH_SHA256_LEN 32
#define HASH_SHA256_HEX (2 * HASH_SHA256_LEN + 1)

void hash_sha256(const void *data, size_t size, uint8_t out[HASH_SHA256_LEN]);
/* Lowercase hex of data into out (2*size+1 bytes, NUL-terminated). */
void hash_hex(const void *data, size_t size, char *out);
/* SHA-256 of data as lowercase hex. */
void hash_sha256_hex(const void *data, size_t size, char out[HASH_SHA256_HEX]);
/* SHA-256 over pieces: begin, update any number of times, end (which frees). */
typedef struct hash_sha256_ctx hash_sha256_ctx;
int hash_sha256_begin(hash_sha256_ctx **ret); /* -ENOMEM */
void hash_sha256_update(hash_sha256_ctx *ctx, const void *data, size_t size);
void hash_sha256_end_hex(hash_sha256_ctx *ctx, char out[HASH_SHA256_HEX]);
/* SHA-256 of a whole file, streamed, as lowercase hex; -errno on I/O errors. */
int hash_sha256_file_hex(const char *path, char out[HASH_SHA256_HEX]);
/* n_bytes random bytes as 2*n_bytes hex chars + NUL into out (getrandom). -errno. */
int hash_random_hex(size_t n_bytes, char *out);
/* Compares two strings in time independent of where they differ (secrets). */
int hash_equal_consttime(const char *a, const char *b);
