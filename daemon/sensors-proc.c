/* SPDX-License-Identifier: MIT */
#include "sensors-proc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macros.h"
#include "sysfs-read.h"

/* Load and PSI averages are percentages or run-queue lengths; anything beyond this is not
 * a kernel's output. */
#define DECIMAL_MAX 1e12
/* Far above any kernel's NR_CPUS (8192 on the largest configurations). */
#define CPU_ID_MAX (1u << 22)

/* ---- tokenising ---- */

/* The next line of *p without its '\n'; false at the end of the text (or for no text). */
static bool next_line(const char **p, const char **ret, size_t *ret_n) {
        const char *s = *p, *nl;

        if (!s || !*s)
                return false;
        nl = strchrnul(s, '\n');
        *ret = s;
        *ret_n = (size_t) (nl - s);
        *p = *nl ? nl + 1 : nl;
        return true;
}

/* The next blank-separated token of [*p, end); false if none is left. */
static bool next_token(const char **p, const char *end, const char **ret, size_t *ret_n) {
        const char *s = *p, *t;

        while (s < end && (*s == ' ' || *s == '\t'))
                s++;
        if (s == end) {
                *p = s;
                return false;
        }
        t = s;
        while (t < end && *t != ' ' && *t != '\t')
                t++;
        *ret = s;
        *ret_n = (size_t) (t - s);
        *p = t;
        return true;
}

static bool token_is(const char *tok, size_t n, const char *word) {
        return strlen(word) == n && memcmp(tok, word, n) == 0;
}

static bool line_blank(const char *line, size_t n) {
        const char *tok;
        size_t k;
        return !next_token(&line, line + n, &tok, &k);
}

/* Parsers return -EINVAL from sysfs_parse_*; in a file that is a malformed file. */
static int malformed(int r) {
        return r == -EINVAL ? -EBADMSG : r;
}

/* ---- PSI ---- */

/* "avg10=0.12 avg60=0.05 avg300=0.01 total=12345" after the some/full word. */
static int parse_psi_fields(const char *p, const char *end, sensors_psi_line *ret) {
        sensors_psi_line l = {};
        static const char *const avg_keys[] = { "avg10", "avg60", "avg300" };
        double *avgs[] = { &l.avg10, &l.avg60, &l.avg300 };
        bool seen[ARRAY_SIZE(avg_keys) + 1] = {}; /* the averages, then total */
        const char *tok;
        size_t n;
        int r;

        while (next_token(&p, end, &tok, &n)) {
                const char *eq = memchr(tok, '=', n);
                const char *val;
                size_t key_n, val_n, k;

                if (!eq)
                        return -EBADMSG;
                key_n = (size_t) (eq - tok);
                val = eq + 1;
                val_n = n - key_n - 1;
                for (k = 0; k < ARRAY_SIZE(avg_keys); k++)
                        if (token_is(tok, key_n, avg_keys[k]))
                                break;
                if (k == ARRAY_SIZE(avg_keys) && !token_is(tok, key_n, "total"))
                        continue; /* a key from a newer kernel */
                if (seen[k])
                        return -EBADMSG;
                seen[k] = true;
                if (k < ARRAY_SIZE(avg_keys))
                        r = sysfs_parse_decimal_n(val, val_n, 0.0, 100.0, avgs[k]);
                else
                        r = sysfs_parse_uint64_n(val, val_n, UINT64_MAX, &l.total_us);
                if (r < 0)
                        return malformed(r);
        }
        for (size_t k = 0; k < ARRAY_SIZE(seen); k++)
                if (!seen[k])
                        return -EBADMSG;
        *ret = l;
        return 0;
}

int sensors_parse_psi(const char *text, sensors_psi_resource *ret) {
        sensors_psi_resource res = {};
        bool have_some = false;
        const char *line;
        size_t n;
        int r;

        while (next_line(&text, &line, &n)) {
                const char *p = line, *end = line + n, *word;
                size_t word_n;
                sensors_psi_line *l;

                if (!next_token(&p, end, &word, &word_n))
                        continue;
                if (token_is(word, word_n, "some") && !have_some) {
                        l = &res.some;
                        have_some = true;
                } else if (token_is(word, word_n, "full") && !res.have_full) {
                        l = &res.full;
                        res.have_full = true;
                } else
                        return -EBADMSG;
                r = parse_psi_fields(p, end, l);
                if (r < 0)
                        return r;
        }
        if (!have_some)
                return -ENODATA;
        res.available = true;
        *ret = res;
        return 0;
}

/* ---- /proc/meminfo ---- */

int sensors_parse_meminfo(const char *text, sensors_meminfo *ret) {
        sensors_meminfo m = {};
        bool have_total = false, have_avail = false;
        const char *line;
        size_t n;
        int r;

        while (next_line(&text, &line, &n)) {
                const char *p = line, *end = line + n, *key, *val, *unit, *extra;
                size_t key_n, val_n, unit_n, extra_n;
                uint64_t *dst;
                bool *have;

                if (!next_token(&p, end, &key, &key_n))
                        continue;
                if (token_is(key, key_n, "MemTotal:")) {
                        dst = &m.mem_total_kb;
                        have = &have_total;
                } else if (token_is(key, key_n, "MemAvailable:")) {
                        dst = &m.mem_available_kb;
                        have = &have_avail;
                } else
                        continue;
                if (*have)
                        return -EBADMSG;
                if (!next_token(&p, end, &val, &val_n) || !next_token(&p, end, &unit, &unit_n) ||
                    !token_is(unit, unit_n, "kB") || next_token(&p, end, &extra, &extra_n))
                        return -EBADMSG;
                /* kB fits a byte count in 64 bits: a bound that still catches nonsense. */
                r = sysfs_parse_uint64_n(val, val_n, UINT64_MAX / 1024, dst);
                if (r < 0)
                        return malformed(r);
                *have = true;
        }
        if (!have_total || !have_avail)
                return -ENODATA;
        *ret = m;
        return 0;
}

/* ---- /proc/loadavg ---- */

int sensors_parse_loadavg(const char *text, sensors_loadavg *ret) {
        sensors_loadavg l = {};
        double *loads[] = { &l.load1, &l.load5, &l.load15 };
        const char *line, *p, *end, *tok, *slash;
        uint64_t v;
        size_t n;
        int r;

        if (!next_line(&text, &line, &n))
                return -ENODATA;
        p = line;
        end = line + n;
        for (size_t i = 0; i < ARRAY_SIZE(loads); i++) {
                if (!next_token(&p, end, &tok, &n))
                        return -EBADMSG;
                r = sysfs_parse_decimal_n(tok, n, 0.0, DECIMAL_MAX, loads[i]);
                if (r < 0)
                        return malformed(r);
        }

        if (!next_token(&p, end, &tok, &n))
                return -EBADMSG;
        slash = memchr(tok, '/', n);
        if (!slash)
                return -EBADMSG;
        r = sysfs_parse_uint64_n(tok, (size_t) (slash - tok), UINT32_MAX, &v);
        if (r < 0)
                return malformed(r);
        l.n_runnable = (uint32_t) v;
        r = sysfs_parse_uint64_n(slash + 1, n - (size_t) (slash - tok) - 1, UINT32_MAX, &v);
        if (r < 0)
                return malformed(r);
        l.n_threads = (uint32_t) v;

        if (!next_token(&p, end, &tok, &n))
                return -EBADMSG;
        r = sysfs_parse_uint64_n(tok, n, UINT32_MAX, &v);
        if (r < 0)
                return malformed(r);
        l.last_pid = (uint32_t) v;

        if (next_token(&p, end, &tok, &n))
                return -EBADMSG;
        while (next_line(&text, &line, &n))
                if (!line_blank(line, n))
                        return -EBADMSG;
        *ret = l;
        return 0;
}

/* ---- /proc/stat ---- */

/* Eight fields must add up without wrapping (sensors_cpu_times_total): larger is garbage,
 * not ticks (2^60 jiffies at 1000 Hz are 36 million years). */
#define CPU_TIME_MAX (UINT64_MAX / 16)

/* The numbers after "cpu" or "cpuN". */
static int parse_cpu_times(const char *p, const char *end, sensors_cpu_times *ret) {
        sensors_cpu_times t = {};
        uint64_t *fields[] = { &t.user,   &t.nice, &t.system,  &t.idle,
                               &t.iowait, &t.irq,  &t.softirq, &t.steal };
        const char *tok;
        size_t n, i = 0;
        int r;

        while (next_token(&p, end, &tok, &n)) {
                uint64_t v;

                /* guest and guest_nice (and anything newer) are checked, then dropped. */
                r = sysfs_parse_uint64_n(tok, n, CPU_TIME_MAX, &v);
                if (r < 0)
                        return malformed(r);
                if (i < ARRAY_SIZE(fields))
                        *fields[i] = v;
                i++;
        }
        if (i < 4)
                return -EBADMSG;
        *ret = t;
        return 0;
}

void sensors_stat_done(sensors_stat *s) {
        free(s->cpus);
        *s = (sensors_stat){};
}

int sensors_parse_stat(const char *text, sensors_stat *ret) {
        _cleanup_free_ sensors_cpu_stat *cpus = NULL;
        sensors_cpu_times all = {};
        bool have_all = false;
        size_t n_cpus = 0, alloc = 0;
        const char *line;
        size_t n;
        int r;

        *ret = (sensors_stat){};
        while (next_line(&text, &line, &n)) {
                const char *p = line, *end = line + n, *word;
                size_t word_n;
                uint64_t id;

                if (!next_token(&p, end, &word, &word_n) || word_n < 3 ||
                    memcmp(word, "cpu", 3) != 0)
                        continue;
                if (word_n == 3) {
                        if (have_all)
                                return -EBADMSG;
                        r = parse_cpu_times(p, end, &all);
                        if (r < 0)
                                return r;
                        have_all = true;
                        continue;
                }

                r = sysfs_parse_uint64_n(word + 3, word_n - 3, CPU_ID_MAX, &id);
                if (r < 0)
                        return malformed(r);
                /* The kernel prints online CPUs in order; anything else is not its output. */
                if (n_cpus > 0 && id <= cpus[n_cpus - 1].id)
                        return -EBADMSG;
                if (n_cpus == alloc) {
                        size_t k = alloc ? alloc * 2 : 16;
                        sensors_cpu_stat *c = reallocarray(cpus, k, sizeof(*c));
                        if (!c)
                                return -ENOMEM;
                        cpus = c;
                        alloc = k;
                }
                cpus[n_cpus].id = (uint32_t) id;
                r = parse_cpu_times(p, end, &cpus[n_cpus].times);
                if (r < 0)
                        return r;
                n_cpus++;
        }
        if (!have_all || n_cpus == 0)
                return -ENODATA;
        *ret = (sensors_stat){
                .all = all,
                .cpus = TAKE_PTR(cpus),
                .n_cpus = n_cpus,
        };
        return 0;
}

uint64_t sensors_cpu_times_total(const sensors_cpu_times *t) {
        return t->user + t->nice + t->system + t->idle + t->iowait + t->irq + t->softirq + t->steal;
}

static uint64_t delta(uint64_t prev, uint64_t cur) {
        return cur > prev ? cur - prev : 0;
}

int sensors_cpu_usage_between(const sensors_cpu_times *prev, const sensors_cpu_times *cur,
                              sensors_cpu_usage *ret) {
        sensors_cpu_times d = {
                .user = delta(prev->user, cur->user),
                .nice = delta(prev->nice, cur->nice),
                .system = delta(prev->system, cur->system),
                .idle = delta(prev->idle, cur->idle),
                .iowait = delta(prev->iowait, cur->iowait),
                .irq = delta(prev->irq, cur->irq),
                .softirq = delta(prev->softirq, cur->softirq),
                .steal = delta(prev->steal, cur->steal),
        };
        uint64_t total = sensors_cpu_times_total(&d);
        double idle;

        if (total == 0)
                return -EAGAIN;
        /* rounded in double, idle can come out a hair above 100 once ticks pass 2^53 */
        idle = MIN(100.0 * (double) (d.idle + d.iowait) / (double) total, 100.0);
        *ret = (sensors_cpu_usage){
                .idle_pct = idle,
                .busy_pct = 100.0 - idle,
                .ticks = total,
        };
        return 0;
}

/* ---- readers ---- */

/* Reads <root>/<rel>. With absent_ok a missing file returns -ENOENT unlogged; every other
 * failure is logged naming the file. */
static int read_proc_file(const char *root, const char *rel, size_t max, bool absent_ok,
                          char **ret) {
        _cleanup_close_ int root_fd = -1;
        char path[512];
        int r;

        r = sysfs_root_open(root, &root_fd);
        if (r < 0)
                return log_error_errno(r, "Failed to open root directory %s: %m",
                                       root ? root : "/");
        r = sysfs_read_alloc_at(root_fd, rel, max, ret, NULL);
        if (absent_ok && (r == -ENOENT || r == -ENOTDIR || r == -EOPNOTSUPP))
                return -ENOENT;
        if (r < 0)
                return log_error_errno(r, "Failed to read %s: %m",
                                       sysfs_path(root, rel, path, sizeof(path)));
        return 0;
}

static int parse_failed(int r, const char *root, const char *rel, const char *missing) {
        char path[512];
        const char *why = r == -ENODATA  ? missing
                          : r == -ERANGE ? "a value is out of range"
                          : r == -ENOMEM ? "out of memory"
                                         : "malformed contents";

        return log_error_errno(r, "Failed to parse %s: %s",
                               sysfs_path(root, rel, path, sizeof(path)), why);
}

int sensors_psi_read(const char *root, sensors_psi *ret) {
        static const char *const files[] = { "proc/pressure/cpu", "proc/pressure/memory",
                                             "proc/pressure/io" };
        sensors_psi psi = {};
        sensors_psi_resource *res[] = { &psi.cpu, &psi.memory, &psi.io };
        int r;

        for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
                _cleanup_free_ char *text = NULL;

                r = read_proc_file(root, files[i], 4096, true, &text);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return r;
                r = sensors_parse_psi(text, res[i]);
                if (r < 0)
                        return parse_failed(r, root, files[i], "no \"some\" line");
                psi.available = true;
        }
        *ret = psi;
        return 0;
}

int sensors_meminfo_read(const char *root, sensors_meminfo *ret) {
        _cleanup_free_ char *text = NULL;
        int r;

        r = read_proc_file(root, "proc/meminfo", 1 << 16, false, &text);
        if (r < 0)
                return r;
        r = sensors_parse_meminfo(text, ret);
        if (r < 0)
                return parse_failed(
                        r, root, "proc/meminfo",
                        "no MemTotal or MemAvailable line (MemAvailable needs Linux 3.14)");
        return 0;
}

int sensors_loadavg_read(const char *root, sensors_loadavg *ret) {
        _cleanup_free_ char *text = NULL;
        int r;

        r = read_proc_file(root, "proc/loadavg", 4096, false, &text);
        if (r < 0)
                return r;
        r = sensors_parse_loadavg(text, ret);
        if (r < 0)
                return parse_failed(r, root, "proc/loadavg", "empty file");
        return 0;
}

int sensors_stat_read(const char *root, sensors_stat *ret) {
        _cleanup_free_ char *text = NULL;
        int r;

        /* Grows with CPUs and interrupts; a few MiB covers thousands of each. */
        r = read_proc_file(root, "proc/stat", 16 << 20, false, &text);
        if (r < 0)
                return r;
        r = sensors_parse_stat(text, ret);
        if (r < 0)
                return parse_failed(r, root, "proc/stat", "no \"cpu\" line or no \"cpuN\" line");
        return 0;
}
