/* SPDX-License-Identifier: MIT */
/* The control socket's framing, parsing and dispatch: a real control_server on an sd-event
 * loop in this process, fed the input over a fresh connection each run (then EOF), with a
 * stand-in command table like tests/test-control.c's. The run ends when the server has
 * answered and closed; it must then hold no client. An input starting with 0xff gets a
 * request line over CONTROL_MAX_LINE in front, to reach the EMSGSIZE path. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "fuzz-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64], path[128];
static sd_event *event;
static control_server *server;
static char *big;
#define BIG_SIZE (CONTROL_MAX_LINE + 100)

static int h_status(json_t *req, json_t **ret_reply, void *userdata) {
        *ret_reply = json_pack("{s:s,s:f}", "state", "running", "tokens_per_s", 12.5);
        return *ret_reply ? 0 : -ENOMEM;
}

static int h_pause(json_t *req, json_t **ret_reply, void *userdata) {
        json_t *sec = json_object_get(req, "seconds");
        uid_t uid;
        pid_t pid;

        if (sec && !json_is_integer(sec))
                return control_error(ret_reply, EINVAL, "\"seconds\" must be an integer");
        if (control_server_peer(server, &uid, &pid) < 0)
                abort(); /* inside a handler the peer is known */
        *ret_reply = json_pack("{s:s}", "state", "paused");
        return 0;
}

static int h_fail(json_t *req, json_t **ret_reply, void *userdata) {
        const char *key = json_string_value(json_object_get(req, "key"));
        /* messages built from request text, as the daemon's handlers do */
        return control_error(ret_reply, -ENOENT, "no key '%s'", key ? key : "(none)");
}

static int h_fail_bare(json_t *req, json_t **ret_reply, void *userdata) {
        return -EBUSY;
}

static int h_bad_reply(json_t *req, json_t **ret_reply, void *userdata) {
        *ret_reply = json_array();
        return 0;
}

static int h_echo(json_t *req, json_t **ret_reply, void *userdata) {
        *ret_reply = json_pack("{s:O?}", "text", json_object_get(req, "text"));
        return 0;
}

static int h_noreply(json_t *req, json_t **ret_reply, void *userdata) {
        return 0;
}

static const control_command commands[] = {
        { "status", false, h_status },       { "pause", true, h_pause },
        { "fail", false, h_fail },           { "fail-bare", false, h_fail_bare },
        { "bad-reply", false, h_bad_reply }, { "echo", false, h_echo },
        { "noreply", false, h_noreply },     { "null", false, NULL },
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        fuzz_quiet();
        snprintf(dir, sizeof(dir), "%s", fuzz_tmpdir("control"));
        snprintf(path, sizeof(path), "%s/control", dir);
        if (sd_event_new(&event) < 0 ||
            control_server_new(event, path, NULL, commands, ARRAY_SIZE(commands), NULL,
                               &server) < 0)
                abort();
        big = malloc(BIG_SIZE);
        if (!big)
                abort();
        memset(big, 'x', BIG_SIZE);
        memcpy(big, "{\"cmd\":\"echo\",\"text\":\"", 22);
        return 0;
}

/* Sends what is left of one buffer; false while some remains. */
static bool send_some(int fd, const char *buf, size_t size, size_t *off) {
        while (*off < size) {
                ssize_t k = send(fd, buf + *off, size - *off, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EAGAIN)
                                return false;
                        if (errno == EPIPE || errno == ECONNRESET) {
                                *off = size; /* the server closed on us: fine */
                                return true;
                        }
                        abort();
                }
                *off += (size_t) k;
        }
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        bool with_big, shut = false, eof = false;
        size_t off_big = 0, off = 0;
        char sink[16384];
        int fd;

        if (size > 256 * 1024)
                return -1;
        with_big = size > 0 && data[0] == 0xff;
        if (with_big)
                data++, size--;

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                abort();
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                abort();

        /* One thread plays both sides: push input, drain replies, let the server run. */
        for (unsigned i = 0; !eof; i++) {
                if (i > 1000000) {
                        fprintf(stderr, "control server stuck: input %s, reply pending\n",
                                shut ? "sent" : "not all sent");
                        abort();
                }
                if (!shut) {
                        bool done = with_big ? send_some(fd, big, BIG_SIZE, &off_big) : true;
                        if (done && send_some(fd, (const char *) data, size, &off)) {
                                (void) shutdown(fd, SHUT_WR);
                                shut = true;
                        }
                }
                for (;;) {
                        ssize_t k = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
                        if (k > 0)
                                continue;
                        if (k == 0 || (k < 0 && errno == ECONNRESET))
                                eof = true;
                        else if (errno != EAGAIN)
                                abort();
                        break;
                }
                if (!eof && sd_event_run(event, 1000) < 0)
                        abort();
        }
        close(fd);
        /* every connection is gone once its socket closed */
        if (control_server_n_clients(server) != 0)
                abort();
        return 0;
}
