/* SPDX-License-Identifier: MIT */
#pragma once

/* What edgectl's subcommands share: the context built from the global options, the exit
 * codes, option parsing helpers and the call-and-report-errors wrapper around the client.
 * Subcommands return an exit code (enum ctl_exit) and print their own errors. */

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "client.h"
#include "format.h"

#include "version.h"
#define CTL_VERSION EDGED_VERSION
#define CTL_WRITE_GROUP "edged"

enum ctl_exit {
        CTL_EXIT_OK = 0,
        CTL_EXIT_FAILURE = 1,
        CTL_EXIT_USAGE = 2,
        CTL_EXIT_NOT_RUNNING = 3,
        CTL_EXIT_PERMISSION = 4,
};
/* ctl_global_option: go on parsing */
#define CTL_CONTINUE (-1)

typedef struct ctl_context {
        const char *socket_path;
        bool json;
        bool stdout_tty;
        ctl_style style;
        ctl_client client; /* connected on first use */
        bool connected;
} ctl_context;

typedef struct ctl_verb ctl_verb;
typedef int (*ctl_verb_fn)(ctl_context *c, const ctl_verb *v, int argc, char **argv);
struct ctl_verb {
        const char *name;
        const char *usage; /* the text of "edgectl NAME --help" */
        ctl_verb_fn run;   /* argv[0] is the verb's name */
};

enum {
        CTL_OPT_JSON = 0x100,
        CTL_OPT_SOCKET,
        CTL_OPT_NO_PAGER,
        CTL_OPT_VERSION,
};

/* Appended to each verb's getopt_long table, so global options work after the verb too. */
/* clang-format off */
#define CTL_GLOBAL_OPTIONS                                              \
        { "json", no_argument, NULL, CTL_OPT_JSON },                   \
        { "socket", required_argument, NULL, CTL_OPT_SOCKET },         \
        { "no-pager", no_argument, NULL, CTL_OPT_NO_PAGER },           \
        { "help", no_argument, NULL, 'h' },                            \
        { "version", no_argument, NULL, CTL_OPT_VERSION }
/* clang-format on */

/* Handles a global option (or getopt's '?'): CTL_CONTINUE, or the exit code to return now
 * (0 after --help/--version, CTL_EXIT_USAGE for an unknown option). v NULL: the top level. */
int ctl_global_option(ctl_context *c, const ctl_verb *v, int opt, const char *arg);
void ctl_usage_error(const ctl_verb *v, const char *fmt, ...) _printf_(2, 3);
void ctl_print_usage(FILE *f, const ctl_verb *v);

/* Sends req (consumed) and returns CTL_EXIT_OK with the reply in *ret_reply, or prints why
 * not (daemon down, permission, the daemon's message) and returns the exit code. */
int ctl_call(ctl_context *c, json_t *req, json_t **ret_reply);
/* The reply without "ok" and "id": indented on a TTY, one line otherwise. */
int ctl_print_json(ctl_context *c, json_t *reply);
/* Prints and frees *text, the rendering a ctl_format_*() call returned r for; reports r < 0.
 * A pointer, so that "ctl_print_text(ctl_format_x(..., &t), &t)" works in any argument
 * evaluation order. */
int ctl_print_text(int r, char **text);
void ctl_context_done(ctl_context *c);

int ctl_status(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_pause(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_resume(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_profile(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_policy(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_stats(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_sample(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_checkpoint(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_watch(ctl_context *c, const ctl_verb *v, int argc, char **argv);
int ctl_generate(ctl_context *c, const ctl_verb *v, int argc, char **argv);
