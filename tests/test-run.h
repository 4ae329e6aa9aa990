/* SPDX-License-Identifier: MIT */
#pragma once

/* How a test binary ends and how long it may wait.
 *
 * Skips: cmocka's skip() marks a case skipped but the binary still exits 0, and run-tests
 * would count it as passed. TEST_SKIP() records the reason first; test_run_group() runs the
 * cases and exits 77 (skipped) when any case was skipped and none failed, printing every
 * reason, so a missing prerequisite is never reported as a pass.
 *
 * Time: a limit on how long something may take (a daemon reaching a state, a run finishing)
 * is multiplied by EDGED_TEST_TIME_FACTOR (the sanitizer build sets it; a slow machine may).
 * Bounds on what is measured (a ratio, a count, an error) are never scaled. Include after
 * <cmocka.h>. */

#include <stdio.h>
#include <stdlib.h>

#define TEST_MAX_SKIPS 16

static int test_n_skipped;
static char test_skip_reasons[TEST_MAX_SKIPS][160];

/* Records why (printf-style), then skips the running case. */
#define TEST_SKIP(...)                                                                             \
        do {                                                                                       \
                if (test_n_skipped < TEST_MAX_SKIPS)                                               \
                        snprintf(test_skip_reasons[test_n_skipped], sizeof(test_skip_reasons[0]),  \
                                 __VA_ARGS__);                                                     \
                test_n_skipped++;                                                                  \
                printf("skipped: ");                                                               \
                printf(__VA_ARGS__);                                                               \
                printf("\n");                                                                      \
                skip();                                                                            \
        } while (0)

/* What the binary returns after cmocka returned failed: failures win, then skips (77). */
static inline int test_exit_status(const char *name, int failed) {
        if (failed)
                return failed > 0 && failed < 77 ? failed : 1;
        if (test_n_skipped == 0)
                return 0;
        for (int i = 0; i < test_n_skipped && i < TEST_MAX_SKIPS; i++)
                printf("%s: skipped: %s\n", name, test_skip_reasons[i]);
        return 77;
}

#define test_run_group(name, tests, setup, teardown)                                               \
        test_exit_status((name), cmocka_run_group_tests((tests), (setup), (teardown)))

/* EDGED_TEST_TIME_FACTOR, at least 1; 1 when unset or not a number. */
static inline double test_time_factor(void) {
        const char *s = getenv("EDGED_TEST_TIME_FACTOR");
        char *end;
        double f;

        if (!s || !*s)
                return 1.0;
        f = strtod(s, &end);
        return *end == '\0' && f >= 1.0 && f <= 100.0 ? f : 1.0;
}

/* A time limit, in seconds, scaled for this build and machine. */
static inline double test_limit_s(double seconds) {
        return seconds * test_time_factor();
}
