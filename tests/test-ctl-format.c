/* SPDX-License-Identifier: MIT */
/* edgectl's pure formatting (ctl/format.c): every expected string is written out by hand. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "format.h"

/* 2025-11-24 16:00:00 UTC; local midnight (TZ=UTC) is 1763942400 */
#define NOW ((time_t) 1764000000)

static void test_parse_duration(void **state) {
        static const struct {
                const char *s;
                uint64_t want;
        } good[] = {
                { "30s", 30 },     { "10m", 600 },   { "2h", 7200 },
                { "1h30m", 5400 }, { "90", 90 },     { "1d2h3m4s", 93784 },
                { "0s", 0 },       { "2d", 172800 }, { "1h5s", 3605 },
        };
        static const char *const bad[] = { "",     "5x",  "1.5h", "h",   "30m1h", "1h1h",
                                           "1m30", "-5m", " 5m",  "5m ", "1H",    "m5" };
        uint64_t v;

        for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
                v = 12345;
                assert_int_equal(ctl_parse_duration(good[i].s, &v), 0);
                assert_int_equal(v, good[i].want);
        }
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
                assert_int_equal(ctl_parse_duration(bad[i], &v), -EINVAL);
        assert_int_equal(ctl_parse_duration("99999999999h", &v), -ERANGE);
        assert_int_equal(ctl_parse_duration("3700d", &v), -ERANGE);
}

static void test_format_duration(void **state) {
        static const struct {
                uint64_t s;
                const char *want;
        } cases[] = {
                { 0, "0s" },     { 45, "45s" },      { 60, "1m" },       { 90, "1m 30s" },
                { 3600, "1h" },  { 3601, "1h" },     { 3661, "1h 1m" },  { 5400, "1h 30m" },
                { 86400, "1d" }, { 93784, "1d 2h" }, { 90061, "1d 1h" },
        };
        char buf[32];

        for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
                assert_string_equal(ctl_format_duration(cases[i].s, buf, sizeof(buf)),
                                    cases[i].want);
        /* truncated, still terminated */
        assert_string_equal(ctl_format_duration(5400, buf, 4), "1h ");
}

static void test_parse_since(void **state) {
        time_t t = 0;

        assert_int_equal(ctl_parse_since("today", NOW, &t), 0);
        assert_int_equal(t, 1763942400);
        assert_int_equal(ctl_parse_since("1700000000", NOW, &t), 0);
        assert_int_equal(t, 1700000000);
        assert_int_equal(ctl_parse_since("-1h", NOW, &t), 0);
        assert_int_equal(t, 1763996400);
        assert_int_equal(ctl_parse_since("1h", NOW, &t), 0);
        assert_int_equal(t, 1763996400);
        assert_int_equal(ctl_parse_since("90m", NOW, &t), 0);
        assert_int_equal(t, 1763994600);
        assert_int_equal(ctl_parse_since("-1d2h", NOW, &t), 0);
        assert_int_equal(t, 1763906400);
        static const char *const bad[] = { "", "-", "yesterday", "-today", "1.5h", "--1h", "-90" };
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
                assert_int_equal(ctl_parse_since(bad[i], NOW, &t), -EINVAL);
}

static void test_amounts(void **state) {
        char buf[32];

        assert_string_equal(ctl_format_core_hours(0, buf, sizeof(buf)), "0.00 core-h");
        assert_string_equal(ctl_format_core_hours(4500, buf, sizeof(buf)), "1.25 core-h");
        assert_string_equal(ctl_format_core_hours(360000, buf, sizeof(buf)), "100.0 core-h");
        assert_string_equal(ctl_format_core_hours(3600 * 1234.4, buf, sizeof(buf)), "1234 core-h");
        assert_string_equal(ctl_format_core_hours(-1, buf, sizeof(buf)), "-");
        assert_string_equal(ctl_format_core_hours(NAN, buf, sizeof(buf)), "-");

        assert_string_equal(ctl_format_count(0, buf, sizeof(buf)), "0");
        assert_string_equal(ctl_format_count(950, buf, sizeof(buf)), "950");
        assert_string_equal(ctl_format_count(999, buf, sizeof(buf)), "999");
        assert_string_equal(ctl_format_count(1000, buf, sizeof(buf)), "1.00k");
        assert_string_equal(ctl_format_count(12345, buf, sizeof(buf)), "12.3k");
        assert_string_equal(ctl_format_count(274944, buf, sizeof(buf)), "275k");
        assert_string_equal(ctl_format_count(999999, buf, sizeof(buf)), "1.00M");
        assert_string_equal(ctl_format_count(1234567, buf, sizeof(buf)), "1.23M");
        assert_string_equal(ctl_format_count(4560000000.0, buf, sizeof(buf)), "4.56G");

        assert_string_equal(ctl_format_bytes(0, buf, sizeof(buf)), "0 B");
        assert_string_equal(ctl_format_bytes(512, buf, sizeof(buf)), "512 B");
        assert_string_equal(ctl_format_bytes(1536, buf, sizeof(buf)), "1.5 KiB");
        assert_string_equal(ctl_format_bytes(12.3 * 1048576, buf, sizeof(buf)), "12.3 MiB");
        assert_string_equal(ctl_format_bytes(1073741824.0, buf, sizeof(buf)), "1.0 GiB");
}

static void test_sparkline(void **state) {
        const double ramp[] = { 0, 1, 2, 3, 4, 5, 6, 7 };
        const double three[] = { 1, 3, 2 }, flat[] = { 5, 5, 5 }, gap[] = { 1, NAN, 2 };
        char buf[64];

        assert_string_equal(ctl_sparkline(ramp, 8, true, buf, sizeof(buf)), "▁▂▃▄▅▆▇█");
        assert_string_equal(ctl_sparkline(ramp, 8, false, buf, sizeof(buf)), "_.,-=+*#");
        /* 2 is halfway: 3.5 rounds to level 4 */
        assert_string_equal(ctl_sparkline(three, 3, true, buf, sizeof(buf)), "▁█▅");
        assert_string_equal(ctl_sparkline(three, 3, false, buf, sizeof(buf)), "_#=");
        assert_string_equal(ctl_sparkline(flat, 3, true, buf, sizeof(buf)), "▁▁▁");
        assert_string_equal(ctl_sparkline(gap, 3, true, buf, sizeof(buf)), "▁ █");
        assert_string_equal(ctl_sparkline(gap, 3, false, buf, sizeof(buf)), "_ #");
        assert_string_equal(ctl_sparkline(ramp, 0, true, buf, sizeof(buf)), "");
        /* 3 bytes per block: 7 bytes hold two and the NUL, never half a character */
        assert_string_equal(ctl_sparkline(three, 3, true, buf, 7), "▁█");
        assert_string_equal(ctl_sparkline(three, 3, false, buf, 3), "_#");
}

static void test_table(void **state) {
        ctl_table t = {};
        char *text = NULL;

        assert_int_equal(ctl_table_add(&t, "State", "%s", "running"), 0);
        assert_int_equal(ctl_table_add(&t, "Throughput", "%d tokens/s", 5), 0);
        assert_int_equal(ctl_table_add(&t, "  hot", "1m"), 0);
        assert_int_equal(ctl_table_format(&t, &text), 0);
        assert_string_equal(text, "State:      running\n"
                                  "Throughput: 5 tokens/s\n"
                                  "  hot:      1m\n");
        free(text);
        ctl_table_done(&t);
        assert_int_equal(t.n, 0);
        assert_int_equal(ctl_table_format(&t, &text), 0);
        assert_string_equal(text, "");
        free(text);
}

static char *render_status(const char *json, bool color, bool utf8) {
        json_t *s = json_loads(json, 0, NULL);
        ctl_style style = { .color = color, .utf8 = utf8, .now = NOW };
        char *text = NULL;

        assert_non_null(s);
        assert_int_equal(ctl_format_status(s, &style, &text), 0);
        json_decref(s);
        return text;
}

static void test_status(void **state) {
        const char *full =
                "{\"state\":\"paused\",\"reason\":\"user-paused\",\"paused_until\":1764003600,"
                "\"cores\":0,\"trainer_parked\":true,\"profile\":\"quiet\",\"model\":\"tiny\","
                "\"model_version\":3,\"step\":1200,\"tokens\":614400,\"tokens_per_s\":0,"
                "\"loss\":1.23456,\"val_loss\":1.5,\"core_seconds_today\":4500,"
                "\"core_seconds_total\":360000,\"idle_pct\":97.4,\"max_temp_c\":48.6,"
                "\"on_ac\":true,\"battery_pct\":80,\"cpu_source\":\"procfs\","
                "\"cpu_source_why\":\"no BTF\",\"foreground_delay_ms_per_s\":null,"
                "\"data\":{\"files\":3,\"bytes\":1536,\"skipped\":1,\"wait_pct\":2.0},"
                "\"aggregator\":{\"state\":\"connected\",\"url\":\"https://agg.example\","
                "\"pending_updates\":1}}";
        char *text;

        text = render_status(full, false, false);
        assert_string_equal(text, "State:        paused (user-paused) until 17:00 (in 1h)\n"
                                  "Cores:        0\n"
                                  "Throughput:   0 tokens/s\n"
                                  "Loss:         1.235, validation 1.500\n"
                                  "Model:        tiny, step 1200, version 3\n"
                                  "Profile:      quiet\n"
                                  "Harvested:    1.25 core-h today, 100.0 core-h total\n"
                                  "Temperature:  49 C\n"
                                  "Power:        AC, battery 80%\n"
                                  "CPU source:   procfs (no BTF)\n"
                                  "Idle:         97%\n"
                                  "Interference: -\n"
                                  "Aggregator:   connected https://agg.example, 1 update pending\n"
                                  "Data:         3 files, 1.5 KiB, 1 skipped, waiting 2%\n");
        free(text);

        /* colour only around the state word; the degree sign in UTF-8 */
        text = render_status("{\"state\":\"running\",\"reason\":\"none\",\"max_temp_c\":41,"
                             "\"on_ac\":false,\"battery_pct\":45.4,\"cpu_source\":\"bpf\","
                             "\"cpu_source_why\":\"\",\"foreground_delay_ms_per_s\":0.25,"
                             "\"model_version\":0,\"model\":\"small\",\"step\":0,"
                             "\"aggregator\":{\"state\":\"standalone\",\"url\":null,"
                             "\"pending_updates\":0}}",
                             true, true);
        assert_string_equal(text, "State:        \033[32mrunning\033[0m\n"
                                  "Cores:        -\n"
                                  "Throughput:   -\n"
                                  "Loss:         -\n"
                                  "Model:        small, step 0, version 0 (local only)\n"
                                  "Profile:      -\n"
                                  "Harvested:    -\n"
                                  "Temperature:  41 °C\n"
                                  "Power:        on battery, 45%\n"
                                  "CPU source:   bpf\n"
                                  "Idle:         -\n"
                                  "Interference: 0.2 ms/s foreground wakeup delay\n"
                                  "Aggregator:   standalone, 0 updates pending\n"
                                  "Data:         -\n");
        free(text);

        /* an old daemon: everything it does not report is "-" */
        text = render_status("{\"state\":\"paused\",\"reason\":\"hot\",\"paused_until\":null,"
                             "\"loss\":2.5}",
                             false, true);
        assert_string_equal(text, "State:        paused (hot)\n"
                                  "Cores:        -\n"
                                  "Throughput:   -\n"
                                  "Loss:         2.500, validation -\n"
                                  "Model:        -\n"
                                  "Profile:      -\n"
                                  "Harvested:    -\n"
                                  "Temperature:  -\n"
                                  "Power:        -\n"
                                  "CPU source:   -\n"
                                  "Idle:         -\n"
                                  "Interference: -\n"
                                  "Aggregator:   -\n"
                                  "Data:         -\n");
        free(text);
}

static void test_stats(void **state) {
        json_t *s = json_loads(
                "{\"since\":1763996400,\"seconds_in_state\":{\"running\":3000.4,\"paused\":540,"
                "\"off\":60},\"seconds_paused\":{\"on-battery\":480,\"hot\":60},"
                "\"times_paused\":{\"on-battery\":2,\"hot\":1},\"transitions\":6,\"steps\":1200,"
                "\"tokens\":614400,\"checkpoints\":3,\"steps_abandoned\":1,\"updates_sent\":2,"
                "\"updates_acked\":1}",
                0, NULL);
        ctl_style style = { .now = NOW };
        char *text = NULL;

        assert_non_null(s);
        assert_int_equal(ctl_format_stats(s, &style, &text), 0);
        assert_string_equal(text, "Since:        15:00 (1h ago)\n"
                                  "Running:      50m\n"
                                  "Paused:       9m\n"
                                  "  on-battery: 8m (2 times)\n"
                                  "  hot:        1m (1 time)\n"
                                  "Off:          1m\n"
                                  "Transitions:  6\n"
                                  "Steps:        1200 (1 abandoned)\n"
                                  "Tokens:       614k\n"
                                  "Checkpoints:  3\n"
                                  "Updates:      2 sent, 1 acknowledged\n");
        free(text);
        json_decref(s);
}

static void test_policy(void **state) {
        json_t *p = json_loads(
                "{\"show\":\"ignored\",\"knobs\":["
                "{\"key\":\"Profile\",\"value\":\"quiet\",\"origin\":\"runtime\",\"locked\":false},"
                "{\"key\":\"MaxCores\",\"value\":\"2\",\"origin\":\"file\","
                "\"file\":\"/etc/edged/edged.conf\",\"line\":3,\"locked\":true},"
                "{\"key\":\"ActiveHours\",\"value\":\"\",\"origin\":\"builtin\",\"locked\":false},"
                "{\"key\":\"MinIdlePercent\",\"value\":\"80\",\"origin\":\"fleet\"}]}",
                0, NULL);
        char *text = NULL;

        assert_non_null(p);
        assert_int_equal(ctl_format_policy(p, &text), 0);
        assert_string_equal(text, "KEY             VALUE  ORIGIN\n"
                                  "Profile         quiet  runtime\n"
                                  "MaxCores        2      /etc/edged/edged.conf:3, locked\n"
                                  "ActiveHours     -      built-in\n"
                                  "MinIdlePercent  80     fleet\n");
        free(text);
        json_decref(p);

        /* a daemon without "knobs": its own listing */
        p = json_loads("{\"show\":\"MaxCores = 0 (built-in)\\n\"}", 0, NULL);
        assert_int_equal(ctl_format_policy(p, &text), 0);
        assert_string_equal(text, "MaxCores = 0 (built-in)\n");
        free(text);
        json_decref(p);
}

static void test_checkpoints(void **state) {
        json_t *l =
                json_loads("{\"checkpoints\":[{\"path\":\"/var/lib/edged/checkpoint.safetensors\","
                           "\"step\":1200,\"bytes\":5359032,\"mtime\":1763999940},"
                           "{\"path\":\"/var/lib/edged/old.safetensors\",\"step\":7,"
                           "\"bytes\":512,\"mtime\":1700000000}]}",
                           0, NULL);
        ctl_style style = { .now = NOW };
        char *text = NULL;

        assert_int_equal(ctl_format_checkpoints(l, &style, &text), 0);
        assert_string_equal(
                text, "SAVED                   STEP        SIZE  PATH\n"
                      "15:59                   1200     5.1 MiB  "
                      "/var/lib/edged/checkpoint.safetensors\n"
                      "2023-11-14 22:13           7       512 B  /var/lib/edged/old.safetensors\n");
        free(text);
        json_decref(l);
        l = json_loads("{\"checkpoints\":[]}", 0, NULL);
        assert_int_equal(ctl_format_checkpoints(l, &style, &text), 0);
        assert_string_equal(text, "No checkpoints yet.\n");
        free(text);
        json_decref(l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_duration), cmocka_unit_test(test_format_duration),
                cmocka_unit_test(test_parse_since),    cmocka_unit_test(test_amounts),
                cmocka_unit_test(test_sparkline),      cmocka_unit_test(test_table),
                cmocka_unit_test(test_status),         cmocka_unit_test(test_stats),
                cmocka_unit_test(test_policy),         cmocka_unit_test(test_checkpoints),
        };
        /* clock times in the expected strings are UTC */
        setenv("TZ", "UTC", 1);
        tzset();
        return test_run_group("test-ctl-format", tests, NULL, NULL);
}
