/* SPDX-License-Identifier: MIT */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macros.h"

/* Linux caps a single read/write at 0x7ffff000 bytes; stay well under SSIZE_MAX anyway. */
#define IO_CHUNK ((size_t) 1 << 30)

int write_full(int fd, const void *buf, size_t n) {
        const struct iovec one = { .iov_base = (void *) buf, .iov_len = n };
        return writev_full(fd, &one, 1);
}

int writev_full(int fd, const struct iovec *iov, size_t n_iov) {
        struct iovec batch[64];

        /* Copy batches into a local array so partial writes can adjust the first entry. */
        while (n_iov > 0) {
                size_t nb = 0, total = 0;

                while (nb < ARRAY_SIZE(batch) && nb < n_iov && nb < IOV_MAX) {
                        size_t len = iov[nb].iov_len;
                        if (len > IO_CHUNK - total) {
                                if (nb == 0) { /* one huge buffer: write it piecewise */
                                        int r = write_full(fd, iov[0].iov_base, len);
                                        if (r < 0)
                                                return r;
                                        iov++;
                                        n_iov--;
                                        continue;
                                }
                                break;
                        }
                        batch[nb] = iov[nb];
                        total += len;
                        nb++;
                }
                if (nb == 0)
                        continue; /* consumed a huge buffer above; n_iov may now be 0 */

                iov += nb;
                n_iov -= nb;

                struct iovec *b = batch;
                while (total > 0) {
                        ssize_t k = writev(fd, b, (int) nb);
                        if (k < 0) {
                                if (errno == EINTR)
                                        continue;
                                return -errno;
                        }
                        if (k == 0)
                                return -EIO;
                        total -= (size_t) k;
                        while (nb > 0 && (size_t) k >= b->iov_len) {
                                k -= (ssize_t) b->iov_len;
                                b++;
                                nb--;
                        }
                        if (nb > 0) {
                                b->iov_base = (uint8_t *) b->iov_base + k;
                                b->iov_len -= (size_t) k;
                        }
                }
        }
        return 0;
}

int read_full_file(const char *path, size_t max, void **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ uint8_t *buf = NULL;
        size_t size = 0, alloc;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        if (S_ISREG(st.st_mode)) {
                if ((uintmax_t) st.st_size > max)
                        return -EFBIG;
                alloc = (size_t) st.st_size + 1; /* +1 also lets us see EOF in one read */
        } else
                alloc = 4096;
        if (max >= SIZE_MAX - 1)
                max = SIZE_MAX - 2;

        buf = malloc(alloc + 1);
        if (!buf)
                return -ENOMEM;

        for (;;) {
                if (size == alloc) {
                        if (size > max)
                                return -EFBIG;
                        size_t n = alloc > SIZE_MAX / 2 - 1 ? SIZE_MAX - 1 : alloc * 2;
                        n = MIN(n, max + 1);
                        uint8_t *nbuf = realloc(buf, n + 1);
                        if (!nbuf)
                                return -ENOMEM;
                        buf = nbuf;
                        alloc = n;
                }
                ssize_t k = read(fd, buf + size, MIN(alloc - size, IO_CHUNK));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                size += (size_t) k;
        }
        if (size > max)
                return -EFBIG;

        buf[size] = 0;
        *ret = TAKE_PTR(buf);
        if (ret_size)
                *ret_size = size;
        return 0;
}

static int split_path(const char *path, char **ret_dir, const char **ret_base) {
        const char *slash = strrchr(path, '/');
        char *dir;

        if (slash) {
                size_t n = (size_t) (slash - path);
                dir = n == 0 ? strdup("/") : strndup(path, n);
                *ret_base = slash + 1;
        } else {
                dir = strdup(".");
                *ret_base = path;
        }
        if (!dir)
                return -ENOMEM;
        *ret_dir = dir;
        return 0;
}

int fsync_parent_dir(const char *path) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int dfd = -1;
        const char *base;
        int r;

        r = split_path(path, &dir, &base);
        if (r < 0)
                return r;
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (fsync(dfd) < 0)
                return -errno;
        return 0;
}

int atomic_file_open(const char *path, mode_t mode, char **ret_tmp_path, int *ret_fd) {
        _cleanup_free_ char *dir = NULL, *tmp = NULL;
        const char *base;
        int r, fd;

        if (!path || !*path)
                return -EINVAL;
        r = split_path(path, &dir, &base);
        if (r < 0)
                return r;
        if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
                return -EISDIR;

        if (asprintf(&tmp, "%s/.#%s.XXXXXX", dir, base) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fchmod(fd, mode & 07777) < 0) {
                r = -errno;
                atomic_file_abort(fd, tmp);
                return r;
        }

        *ret_tmp_path = TAKE_PTR(tmp);
        *ret_fd = fd;
        return 0;
}

int atomic_file_commit(int fd, const char *tmp_path, const char *path) {
        int r;

        if (fsync(fd) < 0) {
                r = -errno;
                atomic_file_abort(fd, tmp_path);
                return r;
        }
        r = close(fd);
        if (r < 0 && errno != EINTR) { /* after EINTR the fd is closed on Linux */
                r = -errno;
                atomic_file_abort(-1, tmp_path);
                return r;
        }
        if (rename(tmp_path, path) < 0) {
                r = -errno;
                atomic_file_abort(-1, tmp_path);
                return r;
        }
        return fsync_parent_dir(path);
}

void atomic_file_abort(int fd, const char *tmp_path) {
        int saved = errno;

        if (fd >= 0)
                close(fd);
        if (tmp_path)
                (void) unlink(tmp_path);
        errno = saved;
}

int write_file_atomic(const char *path, mode_t mode, const void *data, size_t size) {
        char *tmp = NULL;
        int fd = -1, r;

        r = atomic_file_open(path, mode, &tmp, &fd);
        if (r < 0)
                return r;
        r = write_full(fd, data, size);
        if (r < 0)
                atomic_file_abort(fd, tmp);
        else
                r = atomic_file_commit(fd, tmp, path);
        free(tmp);
        return r;
}
