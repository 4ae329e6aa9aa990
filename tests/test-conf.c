/* SPDX-License-Identifier: MIT */
/* Configuration: the exact message of every error class, precedence across every layer,
 * drop-in order, profiles against explicit keys, Locked= against fleet policy, lenient and
 * strict loads, ActiveHours forms, and the runtime override round trip. Each test builds
 * its own root tree under the scratch directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "fileio.h"
#include "macros.h"
#include "test-files.h"

static int setup_group(void **state) {
        return test_tmpdir_create("test-conf");
}

/* mkdir -p of the parent of path. */
static void mkdir_parents(const char *path) {
        _cleanup_free_ char *p = strdup(path);
        assert_non_null(p);
        for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = 0;
                assert_true(mkdir(p, 0755) == 0 || errno == EEXIST);
                *s = '/';
        }
}

/* A fresh root "<tmpdir>/<name>" (malloc'd). */
static char *make_root(const char *name) {
        char *root = test_tmp_path(name);
        assert_int_equal(mkdir(root, 0755), 0);
        return root;
}

static char *root_file(const char *root, const char *rel) {
        char *p;
        assert_true(asprintf(&p, "%s%s", root, rel) > 0);
        return p;
}

static void write_file(const char *root, const char *rel, const char *text) {
        _cleanup_free_ char *p = root_file(root, rel);
        FILE *f;

        mkdir_parents(p);
        f = fopen(p, "we");
        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

/* Loads with stderr captured; returns conf_load's result. */
static int load(const char *root, const conf_pair *fleet, size_t n_fleet, conf *c, char **ret_log) {
        conf_load_options o = { .root = root, .fleet = fleet, .n_fleet = n_fleet };
        int r;

        test_capture_begin();
        r = conf_load(&o, c);
        *ret_log = test_capture_end();
        return r;
}

/* printf-style expected text, so paths below the scratch root can be spelled out. */
static char *fmt(const char *f, ...) _printf_(1, 2);
static char *fmt(const char *f, ...) {
        va_list ap;
        char *s;

        va_start(ap, f);
        assert_true(vasprintf(&s, f, ap) >= 0);
        va_end(ap);
        return s;
}

/* ---- pure parsing ---- */

static void test_ini_parse(void **state) {
        conf_ini ini;

        assert_int_equal(conf_ini_parse("# comment\n  ; another\n\n [ Policy ] \r\n"
                                        "  MaxCores =  2 \nnonsense\n[Daemon]\nModel=\n[x\n=v\n",
                                        &ini),
                         0);
        assert_int_equal(ini.n, 7);
        assert_int_equal(ini.lines[0].kind, CONF_LINE_SECTION);
        assert_int_equal(ini.lines[0].line, 4);
        assert_string_equal(ini.lines[0].section, "Policy");
        assert_int_equal(ini.lines[1].kind, CONF_LINE_ASSIGN);
        assert_int_equal(ini.lines[1].line, 5);
        assert_string_equal(ini.lines[1].key, "MaxCores");
        assert_string_equal(ini.lines[1].value, "2");
        assert_string_equal(ini.lines[1].section, "Policy");
        assert_int_equal(ini.lines[2].kind, CONF_LINE_BAD);
        assert_int_equal(ini.lines[2].line, 6);
        assert_int_equal(ini.lines[4].kind, CONF_LINE_ASSIGN);
        assert_string_equal(ini.lines[4].section, "Daemon");
        assert_string_equal(ini.lines[4].value, "");
        assert_int_equal(ini.lines[5].kind, CONF_LINE_BAD);
        assert_int_equal(ini.lines[6].kind, CONF_LINE_BAD);
        assert_int_equal(ini.lines[6].line, 10);
        conf_ini_done(&ini);
}

static void test_parse_bool(void **state) {
        static const char *const yes[] = { "yes", "true", "1", "on", "YES", "On" };
        static const char *const no[] = { "no", "false", "0", "off", "No" };
        static const char *const bad[] = { "", "y", "2", "enabled", "yes " };
        bool b;

        for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
                b = false;
                assert_int_equal(conf_parse_bool(yes[i], &b), 0);
                assert_true(b);
        }
        for (size_t i = 0; i < ARRAY_SIZE(no); i++) {
                b = true;
                assert_int_equal(conf_parse_bool(no[i], &b), 0);
                assert_false(b);
        }
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
                assert_int_equal(conf_parse_bool(bad[i], &b), -EINVAL);
}

#define MON 0x01
#define TUE 0x02
#define WED 0x04
#define THU 0x08
#define FRI 0x10
#define SAT 0x20
#define SUN 0x40
#define ALL 0x7f

static void test_active_hours(void **state) {
        static const struct {
                const char *text;
                int n;
                active_window w[3];
                const char *canon;
        } good[] = {
                { "always", 0, {}, "always" },
                { "  Always ", 0, {}, "always" },
                { "Mon-Fri 19:00-08:00",
                  1,
                  { { MON | TUE | WED | THU | FRI, 1140, 480 } },
                  "Mon-Fri 19:00-08:00" },
                { "9:30-17:00", 1, { { ALL, 570, 1020 } }, "09:30-17:00" },
                { "Fri-Mon 22:00-06:00",
                  1,
                  { { FRI | SAT | SUN | MON, 1320, 360 } },
                  "Mon,Fri-Sun 22:00-06:00" },
                { "Sun-Sun 00:00-24:00", 1, { { SUN, 0, 1440 } }, "Sun 00:00-24:00" },
                { "sat,sun 10:00-18:00", 1, { { SAT | SUN, 600, 1080 } }, "Sat-Sun 10:00-18:00" },
                { "Mon-Fri 19:00-08:00, Sat 10:00-12:00 Sun",
                  3,
                  { { MON | TUE | WED | THU | FRI, 1140, 480 },
                    { SAT, 600, 720 },
                    { SUN, 0, 1440 } },
                  "Mon-Fri 19:00-08:00, Sat 10:00-12:00, Sun 00:00-24:00" },
                { "Tue 12:00-12:00", 1, { { TUE, 720, 720 } }, "Tue 12:00-12:00" },
                { "Wed", 1, { { WED, 0, 1440 } }, "Wed 00:00-24:00" },
                { "Thu-Tue 01:00-02:00",
                  1,
                  { { ALL & ~WED, 60, 120 } },
                  "Mon-Tue,Thu-Sun 01:00-02:00" },
        };
        static const struct {
                const char *text;
                int r;
                const char *reason;
        } bad[] = {
                { "", -EINVAL, "no time window" },
                { " , ", -EINVAL, "no time window" },
                { "Mon-Fri 25:00-08:00", -EINVAL, "bad time range '25:00-08:00'" },
                { "Mon 19:60-20:00", -EINVAL, "bad time range '19:60-20:00'" },
                { "Mon 24:00-08:00", -EINVAL, "bad time range '24:00-08:00'" },
                { "Mon 19:00-24:01", -EINVAL, "bad time range '19:00-24:01'" },
                { "Mon 19:00", -EINVAL, "bad time range '19:00'" },
                { "Mon 7:5-8:00", -EINVAL, "bad time range '7:5-8:00'" },
                { "Mon 123:00-8:00", -EINVAL, "bad time range '123:00-8:00'" },
                { "Mon 19:00-08:00-09:00", -EINVAL, "bad time range '19:00-08:00-09:00'" },
                { "Monday 19:00-08:00", -EINVAL, "unknown day 'Monday'" },
                { "Mon-Foo 19:00-08:00", -EINVAL, "unknown day 'Mon-Foo'" },
                { "Mon-Tue-Wed 19:00-08:00", -EINVAL, "unknown day 'Mon-Tue-Wed'" },
                { "Mon 8-9", -EINVAL, "bad time range '8-9'" },
                { "always Mon", -EINVAL, "'always' must stand alone" },
                { "1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 "
                  "1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 "
                  "1:00-2:00",
                  -E2BIG, "more than 16 windows" },
        };
        active_window w[ACTIVE_WINDOWS_MAX];
        char reason[128], canon[256];
        int n;

        for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
                active_window w2[ACTIVE_WINDOWS_MAX];
                int n2;

                n = -1;
                if (conf_parse_active_hours(good[i].text, w, &n, reason, sizeof(reason)) != 0)
                        fail_msg("'%s': %s", good[i].text, reason);
                assert_int_equal(n, good[i].n);
                for (int j = 0; j < n; j++) {
                        assert_int_equal(w[j].days, good[i].w[j].days);
                        assert_int_equal(w[j].start_min, good[i].w[j].start_min);
                        assert_int_equal(w[j].end_min, good[i].w[j].end_min);
                }
                /* The canonical form reads back to the same windows. */
                assert_int_equal(conf_format_active_hours(w, n, canon, sizeof(canon)), 0);
                assert_string_equal(canon, good[i].canon);
                assert_int_equal(conf_parse_active_hours(canon, w2, &n2, reason, sizeof(reason)),
                                 0);
                assert_int_equal(n2, n);
                for (int j = 0; j < n; j++) {
                        assert_int_equal(w2[j].days, w[j].days);
                        assert_int_equal(w2[j].start_min, w[j].start_min);
                        assert_int_equal(w2[j].end_min, w[j].end_min);
                }
        }
        /* Sixteen windows are fine. */
        assert_int_equal(conf_parse_active_hours(
                                 "1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 "
                                 "1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00 "
                                 "1:00-2:00 1:00-2:00 1:00-2:00 1:00-2:00",
                                 w, &n, reason, sizeof(reason)),
                         0);
        assert_int_equal(n, 16);
        assert_int_equal(conf_format_active_hours(w, 1, canon, 5), -ENOBUFS);
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                n = -7;
                reason[0] = 0;
                if (conf_parse_active_hours(bad[i].text, w, &n, reason, sizeof(reason)) != bad[i].r)
                        fail_msg("'%s' accepted or wrong error", bad[i].text);
                assert_string_equal(reason, bad[i].reason);
                assert_int_equal(n, -7);
        }
}

static void test_check_value(void **state) {
        static const struct {
                conf_key k;
                const char *value, *reason;
        } bad[] = {
                { CONF_KEY_MAX_CORES, "-3", "MaxCores: '-3' is not a whole number in [0, 1024]" },
                { CONF_KEY_MAX_CORES, "2x", "MaxCores: '2x' is not a whole number in [0, 1024]" },
                { CONF_KEY_MAX_CORES, "", "MaxCores: '' is not a whole number in [0, 1024]" },
                { CONF_KEY_MAX_CORES, "0x10",
                  "MaxCores: '0x10' is not a whole number in [0, 1024]" },
                { CONF_KEY_MIN_IDLE_PERCENT, "101",
                  "MinIdlePercent: '101' is not a whole number in [0, 100]" },
                { CONF_KEY_IDLE_WINDOW_SEC, "0",
                  "IdleWindowSec: '0' is not a whole number in [1, 3600]" },
                { CONF_KEY_MAX_MEMORY_MIB, "99999999999999999999",
                  "MaxMemoryMiB: '99999999999999999999' is not a whole number in [16, 1048576]" },
                { CONF_KEY_REQUIRE_AC_POWER, "maybe",
                  "RequireACPower: 'maybe' is not a boolean (yes/no, true/false, 1/0, on/off)" },
                { CONF_KEY_PROFILE, "turbo",
                  "Profile: 'turbo' is not one of quiet, balanced, performance" },
                { CONF_KEY_MODEL, "huge", "Model: 'huge' is not one of tiny, small, medium" },
                { CONF_KEY_DATA_DIRECTORY, "data",
                  "DataDirectory: 'data' is not an absolute path without '..'" },
                { CONF_KEY_STATE_DIRECTORY, "/var/../etc",
                  "StateDirectory: '/var/../etc' is not an absolute path without '..'" },
                { CONF_KEY_CHECKPOINT_INTERVAL_SEC, "5",
                  "CheckpointIntervalSec: '5' is not a whole number in [10, 86400]" },
                { CONF_KEY_ACTIVE_HOURS, "Mon 8-9",
                  "ActiveHours: 'Mon 8-9' is not valid: bad time range '8-9'" },
        };
        char reason[256];

        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                assert_int_equal(conf_check_value(bad[i].k, bad[i].value, reason, sizeof(reason)),
                                 -EINVAL);
                assert_string_equal(reason, bad[i].reason);
        }
        assert_int_equal(conf_check_value(CONF_KEY_MAX_CORES, "1024", reason, sizeof(reason)), 0);
        assert_int_equal(
                conf_check_value(CONF_KEY_DATA_DIRECTORY, "/srv/text", reason, sizeof(reason)), 0);
        assert_int_equal(conf_key_from_string("MaxCores"), CONF_KEY_MAX_CORES);
        assert_int_equal(conf_key_from_string("maxcores"), -EINVAL);
        assert_int_equal(conf_key_from_string("Locked"), -EINVAL);
        for (int k = 0; k < _CONF_KEY_MAX; k++)
                assert_int_equal(conf_key_from_string(conf_key_to_string((conf_key) k)), k);
}

static void test_presets(void **state) {
        policy_knobs q, b, p;

        conf_profile_preset(PROFILE_QUIET, &q);
        conf_profile_preset(PROFILE_BALANCED, &b);
        conf_profile_preset(PROFILE_PERFORMANCE, &p);
        /* balanced is DESIGN.md §5: 60/30/0/75/65/yes/80/5/1024/always/no */
        assert_int_equal(b.profile, PROFILE_BALANCED);
        assert_int_equal(b.min_idle_percent, 45);
        assert_int_equal(b.idle_window_sec, 30);
        assert_int_equal(b.max_cores, 0);
        assert_int_equal(b.max_temperature_c, 75);
        assert_int_equal(b.resume_temperature_c, 65);
        assert_true(b.require_ac_power);
        assert_int_equal(b.min_battery_percent, 80);
        assert_int_equal(b.max_foreground_delay_ms, 5);
        assert_int_equal(b.max_memory_mib, 1024);
        assert_int_equal(b.n_active_windows, 0);
        assert_false(b.pause_on_user_active);

        assert_int_equal(q.profile, PROFILE_QUIET);
        assert_int_equal(q.min_idle_percent, 80);
        assert_int_equal(q.idle_window_sec, 60);
        assert_int_equal(q.max_cores, 1);
        assert_int_equal(q.max_temperature_c, 65);
        assert_int_equal(q.resume_temperature_c, 55);
        assert_true(q.require_ac_power);
        assert_int_equal(q.min_battery_percent, 80);
        assert_int_equal(q.max_foreground_delay_ms, 2);
        assert_int_equal(q.max_memory_mib, 1024);
        assert_true(q.pause_on_user_active);

        assert_int_equal(p.profile, PROFILE_PERFORMANCE);
        assert_int_equal(p.min_idle_percent, 25);
        assert_int_equal(p.idle_window_sec, 15);
        assert_int_equal(p.max_cores, 0);
        assert_int_equal(p.max_temperature_c, 85);
        assert_int_equal(p.resume_temperature_c, 75);
        assert_false(p.require_ac_power);
        assert_int_equal(p.min_battery_percent, 50);
        assert_int_equal(p.max_foreground_delay_ms, 10);
        assert_false(p.pause_on_user_active);
}

/* ---- loading ---- */

static void test_defaults(void **state) {
        _cleanup_free_ char *root = make_root("defaults"), *log = NULL, *ovr = NULL;
        policy_knobs b;
        conf c;

        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_string_equal(log, "");
        conf_profile_preset(PROFILE_BALANCED, &b);
        assert_memory_equal(&c.knobs, &b, sizeof(b));
        assert_string_equal(c.data_directory, "/var/lib/edged/data");
        assert_string_equal(c.state_directory, "/var/lib/edged");
        assert_int_equal(c.checkpoint_interval_sec, 300);
        assert_int_equal(c.model, CONF_MODEL_SMALL);
        assert_false(c.lenient);
        assert_int_equal(c.locked, 0);
        for (int k = 0; k < _CONF_KEY_MAX; k++) {
                assert_int_equal(c.prov[k].origin, KNOB_BUILTIN);
                assert_null(c.prov[k].path);
        }
        ovr = root_file(root, "/var/lib/edged/overrides.conf");
        assert_string_equal(c.overrides_path, ovr);
        conf_done(&c);
}

/* Every error class, as the whole log line the admin reads. "%1$s" is the file. */
static void test_error_messages(void **state) {
        static const struct {
                const char *text;
                int r;
                const char *log;
        } cases[] = {
                { "[Policy]\nMaxCores=-3\n", -EINVAL,
                  "%1$s:2: MaxCores: '-3' is not a whole number in [0, 1024]\n" },
                { "[Policy]\n# c\n\nMaxCores = 2x\n", -EINVAL,
                  "%1$s:4: MaxCores: '2x' is not a whole number in [0, 1024]\n" },
                { "[Policy]\nMaxCores\n", -EINVAL,
                  "%1$s:2: expected 'Key=Value' or '[Section]'\n" },
                { "[Policy]\n=3\n", -EINVAL, "%1$s:2: expected 'Key=Value' or '[Section]'\n" },
                { "[Policy\nMaxCores=1\n", -EINVAL,
                  "%1$s:1: expected 'Key=Value' or '[Section]'\n"
                  "%1$s:2: key 'MaxCores' outside of any section, ignored\n" },
                { "[]\n", -EINVAL, "%1$s:1: expected 'Key=Value' or '[Section]'\n" },
                { "[Policy]\nFoo=1\nMaxCores=2\n", 0,
                  "%1$s:2: unknown key 'Foo' in [Policy], ignored\n" },
                { "[Daemon]\nMaxCores=2\n", 0,
                  "%1$s:2: unknown key 'MaxCores' in [Daemon], ignored\n" },
                { "[Policy]\nModel=tiny\n", 0,
                  "%1$s:2: unknown key 'Model' in [Policy], ignored\n" },
                { "[Bar]\nX=1\n[Policy]\nMaxCores=2\n", 0,
                  "%1$s:1: unknown section '[Bar]', ignored\n" },
                { "MaxCores=1\n", 0, "%1$s:1: key 'MaxCores' outside of any section, ignored\n" },
                { "[Policy]\nRequireACPower=maybe\n", -EINVAL,
                  "%1$s:2: RequireACPower: 'maybe' is not a boolean (yes/no, true/false, 1/0, "
                  "on/off)\n" },
                { "[Policy]\nProfile=turbo\n", -EINVAL,
                  "%1$s:2: Profile: 'turbo' is not one of quiet, balanced, performance\n" },
                { "[Policy]\nActiveHours=Mon-Fri 25:00-08:00\n", -EINVAL,
                  "%1$s:2: ActiveHours: 'Mon-Fri 25:00-08:00' is not valid: bad time range "
                  "'25:00-08:00'\n" },
                { "[Policy]\nLocked=MaxCores, Foo\n", -EINVAL,
                  "%1$s:2: Locked: 'Foo' is not a [Policy] knob\n" },
                { "[Policy]\nLocked=Model\n", -EINVAL,
                  "%1$s:2: Locked: 'Model' is not a [Policy] knob\n" },
                { "[Daemon]\nModel=huge\n", -EINVAL,
                  "%1$s:2: Model: 'huge' is not one of tiny, small, medium\n" },
                { "[Daemon]\nDataDirectory=data\n", -EINVAL,
                  "%1$s:2: DataDirectory: 'data' is not an absolute path without '..'\n" },
                { "[Daemon]\nCheckpointIntervalSec=5\n", -EINVAL,
                  "%1$s:2: CheckpointIntervalSec: '5' is not a whole number in [10, 86400]\n" },
                { "[Daemon]\nLenient=maybe\n", -EINVAL,
                  "%1$s:2: Lenient: 'maybe' is not a boolean (yes/no, true/false, 1/0, on/off)\n" },
                /* Cross-field: blamed on the later of the two assignments. */
                { "[Policy]\nResumeTemperatureC=80\n", -EINVAL,
                  "%1$s:2: ResumeTemperatureC: 80 is not below MaxTemperatureC (75)\n" },
                { "[Policy]\nResumeTemperatureC=50\nMaxTemperatureC=50\n", -EINVAL,
                  "%1$s:3: ResumeTemperatureC: 50 is not below MaxTemperatureC (50)\n" },
                { "[Policy]\nProfile=quiet\nResumeTemperatureC=65\n", -EINVAL,
                  "%1$s:3: ResumeTemperatureC: 65 is not below MaxTemperatureC (65)\n" },
                /* Every error is reported, not just the first. */
                { "[Policy]\nMaxCores=-1\nMinIdlePercent=200\n", -EINVAL,
                  "%1$s:2: MaxCores: '-1' is not a whole number in [0, 1024]\n"
                  "%1$s:3: MinIdlePercent: '200' is not a whole number in [0, 100]\n" },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                _cleanup_free_ char *name = fmt("errors-%zu", i), *root = make_root(name);
                _cleanup_free_ char *path = root_file(root, "/etc/edged/edged.conf");
                _cleanup_free_ char *log = NULL, *want = NULL;
                conf c;
                int r;

                write_file(root, "/etc/edged/edged.conf", cases[i].text);
                r = load(root, NULL, 0, &c, &log);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
                want = fmt(cases[i].log, path);
#pragma GCC diagnostic pop
                if (r != cases[i].r || strcmp(log, want) != 0)
                        fail_msg("case %zu: r=%d, log:\n%s\nwanted r=%d:\n%s", i, r, log,
                                 cases[i].r, want);
                conf_done(&c);
        }
}

static void test_unreadable(void **state) {
        _cleanup_free_ char *root = make_root("unreadable"), *log = NULL, *want = NULL;
        _cleanup_free_ char *p = root_file(root, "/etc/edged/edged.conf"), *nul = NULL;
        conf c;

        /* A directory where the file should be: open() works, read() fails, as for EACCES
         * (which root, running the tests, would not see). */
        mkdir_parents(p);
        assert_int_equal(mkdir(p, 0755), 0);
        assert_int_equal(load(root, NULL, 0, &c, &log), -EISDIR);
        want = fmt("%s: cannot read: Is a directory\n", p);
        assert_string_equal(log, want);
        conf_done(&c);

        /* A binary file is refused, not half-read. */
        free(log);
        free(want);
        assert_int_equal(rmdir(p), 0);
        nul = root_file(root, "/usr/lib/edged/edged.conf");
        mkdir_parents(nul);
        {
                int fd = open(nul, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                assert_true(fd >= 0);
                assert_int_equal(write_full(fd, "[Policy]\n\0x", 11), 0);
                close(fd);
        }
        assert_int_equal(load(root, NULL, 0, &c, &log), -EBADMSG);
        want = fmt("%s: contains a NUL byte, not a text file\n", nul);
        assert_string_equal(log, want);
        conf_done(&c);
}

static void test_lenient(void **state) {
        _cleanup_free_ char *root = make_root("lenient"), *log = NULL, *want = NULL;
        _cleanup_free_ char *etc = root_file(root, "/etc/edged/edged.conf");
        conf c;

        write_file(root, "/usr/lib/edged/edged.conf", "[Policy]\nMaxCores=2\n");
        write_file(root, "/etc/edged/edged.conf",
                   "[Policy]\nMaxCores=-3\nMinIdlePercent=50\nResumeTemperatureC=90\ngarbage\n");

        /* Strict: the load fails and says why. */
        assert_int_equal(load(root, NULL, 0, &c, &log), -EINVAL);
        want = fmt("%1$s:2: MaxCores: '-3' is not a whole number in [0, 1024]\n"
                   "%1$s:5: expected 'Key=Value' or '[Section]'\n"
                   "%1$s:4: ResumeTemperatureC: 90 is not below MaxTemperatureC (75)\n",
                   etc);
        assert_string_equal(log, want);
        conf_done(&c);
        free(log);
        free(want);

        /* Lenient=yes in a later drop-in covers the earlier files too: every bad line keeps
         * the previous value (MaxCores=2 from /usr/lib, the balanced temperatures). */
        write_file(root, "/etc/edged/edged.conf.d/50-lenient.conf", "[Daemon]\nLenient=yes\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        want = fmt("%1$s:2: MaxCores: '-3' is not a whole number in [0, 1024], ignored\n"
                   "%1$s:5: expected 'Key=Value' or '[Section]', ignored\n"
                   "%1$s:4: ResumeTemperatureC: 90 is not below MaxTemperatureC (75), ignored\n",
                   etc);
        assert_string_equal(log, want);
        assert_true(c.lenient);
        assert_int_equal(c.knobs.max_cores, 2);
        assert_int_equal(c.knobs.min_idle_percent, 50);
        assert_int_equal(c.knobs.resume_temperature_c, 65);
        assert_int_equal(c.prov[CONF_KEY_RESUME_TEMPERATURE_C].origin, KNOB_BUILTIN);
        assert_int_equal(c.prov[CONF_KEY_MAX_CORES].line, 2);
        conf_done(&c);
        free(log);

        /* A later Lenient=no wins. */
        write_file(root, "/etc/edged/edged.conf.d/60-strict.conf", "[Daemon]\nLenient=no\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), -EINVAL);
        conf_done(&c);
}

static void assert_prov(const conf *c, conf_key k, knob_origin o, const char *root, const char *rel,
                        unsigned line) {
        assert_int_equal(c->prov[k].origin, o);
        if (rel) {
                _cleanup_free_ char *p = root_file(root, rel);
                assert_non_null(c->prov[k].path);
                assert_string_equal(c->prov[k].path, p);
                assert_int_equal(c->prov[k].line, line);
        } else
                assert_null(c->prov[k].path);
}

static void test_precedence(void **state) {
        _cleanup_free_ char *root = make_root("precedence"), *log = NULL;
        const conf_pair fleet[] = { { "MaxCores", "6" }, { "MinBatteryPercent", "33" } };
        conf c;

        /* Each layer sets MaxCores and one knob nobody above it touches. */
        write_file(root, "/usr/lib/edged/edged.conf",
                   "[Policy]\nMaxCores=1\nMinIdlePercent=11\nMinBatteryPercent=90\n"
                   "[Daemon]\nModel=tiny\nDataDirectory=/srv/usr\n");
        write_file(root, "/etc/edged/edged.conf",
                   "[Policy]\nMaxCores=2\nIdleWindowSec=22\nMinBatteryPercent=91\n[Daemon]"
                   "\nDataDirectory=/srv/etc\n");
        write_file(root, "/etc/edged/edged.conf.d/10-a.conf",
                   "[Policy]\nMaxCores=3\nMaxMemoryMiB=100\n");
        write_file(root, "/etc/edged/edged.conf.d/20-b.conf",
                   "[Policy]\nMaxCores=4\nMaxMemoryMiB=200\n");
        /* strcmp order: "9-z" sorts after "20-b". */
        write_file(root, "/etc/edged/edged.conf.d/9-z.conf", "[Policy]\n\nMaxMemoryMiB=900\n");
        /* Not drop-ins. */
        write_file(root, "/etc/edged/edged.conf.d/99-x.conf~", "[Policy]\nMaxCores=99\n");
        write_file(root, "/etc/edged/edged.conf.d/README", "MaxCores=99\n");
        write_file(root, "/etc/edged/edged.conf.d/.hidden.conf", "[Policy]\nMaxCores=99\n");
        write_file(root, "/var/lib/edged/overrides.conf",
                   "[Policy]\nMaxCores=5\nMinBatteryPercent=92\n");

        assert_int_equal(load(root, fleet, ARRAY_SIZE(fleet), &c, &log), 0);
        assert_string_equal(log, "");
        assert_int_equal(c.knobs.max_cores, 6);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_FLEET, root, NULL, 0);
        assert_int_equal(c.knobs.min_battery_percent, 33);
        assert_int_equal(c.knobs.min_idle_percent, 11);
        assert_prov(&c, CONF_KEY_MIN_IDLE_PERCENT, KNOB_FILE, root, "/usr/lib/edged/edged.conf", 3);
        assert_int_equal(c.knobs.idle_window_sec, 22);
        assert_prov(&c, CONF_KEY_IDLE_WINDOW_SEC, KNOB_FILE, root, "/etc/edged/edged.conf", 3);
        assert_int_equal(c.knobs.max_memory_mib, 900);
        assert_prov(&c, CONF_KEY_MAX_MEMORY_MIB, KNOB_FILE, root,
                    "/etc/edged/edged.conf.d/9-z.conf", 3);
        assert_int_equal(c.model, CONF_MODEL_TINY);
        assert_prov(&c, CONF_KEY_MODEL, KNOB_FILE, root, "/usr/lib/edged/edged.conf", 6);
        assert_string_equal(c.data_directory, "/srv/etc");
        assert_int_equal(c.knobs.max_temperature_c, 75);
        assert_prov(&c, CONF_KEY_MAX_TEMPERATURE_C, KNOB_BUILTIN, root, NULL, 0);
        assert_int_equal(c.fleet_refused, 0);
        conf_done(&c);
        free(log);

        /* Peel the layers off one at a time: each time the next one down shows through. */
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 5);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_RUNTIME, root, "/var/lib/edged/overrides.conf", 2);
        assert_int_equal(c.knobs.min_battery_percent, 92);
        conf_done(&c);
        free(log);
        write_file(root, "/var/lib/edged/overrides.conf", "");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 4);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_FILE, root, "/etc/edged/edged.conf.d/20-b.conf",
                    2);
        assert_int_equal(c.knobs.min_battery_percent, 91);
        conf_done(&c);
        free(log);
        write_file(root, "/etc/edged/edged.conf.d/20-b.conf", "");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 3);
        conf_done(&c);
        free(log);
        write_file(root, "/etc/edged/edged.conf.d/10-a.conf", "");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 2);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_FILE, root, "/etc/edged/edged.conf", 2);
        conf_done(&c);
        free(log);
        write_file(root, "/etc/edged/edged.conf", "");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 1);
        assert_int_equal(c.knobs.min_battery_percent, 90);
        assert_string_equal(c.data_directory, "/srv/usr");
        conf_done(&c);
}

static void test_state_dir_and_config_option(void **state) {
        _cleanup_free_ char *root = make_root("paths"), *log = NULL, *alt = NULL, *sd = NULL,
                            *want = NULL;
        conf_load_options o;
        conf c;

        /* StateDirectory= (below the root) decides where overrides.conf is read. */
        write_file(root, "/etc/edged/edged.conf",
                   "[Policy]\nMaxCores=2\n[Daemon]\nStateDirectory=/srv/state\n");
        write_file(root, "/srv/state/overrides.conf", "[Policy]\nMaxCores=7\n");
        write_file(root, "/var/lib/edged/overrides.conf", "[Policy]\nMaxCores=8\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 7);
        assert_string_equal(c.state_directory, "/srv/state");
        want = root_file(root, "/srv/state/overrides.conf");
        assert_string_equal(c.overrides_path, want);
        conf_done(&c);

        /* --config replaces /etc/edged/edged.conf (drop-ins still apply); --state-dir is
         * taken as given. */
        write_file(root, "/alt.conf", "[Policy]\nMinIdlePercent=33\n");
        write_file(root, "/etc/edged/edged.conf.d/x.conf", "[Policy]\nIdleWindowSec=44\n");
        alt = root_file(root, "/alt.conf");
        sd = root_file(root, "/var/lib/edged");
        o = (conf_load_options){ .root = root, .config_file = alt, .state_dir = sd };
        test_capture_begin();
        assert_int_equal(conf_load(&o, &c), 0);
        free(log);
        log = test_capture_end();
        assert_string_equal(log, "");
        assert_int_equal(c.knobs.min_idle_percent, 33);
        assert_int_equal(c.knobs.idle_window_sec, 44);
        assert_int_equal(c.knobs.max_cores, 8);
        assert_string_equal(c.state_directory, CONF_DEFAULT_STATE_DIRECTORY);
        assert_int_equal(c.n_files, 4);
        assert_string_equal(c.files[1], alt);
        conf_done(&c);
}

static void test_profiles(void **state) {
        _cleanup_free_ char *root = make_root("profiles"), *log = NULL;
        policy_knobs q;
        conf c;

        /* An explicit key in the lowest file beats a Profile= in the highest. */
        write_file(root, "/usr/lib/edged/edged.conf", "[Policy]\nMaxCores=3\nMaxTemperatureC=80\n");
        write_file(root, "/etc/edged/edged.conf", "[Policy]\nProfile=performance\n");
        write_file(root, "/etc/edged/edged.conf.d/50-quiet.conf",
                   "[Policy]\nMinIdlePercent=10\nProfile=quiet\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_string_equal(log, "");
        conf_profile_preset(PROFILE_QUIET, &q);
        assert_int_equal(c.knobs.profile, PROFILE_QUIET);
        assert_prov(&c, CONF_KEY_PROFILE, KNOB_FILE, root, "/etc/edged/edged.conf.d/50-quiet.conf",
                    3);
        assert_int_equal(c.knobs.max_cores, 3);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_FILE, root, "/usr/lib/edged/edged.conf", 2);
        assert_int_equal(c.knobs.max_temperature_c, 80);
        assert_int_equal(c.knobs.min_idle_percent, 10);
        assert_int_equal(c.knobs.resume_temperature_c, q.resume_temperature_c);
        assert_prov(&c, CONF_KEY_RESUME_TEMPERATURE_C, KNOB_PROFILE, root, NULL, 0);
        assert_int_equal(c.knobs.max_foreground_delay_ms, 2);
        assert_int_equal(c.knobs.idle_window_sec, 60);
        assert_true(c.knobs.pause_on_user_active);
        conf_done(&c);
        free(log);

        /* A fleet Profile= moves the knobs nobody set, but a locked knob keeps following
         * the local profile (performance, from /etc/edged/edged.conf). */
        {
                const conf_pair fleet[] = { { "Profile", "quiet" } };
                write_file(root, "/etc/edged/edged.conf.d/50-quiet.conf",
                           "[Policy]\nLocked=MinIdlePercent\n");
                assert_int_equal(load(root, fleet, 1, &c, &log), 0);
                assert_string_equal(log, "");
                assert_int_equal(c.knobs.profile, PROFILE_QUIET);
                assert_prov(&c, CONF_KEY_PROFILE, KNOB_FLEET, root, NULL, 0);
                assert_int_equal(c.knobs.min_idle_percent, 25);
                assert_prov(&c, CONF_KEY_MIN_IDLE_PERCENT, KNOB_PROFILE, root, NULL, 0);
                assert_int_equal(c.knobs.max_cores, 3);
                assert_int_equal(c.knobs.max_temperature_c, 80);
                assert_int_equal(c.knobs.resume_temperature_c, 55);
                assert_int_equal(c.knobs.min_battery_percent, 80);
                assert_true(c.knobs.require_ac_power);
                assert_prov(&c, CONF_KEY_MIN_BATTERY_PERCENT, KNOB_PROFILE, root, NULL, 0);
                conf_done(&c);
        }
}

static void test_locked(void **state) {
        _cleanup_free_ char *root = make_root("locked"), *log = NULL;
        const conf_pair fleet[] = {
                { "MaxCores", "8" },
                { "Profile", "quiet" },
                { "MinIdlePercent", "10" },
                { "Foo", "1" },
                { "DataDirectory", "/x" },
                { "IdleWindowSec", "-1" },
                { "ActiveHours", "Sat 1:00-2:00" },
                { "Locked", "" },
        };
        conf c;

        write_file(root, "/etc/edged/edged.conf", "[Policy]\nMaxCores=2\nLocked=MaxCores\n");
        write_file(root, "/etc/edged/edged.conf.d/a.conf",
                   "[Policy]\nLocked=Profile,IdleWindowSec\n");
        assert_int_equal(load(root, fleet, ARRAY_SIZE(fleet), &c, &log), 0);
        assert_string_equal(log, "fleet policy: MaxCores: locked by the local admin, refused\n"
                                 "fleet policy: Profile: locked by the local admin, refused\n"
                                 "fleet policy: unknown key 'Foo', refused\n"
                                 "fleet policy: DataDirectory: not a [Policy] knob, refused\n"
                                 "fleet policy: IdleWindowSec: locked by the local admin, refused\n"
                                 "fleet policy: unknown key 'Locked', refused\n");
        assert_int_equal(c.locked, (1u << CONF_KEY_MAX_CORES) | (1u << CONF_KEY_PROFILE) |
                                           (1u << CONF_KEY_IDLE_WINDOW_SEC));
        assert_int_equal(c.fleet_refused, (1u << CONF_KEY_MAX_CORES) | (1u << CONF_KEY_PROFILE) |
                                                  (1u << CONF_KEY_DATA_DIRECTORY) |
                                                  (1u << CONF_KEY_IDLE_WINDOW_SEC));
        assert_int_equal(c.knobs.max_cores, 2);
        assert_int_equal(c.knobs.profile, PROFILE_BALANCED);
        assert_int_equal(c.knobs.min_idle_percent, 10);
        assert_prov(&c, CONF_KEY_MIN_IDLE_PERCENT, KNOB_FLEET, root, NULL, 0);
        assert_int_equal(c.knobs.n_active_windows, 1);
        assert_int_equal(c.knobs.active[0].days, SAT);
        assert_string_equal(c.data_directory, CONF_DEFAULT_DATA_DIRECTORY);
        conf_done(&c);
        free(log);

        /* An empty Locked= clears the list; invalid fleet values are refused, not fatal. */
        write_file(root, "/etc/edged/edged.conf.d/b.conf", "[Policy]\nLocked=\n");
        {
                const conf_pair f2[] = { { "MaxCores", "8" }, { "IdleWindowSec", "-1" } };
                assert_int_equal(load(root, f2, 2, &c, &log), 0);
                assert_string_equal(log, "fleet policy: IdleWindowSec: '-1' is not a whole number "
                                         "in [1, 3600], refused\n");
                assert_int_equal(c.locked, 0);
                assert_int_equal(c.knobs.max_cores, 8);
                assert_int_equal(c.fleet_refused, 1u << CONF_KEY_IDLE_WINDOW_SEC);
                conf_done(&c);
                free(log);
        }

        /* Fleet values that break ResumeTemperatureC < MaxTemperatureC are refused too. */
        {
                const conf_pair f3[] = { { "MaxTemperatureC", "60" }, { "MaxCores", "8" } };
                assert_int_equal(load(root, f3, 2, &c, &log), 0);
                assert_string_equal(log, "fleet policy: ResumeTemperatureC: 65 is not below "
                                         "MaxTemperatureC (60), refused\n");
                assert_int_equal(c.knobs.max_temperature_c, 75);
                assert_int_equal(c.knobs.max_cores, 8);
                assert_int_equal(c.fleet_refused, 1u << CONF_KEY_MAX_TEMPERATURE_C);
                conf_done(&c);
        }
}

static void test_show(void **state) {
        _cleanup_free_ char *root = make_root("show"), *log = NULL, *text = NULL, *want = NULL;
        _cleanup_free_ char *d = root_file(root, "/etc/edged/edged.conf.d/10-x.conf");
        _cleanup_free_ char *o = root_file(root, "/var/lib/edged/overrides.conf");
        const conf_pair fleet[] = { { "MinBatteryPercent", "42" } };
        conf c;

        write_file(root, "/etc/edged/edged.conf.d/10-x.conf",
                   "[Policy]\nProfile=quiet\nMaxCores=2\nActiveHours=Fri-Mon "
                   "19:00-08:00\nLocked=MaxCores\n");
        write_file(root, "/var/lib/edged/overrides.conf", "[Policy]\nPauseOnUserActive=no\n");
        assert_int_equal(load(root, fleet, 1, &c, &log), 0);
        assert_string_equal(log, "");
        assert_int_equal(conf_format_show(&c, &text), 0);
        want = fmt("Profile = quiet (%1$s:2)\n"
                   "MinIdlePercent = 80 (profile quiet)\n"
                   "IdleWindowSec = 60 (profile quiet)\n"
                   "MaxCores = 2 (%1$s:3) [locked]\n"
                   "MaxTemperatureC = 65 (profile quiet)\n"
                   "ResumeTemperatureC = 55 (profile quiet)\n"
                   "RequireACPower = yes (profile quiet)\n"
                   "MinBatteryPercent = 42 (fleet policy)\n"
                   "MaxForegroundDelayMs = 2 (profile quiet)\n"
                   "MaxMemoryMiB = 1024 (profile quiet)\n"
                   "ActiveHours = Mon,Fri-Sun 19:00-08:00 (%1$s:4)\n"
                   "PauseOnUserActive = no (runtime override %2$s:2)\n"
                   "DataDirectory = /var/lib/edged/data (built-in)\n"
                   "StateDirectory = /var/lib/edged (built-in)\n"
                   "CheckpointIntervalSec = 300 (built-in)\n"
                   "Model = small (built-in)\n"
                   "Server = (none: standalone) (built-in)\n"
                   "EnrollToken = (none) (built-in)\n"
                   "CAFile = (system) (built-in)\n"
                   "Serve = no (built-in)\n"
                   "ListenAddress = 127.0.0.1:7878 (built-in)\n"
                   "Token = (device secret) (built-in)\n"
                   "ModelFile = (task or checkpoint) (built-in)\n"
                   "SessionIdleSec = 60 (built-in)\n"
                   "MemoryMiB = 512 (built-in)\n"
                   "Layers = all (built-in)\n",
                   d, o);
        assert_string_equal(text, want);
        conf_done(&c);
}

/* [Federation]: the URL is checked, the token is kept but never shown or echoed in errors,
 * and the keys belong to their own section only. */
static void test_federation(void **state) {
        _cleanup_free_ char *root = make_root("federation"), *log = NULL, *text = NULL;
        conf c;

        write_file(root, "/etc/edged/edged.conf",
                   "[Federation]\nServer=https://agg.example.org:8443\nEnrollToken=s3cr3t-t0ken\n"
                   "CAFile=/etc/ssl/fleet.pem\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_string_equal(log, "");
        assert_string_equal(c.server, "https://agg.example.org:8443");
        assert_string_equal(c.enroll_token, "s3cr3t-t0ken");
        assert_string_equal(c.ca_file, "/etc/ssl/fleet.pem");
        assert_int_equal(conf_format_show(&c, &text), 0);
        assert_null(strstr(text, "s3cr3t"));
        assert_non_null(strstr(text, "EnrollToken = (set)"));
        conf_done(&c);
        free(log);
        log = NULL;

        static const struct {
                const char *text, *msg;
        } bad[] = {
                { "[Federation]\nServer=ftp://x\n", "edged.conf:2: Server: 'ftp://x' is not an http:// or https:// URL" },
                { "[Federation]\nServer=http://user:pw@x\n", "edged.conf:2: Server:" },
                { "[Federation]\nServer=http://x/\n", "trailing '/'" },
                { "[Federation]\nEnrollToken=has space secret\n", "edged.conf:2: EnrollToken: not a token" },
                { "[Federation]\nCAFile=relative.pem\n", "edged.conf:2: CAFile:" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                write_file(root, "/etc/edged/edged.conf", bad[i].text);
                assert_int_equal(load(root, NULL, 0, &c, &log), -EINVAL);
                if (!strstr(log, bad[i].msg))
                        fail_msg("%s: expected '%s' in: %s", bad[i].text, bad[i].msg, log);
                assert_null(strstr(log, "secret"));
                conf_done(&c);
                free(log);
                log = NULL;
        }
        /* a [Federation] key in [Daemon] is unknown there */
        write_file(root, "/etc/edged/edged.conf", "[Daemon]\nServer=http://x\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_non_null(strstr(log, "unknown key 'Server' in [Daemon]"));
        assert_null(c.server);
        conf_done(&c);
        /* empty Server= is standalone */
        free(log);
        log = NULL;
        write_file(root, "/etc/edged/edged.conf", "[Federation]\nServer=\n");
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_null(c.server);
        conf_done(&c);
}

static void test_override_roundtrip(void **state) {
        _cleanup_free_ char *root = make_root("override"), *sd = root_file(root, "/var/lib/edged");
        _cleanup_free_ char *path = root_file(root, "/var/lib/edged/overrides.conf");
        _cleanup_free_ char *log = NULL, *text = NULL;
        char err[256];
        struct stat st;
        size_t size;
        conf c;

        write_file(root, "/etc/edged/edged.conf", "[Policy]\nMaxCores=2\nMinIdlePercent=70\n");
        /* The state directory does not exist yet: set creates it. */
        assert_int_equal(conf_set_override(sd, "MaxCores", "3", err, sizeof(err)), 0);
        assert_int_equal(
                conf_set_override(sd, "ActiveHours", " Mon-Fri 19:00-08:00 ", err, sizeof(err)), 0);
        assert_int_equal(conf_set_override(sd, "MaxCores", "4", err, sizeof(err)), 0);
        assert_int_equal(read_full_file(path, 4096, (void **) &text, &size), 0);
        assert_string_equal(text, "# Runtime overrides (edgectl policy set/reset). Rewritten by "
                                  "edged; edits may be lost.\n"
                                  "[Policy]\nMaxCores=4\nActiveHours=Mon-Fri 19:00-08:00\n");
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0644);

        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_string_equal(log, "");
        assert_int_equal(c.knobs.max_cores, 4);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_RUNTIME, root, "/var/lib/edged/overrides.conf", 3);
        assert_int_equal(c.knobs.n_active_windows, 1);
        assert_int_equal(c.knobs.min_idle_percent, 70);
        conf_done(&c);
        free(log);

        /* Refused: bad values, unknown keys, daemon settings, line breaks. The file stays. */
        assert_int_equal(conf_set_override(sd, "MaxCores", "-3", err, sizeof(err)), -EINVAL);
        assert_string_equal(err, "MaxCores: '-3' is not a whole number in [0, 1024]");
        assert_int_equal(conf_set_override(sd, "Foo", "1", err, sizeof(err)), -EINVAL);
        assert_string_equal(err, "unknown key 'Foo'");
        assert_int_equal(conf_set_override(sd, "Model", "tiny", err, sizeof(err)), -EINVAL);
        assert_string_equal(err, "Model: not a [Policy] knob");
        assert_int_equal(
                conf_set_override(sd, "ActiveHours", "Mon 1:00-2:00\nMaxCores=9", err, sizeof(err)),
                -EINVAL);
        assert_string_equal(err, "ActiveHours: value contains a line break");
        assert_int_equal(conf_reset_override(sd, "Bar", err, sizeof(err)), -EINVAL);
        assert_string_equal(err, "unknown key 'Bar'");
        {
                _cleanup_free_ char *again = NULL;
                assert_int_equal(read_full_file(path, 4096, (void **) &again, &size), 0);
                assert_string_equal(again, text);
        }

        /* Reset one key: the file layer shows through again. */
        assert_int_equal(conf_reset_override(sd, "MaxCores", err, sizeof(err)), 0);
        assert_int_equal(conf_reset_override(sd, "MaxCores", err, sizeof(err)), 0);
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.max_cores, 2);
        assert_prov(&c, CONF_KEY_MAX_CORES, KNOB_FILE, root, "/etc/edged/edged.conf", 2);
        assert_int_equal(c.knobs.n_active_windows, 1);
        assert_prov(&c, CONF_KEY_ACTIVE_HOURS, KNOB_RUNTIME, root, "/var/lib/edged/overrides.conf",
                    3);
        conf_done(&c);
        free(log);

        /* Reset all: the file goes, twice is fine, and nothing is overridden. */
        assert_int_equal(conf_reset_override(sd, NULL, err, sizeof(err)), 0);
        assert_int_equal(access(path, F_OK), -1);
        assert_int_equal(conf_reset_override(sd, NULL, err, sizeof(err)), 0);
        assert_int_equal(conf_reset_override(sd, "MaxCores", err, sizeof(err)), 0);
        assert_int_equal(load(root, NULL, 0, &c, &log), 0);
        assert_int_equal(c.knobs.n_active_windows, 0);
        assert_int_equal(c.prov[CONF_KEY_ACTIVE_HOURS].origin, KNOB_BUILTIN);
        conf_done(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_ini_parse),
                cmocka_unit_test(test_parse_bool),
                cmocka_unit_test(test_active_hours),
                cmocka_unit_test(test_check_value),
                cmocka_unit_test(test_presets),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_error_messages),
                cmocka_unit_test(test_unreadable),
                cmocka_unit_test(test_lenient),
                cmocka_unit_test(test_precedence),
                cmocka_unit_test(test_state_dir_and_config_option),
                cmocka_unit_test(test_profiles),
                cmocka_unit_test(test_locked),
                cmocka_unit_test(test_show),
                cmocka_unit_test(test_federation),
                cmocka_unit_test(test_override_roundtrip),
        };

        return test_run_group("test-conf", tests, setup_group, test_tmpdir_remove);
}
