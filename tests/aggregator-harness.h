/* SPDX-License-Identifier: MIT */
#pragma once

/* The aggregator the in-process server tests run against: a store in <tmpdir>/store with
 * Model=tiny, BufferSize=2, Encoding=fp32, MaxUpdateNorm=1000, RateLimitPerSec=1000 and
 * RateLimitBurst=1000, version 0 the tiny model from model_init_params(m, 7), and a server on
 * 127.0.0.1 at a port the kernel picks, without its merge worker (the tests merge with
 * agg_merge_once). Include after <cmocka.h> and "test-files.h". */

#include <curl/curl.h>
#include <stdio.h>

#include "blas.h"
#include "blobs.h"
#include "macros.h"
#include "model.h"
#include "server.h"
#include "store.h"

typedef struct {
        agg_store *store;
        agg_server *server;
        model_layout lay; /* of the tiny model */
        char store_dir[128], base_url[64];
} test_agg_harness;

/* For a cmocka group setup: name is the test's, for its scratch directory. 0 or -1. */
static inline int test_agg_harness_start(test_agg_harness *h, const char *name) {
        model_config cfg;
        char err[256], sha[65];
        model *m;
        agg_server_options o = { .listen = "127.0.0.1:0", .no_merger = true };

        blas_set_threads(1);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (test_tmpdir_create(name) < 0)
                return -1;
        snprintf(h->store_dir, sizeof(h->store_dir), "%s/store", test_tmpdir);
        model_config_by_name("tiny", &cfg);
        model_layout_init(&h->lay, &cfg);
        char *kv[] = { "Model=tiny",         "BufferSize=2",         "Encoding=fp32",
                       "MaxUpdateNorm=1000", "RateLimitPerSec=1000", "RateLimitBurst=1000" };
        if (agg_store_create(h->store_dir, &h->store) < 0 ||
            agg_store_set(h->store, kv, ARRAY_SIZE(kv), true, err, sizeof(err)) < 0 ||
            model_new(&cfg, 1, 1, &m) < 0)
                return -1;
        model_init_params(m, 7);
        if (agg_blob_save_model(h->store_dir, m, 0, sha) < 0 ||
            agg_store_insert_version0(h->store, sha) < 0)
                return -1;
        model_free(m);
        if (agg_server_start(h->store, &o, &h->server) < 0)
                return -1;
        snprintf(h->base_url, sizeof(h->base_url), "http://127.0.0.1:%u",
                 agg_server_port(h->server));
        return 0;
}

/* For the group teardown. */
static inline int test_agg_harness_stop(test_agg_harness *h, void **state) {
        agg_server_stop(h->server);
        agg_store_free(h->store);
        curl_global_cleanup();
        return test_tmpdir_remove(state);
}
