/* SPDX-License-Identifier: MIT */
/* The sample API over both CPU sources: the /proc fallback (forced, and on fake trees), and
 * the eBPF monitor when this process may load it; a busy thread registered as harvester
 * must show up as harvested time either way. Also the output of "edged sense". */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sense.h"
#include "sensors.h"

static char fixture_root[512];

static const char *fixture(const char *machine) {
        const char *dir = getenv("EDGED_FIXTURES");
        snprintf(fixture_root, sizeof(fixture_root), "%s/sysfs/%s", dir ? dir : "tests/fixtures",
                 machine);
        return fixture_root;
}

static void test_task_ticks(void **state) {
        uint64_t t;

        /* utime 120, stime 7 (fields 14 and 15) */
        assert_int_equal(sensors_parse_task_ticks("4242 (edged) S 1 4242 4242 0 -1 4194560 "
                                                  "100 0 0 0 120 7 0 0 39 19 3 0 555 0 0\n",
                                                  &t),
                         0);
        assert_int_equal(t, 127);
        /* a command with spaces and a closing parenthesis of its own */
        assert_int_equal(sensors_parse_task_ticks("7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0\n",
                                                  &t),
                         0);
        assert_int_equal(t, 11);
        assert_int_equal(sensors_parse_task_ticks("7 (x) R 1 2 3", &t), -EBADMSG);
        assert_int_equal(sensors_parse_task_ticks("no parenthesis", &t), -EBADMSG);
        assert_int_equal(sensors_parse_task_ticks("7 (x) R 1 7 7 0 -1 0 0 0 0 0 x 6 0 0", &t),
                         -EINVAL);
}

/* On a fake tree the figures come from its files; CPU from its (static) /proc/stat. */
static void test_fixture_trees(void **state) {
        static const struct {
                const char *machine;
                bool have_temp;
                double max_temp_c;
                bool ac_online;
                int n_batteries;
                double battery_pct;
                bool discharging;
        } cases[] = {
                { "laptop-ac", true, 52.5, true, 1, 87.0, false },
                { "laptop-battery-15", true, -1, false, 1, 15.0, true },
                { "raspberry-pi", true, 51.54, false, 0, 0.0, false },
                { "two-batteries", true, -1, false, 2, 57.5, -1 },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                sensors_opts o = { .root = fixture(cases[i].machine) };
                sensors_sample_t s;
                sensors *se;

                assert_int_equal(sensors_new(&o, &se), 0);
                assert_int_equal(sensors_sample(se, &s), 0);
                printf("%-18s source %s (%s), temp %.2f, AC %d, batteries %d at %.1f%%\n",
                       cases[i].machine, s.cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs",
                       s.cpu_source_why, s.max_temp_c, s.ac_online, s.n_batteries, s.battery_pct);
                assert_int_equal(s.cpu_source, SENSORS_CPU_PROCFS);
                assert_non_null(strstr(s.cpu_source_why, "fake root"));
                assert_true(s.n_cpus >= 1);
                assert_int_equal(s.have_temp, cases[i].have_temp);
                if (cases[i].max_temp_c >= 0)
                        assert_float_equal(s.max_temp_c, cases[i].max_temp_c, 1e-9);
                assert_int_equal(s.n_batteries, cases[i].n_batteries);
                assert_float_equal(s.battery_pct, cases[i].battery_pct, 1e-9);
                if (cases[i].machine[0] == 'l') {
                        assert_int_equal(s.ac_online, cases[i].ac_online);
                        assert_int_equal(s.discharging, cases[i].discharging);
                }
                assert_true(s.mem_total_kib > 0);
                sensors_free(se);
        }
}

static volatile int spin_stop;
static volatile pid_t spin_tid;

static void *spin(void *arg) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        sched_setaffinity(0, sizeof(set), &set);
        spin_tid = (pid_t) syscall(SYS_gettid);
        /* busy, with a 50 us nap every 10 ms: the monitor classes a thread when it is
         * switched in, so registration must be followed by a switch to count */
        while (!spin_stop) {
                struct timespec t0, t1, nap = { 0, 50 * 1000 };
                clock_gettime(CLOCK_MONOTONIC, &t0);
                do
                        clock_gettime(CLOCK_MONOTONIC, &t1);
                while (!spin_stop && (t1.tv_sec - t0.tv_sec) * 1000000000L + t1.tv_nsec - t0.tv_nsec < 10000000L);
                nanosleep(&nap, NULL);
        }
        return NULL;
}

/* One thread spinning on one CPU for 600 ms, registered as harvester: its CPU time is
 * harvested time, whichever source measures it. */
static void harvester_shows(bool no_bpf, bool want_bpf) {
        sensors_opts o = { .root = "/", .no_bpf = no_bpf };
        sensors_sample_t s;
        pthread_t th;
        sensors *se;

        spin_stop = 0;
        spin_tid = 0;
        assert_int_equal(pthread_create(&th, NULL, spin, NULL), 0);
        while (!spin_tid)
                sched_yield();
        assert_int_equal(sensors_new(&o, &se), 0);
        assert_int_equal(sensors_add_harvester(se, spin_tid), 0);
        nanosleep(&(struct timespec) { 0, 20 * 1000 * 1000 }, NULL); /* a nap or two */
        /* the reference: the thread's own CPU clock over the same interval, so other load
         * on the machine changes the expectation, not the verdict */
        clockid_t clock;
        struct timespec c0, c1;
        assert_int_equal(pthread_getcpuclockid(th, &clock), 0);
        clock_gettime(clock, &c0);
        assert_int_equal(sensors_sample(se, &s), 0); /* baseline after registering */
        struct timespec ts = { 0, 600 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        assert_int_equal(sensors_sample(se, &s), 0);
        clock_gettime(clock, &c1);
        spin_stop = 1;
        pthread_join(th, NULL);

        double used = (double) (c1.tv_sec - c0.tv_sec) + (double) (c1.tv_nsec - c0.tv_nsec) * 1e-9;
        double expected = 100.0 * used / (s.interval_s * s.n_cpus);
        printf("%s: interval %.2f s, idle %.1f%%, foreground %.1f%%, harvester %.1f%% (expected "
               "%.1f%% +- 10%% of it)%s%s\n",
               s.cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs", s.interval_s, s.idle_pct,
               s.foreground_pct, s.harvester_pct, expected, s.cpu_source_why[0] ? "; no bpf: " : "",
               s.cpu_source_why);
        assert_int_equal(s.cpu_source, want_bpf ? SENSORS_CPU_BPF : SENSORS_CPU_PROCFS);
        assert_true(expected > 10.0); /* it did run */
        assert_true(fabs(s.harvester_pct - expected) <= 0.1 * expected);
        assert_float_equal(s.idle_pct + s.foreground_pct + s.harvester_pct, 100.0, 0.5);
        sensors_free(se);
}

static void test_fallback_forced(void **state) {
        harvester_shows(true, false);
}

static void test_fallback_by_environment(void **state) {
        sensors_opts o = { .root = "/" };
        sensors_sample_t s;
        sensors *se;

        setenv("EDGED_MONITOR_DISABLE", "1", 1);
        assert_int_equal(sensors_new(&o, &se), 0);
        unsetenv("EDGED_MONITOR_DISABLE");
        assert_int_equal(sensors_sample(se, &s), 0);
        printf("forced off: %s\n", s.cpu_source_why);
        assert_int_equal(s.cpu_source, SENSORS_CPU_PROCFS);
        assert_true(strlen(s.cpu_source_why) > 0);
        sensors_free(se);
}

static void test_bpf(void **state) {
        if (geteuid() != 0) {
                printf("skipped: the eBPF monitor needs root (CAP_BPF, CAP_PERFMON)\n");
                skip();
        }
        harvester_shows(false, true);
}

static void test_format(void **state) {
        sensors_sample_t s = {
                .interval_s = 1.0, .cpu_source = SENSORS_CPU_PROCFS, .cpu_source_why = "test",
                .n_cpus = 4, .idle_pct = 60.0, .foreground_pct = 15.0, .harvester_pct = 25.0,
                .have_temp = true, .max_temp_c = 61.25, .have_ac_supply = true,
                .n_batteries = 1, .battery_pct = 15.0, .discharging = true,
                .mem_available_kib = 2 * 1024 * 1024, .mem_total_kib = 8 * 1024 * 1024,
                .load1 = 1.5,
        };
        char line[512];

        s.latency_hist[3] = 7;
        sense_format_line(&s, "timer", line, sizeof(line));
        printf("%s\n", line);
        assert_non_null(strstr(line, "idle  60.0% fg  15.0% harvest  25.0% (procfs)"));
        assert_non_null(strstr(line, "temp 61.2°C") ?: strstr(line, "temp 61.3°C"));
        assert_non_null(strstr(line, "AC off, battery 15% discharging"));
        assert_non_null(strstr(line, "mem 2.0 GiB free"));

        json_t *j = sense_sample_json(&s, "uevent:AC:change");
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "trigger")), "uevent:AC:change");
        json_t *cpu = json_object_get(j, "cpu");
        assert_string_equal(json_string_value(json_object_get(cpu, "source")), "procfs");
        assert_float_equal(json_real_value(json_object_get(cpu, "harvester_pct")), 25.0, 0);
        assert_int_equal(json_integer_value(json_array_get(
                                 json_object_get(cpu, "latency_hist_log2_ns"), 3)),
                         7);
        json_t *power = json_object_get(j, "power");
        assert_true(json_is_false(json_object_get(power, "ac_online")));
        assert_int_equal(json_integer_value(json_object_get(power, "batteries")), 1);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "memory"),
                                                            "total_kib")),
                         8 * 1024 * 1024);
        json_decref(j);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_task_ticks),
                cmocka_unit_test(test_fixture_trees),
                cmocka_unit_test(test_fallback_forced),
                cmocka_unit_test(test_fallback_by_environment),
                cmocka_unit_test(test_bpf),
                cmocka_unit_test(test_format),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
