/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

#include "macros.h"

enum { LOG_LEVEL_ERR = 3, LOG_LEVEL_WARNING = 4, LOG_LEVEL_INFO = 6, LOG_LEVEL_DEBUG = 7 };

void log_set_max_level(int level);
int log_get_max_level(void);
/* "err", "warning", "info", "debug" -> level, or -EINVAL. */
int log_level_from_string(const char *s);

/* Decides where messages go: the journal (with structured fields) when systemd connected
 * stderr to it, stderr otherwise; EDGED_LOG_LEVEL=debug|info|warning|err sets the level. */
void log_open(void);
bool log_to_journal(void);

/* A state transition, at info level: in the journal it carries EDGED_STATE= and
 * EDGED_REASON= so "journalctl EDGED_STATE=paused" finds every pause. */
void log_state(const char *state, const char *reason, const char *fmt, ...) _printf_(3, 4);

/* Logs the message and returns -abs(error), so callers can "return log_error_errno(r, ...)". */
int log_full_errno(int level, int error, const char *fmt, ...) _printf_(3, 4);

/* Expanded inline so that callers (and static analysers) see the result is negative. */
#define log_errno_at(level, e, ...)                                                                \
        ({                                                                                         \
                int _e = (e) < 0 ? -(e) : (e);                                                     \
                log_full_errno((level), _e, __VA_ARGS__);                                          \
                -_e;                                                                               \
        })
#define log_error_errno(e, ...) log_errno_at(LOG_LEVEL_ERR, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_errno_at(LOG_LEVEL_WARNING, (e), __VA_ARGS__)
#define log_error(...) ((void) log_full_errno(LOG_LEVEL_ERR, 0, __VA_ARGS__))
#define log_warning(...) ((void) log_full_errno(LOG_LEVEL_WARNING, 0, __VA_ARGS__))
#define log_info(...) ((void) log_full_errno(LOG_LEVEL_INFO, 0, __VA_ARGS__))
#define log_debug(...) ((void) log_full_errno(LOG_LEVEL_DEBUG, 0, __VA_ARGS__))
