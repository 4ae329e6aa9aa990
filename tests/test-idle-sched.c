/* SPDX-License-Identifier: MIT */
/* SCHED_IDLE for every thread but the one kept: what the trainer and "edged distill" rely
 * on to take only CPU time nothing else wants. Each case runs in a child process, so this
 * test itself keeps its normal priority. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "idle-sched.h"

#define N_THREADS 3

static pthread_barrier_t started, done;

static void *worker(void *arg) {
        pthread_barrier_wait(&started);
        pthread_barrier_wait(&done);
        return NULL;
}

typedef struct {
        pid_t keep;
        int idle, other, n;
} census;

static int count_one(pid_t tid, void *userdata) {
        census *c = userdata;
        int p = sched_getscheduler(tid);
        c->n++;
        if (p == SCHED_IDLE)
                c->idle++;
        else if (p == SCHED_OTHER)
                c->other++;
        return 0;
}

/* In a child: N_THREADS workers and the main thread; keep_main decides whether the main
 * thread is kept. Exit status: 0 when the census is what it should be. */
static int child(bool keep_main) {
        pthread_t th[N_THREADS];
        pid_t self = (pid_t) syscall(SYS_gettid);
        census c = { 0 };
        int ok;

        pthread_barrier_init(&started, NULL, N_THREADS + 1);
        pthread_barrier_init(&done, NULL, N_THREADS + 1);
        for (int i = 0; i < N_THREADS; i++)
                if (pthread_create(&th[i], NULL, worker, NULL) != 0)
                        return 10;
        pthread_barrier_wait(&started);
        if (idle_sched_all_threads(keep_main ? self : 0) < 0)
                return 11;
        if (process_for_each_thread(0, count_one, &c) < 0)
                return 12;
        ok = c.n == N_THREADS + 1 &&
             c.idle == (keep_main ? N_THREADS : N_THREADS + 1) &&
             c.other == (keep_main ? 1 : 0) &&
             (sched_getscheduler(0) == SCHED_IDLE) == !keep_main;
        pthread_barrier_wait(&done);
        for (int i = 0; i < N_THREADS; i++)
                pthread_join(th[i], NULL);
        return ok ? 0 : 13;
}

static int run_child(bool keep_main) {
        int st;
        pid_t pid = fork();
        if (pid == 0)
                _exit(child(keep_main));
        assert_true(pid > 0);
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        return WEXITSTATUS(st);
}

static void test_all_threads_idle(void **state) {
        assert_int_equal(run_child(false), 0);
}

static void test_kept_thread_stays_normal(void **state) {
        assert_int_equal(run_child(true), 0);
}

/* The census itself must be able to tell: without the call every thread is SCHED_OTHER. */
static void test_census_sees_normal_threads(void **state) {
        census c = { 0 };
        assert_int_equal(process_for_each_thread(0, count_one, &c), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.other, 1);
        assert_int_equal(c.idle, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_census_sees_normal_threads),
                cmocka_unit_test(test_all_threads_idle),
                cmocka_unit_test(test_kept_thread_stays_normal),
        };
        return test_run_group("test-idle-sched", tests, NULL, NULL);
}
