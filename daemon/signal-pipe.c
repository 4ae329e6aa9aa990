/* SPDX-License-Identifier: MIT */
#include "signal-pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <unistd.h>

static int fds[2] = { -1, -1 };
static signal_pipe_fn handler;
static void *handler_userdata;

static void on_signal(int sig) {
        int saved = errno;
        uint8_t b = (uint8_t) sig;
        (void) !write(fds[1], &b, 1);
        errno = saved;
}

static int on_readable(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        uint8_t b;

        while (read(fd, &b, 1) == 1)
                handler(b, handler_userdata);
        return 0;
}

int signal_pipe_attach(sd_event *e, signal_pipe_fn fn, void *userdata) {
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };

        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
                return -errno;
        handler = fn;
        handler_userdata = userdata;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        return sd_event_add_io(e, NULL, fds[0], EPOLLIN, on_readable, NULL);
}

void signal_pipe_detach(void) {
        struct sigaction sa = { .sa_handler = SIG_DFL };

        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        for (int i = 0; i < 2; i++)
                if (fds[i] >= 0) {
                        close(fds[i]);
                        fds[i] = -1;
                }
}
