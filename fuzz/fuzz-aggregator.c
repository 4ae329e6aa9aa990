/* SPDX-License-Identifier: MIT */
/* The aggregator's request handling: a real server (libmicrohttpd, the /v1 handlers, SQLite
 * store with a tiny model at version 0) on 127.0.0.1 in this process, sent each input as one
 * raw HTTP request on a fresh connection, the reply read to the end.
 *
 * Input: "METHOD URL HTTP/1.1" and header lines, a blank line, then the body (binary for
 * /v1/update). The harness normalises line ends to CRLF, replaces "@AUTH@" with a valid
 * "Bearer <device>:<secret>" of a device enrolled at start, drops Content-Length,
 * Transfer-Encoding, Connection and Expect (it sets the first and third itself, so that
 * the framing is always right and each run ends with the server closing).
 *
 * Determinism: the store is set up so that runs do not change what later runs see: the only
 * enrolment token is used up, the rate limit is out of reach, and MaxUpdateNorm=1e-30 with
 * ClipUpdates=no refuses every decoded update but an all-zero one (the only kind stored; a
 * second such request with the same Idempotency-Key is then a duplicate). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "blas.h"
#include "blobs.h"
#include "fuzz-util.h"
#include "model.h"
#include "server.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64];
static agg_store *store;
static agg_server *server;
static uint16_t port;
static char auth[160];

/* Runs before the directory goes (atexit is last in, first out). */
static void stop(void) {
        agg_server_stop(server);
        agg_store_free(store);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        char *kv[] = { "Model=tiny",          "BufferSize=2",           "Encoding=topk",
                       "MaxUpdateNorm=1e-30", "ClipUpdates=no",         "RateLimitPerSec=1e6",
                       "RateLimitBurst=1000000" };
        agg_server_options o = { .listen = "127.0.0.1:0", .no_merger = true };
        char err[256], sha[65], tok[AGG_ID_HEX], id[AGG_ID_HEX], secret[AGG_SECRET_HEX];
        model_config cfg;
        model *m;

        fuzz_quiet();
        blas_set_threads(1);
        snprintf(dir, sizeof(dir), "%s", fuzz_tmpdir("aggregator"));
        model_config_by_name("tiny", &cfg);
        if (agg_store_create(dir, &store) < 0 ||
            agg_store_set(store, kv, ARRAY_SIZE(kv), true, err, sizeof(err)) < 0 ||
            model_new(&cfg, 1, 1, &m) < 0)
                abort();
        model_init_params(m, 7);
        if (agg_blob_save_model(dir, m, 0, sha) < 0 || agg_store_insert_version0(store, sha) < 0)
                abort();
        model_free(m);
        /* one device; its single-use token is then spent */
        if (agg_store_token_create(store, 0, 1, tok) < 0 ||
            agg_store_enroll(store, tok, "fuzz", id, secret) < 0)
                abort();
        snprintf(auth, sizeof(auth), "Bearer %s:%s", id, secret);
        if (agg_server_start(store, &o, &server) < 0)
                abort();
        port = agg_server_port(server);
        atexit(stop);
        return 0;
}

typedef struct {
        char *p;
        size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
        if (n == 0)
                return;
        if (b->n + n > b->cap) {
                b->cap = (b->n + n) * 2 + 256;
                b->p = realloc(b->p, b->cap);
                if (!b->p)
                        abort();
        }
        memcpy(b->p + b->n, d, n);
        b->n += n;
}

static bool dropped_header(const char *line, size_t n) {
        static const char *const names[] = { "content-length:", "transfer-encoding:",
                                             "connection:", "expect:" };
        for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
                size_t k = strlen(names[i]);
                if (n >= k && strncasecmp(line, names[i], k) == 0)
                        return true;
        }
        return false;
}

static void put_line(buf *b, const char *line, size_t n) {
        for (;;) {
                const char *a = memmem(line, n, "@AUTH@", 6);
                if (!a)
                        break;
                put(b, line, (size_t) (a - line));
                put(b, auth, strlen(auth));
                n -= (size_t) (a - line) + 6;
                line = a + 6;
        }
        put(b, line, n);
        put(b, "\r\n", 2);
}

static buf build_request(const uint8_t *data, size_t size) {
        const char *head = (const char *) data, *body = NULL;
        size_t head_size = size, body_size = 0;
        char cl[64];
        buf b = {};

        for (size_t i = 0; i + 1 < size; i++) {
                size_t skip = 0;
                if (data[i] == '\n' && data[i + 1] == '\n')
                        skip = 2;
                else if (i + 3 < size && memcmp(data + i, "\r\n\r\n", 4) == 0)
                        skip = 4;
                if (skip) {
                        head_size = i;
                        body = (const char *) data + i + skip;
                        body_size = size - i - skip;
                        break;
                }
        }
        for (size_t off = 0, line_no = 0; off < head_size; line_no++) {
                const char *nl = memchr(head + off, '\n', head_size - off);
                size_t n = nl ? (size_t) (nl - (head + off)) : head_size - off;
                size_t next = off + n + 1;

                if (n > 0 && head[off + n - 1] == '\r')
                        n--;
                if (line_no == 0 || !dropped_header(head + off, n))
                        put_line(&b, head + off, n);
                off = next;
        }
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\nConnection: close\r\n\r\n", body_size);
        put(&b, cl, strlen(cl));
        if (body_size)
                put(&b, body, body_size);
        return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { .tv_sec = 20 };
        struct linger reset = { .l_onoff = 1, .l_linger = 0 };
        char sink[65536];
        bool first = true;
        buf req;
        int fd;

        if (size > 256 * 1024)
                return -1;
        req = build_request(data, size);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        /* Closing with a reset leaves no TIME_WAIT behind: a thousand connections a second
         * would otherwise use up the ephemeral ports within a minute. */
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)) < 0) {
                perror("aggregator: socket");
                abort();
        }
        for (int tries = 0; connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0; tries++) {
                if ((errno != EADDRNOTAVAIL && errno != EINTR) || tries == 200) {
                        perror("aggregator: connect");
                        abort();
                }
                usleep(10000);
        }
        for (size_t off = 0; off < req.n;) {
                ssize_t k = send(fd, req.p + off, req.n - off, MSG_NOSIGNAL);
                if (k < 0) {
                        /* libFuzzer's timeout alarm interrupts; SO_SNDTIMEO makes it EINTR */
                        if (errno == EINTR)
                                continue;
                        if (errno == EPIPE || errno == ECONNRESET)
                                break; /* refused early (a bad request line): fine */
                        abort();
                }
                off += (size_t) k;
        }
        /* the server closes after its one reply */
        for (;;) {
                ssize_t k = recv(fd, sink, sizeof(sink) - 1, 0);
                if (k > 0) {
                        if (first && getenv("FUZZ_VERBOSE")) {
                                sink[k] = 0;
                                char *body = strstr(sink, "\r\n\r\n");
                                fprintf(stderr, "%.*s %.200s\n", (int) strcspn(sink, "\r"), sink,
                                        body ? body + 4 : "");
                        }
                        first = false;
                        continue;
                }
                if (k == 0 || errno == ECONNRESET)
                        break;
                if (errno == EINTR)
                        continue;
                fprintf(stderr, "aggregator: no end of reply: %s\n", strerror(errno));
                abort();
        }
        close(fd);
        free(req.p);
        return 0;
}
