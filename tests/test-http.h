/* SPDX-License-Identifier: MIT */
#pragma once

/* What the HTTP tests keep of a reply, the libcurl callbacks that fill it, and the one request
 * function the tests send with. Include after cmocka.h. */

#include <curl/curl.h>
#include <stdbool.h>
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

/* reply_on_body without cmocka assertions, for client threads: out of memory fails the
 * transfer (CURLE_WRITE_ERROR). */
static inline size_t reply_on_body_quiet(char *p, size_t sz, size_t n, void *ud) {
        reply *r = ud;
        char *b = realloc(r->body, r->size + sz * n + 1);
        if (!b)
                return 0;
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

/* Where a request differs from the plain one; all zero (or NULL) is test_http_request. */
typedef struct {
        bool chunked;            /* the body without a length: Transfer-Encoding: chunked */
        long connect_timeout_ms; /* CURLOPT_CONNECTTIMEOUT_MS; 0: libcurl's default */
        bool in_thread;          /* no cmocka assertions (they cannot jump out of a thread),
                                  * CURLOPT_NOSIGNAL; a handle libcurl cannot make is status -1 */
} test_http_options;

typedef struct {
        const void *data;
        size_t size, off;
} test_http_upload;

/* CURLOPT_READFUNCTION with CURLOPT_READDATA a test_http_upload. */
static inline size_t test_http_on_read(char *p, size_t sz, size_t n, void *ud) {
        test_http_upload *u = ud;
        size_t k = sz * n < u->size - u->off ? sz * n : u->size - u->off;
        memcpy(p, (const char *) u->data + u->off, k);
        u->off += k;
        return k;
}

/* base_url then path; GET when body is NULL, else POST; hdrs NULL-terminated (or NULL), sent
 * with "Expect:" so that libcurl does not wait for 100-continue; a 30 s timeout. status is the
 * HTTP code, -1 on a transport error. */
static inline reply test_http_request_with(const char *base_url, const char *path, const void *body,
                                           size_t size, const char *const *hdrs,
                                           const test_http_options *o) {
        static const test_http_options plain;
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        char url[256];
        reply r = {};
        test_http_upload up = { body, size, 0 };

        if (!o)
                o = &plain;
        if (!o->in_thread)
                assert_non_null(c);
        if (!c) {
                r.status = -1;
                return r;
        }
        snprintf(url, sizeof(url), "%s%s", base_url, path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        if (o->in_thread)
                curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION,
                         o->in_thread ? reply_on_body_quiet : reply_on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, reply_on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
        if (o->connect_timeout_ms)
                curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
        for (size_t i = 0; hdrs && hdrs[i]; i++)
                h = curl_slist_append(h, hdrs[i]);
        h = curl_slist_append(h, "Expect:");
        if (body) {
                curl_easy_setopt(c, CURLOPT_POST, 1L);
                if (o->chunked) {
                        h = curl_slist_append(h, "Transfer-Encoding: chunked");
                        curl_easy_setopt(c, CURLOPT_READFUNCTION, test_http_on_read);
                        curl_easy_setopt(c, CURLOPT_READDATA, &up);
                } else {
                        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) size);
                }
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        if (curl_easy_perform(c) == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        else
                r.status = -1;
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return r;
}

static inline reply test_http_request(const char *base_url, const char *path, const void *body,
                                      size_t size, const char *const *hdrs) {
        return test_http_request_with(base_url, path, body, size, hdrs, NULL);
}
