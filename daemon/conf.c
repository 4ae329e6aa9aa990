/* SPDX-License-Identifier: MIT */
#include "conf.h"

#include <ctype.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "fileio.h"
#include "log.h"
#include "macros.h"
#include "sysfs-read.h"

#define CONF_FILE_MAX (1024 * 1024)
#define MINUTES_PER_DAY 1440

typedef enum { T_INT, T_BOOL, T_PROFILE, T_MODEL, T_HOURS, T_PATH, T_URL, T_SECRET, T_ADDR, T_SPAN } value_type;

static const struct {
        const char *name;
        value_type type;
        int64_t min, max;
} key_table[_CONF_KEY_MAX] = {
        [CONF_KEY_PROFILE] = { "Profile", T_PROFILE, 0, 0 },
        [CONF_KEY_MIN_IDLE_PERCENT] = { "MinIdlePercent", T_INT, 0, 100 },
        [CONF_KEY_IDLE_WINDOW_SEC] = { "IdleWindowSec", T_INT, 1, 3600 },
        [CONF_KEY_MAX_CORES] = { "MaxCores", T_INT, 0, 1024 },
        [CONF_KEY_MAX_TEMPERATURE_C] = { "MaxTemperatureC", T_INT, 1, 150 },
        [CONF_KEY_RESUME_TEMPERATURE_C] = { "ResumeTemperatureC", T_INT, 0, 149 },
        [CONF_KEY_REQUIRE_AC_POWER] = { "RequireACPower", T_BOOL, 0, 0 },
        [CONF_KEY_MIN_BATTERY_PERCENT] = { "MinBatteryPercent", T_INT, 0, 100 },
        [CONF_KEY_MAX_FOREGROUND_DELAY_MS] = { "MaxForegroundDelayMs", T_INT, 0, 1000 },
        [CONF_KEY_MAX_MEMORY_MIB] = { "MaxMemoryMiB", T_INT, 16, 1048576 },
        [CONF_KEY_ACTIVE_HOURS] = { "ActiveHours", T_HOURS, 0, 0 },
        [CONF_KEY_PAUSE_ON_USER_ACTIVE] = { "PauseOnUserActive", T_BOOL, 0, 0 },
        [CONF_KEY_DATA_DIRECTORY] = { "DataDirectory", T_PATH, 0, 0 },
        [CONF_KEY_STATE_DIRECTORY] = { "StateDirectory", T_PATH, 0, 0 },
        [CONF_KEY_CHECKPOINT_INTERVAL_SEC] = { "CheckpointIntervalSec", T_INT, 10, 86400 },
        [CONF_KEY_MODEL] = { "Model", T_MODEL, 0, 0 },
        [CONF_KEY_SERVER] = { "Server", T_URL, 0, 0 },
        [CONF_KEY_ENROLL_TOKEN] = { "EnrollToken", T_SECRET, 0, 0 },
        [CONF_KEY_CA_FILE] = { "CAFile", T_PATH, 0, 0 },
        [CONF_KEY_SERVE] = { "Serve", T_BOOL, 0, 0 },
        [CONF_KEY_LISTEN_ADDRESS] = { "ListenAddress", T_ADDR, 0, 0 },
        [CONF_KEY_INFERENCE_TOKEN] = { "Token", T_SECRET, 0, 0 },
        [CONF_KEY_INFERENCE_MODEL_FILE] = { "ModelFile", T_PATH, 0, 0 },
        [CONF_KEY_SESSION_IDLE_SEC] = { "SessionIdleSec", T_INT, 1, 86400 },
        [CONF_KEY_INFERENCE_MEMORY_MIB] = { "MemoryMiB", T_INT, 16, 1048576 },
        [CONF_KEY_INFERENCE_LAYERS] = { "Layers", T_SPAN, 0, 63 },
};

static const char *const profile_names[_PROFILE_MAX] = {
        [PROFILE_QUIET] = "quiet",
        [PROFILE_BALANCED] = "balanced",
        [PROFILE_PERFORMANCE] = "performance",
};

static const char *const model_names[_CONF_MODEL_MAX] = {
        [CONF_MODEL_TINY] = "tiny",
        [CONF_MODEL_SMALL] = "small",
        [CONF_MODEL_MEDIUM] = "medium",
};

static const char *const day_names[7] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };

const char *conf_key_to_string(conf_key k) {
        return k >= 0 && k < _CONF_KEY_MAX ? key_table[k].name : NULL;
}

conf_key conf_key_from_string(const char *s) {
        for (int k = 0; k < _CONF_KEY_MAX; k++)
                if (strcmp(key_table[k].name, s) == 0)
                        return (conf_key) k;
        return _CONF_KEY_INVALID;
}

bool conf_key_is_policy(conf_key k) {
        return k >= 0 && k < _CONF_POLICY_KEY_MAX;
}

const char *conf_key_section(conf_key k) {
        if (k < 0 || k >= _CONF_KEY_MAX)
                return NULL;
        return k < _CONF_POLICY_KEY_MAX ? "Policy"
               : k < CONF_KEY_SERVER    ? "Daemon"
               : k < CONF_KEY_SERVE     ? "Federation"
                                        : "Inference";
}

static bool known_section(const char *name) {
        return strcmp(name, "Policy") == 0 || strcmp(name, "Daemon") == 0 ||
               strcmp(name, "Federation") == 0 || strcmp(name, "Inference") == 0;
}

const char *conf_profile_to_string(policy_profile p) {
        return p >= 0 && p < _PROFILE_MAX ? profile_names[p] : NULL;
}

const char *conf_model_to_string(conf_model m) {
        return m >= 0 && m < _CONF_MODEL_MAX ? model_names[m] : NULL;
}

void conf_profile_preset(policy_profile p, policy_knobs *ret) {
        /* balanced is DESIGN.md §5 but for MinIdlePercent, 45 rather than 60, so that one busy
         * core of two (50 % idle) leaves the other to train on (issue 9); the others lean one
         * way, see the table in conf.h. */
        *ret = (policy_knobs){
                .profile = PROFILE_BALANCED,
                .min_idle_percent = 45,
                .idle_window_sec = 30,
                .max_cores = 0,
                .max_temperature_c = 75,
                .resume_temperature_c = 65,
                .require_ac_power = true,
                .min_battery_percent = 80,
                .max_foreground_delay_ms = 5,
                .max_memory_mib = 1024,
                .n_active_windows = 0,
                .pause_on_user_active = false,
        };
        switch (p) {
        case PROFILE_QUIET:
                ret->profile = PROFILE_QUIET;
                ret->min_idle_percent = 80;
                ret->idle_window_sec = 60;
                ret->max_cores = 1;
                ret->max_temperature_c = 65;
                ret->resume_temperature_c = 55;
                ret->max_foreground_delay_ms = 2;
                ret->pause_on_user_active = true;
                break;
        case PROFILE_PERFORMANCE:
                ret->profile = PROFILE_PERFORMANCE;
                ret->min_idle_percent = 25;
                ret->idle_window_sec = 15;
                ret->max_temperature_c = 85;
                ret->resume_temperature_c = 75;
                ret->require_ac_power = false;
                ret->min_battery_percent = 50;
                ret->max_foreground_delay_ms = 10;
                break;
        default:
                break;
        }
}

/* ---- values ---- */

typedef struct {
        int64_t i; /* integers, booleans, profile, model */
        char *s;   /* paths */
        int n_windows;
        active_window w[ACTIVE_WINDOWS_MAX];
} conf_value;

int conf_parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "yes", "true", "1", "on" };
        static const char *const no[] = { "no", "false", "0", "off" };

        for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

static int parse_day(const char *s, size_t n, int *ret) {
        if (n != 3)
                return -EINVAL;
        for (int d = 0; d < 7; d++)
                if (strncasecmp(s, day_names[d], 3) == 0) {
                        *ret = d;
                        return 0;
                }
        return -EINVAL;
}

/* "Mon" or "Fri-Mon" (wrapping through Sunday) into a day mask. */
static int parse_days(const char *s, size_t n, uint8_t *ret) {
        const char *dash = memchr(s, '-', n);
        int a, b;

        if (!dash) {
                if (parse_day(s, n, &a) < 0)
                        return -EINVAL;
                *ret = (uint8_t) (1u << a);
                return 0;
        }
        if (parse_day(s, (size_t) (dash - s), &a) < 0 ||
            parse_day(dash + 1, n - (size_t) (dash - s) - 1, &b) < 0)
                return -EINVAL;
        *ret = 0;
        for (int d = a;; d = (d + 1) % 7) {
                *ret |= (uint8_t) (1u << d);
                if (d == b)
                        break;
        }
        return 0;
}

/* "H:MM" or "HH:MM"; 24:00 only where allow_24 (an end time). */
static int parse_time(const char *s, size_t n, bool allow_24, uint16_t *ret) {
        const char *colon = memchr(s, ':', n);
        int64_t h, m;

        if (!colon || colon == s || colon - s > 2 || n - (size_t) (colon - s) - 1 != 2)
                return -EINVAL;
        if (sysfs_parse_int64_n(s, (size_t) (colon - s), 0, 24, &h) < 0 ||
            sysfs_parse_int64_n(colon + 1, 2, 0, 59, &m) < 0)
                return -EINVAL;
        if (h == 24 && (!allow_24 || m != 0))
                return -EINVAL;
        *ret = (uint16_t) (h * 60 + m);
        return 0;
}

static int parse_range(const char *s, size_t n, uint16_t *ret_start, uint16_t *ret_end) {
        const char *dash = memchr(s, '-', n);

        if (!dash)
                return -EINVAL;
        if (parse_time(s, (size_t) (dash - s), false, ret_start) < 0 ||
            parse_time(dash + 1, n - (size_t) (dash - s) - 1, true, ret_end) < 0)
                return -EINVAL;
        return 0;
}

static bool is_sep(char c) {
        return c == ',' || isspace((unsigned char) c);
}

int conf_parse_active_hours(const char *s, active_window ret[ACTIVE_WINDOWS_MAX], int *ret_n,
                            char *reason, size_t reason_size) {
        active_window w[ACTIVE_WINDOWS_MAX];
        uint8_t pending = 0;
        int n = 0, n_tokens = 0;
        bool always = false;

        for (const char *p = s;;) {
                size_t len;

                while (*p && is_sep(*p))
                        p++;
                if (!*p)
                        break;
                for (len = 0; p[len] && !is_sep(p[len]); len++)
                        ;
                n_tokens++;
                if (len == 6 && strncasecmp(p, "always", 6) == 0) {
                        always = true;
                } else if (memchr(p, ':', len) || isdigit((unsigned char) *p)) {
                        uint16_t a, b;

                        if (parse_range(p, len, &a, &b) < 0) {
                                snprintf(reason, reason_size, "bad time range '%.*s'", (int) len,
                                         p);
                                return -EINVAL;
                        }
                        if (n == ACTIVE_WINDOWS_MAX) {
                                snprintf(reason, reason_size, "more than %d windows",
                                         ACTIVE_WINDOWS_MAX);
                                return -E2BIG;
                        }
                        /* No days before a time range means every day. */
                        w[n++] = (active_window){ .days = pending ? pending : 0x7f,
                                                  .start_min = a,
                                                  .end_min = b };
                        pending = 0;
                } else {
                        uint8_t d;

                        if (parse_days(p, len, &d) < 0) {
                                snprintf(reason, reason_size, "unknown day '%.*s'", (int) len, p);
                                return -EINVAL;
                        }
                        pending |= d;
                }
                p += len;
        }
        if (always) {
                if (n_tokens != 1) {
                        snprintf(reason, reason_size, "'always' must stand alone");
                        return -EINVAL;
                }
                *ret_n = 0;
                return 0;
        }
        if (pending) {
                /* Days with no time range: all of those days. */
                if (n == ACTIVE_WINDOWS_MAX) {
                        snprintf(reason, reason_size, "more than %d windows", ACTIVE_WINDOWS_MAX);
                        return -E2BIG;
                }
                w[n++] = (active_window){ .days = pending,
                                          .start_min = 0,
                                          .end_min = MINUTES_PER_DAY };
        }
        if (n == 0) {
                snprintf(reason, reason_size, "no time window");
                return -EINVAL;
        }
        memcpy(ret, w, sizeof(w[0]) * (size_t) n);
        *ret_n = n;
        return 0;
}

int conf_format_active_hours(const active_window *w, int n, char *buf, size_t size) {
        size_t off = 0;

#define APPEND(...)                                                                                \
        do {                                                                                       \
                int _k = snprintf(buf + off, size - off, __VA_ARGS__);                             \
                if (_k < 0 || (size_t) _k >= size - off)                                           \
                        return -ENOBUFS;                                                           \
                off += (size_t) _k;                                                                \
        } while (0)

        if (size == 0)
                return -ENOBUFS;
        buf[0] = 0;
        if (n == 0) {
                APPEND("always");
                return 0;
        }
        for (int i = 0; i < n; i++) {
                if (i > 0)
                        APPEND(", ");
                if (w[i].days != 0x7f) {
                        bool first = true;
                        /* Runs of consecutive days, Monday first: re-parses to the same mask. */
                        for (int d = 0; d < 7; d++) {
                                int e;

                                if (!(w[i].days & (1u << d)))
                                        continue;
                                for (e = d; e + 1 < 7 && (w[i].days & (1u << (e + 1))); e++)
                                        ;
                                if (e == d)
                                        APPEND("%s%s", first ? "" : ",", day_names[d]);
                                else
                                        APPEND("%s%s-%s", first ? "" : ",", day_names[d],
                                               day_names[e]);
                                first = false;
                                d = e;
                        }
                        APPEND(" ");
                }
                APPEND("%02u:%02u-%02u:%02u", w[i].start_min / 60u, w[i].start_min % 60u,
                       w[i].end_min / 60u, w[i].end_min % 60u);
        }
#undef APPEND
        return 0;
}

static int parse_enum(const char *s, const char *const *names, int n) {
        for (int i = 0; i < n; i++)
                if (strcmp(s, names[i]) == 0)
                        return i;
        return -EINVAL;
}

/* The one place that knows how each key's value is written; reason gets the message. */
static int parse_value(conf_key k, const char *s, conf_value *ret, char *reason,
                       size_t reason_size) {
        const char *name = key_table[k].name;
        char why[128];
        bool b;
        int r;

        *ret = (conf_value){};
        switch (key_table[k].type) {
        case T_INT:
                if (sysfs_parse_int64(s, key_table[k].min, key_table[k].max, &ret->i) < 0 || !*s ||
                    isspace((unsigned char) *s)) {
                        snprintf(reason, reason_size,
                                 "%s: '%s' is not a whole number in [%" PRId64 ", %" PRId64 "]",
                                 name, s, key_table[k].min, key_table[k].max);
                        return -EINVAL;
                }
                return 0;
        case T_BOOL:
                if (conf_parse_bool(s, &b) < 0) {
                        snprintf(reason, reason_size,
                                 "%s: '%s' is not a boolean (yes/no, true/false, 1/0, on/off)",
                                 name, s);
                        return -EINVAL;
                }
                ret->i = b;
                return 0;
        case T_PROFILE:
                r = parse_enum(s, profile_names, _PROFILE_MAX);
                if (r < 0) {
                        snprintf(reason, reason_size,
                                 "%s: '%s' is not one of quiet, balanced, performance", name, s);
                        return -EINVAL;
                }
                ret->i = r;
                return 0;
        case T_MODEL:
                r = parse_enum(s, model_names, _CONF_MODEL_MAX);
                if (r < 0) {
                        snprintf(reason, reason_size, "%s: '%s' is not one of tiny, small, medium",
                                 name, s);
                        return -EINVAL;
                }
                ret->i = r;
                return 0;
        case T_HOURS:
                r = conf_parse_active_hours(s, ret->w, &ret->n_windows, why, sizeof(why));
                if (r < 0) {
                        snprintf(reason, reason_size, "%s: '%s' is not valid: %s", name, s, why);
                        return -EINVAL;
                }
                return 0;
        case T_URL:
                if (!*s) { /* empty: standalone */
                        ret->s = strdup("");
                        return ret->s ? 0 : -ENOMEM;
                }
                if ((strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0) ||
                    strpbrk(s, " \t\"'<>\\") || strlen(s) > 512 || strchr(s, '@') ||
                    s[strlen(s) - 1] == '/' || !s[strcspn(s, ":") + 3]) {
                        snprintf(reason, reason_size,
                                 "%s: '%s' is not an http:// or https:// URL without user info, "
                                 "spaces or a trailing '/'",
                                 name, s);
                        return -EINVAL;
                }
                ret->s = strdup(s);
                return ret->s ? 0 : -ENOMEM;
        case T_SECRET:
                if (strlen(s) > 256 || strpbrk(s, " \t")) {
                        /* never echo a secret back */
                        snprintf(reason, reason_size, "%s: not a token (at most 256 characters, no spaces)", name);
                        return -EINVAL;
                }
                ret->s = strdup(s);
                return ret->s ? 0 : -ENOMEM;
        case T_SPAN: {
                int lo = -1, hi = -1, len = 0;
                if (!*s || strcmp(s, "all") == 0) {
                        ret->i = -1;
                        return 0;
                }
                if (sscanf(s, "%d-%d%n", &lo, &hi, &len) != 2 || s[len] || lo < 0 || hi < lo ||
                    hi > key_table[k].max) {
                        snprintf(reason, reason_size, "%s: '%s' is not 'all' or FIRST-LAST (0..%" PRId64 ")",
                                 name, s, key_table[k].max);
                        return -EINVAL;
                }
                ret->i = lo * 64 + hi; /* both in 0..63 */
                return 0;
        }
        case T_ADDR: {
                unsigned a, b1, c4, d, port;
                char end;
                if (sscanf(s, "%u.%u.%u.%u:%u%c", &a, &b1, &c4, &d, &port, &end) != 5 || a > 255 ||
                    b1 > 255 || c4 > 255 || d > 255 || port < 1 || port > 65535 || strlen(s) > 21) {
                        snprintf(reason, reason_size, "%s: '%s' is not an IPv4 ADDRESS:PORT", name, s);
                        return -EINVAL;
                }
                ret->s = strdup(s);
                return ret->s ? 0 : -ENOMEM;
        }
        case T_PATH:
                if (k == CONF_KEY_INFERENCE_MODEL_FILE && !*s) { /* empty: the default */
                        ret->s = strdup("");
                        return ret->s ? 0 : -ENOMEM;
                }
                if (s[0] != '/' || strstr(s, "/../") ||
                    (strlen(s) >= 3 && strcmp(s + strlen(s) - 3, "/..") == 0)) {
                        snprintf(reason, reason_size,
                                 "%s: '%s' is not an absolute path without '..'", name, s);
                        return -EINVAL;
                }
                ret->s = strdup(s);
                return ret->s ? 0 : -ENOMEM;
        }
        return -EINVAL;
}

int conf_check_value(conf_key k, const char *value, char *reason, size_t reason_size) {
        conf_value v;
        int r;

        if (k < 0 || k >= _CONF_KEY_MAX) {
                snprintf(reason, reason_size, "unknown key");
                return -EINVAL;
        }
        r = parse_value(k, value, &v, reason, reason_size);
        free(v.s);
        return r;
}

static void set_knob(policy_knobs *kn, conf_key k, const conf_value *v) {
        switch (k) {
        case CONF_KEY_PROFILE:
                kn->profile = (policy_profile) v->i;
                break;
        case CONF_KEY_MIN_IDLE_PERCENT:
                kn->min_idle_percent = (int) v->i;
                break;
        case CONF_KEY_IDLE_WINDOW_SEC:
                kn->idle_window_sec = (int) v->i;
                break;
        case CONF_KEY_MAX_CORES:
                kn->max_cores = (int) v->i;
                break;
        case CONF_KEY_MAX_TEMPERATURE_C:
                kn->max_temperature_c = (int) v->i;
                break;
        case CONF_KEY_RESUME_TEMPERATURE_C:
                kn->resume_temperature_c = (int) v->i;
                break;
        case CONF_KEY_REQUIRE_AC_POWER:
                kn->require_ac_power = v->i != 0;
                break;
        case CONF_KEY_MIN_BATTERY_PERCENT:
                kn->min_battery_percent = (int) v->i;
                break;
        case CONF_KEY_MAX_FOREGROUND_DELAY_MS:
                kn->max_foreground_delay_ms = (int) v->i;
                break;
        case CONF_KEY_MAX_MEMORY_MIB:
                kn->max_memory_mib = (int) v->i;
                break;
        case CONF_KEY_ACTIVE_HOURS:
                kn->n_active_windows = v->n_windows;
                memcpy(kn->active, v->w, sizeof(kn->active));
                break;
        case CONF_KEY_PAUSE_ON_USER_ACTIVE:
                kn->pause_on_user_active = v->i != 0;
                break;
        default:
                break;
        }
}

/* Copies one knob's field from src (used for locked knobs, which follow the local profile). */
static void copy_knob(policy_knobs *dst, const policy_knobs *src, conf_key k) {
        switch (k) {
        case CONF_KEY_MIN_IDLE_PERCENT:
                dst->min_idle_percent = src->min_idle_percent;
                break;
        case CONF_KEY_IDLE_WINDOW_SEC:
                dst->idle_window_sec = src->idle_window_sec;
                break;
        case CONF_KEY_MAX_CORES:
                dst->max_cores = src->max_cores;
                break;
        case CONF_KEY_MAX_TEMPERATURE_C:
                dst->max_temperature_c = src->max_temperature_c;
                break;
        case CONF_KEY_RESUME_TEMPERATURE_C:
                dst->resume_temperature_c = src->resume_temperature_c;
                break;
        case CONF_KEY_REQUIRE_AC_POWER:
                dst->require_ac_power = src->require_ac_power;
                break;
        case CONF_KEY_MIN_BATTERY_PERCENT:
                dst->min_battery_percent = src->min_battery_percent;
                break;
        case CONF_KEY_MAX_FOREGROUND_DELAY_MS:
                dst->max_foreground_delay_ms = src->max_foreground_delay_ms;
                break;
        case CONF_KEY_MAX_MEMORY_MIB:
                dst->max_memory_mib = src->max_memory_mib;
                break;
        case CONF_KEY_ACTIVE_HOURS:
                dst->n_active_windows = src->n_active_windows;
                memcpy(dst->active, src->active, sizeof(dst->active));
                break;
        case CONF_KEY_PAUSE_ON_USER_ACTIVE:
                dst->pause_on_user_active = src->pause_on_user_active;
                break;
        default:
                break;
        }
}

int conf_init_builtin(conf *ret) {
        *ret = (conf){};
        conf_profile_preset(PROFILE_BALANCED, &ret->knobs);
        ret->data_directory = strdup(CONF_DEFAULT_DATA_DIRECTORY);
        ret->state_directory = strdup(CONF_DEFAULT_STATE_DIRECTORY);
        ret->checkpoint_interval_sec = CONF_DEFAULT_CHECKPOINT_INTERVAL_SEC;
        ret->model = CONF_DEFAULT_MODEL;
        ret->listen_address = strdup(CONF_DEFAULT_LISTEN_ADDRESS);
        ret->session_idle_sec = CONF_DEFAULT_SESSION_IDLE_SEC;
        ret->inference_memory_mib = CONF_DEFAULT_INFERENCE_MEMORY_MIB;
        ret->layers_first = ret->layers_last = -1;
        for (int k = 0; k < _CONF_KEY_MAX; k++)
                ret->prov[k] = (conf_provenance){ .origin = KNOB_BUILTIN };
        if (!ret->data_directory || !ret->state_directory || !ret->listen_address) {
                conf_done(ret);
                return -ENOMEM;
        }
        return 0;
}

void conf_done(conf *c) {
        if (!c)
                return;
        free(c->data_directory);
        free(c->state_directory);
        free(c->server);
        free(c->enroll_token);
        free(c->ca_file);
        free(c->listen_address);
        free(c->inference_token);
        free(c->inference_model);
        free(c->overrides_path);
        for (size_t i = 0; i < c->n_files; i++)
                free(c->files[i]);
        free(c->files);
        *c = (conf){};
}

/* ---- INI text ---- */

static char *strip(char *s) {
        return sysfs_strip(s);
}

int conf_ini_parse(const char *text, conf_ini *ret) {
        _cleanup_free_ char *copy = strdup(text);
        conf_ini ini = {};
        const char *section = NULL;
        size_t cap = 0;
        unsigned lineno = 0;

        if (!copy)
                return -ENOMEM;
        /* strsep keeps empty lines, so line numbers stay right. */
        for (char *next = copy, *raw; (raw = strsep(&next, "\n"));) {
                conf_line l = { .line = ++lineno };
                char *s = strip(raw), *eq;

                if (!*s || *s == '#' || *s == ';')
                        continue;
                if (*s == '[') {
                        size_t n = strlen(s);
                        char *name;

                        if (s[n - 1] != ']') {
                                l.kind = CONF_LINE_BAD;
                        } else {
                                s[n - 1] = 0;
                                name = strip(s + 1);
                                if (!*name || strpbrk(name, "[]"))
                                        l.kind = CONF_LINE_BAD;
                                else {
                                        l.kind = CONF_LINE_SECTION;
                                        l.section = strdup(name);
                                        if (!l.section)
                                                goto oom;
                                        section = l.section;
                                }
                        }
                } else if ((eq = strchr(s, '=')) && eq != s) {
                        *eq = 0;
                        l.kind = CONF_LINE_ASSIGN;
                        l.key = strdup(strip(s));
                        l.value = strdup(strip(eq + 1));
                        l.section = section ? strdup(section) : NULL;
                        if (!l.key || !l.value || (section && !l.section)) {
                                free(l.key);
                                free(l.value);
                                free(l.section);
                                goto oom;
                        }
                } else
                        l.kind = CONF_LINE_BAD;

                if (ini.n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        conf_line *nl = realloc(ini.lines, ncap * sizeof(*nl));
                        if (!nl) {
                                free(l.key);
                                free(l.value);
                                free(l.section);
                                goto oom;
                        }
                        ini.lines = nl;
                        cap = ncap;
                }
                ini.lines[ini.n++] = l;
        }
        *ret = ini;
        return 0;
oom:
        conf_ini_done(&ini);
        return -ENOMEM;
}

void conf_ini_done(conf_ini *ini) {
        for (size_t i = 0; i < ini->n; i++) {
                free(ini->lines[i].section);
                free(ini->lines[i].key);
                free(ini->lines[i].value);
        }
        free(ini->lines);
        *ini = (conf_ini){};
}

/* ---- loading ---- */

typedef struct {
        bool set;
        unsigned seq; /* order of application: the later of two wins and is blamed */
        conf_value v;
        conf_provenance prov;
} slot;

typedef struct {
        const char *path; /* owned by conf->files */
        knob_origin origin;
        conf_ini ini;
        bool present;
} layer;

typedef struct {
        conf *c;
        bool lenient, failed;
        unsigned seq;
        uint32_t locked;
        slot local[_CONF_KEY_MAX];
        slot fleet[_CONF_POLICY_KEY_MAX];
        layer *layers;
        size_t n_layers;
} loader;

static void slot_clear(slot *s) {
        free(s->v.s);
        *s = (slot){};
}

static const char *add_file(conf *c, const char *path) {
        char **nf = realloc(c->files, (c->n_files + 1) * sizeof(*nf));
        if (!nf)
                return NULL;
        c->files = nf;
        nf[c->n_files] = strdup(path);
        return nf[c->n_files] ? nf[c->n_files++] : NULL;
}

static int add_layer(loader *l, const char *path, knob_origin origin) {
        layer *nl = realloc(l->layers, (l->n_layers + 1) * sizeof(*nl));
        const char *p;

        if (!nl)
                return log_error_errno(ENOMEM, "Out of memory");
        l->layers = nl;
        p = add_file(l->c, path);
        if (!p)
                return log_error_errno(ENOMEM, "Out of memory");
        l->layers[l->n_layers++] = (layer){ .path = p, .origin = origin };
        return 0;
}

/* Reads and splits one layer's file; a missing file is an empty layer. */
static int read_layer(layer *ly) {
        _cleanup_free_ char *text = NULL;
        size_t size;
        int r;

        r = read_full_file(ly->path, CONF_FILE_MAX, (void **) &text, &size);
        if (r == -ENOENT || r == -ENOTDIR)
                return 0;
        if (r < 0)
                return log_error_errno(r, "%s: cannot read: %m", ly->path);
        if (memchr(text, 0, size))
                return log_error_errno(EBADMSG, "%s: contains a NUL byte, not a text file",
                                       ly->path);
        r = conf_ini_parse(text, &ly->ini);
        if (r < 0)
                return log_error_errno(r, "%s: %m", ly->path);
        ly->present = true;
        return 0;
}

static char *root_path(const char *root, const char *rel) {
        char *p;
        size_t n = root ? strlen(root) : 0;

        while (n > 0 && root[n - 1] == '/')
                n--;
        if (asprintf(&p, "%.*s%s", (int) n, n ? root : "", rel) < 0)
                return NULL;
        return p;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int add_dropins(loader *l, const char *dir) {
        DIR *d = opendir(dir);
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        int r = 0;

        if (!d) {
                if (errno == ENOENT || errno == ENOTDIR)
                        return 0;
                return log_error_errno(errno, "%s: cannot open directory: %m", dir);
        }
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                char **nn;

                if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
                        continue;
                nn = realloc(names, (n + 1) * sizeof(*nn));
                if (!nn || !(nn[n] = strdup(de->d_name))) {
                        names = nn ? nn : names;
                        r = log_error_errno(ENOMEM, "Out of memory");
                        break;
                }
                names = nn;
                n++;
        }
        closedir(d);
        /* strcmp, not strcoll: the order must not depend on the locale. */
        if (r == 0 && n > 0)
                qsort(names, n, sizeof(*names), cmp_str);
        for (size_t i = 0; i < n; i++) {
                if (r == 0) {
                        _cleanup_free_ char *p = NULL;
                        if (asprintf(&p, "%s/%s", dir, names[i]) < 0)
                                r = log_error_errno(ENOMEM, "Out of memory");
                        else
                                r = add_layer(l, p, KNOB_FILE);
                }
                free(names[i]);
        }
        free(names);
        return r;
}

/* A bad line or value: an error, or with Lenient=yes a warning and the line is skipped. */
static void diag(loader *l, const char *path, unsigned line, const char *msg) {
        if (l->lenient)
                log_warning("%s:%u: %s, ignored", path, line, msg);
        else {
                log_error("%s:%u: %s", path, line, msg);
                l->failed = true;
        }
}

static bool section_is(const conf_line *ln, const char *name) {
        return ln->section && strcmp(ln->section, name) == 0;
}

/* Lenient= and StateDirectory= are needed before the other lines are judged (Lenient) and
 * before overrides.conf can be found (StateDirectory): one pass for them first. */
static int prescan(loader *l, size_t from, const char **ret_state_dir) {
        for (size_t i = from; i < l->n_layers; i++)
                for (size_t j = 0; j < l->layers[i].ini.n; j++) {
                        const conf_line *ln = &l->layers[i].ini.lines[j];
                        bool b;

                        if (ln->kind != CONF_LINE_ASSIGN || !section_is(ln, "Daemon"))
                                continue;
                        if (strcmp(ln->key, "Lenient") == 0) {
                                if (conf_parse_bool(ln->value, &b) < 0) {
                                        log_error("%s:%u: Lenient: '%s' is not a boolean (yes/no, "
                                                  "true/false, 1/0, on/off)",
                                                  l->layers[i].path, ln->line, ln->value);
                                        return -EINVAL;
                                }
                                l->lenient = b;
                        } else if (ret_state_dir && strcmp(ln->key, "StateDirectory") == 0) {
                                char why[256];
                                if (conf_check_value(CONF_KEY_STATE_DIRECTORY, ln->value, why,
                                                     sizeof(why)) == 0)
                                        *ret_state_dir = ln->value;
                        }
                }
        return 0;
}

static int apply_locked(loader *l, const layer *ly, const conf_line *ln) {
        uint32_t mask = 0;
        char msg[512];

        for (const char *p = ln->value;;) {
                _cleanup_free_ char *name = NULL;
                size_t len;
                conf_key k;

                while (*p && is_sep(*p))
                        p++;
                if (!*p)
                        break;
                for (len = 0; p[len] && !is_sep(p[len]); len++)
                        ;
                name = strndup(p, len);
                if (!name)
                        return log_error_errno(ENOMEM, "Out of memory");
                k = conf_key_from_string(name);
                if (!conf_key_is_policy(k)) {
                        snprintf(msg, sizeof(msg), "Locked: '%s' is not a [Policy] knob", name);
                        diag(l, ly->path, ln->line, msg);
                        return 0;
                }
                mask |= 1u << k;
                p += len;
        }
        /* An empty Locked= resets the list, as systemd does for list settings. */
        l->locked = mask ? l->locked | mask : 0;
        return 0;
}

static int apply_line(loader *l, const layer *ly, const conf_line *ln) {
        char msg[512];
        conf_value v;
        conf_key k;
        int r;

        switch (ln->kind) {
        case CONF_LINE_BAD:
                diag(l, ly->path, ln->line, "expected 'Key=Value' or '[Section]'");
                return 0;
        case CONF_LINE_SECTION:
                if (!known_section(ln->section))
                        log_warning("%s:%u: unknown section '[%s]', ignored", ly->path, ln->line,
                                    ln->section);
                return 0;
        case CONF_LINE_ASSIGN:
                break;
        }
        if (!ln->section) {
                log_warning("%s:%u: key '%s' outside of any section, ignored", ly->path, ln->line,
                            ln->key);
                return 0;
        }
        if (!known_section(ln->section))
                return 0; /* warned about at the section header */
        if (section_is(ln, "Policy") && strcmp(ln->key, "Locked") == 0)
                return apply_locked(l, ly, ln);
        if (section_is(ln, "Daemon") && strcmp(ln->key, "Lenient") == 0)
                return 0; /* done in prescan() */

        k = conf_key_from_string(ln->key);
        if (k < 0 || !section_is(ln, conf_key_section(k))) {
                log_warning("%s:%u: unknown key '%s' in [%s], ignored", ly->path, ln->line, ln->key,
                            ln->section);
                return 0;
        }
        r = parse_value(k, ln->value, &v, msg, sizeof(msg));
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0) {
                diag(l, ly->path, ln->line, msg);
                return 0;
        }
        slot_clear(&l->local[k]);
        l->local[k] = (slot){
                .set = true,
                .seq = ++l->seq,
                .v = v,
                .prov = { .origin = ly->origin, .path = ly->path, .line = ln->line },
        };
        return 0;
}

static void apply_fleet(loader *l, const conf_pair *p) {
        char msg[512];
        conf_value v;
        conf_key k = conf_key_from_string(p->key);

        if (k < 0) {
                log_warning("fleet policy: unknown key '%s', refused", p->key);
                return;
        }
        if (!conf_key_is_policy(k)) {
                log_warning("fleet policy: %s: not a [Policy] knob, refused", p->key);
                l->c->fleet_refused |= 1u << k;
                return;
        }
        if (l->locked & (1u << k)) {
                log_warning("fleet policy: %s: locked by the local admin, refused", p->key);
                l->c->fleet_refused |= 1u << k;
                return;
        }
        if (parse_value(k, p->value, &v, msg, sizeof(msg)) < 0) {
                log_warning("fleet policy: %s, refused", msg);
                l->c->fleet_refused |= 1u << k;
                return;
        }
        slot_clear(&l->fleet[k]);
        l->fleet[k] =
                (slot){ .set = true, .seq = ++l->seq, .v = v, .prov = { .origin = KNOB_FLEET } };
}

/* Merges the slots into c: explicit values over the preset of the winning Profile=, except
 * that locked knobs follow the local profile, so a fleet Profile= cannot move them. */
static int resolve(loader *l, bool with_fleet) {
        conf *c = l->c;
        const slot *ps = with_fleet && l->fleet[CONF_KEY_PROFILE].set ? &l->fleet[CONF_KEY_PROFILE]
                                                                      : &l->local[CONF_KEY_PROFILE];
        policy_profile local_p = l->local[CONF_KEY_PROFILE].set
                                         ? (policy_profile) l->local[CONF_KEY_PROFILE].v.i
                                         : PROFILE_BALANCED;
        policy_profile final_p = ps->set ? (policy_profile) ps->v.i : PROFILE_BALANCED;
        policy_knobs local_preset;

        conf_profile_preset(final_p, &c->knobs);
        conf_profile_preset(local_p, &local_preset);
        for (int k = 0; k < _CONF_KEY_MAX; k++) {
                const slot *s = with_fleet && k < _CONF_POLICY_KEY_MAX && l->fleet[k].set
                                        ? &l->fleet[k]
                                : l->local[k].set ? &l->local[k]
                                                  : NULL;
                bool locked = l->locked & (1u << k);

                if (k < _CONF_POLICY_KEY_MAX && locked)
                        copy_knob(&c->knobs, &local_preset, (conf_key) k);
                if (k < _CONF_POLICY_KEY_MAX)
                        c->prov[k] = (conf_provenance){
                                .origin = (locked ? l->local[CONF_KEY_PROFILE].set : ps->set)
                                                  ? KNOB_PROFILE
                                                  : KNOB_BUILTIN,
                        };
                else
                        c->prov[k] = (conf_provenance){ .origin = KNOB_BUILTIN };
                if (!s)
                        continue;
                c->prov[k] = s->prov;
                switch (k) {
                case CONF_KEY_DATA_DIRECTORY:
                case CONF_KEY_STATE_DIRECTORY: {
                        char **dst = k == CONF_KEY_DATA_DIRECTORY ? &c->data_directory
                                                                  : &c->state_directory;
                        char *n = strdup(s->v.s);
                        if (!n)
                                return log_error_errno(ENOMEM, "Out of memory");
                        free(*dst);
                        *dst = n;
                        break;
                }
                case CONF_KEY_CHECKPOINT_INTERVAL_SEC:
                        c->checkpoint_interval_sec = (int) s->v.i;
                        break;
                case CONF_KEY_MODEL:
                        c->model = (conf_model) s->v.i;
                        break;
                case CONF_KEY_SERVE:
                        c->serve = s->v.i != 0;
                        break;
                case CONF_KEY_SESSION_IDLE_SEC:
                        c->session_idle_sec = (int) s->v.i;
                        break;
                case CONF_KEY_INFERENCE_MEMORY_MIB:
                        c->inference_memory_mib = (int) s->v.i;
                        break;
                case CONF_KEY_INFERENCE_LAYERS:
                        c->layers_first = s->v.i < 0 ? -1 : (int) (s->v.i / 64);
                        c->layers_last = s->v.i < 0 ? -1 : (int) (s->v.i % 64);
                        break;
                case CONF_KEY_SERVER:
                case CONF_KEY_ENROLL_TOKEN:
                case CONF_KEY_CA_FILE:
                case CONF_KEY_LISTEN_ADDRESS:
                case CONF_KEY_INFERENCE_TOKEN:
                case CONF_KEY_INFERENCE_MODEL_FILE: {
                        char **dst = k == CONF_KEY_SERVER                  ? &c->server
                                     : k == CONF_KEY_ENROLL_TOKEN          ? &c->enroll_token
                                     : k == CONF_KEY_CA_FILE               ? &c->ca_file
                                     : k == CONF_KEY_LISTEN_ADDRESS        ? &c->listen_address
                                     : k == CONF_KEY_INFERENCE_TOKEN       ? &c->inference_token
                                                                           : &c->inference_model;
                        char *n = *s->v.s ? strdup(s->v.s) : NULL;
                        if (*s->v.s && !n)
                                return log_error_errno(ENOMEM, "Out of memory");
                        free(*dst);
                        *dst = n;
                        break;
                }
                default:
                        set_knob(&c->knobs, (conf_key) k, &s->v);
                }
        }
        return 0;
}

static void where(const conf *c, conf_key k, char *buf, size_t size) {
        const conf_provenance *p = &c->prov[k];

        if (p->path)
                snprintf(buf, size, "%s:%u", p->path, p->line);
        else if (p->origin == KNOB_FLEET)
                snprintf(buf, size, "fleet policy");
        else if (p->origin == KNOB_PROFILE)
                snprintf(buf, size, "profile %s", profile_names[c->knobs.profile]);
        else
                snprintf(buf, size, "built-in");
}

/* The knobs that constrain each other. Returns the later-set offender, or -1 if all is well. */
static int cross_check(loader *l, slot *slots, char *msg, size_t size) {
        const policy_knobs *kn = &l->c->knobs;
        conf_key a = CONF_KEY_RESUME_TEMPERATURE_C, b = CONF_KEY_MAX_TEMPERATURE_C;

        if (kn->resume_temperature_c < kn->max_temperature_c)
                return -1;
        snprintf(msg, size, "ResumeTemperatureC: %d is not below MaxTemperatureC (%d)",
                 kn->resume_temperature_c, kn->max_temperature_c);
        if (!slots[a].set)
                return b;
        if (!slots[b].set)
                return a;
        return slots[a].seq > slots[b].seq ? a : b;
}

static int check_local(loader *l) {
        char msg[256], at[512];
        int r;

        for (;;) {
                int k;

                r = resolve(l, false);
                if (r < 0)
                        return r;
                k = cross_check(l, l->local, msg, sizeof(msg));
                if (k < 0)
                        return 0;
                where(l->c, (conf_key) k, at, sizeof(at));
                if (!l->lenient) {
                        log_error("%s: %s", at, msg);
                        return -EINVAL;
                }
                log_warning("%s: %s, ignored", at, msg);
                if (!l->local[k].set)
                        return -EINVAL; /* presets are consistent; cannot happen */
                slot_clear(&l->local[k]);
        }
}

static int check_fleet(loader *l) {
        char msg[256];
        int r;

        r = resolve(l, true);
        if (r < 0)
                return r;
        if (cross_check(l, l->fleet, msg, sizeof(msg)) < 0)
                return 0;
        /* Fleet values that break a local invariant are refused, never fatal: first the
         * temperatures, then Profile= (its preset can clash with a locked knob). */
        log_warning("fleet policy: %s, refused", msg);
        for (conf_key k = CONF_KEY_MAX_TEMPERATURE_C; k <= CONF_KEY_RESUME_TEMPERATURE_C; k++)
                if (l->fleet[k].set) {
                        slot_clear(&l->fleet[k]);
                        l->c->fleet_refused |= 1u << k;
                }
        r = resolve(l, true);
        if (r < 0 || cross_check(l, l->fleet, msg, sizeof(msg)) < 0)
                return r;
        slot_clear(&l->fleet[CONF_KEY_PROFILE]);
        l->c->fleet_refused |= 1u << CONF_KEY_PROFILE;
        return resolve(l, true);
}

static void loader_done(loader *l) {
        for (size_t i = 0; i < l->n_layers; i++)
                conf_ini_done(&l->layers[i].ini);
        free(l->layers);
        for (int k = 0; k < _CONF_KEY_MAX; k++)
                slot_clear(&l->local[k]);
        for (int k = 0; k < _CONF_POLICY_KEY_MAX; k++)
                slot_clear(&l->fleet[k]);
}

static int load(loader *l, const conf_load_options *opts) {
        const char *root = opts->root;
        _cleanup_free_ char *usr = root_path(root, "/usr/lib/edged/edged.conf");
        _cleanup_free_ char *etc = root_path(root, "/etc/edged/edged.conf");
        _cleanup_free_ char *dropins = root_path(root, "/etc/edged/edged.conf.d");
        _cleanup_free_ char *ovr = NULL;
        const char *state_dir = CONF_DEFAULT_STATE_DIRECTORY;
        size_t n_files;
        int r;

        if (!usr || !etc || !dropins)
                return log_error_errno(ENOMEM, "Out of memory");
        r = add_layer(l, usr, KNOB_FILE);
        if (r < 0)
                return r;
        r = add_layer(l, opts->config_file ? opts->config_file : etc, KNOB_FILE);
        if (r < 0)
                return r;
        r = add_dropins(l, dropins);
        if (r < 0)
                return r;
        for (size_t i = 0; i < l->n_layers; i++) {
                r = read_layer(&l->layers[i]);
                if (r < 0)
                        return r;
        }
        n_files = l->n_layers;
        r = prescan(l, 0, &state_dir);
        if (r < 0)
                return r;

        if (opts->state_dir) {
                if (asprintf(&ovr, "%s/overrides.conf", opts->state_dir) < 0)
                        ovr = NULL;
        } else {
                _cleanup_free_ char *sd = root_path(root, state_dir);
                if (sd && asprintf(&ovr, "%s/overrides.conf", sd) < 0)
                        ovr = NULL;
        }
        if (!ovr)
                return log_error_errno(ENOMEM, "Out of memory");
        l->c->overrides_path = strdup(ovr);
        if (!l->c->overrides_path)
                return log_error_errno(ENOMEM, "Out of memory");
        r = add_layer(l, ovr, KNOB_RUNTIME);
        if (r < 0)
                return r;
        r = read_layer(&l->layers[n_files]);
        if (r < 0)
                return r;
        r = prescan(l, n_files, NULL);
        if (r < 0)
                return r;
        l->c->lenient = l->lenient;

        for (size_t i = 0; i < l->n_layers; i++)
                for (size_t j = 0; j < l->layers[i].ini.n; j++) {
                        r = apply_line(l, &l->layers[i], &l->layers[i].ini.lines[j]);
                        if (r < 0)
                                return r;
                }
        r = check_local(l);
        if (r < 0)
                return r;
        if (l->failed)
                return -EINVAL;
        l->c->locked = l->locked;

        for (size_t i = 0; i < opts->n_fleet; i++)
                apply_fleet(l, &opts->fleet[i]);
        return check_fleet(l);
}

int conf_load(const conf_load_options *opts, conf *ret) {
        static const conf_load_options none = {};
        loader l = { .c = ret };
        int r;

        r = conf_init_builtin(ret);
        if (r < 0)
                return log_error_errno(r, "Out of memory");
        r = load(&l, opts ? opts : &none);
        loader_done(&l);
        return r;
}

/* ---- show ---- */

static void format_value(const conf *c, conf_key k, char *buf, size_t size) {
        const policy_knobs *kn = &c->knobs;

        switch (k) {
        case CONF_KEY_PROFILE:
                snprintf(buf, size, "%s", profile_names[kn->profile]);
                break;
        case CONF_KEY_MIN_IDLE_PERCENT:
                snprintf(buf, size, "%d", kn->min_idle_percent);
                break;
        case CONF_KEY_IDLE_WINDOW_SEC:
                snprintf(buf, size, "%d", kn->idle_window_sec);
                break;
        case CONF_KEY_MAX_CORES:
                snprintf(buf, size, "%d", kn->max_cores);
                break;
        case CONF_KEY_MAX_TEMPERATURE_C:
                snprintf(buf, size, "%d", kn->max_temperature_c);
                break;
        case CONF_KEY_RESUME_TEMPERATURE_C:
                snprintf(buf, size, "%d", kn->resume_temperature_c);
                break;
        case CONF_KEY_REQUIRE_AC_POWER:
                snprintf(buf, size, "%s", kn->require_ac_power ? "yes" : "no");
                break;
        case CONF_KEY_MIN_BATTERY_PERCENT:
                snprintf(buf, size, "%d", kn->min_battery_percent);
                break;
        case CONF_KEY_MAX_FOREGROUND_DELAY_MS:
                snprintf(buf, size, "%d", kn->max_foreground_delay_ms);
                break;
        case CONF_KEY_MAX_MEMORY_MIB:
                snprintf(buf, size, "%d", kn->max_memory_mib);
                break;
        case CONF_KEY_ACTIVE_HOURS:
                if (conf_format_active_hours(kn->active, kn->n_active_windows, buf, size) < 0)
                        snprintf(buf, size, "(too long)");
                break;
        case CONF_KEY_PAUSE_ON_USER_ACTIVE:
                snprintf(buf, size, "%s", kn->pause_on_user_active ? "yes" : "no");
                break;
        case CONF_KEY_DATA_DIRECTORY:
                snprintf(buf, size, "%s", c->data_directory);
                break;
        case CONF_KEY_STATE_DIRECTORY:
                snprintf(buf, size, "%s", c->state_directory);
                break;
        case CONF_KEY_CHECKPOINT_INTERVAL_SEC:
                snprintf(buf, size, "%d", c->checkpoint_interval_sec);
                break;
        case CONF_KEY_MODEL:
                snprintf(buf, size, "%s", model_names[c->model]);
                break;
        case CONF_KEY_SERVER:
                snprintf(buf, size, "%s", c->server ? c->server : "(none: standalone)");
                break;
        case CONF_KEY_ENROLL_TOKEN:
                snprintf(buf, size, "%s", c->enroll_token ? "(set)" : "(none)");
                break;
        case CONF_KEY_CA_FILE:
                snprintf(buf, size, "%s", c->ca_file ? c->ca_file : "(system)");
                break;
        case CONF_KEY_SERVE:
                snprintf(buf, size, "%s", c->serve ? "yes" : "no");
                break;
        case CONF_KEY_LISTEN_ADDRESS:
                snprintf(buf, size, "%s", c->listen_address ? c->listen_address : "(none)");
                break;
        case CONF_KEY_INFERENCE_TOKEN:
                snprintf(buf, size, "%s", c->inference_token ? "(set)" : "(device secret)");
                break;
        case CONF_KEY_INFERENCE_MODEL_FILE:
                snprintf(buf, size, "%s", c->inference_model ? c->inference_model : "(task or checkpoint)");
                break;
        case CONF_KEY_SESSION_IDLE_SEC:
                snprintf(buf, size, "%d", c->session_idle_sec);
                break;
        case CONF_KEY_INFERENCE_MEMORY_MIB:
                snprintf(buf, size, "%d", c->inference_memory_mib);
                break;
        case CONF_KEY_INFERENCE_LAYERS:
                if (c->layers_first < 0)
                        snprintf(buf, size, "all");
                else
                        snprintf(buf, size, "%d-%d", c->layers_first, c->layers_last);
                break;
        default:
                snprintf(buf, size, "?");
                break;
        }
}

void conf_format_value(const conf *c, conf_key k, char *buf, size_t size) {
        format_value(c, k, buf, size);
}

int conf_format_show(const conf *c, char **ret) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return -errno;
        for (int k = 0; k < _CONF_KEY_MAX; k++) {
                const conf_provenance *p = &c->prov[k];
                char val[1024], at[1200];

                format_value(c, (conf_key) k, val, sizeof(val));
                if (p->origin == KNOB_RUNTIME && p->path)
                        snprintf(at, sizeof(at), "runtime override %s:%u", p->path, p->line);
                else
                        where(c, (conf_key) k, at, sizeof(at));
                fprintf(f, "%s = %s (%s)%s\n", key_table[k].name, val, at,
                        c->locked & (1u << k) ? " [locked]" : "");
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}

/* ---- runtime overrides ---- */

static int err_msg(char *err, size_t size, int r, const char *fmt, ...) _printf_(4, 5);
static int err_msg(char *err, size_t size, int r, const char *fmt, ...) {
        va_list ap;

        if (err && size > 0) {
                va_start(ap, fmt);
                vsnprintf(err, size, fmt, ap);
                va_end(ap);
        }
        return r;
}

/* mkdir -p: the state directory may not exist before the first override. */
static int mkdir_parents_and_self(const char *dir) {
        _cleanup_free_ char *p = strdup(dir);

        if (!p)
                return -ENOMEM;
        for (char *s = strchr(p + 1, '/');; s = strchr(s + 1, '/')) {
                if (s)
                        *s = 0;
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return -errno;
                if (!s)
                        return 0;
                *s = '/';
        }
}

/* Rewrites overrides.conf with values[k] for each policy knob that has one. */
static int write_overrides(const char *state_dir, const char *path, const char *const *values,
                           char *err, size_t err_size) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        r = mkdir_parents_and_self(state_dir);
        if (r < 0)
                return err_msg(err, err_size, r, "%s: cannot create directory: %s", state_dir,
                               strerror(-r));
        f = open_memstream(&buf, &size);
        if (!f)
                return err_msg(err, err_size, -ENOMEM, "Out of memory");
        fputs("# Runtime overrides (edgectl policy set/reset). Rewritten by edged; edits may be "
              "lost.\n"
              "[Policy]\n",
              f);
        for (int k = 0; k < _CONF_POLICY_KEY_MAX; k++)
                if (values[k])
                        fprintf(f, "%s=%s\n", key_table[k].name, values[k]);
        if (fclose(f) != 0) {
                free(buf);
                return err_msg(err, err_size, -ENOMEM, "Out of memory");
        }
        r = write_file_atomic(path, 0644, buf, size);
        free(buf);
        if (r < 0)
                return err_msg(err, err_size, r, "%s: cannot write: %s", path, strerror(-r));
        return 0;
}

/* Reads overrides.conf into values[] (pointers into ini); a missing file is empty. */
static int read_overrides(const char *path, conf_ini *ini, const char **values, char *err,
                          size_t err_size) {
        _cleanup_free_ char *text = NULL;
        size_t size;
        int r;

        r = read_full_file(path, CONF_FILE_MAX, (void **) &text, &size);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return err_msg(err, err_size, r, "%s: cannot read: %s", path, strerror(-r));
        r = conf_ini_parse(text, ini);
        if (r < 0)
                return err_msg(err, err_size, r, "Out of memory");
        for (size_t i = 0; i < ini->n; i++) {
                const conf_line *ln = &ini->lines[i];
                conf_key k;

                if (ln->kind != CONF_LINE_ASSIGN || !section_is(ln, "Policy"))
                        continue;
                k = conf_key_from_string(ln->key);
                if (conf_key_is_policy(k))
                        values[k] = ln->value;
        }
        return 0;
}

static int policy_key(const char *key, conf_key *ret, char *err, size_t err_size) {
        conf_key k = conf_key_from_string(key);

        if (k < 0)
                return err_msg(err, err_size, -EINVAL, "unknown key '%s'", key);
        if (!conf_key_is_policy(k))
                return err_msg(err, err_size, -EINVAL, "%s: not a [Policy] knob", key);
        *ret = k;
        return 0;
}

int conf_set_override(const char *state_dir, const char *key, const char *value, char *err,
                      size_t err_size) {
        _cleanup_free_ char *path = NULL, *v = NULL;
        const char *values[_CONF_POLICY_KEY_MAX] = {};
        char reason[512];
        conf_ini ini = {};
        conf_key k = 0; /* set by policy_key() before any use */
        int r;

        r = policy_key(key, &k, err, err_size);
        if (r < 0)
                return r;
        /* The file is line-based: a newline in a value would forge another line. */
        if (strpbrk(value, "\n\r"))
                return err_msg(err, err_size, -EINVAL, "%s: value contains a line break", key);
        v = strdup(value);
        if (!v || asprintf(&path, "%s/overrides.conf", state_dir) < 0) {
                path = NULL;
                return err_msg(err, err_size, -ENOMEM, "Out of memory");
        }
        if (conf_check_value(k, strip(v), reason, sizeof(reason)) < 0)
                return err_msg(err, err_size, -EINVAL, "%s", reason);
        r = read_overrides(path, &ini, values, err, err_size);
        if (r >= 0) {
                values[k] = strip(v);
                r = write_overrides(state_dir, path, values, err, err_size);
        }
        conf_ini_done(&ini);
        return r;
}

int conf_reset_override(const char *state_dir, const char *key, char *err, size_t err_size) {
        _cleanup_free_ char *path = NULL;
        const char *values[_CONF_POLICY_KEY_MAX] = {};
        conf_ini ini = {};
        conf_key k = 0; /* set by policy_key() before any use */
        int r;

        if (key) {
                r = policy_key(key, &k, err, err_size);
                if (r < 0)
                        return r;
        }
        if (asprintf(&path, "%s/overrides.conf", state_dir) < 0) {
                path = NULL;
                return err_msg(err, err_size, -ENOMEM, "Out of memory");
        }
        if (!key) {
                if (unlink(path) < 0 && errno != ENOENT)
                        return err_msg(err, err_size, -errno, "%s: cannot remove: %s", path,
                                       strerror(errno));
                return 0;
        }
        r = read_overrides(path, &ini, values, err, err_size);
        if (r >= 0 && ini.n > 0 && values[k]) {
                values[k] = NULL;
                r = write_overrides(state_dir, path, values, err, err_size);
        }
        conf_ini_done(&ini);
        return r;
}
