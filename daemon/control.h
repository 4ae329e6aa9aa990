/* SPDX-License-Identifier: MIT */
#pragma once

/* The control socket (DESIGN.md §9): a Unix stream socket speaking JSON lines. Each request is
 * one object on one line, {"cmd": "status", ...}; each gets exactly one reply line, in order:
 *
 *   {"ok": true, ...fields from the handler...}
 *   {"ok": false, "error": "EPERM", "message": "you need to be root or in group 'edged' ..."}
 *
 * A request's "id" (any JSON value), if present, is echoed in its reply so pipelining clients
 * can match them. The server only frames, parses, authorizes and dispatches; the commands
 * themselves come from the caller's handler table, so this file knows nothing of the trainer.
 *
 * Authorization uses the peer's credentials (SO_PEERCRED) taken at accept: anyone may run
 * read commands; root, or a member of the write group (primary gid, supplementary groups of
 * the process, or the user's groups in the group database), may run write commands. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "macros.h"

#define CONTROL_DEFAULT_PATH "/run/edged/control"
#define CONTROL_DEFAULT_GROUP "edged"
/* Longest request line accepted (newline excluded); longer ones get EMSGSIZE and a close. */
#define CONTROL_MAX_LINE (64 * 1024)
/* Connections beyond this are told EBUSY and closed at once. */
#define CONTROL_MAX_CLIENTS 32

/* Runs one request. On success return 0 and optionally set *ret_reply to an object whose
 * fields are added to the reply ("ok" is set by the server). On failure return a negative
 * errno; *ret_reply may then carry a "message" (see control_error()). The request belongs to
 * the server; the reply reference passes to the server (on failure only its "message" is
 * used). Handlers run on the event loop, so they must be quick (bound "sample" by its token
 * count) and must not free the server. */
typedef int (*control_handler_fn)(json_t *request, json_t **ret_reply, void *userdata);

typedef struct control_command {
        const char *name; /* the "cmd" value */
        bool write;       /* changes state: root or the write group only */
        control_handler_fn fn;
} control_command;

typedef struct control_server control_server;

/* Listens on path (NULL: CONTROL_DEFAULT_PATH), mode 0666, replacing a stale socket but
 * refusing (-EADDRINUSE) when a live server answers there and (-EEXIST) when something other
 * than a socket is in the way. write_group NULL means CONTROL_DEFAULT_GROUP; it is looked up
 * at each connection, so a group created later takes effect without a restart. commands is
 * referenced, not copied: keep it alive (a static table) while the server exists. */
int control_server_new(sd_event *e, const char *path, const char *write_group,
                       const control_command *commands, size_t n_commands, void *userdata,
                       control_server **ret);
/* Closes every connection and the listening socket, and removes the socket file. */
control_server *control_server_free(control_server *s);
static inline void control_server_freep(control_server **s) {
        if (*s)
                control_server_free(*s);
}

/* For SIGHUP reloads: applies to connections accepted from now on. */
int control_server_set_write_group(control_server *s, const char *group);
unsigned control_server_n_clients(const control_server *s);
const char *control_server_path(const control_server *s);

/* Who sent the request being handled: valid only inside a handler (-ENODATA otherwise), so
 * handlers that change state can log who asked. Either pointer may be NULL. */
int control_server_peer(const control_server *s, uid_t *ret_uid, pid_t *ret_pid);

/* For handlers: sets *ret_reply to {"message": <formatted>} and returns -abs(error), so a
 * handler can "return control_error(ret_reply, EINVAL, "bad key '%s'", key);". */
int control_error(json_t **ret_reply, int error, const char *fmt, ...) _printf_(3, 4);

/* "EPERM" for EPERM (either sign); "EUNKNOWN" when the name is unknown. */
const char *control_errno_name(int error);
