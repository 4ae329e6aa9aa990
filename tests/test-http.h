/* SPDX-License-Identifier: MIT */
#pragma once

/* What the HTTP tests keep of a reply, and the libcurl callbacks that fill it. Include after
 * cmocka.h and curl/curl.h. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
        long status;
        char *body; /* NUL-terminated */
        size_t size;
        char etag[128], retry_after[16];
} reply;

/* CURLOPT_WRITEFUNCTION with CURLOPT_WRITEDATA a reply. */
static inline size_t reply_on_body(char *p, size_t sz, size_t n, void *ud) {
        reply *r = ud;
        char *b = realloc(r->body, r->size + sz * n + 1);
        assert_non_null(b);
        memcpy(b + r->size, p, sz * n);
        r->size += sz * n;
        b[r->size] = 0;
        r->body = b;
        return sz * n;
}

/* CURLOPT_HEADERFUNCTION with CURLOPT_HEADERDATA a reply: keeps ETag and Retry-After. */
static inline size_t reply_on_header(char *p, size_t sz, size_t n, void *ud) {
        reply *r = ud;
        if (sz * n > 6 && !strncasecmp(p, "ETag: ", 6))
                snprintf(r->etag, sizeof(r->etag), "%.*s", (int) strcspn(p + 6, "\r\n"), p + 6);
        if (sz * n > 13 && !strncasecmp(p, "Retry-After: ", 13))
                snprintf(r->retry_after, sizeof(r->retry_after), "%.*s",
                         (int) strcspn(p + 13, "\r\n"), p + 13);
        return sz * n;
}
