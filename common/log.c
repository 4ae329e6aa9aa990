/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

static int max_level = LOG_LEVEL_INFO;
static bool to_journal;

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

int log_level_from_string(const char *s) {
        static const struct {
                const char *name;
                int level;
        } names[] = {
                { "err", LOG_LEVEL_ERR },   { "error", LOG_LEVEL_ERR },  { "warning", LOG_LEVEL_WARNING },
                { "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG },
        };
        for (size_t i = 0; i < ARRAY_SIZE(names); i++)
                if (strcasecmp(s, names[i].name) == 0)
                        return names[i].level;
        return -EINVAL;
}

/* systemd sets JOURNAL_STREAM to the device and inode of the stream it connected stderr to;
 * if stderr is still that stream, the journal is listening and structured fields reach it. */
void log_open(void) {
        const char *e = getenv("JOURNAL_STREAM"), *lvl = getenv("EDGED_LOG_LEVEL");
        unsigned long long dev, ino;
        struct stat st;

        to_journal = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                     (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
        if (lvl && log_level_from_string(lvl) >= 0)
                max_level = log_level_from_string(lvl);
}

bool log_to_journal(void) {
        return to_journal;
}

static void emit(int level, const char *state, const char *reason, const char *fmt, va_list ap) {
        char msg[2048];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        if (!to_journal) {
                fprintf(stderr, "%s\n", msg);
                return;
        }
        if (state)
                sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", level, "EDGED_STATE=%s", state,
                                "EDGED_REASON=%s", reason ? reason : "none", NULL);
        else
                sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", level, NULL);
}

int log_full_errno(int level, int error, const char *fmt, ...) {
        int e = error < 0 ? -error : error;
        int saved = errno;
        va_list ap;

        if (level > max_level)
                return -e;
        va_start(ap, fmt);
        /* %m in the format refers to the error we were given, not to a stale errno. */
        errno = e;
        emit(level, NULL, NULL, fmt, ap);
        va_end(ap);
        errno = saved;
        return -e;
}

void log_state(const char *state, const char *reason, const char *fmt, ...) {
        va_list ap;

        if (LOG_LEVEL_INFO > max_level)
                return;
        va_start(ap, fmt);
        emit(LOG_LEVEL_INFO, state, reason, fmt, ap);
        va_end(ap);
}
