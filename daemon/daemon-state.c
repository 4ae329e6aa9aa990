/* SPDX-License-Identifier: MIT */
#include "daemon-state.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"

#define STATE_FORMAT "edged-state-1"

int daemon_state_load(const char *path, daemon_state *ret) {
        _cleanup_free_ char *text = NULL;
        json_error_t err;
        size_t size;
        int r;

        *ret = (daemon_state) { 0 };
        r = read_full_file(path, 1 << 20, (void **) &text, &size);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return log_warning_errno(r, "%s: cannot read: %m", path);
        json_t *j = json_loadb(text, size, 0, &err);
        if (!j)
                return log_warning_errno(EBADMSG, "%s:%d: not JSON: %s; starting afresh", path,
                                         err.line, err.text);
        const char *format = NULL;
        json_int_t until = 0, today = 0, tokens = 0;
        int indefinite = 0;
        double total = 0, today_s = 0;
        r = json_unpack_ex(j, &err, 0, "{s:s, s:I, s:b, s:F, s:F, s:I, s:I}", "format", &format,
                           "pause_until", &until, "pause_indefinite", &indefinite,
                           "core_seconds_total", &total, "core_seconds_today", &today_s, "today",
                           &today, "tokens_total", &tokens);
        if (r == 0 && strcmp(format, STATE_FORMAT) != 0)
                r = -1, snprintf(err.text, sizeof(err.text), "unknown format '%s'", format);
        if (r == 0 && (until < 0 || tokens < 0 || !(total >= 0) || !(today_s >= 0)))
                r = -1, snprintf(err.text, sizeof(err.text), "negative figure");
        json_decref(j);
        if (r < 0)
                return log_warning_errno(EBADMSG, "%s: %s; starting afresh", path, err.text);
        *ret = (daemon_state) { .pause_until = until, .pause_indefinite = indefinite,
                                .core_seconds_total = total, .core_seconds_today = today_s,
                                .today = (int) today, .tokens_total = (uint64_t) tokens };
        return 0;
}

int daemon_state_save(const char *path, const daemon_state *s) {
        json_t *j = json_pack("{s:s, s:I, s:b, s:f, s:f, s:I, s:I}", "format", STATE_FORMAT,
                              "pause_until", (json_int_t) s->pause_until, "pause_indefinite",
                              s->pause_indefinite, "core_seconds_total", s->core_seconds_total,
                              "core_seconds_today", s->core_seconds_today, "today",
                              (json_int_t) s->today, "tokens_total", (json_int_t) s->tokens_total);
        char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
        int r;

        json_decref(j);
        if (!text)
                return -ENOMEM;
        r = write_file_atomic(path, 0644, text, strlen(text));
        free(text);
        return r;
}

void daemon_state_add_harvest(daemon_state *s, int yyyymmdd, double core_s) {
        if (s->today != yyyymmdd) {
                s->today = yyyymmdd;
                s->core_seconds_today = 0;
        }
        s->core_seconds_today += core_s;
        s->core_seconds_total += core_s;
}
