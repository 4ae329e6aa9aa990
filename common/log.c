/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int max_level = LOG_LEVEL_INFO;

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
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
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        errno = saved;
        return -e;
}
