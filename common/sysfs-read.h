/* SPDX-License-Identifier: MIT */
#pragma once

/* Reading small sysfs and procfs files below a root directory ("/" in production, a fixture
 * tree in tests), and strict parsing of what they hold. Paths are always resolved with
 * openat() relative to the root's fd (a leading '/' is skipped), so a fake tree never
 * reaches the real /. Functions return 0 or a negative errno and log nothing: the caller
 * knows whether a missing file is an error or just an absent sensor. */

#include <stddef.h>
#include <stdint.h>

/* Opens root (NULL or "" means "/") as an O_PATH directory fd. */
int sysfs_root_open(const char *root, int *ret_fd);

/* "<root>/<rel>" for messages, with "/" + "/proc/stat" giving "/proc/stat"; truncated to
 * fit buf. Returns buf. */
const char *sysfs_path(const char *root, const char *rel, char *buf, size_t size);

/* Reads "<root>/<path>" into buf and NUL-terminates it; the contents must fit in size - 1
 * bytes (-EFBIG otherwise). read() errors pass through: sysfs attributes fail in read(),
 * not open(), with e.g. -ENODATA or -EIO. A NUL byte inside the file gives -EBADMSG (it
 * is not text). ret_len may be NULL. */
int sysfs_read_at(int root_fd, const char *path, char *buf, size_t size, size_t *ret_len);

/* Same into a malloc'd buffer of up to max bytes (plus the NUL), for files like /proc/stat
 * whose size grows with the number of CPUs and interrupts. */
int sysfs_read_alloc_at(int root_fd, const char *path, size_t max, char **ret, size_t *ret_len);

/* Reads the file and strips surrounding whitespace: "Battery\n" gives "Battery". */
int sysfs_read_string_at(int root_fd, const char *path, char *buf, size_t size);

/* Reads one integer in [min, max] (sysfs_parse_int64 rules). */
int sysfs_read_int64_at(int root_fd, const char *path, int64_t min, int64_t max, int64_t *ret);

/* Strips leading and trailing ASCII whitespace in place; returns the first kept char. */
char *sysfs_strip(char *s);

/* Strict base-10 integers over exactly n bytes: an optional '-' (signed only), then digits.
 * No whitespace, '+', hex or trailing text. -EINVAL if not a number (including empty),
 * -ERANGE on overflow or outside [min, max] (a negative number for the unsigned parser is
 * out of range). *ret is written only on success. */
int sysfs_parse_int64_n(const char *s, size_t n, int64_t min, int64_t max, int64_t *ret);
int sysfs_parse_uint64_n(const char *s, size_t n, uint64_t max, uint64_t *ret);

/* Strict fixed-point decimal over n bytes: [-]digits[.digits], at most 19 digits in all,
 * as the kernel prints load averages and PSI ("12.57"). No exponent, "nan" or "inf", and
 * independent of the locale. Correctly rounded (the digits are exact in an integer, then
 * one division). -EINVAL / -ERANGE as above. */
int sysfs_parse_decimal_n(const char *s, size_t n, double min, double max, double *ret);

/* The same for a NUL-terminated string, allowing surrounding whitespace ("45000\n"). */
int sysfs_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret);
int sysfs_parse_uint64(const char *s, uint64_t max, uint64_t *ret);
int sysfs_parse_decimal(const char *s, double min, double max, double *ret);
