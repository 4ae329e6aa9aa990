/* SPDX-License-Identifier: MIT */
/* A distilled student published beside the federated teacher: what is stored is exactly the
 * student's weights (reloaded bit for bit, content hash checked), publishing replaces the
 * previous one and prunes its blob, and damaged checkpoints, NaN weights and damaged
 * student.json files are refused with a message naming the file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <curl/curl.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blas.h"
#include "blobs.h"
#include "checkpoint.h"
#include "fileio.h"
#include "hash.h"
#include "macros.h"
#include "model.h"
#include "server.h"
#include "store.h"
#include "student.h"
#include "test-files.h"
#include "test-http.h"

/* A tiny checkpoint with parameters from seed; with_nan poisons one of them. */
static char *make_ckpt(const char *name, uint64_t seed, bool with_nan) {
        model_config cfg;
        model *m;
        char *path = test_tmp_path(name);

        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, seed);
        if (with_nan)
                m->params[m->layout.n_params / 2] = NAN;
        assert_int_equal(ckpt_save(path, m, NULL, &(ckpt_state){ .step = 5 }), 0);
        model_free(m);
        return path;
}

static size_t count_blobs(const char *store) {
        char dir[256];

        snprintf(dir, sizeof(dir), "%s/student/blobs", store);
        return test_count_entries(dir);
}

/* The stored blob loads into a model equal, bit for bit, to the published checkpoint. */
static void assert_blob_equals(const char *store, const agg_student *st, uint64_t seed) {
        char *blob = NULL, actual[HASH_SHA256_HEX];
        model_config cfg;
        model *got, *want;

        assert_int_equal(agg_student_blob_path(store, st->sha, &blob), 0);
        assert_int_equal(hash_sha256_file_hex(blob, actual), 0);
        assert_string_equal(actual, st->sha);
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &got), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &want), 0);
        model_init_params(want, seed);
        assert_int_equal(ckpt_load(blob, got, NULL, NULL), 0);
        assert_int_equal(st->n_params, want->layout.n_params);
        assert_memory_equal(got->params, want->params, want->layout.n_params * sizeof(float));
        model_free(got);
        model_free(want);
        free(blob);
}

static void test_publish_read_replace(void **state) {
        char *a = make_ckpt("a.ckpt", 11, false), *b = make_ckpt("b.ckpt", 12, false);
        agg_student st, rd, st2;

        assert_int_equal(agg_student_read(test_tmpdir, &rd), -ENOENT);
        assert_int_equal(agg_student_publish(test_tmpdir, a, 3, &st), 0);
        assert_string_equal(st.config, "tiny");
        assert_int_equal(st.teacher_version, 3);
        assert_blob_equals(test_tmpdir, &st, 11);

        assert_int_equal(agg_student_read(test_tmpdir, &rd), 0);
        assert_string_equal(rd.sha, st.sha);
        assert_string_equal(rd.config, "tiny");
        assert_int_equal(rd.teacher_version, 3);
        assert_int_equal(rd.bytes, st.bytes);
        assert_int_equal(rd.n_params, st.n_params);
        assert_int_equal(count_blobs(test_tmpdir), 1);

        /* a second student replaces the first; the first's blob goes */
        assert_int_equal(agg_student_publish(test_tmpdir, b, 4, &st2), 0);
        assert_string_not_equal(st2.sha, st.sha);
        assert_int_equal(agg_student_read(test_tmpdir, &rd), 0);
        assert_string_equal(rd.sha, st2.sha);
        assert_int_equal(rd.teacher_version, 4);
        assert_int_equal(count_blobs(test_tmpdir), 1);
        assert_blob_equals(test_tmpdir, &st2, 12);
        free(a);
        free(b);
}

static void test_refuses_bad_checkpoints(void **state) {
        char *nan = make_ckpt("nan.ckpt", 13, true), *junk = test_tmp_path("junk.ckpt"),
             *missing = test_tmp_path("missing.ckpt"), *log;
        agg_student before, after;

        assert_int_equal(agg_student_read(test_tmpdir, &before), 0);
        assert_int_equal(write_file_atomic(junk, 0644, "not a checkpoint", 16), 0);
        test_capture_begin();
        assert_true(agg_student_publish(test_tmpdir, nan, 5, NULL) < 0);
        assert_true(agg_student_publish(test_tmpdir, junk, 5, NULL) < 0);
        assert_true(agg_student_publish(test_tmpdir, missing, 5, NULL) < 0);
        log = test_capture_end();
        assert_non_null(strstr(log, "nan.ckpt: tensor"));
        assert_non_null(strstr(log, "non-finite"));
        assert_non_null(strstr(log, "junk.ckpt"));
        assert_non_null(strstr(log, "missing.ckpt"));
        /* the published student is untouched */
        assert_int_equal(agg_student_read(test_tmpdir, &after), 0);
        assert_string_equal(after.sha, before.sha);
        assert_int_equal(count_blobs(test_tmpdir), 1);
        free(log);
        free(nan);
        free(junk);
        free(missing);
}

static void test_damaged_json(void **state) {
        static const char *const bodies[] = {
                "{",
                "[]",
                "{\"sha256\":\"zz\",\"config\":\"tiny\",\"teacher_version\":1,\"bytes\":1,"
                "\"published\":1,\"n_params\":1}",
                "{\"sha256\":\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                "\",\"config\":\"huge\",\"teacher_version\":1,\"bytes\":1,\"published\":1,"
                "\"n_params\":1}",
                "{\"sha256\":\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                "\",\"config\":\"tiny\",\"teacher_version\":-1,\"bytes\":1,\"published\":1,"
                "\"n_params\":1}",
                "{\"sha256\":\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                "\",\"config\":\"tiny\",\"teacher_version\":1,\"bytes\":1,\"published\":1,"
                "\"n_params\":1,\"extra\":2}",
        };
        char *path = test_tmp_path(AGG_STUDENT_JSON), *log;
        agg_student st;

        for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
                assert_int_equal(write_file_atomic(path, 0644, bodies[i], strlen(bodies[i])), 0);
                test_capture_begin();
                int r = agg_student_read(test_tmpdir, &st);
                log = test_capture_end();
                if (r != -EBADMSG)
                        fail_msg("body %zu: %d, want -EBADMSG", i, r);
                assert_non_null(strstr(log, "student.json"));
                free(log);
        }
        free(path);
}

/* ---- over HTTP: an in-process aggregator with one enrolled device ---- */

/* GET url with the given headers (NULL-terminated); auth NULL: none. */
static reply get(const char *url, const char *auth, const char *extra) {
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        char line[256];
        reply r = { 0 };

        assert_non_null(c);
        if (auth) {
                snprintf(line, sizeof(line), "Authorization: %s", auth);
                h = curl_slist_append(h, line);
        }
        if (extra)
                h = curl_slist_append(h, extra);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, reply_on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, reply_on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return r;
}

static void test_http(void **state) {
        char dir[256], auth[160], base[64], url[128], tok[AGG_ID_HEX], id[AGG_ID_HEX],
                secret[AGG_SECRET_HEX], sha[65], err[256], *kv[] = { "Model=tiny" };
        char *ckpt = make_ckpt("http.ckpt", 21, false), *blob = NULL, *file = NULL;
        agg_server_options o = { .listen = "127.0.0.1:0", .no_merger = true };
        agg_store *store;
        agg_server *srv;
        agg_student st;
        model_config cfg;
        model *m;
        reply r, task0, task1;
        size_t file_size;

        snprintf(dir, sizeof(dir), "%s/agg", test_tmpdir);
        assert_int_equal(agg_store_create(dir, &store), 0);
        assert_int_equal(agg_store_set(store, kv, 1, true, err, sizeof(err)), 0);
        assert_int_equal(model_config_by_name("tiny", &cfg), 0);
        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, 3);
        assert_int_equal(agg_blob_save_model(dir, m, 0, sha), 0);
        assert_int_equal(agg_store_insert_version0(store, sha), 0);
        model_free(m);
        assert_int_equal(agg_store_token_create(store, 0, 1, tok), 0);
        assert_int_equal(agg_store_enroll(store, tok, "t", id, secret), 0);
        snprintf(auth, sizeof(auth), "Bearer %s:%s", id, secret);
        assert_int_equal(agg_server_start(store, &o, &srv), 0);
        snprintf(base, sizeof(base), "http://127.0.0.1:%u", agg_server_port(srv));

        snprintf(url, sizeof(url), "%s/v1/student", base);
        r = get(url, auth, NULL);
        assert_int_equal(r.status, 404); /* none yet */
        assert_non_null(strstr(r.body, "no student"));
        free(r.body);
        snprintf(url, sizeof(url), "%s/v1/task", base);
        task0 = get(url, auth, NULL);
        assert_int_equal(task0.status, 200);
        assert_null(strstr(task0.body, "\"student\""));

        assert_int_equal(agg_student_publish(dir, ckpt, 0, &st), 0);
        assert_int_equal(agg_student_blob_path(dir, st.sha, &blob), 0);
        assert_int_equal(read_full_file(blob, 1 << 26, (void **) &file, &file_size), 0);

        snprintf(url, sizeof(url), "%s/v1/student", base);
        r = get(url, NULL, NULL);
        assert_int_equal(r.status, 401);
        free(r.body);
        r = get(url, auth, NULL);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, st.sha));
        assert_non_null(strstr(r.body, "\"tiny\""));
        free(r.body);

        /* the weights: whole, a range, and not again when unchanged */
        snprintf(url, sizeof(url), "%s/v1/student/model", base);
        r = get(url, auth, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.size, file_size);
        assert_memory_equal(r.body, file, file_size);
        char etag[140];
        snprintf(etag, sizeof(etag), "\"%s\"", st.sha);
        assert_string_equal(r.etag, etag);
        free(r.body);
        r = get(url, auth, "Range: bytes=100-199");
        assert_int_equal(r.status, 206);
        assert_int_equal(r.size, 100);
        assert_memory_equal(r.body, file + 100, 100);
        free(r.body);
        snprintf(err, sizeof(err), "If-None-Match: %s", etag);
        r = get(url, auth, err);
        assert_int_equal(r.status, 304);
        free(r.body);
        snprintf(url, sizeof(url), "%s/v1/student/other", base);
        r = get(url, auth, NULL);
        assert_int_equal(r.status, 404);
        free(r.body);

        /* the task names it, under a new ETag */
        snprintf(url, sizeof(url), "%s/v1/task", base);
        task1 = get(url, auth, NULL);
        assert_int_equal(task1.status, 200);
        assert_non_null(strstr(task1.body, "\"student\""));
        assert_non_null(strstr(task1.body, st.sha));
        assert_string_not_equal(task0.etag, task1.etag);

        agg_server_stop(srv);
        agg_store_free(store);
        free(task0.body);
        free(task1.body);
        free(file);
        free(blob);
        free(ckpt);
}

static int setup(void **state) {
        blas_set_threads(1);
        return test_tmpdir_create("test-student");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_publish_read_replace),
                cmocka_unit_test(test_refuses_bad_checkpoints),
                cmocka_unit_test(test_damaged_json),
                cmocka_unit_test(test_http),
        };
        return test_run_group("test-student", tests, setup, test_tmpdir_remove);
}
