/* SPDX-License-Identifier: MIT */
#include "format.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DURATION_S (10ULL * 366 * 86400)

#define ANSI_GREEN "\033[32m"
#define ANSI_YELLOW "\033[33m"
#define ANSI_RED "\033[31m"
#define ANSI_RESET "\033[0m"

int ctl_parse_duration(const char *s, uint64_t *ret_seconds) {
        static const struct {
                char unit;
                uint64_t seconds;
        } units[] = { { 'd', 86400 }, { 'h', 3600 }, { 'm', 60 }, { 's', 1 } };
        uint64_t total = 0;
        size_t next_unit = 0;

        if (!s || !*s)
                return -EINVAL;
        while (*s) {
                uint64_t v = 0;
                size_t u;

                if (!isdigit((unsigned char) *s))
                        return -EINVAL;
                for (; isdigit((unsigned char) *s); s++) {
                        v = v * 10 + (uint64_t) (*s - '0');
                        if (v > MAX_DURATION_S)
                                return -ERANGE;
                }
                if (!*s) {
                        /* bare digits: seconds, and only as the whole string or the last part
                         * after a larger unit ("1m30") would be ambiguous, so whole only */
                        if (next_unit > 0)
                                return -EINVAL;
                        total = v;
                        break;
                }
                for (u = next_unit; u < ARRAY_SIZE(units) && units[u].unit != *s; u++)
                        ;
                if (u == ARRAY_SIZE(units))
                        return -EINVAL; /* unknown unit, or out of order / repeated */
                total += v * units[u].seconds;
                if (total > MAX_DURATION_S)
                        return -ERANGE;
                next_unit = u + 1;
                s++;
        }
        *ret_seconds = total;
        return 0;
}

char *ctl_format_duration(uint64_t seconds, char *buf, size_t size) {
        uint64_t d = seconds / 86400, h = seconds % 86400 / 3600, m = seconds % 3600 / 60,
                 s = seconds % 60;

        if (d > 0)
                snprintf(buf, size, h ? "%llud %lluh" : "%llud", (unsigned long long) d,
                         (unsigned long long) h);
        else if (h > 0)
                snprintf(buf, size, m ? "%lluh %llum" : "%lluh", (unsigned long long) h,
                         (unsigned long long) m);
        else if (m > 0)
                snprintf(buf, size, s ? "%llum %llus" : "%llum", (unsigned long long) m,
                         (unsigned long long) s);
        else
                snprintf(buf, size, "%llus", (unsigned long long) s);
        return buf;
}

int ctl_parse_since(const char *s, time_t now, time_t *ret) {
        uint64_t d;
        bool digits = s && *s;

        if (!s || !*s)
                return -EINVAL;
        if (strcmp(s, "today") == 0) {
                struct tm tm;
                if (!localtime_r(&now, &tm))
                        return -EINVAL;
                tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
                tm.tm_isdst = -1;
                time_t t = mktime(&tm);
                if (t == (time_t) -1)
                        return -EINVAL;
                *ret = t;
                return 0;
        }
        for (const char *p = s; *p; p++)
                digits = digits && isdigit((unsigned char) *p);
        if (digits) {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(s, &end, 10);
                if (errno || *end || v > (unsigned long long) INT64_MAX)
                        return -EINVAL;
                *ret = (time_t) v;
                return 0;
        }
        if (*s == '-')
                s++;
        /* relative times need a unit: "-90" is neither a Unix time nor clearly seconds */
        if (!*s || isdigit((unsigned char) s[strlen(s) - 1]) || ctl_parse_duration(s, &d) < 0)
                return -EINVAL;
        *ret = now - (time_t) d;
        return 0;
}

char *ctl_format_core_hours(double core_seconds, char *buf, size_t size) {
        double h = core_seconds / 3600.0;

        if (!isfinite(h) || h < 0)
                snprintf(buf, size, "-");
        else
                snprintf(buf, size,
                         h < 100    ? "%.2f core-h"
                         : h < 1000 ? "%.1f core-h"
                                    : "%.0f core-h",
                         h);
        return buf;
}

char *ctl_format_count(double n, char *buf, size_t size) {
        static const char suffix[] = "kMGTP";
        int i = -1;

        if (!isfinite(n)) {
                snprintf(buf, size, "-");
                return buf;
        }
        if (fabs(n) < 1000) {
                snprintf(buf, size, "%.0f", n);
                return buf;
        }
        while (fabs(n) >= 999.5 && i < (int) sizeof(suffix) - 2) {
                n /= 1000;
                i++;
        }
        i = MAX(i, 0); /* n >= 999.5 here, so the loop ran */
        snprintf(buf, size,
                 fabs(n) < 9.995   ? "%.2f%c"
                 : fabs(n) < 99.95 ? "%.1f%c"
                                   : "%.0f%c",
                 n, suffix[i]);
        return buf;
}

char *ctl_format_bytes(double n, char *buf, size_t size) {
        static const char *const units[] = { "KiB", "MiB", "GiB", "TiB" };
        int i = -1;

        if (!isfinite(n) || n < 0) {
                snprintf(buf, size, "-");
                return buf;
        }
        if (n < 1024) {
                snprintf(buf, size, "%.0f B", n);
                return buf;
        }
        while (n >= 1024 && i < (int) ARRAY_SIZE(units) - 1) {
                n /= 1024;
                i++;
        }
        snprintf(buf, size, "%.1f %s", n, units[MAX(i, 0)]); /* n >= 1024: the loop ran */
        return buf;
}

char *ctl_sparkline(const double *v, size_t n, bool utf8, char *buf, size_t size) {
        static const char *const blocks[8] = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };
        static const char ascii[8] = { '_', '.', ',', '-', '=', '+', '*', '#' };
        double lo = INFINITY, hi = -INFINITY;
        size_t len = 0;

        if (size == 0)
                return buf;
        buf[0] = 0;
        for (size_t i = 0; i < n; i++)
                if (!isnan(v[i])) {
                        lo = fmin(lo, v[i]);
                        hi = fmax(hi, v[i]);
                }
        for (size_t i = 0; i < n; i++) {
                const char *c;
                char one[2] = { ' ', 0 };
                int level = 0;

                if (!isnan(v[i]) && hi > lo)
                        level = (int) lround((v[i] - lo) / (hi - lo) * 7.0);
                level = MAX(0, MIN(7, level));
                if (!isnan(v[i]))
                        one[0] = ascii[level];
                c = utf8 && !isnan(v[i]) ? blocks[level] : one;
                if (len + strlen(c) + 1 > size)
                        break;
                memcpy(buf + len, c, strlen(c) + 1);
                len += strlen(c);
        }
        return buf;
}

/* ---- table ---- */

int ctl_table_add(ctl_table *t, const char *key, const char *fmt, ...) {
        char *k, *v;
        va_list ap;
        int r;

        if (t->n == t->allocated) {
                size_t na = t->allocated ? t->allocated * 2 : 16;
                char **nk = realloc(t->keys, na * sizeof(char *));
                if (!nk)
                        return -ENOMEM;
                t->keys = nk;
                char **nv = realloc(t->values, na * sizeof(char *));
                if (!nv)
                        return -ENOMEM;
                t->values = nv;
                t->allocated = na;
        }
        va_start(ap, fmt);
        r = vasprintf(&v, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        k = strdup(key);
        if (!k) {
                free(v);
                return -ENOMEM;
        }
        t->keys[t->n] = k;
        t->values[t->n] = v;
        t->n++;
        return 0;
}

int ctl_table_format(const ctl_table *t, char **ret) {
        char *buf = NULL;
        size_t size = 0, w = 0;
        FILE *f;

        for (size_t i = 0; i < t->n; i++)
                w = MAX(w, strlen(t->keys[i]) + 1);
        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < t->n; i++)
                fprintf(f, "%s:%*s %s\n", t->keys[i], (int) (w - strlen(t->keys[i]) - 1), "",
                        t->values[i]);
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}

void ctl_table_done(ctl_table *t) {
        for (size_t i = 0; i < t->n; i++) {
                free(t->keys[i]);
                free(t->values[i]);
        }
        free(t->keys);
        free(t->values);
        *t = (ctl_table){};
}

static inline void ctl_table_donep(ctl_table *t) {
        ctl_table_done(t);
}

/* ---- replies ---- */

static bool get_num(json_t *o, const char *key, double *ret) {
        json_t *v = json_object_get(o, key);
        if (!json_is_number(v))
                return false;
        *ret = json_number_value(v);
        return true;
}

static const char *get_str(json_t *o, const char *key) {
        const char *s = json_string_value(json_object_get(o, key));
        return s && *s ? s : NULL;
}

/* "%.*f" of a number field, or "-". */
static char *num_or_dash(json_t *o, const char *key, int decimals, char *buf, size_t size) {
        double v;
        if (get_num(o, key, &v))
                snprintf(buf, size, "%.*f", decimals, v);
        else
                snprintf(buf, size, "-");
        return buf;
}

static char *format_clock(time_t t, time_t now, char *buf, size_t size) {
        struct tm tm, tm_now;
        localtime_r(&t, &tm);
        localtime_r(&now, &tm_now);
        /* the date only when it is not today */
        if (tm.tm_year == tm_now.tm_year && tm.tm_yday == tm_now.tm_yday)
                strftime(buf, size, "%H:%M", &tm);
        else
                strftime(buf, size, "%Y-%m-%d %H:%M", &tm);
        return buf;
}

static int add_state(ctl_table *t, json_t *s, const ctl_style *style) {
        const char *state = get_str(s, "state"), *reason = get_str(s, "reason");
        const char *color = "";
        char extra[128] = "", reason_buf[64] = "";
        double until;

        if (!state)
                return ctl_table_add(t, "State", "-");
        if (style->color)
                color = strcmp(state, "running") == 0  ? ANSI_GREEN
                        : strcmp(state, "paused") == 0 ? ANSI_YELLOW
                                                       : ANSI_RED;
        if (reason && strcmp(reason, "none") != 0)
                snprintf(reason_buf, sizeof(reason_buf), " (%s)", reason);
        if (strcmp(state, "paused") == 0 && get_num(s, "paused_until", &until) && until > 0) {
                char clock[32], left[32];
                time_t u = (time_t) until;
                ctl_format_duration(u > style->now ? (uint64_t) (u - style->now) : 0, left,
                                    sizeof(left));
                snprintf(extra, sizeof(extra), " until %s (in %s)",
                         format_clock(u, style->now, clock, sizeof(clock)), left);
        }
        return ctl_table_add(t, "State", "%s%s%s%s%s", color, state, *color ? ANSI_RESET : "",
                             reason_buf, extra);
}

static int add_power(ctl_table *t, json_t *s) {
        json_t *ac = json_object_get(s, "on_ac");
        double bat;
        bool have_bat = get_num(s, "battery_pct", &bat);

        if (json_is_boolean(ac) && have_bat)
                return ctl_table_add(t, "Power",
                                     json_is_true(ac) ? "AC, battery %.0f%%" : "on battery, %.0f%%",
                                     bat);
        if (json_is_boolean(ac))
                return ctl_table_add(t, "Power", "%s", json_is_true(ac) ? "AC" : "no AC");
        if (have_bat)
                return ctl_table_add(t, "Power", "battery %.0f%%", bat);
        return ctl_table_add(t, "Power", "-");
}

static int add_aggregator(ctl_table *t, json_t *s) {
        json_t *a = json_object_get(s, "aggregator");
        const char *state = get_str(a, "state"), *url = get_str(a, "url");
        double pending, lr, steps;
        char p[64] = "", l[64] = "";

        if (!state)
                return ctl_table_add(t, "Aggregator", "-");
        if (get_num(a, "pending_updates", &pending))
                snprintf(p, sizeof(p), ", %.0f update%s pending", pending, pending == 1 ? "" : "s");
        /* the fleet's learning rate and step budget the device trains its round with */
        if (get_num(a, "lr", &lr) && get_num(a, "local_steps", &steps))
                snprintf(l, sizeof(l), ", lr %.3g, %.0f steps a round", lr, steps);
        else if (get_num(a, "lr", &lr))
                snprintf(l, sizeof(l), ", lr %.3g", lr);
        return ctl_table_add(t, "Aggregator", "%s%s%s%s%s", state, url ? " " : "", url ? url : "",
                             p, l);
}

static int add_data(ctl_table *t, json_t *s) {
        json_t *d = json_object_get(s, "data");
        double files, bytes, skipped, wait;
        char b[32], extra[96] = "";
        size_t n = 0;

        if (!get_num(d, "files", &files) || !get_num(d, "bytes", &bytes))
                return ctl_table_add(t, "Data", "-");
        if (get_num(d, "skipped", &skipped) && skipped > 0)
                n += (size_t) snprintf(extra + n, sizeof(extra) - n, ", %.0f skipped", skipped);
        if (get_num(d, "wait_pct", &wait) && n < sizeof(extra))
                snprintf(extra + n, sizeof(extra) - n, ", waiting %.0f%%", wait);
        return ctl_table_add(t, "Data", "%.0f file%s, %s%s", files, files == 1 ? "" : "s",
                             ctl_format_bytes(bytes, b, sizeof(b)), extra);
}

static int add_model(ctl_table *t, json_t *s) {
        const char *model = get_str(s, "model");
        json_t *version = json_object_get(s, "model_version");
        char step[32], ver[64];

        if (!model && !json_is_number(json_object_get(s, "step")) && !json_is_integer(version))
                return ctl_table_add(t, "Model", "-");
        if (!json_is_integer(version))
                snprintf(ver, sizeof(ver), "version -");
        else if (json_integer_value(version) == 0)
                snprintf(ver, sizeof(ver), "version 0 (local only)");
        else
                snprintf(ver, sizeof(ver), "version %lld", (long long) json_integer_value(version));
        return ctl_table_add(t, "Model", "%s, step %s, %s", model ?: "-",
                             num_or_dash(s, "step", 0, step, sizeof(step)), ver);
}

int ctl_format_status(json_t *s, const ctl_style *style, char **ret) {
        _cleanup_(ctl_table_donep) ctl_table t = {};
        char a[64], b[64];
        const char *str, *why;
        double v, w;
        bool have_v, have_w;
        int r;

        r = add_state(&t, s, style);
        if (r >= 0)
                r = ctl_table_add(&t, "Cores", "%s", num_or_dash(s, "cores", 0, a, sizeof(a)));
        if (r >= 0)
                r = get_num(s, "tokens_per_s", &v)
                            ? ctl_table_add(&t, "Throughput", "%.0f tokens/s", v)
                            : ctl_table_add(&t, "Throughput", "-");
        if (r >= 0) {
                have_v = get_num(s, "loss", &v);
                have_w = get_num(s, "val_loss", &w);
                r = have_v || have_w ? ctl_table_add(&t, "Loss", "%s, validation %s",
                                                     num_or_dash(s, "loss", 3, a, sizeof(a)),
                                                     num_or_dash(s, "val_loss", 3, b, sizeof(b)))
                                     : ctl_table_add(&t, "Loss", "-");
        }
        if (r >= 0)
                r = add_model(&t, s);
        if (r >= 0)
                r = ctl_table_add(&t, "Profile", "%s", get_str(s, "profile") ?: "-");
        if (r >= 0) {
                have_v = get_num(s, "core_seconds_today", &v);
                have_w = get_num(s, "core_seconds_total", &w);
                r = have_v || have_w
                            ? ctl_table_add(&t, "Harvested", "%s today, %s total",
                                            have_v ? ctl_format_core_hours(v, a, sizeof(a)) : "-",
                                            have_w ? ctl_format_core_hours(w, b, sizeof(b)) : "-")
                            : ctl_table_add(&t, "Harvested", "-");
        }
        if (r >= 0)
                r = get_num(s, "max_temp_c", &v) ? ctl_table_add(&t, "Temperature", "%.0f %sC", v,
                                                                 style->utf8 ? "°" : "")
                                                 : ctl_table_add(&t, "Temperature", "-");
        if (r >= 0)
                r = add_power(&t, s);
        if (r >= 0) {
                str = get_str(s, "cpu_source");
                why = get_str(s, "cpu_source_why");
                r = ctl_table_add(&t, "CPU source", "%s%s%s%s", str ?: "-", why ? " (" : "",
                                  why ?: "", why ? ")" : "");
        }
        if (r >= 0)
                r = get_num(s, "idle_pct", &v) ? ctl_table_add(&t, "Idle", "%.0f%%", v)
                                               : ctl_table_add(&t, "Idle", "-");
        if (r >= 0)
                r = get_num(s, "foreground_delay_ms_per_s", &v)
                            ? ctl_table_add(&t, "Interference", "%.1f ms/s foreground wakeup delay",
                                            v)
                            : ctl_table_add(&t, "Interference", "-");
        if (r >= 0)
                r = add_aggregator(&t, s);
        if (r >= 0)
                r = add_data(&t, s);
        return r < 0 ? r : ctl_table_format(&t, ret);
}

/* Adds "Key: 1h 5m" from obj[key] (seconds), with ", N times" from counts[key]. */
static int add_seconds(ctl_table *t, const char *label, json_t *obj, const char *key,
                       json_t *counts) {
        char d[32];
        double v, n;

        if (!get_num(obj, key, &v))
                return ctl_table_add(t, label, "-");
        ctl_format_duration(v > 0 ? (uint64_t) v : 0, d, sizeof(d));
        if (get_num(counts, key, &n))
                return ctl_table_add(t, label, "%s (%.0f time%s)", d, n, n == 1 ? "" : "s");
        return ctl_table_add(t, label, "%s", d);
}

int ctl_format_stats(json_t *s, const ctl_style *style, char **ret) {
        _cleanup_(ctl_table_donep) ctl_table t = {};
        json_t *in_state = json_object_get(s, "seconds_in_state");
        json_t *paused = json_object_get(s, "seconds_paused");
        json_t *times = json_object_get(s, "times_paused");
        const char *key;
        json_t *v;
        char a[64], b[64];
        double since, x, y;
        int r;

        if (get_num(s, "since", &since)) {
                time_t t0 = (time_t) since;
                ctl_format_duration(style->now > t0 ? (uint64_t) (style->now - t0) : 0, b,
                                    sizeof(b));
                r = ctl_table_add(&t, "Since", "%s (%s ago)",
                                  format_clock(t0, style->now, a, sizeof(a)), b);
        } else
                r = ctl_table_add(&t, "Since", "-");
        if (r >= 0)
                r = add_seconds(&t, "Running", in_state, "running", NULL);
        if (r >= 0)
                r = add_seconds(&t, "Paused", in_state, "paused", NULL);
        /* each reason: the time paused for it when known, else how often */
        json_object_foreach(json_is_object(paused) ? paused : times, key, v) {
                char label[64];
                snprintf(label, sizeof(label), "  %s", key);
                if (r >= 0 && json_is_object(paused))
                        r = add_seconds(&t, label, paused, key, times);
                else if (r >= 0)
                        r = ctl_table_add(&t, label, "%s time%s",
                                          num_or_dash(times, key, 0, a, sizeof(a)),
                                          get_num(times, key, &x) && x == 1 ? "" : "s");
        }
        if (r >= 0)
                r = add_seconds(&t, "Off", in_state, "off", NULL);
        if (r >= 0)
                r = ctl_table_add(&t, "Transitions", "%s",
                                  num_or_dash(s, "transitions", 0, a, sizeof(a)));
        if (r >= 0)
                r = ctl_table_add(&t, "Steps", "%s (%s abandoned)",
                                  num_or_dash(s, "steps", 0, a, sizeof(a)),
                                  num_or_dash(s, "steps_abandoned", 0, b, sizeof(b)));
        if (r >= 0)
                r = ctl_table_add(&t, "Tokens", "%s",
                                  get_num(s, "tokens", &x) ? ctl_format_count(x, a, sizeof(a))
                                                           : "-");
        if (r >= 0)
                r = ctl_table_add(&t, "Checkpoints", "%s",
                                  num_or_dash(s, "checkpoints", 0, a, sizeof(a)));
        if (r >= 0) {
                bool have = get_num(s, "updates_sent", &x) && get_num(s, "updates_acked", &y);
                r = have ? ctl_table_add(&t, "Updates", "%.0f sent, %.0f acknowledged", x, y)
                         : ctl_table_add(&t, "Updates", "-");
        }
        return r < 0 ? r : ctl_table_format(&t, ret);
}

char *ctl_format_origin(json_t *knob, char *buf, size_t size) {
        const char *origin = get_str(knob, "origin"), *file = get_str(knob, "file");
        json_t *line = json_object_get(knob, "line");
        bool locked = json_is_true(json_object_get(knob, "locked"));

        if (!origin)
                snprintf(buf, size, "-%s", locked ? ", locked" : "");
        else if (strcmp(origin, "file") == 0 && file && json_is_integer(line))
                snprintf(buf, size, "%s:%lld%s", file, (long long) json_integer_value(line),
                         locked ? ", locked" : "");
        else if (strcmp(origin, "file") == 0 && file)
                snprintf(buf, size, "%s%s", file, locked ? ", locked" : "");
        else
                snprintf(buf, size, "%s%s", strcmp(origin, "builtin") == 0 ? "built-in" : origin,
                         locked ? ", locked" : "");
        return buf;
}

int ctl_format_policy(json_t *p, char **ret) {
        json_t *knobs = json_object_get(p, "knobs"), *k;
        size_t i, wk = 3, wv = 5;
        char *buf = NULL, origin[1200];
        size_t size = 0;
        FILE *f;

        if (!json_is_array(knobs)) {
                const char *show = json_string_value(json_object_get(p, "show"));
                *ret = strdup(show ? show : "");
                return *ret ? 0 : -ENOMEM;
        }
        json_array_foreach(knobs, i, k) {
                wk = MAX(wk, strlen(get_str(k, "key") ?: "-"));
                wv = MAX(wv, strlen(json_string_value(json_object_get(k, "value")) ?: "-"));
        }
        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fprintf(f, "%-*s  %-*s  %s\n", (int) wk, "KEY", (int) wv, "VALUE", "ORIGIN");
        json_array_foreach(knobs, i, k) {
                const char *value = json_string_value(json_object_get(k, "value"));
                fprintf(f, "%-*s  %-*s  %s\n", (int) wk, get_str(k, "key") ?: "-", (int) wv,
                        value && *value ? value : "-",
                        ctl_format_origin(k, origin, sizeof(origin)));
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}

int ctl_format_checkpoints(json_t *list, const ctl_style *style, char **ret) {
        json_t *cps = json_object_get(list, "checkpoints"), *c;
        char *buf = NULL, when[64], size_buf[32], step[32];
        size_t size = 0, i;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return -ENOMEM;
        if (json_array_size(cps) == 0)
                fprintf(f, "No checkpoints yet.\n");
        else
                fprintf(f, "%-16s  %10s  %10s  %s\n", "SAVED", "STEP", "SIZE", "PATH");
        json_array_foreach(cps, i, c) {
                double mtime, bytes;
                if (get_num(c, "mtime", &mtime))
                        format_clock((time_t) mtime, style->now, when, sizeof(when));
                else
                        snprintf(when, sizeof(when), "-");
                fprintf(f, "%-16s  %10s  %10s  %s\n", when,
                        num_or_dash(c, "step", 0, step, sizeof(step)),
                        get_num(c, "bytes", &bytes)
                                ? ctl_format_bytes(bytes, size_buf, sizeof(size_buf))
                                : "-",
                        get_str(c, "path") ?: "-");
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}
