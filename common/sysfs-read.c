/* SPDX-License-Identifier: MIT */
#include "sysfs-read.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macros.h"

int sysfs_root_open(const char *root, int *ret_fd) {
        int fd = open(root && *root ? root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

/* openat() with an absolute path would ignore the root fd; "" would fail. */
static const char *relative(const char *path) {
        while (*path == '/')
                path++;
        return *path ? path : ".";
}

const char *sysfs_path(const char *root, const char *rel, char *buf, size_t size) {
        size_t n;

        if (!root || !*root)
                root = "/";
        n = strlen(root);
        while (n > 0 && root[n - 1] == '/')
                n--;
        while (*rel == '/')
                rel++;
        snprintf(buf, size, "%.*s/%s", (int) MIN(n, (size_t) 4096), root, rel);
        return buf;
}

static int open_at(int root_fd, const char *path) {
        int fd = openat(root_fd, relative(path), O_RDONLY | O_CLOEXEC | O_NOCTTY);
        return fd < 0 ? -errno : fd;
}

/* read() that retries on EINTR; returns bytes read or a negative errno. */
static ssize_t read_some(int fd, char *buf, size_t n) {
        for (;;) {
                ssize_t k = read(fd, buf, n);
                if (k >= 0)
                        return k;
                if (errno != EINTR)
                        return -errno;
        }
}

int sysfs_read_at(int root_fd, const char *path, char *buf, size_t size, size_t *ret_len) {
        _cleanup_close_ int fd = -1;
        size_t n = 0;

        if (size == 0)
                return -EINVAL;
        buf[0] = '\0';
        fd = open_at(root_fd, path);
        if (fd < 0)
                return fd;
        for (;;) {
                char probe;
                ssize_t k;

                if (n == size - 1) {
                        /* Full: one more byte tells a file that fits exactly from a longer one. */
                        k = read_some(fd, &probe, 1);
                        if (k < 0)
                                return (int) k;
                        if (k > 0)
                                return -EFBIG;
                        break;
                }
                k = read_some(fd, buf + n, size - 1 - n);
                if (k < 0)
                        return (int) k;
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        if (memchr(buf, '\0', n))
                return -EBADMSG;
        if (ret_len)
                *ret_len = n;
        return 0;
}

int sysfs_read_alloc_at(int root_fd, const char *path, size_t max, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, alloc = 4096;

        if (max >= SIZE_MAX / 2)
                return -EINVAL;
        fd = open_at(root_fd, path);
        if (fd < 0)
                return fd;
        buf = malloc(alloc + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t k;

                if (n == alloc) {
                        char *nbuf;

                        if (n > max)
                                return -EFBIG;
                        alloc = MIN(alloc * 2, max + 1);
                        nbuf = realloc(buf, alloc + 1);
                        if (!nbuf)
                                return -ENOMEM;
                        buf = nbuf;
                }
                k = read_some(fd, buf + n, alloc - n);
                if (k < 0)
                        return (int) k;
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        if (n > max)
                return -EFBIG;
        buf[n] = '\0';
        if (memchr(buf, '\0', n))
                return -EBADMSG;
        if (ret_len)
                *ret_len = n;
        *ret = TAKE_PTR(buf);
        return 0;
}

static bool is_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

char *sysfs_strip(char *s) {
        size_t n;

        while (is_space(*s))
                s++;
        n = strlen(s);
        while (n > 0 && is_space(s[n - 1]))
                n--;
        s[n] = '\0';
        return s;
}

int sysfs_read_string_at(int root_fd, const char *path, char *buf, size_t size) {
        char *s;
        int r;

        r = sysfs_read_at(root_fd, path, buf, size, NULL);
        if (r < 0)
                return r;
        s = sysfs_strip(buf);
        memmove(buf, s, strlen(s) + 1);
        return 0;
}

int sysfs_read_int64_at(int root_fd, const char *path, int64_t min, int64_t max, int64_t *ret) {
        char buf[64];
        int r;

        r = sysfs_read_at(root_fd, path, buf, sizeof(buf), NULL);
        if (r < 0)
                return r;
        return sysfs_parse_int64(buf, min, max, ret);
}

/* Digits only, into a uint64; -EINVAL for none or a non-digit, -ERANGE on overflow. */
static int parse_digits(const char *s, size_t n, uint64_t *ret) {
        uint64_t v = 0;

        if (n == 0)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                unsigned d;

                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                d = (unsigned) (s[i] - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

int sysfs_parse_uint64_n(const char *s, size_t n, uint64_t max, uint64_t *ret) {
        uint64_t v;
        int r;

        if (n > 0 && s[0] == '-') {
                /* A well-formed negative number is out of range, anything else not a number. */
                r = parse_digits(s + 1, n - 1, &v);
                return r == -EINVAL ? r : -ERANGE;
        }
        r = parse_digits(s, n, &v);
        if (r < 0)
                return r;
        if (v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int sysfs_parse_int64_n(const char *s, size_t n, int64_t min, int64_t max, int64_t *ret) {
        bool neg = n > 0 && s[0] == '-';
        uint64_t v;
        int64_t x;
        int r;

        r = parse_digits(s + neg, n - neg, &v);
        if (r < 0)
                return r;
        if (neg) {
                if (v > (uint64_t) INT64_MAX + 1)
                        return -ERANGE;
                x = v == (uint64_t) INT64_MAX + 1 ? INT64_MIN : -(int64_t) v;
        } else {
                if (v > (uint64_t) INT64_MAX)
                        return -ERANGE;
                x = (int64_t) v;
        }
        if (x < min || x > max)
                return -ERANGE;
        *ret = x;
        return 0;
}

int sysfs_parse_decimal_n(const char *s, size_t n, double min, double max, double *ret) {
        static const double pow10[] = {
                1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,
                1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19
        };
        bool neg = n > 0 && s[0] == '-';
        const char *p = s + neg, *end = s + n, *dot;
        size_t n_int, n_frac = 0;
        uint64_t v = 0;
        double x;

        dot = memchr(p, '.', (size_t) (end - p));
        n_int = (size_t) ((dot ? dot : end) - p);
        if (n_int == 0)
                return -EINVAL;
        if (dot) {
                n_frac = (size_t) (end - dot - 1);
                if (n_frac == 0) /* "12." */
                        return -EINVAL;
        }
        /* Check the characters first so "1x" is -EINVAL even when long. */
        for (const char *q = p; q < end; q++)
                if (q != dot && (*q < '0' || *q > '9'))
                        return -EINVAL;
        if (n_int + n_frac > 19)
                return -ERANGE;
        for (const char *q = p; q < end; q++)
                if (q != dot)
                        v = v * 10 + (uint64_t) (*q - '0');
        x = (double) v / pow10[n_frac];
        if (neg && v > 0) /* no "-0" */
                x = -x;
        if (x < min || x > max)
                return -ERANGE;
        *ret = x;
        return 0;
}

/* The span of s without surrounding whitespace. */
static size_t trimmed(const char **s) {
        size_t n;

        while (is_space(**s))
                (*s)++;
        n = strlen(*s);
        while (n > 0 && is_space((*s)[n - 1]))
                n--;
        return n;
}

int sysfs_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret) {
        size_t n = trimmed(&s);
        return sysfs_parse_int64_n(s, n, min, max, ret);
}

int sysfs_parse_uint64(const char *s, uint64_t max, uint64_t *ret) {
        size_t n = trimmed(&s);
        return sysfs_parse_uint64_n(s, n, max, ret);
}

int sysfs_parse_decimal(const char *s, double min, double max, double *ret) {
        size_t n = trimmed(&s);
        return sysfs_parse_decimal_n(s, n, min, max, ret);
}
