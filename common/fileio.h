/* SPDX-License-Identifier: MIT */
#pragma once

/* Small file helpers: full reads and writes, and atomic replacement of a file (write a
 * temporary file in the same directory, fsync it, rename it over the target, fsync the
 * directory). All functions return 0 or a negative errno and log nothing: the caller,
 * who knows what the file is for, logs. */

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Writes all n bytes, retrying on short writes and EINTR. -EIO if write() returns 0. */
int write_full(int fd, const void *buf, size_t n);

/* Writes all the buffers, retrying on short writes and EINTR, in batches of at most
 * IOV_MAX entries. The iovec array is not modified. */
int writev_full(int fd, const struct iovec *iov, size_t n_iov);

/* Reads the whole file (regular file or stream) into a malloc'd buffer, which gets one
 * extra NUL byte after the contents (not counted in *ret_size) so text can be used as
 * a string. -EFBIG if the file holds more than max bytes. */
int read_full_file(const char *path, size_t max, void **ret, size_t *ret_size);

/* Creates a temporary file ".#<name>.XXXXXX" next to path (same directory, hence same
 * file system, so the final rename is atomic), opened O_RDWR|O_CLOEXEC, with permission
 * bits exactly 'mode' (fchmod, umask not applied). Returns the malloc'd temp path and
 * the fd. On error nothing is left behind. */
int atomic_file_open(const char *path, mode_t mode, char **ret_tmp_path, int *ret_fd);

/* Finishes an atomic write: fsync(fd), close(fd), rename(tmp_path, path), fsync of the
 * directory. Always consumes fd (closed on success and on error); on error the temp
 * file is unlinked and path is left untouched (or, if only the final directory fsync
 * failed, already replaced but maybe not durable). The caller still frees tmp_path. */
int atomic_file_commit(int fd, const char *tmp_path, const char *path);

/* Abandons an atomic write: closes fd (if >= 0) and unlinks tmp_path (if non-NULL).
 * Preserves errno. */
void atomic_file_abort(int fd, const char *tmp_path);

/* The whole of an atomic write for data already in memory. */
int write_file_atomic(const char *path, mode_t mode, const void *data, size_t size);

/* fsyncs the directory containing path ("." for a bare name). */
int fsync_parent_dir(const char *path);
