/* SPDX-License-Identifier: MIT */
#include "ratelimit.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_BUCKETS 1024

typedef struct entry {
        struct entry *next;
        double tokens, stamp;
        char key[40];
} entry;

struct agg_ratelimit {
        pthread_mutex_t lock;
        entry *buckets[N_BUCKETS];
};

int agg_ratelimit_new(agg_ratelimit **ret) {
        agg_ratelimit *rl = calloc(1, sizeof(*rl));
        if (!rl)
                return -ENOMEM;
        pthread_mutex_init(&rl->lock, NULL);
        *ret = rl;
        return 0;
}

void agg_ratelimit_free(agg_ratelimit *rl) {
        if (!rl)
                return;
        for (size_t i = 0; i < N_BUCKETS; i++)
                for (entry *e = rl->buckets[i], *n; e; e = n) {
                        n = e->next;
                        free(e);
                }
        pthread_mutex_destroy(&rl->lock);
        free(rl);
}

static uint32_t hash(const char *s) {
        uint32_t h = 2166136261u; /* FNV-1a: keys are random ids already */
        for (; *s; s++)
                h = (h ^ (uint8_t) *s) * 16777619u;
        return h;
}

bool agg_ratelimit_take(agg_ratelimit *rl, const char *key, double rate, double burst, double now,
                        int *ret_retry_after_s) {
        uint32_t b = hash(key) % N_BUCKETS;
        bool ok = true;
        entry *e;

        pthread_mutex_lock(&rl->lock);
        for (e = rl->buckets[b]; e; e = e->next)
                if (!strncmp(e->key, key, sizeof(e->key) - 1))
                        break;
        if (!e) {
                /* only authenticated devices get here, so the table is bounded by enrolment */
                e = calloc(1, sizeof(*e));
                if (!e) {
                        pthread_mutex_unlock(&rl->lock);
                        return true;
                }
                strncpy(e->key, key, sizeof(e->key) - 1);
                e->tokens = burst;
                e->stamp = now;
                e->next = rl->buckets[b];
                rl->buckets[b] = e;
        }
        e->tokens = fmin(burst, e->tokens + (now - e->stamp) * rate);
        e->stamp = now;
        if (e->tokens >= 1.0)
                e->tokens -= 1.0;
        else {
                ok = false;
                *ret_retry_after_s = (int) ceil((1.0 - e->tokens) / rate);
                if (*ret_retry_after_s < 1)
                        *ret_retry_after_s = 1;
        }
        pthread_mutex_unlock(&rl->lock);
        return ok;
}
