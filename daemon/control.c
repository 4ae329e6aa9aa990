/* SPDX-License-Identifier: MIT */
#include "control.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* Stop reading a client's requests while this much of its output is unsent: a client that
 * pipelines without reading must not make the daemon buffer without bound. */
#define OUT_HIGH_WATER (256 * 1024)
#define IN_INITIAL 4096
/* How long to stop accepting after EMFILE/ENFILE, instead of spinning on a ready socket. */
#define ACCEPT_BACKOFF_USEC (100 * 1000)

typedef struct client client;

struct control_server {
        sd_event *event;
        sd_event_source *listen_source;
        sd_event_source *backoff_source;
        int listen_fd;
        char *path;
        char *write_group;
        const control_command *commands;
        size_t n_commands;
        void *userdata;
        client *clients;
        unsigned n_clients;
        const client *current; /* the client whose request a handler is running */
};

struct client {
        control_server *server;
        client *prev, *next;
        sd_event_source *source;
        int fd;
        uid_t uid;
        gid_t gid;
        pid_t pid;
        bool may_write;
        bool warned;  /* one EPERM warning per connection: a loop of refusals must not flood logs */
        bool eof;     /* the peer will send nothing more */
        bool closing; /* flush what is queued, then close */
        char *in;
        size_t in_len, in_cap;
        char *out;
        size_t out_len, out_cap, out_sent;
        uint32_t events; /* currently requested, to avoid needless epoll_ctl calls */
};

const char *control_errno_name(int error) {
        const char *n = strerrorname_np(error < 0 ? -error : error);
        return n ? n : "EUNKNOWN";
}

static json_t *vmessage(const char *fmt, va_list ap) {
        char buf[512];

        json_t *m;

        vsnprintf(buf, sizeof(buf), fmt, ap);
        m = json_pack("{s:s}", "message", buf);
        if (m)
                return m;
        /* Truncation can split a UTF-8 sequence, which jansson rejects: degrade to ASCII. */
        for (char *p = buf; *p; p++)
                if ((unsigned char) *p >= 0x80)
                        *p = '?';
        return json_pack("{s:s}", "message", buf);
}

int control_error(json_t **ret_reply, int error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        json_t *r = vmessage(fmt, ap);
        va_end(ap);
        if (ret_reply) {
                json_decref(*ret_reply);
                *ret_reply = r;
        } else
                json_decref(r);
        return error < 0 ? error : -error;
}

/* ---- authorization ---- */

/* Whether uid/gid (and the process's own supplementary groups) grant the write group. Looked
 * up per connection so group changes apply to new connections without a restart. */
static bool peer_may_write(const control_server *s, int fd, uid_t uid, gid_t gid) {
        struct group grbuf, *gr = NULL;
        struct passwd pwbuf, *pw = NULL;
        _cleanup_free_ char *buf = NULL, *pwb = NULL;
        size_t bufsz = 16384;
        gid_t peer_groups[256];
        socklen_t len = sizeof(peer_groups);
        gid_t want;

        if (uid == 0)
                return true;

        /* Group entries with many members need large buffers; grow on ERANGE. */
        for (;;) {
                free(buf);
                buf = malloc(bufsz);
                if (!buf)
                        return false;
                int r = getgrnam_r(s->write_group, &grbuf, buf, bufsz, &gr);
                if (r == ERANGE && bufsz < (1u << 22)) {
                        bufsz *= 2;
                        continue;
                }
                if (r != 0 || !gr)
                        return false; /* no such group: root only */
                break;
        }
        want = gr->gr_gid;
        if (gid == want)
                return true;

        /* The connecting process's actual supplementary groups (Linux >= 4.13). */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, peer_groups, &len) == 0)
                for (size_t i = 0; i < len / sizeof(gid_t); i++)
                        if (peer_groups[i] == want)
                                return true;

        /* The user's membership in the group database, as login would grant it. */
        bufsz = 16384;
        for (;;) {
                free(pwb);
                pwb = malloc(bufsz);
                if (!pwb)
                        return false;
                int r = getpwuid_r(uid, &pwbuf, pwb, bufsz, &pw);
                if (r == ERANGE && bufsz < (1u << 22)) {
                        bufsz *= 2;
                        continue;
                }
                if (r != 0 || !pw)
                        return false;
                break;
        }
        int n = 64;
        for (int attempt = 0; attempt < 8; attempt++) {
                _cleanup_free_ gid_t *groups = malloc(sizeof(gid_t) * (size_t) n);
                int got = n;

                if (!groups)
                        return false;
                if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &got) < 0) {
                        /* got holds the size needed */
                        n = got > n ? got : n * 2;
                        continue;
                }
                for (int i = 0; i < got; i++)
                        if (groups[i] == want)
                                return true;
                return false;
        }
        return false;
}

/* ---- output ---- */

static int out_append(client *c, const char *data, size_t n) {
        if (c->out_sent > 0 && c->out_sent == c->out_len)
                c->out_len = c->out_sent = 0;
        if (c->out_len + n > c->out_cap) {
                /* Reclaim the sent prefix before growing. */
                if (c->out_sent > 0) {
                        memmove(c->out, c->out + c->out_sent, c->out_len - c->out_sent);
                        c->out_len -= c->out_sent;
                        c->out_sent = 0;
                }
                if (c->out_len + n > c->out_cap) {
                        size_t cap = MAX(c->out_cap * 2, c->out_len + n);
                        char *p = realloc(c->out, cap);
                        if (!p)
                                return -ENOMEM;
                        c->out = p;
                        c->out_cap = cap;
                }
        }
        memcpy(c->out + c->out_len, data, n);
        c->out_len += n;
        return 0;
}

static size_t out_pending(const client *c) {
        return c->out_len - c->out_sent;
}

/* Serialises reply as one line. Compact jansson output escapes newlines inside strings, so
 * the line cannot be split. */
static int send_reply(client *c, json_t *reply) {
        _cleanup_free_ char *s = json_dumps(reply, JSON_COMPACT);
        int r;

        if (!s)
                return -ENOMEM;
        r = out_append(c, s, strlen(s));
        if (r < 0)
                return r;
        return out_append(c, "\n", 1);
}

static int send_error(client *c, json_t *id, int error, const char *fmt, ...) _printf_(4, 5);
static int send_error(client *c, json_t *id, int error, const char *fmt, ...) {
        va_list ap;
        json_t *reply;
        int r;

        va_start(ap, fmt);
        reply = vmessage(fmt, ap);
        va_end(ap);
        if (!reply || json_object_set_new(reply, "ok", json_false()) < 0 ||
            json_object_set_new(reply, "error", json_string(control_errno_name(error))) < 0 ||
            (id && json_object_set(reply, "id", id) < 0)) {
                json_decref(reply);
                return -ENOMEM;
        }
        r = send_reply(c, reply);
        json_decref(reply);
        return r;
}

/* ---- requests ---- */

static const control_command *find_command(const control_server *s, const char *name) {
        for (size_t i = 0; i < s->n_commands; i++)
                if (s->commands[i].name && strcmp(s->commands[i].name, name) == 0)
                        return &s->commands[i];
        return NULL;
}

static int handle_line(client *c, const char *line, size_t n) {
        control_server *s = c->server;
        json_error_t jerr;
        json_t *req, *id, *cmdv, *reply = NULL;
        const control_command *cmd;
        const char *name;
        int r;

        req = json_loadb(line, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!req)
                return send_error(c, NULL, EINVAL, "invalid JSON at column %d: %s", jerr.column,
                                  jerr.text);
        if (!json_is_object(req)) {
                json_decref(req);
                return send_error(c, NULL, EINVAL, "a request must be a JSON object");
        }
        id = json_object_get(req, "id");
        cmdv = json_object_get(req, "cmd");
        if (!json_is_string(cmdv)) {
                r = send_error(c, id, EINVAL, "the request has no \"cmd\" string");
                json_decref(req);
                return r;
        }
        name = json_string_value(cmdv);
        cmd = find_command(s, name);
        if (!cmd || !cmd->fn) {
                r = send_error(c, id, EINVAL, "unknown command '%.64s'", name);
                json_decref(req);
                return r;
        }
        if (cmd->write && !c->may_write) {
                log_full_errno(c->warned ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARNING, 0,
                               "control: uid %u (pid %d) may not run '%s': not root or in "
                               "group '%s'",
                               (unsigned) c->uid, (int) c->pid, cmd->name, s->write_group);
                c->warned = true;
                r = send_error(c, id, EPERM, "you need to be root or in group '%s' to run '%s'",
                               s->write_group, cmd->name);
                json_decref(req);
                return r;
        }

        s->current = c;
        r = cmd->fn(req, &reply, s->userdata);
        s->current = NULL;

        if (reply && !json_is_object(reply)) {
                /* A handler bug must not become a malformed reply. */
                log_error("control: handler for '%s' returned a non-object reply", cmd->name);
                json_decref(reply);
                reply = NULL;
                if (r >= 0)
                        r = -EIO;
        }
        if (r < 0) {
                const char *msg =
                        reply ? json_string_value(json_object_get(reply, "message")) : NULL;
                int q = send_error(c, id, r, "%s", msg ? msg : strerror(-r));
                json_decref(reply);
                json_decref(req);
                return q;
        }
        if (!reply)
                reply = json_object();
        if (!reply || json_object_set_new(reply, "ok", json_true()) < 0 ||
            (id && json_object_set(reply, "id", id) < 0))
                r = -ENOMEM;
        else
                r = send_reply(c, reply);
        json_decref(reply);
        json_decref(req);
        return r;
}

/* ---- connection state machine ---- */

static void client_free(client *c) {
        control_server *s;

        if (!c)
                return;
        s = c->server;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;
        s->n_clients--;
        /* Safe from within the source's own callback: sd-event defers the actual free. */
        sd_event_source_disable_unref(c->source);
        if (c->fd >= 0)
                close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
}

/* Runs every complete line that fits under the output high-water mark. */
static int client_process(client *c) {
        int r;

        while (!c->closing && c->in_len > 0 && out_pending(c) < OUT_HIGH_WATER) {
                char *nl = memchr(c->in, '\n', c->in_len);
                size_t n, consumed;

                if (nl) {
                        n = (size_t) (nl - c->in);
                        consumed = n + 1;
                } else if (c->eof) {
                        /* A last request without its newline, e.g. printf '...' | socat */
                        n = consumed = c->in_len;
                } else {
                        if (c->in_len > CONTROL_MAX_LINE) {
                                log_debug("control: uid %u sent a line over %d bytes",
                                          (unsigned) c->uid, CONTROL_MAX_LINE);
                                r = send_error(c, NULL, EMSGSIZE,
                                               "request line longer than %d bytes",
                                               CONTROL_MAX_LINE);
                                if (r < 0)
                                        return r;
                                c->in_len = 0;
                                c->closing = true;
                        }
                        break;
                }
                if (n > CONTROL_MAX_LINE) {
                        r = send_error(c, NULL, EMSGSIZE, "request line longer than %d bytes",
                                       CONTROL_MAX_LINE);
                        if (r < 0)
                                return r;
                        c->in_len = 0;
                        c->closing = true;
                        break;
                }
                /* Tolerate CRLF; skip blank lines (keep-alives, stray newlines). */
                if (n > 0 && c->in[n - 1] == '\r')
                        n--;
                if (n > 0) {
                        r = handle_line(c, c->in, n);
                        if (r < 0)
                                return r;
                }
                memmove(c->in, c->in + consumed, c->in_len - consumed);
                c->in_len -= consumed;
        }
        if (c->eof && c->in_len == 0)
                c->closing = true;
        return 0;
}

static int client_read(client *c) {
        ssize_t k;

        if (c->in_cap - c->in_len == 0) {
                /* Room for the longest line plus its newline, then one byte to detect overflow. */
                size_t cap =
                        MIN(MAX(c->in_cap * 2, (size_t) IN_INITIAL), (size_t) CONTROL_MAX_LINE + 2);
                if (cap <= c->in_cap)
                        return 0; /* full: client_process decides */
                char *p = realloc(c->in, cap);
                if (!p)
                        return -ENOMEM;
                c->in = p;
                c->in_cap = cap;
        }
        k = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        if (k < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return 0;
                return -errno;
        }
        if (k == 0)
                c->eof = true;
        c->in_len += (size_t) k;
        return 0;
}

static int client_write(client *c) {
        while (out_pending(c) > 0) {
                ssize_t k = send(c->fd, c->out + c->out_sent, out_pending(c),
                                 MSG_DONTWAIT | MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return 0;
                        return -errno; /* EPIPE, ECONNRESET: the client went away */
                }
                c->out_sent += (size_t) k;
        }
        c->out_len = c->out_sent = 0;
        return 0;
}

/* Chooses what to wait for next; returns 1 when the connection is finished. */
static int client_update(client *c) {
        uint32_t want = 0;
        int r;

        if (c->closing && out_pending(c) == 0)
                return 1;
        if (!c->closing && !c->eof && out_pending(c) < OUT_HIGH_WATER &&
            c->in_len <= CONTROL_MAX_LINE)
                want |= EPOLLIN;
        if (out_pending(c) > 0)
                want |= EPOLLOUT;
        if (want == 0)
                return 1; /* nothing can make progress (cannot happen; be safe) */
        if (want != c->events) {
                r = sd_event_source_set_io_events(c->source, want);
                if (r < 0)
                        return r;
                c->events = want;
        }
        return 0;
}

static int on_client_io(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        client *c = userdata;
        int r = 0;

        if (revents & EPOLLIN)
                r = client_read(c);
        else if (revents & (EPOLLHUP | EPOLLERR)) {
                /* Nothing to read yet the peer is gone: only unsent output could remain. */
                if (!(revents & EPOLLOUT))
                        r = -ECONNRESET;
        }
        if (r >= 0)
                r = client_process(c);
        if (r >= 0 && out_pending(c) > 0)
                r = client_write(c);
        /* Output drained below the mark may unblock requests still buffered. */
        if (r >= 0 && !c->closing && c->in_len > 0 && out_pending(c) < OUT_HIGH_WATER) {
                r = client_process(c);
                if (r >= 0)
                        r = client_write(c);
        }
        if (r >= 0)
                r = client_update(c);
        if (r != 0) {
                if (r < 0 && r != -EPIPE && r != -ECONNRESET)
                        log_debug("control: closing uid %u: %s", (unsigned) c->uid, strerror(-r));
                client_free(c);
        }
        return 0;
}

/* Best effort: the socket is new and empty, so a short line fits in its buffer. */
static void refuse(int fd, const char *why) {
        char line[256];
        int n = snprintf(line, sizeof(line),
                         "{\"ok\":false,\"error\":\"EBUSY\",\"message\":\"%s\"}\n", why);
        if (n > 0)
                (void) !send(fd, line, (size_t) n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static int on_backoff(sd_event_source *src, uint64_t usec, void *userdata) {
        control_server *s = userdata;

        (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_ON);
        return 0;
}

static int on_accept(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        control_server *s = userdata;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        client *c;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                        /* Level-triggered: pause accepting briefly or we would spin. */
                        log_warning_errno(errno, "control: cannot accept: %m; pausing accepts");
                        (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_OFF);
                        if (s->backoff_source)
                                (void) sd_event_source_set_time_relative(s->backoff_source,
                                                                         ACCEPT_BACKOFF_USEC);
                        if (s->backoff_source)
                                (void) sd_event_source_set_enabled(s->backoff_source,
                                                                   SD_EVENT_ONESHOT);
                }
                return 0;
        }
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                log_warning_errno(errno, "control: no peer credentials: %m");
                close(cfd);
                return 0;
        }
        if (s->n_clients >= CONTROL_MAX_CLIENTS) {
                log_warning("control: refusing uid %u (pid %d): %u clients connected",
                            (unsigned) cred.uid, (int) cred.pid, s->n_clients);
                refuse(cfd, "too many clients connected");
                close(cfd);
                return 0;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
                close(cfd);
                return 0;
        }
        c->server = s;
        c->fd = cfd;
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->pid = cred.pid;
        c->may_write = peer_may_write(s, cfd, cred.uid, cred.gid);
        c->events = EPOLLIN;
        r = sd_event_add_io(s->event, &c->source, cfd, EPOLLIN, on_client_io, c);
        if (r < 0) {
                log_warning_errno(r, "control: cannot watch a client: %m");
                close(cfd);
                free(c);
                return 0;
        }
        (void) sd_event_source_set_description(c->source, "control-client");
        c->next = s->clients;
        if (c->next)
                c->next->prev = c;
        s->clients = c;
        s->n_clients++;
        log_debug("control: client uid %u pid %d connected (%s)", (unsigned) c->uid, (int) c->pid,
                  c->may_write ? "read-write" : "read-only");
        return 0;
}

/* ---- setup ---- */

/* A socket file left by a dead daemon is replaced; a live one is not stolen. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, socklen_t salen) {
        struct stat st;
        int fd, r;

        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        r = connect(fd, (const struct sockaddr *) sa, salen);
        r = r == 0 || errno == EAGAIN || errno == EINPROGRESS ? -EADDRINUSE : 0;
        close(fd);
        if (r < 0)
                return r;
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

int control_server_new(sd_event *e, const char *path, const char *write_group,
                       const control_command *commands, size_t n_commands, void *userdata,
                       control_server **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        socklen_t salen;
        control_server *s;
        int r;

        if (!e || !ret || (n_commands > 0 && !commands))
                return -EINVAL;
        if (!path)
                path = CONTROL_DEFAULT_PATH;
        if (!write_group)
                write_group = CONTROL_DEFAULT_GROUP;
        if (path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path))
                return log_error_errno(ENAMETOOLONG, "control: bad socket path '%s'", path);
        memcpy(sa.sun_path, path, strlen(path) + 1);
        salen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->listen_fd = -1;
        s->event = sd_event_ref(e);
        s->commands = commands;
        s->n_commands = n_commands;
        s->userdata = userdata;
        s->path = strdup(path);
        s->write_group = strdup(write_group);
        if (!s->path || !s->write_group) {
                r = -ENOMEM;
                goto fail;
        }

        r = clear_stale(path, &sa, salen);
        if (r < 0) {
                log_error_errno(r, "control: cannot use %s: %s", path,
                                r == -EADDRINUSE ? "another edged is listening there"
                                : r == -EEXIST   ? "a file that is not a socket is in the way"
                                                 : strerror(-r));
                goto fail;
        }
        s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (s->listen_fd < 0) {
                r = log_error_errno(errno, "control: socket: %m");
                goto fail;
        }
        if (bind(s->listen_fd, (struct sockaddr *) &sa, salen) < 0) {
                r = log_error_errno(errno, "control: cannot bind %s: %m", path);
                goto fail;
        }
        /* Everyone may connect; what they may do is decided by their credentials. */
        if (chmod(path, 0666) < 0) {
                r = log_error_errno(errno, "control: chmod %s: %m", path);
                unlink(path);
                goto fail;
        }
        if (listen(s->listen_fd, 64) < 0) {
                r = log_error_errno(errno, "control: listen: %m");
                unlink(path);
                goto fail;
        }
        r = sd_event_add_io(e, &s->listen_source, s->listen_fd, EPOLLIN, on_accept, s);
        if (r >= 0)
                r = sd_event_add_time_relative(e, &s->backoff_source, CLOCK_MONOTONIC,
                                               ACCEPT_BACKOFF_USEC, 0, on_backoff, s);
        if (r >= 0)
                r = sd_event_source_set_enabled(s->backoff_source, SD_EVENT_OFF);
        if (r < 0) {
                log_error_errno(r, "control: cannot attach to the event loop: %m");
                unlink(path);
                goto fail;
        }
        (void) sd_event_source_set_description(s->listen_source, "control-listen");
        log_debug("control: listening on %s (write group '%s')", path, s->write_group);
        *ret = s;
        return 0;

fail:
        /* path was not bound by us unless noted above, so do not unlink it here */
        free(s->path);
        s->path = NULL;
        control_server_free(s);
        return r;
}

control_server *control_server_free(control_server *s) {
        if (!s)
                return NULL;
        while (s->clients)
                client_free(s->clients);
        sd_event_source_disable_unref(s->listen_source);
        sd_event_source_disable_unref(s->backoff_source);
        if (s->listen_fd >= 0)
                close(s->listen_fd);
        if (s->path)
                unlink(s->path);
        sd_event_unref(s->event);
        free(s->path);
        free(s->write_group);
        free(s);
        return NULL;
}

int control_server_set_write_group(control_server *s, const char *group) {
        char *g;

        if (!s || !group || !*group)
                return -EINVAL;
        g = strdup(group);
        if (!g)
                return -ENOMEM;
        free(s->write_group);
        s->write_group = g;
        return 0;
}

unsigned control_server_n_clients(const control_server *s) {
        return s ? s->n_clients : 0;
}

const char *control_server_path(const control_server *s) {
        return s ? s->path : NULL;
}

int control_server_peer(const control_server *s, uid_t *ret_uid, pid_t *ret_pid) {
        if (!s || !s->current)
                return -ENODATA;
        if (ret_uid)
                *ret_uid = s->current->uid;
        if (ret_pid)
                *ret_pid = s->current->pid;
        return 0;
}
