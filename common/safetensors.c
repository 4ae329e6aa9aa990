/* SPDX-License-Identifier: MIT */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"

/* Tensor data is written and exposed as the host's in-memory bytes; the format is
 * little-endian. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors I/O assumes a little-endian host");

#define ST_METADATA_KEY "__metadata__"

_Static_assert(sizeof(json_int_t) == sizeof(long long), "jansson built without long long integers");
#define ST_JSON_INT_MAX LLONG_MAX

struct st_file {
        char *source;
        void *map; /* st_load's mapping, or NULL */
        size_t map_size;
        st_tensor *tensors;
        size_t n_tensors;
        st_meta *meta;
        size_t n_meta;
};

static const struct {
        const char *name;
        size_t size;
} dtypes[_ST_DTYPE_MAX] = {
        [ST_F32] = { "F32", 4 },
        [ST_I32] = { "I32", 4 },
        [ST_I64] = { "I64", 8 },
        [ST_U8] = { "U8", 1 },
};

size_t st_dtype_size(st_dtype t) {
        return (unsigned) t < _ST_DTYPE_MAX ? dtypes[t].size : 0;
}

const char *st_dtype_name(st_dtype t) {
        return (unsigned) t < _ST_DTYPE_MAX ? dtypes[t].name : NULL;
}

static int dtype_from_name(const char *s, st_dtype *ret) {
        for (unsigned i = 0; i < _ST_DTYPE_MAX; i++)
                if (strcmp(s, dtypes[i].name) == 0) {
                        *ret = (st_dtype) i;
                        return 0;
                }
        return -EINVAL;
}

/* numel × dtype size, or -EOVERFLOW. */
static int tensor_nbytes(st_dtype dtype, unsigned ndim, const uint64_t *shape, uint64_t *ret) {
        uint64_t n = st_dtype_size(dtype);

        for (unsigned i = 0; i < ndim; i++)
                if (__builtin_mul_overflow(n, shape[i], &n))
                        return -EOVERFLOW;
        *ret = n;
        return 0;
}

/* Renders untrusted text (tensor names, parser messages) for a one-line log message:
 * control characters escaped, long strings shortened. */
#define ESC_MAX 96
static const char *esc(const char *s, char buf[static ESC_MAX]) {
        size_t o = 0;

        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                if (o + 8 >= ESC_MAX) {
                        memcpy(buf + o, "...", 4);
                        return buf;
                }
                if (c < 0x20 || c == 0x7f || c == '\\')
                        o += (size_t) snprintf(buf + o, ESC_MAX - o, "\\x%02x", c);
                else
                        buf[o++] = (char) c;
        }
        buf[o] = 0;
        return buf;
}

static void format_shape(const st_tensor *t, char *buf, size_t size) {
        size_t o = 0;

        o += (size_t) snprintf(buf, size, "[");
        for (unsigned i = 0; i < t->ndim && o < size; i++)
                o += (size_t) snprintf(buf + o, size - o, "%s%" PRIu64, i ? ", " : "", t->shape[i]);
        if (o < size)
                snprintf(buf + o, size - o, "]");
}

/* ---------------------------------------------------------------------------------- */
/* Writer */

static int build_header(const char *path, const st_tensor *tensors, size_t n_tensors,
                        const st_meta *meta, size_t n_meta, char **ret) {
        json_t *root = NULL, *md = NULL;
        uint64_t offset = 0;
        char eb[ESC_MAX];
        int r = -ENOMEM;

        root = json_object();
        if (!root)
                goto fail;

        if (n_meta > 0) {
                md = json_object();
                if (!md || json_object_set_new(root, ST_METADATA_KEY, md) < 0) {
                        json_decref(md);
                        goto fail;
                }
                for (size_t i = 0; i < n_meta; i++) {
                        if (!meta[i].key || !meta[i].value) {
                                r = log_error_errno(EINVAL,
                                                    "%s: metadata entry %zu has no key or value",
                                                    path, i);
                                goto fail;
                        }
                        if (json_object_get(md, meta[i].key)) {
                                r = log_error_errno(EINVAL, "%s: duplicate metadata key '%s'", path,
                                                    esc(meta[i].key, eb));
                                goto fail;
                        }
                        json_t *v = json_string(meta[i].value);
                        if (!v) {
                                r = log_error_errno(
                                        EINVAL, "%s: metadata key '%s': value is not valid UTF-8",
                                        path, esc(meta[i].key, eb));
                                goto fail;
                        }
                        if (json_object_set_new(md, meta[i].key, v) < 0) {
                                r = log_error_errno(EINVAL,
                                                    "%s: metadata key '%s' is not valid UTF-8",
                                                    path, esc(meta[i].key, eb));
                                goto fail;
                        }
                }
        }

        for (size_t i = 0; i < n_tensors; i++) {
                const st_tensor *t = &tensors[i];
                uint64_t nbytes;
                json_t *e, *shape;

                if (!t->name || !*t->name) {
                        r = log_error_errno(EINVAL, "%s: tensor %zu has no name", path, i);
                        goto fail;
                }
                if (strcmp(t->name, ST_METADATA_KEY) == 0) {
                        r = log_error_errno(EINVAL, "%s: tensor name '%s' is reserved", path,
                                            t->name);
                        goto fail;
                }
                if (json_object_get(root, t->name)) {
                        r = log_error_errno(EINVAL, "%s: duplicate tensor name '%s'", path,
                                            esc(t->name, eb));
                        goto fail;
                }
                if ((unsigned) t->dtype >= _ST_DTYPE_MAX) {
                        r = log_error_errno(EINVAL, "%s: tensor '%s': invalid dtype %d", path,
                                            esc(t->name, eb), (int) t->dtype);
                        goto fail;
                }
                if (t->ndim > ST_MAX_DIMS) {
                        r = log_error_errno(EINVAL, "%s: tensor '%s': %u dimensions (max %d)", path,
                                            esc(t->name, eb), t->ndim, ST_MAX_DIMS);
                        goto fail;
                }
                for (unsigned d = 0; d < t->ndim; d++)
                        if (t->shape[d] > (uint64_t) ST_JSON_INT_MAX) {
                                r = log_error_errno(EINVAL, "%s: tensor '%s': shape[%u] too large",
                                                    path, esc(t->name, eb), d);
                                goto fail;
                        }
                if (tensor_nbytes(t->dtype, t->ndim, t->shape, &nbytes) < 0 ||
                    nbytes != t->nbytes) {
                        r = log_error_errno(EINVAL,
                                            "%s: tensor '%s': nbytes %" PRIu64
                                            " does not match dtype and shape",
                                            path, esc(t->name, eb), t->nbytes);
                        goto fail;
                }
                if (nbytes > 0 && !t->data) {
                        r = log_error_errno(EINVAL, "%s: tensor '%s' has no data", path,
                                            esc(t->name, eb));
                        goto fail;
                }
                if (nbytes > (uint64_t) ST_JSON_INT_MAX - offset) {
                        r = log_error_errno(EFBIG, "%s: tensor '%s': data too large", path,
                                            esc(t->name, eb));
                        goto fail;
                }

                shape = json_array();
                if (!shape)
                        goto fail;
                for (unsigned d = 0; d < t->ndim; d++)
                        if (json_array_append_new(shape, json_integer((json_int_t) t->shape[d])) <
                            0) {
                                json_decref(shape);
                                goto fail;
                        }
                e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtypes[t->dtype].name, "shape",
                              shape, "data_offsets", (json_int_t) offset,
                              (json_int_t) offset + (json_int_t) nbytes);
                if (!e)
                        goto fail;
                if (json_object_set_new(root, t->name, e) < 0) {
                        r = log_error_errno(EINVAL, "%s: tensor name '%s' is not valid UTF-8", path,
                                            esc(t->name, eb));
                        goto fail;
                }
                offset += nbytes;
        }

        *ret = json_dumps(root, JSON_COMPACT);
        json_decref(root);
        if (!*ret)
                return log_error_errno(ENOMEM, "%s: cannot format header", path);
        return 0;

fail:
        json_decref(root);
        if (r == -ENOMEM)
                log_error_errno(ENOMEM, "%s: cannot build header: %m", path);
        return r;
}

int st_write(const char *path, const st_tensor *tensors, size_t n_tensors, const st_meta *meta,
             size_t n_meta) {
        _cleanup_free_ char *json = NULL, *tmp = NULL, *header = NULL;
        _cleanup_free_ struct iovec *iov = NULL;
        size_t json_len, header_len;
        int fd = -1, r;

        r = build_header(path, tensors, n_tensors, meta, n_meta, &json);
        if (r < 0)
                return r;

        /* Pad with spaces so the data buffer starts 8-byte aligned. */
        json_len = strlen(json);
        header_len = (json_len + 7) & ~(size_t) 7;
        if (header_len > ST_MAX_HEADER)
                return log_error_errno(EFBIG, "%s: header of %zu bytes exceeds the maximum of %u",
                                       path, header_len, ST_MAX_HEADER);
        header = malloc(8 + header_len);
        iov = calloc(n_tensors + 1, sizeof(struct iovec));
        if (!header || !iov)
                return log_error_errno(ENOMEM, "%s: out of memory", path);
        for (unsigned i = 0; i < 8; i++)
                header[i] = (char) (uint8_t) ((uint64_t) header_len >> (8 * i));
        memcpy(header + 8, json, json_len);
        memset(header + 8 + json_len, ' ', header_len - json_len);

        size_t n_iov = 0;
        iov[n_iov++] = (struct iovec){ header, 8 + header_len };
        for (size_t i = 0; i < n_tensors; i++)
                if (tensors[i].nbytes > 0)
                        iov[n_iov++] =
                                (struct iovec){ (void *) tensors[i].data, tensors[i].nbytes };

        /* 0640: a model can recite the text it learnt from, which is private to the device */
        r = atomic_file_open(path, 0640, &tmp, &fd);
        if (r < 0)
                return log_error_errno(r, "%s: cannot create temporary file: %m", path);

        r = writev_full(fd, iov, n_iov);
        if (r < 0) {
                atomic_file_abort(fd, tmp);
                return log_error_errno(r, "%s: cannot write %s: %m", path, tmp);
        }

        r = atomic_file_commit(fd, tmp, path);
        if (r < 0)
                return log_error_errno(r, "%s: cannot commit %s: %m", path, tmp);
        return 0;
}

/* ---------------------------------------------------------------------------------- */
/* Reader */

void st_free(st_file *f) {
        if (!f)
                return;
        for (size_t i = 0; i < f->n_tensors; i++)
                free((char *) f->tensors[i].name);
        for (size_t i = 0; i < f->n_meta; i++) {
                free((char *) f->meta[i].key);
                free((char *) f->meta[i].value);
        }
        free(f->tensors);
        free(f->meta);
        if (f->map)
                munmap(f->map, f->map_size);
        free(f->source);
        free(f);
}

static void st_freep(st_file **f) {
        st_free(*f);
}

typedef struct {
        uint64_t begin, end;
        size_t index;
} span;

static int span_cmp(const void *a, const void *b) {
        const span *x = a, *y = b;
        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        if (x->end != y->end)
                return x->end < y->end ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

static int parse_metadata(st_file *f, json_t *md, const char *what) {
        const char *key;
        json_t *v;
        char eb[ESC_MAX];

        if (!json_is_object(md))
                return log_error_errno(EBADMSG, "%s: " ST_METADATA_KEY " is not an object", what);

        f->meta = calloc(MAX(json_object_size(md), 1), sizeof(st_meta));
        if (!f->meta)
                return log_error_errno(ENOMEM, "%s: out of memory", what);
        json_object_foreach(md, key, v) {
                if (!json_is_string(v))
                        return log_error_errno(
                                EBADMSG, "%s: " ST_METADATA_KEY " key '%s': value is not a string",
                                what, esc(key, eb));
                st_meta *m = &f->meta[f->n_meta];
                m->key = strdup(key);
                m->value = strdup(json_string_value(v));
                if (m->key || m->value)
                        f->n_meta++; /* so st_free frees whichever succeeded */
                if (!m->key || !m->value)
                        return log_error_errno(ENOMEM, "%s: out of memory", what);
        }
        return 0;
}

static int parse_u64(json_t *v, uint64_t *ret) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return -EINVAL;
        *ret = (uint64_t) json_integer_value(v);
        return 0;
}

static int parse_tensor(st_tensor *t, const char *name, json_t *e, uint64_t data_size,
                        const char *what, uint64_t *ret_begin) {
        json_t *dtype = NULL, *shape = NULL, *offsets = NULL, *v;
        const char *key;
        char eb[ESC_MAX], eb2[ESC_MAX], sb[256];
        uint64_t begin, end, need;
        size_t i;

        if (!*name)
                return log_error_errno(EBADMSG, "%s: tensor with an empty name", what);
        name = esc(name, eb);
        if (!json_is_object(e))
                return log_error_errno(EBADMSG, "%s: tensor '%s': entry is not an object", what,
                                       name);

        json_object_foreach(e, key, v) {
                if (strcmp(key, "dtype") == 0)
                        dtype = v;
                else if (strcmp(key, "shape") == 0)
                        shape = v;
                else if (strcmp(key, "data_offsets") == 0)
                        offsets = v;
                else
                        return log_error_errno(EBADMSG, "%s: tensor '%s': unknown key '%s'", what,
                                               name, esc(key, eb2));
        }

        if (!dtype)
                return log_error_errno(EBADMSG, "%s: tensor '%s': missing dtype", what, name);
        if (!json_is_string(dtype))
                return log_error_errno(EBADMSG, "%s: tensor '%s': dtype is not a string", what,
                                       name);
        if (dtype_from_name(json_string_value(dtype), &t->dtype) < 0)
                return log_error_errno(EBADMSG, "%s: tensor '%s': unknown dtype '%s'", what, name,
                                       esc(json_string_value(dtype), eb2));

        if (!shape)
                return log_error_errno(EBADMSG, "%s: tensor '%s': missing shape", what, name);
        if (!json_is_array(shape))
                return log_error_errno(EBADMSG, "%s: tensor '%s': shape is not an array", what,
                                       name);
        if (json_array_size(shape) > ST_MAX_DIMS)
                return log_error_errno(EBADMSG,
                                       "%s: tensor '%s': shape has %zu dimensions (max %d)", what,
                                       name, json_array_size(shape), ST_MAX_DIMS);
        t->ndim = (unsigned) json_array_size(shape);
        json_array_foreach(shape, i, v) if (parse_u64(v, &t->shape[i]) < 0) return log_error_errno(
                EBADMSG, "%s: tensor '%s': shape[%zu] is not a non-negative integer", what, name,
                i);
        if (tensor_nbytes(t->dtype, t->ndim, t->shape, &need) < 0) {
                format_shape(t, sb, sizeof sb);
                return log_error_errno(EBADMSG, "%s: tensor '%s': shape %s overflows 64 bits", what,
                                       name, sb);
        }

        if (!offsets)
                return log_error_errno(EBADMSG, "%s: tensor '%s': missing data_offsets", what,
                                       name);
        if (!json_is_array(offsets) || json_array_size(offsets) != 2)
                return log_error_errno(
                        EBADMSG, "%s: tensor '%s': data_offsets is not an array of two integers",
                        what, name);
        if (parse_u64(json_array_get(offsets, 0), &begin) < 0 ||
            parse_u64(json_array_get(offsets, 1), &end) < 0)
                return log_error_errno(
                        EBADMSG, "%s: tensor '%s': data_offsets are not non-negative integers",
                        what, name);
        if (end < begin)
                return log_error_errno(EBADMSG,
                                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                       "] end before begin",
                                       what, name, begin, end);
        if (end > data_size)
                return log_error_errno(EBADMSG,
                                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                       "] past end of data (size %" PRIu64 ", file truncated?)",
                                       what, name, begin, end, data_size);
        if (end - begin != need) {
                format_shape(t, sb, sizeof sb);
                return log_error_errno(EBADMSG,
                                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                       "] span %" PRIu64 " bytes, but %s %s needs %" PRIu64,
                                       what, name, begin, end, end - begin, dtypes[t->dtype].name,
                                       sb, need);
        }

        t->nbytes = need;
        *ret_begin = begin;
        return 0;
}

static int check_coverage(const st_file *f, const uint64_t *begins, uint64_t data_size,
                          const char *what) {
        _cleanup_free_ span *s = NULL;
        char eb[ESC_MAX], eb2[ESC_MAX];
        uint64_t cursor = 0;
        size_t last = SIZE_MAX; /* tensor that ends at cursor */

        if (f->n_tensors == 0) {
                if (data_size > 0)
                        return log_error_errno(EBADMSG,
                                               "%s: no tensors but %" PRIu64 " bytes of data", what,
                                               data_size);
                return 0;
        }
        s = calloc(f->n_tensors, sizeof(span));
        if (!s)
                return log_error_errno(ENOMEM, "%s: out of memory", what);
        for (size_t i = 0; i < f->n_tensors; i++)
                s[i] = (span){ begins[i], begins[i] + f->tensors[i].nbytes, i };
        qsort(s, f->n_tensors, sizeof(span), span_cmp);

        for (size_t i = 0; i < f->n_tensors; i++) {
                const char *name = f->tensors[s[i].index].name;
                if (s[i].begin < cursor)
                        return log_error_errno(EBADMSG,
                                               "%s: tensors '%s' [%" PRIu64 ", %" PRIu64
                                               "] and '%s' [%" PRIu64 ", %" PRIu64 "] overlap",
                                               what, esc(f->tensors[s[last].index].name, eb),
                                               s[last].begin, s[last].end, esc(name, eb2),
                                               s[i].begin, s[i].end);
                if (s[i].begin > cursor)
                        return log_error_errno(EBADMSG,
                                               "%s: hole in data buffer: bytes [%" PRIu64
                                               ", %" PRIu64
                                               ") before tensor '%s' belong to no tensor",
                                               what, cursor, s[i].begin, esc(name, eb));
                if (s[i].end > cursor) {
                        cursor = s[i].end;
                        last = i;
                }
        }
        if (cursor != data_size)
                return log_error_errno(EBADMSG,
                                       "%s: hole in data buffer: bytes [%" PRIu64 ", %" PRIu64
                                       ") after the last tensor belong to no tensor",
                                       what, cursor, data_size);
        return 0;
}

static int parse_header(st_file *f, const uint8_t *buf, size_t size, const char *what) {
        _cleanup_(json_decrefp) json_t *root = NULL;
        _cleanup_free_ uint64_t *begins = NULL;
        json_error_t err;
        uint64_t header_len, data_size;
        const uint8_t *data;
        const char *key;
        json_t *v;
        char eb[ESC_MAX];
        int r;

        if (size == 0)
                return log_error_errno(EBADMSG, "%s: file is empty", what);
        if (size < 8)
                return log_error_errno(
                        EBADMSG,
                        "%s: file too short (%zu bytes, need at least 8 for the header length)",
                        what, size);
        header_len = 0;
        for (unsigned i = 0; i < 8; i++)
                header_len |= (uint64_t) buf[i] << (8 * i);
        if (header_len > ST_MAX_HEADER)
                return log_error_errno(EBADMSG,
                                       "%s: header length %" PRIu64 " exceeds the maximum of %u",
                                       what, header_len, ST_MAX_HEADER);
        if (header_len > size - 8)
                return log_error_errno(EBADMSG,
                                       "%s: header length %" PRIu64 " past end of file (size %zu)",
                                       what, header_len, size);
        data = buf + 8 + header_len;
        data_size = size - 8 - header_len;

        root = json_loadb((const char *) buf + 8, header_len, JSON_REJECT_DUPLICATES, &err);
        if (!root)
                return log_error_errno(EBADMSG,
                                       "%s: header is not valid JSON: line %d column %d: %s", what,
                                       err.line, err.column, esc(err.text, eb));
        if (!json_is_object(root))
                return log_error_errno(EBADMSG, "%s: header is not a JSON object", what);

        size_t n = json_object_size(root);
        f->tensors = calloc(MAX(n, 1), sizeof(st_tensor));
        begins = calloc(MAX(n, 1), sizeof(uint64_t));
        if (!f->tensors || !begins)
                return log_error_errno(ENOMEM, "%s: out of memory", what);

        json_object_foreach(root, key, v) {
                if (strcmp(key, ST_METADATA_KEY) == 0) {
                        r = parse_metadata(f, v, what);
                        if (r < 0)
                                return r;
                        continue;
                }
                st_tensor *t = &f->tensors[f->n_tensors];
                r = parse_tensor(t, key, v, data_size, what, &begins[f->n_tensors]);
                if (r < 0)
                        return r;
                t->name = strdup(key);
                if (!t->name)
                        return log_error_errno(ENOMEM, "%s: out of memory", what);
                t->data = data + begins[f->n_tensors];
                f->n_tensors++;
        }

        return check_coverage(f, begins, data_size, what);
}

int st_parse(const void *buf, size_t size, const char *what, st_file **ret) {
        _cleanup_(st_freep) st_file *f = NULL;
        int r;

        if (!what)
                what = "(buffer)";
        if (!buf && size > 0)
                return log_error_errno(EINVAL, "%s: no buffer", what);

        f = calloc(1, sizeof(*f));
        if (!f || !(f->source = strdup(what)))
                return log_error_errno(ENOMEM, "%s: out of memory", what);

        r = parse_header(f, buf, size, what);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(f);
        return 0;
}

int st_load(const char *path, st_file **ret) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        void *map = NULL;
        size_t size;
        st_file *f;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "%s: cannot open: %m", path);
        if (fstat(fd, &st) < 0)
                return log_error_errno(errno, "%s: cannot stat: %m", path);
        if (!S_ISREG(st.st_mode))
                return log_error_errno(S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
                                       "%s: not a regular file", path);
        if ((uintmax_t) st.st_size > SIZE_MAX)
                return log_error_errno(EFBIG, "%s: file too large", path);
        size = (size_t) st.st_size;

        if (size > 0) {
                /* The mapping stays valid after close(). Checkpoints are replaced by rename,
                 * never truncated in place, so the file cannot shrink under us. */
                map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
                if (map == MAP_FAILED)
                        return log_error_errno(errno, "%s: cannot map: %m", path);
        }

        r = st_parse(map, size, path, &f);
        if (r < 0) {
                if (map)
                        munmap(map, size);
                return r;
        }
        f->map = map;
        f->map_size = size;
        *ret = f;
        return 0;
}

size_t st_n_tensors(const st_file *f) {
        return f->n_tensors;
}

const st_tensor *st_tensor_at(const st_file *f, size_t i) {
        return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name) {
        for (size_t i = 0; i < f->n_tensors; i++)
                if (strcmp(f->tensors[i].name, name) == 0)
                        return &f->tensors[i];
        return NULL;
}

const char *st_meta_get(const st_file *f, const char *key) {
        for (size_t i = 0; i < f->n_meta; i++)
                if (strcmp(f->meta[i].key, key) == 0)
                        return f->meta[i].value;
        return NULL;
}

const char *st_source(const st_file *f) {
        return f->source;
}
