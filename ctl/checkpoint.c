/* SPDX-License-Identifier: MIT */
/* edgectl checkpoint list|save|export FILE. Export asks the daemon to save one now, then
 * copies that file with the caller's own rights (checkpoints are 0640, group edged), so the
 * daemon never writes where the user points it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"
#include "fileio.h"

/* Copies src to dst atomically (temp file next to dst, fsync, rename). On failure *ret_what
 * says which side failed, for the message. */
static int copy_atomic(const char *src, const char *dst, const char **ret_what) {
        _cleanup_close_ int in = -1;
        _cleanup_free_ char *tmp = NULL;
        char buf[1 << 16];
        mode_t mask;
        int out = -1, r;

        *ret_what = src;
        in = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (in < 0)
                return -errno;
        *ret_what = dst;
        mask = umask(0);
        umask(mask);
        r = atomic_file_open(dst, 0666 & ~mask, &tmp, &out);
        if (r < 0)
                return r;
        for (;;) {
                ssize_t n = read(in, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        *ret_what = src;
                        atomic_file_abort(out, tmp);
                        return r;
                }
                if (n == 0)
                        break;
                r = write_full(out, buf, (size_t) n);
                if (r < 0) {
                        atomic_file_abort(out, tmp);
                        return r;
                }
        }
        return atomic_file_commit(out, tmp, dst);
}

static int export(ctl_context *c, const char *file) {
        json_t *reply = NULL, *cp;
        const char *path, *what = NULL;
        int r;

        r = ctl_call(c, json_pack("{s:s}", "cmd", "checkpoint-save"), &reply);
        if (r != CTL_EXIT_OK)
                return r;
        cp = json_object_get(reply, "checkpoint");
        path = json_string_value(json_object_get(cp, "path"));
        if (!path) {
                fprintf(stderr, "edgectl: edged saved a checkpoint but did not say where\n");
                json_decref(reply);
                return CTL_EXIT_FAILURE;
        }
        r = copy_atomic(path, file, &what);
        if (r < 0) {
                fprintf(stderr, "edgectl: cannot %s %s: %s\n", what == path ? "read" : "write",
                        what, strerror(-r));
                if (what == path && (r == -EACCES || r == -EPERM))
                        fprintf(stderr,
                                "Checkpoints are readable by root and group '%s' "
                                "(usermod -aG %s USER, then log in again).\n",
                                CTL_WRITE_GROUP, CTL_WRITE_GROUP);
                json_decref(reply);
                return r == -EACCES || r == -EPERM ? CTL_EXIT_PERMISSION : CTL_EXIT_FAILURE;
        }
        if (c->json) {
                json_object_set_new(reply, "exported", json_string(file));
                r = ctl_print_json(c, reply);
        } else {
                char b[32];
                json_t *bytes = json_object_get(cp, "bytes");
                printf("Saved the checkpoint of step %lld (%s) and exported it to %s.\n",
                       (long long) json_integer_value(json_object_get(cp, "step")),
                       json_is_number(bytes)
                               ? ctl_format_bytes(json_number_value(bytes), b, sizeof(b))
                               : "-",
                       file);
        }
        json_decref(reply);
        return r;
}

int ctl_checkpoint(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { CTL_GLOBAL_OPTIONS, {} };
        json_t *reply = NULL;
        const char *sub;
        char *text = NULL;
        int opt, r, n;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                        return r;
        n = argc - optind;
        sub = n > 0 ? argv[optind] : "list";
        if (strcmp(sub, "export") == 0) {
                if (n != 2) {
                        ctl_usage_error(v, n < 2 ? "checkpoint export needs a FILE"
                                                 : "checkpoint export takes one FILE");
                        return CTL_EXIT_USAGE;
                }
                return export(c, argv[optind + 1]);
        }
        if (strcmp(sub, "list") != 0 && strcmp(sub, "save") != 0) {
                ctl_usage_error(v, "unknown checkpoint command '%s': list, save or export", sub);
                return CTL_EXIT_USAGE;
        }
        if (n > 1) {
                ctl_usage_error(v, "unexpected argument '%s'", argv[optind + 1]);
                return CTL_EXIT_USAGE;
        }
        r = ctl_call(c,
                     json_pack("{s:s}", "cmd",
                               strcmp(sub, "save") == 0 ? "checkpoint-save" : "checkpoint-list"),
                     &reply);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json)
                r = ctl_print_json(c, reply);
        else if (strcmp(sub, "save") == 0) {
                json_t *cp = json_object_get(reply, "checkpoint");
                printf("Saved %s (step %lld).\n",
                       json_string_value(json_object_get(cp, "path")) ?: "-",
                       (long long) json_integer_value(json_object_get(cp, "step")));
        } else
                r = ctl_print_text(ctl_format_checkpoints(reply, &c->style, &text), &text);
        json_decref(reply);
        return r;
}
