/* SPDX-License-Identifier: MIT */
#pragma once

/* The client side of the control socket (docs/control-protocol.md): one connection, one
 * request line out, one reply line back. Functions return 0 or a negative errno and print
 * nothing; the caller knows what the request was for. */

#include <jansson.h>

/* Seconds a reply may take: "sample" generates up to 1024 tokens on a busy machine. */
#define CTL_REPLY_TIMEOUT_S 120

typedef struct ctl_client {
        int fd;
        char *path;
} ctl_client;

/* -ENOENT or -ECONNREFUSED: nothing listens there (the daemon is down); -EACCES: the socket
 * or a directory above it is not accessible. */
int ctl_client_connect(const char *path, ctl_client *ret);
void ctl_client_done(ctl_client *c);

/* Sends req and returns the daemon's reply object as it came, "ok" false included.
 * -ECONNRESET when the daemon closed the connection, -ETIMEDOUT, -EBADMSG for a reply that
 * is not a JSON object. */
int ctl_client_call(ctl_client *c, json_t *req, json_t **ret_reply);

/* The errno a failed reply names in "error" ("EPERM" -> EPERM), EIO when unknown. */
int ctl_errno_from_name(const char *name);
