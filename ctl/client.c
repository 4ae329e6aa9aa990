/* SPDX-License-Identifier: MIT */
#include "client.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "macros.h"
#include "time-util.h"

/* Replies are bounded by the daemon (a sample of 1024 tokens, a few dozen checkpoints). */
#define MAX_REPLY (4u << 20)

int ctl_client_connect(const char *path, ctl_client *ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        char *p;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        p = strdup(path);
        if (!p)
                return -ENOMEM;
        *ret = (ctl_client){ .fd = TAKE_FD(fd), .path = p };
        return 0;
}

void ctl_client_done(ctl_client *c) {
        if (c->fd >= 0)
                close(c->fd);
        free(c->path);
        *c = (ctl_client){ .fd = -1 };
}

static int send_all(int fd, const char *buf, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return errno == EPIPE ? -ECONNRESET : -errno;
                buf += k;
                n -= (size_t) k;
        }
        return 0;
}

/* Reads up to and including a newline; the reply line, NUL-terminated and without it. */
static int read_line(int fd, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, allocated = 0;
        double deadline = mono_now_s() + CTL_REPLY_TIMEOUT_S;

        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int left_ms = (int) ((deadline - mono_now_s()) * 1000);
                char *nl;

                if (left_ms <= 0)
                        return -ETIMEDOUT;
                int r = poll(&pfd, 1, left_ms);
                if (r < 0 && errno == EINTR)
                        return -EINTR; /* Ctrl-C while waiting: the caller stops */
                if (r < 0)
                        return -errno;
                if (r == 0)
                        continue;
                if (allocated - n < 4096) {
                        if (allocated >= MAX_REPLY)
                                return -EMSGSIZE;
                        char *nb = realloc(buf, allocated + 65536);
                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                        allocated += 65536;
                }
                ssize_t k = read(fd, buf + n, allocated - n - 1);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        return -ECONNRESET;
                n += (size_t) k;
                buf[n] = 0;
                nl = memchr(buf, '\n', n);
                if (nl) {
                        *nl = 0;
                        *ret = TAKE_PTR(buf);
                        return 0;
                }
        }
}

int ctl_client_call(ctl_client *c, json_t *req, json_t **ret_reply) {
        _cleanup_free_ char *line = NULL, *reply_text = NULL;
        json_t *reply;
        int r;

        line = json_dumps(req, JSON_COMPACT);
        if (!line)
                return -ENOMEM;
        r = send_all(c->fd, line, strlen(line));
        if (r >= 0)
                r = send_all(c->fd, "\n", 1);
        if (r < 0)
                return r;
        r = read_line(c->fd, &reply_text);
        if (r < 0)
                return r;
        reply = json_loads(reply_text, 0, NULL);
        if (!json_is_object(reply)) {
                json_decref(reply);
                return -EBADMSG;
        }
        *ret_reply = reply;
        return 0;
}

int ctl_errno_from_name(const char *name) {
        static const struct {
                const char *name;
                int error;
        } table[] = {
                { "EPERM", EPERM },   { "EACCES", EACCES },     { "EINVAL", EINVAL },
                { "ENOENT", ENOENT }, { "EMSGSIZE", EMSGSIZE }, { "EBUSY", EBUSY },
                { "ENOSYS", ENOSYS }, { "ENOMEM", ENOMEM },     { "EEXIST", EEXIST },
                { "EAGAIN", EAGAIN }, { "EIO", EIO },           { "ENODATA", ENODATA },
                { "ERANGE", ERANGE }, { "ENOSPC", ENOSPC },     { "EROFS", EROFS },
        };
        for (size_t i = 0; name && i < ARRAY_SIZE(table); i++)
                if (strcmp(table[i].name, name) == 0)
                        return table[i].error;
        return EIO;
}
