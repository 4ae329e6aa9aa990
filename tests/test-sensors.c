/* SPDX-License-Identifier: MIT */
/* The sysfs and procfs sensors: exact values parsed from fake machines under
 * tests/fixtures/sysfs, edge cases in small trees built on the fly, garbage fed to every
 * pure parser, and a sanity check against this machine's own /proc and /sys. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "macros.h"
#include "sensors-power.h"
#include "sensors-proc.h"
#include "sensors-thermal.h"
#include "sysfs-read.h"
#include "test-files.h"

/* ---- helpers ---- */

/* "<fixtures>/sysfs/<machine>": $EDGED_FIXTURES, else "tests/fixtures" (run from the top). */
static const char *machine_root(const char *machine) {
        static char buf[4096];
        const char *d = getenv("EDGED_FIXTURES");

        snprintf(buf, sizeof(buf), "%s/sysfs/%s", d && *d ? d : "tests/fixtures", machine);
        return buf;
}

/* Failures name the machine and the field, not just two numbers. */
#define EXPECT_INT(m, what, got, want)                                                             \
        do {                                                                                       \
                long long _g = (long long) (got), _w = (long long) (want);                         \
                if (_g != _w) {                                                                    \
                        print_error("%s: %s = %lld, want %lld\n", (m), (what), _g, _w);            \
                        fail();                                                                    \
                }                                                                                  \
        } while (0)

/* Exact: the fixtures hold decimals whose parse is the correctly rounded double, the same as
 * the literal. Both NaN also counts as equal. */
#define EXPECT_DOUBLE(m, what, got, want)                                                          \
        do {                                                                                       \
                double _g = (got), _w = (want);                                                    \
                if (!(_g == _w || (isnan(_g) && isnan(_w)))) {                                     \
                        print_error("%s: %s = %.17g, want %.17g\n", (m), (what), _g, _w);          \
                        fail();                                                                    \
                }                                                                                  \
        } while (0)

static void expect_times(const char *m, const char *what, const sensors_cpu_times *got,
                         const sensors_cpu_times *want) {
        if (memcmp(got, want, sizeof(*got)) != 0) {
                print_error("%s: %s = %llu %llu %llu %llu %llu %llu %llu %llu, want "
                            "%llu %llu %llu %llu %llu %llu %llu %llu\n",
                            m, what, (unsigned long long) got->user, (unsigned long long) got->nice,
                            (unsigned long long) got->system, (unsigned long long) got->idle,
                            (unsigned long long) got->iowait, (unsigned long long) got->irq,
                            (unsigned long long) got->softirq, (unsigned long long) got->steal,
                            (unsigned long long) want->user, (unsigned long long) want->nice,
                            (unsigned long long) want->system, (unsigned long long) want->idle,
                            (unsigned long long) want->iowait, (unsigned long long) want->irq,
                            (unsigned long long) want->softirq, (unsigned long long) want->steal);
                fail();
        }
}

/* Writes "<tmpdir>/<rel>", creating parent directories. */
static void put(const char *rel, const char *text) {
        _cleanup_close_ int fd = -1;
        char path[4096];

        assert_true(snprintf(path, sizeof(path), "%s/%s", test_tmpdir, rel) < (int) sizeof(path));
        for (char *s = strchr(path + strlen(test_tmpdir) + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = '\0';
                assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
                *s = '/';
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
}

/* A fresh empty directory "<tmpdir>/<name>" (a root for one test); returns its path. */
static char *new_root(const char *name) {
        char *path = test_tmp_path(name);
        assert_int_equal(mkdir(path, 0755), 0);
        return path;
}

static bool contains(const char *haystack, const char *needle) {
        if (!strstr(haystack, needle)) {
                print_error("\"%s\" not in \"%s\"\n", needle, haystack);
                return false;
        }
        return true;
}

/* ---- thermal ---- */

static const struct {
        const char *machine;
        bool available;
        unsigned counted, ignored, bad;
        int64_t max_mc;
        double max_c;
        int zone;
        const char *type;
} thermal_cases[] = {
        { "laptop-ac", true, 2, 2, 0, 52500, 52.5, 2, "x86_pkg_temp" },
        { "laptop-battery-15", true, 2, 1, 0, 41000, 41.0, 1, "x86_pkg_temp" },
        { "desktop", true, 1, 1, 0, 35000, 35.0, 0, "x86_pkg_temp" },
        { "raspberry-pi", true, 1, 0, 0, 51540, 51.54, 0, "cpu-thermal" },
        { "broken-zones", true, 1, 1, 9, 45000, 45.0, 10, "x86_pkg_temp" },
        { "two-batteries", true, 2, 0, 0, 60000, 60.0, 1, "x86_pkg_temp" },
};

static void test_thermal_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(thermal_cases); i++) {
                const char *m = thermal_cases[i].machine;
                sensors_thermal t;

                assert_int_equal(sensors_thermal_read(machine_root(m), NULL, &t), 0);
                EXPECT_INT(m, "available", t.available, thermal_cases[i].available);
                EXPECT_INT(m, "n_counted", t.n_counted, thermal_cases[i].counted);
                EXPECT_INT(m, "n_ignored", t.n_ignored, thermal_cases[i].ignored);
                EXPECT_INT(m, "n_bad", t.n_bad, thermal_cases[i].bad);
                EXPECT_INT(m, "max_millicelsius", t.max_millicelsius, thermal_cases[i].max_mc);
                EXPECT_DOUBLE(m, "max_celsius", t.max_celsius, thermal_cases[i].max_c);
                EXPECT_INT(m, "hottest_zone", t.hottest_zone, thermal_cases[i].zone);
                assert_string_equal(t.hottest_type, thermal_cases[i].type);
        }
}

static void test_thermal_type_lists(void **state) {
        const char *const nvme[] = { "nvme", NULL };
        const char *const globbed[] = { "x86_*", "nv?e", NULL };
        const char *const none[] = { NULL };
        const char *desktop = machine_root("desktop");
        _cleanup_free_ char *root = strdup(desktop);
        sensors_thermal t;

        /* The hotter NVMe zone counts only when asked for. */
        assert_int_equal(sensors_thermal_read(root, nvme, &t), 0);
        EXPECT_INT("desktop/nvme", "n_counted", t.n_counted, 1);
        EXPECT_INT("desktop/nvme", "n_ignored", t.n_ignored, 1);
        EXPECT_INT("desktop/nvme", "max_millicelsius", t.max_millicelsius, 44850);
        assert_string_equal(t.hottest_type, "nvme");
        EXPECT_INT("desktop/nvme", "hottest_zone", t.hottest_zone, 1);

        assert_int_equal(sensors_thermal_read(root, globbed, &t), 0);
        EXPECT_INT("desktop/glob", "n_counted", t.n_counted, 2);
        EXPECT_INT("desktop/glob", "n_ignored", t.n_ignored, 0);
        EXPECT_INT("desktop/glob", "max_millicelsius", t.max_millicelsius, 44850);

        /* Nothing counted: no temperature at all, not 0 °C. */
        assert_int_equal(sensors_thermal_read(root, none, &t), 0);
        EXPECT_INT("desktop/none", "n_counted", t.n_counted, 0);
        EXPECT_INT("desktop/none", "n_ignored", t.n_ignored, 2);
        assert_true(isnan(t.max_celsius));
        EXPECT_INT("desktop/none", "hottest_zone", t.hottest_zone, -1);
        assert_string_equal(t.hottest_type, "");

        /* Plain names match exactly; the default list is used for NULL. */
        assert_true(sensors_thermal_type_counted("cpu", NULL));
        assert_true(sensors_thermal_type_counted("cpu-thermal", NULL));
        assert_true(sensors_thermal_type_counted("soc_thermal", NULL));
        assert_true(sensors_thermal_type_counted("k10temp", NULL));
        assert_false(sensors_thermal_type_counted("cpu0-thermal", NULL));
        assert_false(sensors_thermal_type_counted("acpitz2", NULL));
        assert_false(sensors_thermal_type_counted("iwlwifi_1", NULL));
        assert_false(sensors_thermal_type_counted("", NULL));
        assert_true(sensors_thermal_type_counted("cpu0-thermal",
                                                 (const char *const[]){ "cpu*", NULL }));
        assert_false(
                sensors_thermal_type_counted("gpu-thermal", (const char *const[]){ "cpu*", NULL }));
}

static void test_thermal_temp_parser(void **state) {
        static const struct {
                const char *text;
                int r;
                int64_t mc;
        } cases[] = {
                { "45000\n", 0, 45000 },
                { "  -5000 \n", 0, -5000 },
                { "-40000", 0, -40000 },
                { "150000", 0, 150000 },
                { "0", 0, 0 },
                { "-40001", -ERANGE, 0 },
                { "150001", -ERANGE, 0 },
                { "999999", -ERANGE, 0 },
                { "-273150", -ERANGE, 0 },
                { "99999999999999999999999", -ERANGE, 0 },
                { "-99999999999999999999999", -ERANGE, 0 },
                { "", -EINVAL, 0 },
                { "\n", -EINVAL, 0 },
                { "abc", -EINVAL, 0 },
                { "45000abc", -EINVAL, 0 },
                { "45 000", -EINVAL, 0 },
                { "4.5", -EINVAL, 0 },
                { "+45000", -EINVAL, 0 },
                { "0x10", -EINVAL, 0 },
                { "-", -EINVAL, 0 },
                { "--5", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                int64_t mc = 12345;
                int r = sensors_parse_thermal_temp(cases[i].text, &mc);

                if (r != cases[i].r)
                        print_error("\"%s\": r = %d, want %d\n", cases[i].text, r, cases[i].r);
                assert_int_equal(r, cases[i].r);
                assert_int_equal(mc, r == 0 ? cases[i].mc : 12345); /* untouched on error */
        }
}

/* ---- power ---- */

static const struct {
        const char *machine;
        bool available, have_ac, ac_online;
        unsigned n_batteries;
        double percent;
        bool discharging;
        sensors_battery_status status;
        unsigned ignored, bad;
        bool on_battery;
} power_cases[] = {
        { "laptop-ac", true, true, true, 1, 87.0, false, SENSORS_BATTERY_CHARGING, 1, 0, false },
        { "laptop-battery-15", true, true, false, 1, 15.0, true, SENSORS_BATTERY_DISCHARGING, 1, 0,
          true },
        { "desktop", true, false, false, 0, NAN, false, SENSORS_BATTERY_UNKNOWN, 1, 0, false },
        { "raspberry-pi", false, false, false, 0, NAN, false, SENSORS_BATTERY_UNKNOWN, 0, 0,
          false },
        /* AC online "yes", BAT0 capacity "abc" and energy_full "", an entry without type */
        { "broken-zones", true, true, false, 1, NAN, true, SENSORS_BATTERY_DISCHARGING, 1, 4,
          true },
        /* (80 % * 20 Wh + 50 % * 60 Wh) / 80 Wh */
        { "two-batteries", true, true, false, 2, 57.5, true, SENSORS_BATTERY_DISCHARGING, 0, 0,
          true },
};

static void test_power_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(power_cases); i++) {
                const char *m = power_cases[i].machine;
                sensors_power p;

                assert_int_equal(sensors_power_read(machine_root(m), &p), 0);
                EXPECT_INT(m, "available", p.available, power_cases[i].available);
                EXPECT_INT(m, "have_ac", p.have_ac, power_cases[i].have_ac);
                EXPECT_INT(m, "ac_online", p.ac_online, power_cases[i].ac_online);
                EXPECT_INT(m, "n_batteries", p.n_batteries, power_cases[i].n_batteries);
                EXPECT_DOUBLE(m, "battery_percent", p.battery_percent, power_cases[i].percent);
                EXPECT_INT(m, "any_discharging", p.any_discharging, power_cases[i].discharging);
                EXPECT_INT(m, "status", p.status, power_cases[i].status);
                EXPECT_INT(m, "n_ignored", p.n_ignored, power_cases[i].ignored);
                EXPECT_INT(m, "n_bad", p.n_bad, power_cases[i].bad);
                EXPECT_INT(m, "on_battery", sensors_power_on_battery(&p),
                           power_cases[i].on_battery);
        }
}

static sensors_supply bat(sensors_battery_status status, double capacity, uint64_t energy_full) {
        return (sensors_supply){ .kind = SENSORS_SUPPLY_BATTERY,
                                 .present = true,
                                 .status = status,
                                 .capacity = capacity,
                                 .energy_full = energy_full };
}

static sensors_supply ac(bool online) {
        return (sensors_supply){ .kind = SENSORS_SUPPLY_AC, .present = true, .online = online };
}

static void test_power_combine(void **state) {
        sensors_supply s[4];
        sensors_power p;

        /* Without energy_full on every battery: the plain mean. */
        s[0] = bat(SENSORS_BATTERY_FULL, 100, 50000000);
        s[1] = bat(SENSORS_BATTERY_FULL, 70, 0);
        sensors_power_combine(s, 2, &p);
        assert_false(p.available); /* the reader's business */
        assert_int_equal(p.n_batteries, 2);
        assert_true(p.battery_percent == 85.0);
        assert_int_equal(p.status, SENSORS_BATTERY_FULL); /* both are */
        assert_false(p.have_ac);
        assert_false(sensors_power_on_battery(&p)); /* no AC supply, nothing discharging */

        /* A battery without capacity does not dilute the others; Charging beats Full. */
        s[0] = bat(SENSORS_BATTERY_CHARGING, 40, 30000000);
        s[1] = bat(SENSORS_BATTERY_FULL, NAN, 0);
        s[2] = ac(true);
        sensors_power_combine(s, 3, &p);
        assert_int_equal(p.n_batteries, 2);
        assert_true(p.battery_percent == 40.0);
        assert_int_equal(p.status, SENSORS_BATTERY_CHARGING);
        assert_true(p.have_ac && p.ac_online);
        assert_false(sensors_power_on_battery(&p));

        /* Not charging (charge threshold reached) plus Full; and Unknown alone. */
        s[0] = bat(SENSORS_BATTERY_NOT_CHARGING, 80, 0);
        s[1] = bat(SENSORS_BATTERY_FULL, 100, 0);
        sensors_power_combine(s, 2, &p);
        assert_int_equal(p.status, SENSORS_BATTERY_NOT_CHARGING);
        s[0] = bat(SENSORS_BATTERY_UNKNOWN, 80, 0);
        sensors_power_combine(s, 1, &p);
        assert_int_equal(p.status, SENSORS_BATTERY_UNKNOWN);

        /* Peripherals, empty bays and unknown supply kinds are ignored, whatever they say. */
        s[0] = bat(SENSORS_BATTERY_DISCHARGING, 5, 0);
        s[0].device_scope = true;
        s[1] = bat(SENSORS_BATTERY_DISCHARGING, 5, 0);
        s[1].present = false;
        s[2] = (sensors_supply){ .kind = SENSORS_SUPPLY_OTHER, .online = true, .n_bad = 1 };
        s[3] = ac(false);
        sensors_power_combine(s, 4, &p);
        assert_int_equal(p.n_ignored, 3);
        assert_int_equal(p.n_bad, 1);
        assert_int_equal(p.n_batteries, 0);
        assert_true(isnan(p.battery_percent));
        assert_false(p.any_discharging);
        assert_true(p.have_ac);
        assert_false(p.ac_online);
        assert_false(sensors_power_on_battery(&p)); /* no battery means mains */

        /* No AC supply listed but a battery discharging: on battery. */
        s[0] = bat(SENSORS_BATTERY_DISCHARGING, 60, 0);
        sensors_power_combine(s, 1, &p);
        assert_true(sensors_power_on_battery(&p));

        sensors_power_combine(NULL, 0, &p);
        assert_int_equal(p.n_batteries, 0);
        assert_false(p.have_ac);
        assert_true(isnan(p.battery_percent));

        assert_int_equal(sensors_battery_status_from_string("Not charging"),
                         SENSORS_BATTERY_NOT_CHARGING);
        assert_int_equal(sensors_battery_status_from_string("Discharging"),
                         SENSORS_BATTERY_DISCHARGING);
        assert_int_equal(sensors_battery_status_from_string("discharging"),
                         SENSORS_BATTERY_UNKNOWN);
        assert_int_equal(sensors_battery_status_from_string(""), SENSORS_BATTERY_UNKNOWN);
        assert_string_equal(sensors_battery_status_to_string(SENSORS_BATTERY_FULL), "Full");
        assert_string_equal(sensors_battery_status_to_string((sensors_battery_status) 99),
                            "Unknown");
        assert_int_equal(sensors_supply_kind_from_type("Mains"), SENSORS_SUPPLY_AC);
        assert_int_equal(sensors_supply_kind_from_type("USB"), SENSORS_SUPPLY_AC);
        assert_int_equal(sensors_supply_kind_from_type("USB_PD"), SENSORS_SUPPLY_AC);
        assert_int_equal(sensors_supply_kind_from_type("Battery"), SENSORS_SUPPLY_BATTERY);
        assert_int_equal(sensors_supply_kind_from_type("UPS"), SENSORS_SUPPLY_OTHER);
        assert_int_equal(sensors_supply_kind_from_type("USBX"), SENSORS_SUPPLY_OTHER);
}

/* Capacity from energy_now/energy_full or charge_now/charge_full when there is no capacity
 * file, a USB charger with online = 2, an old-style USB_DCP type. */
static void test_power_fallbacks(void **state) {
        _cleanup_free_ char *root = new_root("power-fallbacks");
        sensors_power p;

        put("power-fallbacks/sys/class/power_supply/BAT0/type", "Battery\n");
        put("power-fallbacks/sys/class/power_supply/BAT0/status", "Charging\n");
        put("power-fallbacks/sys/class/power_supply/BAT0/energy_now", "30000000\n");
        put("power-fallbacks/sys/class/power_supply/BAT0/energy_full", "40000000\n");
        put("power-fallbacks/sys/class/power_supply/BAT1/type", "Battery\n");
        put("power-fallbacks/sys/class/power_supply/BAT1/status", "Full\n");
        /* a worn battery reports more charge than its full: capped at 100 % */
        put("power-fallbacks/sys/class/power_supply/BAT1/charge_now", "2100000\n");
        put("power-fallbacks/sys/class/power_supply/BAT1/charge_full", "2000000\n");
        put("power-fallbacks/sys/class/power_supply/usb/type", "USB\n");
        put("power-fallbacks/sys/class/power_supply/usb/online", "2\n");
        put("power-fallbacks/sys/class/power_supply/dcp/type", "USB_DCP\n");
        put("power-fallbacks/sys/class/power_supply/dcp/online", "0\n");

        assert_int_equal(sensors_power_read(root, &p), 0);
        assert_true(p.available);
        assert_int_equal(p.n_batteries, 2);
        /* BAT1 has no energy_full, so the plain mean of 75 % and 100 % */
        assert_true(p.battery_percent == 87.5);
        assert_int_equal(p.status, SENSORS_BATTERY_CHARGING);
        assert_true(p.have_ac);
        assert_true(p.ac_online);
        assert_int_equal(p.n_ignored, 0);
        assert_int_equal(p.n_bad, 0);

        /* online out of range is garbage, not "online" */
        put("power-fallbacks/sys/class/power_supply/usb/online", "3\n");
        assert_int_equal(sensors_power_read(root, &p), 0);
        assert_false(p.ac_online);
        assert_int_equal(p.n_bad, 1);
}

/* ---- PSI ---- */

typedef struct {
        bool available, have_full;
        sensors_psi_line some, full;
} psi_want;

static const struct {
        const char *machine;
        psi_want cpu, memory, io;
} psi_cases[] = {
        { "laptop-ac",
          { true, true, { 1.52, 0.97, 0.61, 48213377 }, { 0, 0, 0, 0 } },
          { true, true, { 0.00, 0.05, 0.02, 153021 }, { 0.00, 0.03, 0.01, 120332 } },
          { true, true, { 0.41, 0.37, 0.29, 9802213 }, { 0.31, 0.27, 0.20, 7921003 } } },
        { "laptop-battery-15",
          { true, true, { 0.00, 0.02, 0.01, 1204331 }, { 0, 0, 0, 0 } },
          { true, true, { 0, 0, 0, 0 }, { 0, 0, 0, 0 } },
          { true, true, { 0.12, 0.08, 0.03, 304112 }, { 0.10, 0.06, 0.02, 270034 } } },
        /* Linux 5.10: no "full" line for cpu */
        { "desktop",
          { true, false, { 12.40, 10.93, 9.12, 7712344112 }, { 0, 0, 0, 0 } },
          { true, true, { 0.00, 0.01, 0.00, 40211 }, { 0.00, 0.00, 0.00, 30112 } },
          { true, true, { 2.33, 1.87, 1.02, 91231455 }, { 1.98, 1.50, 0.81, 80123002 } } },
        { "raspberry-pi",
          { true, true, { 0.25, 0.30, 0.27, 9812203 }, { 0, 0, 0, 0 } },
          { true, true, { 0.00, 0.00, 0.00, 1201 }, { 0.00, 0.00, 0.00, 1002 } },
          { true, true, { 0.05, 0.11, 0.09, 1203344 }, { 0.05, 0.10, 0.08, 1101233 } } },
        { "broken-zones",
          { true, true, { 3.00, 2.00, 1.00, 3000000 }, { 0, 0, 0, 0 } },
          { true, true, { 0, 0, 0, 0 }, { 0, 0, 0, 0 } },
          { true, true, { 0.50, 0.40, 0.30, 500000 }, { 0.25, 0.20, 0.15, 250000 } } },
        { "two-batteries",
          { true, true, { 0.40, 0.35, 0.30, 2211033 }, { 0, 0, 0, 0 } },
          { true, true, { 0, 0, 0, 0 }, { 0, 0, 0, 0 } },
          { true, true, { 0.20, 0.15, 0.10, 411203 }, { 0.18, 0.12, 0.08, 380112 } } },
};

static void expect_psi_line(const char *m, const char *what, const sensors_psi_line *got,
                            const sensors_psi_line *want) {
        char name[64];

        snprintf(name, sizeof(name), "%s.avg10", what);
        EXPECT_DOUBLE(m, name, got->avg10, want->avg10);
        snprintf(name, sizeof(name), "%s.avg60", what);
        EXPECT_DOUBLE(m, name, got->avg60, want->avg60);
        snprintf(name, sizeof(name), "%s.avg300", what);
        EXPECT_DOUBLE(m, name, got->avg300, want->avg300);
        snprintf(name, sizeof(name), "%s.total_us", what);
        EXPECT_INT(m, name, got->total_us, want->total_us);
}

static void expect_psi(const char *m, const char *what, const sensors_psi_resource *got,
                       const psi_want *want) {
        char name[64];

        snprintf(name, sizeof(name), "%s.available", what);
        EXPECT_INT(m, name, got->available, want->available);
        snprintf(name, sizeof(name), "%s.have_full", what);
        EXPECT_INT(m, name, got->have_full, want->have_full);
        snprintf(name, sizeof(name), "%s.some", what);
        expect_psi_line(m, name, &got->some, &want->some);
        snprintf(name, sizeof(name), "%s.full", what);
        expect_psi_line(m, name, &got->full, &want->full);
}

static void test_psi_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(psi_cases); i++) {
                const char *m = psi_cases[i].machine;
                sensors_psi psi;

                assert_int_equal(sensors_psi_read(machine_root(m), &psi), 0);
                EXPECT_INT(m, "available", psi.available, true);
                expect_psi(m, "cpu", &psi.cpu, &psi_cases[i].cpu);
                expect_psi(m, "memory", &psi.memory, &psi_cases[i].memory);
                expect_psi(m, "io", &psi.io, &psi_cases[i].io);
        }
}

/* ---- meminfo, loadavg ---- */

static const struct {
        const char *machine;
        sensors_meminfo mem;
        sensors_loadavg load;
} misc_cases[] = {
        { "laptop-ac", { 16158424, 11893212 }, { 0.52, 0.58, 0.59, 2, 1211, 48213 } },
        { "laptop-battery-15", { 7975420, 5230144 }, { 0.08, 0.12, 0.10, 1, 987, 30211 } },
        { "desktop", { 32791648, 27102416 }, { 3.17, 2.85, 2.40, 5, 1843, 112874 } },
        { "raspberry-pi", { 3882720, 3381112 }, { 0.11, 0.09, 0.08, 1, 245, 8123 } },
        { "broken-zones", { 4028776, 2977088 }, { 1.00, 1.00, 1.00, 1, 300, 5000 } },
        { "two-batteries", { 8046904, 6012340 }, { 0.25, 0.31, 0.27, 1, 702, 22117 } },
};

static void test_meminfo_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(misc_cases); i++) {
                const char *m = misc_cases[i].machine;
                sensors_meminfo mem;

                assert_int_equal(sensors_meminfo_read(machine_root(m), &mem), 0);
                EXPECT_INT(m, "MemTotal", mem.mem_total_kb, misc_cases[i].mem.mem_total_kb);
                EXPECT_INT(m, "MemAvailable", mem.mem_available_kb,
                           misc_cases[i].mem.mem_available_kb);
        }
}

static void test_loadavg_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(misc_cases); i++) {
                const char *m = misc_cases[i].machine;
                const sensors_loadavg *want = &misc_cases[i].load;
                sensors_loadavg l;

                assert_int_equal(sensors_loadavg_read(machine_root(m), &l), 0);
                EXPECT_DOUBLE(m, "load1", l.load1, want->load1);
                EXPECT_DOUBLE(m, "load5", l.load5, want->load5);
                EXPECT_DOUBLE(m, "load15", l.load15, want->load15);
                EXPECT_INT(m, "n_runnable", l.n_runnable, want->n_runnable);
                EXPECT_INT(m, "n_threads", l.n_threads, want->n_threads);
                EXPECT_INT(m, "last_pid", l.last_pid, want->last_pid);
        }
}

/* ---- /proc/stat ---- */

static const struct {
        const char *machine;
        sensors_cpu_times all;
        size_t n_cpus;
        uint32_t ids[8];
        sensors_cpu_times first, last;
} stat_cases[] = {
        { "laptop-ac",
          { 40264, 186, 16420, 353473, 1185, 0, 218, 0 },
          4,
          { 0, 1, 2, 3 },
          { 10132, 52, 4120, 88231, 310, 0, 95, 0 },
          { 9712, 33, 4302, 88480, 280, 0, 22, 0 } },
        { "laptop-battery-15",
          { 12284, 46, 6057, 201102, 316, 0, 55, 0 },
          4,
          { 0, 1, 2, 3 },
          { 3120, 12, 1544, 50123, 88, 0, 31, 0 },
          { 2876, 5, 1613, 50412, 62, 0, 4, 0 } },
        /* cpu3 offline; guest time (583311 in all) is inside user and not counted again */
        { "desktop",
          { 1431968, 7490, 283932, 3677706, 7745, 0, 12589, 0 },
          7,
          { 0, 1, 2, 4, 5, 6, 7 },
          { 210345, 1203, 40122, 512330, 1204, 0, 2210, 0 },
          { 200456, 998, 40101, 521876, 1121, 0, 1698, 0 } },
        { "raspberry-pi",
          { 31355, 0, 11600, 482950, 673, 0, 653, 0 },
          4,
          { 0, 1, 2, 3 },
          { 8012, 0, 3011, 120334, 201, 0, 412, 0 },
          { 7654, 0, 2801, 121003, 145, 0, 66, 0 } },
        { "broken-zones",
          { 11000, 300, 4500, 78000, 1200, 0, 110, 0 },
          2,
          { 0, 1 },
          { 5000, 100, 2000, 40000, 500, 0, 50, 0 },
          { 6000, 200, 2500, 38000, 700, 0, 60, 0 } },
        { "two-batteries",
          { 15920, 74, 7470, 240840, 433, 0, 90, 0 },
          4,
          { 0, 1, 2, 3 },
          { 4100, 20, 1900, 60010, 120, 0, 44, 0 },
          { 3870, 11, 1800, 60410, 98, 0, 11, 0 } },
};

static void test_stat_machines(void **state) {
        for (size_t i = 0; i < ARRAY_SIZE(stat_cases); i++) {
                const char *m = stat_cases[i].machine;
                _cleanup_(sensors_stat_done) sensors_stat st = {};

                assert_int_equal(sensors_stat_read(machine_root(m), &st), 0);
                expect_times(m, "cpu", &st.all, &stat_cases[i].all);
                EXPECT_INT(m, "n_cpus", st.n_cpus, stat_cases[i].n_cpus);
                for (size_t c = 0; c < st.n_cpus; c++)
                        EXPECT_INT(m, "cpu id", st.cpus[c].id, stat_cases[i].ids[c]);
                expect_times(m, "first cpuN", &st.cpus[0].times, &stat_cases[i].first);
                expect_times(m, "last cpuN", &st.cpus[st.n_cpus - 1].times, &stat_cases[i].last);
        }
        /* the aggregate of the online-only machines is the sum of their CPUs */
        assert_int_equal(sensors_cpu_times_total(&stat_cases[0].all),
                         40264 + 186 + 16420 + 353473 + 1185 + 218);
}

/* Two hand-made snapshots. Deltas: user 120, nice 10, system 40, idle 560, iowait 40, irq 5,
 * softirq 5, steal 20: 800 ticks, of which 600 idle (idle + iowait): 75 % idle, 25 % busy.
 * guest (field 9) grew by 100 but is already inside user. */
static void test_cpu_usage(void **state) {
        const char *before = "cpu  1000 100 500 8000 200 10 20 30 400 0\n"
                             "cpu0 1000 100 500 8000 200 10 20 30 400 0\n"
                             "cpu1 0 0 0 0 0 0 0 0 0 0\n";
        const char *after = "cpu  1120 110 540 8560 240 15 25 50 500 0\n"
                            "cpu0 1120 110 540 8560 240 15 25 50 500 0\n"
                            "cpu1 30 0 10 60 0 0 0 0 0 0\n";
        _cleanup_(sensors_stat_done) sensors_stat a = {};
        _cleanup_(sensors_stat_done) sensors_stat b = {};
        sensors_cpu_times prev, cur;
        sensors_cpu_usage u;

        assert_int_equal(sensors_parse_stat(before, &a), 0);
        assert_int_equal(sensors_parse_stat(after, &b), 0);
        assert_int_equal(sensors_cpu_usage_between(&a.all, &b.all, &u), 0);
        assert_int_equal(u.ticks, 800);
        assert_true(u.idle_pct == 75.0);
        assert_true(u.busy_pct == 25.0);

        /* cpu1: 30 user + 10 system + 60 idle: 60 % idle, 40 % busy */
        assert_int_equal(sensors_cpu_usage_between(&a.cpus[1].times, &b.cpus[1].times, &u), 0);
        assert_int_equal(u.ticks, 100);
        assert_true(u.idle_pct == 60.0);
        assert_true(u.busy_pct == 40.0);

        /* iowait going backwards (tickless kernels) counts as 0, not as 2^64 - 10 */
        prev = (sensors_cpu_times){ .user = 100, .idle = 100, .iowait = 50 };
        cur = (sensors_cpu_times){ .user = 150, .idle = 150, .iowait = 40 };
        assert_int_equal(sensors_cpu_usage_between(&prev, &cur, &u), 0);
        assert_int_equal(u.ticks, 100);
        assert_true(u.idle_pct == 50.0);

        /* no tick between the snapshots: nothing to say yet */
        assert_int_equal(sensors_cpu_usage_between(&prev, &prev, &u), -EAGAIN);
        /* everything went backwards (snapshots swapped): no tick either */
        assert_int_equal(sensors_cpu_usage_between(&b.all, &a.all, &u), -EAGAIN);

        /* all idle, all busy */
        prev = (sensors_cpu_times){};
        cur = (sensors_cpu_times){ .idle = 7 };
        assert_int_equal(sensors_cpu_usage_between(&prev, &cur, &u), 0);
        assert_true(u.idle_pct == 100.0 && u.busy_pct == 0.0);
        cur = (sensors_cpu_times){ .steal = 3, .softirq = 4 };
        assert_int_equal(sensors_cpu_usage_between(&prev, &cur, &u), 0);
        assert_true(u.idle_pct == 0.0 && u.busy_pct == 100.0);
}

/* ---- garbage to the pure parsers ---- */

static void test_parse_numbers(void **state) {
        static const struct {
                const char *s;
                int r;
                int64_t v;
        } ints[] = {
                { "0", 0, 0 },
                { "-0", 0, 0 },
                { "007", 0, 7 },
                { " 42\n", 0, 42 },
                { "9223372036854775807", 0, INT64_MAX },
                { "-9223372036854775808", 0, INT64_MIN },
                { "9223372036854775808", -ERANGE, 0 },
                { "-9223372036854775809", -ERANGE, 0 },
                { "18446744073709551616", -ERANGE, 0 },
                { "", -EINVAL, 0 },
                { "   ", -EINVAL, 0 },
                { "-", -EINVAL, 0 },
                { "+1", -EINVAL, 0 },
                { "1 2", -EINVAL, 0 },
                { "12a", -EINVAL, 0 },
                { "a12", -EINVAL, 0 },
                { "0x1f", -EINVAL, 0 },
                { "1e3", -EINVAL, 0 },
                { "1.0", -EINVAL, 0 },
                { "١٢", -EINVAL, 0 }, /* Arabic-Indic digits are not digits here */
        };
        int64_t i64;
        uint64_t u64;
        double d;

        for (size_t i = 0; i < ARRAY_SIZE(ints); i++) {
                int r = sysfs_parse_int64(ints[i].s, INT64_MIN, INT64_MAX, &i64);
                if (r != ints[i].r)
                        print_error("int64 \"%s\": r = %d, want %d\n", ints[i].s, r, ints[i].r);
                assert_int_equal(r, ints[i].r);
                if (r == 0)
                        assert_true(i64 == ints[i].v);
        }

        /* ranges */
        assert_int_equal(sysfs_parse_int64("100", 0, 100, &i64), 0);
        assert_int_equal(sysfs_parse_int64("101", 0, 100, &i64), -ERANGE);
        assert_int_equal(sysfs_parse_int64("-1", 0, 100, &i64), -ERANGE);

        /* unsigned: negative numbers are out of range, "-" alone is not a number */
        assert_int_equal(sysfs_parse_uint64("18446744073709551615", UINT64_MAX, &u64), 0);
        assert_true(u64 == UINT64_MAX);
        assert_int_equal(sysfs_parse_uint64("18446744073709551616", UINT64_MAX, &u64), -ERANGE);
        assert_int_equal(sysfs_parse_uint64("99999999999999999999999", UINT64_MAX, &u64), -ERANGE);
        assert_int_equal(sysfs_parse_uint64("-1", UINT64_MAX, &u64), -ERANGE);
        assert_int_equal(sysfs_parse_uint64("-0", UINT64_MAX, &u64), -ERANGE);
        assert_int_equal(sysfs_parse_uint64("-", UINT64_MAX, &u64), -EINVAL);
        assert_int_equal(sysfs_parse_uint64("-x", UINT64_MAX, &u64), -EINVAL);
        assert_int_equal(sysfs_parse_uint64("", UINT64_MAX, &u64), -EINVAL);
        assert_int_equal(sysfs_parse_uint64("2", 1, &u64), -ERANGE);
        /* the _n forms see exactly n bytes */
        assert_int_equal(sysfs_parse_uint64_n("123456", 3, UINT64_MAX, &u64), 0);
        assert_true(u64 == 123);
        assert_int_equal(sysfs_parse_uint64_n("12 ", 3, UINT64_MAX, &u64), -EINVAL);
        assert_int_equal(sysfs_parse_int64_n("", 0, INT64_MIN, INT64_MAX, &i64), -EINVAL);

        /* decimals, correctly rounded: equal to the C literal */
        assert_int_equal(sysfs_parse_decimal("12.57", 0, 100, &d), 0);
        assert_true(d == 12.57);
        assert_int_equal(sysfs_parse_decimal("0.1", 0, 100, &d), 0);
        assert_true(d == 0.1);
        assert_int_equal(sysfs_parse_decimal("100.00\n", 0, 100, &d), 0);
        assert_true(d == 100.0);
        assert_int_equal(sysfs_parse_decimal("-1.5", -10, 10, &d), 0);
        assert_true(d == -1.5);
        assert_int_equal(sysfs_parse_decimal("-0.00", -10, 10, &d), 0);
        assert_false(signbit(d));
        assert_int_equal(sysfs_parse_decimal("7", 0, 100, &d), 0);
        assert_true(d == 7.0);
        assert_int_equal(sysfs_parse_decimal("100.01", 0, 100, &d), -ERANGE);
        assert_int_equal(sysfs_parse_decimal("-0.01", 0, 100, &d), -ERANGE);
        assert_int_equal(sysfs_parse_decimal("12345678901234567890", 0, 1e30, &d), -ERANGE);
        static const char *const bad_decimals[] = {
                "",    " ",   ".",   "-",     "1.",   ".5",     "1..2", "1.2.3", "1,5",
                "1e3", "nan", "inf", "0x1p3", "+1.0", "1.0abc", "- 1",  "1 .5",
        };
        for (size_t i = 0; i < ARRAY_SIZE(bad_decimals); i++) {
                int r = sysfs_parse_decimal(bad_decimals[i], -1e30, 1e30, &d);
                if (r != -EINVAL)
                        print_error("decimal \"%s\": r = %d\n", bad_decimals[i], r);
                assert_int_equal(r, -EINVAL);
        }

        /* strip */
        char s[] = " \t a b \n\n";
        assert_string_equal(sysfs_strip(s), "a b");
        char e[] = " \n ";
        assert_string_equal(sysfs_strip(e), "");
}

static void test_parse_psi_garbage(void **state) {
        static const struct {
                const char *text;
                int r;
        } cases[] = {
                { "", -ENODATA },
                { "\n\n", -ENODATA },
                { "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", -ENODATA },
                { "some avg10=0.00 avg60=0.00 avg300=0.00\n", -EBADMSG }, /* no total */
                { "some avg10=0.00 avg60=0.00 total=0\n", -EBADMSG },     /* no avg300 */
                { "some avg10=0.00 avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", -EBADMSG },
                { "some avg10=abc avg60=0.00 avg300=0.00 total=0\n", -EBADMSG },
                { "some avg10=-1.00 avg60=0.00 avg300=0.00 total=0\n", -ERANGE },
                { "some avg10=100.01 avg60=0.00 avg300=0.00 total=0\n", -ERANGE },
                { "some avg10=0.00 avg60=0.00 avg300=0.00 total=-5\n", -ERANGE },
                { "some avg10=0.00 avg60=0.00 avg300=0.00 total=99999999999999999999\n", -ERANGE },
                { "some avg10= avg60=0.00 avg300=0.00 total=0\n", -EBADMSG },
                { "some avg10 avg60=0.00 avg300=0.00 total=0\n", -EBADMSG },
                { "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                  "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                  -EBADMSG },
                { "half avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", -EBADMSG },
                { "some\n", -EBADMSG },
        };
        sensors_psi_resource res;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                int r = sensors_parse_psi(cases[i].text, &res);
                if (r != cases[i].r)
                        print_error("psi \"%s\": r = %d, want %d\n", cases[i].text, r, cases[i].r);
                assert_int_equal(r, cases[i].r);
        }

        /* keys from a newer kernel are skipped; no trailing newline is fine */
        assert_int_equal(sensors_parse_psi("some avg10=1.50 avg60=0.00 avg300=0.00 avg900=0.10 "
                                           "total=77",
                                           &res),
                         0);
        assert_true(res.available);
        assert_false(res.have_full);
        assert_true(res.some.avg10 == 1.5);
        assert_int_equal(res.some.total_us, 77);
}

static void test_parse_meminfo_garbage(void **state) {
        static const struct {
                const char *text;
                int r;
        } cases[] = {
                { "", -ENODATA },
                { "MemTotal: 100 kB\n", -ENODATA }, /* no MemAvailable: Linux < 3.14 */
                { "MemAvailable: 100 kB\n", -ENODATA },
                { "MemTotal: 100 kB\nMemAvailable: x kB\n", -EBADMSG },
                { "MemTotal: 100 kB\nMemAvailable: -5 kB\n", -ERANGE },
                { "MemTotal: 100 kB\nMemAvailable: 99999999999999999999 kB\n", -ERANGE },
                { "MemTotal: 100 kB\nMemAvailable: 50\n", -EBADMSG },    /* no unit */
                { "MemTotal: 100 kB\nMemAvailable: 50 MB\n", -EBADMSG }, /* wrong unit */
                { "MemTotal: 100 kB\nMemAvailable: 50 kB extra\n", -EBADMSG },
                { "MemTotal: 100 kB\nMemTotal: 100 kB\nMemAvailable: 50 kB\n", -EBADMSG },
                { "MemTotal:\nMemAvailable: 50 kB\n", -EBADMSG },
                /* "MemTotal" without the colon is some other key */
                { "MemTotal 100 kB\nMemAvailable: 50 kB\n", -ENODATA },
        };
        sensors_meminfo m;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                int r = sensors_parse_meminfo(cases[i].text, &m);
                if (r != cases[i].r)
                        print_error("meminfo \"%s\": r = %d, want %d\n", cases[i].text, r,
                                    cases[i].r);
                assert_int_equal(r, cases[i].r);
        }
        /* other lines, even odd ones, are not our business */
        assert_int_equal(sensors_parse_meminfo("Foo: bar\nHugePages_Total:       0\n"
                                               "MemAvailable:\t 7 kB\nMemTotal: 9 kB",
                                               &m),
                         0);
        assert_int_equal(m.mem_total_kb, 9);
        assert_int_equal(m.mem_available_kb, 7);
}

static void test_parse_loadavg_garbage(void **state) {
        static const struct {
                const char *text;
                int r;
        } cases[] = {
                { "", -ENODATA },
                { "\n", -EBADMSG },
                { "0.52 0.58 0.59 2/1211\n", -EBADMSG },
                { "0.52 0.58 0.59 2/1211 48213 7\n", -EBADMSG },
                { "0.52 0.58 0.59 2/1211 48213\ngarbage\n", -EBADMSG },
                { "0.52 0.58 0.59 21211 48213\n", -EBADMSG },
                { "0.52 0.58 0.59 2/ 48213\n", -EBADMSG },
                { "0.52 0.58 0.59 /1211 48213\n", -EBADMSG },
                { "0.52 0.58 0.59 2/1211/3 48213\n", -EBADMSG },
                { "-0.52 0.58 0.59 2/1211 48213\n", -ERANGE },
                { "0.52 0.58 abc 2/1211 48213\n", -EBADMSG },
                { "0.52 0.58 0.59 2/1211 99999999999\n", -ERANGE },
                { "0.52 0.58 0.59 2/4294967296 48213\n", -ERANGE },
                { "nan 0.58 0.59 2/1211 48213\n", -EBADMSG },
        };
        sensors_loadavg l;

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                int r = sensors_parse_loadavg(cases[i].text, &l);
                if (r != cases[i].r)
                        print_error("loadavg \"%s\": r = %d, want %d\n", cases[i].text, r,
                                    cases[i].r);
                assert_int_equal(r, cases[i].r);
        }
        assert_int_equal(sensors_parse_loadavg("12.00 3.50 0.00 17/4000 1", &l), 0);
        assert_true(l.load1 == 12.0 && l.load5 == 3.5 && l.load15 == 0.0);
        assert_int_equal(l.n_runnable, 17);
        assert_int_equal(l.n_threads, 4000);
        assert_int_equal(l.last_pid, 1);
}

static void test_parse_stat_garbage(void **state) {
        static const struct {
                const char *text;
                int r;
        } cases[] = {
                { "", -ENODATA },
                { "intr 1 2 3\nctxt 5\n", -ENODATA },
                { "cpu  1 2 3 4\n", -ENODATA },             /* no cpuN */
                { "cpu0 1 2 3 4\n", -ENODATA },             /* no cpu */
                { "cpu  1 2 3\ncpu0 1 2 3 4\n", -EBADMSG }, /* fewer than 4 fields */
                { "cpu  1 2 3 4\ncpu0 1 2 3\n", -EBADMSG },
                { "cpu  1 2 x 4\ncpu0 1 2 3 4\n", -EBADMSG },
                { "cpu  1 2 3 4\ncpu0 1 -2 3 4\n", -ERANGE },
                { "cpu  1 2 3 4 5 6 7 8 9 1.5\ncpu0 1 2 3 4\n", -EBADMSG }, /* even past steal */
                { "cpu  1 2 3 4\ncpu0 1 2 3 99999999999999999999999\n", -ERANGE },
                { "cpu  1 2 3 4\ncpu  1 2 3 4\ncpu0 1 2 3 4\n", -EBADMSG },
                { "cpu  1 2 3 4\ncpu1 1 2 3 4\ncpu0 1 2 3 4\n", -EBADMSG }, /* not increasing */
                { "cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu0 1 2 3 4\n", -EBADMSG },
                { "cpu  1 2 3 4\ncpux 1 2 3 4\n", -EBADMSG },
                { "cpu  1 2 3 4\ncpu-1 1 2 3 4\n", -ERANGE },
                { "cpu  1 2 3 4\ncpu99999999 1 2 3 4\n", -ERANGE },
        };

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                sensors_stat st = { .n_cpus = 99 };
                int r = sensors_parse_stat(cases[i].text, &st);
                if (r != cases[i].r)
                        print_error("stat \"%s\": r = %d, want %d\n", cases[i].text, r, cases[i].r);
                assert_int_equal(r, cases[i].r);
                /* left empty: nothing to free */
                assert_null(st.cpus);
                assert_int_equal(st.n_cpus, 0);
        }

        /* An old kernel's four fields: the rest are 0. Many CPUs grow the array. */
        _cleanup_free_ char *big = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&big, &len);
        assert_non_null(f);
        fprintf(f, "cpu  1 2 3 4\n");
        for (int i = 0; i < 300; i++)
                fprintf(f, "cpu%d %d 0 0 %d\n", i * 2, i, 1000 - i);
        fprintf(f, "intr 5 0 0\n");
        assert_int_equal(fclose(f), 0);
        _cleanup_(sensors_stat_done) sensors_stat st = {};
        assert_int_equal(sensors_parse_stat(big, &st), 0);
        assert_int_equal(st.n_cpus, 300);
        assert_int_equal(st.all.idle, 4);
        assert_int_equal(st.all.iowait, 0);
        assert_int_equal(st.cpus[299].id, 598);
        assert_int_equal(st.cpus[299].times.user, 299);
        assert_int_equal(st.cpus[299].times.idle, 701);
}

/* ---- reading files ---- */

static void test_read_helpers(void **state) {
        _cleanup_free_ char *root = new_root("read");
        _cleanup_close_ int fd = -1;
        char buf[8], path[64];
        size_t n;
        int64_t v;

        put("read/seven", "1234567");
        put("read/eight", "12345678");
        put("read/num", " 42\n");
        assert_int_equal(sysfs_root_open(root, &fd), 0);

        /* exactly size - 1 bytes fit; one more is -EFBIG */
        assert_int_equal(sysfs_read_at(fd, "seven", buf, sizeof(buf), &n), 0);
        assert_int_equal(n, 7);
        assert_string_equal(buf, "1234567");
        assert_int_equal(sysfs_read_at(fd, "eight", buf, sizeof(buf), &n), -EFBIG);
        assert_int_equal(sysfs_read_at(fd, "missing", buf, sizeof(buf), &n), -ENOENT);
        assert_int_equal(sysfs_read_at(fd, ".", buf, sizeof(buf), &n), -EISDIR);
        /* an absolute path stays inside the root */
        assert_int_equal(sysfs_read_at(fd, "/seven", buf, sizeof(buf), NULL), 0);
        assert_int_equal(sysfs_read_at(fd, "/etc/hostname", buf, sizeof(buf), NULL), -ENOENT);

        assert_int_equal(sysfs_read_int64_at(fd, "num", 0, 100, &v), 0);
        assert_int_equal(v, 42);
        assert_int_equal(sysfs_read_int64_at(fd, "num", 0, 10, &v), -ERANGE);
        assert_int_equal(sysfs_read_string_at(fd, "num", buf, sizeof(buf)), 0);
        assert_string_equal(buf, "42");

        /* the NUL in the middle: "4" would parse, but this is not a text file */
        put("read/nul", "4");
        {
                _cleanup_free_ char *p = test_tmp_path("read/nul");
                _cleanup_close_ int w = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
                assert_true(w >= 0);
                assert_int_equal(write(w, "\0002\n", 3), 3);
        }
        assert_int_equal(sysfs_read_at(fd, "nul", buf, sizeof(buf), NULL), -EBADMSG);

        _cleanup_free_ char *text = NULL;
        assert_int_equal(sysfs_read_alloc_at(fd, "eight", 8, &text, &n), 0);
        assert_int_equal(n, 8);
        assert_string_equal(text, "12345678");
        free(TAKE_PTR(text));
        assert_int_equal(sysfs_read_alloc_at(fd, "eight", 7, &text, &n), -EFBIG);
        assert_null(text);
        assert_int_equal(sysfs_read_alloc_at(fd, "nul", 100, &text, &n), -EBADMSG);

        assert_string_equal(sysfs_path("/", "/proc/stat", path, sizeof(path)), "/proc/stat");
        assert_string_equal(sysfs_path(NULL, "proc/stat", path, sizeof(path)), "/proc/stat");
        assert_string_equal(sysfs_path("t/x/", "proc/stat", path, sizeof(path)), "t/x/proc/stat");
        assert_string_equal(sysfs_path("t/x", "/proc/stat", path, sizeof(path)), "t/x/proc/stat");

        assert_int_equal(sysfs_root_open("/nonexistent-edged-root", &fd), -ENOENT);
}

/* Absent sensors are reported as absent; broken required files are errors naming the file. */
static void test_absent_and_broken(void **state) {
        _cleanup_free_ char *root = new_root("empty");
        _cleanup_free_ char *broken = new_root("broken");
        _cleanup_free_ char *msg = NULL;
        sensors_thermal t;
        sensors_power p;
        sensors_psi psi;
        sensors_meminfo m;
        sensors_loadavg l;
        sensors_stat st = {};

        /* A container: no /sys/class/thermal, no power_supply, no /proc/pressure. */
        assert_int_equal(sensors_thermal_read(root, NULL, &t), 0);
        assert_false(t.available);
        assert_int_equal(t.n_counted + t.n_ignored + t.n_bad, 0);
        assert_true(isnan(t.max_celsius));
        assert_int_equal(sensors_power_read(root, &p), 0);
        assert_false(p.available);
        assert_int_equal(p.n_batteries, 0);
        assert_false(sensors_power_on_battery(&p));
        assert_int_equal(sensors_psi_read(root, &psi), 0);
        assert_false(psi.available);
        assert_false(psi.cpu.available || psi.memory.available || psi.io.available);

        /* Only memory pressure present: the others stay unavailable. */
        put("broken/proc/pressure/memory", "some avg10=1.00 avg60=0.00 avg300=0.00 total=9\n"
                                           "full avg10=0.50 avg60=0.00 avg300=0.00 total=4\n");
        assert_int_equal(sensors_psi_read(broken, &psi), 0);
        assert_true(psi.available);
        assert_false(psi.cpu.available);
        assert_true(psi.memory.available);
        assert_true(psi.memory.full.avg10 == 0.5);
        assert_false(psi.io.available);

        /* Required files: missing or broken is an error that names the file. */
        test_capture_begin();
        assert_int_equal(sensors_meminfo_read(root, &m), -ENOENT);
        assert_int_equal(sensors_stat_read(root, &st), -ENOENT);
        put("broken/proc/stat", "cpu  1 2 3 4\ncpu0 1 2 three 4\n");
        assert_int_equal(sensors_stat_read(broken, &st), -EBADMSG);
        put("broken/proc/meminfo", "MemTotal: 100 kB\n");
        assert_int_equal(sensors_meminfo_read(broken, &m), -ENODATA);
        put("broken/proc/loadavg", "0.1 0.2\n");
        assert_int_equal(sensors_loadavg_read(broken, &l), -EBADMSG);
        put("broken/proc/pressure/io", "some avg10=x\n");
        assert_int_equal(sensors_psi_read(broken, &psi), -EBADMSG);
        assert_int_equal(sensors_thermal_read("/nonexistent-edged-root", NULL, &t), -ENOENT);
        msg = test_capture_end();

        assert_true(contains(msg, "/empty/proc/meminfo"));
        assert_true(contains(msg, "/empty/proc/stat"));
        assert_true(contains(msg, "/broken/proc/stat: malformed contents"));
        assert_true(contains(msg, "/broken/proc/meminfo: no MemTotal or MemAvailable line"));
        assert_true(contains(msg, "/broken/proc/loadavg: malformed contents"));
        assert_true(contains(msg, "/broken/proc/pressure/io: malformed contents"));
        assert_true(contains(msg, "/nonexistent-edged-root"));
        assert_null(st.cpus);
}

/* ---- this machine ---- */

static unsigned count_glob(const char *pattern) {
        glob_t g;
        unsigned n = 0;

        if (glob(pattern, 0, NULL, &g) == 0)
                n = (unsigned) g.gl_pathc;
        globfree(&g);
        return n;
}

/* Inputs libFuzzer found (fuzz/regress/sysfs): a field that would wrap the totals, and tick
 * counts past 2^53 where 100 * idle / total rounds above 100. */
static void test_fuzz_regressions(void **state) {
        sensors_stat st;
        sensors_cpu_usage u;

        assert_int_equal(sensors_parse_stat("cpu  7 0 3 6646766676666466666\ncpu0 3 7 5 0\n", &st),
                         -ERANGE);
        assert_int_equal(sensors_cpu_usage_between(
                                 &(sensors_cpu_times) { .user = 3, .nice = 7, .system = 5 },
                                 &(sensors_cpu_times) { .user = 7, .system = 3,
                                                        .idle = 895344363714172283ULL },
                                 &u),
                         0);
        assert_true(u.idle_pct == 100.0);
        assert_true(u.busy_pct == 0.0);
}

static void test_real_machine(void **state) {
        _cleanup_(sensors_stat_done) sensors_stat a = {};
        _cleanup_(sensors_stat_done) sensors_stat b = {};
        long online = sysconf(_SC_NPROCESSORS_ONLN), conf = sysconf(_SC_NPROCESSORS_CONF);
        long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
        sensors_cpu_usage u;
        sensors_meminfo m;
        sensors_loadavg l;
        sensors_thermal t;
        sensors_power p;
        sensors_psi psi;
        struct stat sb;
        struct timespec start, now;
        int r;

        /* /proc/stat lists the online CPUs, in order, below the configured count. */
        assert_int_equal(sensors_stat_read("/", &a), 0);
        assert_int_equal(a.n_cpus, online);
        for (size_t i = 0; i < a.n_cpus; i++)
                assert_true(a.cpus[i].id < (uint32_t) conf);
        assert_true(sensors_cpu_times_total(&a.all) > 0);

        /* Burn 100 ms (at least 10 ticks at USER_HZ 100), then the figures add up. */
        clock_gettime(CLOCK_MONOTONIC, &start);
        do
                clock_gettime(CLOCK_MONOTONIC, &now);
        while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) <
               100000000L);
        assert_int_equal(sensors_stat_read(NULL, &b), 0);
        r = sensors_cpu_usage_between(&a.all, &b.all, &u);
        assert_int_equal(r, 0);
        assert_true(u.ticks >= 5);
        assert_true(u.idle_pct >= 0 && u.idle_pct <= 100);
        assert_true(fabs(u.idle_pct + u.busy_pct - 100.0) < 1e-9);
        /* we were busy on one CPU the whole time */
        assert_true(u.busy_pct >= 100.0 / (double) online * 0.5);

        /* MemTotal is sysinfo()'s total RAM, or less where lxcfs shows a container's limit. */
        assert_int_equal(sensors_meminfo_read("/", &m), 0);
        assert_true(m.mem_available_kb > 0);
        assert_true(m.mem_available_kb <= m.mem_total_kb);
        assert_true(m.mem_total_kb <= (uint64_t) pages * (uint64_t) page_size / 1024);

        /* this thread is running */
        assert_int_equal(sensors_loadavg_read("/", &l), 0);
        assert_true(l.n_runnable >= 1);
        assert_true(l.n_threads >= l.n_runnable);

        /* PSI is there exactly when the kernel has it */
        assert_int_equal(sensors_psi_read("/", &psi), 0);
        assert_int_equal(psi.cpu.available, access("/proc/pressure/cpu", R_OK) == 0);
        assert_int_equal(psi.memory.available, access("/proc/pressure/memory", R_OK) == 0);
        assert_int_equal(psi.io.available, access("/proc/pressure/io", R_OK) == 0);

        /* every zone is counted, ignored or bad; the class exists where sysfs says so */
        assert_int_equal(sensors_thermal_read("/", NULL, &t), 0);
        assert_int_equal(t.available, stat("/sys/class/thermal", &sb) == 0);
        assert_int_equal(t.n_counted + t.n_ignored + t.n_bad,
                         count_glob("/sys/class/thermal/thermal_zone*"));
        if (t.n_counted > 0)
                assert_true(t.max_celsius >= -40.0 && t.max_celsius <= 150.0);
        else
                assert_true(isnan(t.max_celsius));

        assert_int_equal(sensors_power_read("/", &p), 0);
        assert_int_equal(p.available, stat("/sys/class/power_supply", &sb) == 0);
        assert_true(p.n_batteries + p.n_ignored + p.n_bad + (unsigned) p.have_ac <=
                    count_glob("/sys/class/power_supply/*"));

        /* say what was seen, so a run on a laptop can be checked by eye */
        printf("this machine: %zu CPUs online of %ld, %.1f %% idle over %llu ticks; "
               "MemAvailable %llu of %llu kB; load %.2f, %u/%u runnable; PSI %s "
               "(cpu some %.2f); thermal %s: %u counted, %u ignored, %u bad, max %.1f °C; "
               "power %s: AC %s%s, %u batteries (%.0f %%), %u ignored\n",
               a.n_cpus, conf, u.idle_pct, (unsigned long long) u.ticks,
               (unsigned long long) m.mem_available_kb, (unsigned long long) m.mem_total_kb,
               l.load1, l.n_runnable, l.n_threads, psi.available ? "available" : "not available",
               psi.cpu.some.avg10, t.available ? "present" : "absent", t.n_counted, t.n_ignored,
               t.n_bad, t.max_celsius, p.available ? "present" : "absent",
               p.have_ac ? "supply " : "none",
               p.have_ac ? (p.ac_online ? "online" : "offline") : "", p.n_batteries,
               p.battery_percent, p.n_ignored);
}

static int setup_group(void **state) {
        return test_tmpdir_create("test-sensors");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_thermal_machines),
                cmocka_unit_test(test_thermal_type_lists),
                cmocka_unit_test(test_thermal_temp_parser),
                cmocka_unit_test(test_power_machines),
                cmocka_unit_test(test_power_combine),
                cmocka_unit_test(test_power_fallbacks),
                cmocka_unit_test(test_psi_machines),
                cmocka_unit_test(test_meminfo_machines),
                cmocka_unit_test(test_loadavg_machines),
                cmocka_unit_test(test_stat_machines),
                cmocka_unit_test(test_cpu_usage),
                cmocka_unit_test(test_parse_numbers),
                cmocka_unit_test(test_parse_psi_garbage),
                cmocka_unit_test(test_parse_meminfo_garbage),
                cmocka_unit_test(test_parse_loadavg_garbage),
                cmocka_unit_test(test_parse_stat_garbage),
                cmocka_unit_test(test_read_helpers),
                cmocka_unit_test(test_absent_and_broken),
                cmocka_unit_test(test_fuzz_regressions),
                cmocka_unit_test(test_real_machine),
        };
        return test_run_group("test-sensors", tests, setup_group, test_tmpdir_remove);
}
