/* SPDX-License-Identifier: MIT */
/* The sample API over both CPU sources: the /proc fallback (forced, and on fake trees), and
 * the eBPF monitor when this process may load it; a busy thread registered as harvester
 * must show up as harvested time either way. Also the output of "edged sense". */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sense.h"
#include "sensors.h"
#include "test-sched.h"

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
        assert_int_equal(
                sensors_parse_task_ticks("7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0\n", &t), 0);
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

/* ---- a harvester thread, as either source sees it ---- */

/* The harvester thread takes both samples itself, each right after reading its own CPU clock:
 * its CPU time and the samples then cover the same interval even when a thread is preempted
 * between the two reads (a thread that is not running uses no CPU time). */
typedef struct {
        sensors *se;
        sem_t started, registered;
        pid_t tid;
        bool fifo;
        int err;
        uint64_t used_ns; /* its CPU time between the two samples */
        sensors_sample_t s;
} harvest;

static void *harvest_main(void *arg) {
        harvest *h = arg;
        struct sched_param sp = { .sched_priority = 10 };
        cpu_set_t set;
        uint64_t c0, deadline;
        int r;

        CPU_ZERO(&set);
        CPU_SET(0, &set);
        h->tid = (pid_t) syscall(SYS_gettid);
        r = sched_setaffinity(0, sizeof(set), &set) < 0 ? -errno : 0;
        /* Where allowed, SCHED_FIFO: no SCHED_OTHER task preempts it. */
        h->fifo = r >= 0 && sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
        sem_post(&h->started);
        sem_wait(&h->registered);
        /* The monitor classes a thread when it is switched in, and misses switches away from
         * some sandboxes' threads: before each interval the thread switches away and back
         * between two threads of ours (one created here inherits the priority and CPU). */
        if (r >= 0)
                r = handoff();
        c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        if (r >= 0)
                r = sensors_sample(h->se, &h->s); /* the baseline */
        if (r >= 0)
                r = handoff();
        /* 400 ms of its own CPU time, whatever else shares the CPU: enough that the ticks
         * /proc counts in (10 ms) are 5 % of it at most. */
        deadline = now_ns(CLOCK_MONOTONIC) + (uint64_t) (test_limit_s(20) * 1e9);
        while (r >= 0 && now_ns(CLOCK_THREAD_CPUTIME_ID) - c0 < 400000000ULL &&
               now_ns(CLOCK_MONOTONIC) < deadline)
                ;
        h->used_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
        if (r >= 0)
                r = sensors_sample(h->se, &h->s);
        h->err = r;
        return NULL;
}

/* One thread spinning on one CPU, registered as harvester: its CPU time is harvested time,
 * whichever source measures it. */
static void harvester_shows(bool no_bpf, bool want_bpf) {
        sensors_opts o = { .root = "/", .no_bpf = no_bpf };
        harvest h = { 0 };
        pthread_t th;
        int r;

        assert_int_equal(sensors_new(&o, &h.se), 0);
        assert_int_equal(sem_init(&h.started, 0, 0), 0);
        assert_int_equal(sem_init(&h.registered, 0, 0), 0);
        assert_int_equal(pthread_create(&th, NULL, harvest_main, &h), 0);
        sem_wait(&h.started);
        r = sensors_add_harvester(h.se, h.tid);
        sem_post(&h.registered);
        assert_int_equal(pthread_join(th, NULL), 0);
        sem_destroy(&h.started);
        sem_destroy(&h.registered);
        assert_int_equal(r, 0);
        if (h.err < 0)
                fail_msg("harvester thread: %s", strerror(-h.err));

        const sensors_sample_t *s = &h.s;
        double expected = 100.0 * (double) h.used_ns * 1e-9 / (s->interval_s * s->n_cpus);
        printf("%s: interval %.2f s, idle %.1f%%, foreground %.1f%%, harvester %.1f%% (a%s "
               "thread used %.1f ms of CPU: expected %.2f%% +- 10%% of it)%s%s\n",
               s->cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs", s->interval_s, s->idle_pct,
               s->foreground_pct, s->harvester_pct, h.fifo ? " SCHED_FIFO" : "",
               (double) h.used_ns / 1e6, expected, s->cpu_source_why[0] ? "; no bpf: " : "",
               s->cpu_source_why);
        assert_int_equal(s->cpu_source, want_bpf ? SENSORS_CPU_BPF : SENSORS_CPU_PROCFS);
        assert_true(h.used_ns >= 400000000ULL); /* it did run */
        assert_true(fabs(s->harvester_pct - expected) <= 0.1 * expected);
        assert_float_equal(s->idle_pct + s->foreground_pct + s->harvester_pct, 100.0, 0.5);
        sensors_free(h.se);
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
        if (geteuid() != 0)
                TEST_SKIP("the eBPF monitor needs root (CAP_BPF, CAP_PERFMON)");
        harvester_shows(false, true);
}

static void test_format(void **state) {
        sensors_sample_t s = {
                .interval_s = 1.0,
                .cpu_source = SENSORS_CPU_PROCFS,
                .cpu_source_why = "test",
                .n_cpus = 4,
                .idle_pct = 60.0,
                .foreground_pct = 15.0,
                .harvester_pct = 25.0,
                .have_temp = true,
                .max_temp_c = 61.25,
                .have_ac_supply = true,
                .n_batteries = 1,
                .battery_pct = 15.0,
                .discharging = true,
                .mem_available_kib = 2 * 1024 * 1024,
                .mem_total_kib = 8 * 1024 * 1024,
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
        assert_int_equal(
                json_integer_value(json_array_get(json_object_get(cpu, "latency_hist_log2_ns"), 3)),
                7);
        json_t *power = json_object_get(j, "power");
        assert_true(json_is_false(json_object_get(power, "ac_online")));
        assert_int_equal(json_integer_value(json_object_get(power, "batteries")), 1);
        assert_int_equal(
                json_integer_value(json_object_get(json_object_get(j, "memory"), "total_kib")),
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
        wait_for_other_runs();
        return test_run_group("test-sense", tests, NULL, NULL);
}
