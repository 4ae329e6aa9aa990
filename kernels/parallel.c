/* SPDX-License-Identifier: MIT */
#include "parallel.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

static struct {
        int n; /* threads including the caller */
        pthread_t threads[PAR_MAX_THREADS];
        pthread_mutex_t lock;
        pthread_cond_t go, done;
        uint64_t generation;
        int pending;
        bool quit;
        par_fn fn;
        void *ctx;
        long n_items;
        int n_used; /* threads with a chunk this time */
        uint64_t start_generation; /* what workers started now have already seen */
} pool = {
        .n = 1,
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .go = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER,
};

static void run_chunk(par_fn fn, void *ctx, long n_items, int n, int worker) {
        if (worker >= n)
                return;
        long begin = n_items * worker / n, end = n_items * (worker + 1) / n;
        if (begin < end)
                fn(ctx, begin, end, worker);
}

static void *worker_main(void *arg) {
        int self = (int) (intptr_t) arg;
        uint64_t seen = 0;

        pthread_mutex_lock(&pool.lock);
        /* not pool.generation: a par_for may already have started before this thread ran */
        seen = pool.start_generation;
        for (;;) {
                while (pool.generation == seen && !pool.quit)
                        pthread_cond_wait(&pool.go, &pool.lock);
                if (pool.quit)
                        break;
                seen = pool.generation;
                par_fn fn = pool.fn;
                void *ctx = pool.ctx;
                long n_items = pool.n_items;
                int n = pool.n_used;
                pthread_mutex_unlock(&pool.lock);

                run_chunk(fn, ctx, n_items, n, self);

                pthread_mutex_lock(&pool.lock);
                if (--pool.pending == 0)
                        pthread_cond_signal(&pool.done);
        }
        pthread_mutex_unlock(&pool.lock);
        return NULL;
}

static void stop_workers(void) {
        pthread_mutex_lock(&pool.lock);
        pool.quit = true;
        pthread_cond_broadcast(&pool.go);
        pthread_mutex_unlock(&pool.lock);
        for (int i = 1; i < pool.n; i++)
                pthread_join(pool.threads[i], NULL);
        pool.quit = false;
        pool.n = 1;
}

int par_set_threads(int n) {
        n = n < 1 ? 1 : n > PAR_MAX_THREADS ? PAR_MAX_THREADS : n;
        if (n == pool.n)
                return 0;
        stop_workers();
        pool.start_generation = pool.generation;
        for (int i = 1; i < n; i++) {
                int r = pthread_create(&pool.threads[i], NULL, worker_main, (void *) (intptr_t) i);
                if (r != 0) {
                        pool.n = i;
                        return -r;
                }
                pool.n = i + 1;
        }
        return 0;
}

int par_get_threads(void) {
        return pool.n;
}

int par_pin_worker(int worker, const cpu_set_t *set) {
        if (worker < 1 || worker >= pool.n)
                return -EINVAL;
        return -pthread_setaffinity_np(pool.threads[worker], sizeof(*set), set);
}

void par_for(long n_items, long grain, par_fn fn, void *ctx, int blas_inside) {
        long fit = grain > 0 ? n_items / grain : n_items;
        int n = fit < pool.n ? (int) (fit > 1 ? fit : 1) : pool.n;

        if (n <= 1) {
                if (n_items > 0)
                        fn(ctx, 0, n_items, 0);
                return;
        }
        int blas_threads = blas_inside ? openblas_get_num_threads() : 1;
        if (blas_inside)
                openblas_set_num_threads(1);

        pthread_mutex_lock(&pool.lock);
        pool.fn = fn;
        pool.ctx = ctx;
        pool.n_items = n_items;
        pool.n_used = n;
        pool.pending = pool.n - 1;
        pool.generation++;
        pthread_cond_broadcast(&pool.go);
        pthread_mutex_unlock(&pool.lock);

        run_chunk(fn, ctx, n_items, n, 0);

        pthread_mutex_lock(&pool.lock);
        while (pool.pending > 0)
                pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);

        if (blas_inside)
                openblas_set_num_threads(blas_threads);
}
