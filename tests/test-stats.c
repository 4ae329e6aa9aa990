/* SPDX-License-Identifier: MIT */
/* The minute history behind "edgectl stats --since" and the state file behind the harvest
 * totals and user pauses: sums over hand-picked minutes, wrap-around after a week, a clock
 * that goes back, the "today" figure at midnight, and round trips and bad files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <string.h>

#include "daemon-state.h"
#include "macros.h"
#include "stats-history.h"
#include "test-files.h"

#define T0 1795599960LL /* a Unix time on a minute boundary */

static stats_counts running(double secs, uint64_t tokens) {
        stats_counts c = { .tokens = tokens, .steps = tokens / 512 };
        c.state_s[POLICY_RUNNING] = secs;
        return c;
}

static void test_sum_since(void **unused) {
        stats_history h;
        stats_counts c, sum;
        int64_t from;

        assert_int_equal(stats_history_init(&h), 0);
        /* 10 minutes: 60 s running and 1024 tokens each; minute 5 also a hot pause begins */
        for (int i = 0; i < 10; i++) {
                c = running(60, 1024);
                stats_history_add(&h, T0 + i * 60 + 30, &c);
        }
        c = (stats_counts) { .transitions = 1 };
        c.pauses_begun[POLICY_REASON_HOT] = 1;
        c.paused_s[POLICY_REASON_HOT] = 1.5;
        c.state_s[POLICY_PAUSED] = 1.5;
        stats_history_add(&h, T0 + 5 * 60 + 59, &c);

        stats_history_sum(&h, 0, T0 + 9 * 60 + 59, &sum, &from);
        assert_int_equal(from, T0); /* clamped to the first minute recorded */
        assert_float_equal(sum.state_s[POLICY_RUNNING], 600, 1e-9);
        assert_int_equal(sum.tokens, 10240);
        assert_int_equal(sum.steps, 20);
        assert_int_equal(sum.pauses_begun[POLICY_REASON_HOT], 1);

        /* since the middle of minute 4: minutes 4..9 count whole */
        stats_history_sum(&h, T0 + 4 * 60 + 10, T0 + 9 * 60 + 59, &sum, &from);
        assert_int_equal(from, T0 + 4 * 60 + 10);
        assert_int_equal(sum.tokens, 6 * 1024);
        assert_float_equal(sum.paused_s[POLICY_REASON_HOT], 1.5, 1e-9);
        /* since minute 6: the pause is not in it */
        stats_history_sum(&h, T0 + 6 * 60, T0 + 9 * 60 + 59, &sum, NULL);
        assert_int_equal(sum.tokens, 4 * 1024);
        assert_int_equal(sum.pauses_begun[POLICY_REASON_HOT], 0);
        stats_history_done(&h);
}

static void test_wraps_after_a_week(void **unused) {
        stats_history h;
        stats_counts c = running(60, 100), sum;
        int64_t week = STATS_HISTORY_MINUTES * 60LL, from;

        assert_int_equal(stats_history_init(&h), 0);
        stats_history_add(&h, T0, &c);
        stats_history_add(&h, T0 + 60, &c);
        /* a week later the same slot is reused: the old minute must not leak in */
        stats_history_add(&h, T0 + week, &c);
        stats_history_sum(&h, 0, T0 + week, &sum, &from);
        assert_int_equal(from, T0 + 60); /* the oldest minute still held */
        assert_int_equal(sum.tokens, 200);
        /* the clock went back a week: that minute's slot starts over */
        stats_history_add(&h, T0, &c);
        stats_history_sum(&h, T0, T0 + 59, &sum, NULL);
        assert_int_equal(sum.tokens, 100);
        stats_history_done(&h);
}

static void test_today(void **unused) {
        daemon_state s = { 0 };

        daemon_state_add_harvest(&s, 20261124, 100);
        daemon_state_add_harvest(&s, 20261124, 50);
        assert_float_equal(s.core_seconds_today, 150, 1e-9);
        daemon_state_add_harvest(&s, 20261125, 7); /* past midnight */
        assert_float_equal(s.core_seconds_today, 7, 1e-9);
        assert_float_equal(s.core_seconds_total, 157, 1e-9);
        assert_int_equal(s.today, 20261125);
}

static void test_state_file(void **unused) {
        _cleanup_free_ char *path = test_tmp_path("daemon-state.json");
        daemon_state s = { .pause_until = 1795700000, .core_seconds_total = 12.5,
                           .core_seconds_today = 2.25, .today = 20261125, .tokens_total = 1 << 20 },
                     got;
        struct stat st;

        assert_int_equal(daemon_state_load(path, &got), 0); /* missing: fresh */
        assert_int_equal(got.pause_until, 0);
        assert_int_equal(daemon_state_save(path, &s), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(daemon_state_load(path, &got), 0);
        assert_memory_equal(&got, &s, sizeof(s));

        static const char *const bad[] = {
                "{\"format\": \"edged-state-1\"", /* truncated */
                "{\"format\": \"edged-state-9\", \"pause_until\": 0, \"pause_indefinite\": false, "
                "\"core_seconds_total\": 0, \"core_seconds_today\": 0, \"today\": 0, \"tokens_total\": 0}",
                "{\"format\": \"edged-state-1\", \"pause_until\": -5, \"pause_indefinite\": false, "
                "\"core_seconds_total\": 0, \"core_seconds_today\": 0, \"today\": 0, \"tokens_total\": 0}",
                "[]",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                FILE *f = fopen(path, "we");
                assert_non_null(f);
                fputs(bad[i], f);
                fclose(f);
                test_capture_begin();
                int r = daemon_state_load(path, &got);
                _cleanup_free_ char *msg = test_capture_end();
                assert_int_equal(r, -EBADMSG);
                assert_non_null(strstr(msg, path));
                assert_non_null(strstr(msg, "starting afresh"));
                assert_int_equal(got.pause_until, 0);
        }
}

static int setup(void **unused) {
        return test_tmpdir_create("test-stats");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sum_since),
                cmocka_unit_test(test_wraps_after_a_week),
                cmocka_unit_test(test_today),
                cmocka_unit_test(test_state_file),
        };
        return test_run_group("test-stats", tests, setup, test_tmpdir_remove);
}
