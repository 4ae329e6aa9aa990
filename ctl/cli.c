/* SPDX-License-Identifier: MIT */
/* Option handling and error reporting shared by edgectl's subcommands. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

void ctl_print_usage(FILE *f, const ctl_verb *v) {
        fputs(v->usage, f);
        fputs("\nGlobal options: --json, --socket PATH, --no-pager, --help, --version.\n"
              "See edgectl(1).\n",
              f);
}

void ctl_usage_error(const ctl_verb *v, const char *fmt, ...) {
        va_list ap;

        fputs("edgectl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'edgectl %s%s--help'.\n", v ? v->name : "", v ? " " : "");
}

int ctl_global_option(ctl_context *c, const ctl_verb *v, int opt, const char *arg) {
        switch (opt) {
        case CTL_OPT_JSON:
                c->json = true;
                return CTL_CONTINUE;
        case CTL_OPT_SOCKET:
                c->socket_path = arg;
                return CTL_CONTINUE;
        case CTL_OPT_NO_PAGER: /* edgectl never pages; accepted for scripts that pass it */
                return CTL_CONTINUE;
        case CTL_OPT_VERSION:
                printf("edgectl %s\n", CTL_VERSION);
                return CTL_EXIT_OK;
        case 'h':
                if (v)
                        ctl_print_usage(stdout, v);
                return v ? CTL_EXIT_OK : CTL_CONTINUE; /* the top level prints its own */
        default:                                       /* getopt already said what was wrong */
                fprintf(stderr, "Try 'edgectl %s%s--help'.\n", v ? v->name : "", v ? " " : "");
                return CTL_EXIT_USAGE;
        }
}

static int report_connect_error(const char *path, int r) {
        if (r == -ENOENT || r == -ECONNREFUSED) {
                fprintf(stderr,
                        "edgectl: edged is not running: nothing answers on %s (%s).\n"
                        "Start it with: systemctl start edged\n",
                        path, strerror(-r));
                return CTL_EXIT_NOT_RUNNING;
        }
        if (r == -EACCES || r == -EPERM) {
                fprintf(stderr,
                        "edgectl: %s: permission denied. Root and members of group '%s' may "
                        "use edged's control socket.\n",
                        path, CTL_WRITE_GROUP);
                return CTL_EXIT_PERMISSION;
        }
        fprintf(stderr, "edgectl: cannot connect to edged on %s: %s\n", path, strerror(-r));
        return CTL_EXIT_FAILURE;
}

int ctl_call(ctl_context *c, json_t *req, json_t **ret_reply) {
        const char *cmd = json_string_value(json_object_get(req, "cmd"));
        json_t *reply = NULL;
        int r;

        if (!req) {
                fprintf(stderr, "edgectl: out of memory\n");
                return CTL_EXIT_FAILURE;
        }
        if (!c->connected) {
                r = ctl_client_connect(c->socket_path, &c->client);
                if (r < 0) {
                        json_decref(req);
                        return report_connect_error(c->socket_path, r);
                }
                c->connected = true;
        }
        r = ctl_client_call(&c->client, req, &reply);
        json_decref(req);
        if (r == -EINTR)
                return CTL_EXIT_FAILURE;
        if (r == -ECONNRESET) {
                fprintf(stderr, "edgectl: edged closed the connection on %s (did it stop?)\n",
                        c->socket_path);
                return CTL_EXIT_NOT_RUNNING;
        }
        if (r < 0) {
                fprintf(stderr, "edgectl: no reply from edged on %s: %s\n", c->socket_path,
                        strerror(-r));
                return CTL_EXIT_FAILURE;
        }
        if (!json_is_true(json_object_get(reply, "ok"))) {
                const char *name = json_string_value(json_object_get(reply, "error"));
                const char *msg = json_string_value(json_object_get(reply, "message"));
                int e = ctl_errno_from_name(name);

                if (e == ENOSYS)
                        fprintf(stderr,
                                "edgectl: this edged does not know '%s' (%s); is it older "
                                "than edgectl %s?\n",
                                cmd ? cmd : "?", msg ? msg : "ENOSYS", CTL_VERSION);
                else
                        fprintf(stderr, "edgectl: %s\n", msg ? msg : strerror(e));
                if (e == EPERM || e == EACCES)
                        fprintf(stderr,
                                "Root and members of group '%s' may do this "
                                "(usermod -aG %s USER, then log in again).\n",
                                CTL_WRITE_GROUP, CTL_WRITE_GROUP);
                json_decref(reply);
                return e == EPERM || e == EACCES ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE;
        }
        if (ret_reply)
                *ret_reply = reply;
        else
                json_decref(reply);
        return CTL_EXIT_OK;
}

int ctl_print_json(ctl_context *c, json_t *reply) {
        json_t *copy = json_copy(reply);
        char *text;

        if (!copy)
                return CTL_EXIT_FAILURE;
        json_object_del(copy, "ok");
        json_object_del(copy, "id");
        text = json_dumps(copy,
                          JSON_PRESERVE_ORDER | (c->stdout_tty ? JSON_INDENT(2) : JSON_COMPACT));
        json_decref(copy);
        if (!text)
                return CTL_EXIT_FAILURE;
        puts(text);
        free(text);
        return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

int ctl_print_text(int r, char **text) {
        if (r < 0) {
                fprintf(stderr, "edgectl: cannot format the reply: %s\n", strerror(-r));
                return CTL_EXIT_FAILURE;
        }
        fputs(*text, stdout);
        free(*text);
        *text = NULL;
        return fflush(stdout) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAILURE;
}

void ctl_context_done(ctl_context *c) {
        if (c->connected)
                ctl_client_done(&c->client);
        c->connected = false;
}
