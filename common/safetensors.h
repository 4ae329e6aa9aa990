/* SPDX-License-Identifier: MIT */
#pragma once

/* safetensors files: an 8-byte little-endian header length, a JSON header, then raw
 * little-endian tensor data. The reader validates everything before handing out a pointer. */

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (64u << 20)

typedef enum { ST_F32, ST_I32, ST_I64, ST_U8, _ST_DTYPE_MAX } st_dtype;

typedef struct {
        const char *name;
        st_dtype dtype;
        unsigned ndim;
        uint64_t shape[ST_MAX_DIMS];
        const void *data; /* in memory (writer) or inside the loaded file (reader) */
        uint64_t nbytes;
} st_tensor;

typedef struct {
        const char *key;
        const char *value;
} st_meta;

typedef struct st_file st_file; /* a loaded, validated file */

size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);

/* Writes the tensors and metadata to path atomically (mode 0640; temp file in the same directory,
 * fsync, rename, fsync of the directory). Data is laid out in the order given. */
int st_write(const char *path, const st_tensor *tensors, size_t n_tensors, const st_meta *meta,
             size_t n_meta);

/* Reads and validates path. On error logs one message naming the file and the field at
 * fault and returns a negative errno (-EBADMSG for malformed content). */
int st_load(const char *path, st_file **ret);
/* Same, from a buffer the caller keeps alive (used by fuzzers and network code); 'what'
 * names the source in error messages. */
int st_parse(const void *buf, size_t size, const char *what, st_file **ret);
void st_free(st_file *f);

size_t st_n_tensors(const st_file *f);
const st_tensor *st_tensor_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);
/* Metadata value from "__metadata__", or NULL. */
const char *st_meta_get(const st_file *f, const char *key);
const char *st_source(const st_file *f);
