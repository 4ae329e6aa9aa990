/* SPDX-License-Identifier: MIT */
#include "update-codec.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "macros.h"

#define HEADER_SIZE 24 /* magic, format, encoding, base_version, n_tensors */
#define PEEK_SIZE 20   /* the header up to base_version */
/* upd_peek streams: refuse frames that would make zstd allocate a window over 16 MiB just
 * to look at 20 bytes (UPD_ZSTD_LEVEL frames use at most 2 MiB). */
#define PEEK_WINDOW_LOG_MAX 24

static const char *const encoding_names[_UPD_ENCODING_MAX] = {
        [UPD_FP32] = "fp32",
        [UPD_INT8] = "int8",
        [UPD_TOPK] = "topk",
};

const char *upd_encoding_to_string(upd_encoding e) {
        if ((unsigned) e >= _UPD_ENCODING_MAX)
                return NULL;
        return encoding_names[e];
}

int upd_encoding_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _UPD_ENCODING_MAX; i++)
                if (strcmp(s, encoding_names[i]) == 0)
                        return i;
        return -EINVAL;
}

/* ---- little-endian access, independent of the host's byte order ------------------- */

static inline void put_u16(uint8_t *p, uint16_t v) {
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
}

static inline void put_u32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
        p[2] = (uint8_t) (v >> 16);
        p[3] = (uint8_t) (v >> 24);
}

static inline void put_u64(uint8_t *p, uint64_t v) {
        put_u32(p, (uint32_t) v);
        put_u32(p + 4, (uint32_t) (v >> 32));
}

static inline void put_f32(uint8_t *p, float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        put_u32(p, u);
}

static inline uint16_t get_u16(const uint8_t *p) {
        return (uint16_t) (p[0] | (p[1] << 8));
}

static inline uint32_t get_u32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

static inline uint64_t get_u64(const uint8_t *p) {
        return (uint64_t) get_u32(p) | (uint64_t) get_u32(p + 4) << 32;
}

static inline float get_f32(const uint8_t *p) {
        uint32_t u = get_u32(p);
        float f;
        memcpy(&f, &u, 4);
        return f;
}

static inline uint32_t f32_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

/* ---- layout helpers ----------------------------------------------------------------- */

static void view_dims(const model_view *v, uint32_t *rows, uint32_t *cols) {
        if (v->ndim == 2) {
                *rows = (uint32_t) v->shape[0];
                *cols = (uint32_t) v->shape[1];
        } else {
                *rows = 1;
                *cols = (uint32_t) v->shape[0];
        }
}

/* Every view must be expressible in the format (u16 name length, u32 dims and indices) and
 * the views must tile the buffer in order, since delta is indexed by the layout's offsets. */
static int layout_check(const model_layout *lay) {
        size_t off = 0;

        if (lay->n_views == 0 || lay->n_views > MODEL_MAX_VIEWS)
                return -EINVAL;
        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                size_t len = strnlen(v->name, sizeof(v->name));

                if (len == 0 || len == sizeof(v->name))
                        return -EINVAL;
                if (v->ndim < 1 || v->ndim > 2 || v->shape[0] < 1 ||
                    (v->ndim == 2 && v->shape[1] < 1))
                        return -EINVAL;
                if (v->numel != (size_t) v->shape[0] * (v->ndim == 2 ? (size_t) v->shape[1] : 1))
                        return -EINVAL;
                if (v->numel > UINT32_MAX || v->offset != off)
                        return -EINVAL;
                off += v->numel;
        }
        return off == lay->n_params ? 0 : -EINVAL;
}

/* The largest body any encoding can produce for this layout (top-k with k = numel). */
static size_t layout_max_raw(const model_layout *lay) {
        size_t n = HEADER_SIZE;

        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                n += 2 + strlen(v->name) + 8 + 4 + 8 * v->numel;
        }
        return n;
}

/* Tensor header: u16 name_len, name, u32 rows, u32 cols. */
static uint8_t *put_tensor_head(uint8_t *p, const model_view *v) {
        size_t len = strlen(v->name);
        uint32_t rows, cols;

        view_dims(v, &rows, &cols);
        put_u16(p, (uint16_t) len);
        memcpy(p + 2, v->name, len);
        p += 2 + len;
        put_u32(p, rows);
        put_u32(p + 4, cols);
        return p + 8;
}

/* ---- encoding -------------------------------------------------------------------------- */

/* What is compressed: delta plus the carried residual (error feedback). */
static inline float src_val(const float *delta, const float *residual, size_t i) {
        return residual ? delta[i] + residual[i] : delta[i];
}

static inline uint32_t mag_key(float f) {
        /* for finite floats the bits of |f| order like |f| */
        return f32_bits(f) & 0x7fffffffu;
}

typedef struct {
        uint32_t threshold; /* mag_key of the k-th largest */
        size_t ties;        /* how many entries with key == threshold are sent */
} topk_cut;

/* Finds the k-th largest |x| by a two-pass radix select on the 32-bit magnitude keys
 * (upper 16 bits, then lower 16 within the chosen bucket): O(n), no n-sized scratch, exact.
 * Entries above the threshold are all sent, and 'ties' of those equal to it, the lowest flat
 * indices first. */
static int topk_select(const float *delta, const float *residual, size_t n, size_t k,
                       topk_cut *ret) {
        _cleanup_free_ size_t *hist = NULL;
        size_t above = 0, need;
        uint32_t hi = 0, lo = 0;

        hist = calloc(65536, sizeof(size_t));
        if (!hist)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++)
                hist[mag_key(src_val(delta, residual, i)) >> 16]++;
        for (uint32_t b = 65536; b-- > 0;) {
                if (above + hist[b] >= k) {
                        hi = b;
                        break;
                }
                above += hist[b];
        }
        need = k - above;

        memset(hist, 0, 65536 * sizeof(size_t));
        for (size_t i = 0; i < n; i++) {
                uint32_t key = mag_key(src_val(delta, residual, i));
                if (key >> 16 == hi)
                        hist[key & 0xffff]++;
        }
        for (uint32_t b = 65536; b-- > 0;) {
                if (hist[b] >= need) {
                        lo = b;
                        break;
                }
                need -= hist[b];
        }
        ret->threshold = hi << 16 | lo;
        ret->ties = need;
        return 0;
}

static size_t topk_k(size_t n, float fraction) {
        double kd = ceil((double) fraction * (double) n);

        if (kd < 1)
                return 1;
        if (kd > (double) n)
                return n;
        return (size_t) kd;
}

/* residual = (delta + residual) - what raw (our own, complete body) carries. Done only once
 * the body exists, so a failed encode loses nothing. */
static void residual_update(const model_layout *lay, const uint8_t *raw, const float *delta,
                            float *residual) {
        upd_encoding enc = (upd_encoding) get_u32(raw + 8);
        const uint8_t *p = raw + HEADER_SIZE;

        for (size_t t = 0; t < lay->n_views; t++) {
                const model_view *v = &lay->views[t];
                const float *d = delta + v->offset;
                float *res = residual + v->offset;
                uint32_t rows, cols;

                view_dims(v, &rows, &cols);
                p += 2 + strlen(v->name) + 8;
                switch (enc) {
                case UPD_FP32:
                        for (size_t i = 0; i < v->numel; i++)
                                res[i] = (d[i] + res[i]) - get_f32(p + 4 * i);
                        p += 4 * v->numel;
                        break;
                case UPD_INT8: {
                        const uint8_t *q = p + 4 * (size_t) rows;

                        for (size_t row = 0; row < rows; row++) {
                                float scale = get_f32(p + 4 * row);
                                for (size_t i = row * cols; i < (row + 1) * cols; i++)
                                        res[i] = (d[i] + res[i]) - (float) (int8_t) q[i] * scale;
                        }
                        p = q + v->numel;
                        break;
                }
                case UPD_TOPK: {
                        uint32_t kt = get_u32(p);
                        const uint8_t *idx = p + 4, *val = idx + 4 * (size_t) kt;

                        for (size_t i = 0; i < v->numel; i++)
                                res[i] = d[i] + res[i];
                        for (size_t j = 0; j < kt; j++)
                                res[get_u32(idx + 4 * j)] -= get_f32(val + 4 * j); /* x - x = 0 */
                        p = val + 4 * (size_t) kt;
                        break;
                }
                default:
                        return;
                }
        }
}

int upd_encode(upd_encoding enc, uint64_t base_version, const model_layout *layout,
               const float *delta, float topk_fraction, float *residual, void **ret_body,
               size_t *ret_size, upd_info *ret_info) {
        _cleanup_free_ uint8_t *raw = NULL;
        _cleanup_free_ void *out = NULL;
        size_t n, raw_size, k = 0, sent = 0;
        topk_cut cut = {};
        double l2 = 0;
        uint8_t *p;
        int r;

        if (!layout || !delta || !ret_body || !ret_size || (unsigned) enc >= _UPD_ENCODING_MAX)
                return -EINVAL;
        r = layout_check(layout);
        if (r < 0)
                return r;
        n = layout->n_params;
        if (enc == UPD_TOPK && !(topk_fraction > 0 && topk_fraction <= 1))
                return -EINVAL;

        /* a non-finite delta would only be refused by the server */
        for (size_t i = 0; i < n; i++)
                if (!isfinite(src_val(delta, residual, i)))
                        return -EDOM;

        raw_size = HEADER_SIZE;
        for (size_t t = 0; t < layout->n_views; t++) {
                const model_view *v = &layout->views[t];
                uint32_t rows, cols;

                view_dims(v, &rows, &cols);
                raw_size += 2 + strlen(v->name) + 8;
                if (enc == UPD_FP32)
                        raw_size += 4 * v->numel;
                else if (enc == UPD_INT8)
                        raw_size += 4 * (size_t) rows + v->numel;
                else
                        raw_size += 4;
        }
        if (enc == UPD_TOPK) {
                k = topk_k(n, topk_fraction);
                raw_size += 8 * k;
                r = topk_select(delta, residual, n, k, &cut);
                if (r < 0)
                        return r;
        }

        raw = malloc(raw_size);
        if (!raw)
                return -ENOMEM;
        memcpy(raw, UPD_MAGIC, 4);
        put_u32(raw + 4, UPD_FORMAT);
        put_u32(raw + 8, (uint32_t) enc);
        put_u64(raw + 12, base_version);
        put_u32(raw + 20, (uint32_t) layout->n_views);
        p = raw + HEADER_SIZE;

        for (size_t t = 0; t < layout->n_views; t++) {
                const model_view *v = &layout->views[t];
                const float *d = delta + v->offset;
                float *res = residual ? residual + v->offset : NULL;
                uint32_t rows, cols;

                view_dims(v, &rows, &cols);
                p = put_tensor_head(p, v);

                switch (enc) {
                case UPD_FP32:
                        for (size_t i = 0; i < v->numel; i++) {
                                float x = src_val(d, res, i);
                                put_f32(p + 4 * i, x);
                                l2 += (double) x * x;
                        }
                        p += 4 * v->numel;
                        sent += v->numel;
                        break;

                case UPD_INT8: {
                        uint8_t *q = p + 4 * (size_t) rows;

                        for (size_t row = 0; row < rows; row++) {
                                size_t o = row * cols;
                                float max = 0, scale;

                                for (size_t c = 0; c < cols; c++)
                                        max = fmaxf(max, fabsf(src_val(d, res, o + c)));
                                scale = max / 127.0f;
                                put_f32(p + 4 * row, scale);
                                for (size_t c = 0; c < cols; c++) {
                                        float x = src_val(d, res, o + c), y;
                                        int qi = 0;

                                        /* a scale that underflowed to 0 sends nothing */
                                        if (scale > 0) {
                                                float qf = roundf(x / scale);
                                                qi = (int) fmaxf(-127.0f, fminf(127.0f, qf));
                                        }
                                        q[o + c] = (uint8_t) (int8_t) qi;
                                        /* exactly what the decoder computes */
                                        y = (float) qi * scale;
                                        l2 += (double) y * y;
                                }
                        }
                        p = q + v->numel;
                        sent += v->numel;
                        break;
                }

                case UPD_TOPK: {
                        size_t kt = 0, ties = cut.ties;
                        uint8_t *idx, *val;

                        /* count first: k precedes the indices */
                        for (size_t i = 0; i < v->numel; i++) {
                                uint32_t key = mag_key(src_val(d, res, i));
                                if (key > cut.threshold)
                                        kt++;
                                else if (key == cut.threshold && ties > 0) {
                                        ties--;
                                        kt++;
                                }
                        }
                        if (sent + kt > k)
                                return -EIO; /* cannot happen; never write past raw */
                        put_u32(p, (uint32_t) kt);
                        idx = p + 4;
                        val = idx + 4 * kt;
                        for (size_t i = 0; i < v->numel; i++) {
                                float x = src_val(d, res, i);
                                uint32_t key = mag_key(x);
                                bool take = key > cut.threshold ||
                                            (key == cut.threshold && cut.ties > 0);

                                if (take) {
                                        if (key == cut.threshold)
                                                cut.ties--;
                                        put_u32(idx, (uint32_t) i);
                                        put_f32(val, x);
                                        idx += 4;
                                        val += 4;
                                        l2 += (double) x * x;
                                }
                        }
                        p = val;
                        sent += kt;
                        break;
                }

                default:
                        return -EINVAL;
                }
        }
        if ((size_t) (p - raw) != raw_size || (enc == UPD_TOPK && sent != k))
                return -EIO; /* cannot happen: the sizes above are exact */

        size_t bound = ZSTD_compressBound(raw_size);
        out = malloc(bound);
        if (!out)
                return -ENOMEM;
        size_t csize = ZSTD_compress(out, bound, raw, raw_size, UPD_ZSTD_LEVEL);
        if (ZSTD_isError(csize))
                return -ENOMEM; /* with a bound-sized buffer only allocation can fail */
        void *shrunk = realloc(out, csize);
        if (shrunk)
                out = shrunk;
        if (residual)
                residual_update(layout, raw, delta, residual);

        if (ret_info)
                *ret_info = (upd_info){
                        .encoding = enc,
                        .base_version = base_version,
                        .raw_size = raw_size,
                        .nonzero = sent,
                        .l2_norm = sqrt(l2),
                };
        *ret_size = csize;
        *ret_body = TAKE_PTR(out);
        return 0;
}

/* ---- decoding ---------------------------------------------------------------------------- */

_printf_(4, 5) static int fail(char *err, size_t err_size, int error, const char *fmt, ...) {
        if (err && err_size > 0) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, err_size, fmt, ap);
                va_end(ap);
        }
        return error;
}

/* Untrusted bytes for a message: printable ASCII only, cut with "..." to fit. */
static void sanitize(char *out, size_t out_size, const uint8_t *s, size_t len) {
        size_t j = 0, max = out_size - 1;
        bool cut = len > max;

        if (cut)
                max -= 3;
        for (size_t i = 0; i < len && j < max; i++)
                out[j++] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' ? (char) s[i] : '?';
        if (cut) {
                memcpy(out + j, "...", 3);
                j += 3;
        }
        out[j] = 0;
}

typedef struct {
        const uint8_t *p;
        size_t left;
} reader;

/* The only way the parser advances: never past the end. */
static const uint8_t *take(reader *rd, size_t n) {
        const uint8_t *p = rd->p;

        if (rd->left < n)
                return NULL;
        rd->p += n;
        rd->left -= n;
        return p;
}

static int parse_header(reader *rd, upd_info *info, char *err, size_t err_size) {
        const uint8_t *h = take(rd, PEEK_SIZE);
        uint32_t format, enc;

        if (!h)
                return fail(err, err_size, -EBADMSG, "truncated header: %zu bytes", rd->left);
        if (memcmp(h, UPD_MAGIC, 4) != 0)
                return fail(err, err_size, -EBADMSG, "bad magic (not an edged update)");
        format = get_u32(h + 4);
        if (format != UPD_FORMAT)
                return fail(err, err_size, -EBADMSG, "unknown format %u (expected %u)", format,
                            UPD_FORMAT);
        enc = get_u32(h + 8);
        if (enc >= _UPD_ENCODING_MAX)
                return fail(err, err_size, -EBADMSG, "unknown encoding %u", enc);
        info->encoding = (upd_encoding) enc;
        info->base_version = get_u64(h + 12);
        return 0;
}

/* 'what' is NaN or inf: "NaN", "inf" or "-inf" for the reason. */
static const char *nonfinite_name(float f) {
        return isnan(f) ? "NaN" : f > 0 ? "inf" : "-inf";
}

static int parse_tensor(reader *rd, size_t t, const model_view *v, upd_encoding enc, float *out,
                        double *l2, size_t *nonzero, char *err, size_t err_size) {
        const uint8_t *b;
        size_t name_len = strlen(v->name), numel = v->numel;
        uint32_t rows, cols, erows, ecols;
        char shown[MODEL_NAME_MAX + 8];

        b = take(rd, 2);
        if (!b)
                return fail(err, err_size, -EBADMSG, "tensor %zu '%s': truncated before the name",
                            t, v->name);
        uint16_t len = get_u16(b);
        b = take(rd, len);
        if (!b)
                return fail(err, err_size, -EBADMSG,
                            "tensor %zu: name length %u beyond the body (%zu bytes left)", t, len,
                            rd->left);
        if (len != name_len || memcmp(b, v->name, len) != 0) {
                sanitize(shown, sizeof(shown), b, len);
                return fail(err, err_size, -EPROTO, "tensor %zu: name '%s', expected '%s'", t,
                            shown, v->name);
        }
        b = take(rd, 8);
        if (!b)
                return fail(err, err_size, -EBADMSG, "tensor %zu '%s': truncated before the shape",
                            t, v->name);
        rows = get_u32(b);
        cols = get_u32(b + 4);
        view_dims(v, &erows, &ecols);
        if (rows != erows || cols != ecols)
                return fail(err, err_size, -EPROTO, "tensor %zu '%s': shape %ux%u, expected %ux%u",
                            t, v->name, rows, cols, erows, ecols);

        switch (enc) {
        case UPD_FP32:
                b = take(rd, 4 * numel);
                if (!b)
                        return fail(err, err_size, -EBADMSG,
                                    "tensor %zu '%s': truncated: %zu of %zu value bytes", t,
                                    v->name, rd->left, 4 * numel);
                for (size_t i = 0; i < numel; i++) {
                        float x = get_f32(b + 4 * i);
                        if (!isfinite(x))
                                return fail(err, err_size, -EDOM,
                                            "tensor %zu '%s': element %zu is %s", t, v->name, i,
                                            nonfinite_name(x));
                        out[i] = x;
                        *l2 += (double) x * x;
                }
                *nonzero += numel;
                return 0;

        case UPD_INT8: {
                const uint8_t *q;

                b = take(rd, 4 * (size_t) rows);
                q = b ? take(rd, numel) : NULL;
                if (!q)
                        return fail(err, err_size, -EBADMSG,
                                    "tensor %zu '%s': truncated: int8 payload needs %zu bytes", t,
                                    v->name, 4 * (size_t) rows + numel);
                for (size_t row = 0; row < rows; row++) {
                        float scale = get_f32(b + 4 * row);

                        if (!isfinite(scale))
                                return fail(err, err_size, -EDOM,
                                            "tensor %zu '%s': row %zu scale is %s", t, v->name, row,
                                            nonfinite_name(scale));
                        if (scale < 0)
                                return fail(err, err_size, -EBADMSG,
                                            "tensor %zu '%s': row %zu has a negative scale %g", t,
                                            v->name, row, (double) scale);
                        for (size_t c = 0; c < cols; c++) {
                                int8_t qi = (int8_t) q[row * cols + c];
                                float y;

                                if (qi == INT8_MIN)
                                        return fail(err, err_size, -EBADMSG,
                                                    "tensor %zu '%s': element %zu is -128, outside "
                                                    "[-127, 127]",
                                                    t, v->name, row * cols + c);
                                y = (float) qi * scale;
                                if (!isfinite(y)) /* 127 * a scale near FLT_MAX */
                                        return fail(err, err_size, -EDOM,
                                                    "tensor %zu '%s': row %zu: scale %g overflows",
                                                    t, v->name, row, (double) scale);
                                out[row * cols + c] = y;
                                *l2 += (double) y * y;
                        }
                }
                *nonzero += numel;
                return 0;
        }

        case UPD_TOPK: {
                const uint8_t *idx, *val;
                uint32_t k;

                b = take(rd, 4);
                if (!b)
                        return fail(err, err_size, -EBADMSG, "tensor %zu '%s': truncated before k",
                                    t, v->name);
                k = get_u32(b);
                if (k > numel)
                        return fail(err, err_size, -EBADMSG, "tensor %zu '%s': k %u > %zu elements",
                                    t, v->name, k, numel);
                idx = take(rd, 4 * (size_t) k);
                val = idx ? take(rd, 4 * (size_t) k) : NULL;
                if (!val)
                        return fail(
                                err, err_size, -EBADMSG,
                                "tensor %zu '%s': truncated: %u indices and values need %zu bytes",
                                t, v->name, k, 8 * (size_t) k);
                memset(out, 0, numel * sizeof(float));
                for (size_t j = 0; j < k; j++) {
                        uint32_t i = get_u32(idx + 4 * j);
                        float x = get_f32(val + 4 * j);

                        if (i >= numel)
                                return fail(err, err_size, -EBADMSG,
                                            "tensor %zu '%s': index %u out of range (%zu elements)",
                                            t, v->name, i, numel);
                        if (j > 0 && i <= get_u32(idx + 4 * (j - 1)))
                                return fail(err, err_size, -EBADMSG,
                                            "tensor %zu '%s': indices not ascending at entry %zu "
                                            "(%u after %u)",
                                            t, v->name, j, i, get_u32(idx + 4 * (j - 1)));
                        if (!isfinite(x))
                                return fail(err, err_size, -EDOM,
                                            "tensor %zu '%s': value %zu (index %u) is %s", t,
                                            v->name, j, i, nonfinite_name(x));
                        out[i] = x;
                        *l2 += (double) x * x;
                }
                *nonzero += k;
                return 0;
        }

        default:
                return fail(err, err_size, -EBADMSG, "unknown encoding %d", (int) enc);
        }
}

int upd_decode(const void *body, size_t size, const model_layout *layout, size_t max_raw,
               float *delta, upd_info *ret_info, char *err, size_t err_size) {
        _cleanup_free_ uint8_t *raw = NULL;
        unsigned long long fcs;
        size_t csize, dsize, max_valid, nonzero = 0;
        upd_info info = {};
        double l2 = 0;
        reader rd;
        int r;

        if (err && err_size > 0)
                err[0] = 0;
        if (!layout || !delta || (!body && size > 0))
                return fail(err, err_size, -EINVAL, "invalid arguments");
        if (layout_check(layout) < 0)
                return fail(err, err_size, -EINVAL, "invalid model layout");
        if (size == 0)
                return fail(err, err_size, -EBADMSG, "empty body");

        /* The encoder always writes the content size (ZSTD_compress), so a frame without one
         * is refused rather than stream-decompressed: the size is known before allocating. */
        fcs = ZSTD_getFrameContentSize(body, size);
        if (fcs == ZSTD_CONTENTSIZE_ERROR)
                return fail(err, err_size, -EBADMSG, "not a zstd frame (or a truncated header)");
        if (fcs == ZSTD_CONTENTSIZE_UNKNOWN)
                return fail(err, err_size, -EBADMSG, "zstd frame without a content size");
        if (fcs > max_raw)
                return fail(err, err_size, -EFBIG, "decompressed size %llu over the limit %zu", fcs,
                            max_raw);
        max_valid = layout_max_raw(layout);
        if (fcs > max_valid)
                return fail(err, err_size, -EBADMSG,
                            "decompressed size %llu larger than any update for this model (%zu)",
                            fcs, max_valid);

        /* exactly one frame: no second frame, skippable frame or junk behind it */
        csize = ZSTD_findFrameCompressedSize(body, size);
        if (ZSTD_isError(csize))
                return fail(err, err_size, -EBADMSG, "zstd frame truncated or corrupt: %s",
                            ZSTD_getErrorName(csize));
        if (csize != size)
                return fail(err, err_size, -EBADMSG, "%zu bytes after the zstd frame",
                            size - csize);

        raw = malloc(MAX((size_t) fcs, (size_t) 1));
        if (!raw)
                return fail(err, err_size, -ENOMEM, "out of memory for %llu bytes", fcs);
        dsize = ZSTD_decompress(raw, (size_t) fcs, body, size);
        if (ZSTD_isError(dsize))
                return fail(err, err_size, -EBADMSG, "zstd: %s", ZSTD_getErrorName(dsize));
        if (dsize != fcs)
                return fail(err, err_size, -EBADMSG, "zstd: %zu bytes, frame said %llu", dsize,
                            fcs);

        rd = (reader){ .p = raw, .left = dsize };
        r = parse_header(&rd, &info, err, err_size);
        if (r < 0)
                return r;
        const uint8_t *b = take(&rd, 4);
        if (!b)
                return fail(err, err_size, -EBADMSG, "truncated header: no tensor count");
        uint32_t n_tensors = get_u32(b);
        if (n_tensors != layout->n_views)
                return fail(err, err_size, -EPROTO, "%u tensors, expected %zu", n_tensors,
                            layout->n_views);

        for (size_t t = 0; t < layout->n_views; t++) {
                const model_view *v = &layout->views[t];

                r = parse_tensor(&rd, t, v, info.encoding, delta + v->offset, &l2, &nonzero, err,
                                 err_size);
                if (r < 0)
                        return r;
        }
        if (rd.left > 0)
                return fail(err, err_size, -EBADMSG, "%zu trailing bytes after the last tensor",
                            rd.left);

        info.raw_size = dsize;
        info.nonzero = nonzero;
        info.l2_norm = sqrt(l2);
        if (ret_info)
                *ret_info = info;
        return 0;
}

int upd_peek(const void *body, size_t size, upd_info *ret_info) {
        ZSTD_DCtx *dctx;
        uint8_t head[PEEK_SIZE];
        ZSTD_inBuffer in = { .src = body, .size = size };
        ZSTD_outBuffer out = { .dst = head, .size = sizeof(head) };
        unsigned long long fcs;
        upd_info info = {};
        reader rd;
        int r = 0;

        if (!body || size == 0)
                return -EBADMSG;
        fcs = ZSTD_getFrameContentSize(body, size);
        if (fcs == ZSTD_CONTENTSIZE_ERROR)
                return -EBADMSG;

        dctx = ZSTD_createDCtx();
        if (!dctx)
                return -ENOMEM;
        if (ZSTD_isError(ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, PEEK_WINDOW_LOG_MAX)))
                r = -EIO;
        while (r == 0 && out.pos < out.size) {
                size_t in_pos = in.pos, out_pos = out.pos;
                size_t z = ZSTD_decompressStream(dctx, &out, &in);

                /* an error, or the frame ended or input ran out before the header */
                if (ZSTD_isError(z) ||
                    (out.pos < out.size && (z == 0 || (in.pos == in_pos && out.pos == out_pos))))
                        r = -EBADMSG;
        }
        ZSTD_freeDCtx(dctx);
        if (r < 0)
                return r;

        rd = (reader){ .p = head, .left = sizeof(head) };
        r = parse_header(&rd, &info, NULL, 0);
        if (r < 0)
                return r;
        info.raw_size = fcs == ZSTD_CONTENTSIZE_UNKNOWN ? 0 : (size_t) fcs;
        if (ret_info)
                *ret_info = info;
        return 0;
}
