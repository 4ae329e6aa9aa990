/* SPDX-License-Identifier: MIT */
/* The control socket server on a real sd-event loop and a real Unix socket in a temp dir.
 * The test process is both client and server: it drives the loop with sd_event_run()
 * between client steps, so no threads are needed. The privilege cases fork a child that
 * drops to a freshly created unprivileged user while the parent keeps serving. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "log.h"

typedef struct fixture {
        char dir[64];
        char path[128];
        sd_event *e;
        control_server *s;
        /* what the handlers saw */
        int n_pause;
        long last_seconds;
        uid_t last_uid;
} fixture;

/* ---- handlers: a stand-in for the daemon's command table ---- */

static int h_status(json_t *req, json_t **ret_reply, void *userdata) {
        *ret_reply = json_pack("{s:s,s:f}", "state", "running", "tokens_per_s", 12.5);
        return *ret_reply ? 0 : -ENOMEM;
}

static int h_pause(json_t *req, json_t **ret_reply, void *userdata) {
        fixture *f = userdata;
        json_t *sec = json_object_get(req, "seconds");
        uid_t uid = (uid_t) -1;

        if (sec && !json_is_integer(sec))
                return control_error(ret_reply, EINVAL, "\"seconds\" must be an integer");
        assert_int_equal(control_server_peer(f->s, &uid, NULL), 0);
        f->last_uid = uid;
        f->last_seconds = sec ? (long) json_integer_value(sec) : -1;
        f->n_pause++;
        *ret_reply = json_pack("{s:s}", "state", "paused");
        return 0;
}

static int h_fail(json_t *req, json_t **ret_reply, void *userdata) {
        return control_error(ret_reply, -ENOENT, "nothing here");
}

static int h_fail_bare(json_t *req, json_t **ret_reply, void *userdata) {
        return -EBUSY;
}

static int h_bad_reply(json_t *req, json_t **ret_reply, void *userdata) {
        *ret_reply = json_array(); /* a handler bug: replies must be objects */
        return 0;
}

static int h_echo(json_t *req, json_t **ret_reply, void *userdata) {
        json_t *t = json_object_get(req, "text");

        *ret_reply = json_pack("{s:O?}", "text", t);
        return 0;
}

static int h_noreply(json_t *req, json_t **ret_reply, void *userdata) {
        return 0;
}

static const control_command commands[] = {
        { "status", false, h_status },       { "pause", true, h_pause },
        { "fail", false, h_fail },           { "fail-bare", false, h_fail_bare },
        { "bad-reply", false, h_bad_reply }, { "echo", false, h_echo },
        { "noreply", false, h_noreply },
};

/* ---- fixture ---- */

static void server_start(fixture *f, const char *group) {
        f->s = control_server_free(f->s);
        assert_int_equal(
                control_server_new(f->e, f->path, group, commands, ARRAY_SIZE(commands), f, &f->s),
                0);
}

static int setup(void **state) {
        fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        snprintf(f->dir, sizeof(f->dir), "/tmp/test-control.XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        /* The unprivileged child must be able to reach the socket inside. */
        assert_int_equal(chmod(f->dir, 0755), 0);
        snprintf(f->path, sizeof(f->path), "%s/control", f->dir);
        assert_int_equal(sd_event_new(&f->e), 0);
        server_start(f, NULL);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        fixture *f = *state;

        control_server_free(f->s);
        sd_event_unref(f->e);
        rmdir(f->dir);
        free(f);
        return 0;
}

/* ---- a client that lets the server run while it waits ---- */

typedef struct conn {
        int fd;
        char *buf;
        size_t len, cap;
        bool eof;
        int err;
} conn;

static void pump(fixture *f, uint64_t usec) {
        assert_true(sd_event_run(f->e, usec) >= 0);
}

static conn *conn_open(fixture *f) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        conn *c = calloc(1, sizeof(*c));

        assert_non_null(c);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(c->fd >= 0);
        strcpy(sa.sun_path, f->path);
        /* Completes against the backlog without the loop running. */
        assert_int_equal(connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
        return c;
}

static void conn_close(conn *c) {
        if (!c)
                return;
        close(c->fd);
        free(c->buf);
        free(c);
}

/* Reads whatever has arrived; returns bytes read. */
static size_t conn_fill(conn *c) {
        size_t total = 0;

        while (!c->eof && !c->err) {
                if (c->cap - c->len < 4096) {
                        c->cap = c->cap ? c->cap * 2 : 65536;
                        c->buf = realloc(c->buf, c->cap);
                        assert_non_null(c->buf);
                }
                ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
                if (k < 0) {
                        if (errno != EAGAIN)
                                c->err = errno;
                        break;
                }
                if (k == 0)
                        c->eof = true;
                c->len += (size_t) k;
                total += (size_t) k;
        }
        return total;
}

/* Sends all of data, running the server (and reading its replies) whenever the socket is
 * full. Returns 0 or the send error. */
static int conn_send(fixture *f, conn *c, const char *data, size_t n) {
        size_t off = 0;

        while (off < n) {
                ssize_t k = send(c->fd, data + off, n - off, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno != EAGAIN)
                                return -errno;
                        pump(f, 10000);
                        conn_fill(c);
                        continue;
                }
                off += (size_t) k;
        }
        return 0;
}

static int conn_sends(fixture *f, conn *c, const char *s) {
        return conn_send(f, c, s, strlen(s));
}

/* The next reply line as a parsed object, or NULL at end of stream (5 s timeout fails). */
static json_t *conn_reply(fixture *f, conn *c) {
        for (int i = 0; i < 500; i++) {
                char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
                if (nl) {
                        json_error_t jerr;
                        size_t n = (size_t) (nl - c->buf);
                        json_t *j = json_loadb(c->buf, n, 0, &jerr);
                        if (!j)
                                fail_msg("unparseable reply '%.*s': %s", (int) n, c->buf,
                                         jerr.text);
                        memmove(c->buf, nl + 1, c->len - n - 1);
                        c->len -= n + 1;
                        assert_true(json_is_object(j));
                        return j;
                }
                if (c->eof || c->err)
                        return NULL;
                pump(f, 10000);
                conn_fill(c);
        }
        fail_msg("no reply within 5 s");
        return NULL;
}

static json_t *roundtrip(fixture *f, conn *c, const char *line) {
        assert_int_equal(conn_sends(f, c, line), 0);
        json_t *j = conn_reply(f, c);
        assert_non_null(j);
        return j;
}

static void assert_ok(json_t *j) {
        if (!json_is_true(json_object_get(j, "ok"))) {
                char *s = json_dumps(j, 0);
                fail_msg("expected ok, got %s", s);
        }
}

static void assert_error(json_t *j, const char *name, const char *in_message) {
        const char *msg = json_string_value(json_object_get(j, "message"));

        assert_true(json_is_false(json_object_get(j, "ok")));
        assert_string_equal(json_string_value(json_object_get(j, "error")), name);
        assert_non_null(msg);
        if (in_message && !strstr(msg, in_message))
                fail_msg("message '%s' lacks '%s'", msg, in_message);
}

/* Runs the loop until the server has n clients (closed ones are noticed asynchronously). */
static void wait_clients(fixture *f, unsigned n) {
        for (int i = 0; i < 500 && control_server_n_clients(f->s) != n; i++)
                pump(f, 10000);
        assert_int_equal(control_server_n_clients(f->s), n);
}

/* ---- tests ---- */

static void test_status(void **state) {
        fixture *f = *state;
        struct stat st;
        conn *c = conn_open(f);
        json_t *j;

        /* 0666 so anyone may connect; rights come from credentials */
        assert_int_equal(stat(f->path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0666);

        j = roundtrip(f, c, "{\"cmd\":\"status\",\"id\":7}\n");
        assert_ok(j);
        assert_string_equal(json_string_value(json_object_get(j, "state")), "running");
        assert_true(json_real_value(json_object_get(j, "tokens_per_s")) == 12.5);
        assert_int_equal(json_integer_value(json_object_get(j, "id")), 7);
        json_decref(j);

        /* a handler that sets no reply still gets {"ok":true} */
        j = roundtrip(f, c, "{\"cmd\":\"noreply\"}\n");
        assert_ok(j);
        assert_int_equal(json_object_size(j), 1);
        json_decref(j);
        wait_clients(f, 1);
        conn_close(c);
        wait_clients(f, 0);
}

static void test_errors(void **state) {
        fixture *f = *state;
        conn *c = conn_open(f);
        json_t *j;
        static const struct {
                const char *line, *error, *in_message;
        } cases[] = {
                { "{\"cmd\":\"frobnicate\"}\n", "EINVAL", "unknown command 'frobnicate'" },
                { "this is not json\n", "EINVAL", "invalid JSON" },
                { "{\"cmd\":\"status\"\n", "EINVAL", "invalid JSON" },
                { "[\"status\"]\n", "EINVAL", "JSON object" },
                { "42\n", "EINVAL", "JSON object" },
                { "{}\n", "EINVAL", "\"cmd\"" },
                { "{\"cmd\":5}\n", "EINVAL", "\"cmd\"" },
                { "{\"cmd\":\"status\",\"cmd\":\"pause\"}\n", "EINVAL", "invalid JSON" },
                { "{\"cmd\":\"st\xff\"}\n", "EINVAL", "invalid JSON" },
                { "{\"cmd\":\"fail\"}\n", "ENOENT", "nothing here" },
                { "{\"cmd\":\"fail-bare\"}\n", "EBUSY", NULL },
                { "{\"cmd\":\"bad-reply\"}\n", "EIO", NULL },
                { "{\"cmd\":\"x\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                  "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3"
                  "\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                  "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}\n",
                  "EINVAL", "unknown command" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                j = roundtrip(f, c, cases[i].line);
                assert_error(j, cases[i].error, cases[i].in_message);
                json_decref(j);
        }
        /* a handler's own validation (root passes authorization; others stop there) */
        j = roundtrip(f, c, "{\"cmd\":\"pause\",\"seconds\":\"soon\"}\n");
        if (geteuid() == 0)
                assert_error(j, "EINVAL", "must be an integer");
        else
                assert_error(j, "EPERM", "group 'edged'");
        json_decref(j);
        /* the message of a bare errno is strerror's */
        j = roundtrip(f, c, "{\"cmd\":\"fail-bare\"}\n");
        assert_string_equal(json_string_value(json_object_get(j, "message")), strerror(EBUSY));
        json_decref(j);
        /* none of that closed the connection */
        j = roundtrip(f, c, "{\"cmd\":\"status\"}\n");
        assert_ok(j);
        json_decref(j);
        assert_int_equal(f->n_pause, 0);
        conn_close(c);
        wait_clients(f, 0);

        assert_string_equal(control_errno_name(-EPERM), "EPERM");
        assert_string_equal(control_errno_name(EINVAL), "EINVAL");
        assert_string_equal(control_errno_name(99999), "EUNKNOWN");
}

static void test_pipelined(void **state) {
        fixture *f = *state;
        conn *c = conn_open(f);
        json_t *j;

        /* three requests, blank lines, CRLF and half a fourth in one write */
        assert_int_equal(conn_sends(f, c,
                                    "{\"cmd\":\"status\",\"id\":1}\n\n"
                                    "{\"cmd\":\"nope\",\"id\":2}\r\n"
                                    "{\"cmd\":\"echo\",\"id\":3,\"text\":\"a\\nb\"}\n"
                                    "{\"cmd\":\"sta"),
                         0);
        pump(f, 10000);
        pump(f, 10000);
        assert_int_equal(conn_sends(f, c, "tus\",\"id\":4}\n"), 0);
        for (int id = 1; id <= 4; id++) {
                j = conn_reply(f, c);
                assert_non_null(j);
                assert_int_equal(json_integer_value(json_object_get(j, "id")), id);
                if (id == 2)
                        assert_error(j, "EINVAL", "unknown command 'nope'");
                else
                        assert_ok(j);
                if (id == 3) /* a newline inside a string stays escaped on the wire */
                        assert_string_equal(json_string_value(json_object_get(j, "text")), "a\nb");
                json_decref(j);
        }

        /* a last request without newline, then half-close: answered, then EOF */
        assert_int_equal(conn_sends(f, c, "{\"cmd\":\"status\",\"id\":5}"), 0);
        assert_int_equal(shutdown(c->fd, SHUT_WR), 0);
        j = conn_reply(f, c);
        assert_non_null(j);
        assert_ok(j);
        assert_int_equal(json_integer_value(json_object_get(j, "id")), 5);
        json_decref(j);
        assert_null(conn_reply(f, c));
        assert_true(c->eof);
        conn_close(c);
        wait_clients(f, 0);
}

/* Many pipelined requests with large replies while the client reads slowly: exercises
 * partial writes and the output high-water mark, and every reply must arrive in order. */
static void test_backpressure(void **state) {
        fixture *f = *state;
        conn *c = conn_open(f);
        enum { N = 600, TEXT = 2000 };
        char *line = malloc(TEXT + 64);
        json_t *j;

        assert_non_null(line);
        for (int i = 0; i < N; i++) {
                int n = snprintf(line, TEXT + 64, "{\"cmd\":\"echo\",\"id\":%d,\"text\":\"", i);
                memset(line + n, 'a' + i % 26, TEXT);
                strcpy(line + n + TEXT, "\"}\n");
                assert_int_equal(conn_sends(f, c, line), 0);
        }
        free(line);
        for (int i = 0; i < N; i++) {
                j = conn_reply(f, c);
                assert_non_null(j);
                assert_ok(j);
                assert_int_equal(json_integer_value(json_object_get(j, "id")), i);
                const char *t = json_string_value(json_object_get(j, "text"));
                assert_non_null(t);
                assert_int_equal(strlen(t), TEXT);
                assert_int_equal(t[TEXT - 1], 'a' + i % 26);
                json_decref(j);
        }
        conn_close(c);
        wait_clients(f, 0);
}

static void test_long_line(void **state) {
        fixture *f = *state;
        size_t big = CONTROL_MAX_LINE - 64;
        char *line = malloc(CONTROL_MAX_LINE + 4096);
        conn *c = conn_open(f);
        json_t *j;
        int n;

        assert_non_null(line);
        /* just under the limit: accepted */
        n = snprintf(line, 64, "{\"cmd\":\"echo\",\"text\":\"");
        memset(line + n, 'x', big - (size_t) n - 3);
        strcpy(line + big - 3, "\"}\n");
        assert_true(strlen(line) <= CONTROL_MAX_LINE + 1);
        j = roundtrip(f, c, line);
        assert_ok(j);
        assert_int_equal(strlen(json_string_value(json_object_get(j, "text"))), big - n - 3);
        json_decref(j);

        /* over the limit, with no newline in sight: an error, then the server hangs up */
        memset(line, 'y', CONTROL_MAX_LINE + 4096);
        (void) conn_send(f, c, line, CONTROL_MAX_LINE + 4096); /* may fail once closed */
        j = conn_reply(f, c);
        assert_non_null(j);
        assert_error(j, "EMSGSIZE", "longer than 65536 bytes");
        json_decref(j);
        assert_null(conn_reply(f, c));
        /* the server closed with our bytes unread, which Linux reports as a reset */
        assert_true(c->eof || c->err == ECONNRESET);
        conn_close(c);
        wait_clients(f, 0);

        /* an over-long line that does end in a newline is refused the same way */
        c = conn_open(f);
        memset(line, 'z', CONTROL_MAX_LINE + 1);
        line[CONTROL_MAX_LINE + 1] = '\n';
        (void) conn_send(f, c, line, CONTROL_MAX_LINE + 2);
        j = conn_reply(f, c);
        assert_non_null(j);
        assert_error(j, "EMSGSIZE", NULL);
        json_decref(j);
        assert_null(conn_reply(f, c));
        conn_close(c);
        wait_clients(f, 0);
        free(line);
}

static void test_many_clients(void **state) {
        fixture *f = *state;
        conn *cs[CONTROL_MAX_CLIENTS];
        conn *extra;
        json_t *j;

        for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
                cs[i] = conn_open(f);
                assert_int_equal(conn_sends(f, cs[i], "{\"cmd\":\"status\"}\n"), 0);
        }
        /* all replies, collected after every request is in flight */
        for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
                j = conn_reply(f, cs[i]);
                assert_non_null(j);
                assert_ok(j);
                json_decref(j);
        }
        assert_int_equal(control_server_n_clients(f->s), CONTROL_MAX_CLIENTS);

        /* one too many: told why, then closed */
        extra = conn_open(f);
        j = conn_reply(f, extra);
        assert_non_null(j);
        assert_error(j, "EBUSY", "too many clients");
        json_decref(j);
        assert_null(conn_reply(f, extra));
        conn_close(extra);
        assert_int_equal(control_server_n_clients(f->s), CONTROL_MAX_CLIENTS);

        /* a freed slot is usable again */
        conn_close(cs[0]);
        wait_clients(f, CONTROL_MAX_CLIENTS - 1);
        cs[0] = conn_open(f);
        j = roundtrip(f, cs[0], "{\"cmd\":\"status\"}\n");
        assert_ok(j);
        json_decref(j);

        for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
                conn_close(cs[i]);
        wait_clients(f, 0);
}

/* Clients that vanish with requests queued and replies unsent must cost nothing more than
 * their connection (no SIGPIPE, no crash, no leak). */
static void test_disconnect(void **state) {
        fixture *f = *state;
        char line[1200];
        conn *c;
        json_t *j;
        int n;

        for (int round = 0; round < 3; round++) {
                c = conn_open(f);
                n = snprintf(line, sizeof(line), "{\"cmd\":\"echo\",\"text\":\"");
                memset(line + n, 'q', 1000);
                strcpy(line + n + 1000, "\"}\n");
                /* queue as much as the sockets take without ever reading */
                for (int stuck = 0, sent = 0; stuck < 20 && sent < 5000;) {
                        ssize_t k = send(c->fd, line, strlen(line), MSG_NOSIGNAL);
                        if (k < 0) {
                                stuck++;
                                pump(f, 5000);
                        } else if ((size_t) k < strlen(line)) {
                                break; /* leave a partial request too */
                        } else
                                sent++;
                }
                pump(f, 0);
                if (round == 1) /* gone after the first partial request */
                        assert_int_equal(shutdown(c->fd, SHUT_RDWR), 0);
                conn_close(c);
                wait_clients(f, 0);
        }

        /* and gone between request and reply */
        c = conn_open(f);
        assert_int_equal(conn_sends(f, c, "{\"cmd\":\"status\"}\n"), 0);
        conn_close(c);
        wait_clients(f, 0);

        c = conn_open(f);
        j = roundtrip(f, c, "{\"cmd\":\"status\"}\n");
        assert_ok(j);
        json_decref(j);
        conn_close(c);
        wait_clients(f, 0);
}

/* Random bytes in random chunks: every reply must still be a well-formed error object and
 * the server must keep serving. */
static void test_garbage(void **state) {
        fixture *f = *state;
        static const char alphabet[] = "{}[]\":,\\\n\r\t cmdstau0123456789e-+.\xc3\xa9\xff\x00";
        unsigned seed = 12345;
        char chunk[512];
        conn *c = conn_open(f);
        json_t *j;
        int replies = 0;

        for (int round = 0; round < 400; round++) {
                size_t n = (size_t) (rand_r(&seed) % sizeof(chunk));
                for (size_t i = 0; i < n; i++)
                        chunk[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
                assert_int_equal(conn_send(f, c, chunk, n), 0);
                pump(f, 0);
                conn_fill(c);
        }
        /* a final well-formed request flushes everything before it */
        assert_int_equal(conn_sends(f, c, "\n{\"cmd\":\"status\",\"id\":\"last\"}\n"), 0);
        for (;;) {
                j = conn_reply(f, c);
                assert_non_null(j);
                replies++;
                if (json_is_string(json_object_get(j, "id")) &&
                    strcmp(json_string_value(json_object_get(j, "id")), "last") == 0) {
                        assert_ok(j);
                        json_decref(j);
                        break;
                }
                /* garbage may by chance be valid JSON, but never a known command */
                assert_true(json_is_false(json_object_get(j, "ok")));
                assert_non_null(json_string_value(json_object_get(j, "error")));
                json_decref(j);
        }
        assert_true(replies > 100);
        conn_close(c);
        wait_clients(f, 0);
}

static void test_socket_file(void **state) {
        fixture *f = *state;
        control_server *other = NULL;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        int fd;

        /* a live server is not displaced */
        assert_int_equal(
                control_server_new(f->e, f->path, NULL, commands, ARRAY_SIZE(commands), f, &other),
                -EADDRINUSE);
        assert_null(other);
        assert_string_equal(control_server_path(f->s), f->path);

        /* freeing removes the file */
        f->s = control_server_free(f->s);
        assert_int_equal(stat(f->path, &st), -1);

        /* a stale socket (bound, nobody listening) is replaced */
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        strcpy(sa.sun_path, f->path);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        close(fd);
        server_start(f, NULL);
        conn *c = conn_open(f);
        json_t *j = roundtrip(f, c, "{\"cmd\":\"status\"}\n");
        assert_ok(j);
        json_decref(j);
        conn_close(c);
        f->s = control_server_free(f->s);

        /* something that is not a socket is left alone */
        fd = open(f->path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(
                control_server_new(f->e, f->path, NULL, commands, ARRAY_SIZE(commands), f, &other),
                -EEXIST);
        assert_int_equal(stat(f->path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(unlink(f->path), 0);

        /* a path too long for sun_path */
        char longpath[200];
        memset(longpath, 'p', sizeof(longpath) - 1);
        longpath[0] = '/';
        longpath[sizeof(longpath) - 1] = '\0';
        assert_int_equal(
                control_server_new(f->e, longpath, NULL, commands, ARRAY_SIZE(commands), f, &other),
                -ENAMETOOLONG);
        server_start(f, NULL);
        /* no peer outside a handler */
        assert_int_equal(control_server_peer(f->s, NULL, NULL), -ENODATA);
}

/* ---- privileges ---- */

static void test_write_as_root(void **state) {
        fixture *f = *state;
        conn *c;
        json_t *j;

        if (geteuid() != 0)
                TEST_SKIP("not root: cannot show a write command allowed");
        c = conn_open(f);
        j = roundtrip(f, c, "{\"cmd\":\"pause\",\"seconds\":600}\n");
        assert_ok(j);
        assert_string_equal(json_string_value(json_object_get(j, "state")), "paused");
        json_decref(j);
        assert_int_equal(f->n_pause, 1);
        assert_int_equal(f->last_seconds, 600);
        assert_int_equal(f->last_uid, 0);
        conn_close(c);
        wait_clients(f, 0);
}

/* Names created for the privilege test, removed in its teardown. */
static char test_user[64], test_group_member[64], test_group_other[64];
static bool created_user, created_member, created_other;

static int quiet_system(const char *fmt, ...) _printf_(1, 2);
static int quiet_system(const char *fmt, ...) {
        char cmd[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        strncat(cmd, " >/dev/null 2>&1", sizeof(cmd) - strlen(cmd) - 1);
        int r = system(cmd);
        return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static int setup_users(void **state) {
        setup(state);
        if (geteuid() != 0 || access("/usr/sbin/useradd", X_OK) != 0)
                return 0;
        snprintf(test_user, sizeof(test_user), "edged-test-%d", (int) getpid());
        snprintf(test_group_member, sizeof(test_group_member), "edged-tgm-%d", (int) getpid());
        snprintf(test_group_other, sizeof(test_group_other), "edged-tgo-%d", (int) getpid());
        created_member = quiet_system("groupadd --system %s", test_group_member) == 0;
        created_other = quiet_system("groupadd --system %s", test_group_other) == 0;
        if (created_member)
                created_user = quiet_system("useradd --system --no-create-home --shell "
                                            "/usr/sbin/nologin -G %s %s",
                                            test_group_member, test_user) == 0;
        return 0;
}

static int teardown_users(void **state) {
        if (created_user)
                quiet_system("userdel %s", test_user);
        if (created_member)
                quiet_system("groupdel %s", test_group_member);
        if (created_other)
                quiet_system("groupdel %s", test_group_other);
        created_user = created_member = created_other = false;
        return teardown(state);
}

/* In the child: one read and one write request over a blocking socket. Exit codes say
 * which expectation failed (stderr says more). */
static int child_client(const char *path, bool expect_write, const char *group) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = 10 };
        const char *req = "{\"cmd\":\"status\"}\n{\"cmd\":\"pause\",\"seconds\":5}\n";
        char buf[4096];
        size_t len = 0;
        json_t *r1, *r2;
        char *nl;
        int fd;

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return 10;
        strcpy(sa.sun_path, path);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                fprintf(stderr, "child: connect: %m\n");
                return 11;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t) strlen(req))
                return 12;
        /* two lines */
        while (len < sizeof(buf) - 1) {
                ssize_t k = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
                if (k <= 0)
                        return 13;
                len += (size_t) k;
                buf[len] = '\0';
                nl = strchr(buf, '\n');
                if (nl && strchr(nl + 1, '\n'))
                        break;
        }
        close(fd);
        nl = strchr(buf, '\n');
        if (!nl)
                return 14;
        r1 = json_loadb(buf, (size_t) (nl - buf), 0, NULL);
        r2 = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, NULL);
        if (!r1 || !r2)
                return 15;
        int rc = 0;
        if (!json_is_true(json_object_get(r1, "ok")))
                rc = 16; /* reading must always work */
        else if (expect_write) {
                if (!json_is_true(json_object_get(r2, "ok")))
                        rc = 17;
        } else {
                const char *e = json_string_value(json_object_get(r2, "error"));
                const char *m = json_string_value(json_object_get(r2, "message"));
                char want[128];

                snprintf(want, sizeof(want), "group '%s'", group);
                if (!e || strcmp(e, "EPERM") != 0)
                        rc = 18;
                else if (!m || !strstr(m, want) || !strstr(m, "root"))
                        rc = 19;
        }
        if (rc)
                fprintf(stderr, "child uid %u (expected write %s): %s", (unsigned) getuid(),
                        expect_write ? "allowed" : "refused", buf);
        json_decref(r1);
        json_decref(r2);
        return rc;
}

/* Forks a client with the given credentials; the parent serves until it exits. */
static void run_as(fixture *f, uid_t uid, gid_t gid, size_t ngroups, const gid_t *groups,
                   bool expect_write, const char *group) {
        int status = 0, n_before = f->n_pause;
        pid_t pid;

        fflush(NULL);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setgroups(ngroups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
                        fprintf(stderr, "child: dropping privileges: %m\n");
                        _exit(9);
                }
                if (getuid() == 0 || geteuid() == 0)
                        _exit(8);
                _exit(child_client(f->path, expect_write, group));
        }
        for (int i = 0; i < 2000; i++) {
                pid_t w = waitpid(pid, &status, WNOHANG);
                assert_true(w >= 0);
                if (w == pid)
                        break;
                pump(f, 10000);
        }
        if (waitpid(pid, NULL, WNOHANG) == 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fail_msg("child did not finish");
        }
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        /* the handler ran exactly when the write was allowed, and saw who asked */
        assert_int_equal(f->n_pause, n_before + (expect_write ? 1 : 0));
        if (expect_write)
                assert_int_equal(f->last_uid, uid);
        wait_clients(f, 0);
}

static void test_unprivileged(void **state) {
        fixture *f = *state;
        struct passwd *pw;
        struct group *gm, *go;
        uid_t uid;
        gid_t gid;

        if (geteuid() != 0)
                TEST_SKIP("not root: cannot create a user and switch to it");
        if (!created_user) {
                /* no useradd: nobody still shows the read-only path */
                pw = getpwnam("nobody");
                if (!pw)
                        TEST_SKIP("cannot create a test user (useradd failed or "
                                  "missing) and there is no 'nobody'");
                uid = pw->pw_uid;
                gid = pw->pw_gid;
                server_start(f, NULL);
                run_as(f, uid, gid, 0, NULL, false, CONTROL_DEFAULT_GROUP);
                /* the read-only path passed as nobody; the group cases did not run */
                TEST_SKIP("cannot create a test user (useradd failed or missing): "
                          "the write-group cases did not run");
        }
        pw = getpwnam(test_user);
        gm = getgrnam(test_group_member);
        assert_non_null(pw);
        assert_non_null(gm);
        uid = pw->pw_uid;
        gid = pw->pw_gid;
        gid_t member_gid = gm->gr_gid;
        go = created_other ? getgrnam(test_group_other) : NULL;
        gid_t other_gid = go ? go->gr_gid : (gid_t) -1;

        /* default write group "edged", which the new user is not in: read yes, write EPERM.
         * The child keeps only its primary group so nothing else could grant it. */
        server_start(f, NULL);
        run_as(f, uid, gid, 1, &gid, false, CONTROL_DEFAULT_GROUP);

        /* a group the user is a member of in /etc/group: granted through getgrouplist even
         * though the connecting process does not hold the group */
        server_start(f, test_group_member);
        run_as(f, uid, gid, 1, &gid, true, test_group_member);

        /* a group the user is not in: refused, and the message names that group */
        if (go) {
                server_start(f, test_group_other);
                run_as(f, uid, gid, 1, &gid, false, test_group_other);
                /* ...unless the process holds it, as primary gid (SO_PEERCRED) */
                run_as(f, uid, other_gid, 1, &other_gid, true, test_group_other);
                /* ...or as a supplementary group (SO_PEERGROUPS) */
                gid_t both[2] = { gid, other_gid };
                run_as(f, uid, gid, 2, both, true, test_group_other);
        }

        /* a write group set at run time applies to new connections */
        server_start(f, NULL);
        assert_int_equal(control_server_set_write_group(f->s, test_group_member), 0);
        run_as(f, uid, gid, 1, &gid, true, test_group_member);
        assert_int_equal(control_server_set_write_group(f->s, ""), -EINVAL);
        (void) member_gid;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_status, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
                cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_long_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_clients, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disconnect, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_socket_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_write_as_root, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unprivileged, setup_users, teardown_users),
        };

        /* EPERM warnings are expected here; keep the output to the summary */
        log_set_max_level(LOG_LEVEL_ERR);
        return test_run_group("test-control", tests, NULL, NULL);
}
