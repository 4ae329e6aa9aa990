/* SPDX-License-Identifier: MIT */
/* Collaborative inference across processes: three real edged daemons on loopback serve the
 * same model file; generation split over 1, 2 and 3 of them (library call and edgectl
 * generate) is bit-identical to single-process generation, also when a peer is killed with
 * SIGKILL mid-generation; the servers refuse bad activations (4xx), missing tokens (401) and
 * new sessions while paused (503). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"
#include "test-cpu-group.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-files.h"
#include "daemon-harness.h"

#include "blas.h"
#include "checkpoint.h"
#include "model.h"
#include "rng.h"
#include "sample.h"
#include "stage-client.h"
#include "stage-wire.h"

#define N_PEERS 3
#define N_SPAN 2 /* two more daemons holding layers 0-2 and 3-5 only (Layers=) */
#define N_OUT 48
#define TOKEN "collab-test-token"

static const model_config cfg = {
        .name = "custom", .block_size = 96, .n_embd = 64, .n_layer = 6, .n_head = 4
};
static const char *prompt = "Permission is hereby granted, free of charge";

static model *m;
static pid_t pids[N_PEERS + N_SPAN];
static char *urls[N_PEERS + N_SPAN], *controls[N_PEERS + N_SPAN], *root;

/* A port nobody listens on now (the kernel's pick), so parallel runs do not collide. */
static int free_port(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;
        if (fd >= 0 && bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0 &&
            getsockname(fd, (struct sockaddr *) &sa, &len) == 0)
                port = ntohs(sa.sin_port);
        if (fd >= 0)
                close(fd);
        return port;
}

static int reference(uint8_t *out, const sample_opts *so) {
        sampler *s;
        assert_int_equal(sampler_new(m, &s), 0);
        int n = sample_generate(s, (const uint8_t *) prompt, strlen(prompt), out, N_OUT, so);
        sampler_free(s);
        return n;
}

static bool serving(const char *url) {
        stage_peer_info pi;
        char err[256];
        return stage_client_info(url, TOKEN, &pi, err, sizeof(err)) == 0;
}

static int setup(void **state) {
        char *model_path, text[1024];
        rng_t r;

        blas_set_threads(1);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (test_tmpdir_create("test-collab") < 0 || harness_make_root("laptop-ac", &root) < 0)
                return -1;
        /* a model with weights larger than the init, so every layer shapes the greedy path */
        if (model_new(&cfg, 1, 1, &m) < 0)
                return -1;
        model_init_params(m, 3);
        rng_seed(&r, 4);
        for (size_t i = 0; i < m->layout.n_params; i++)
                m->params[i] += 0.06f * rng_normal(&r);
        model_path = test_tmp_path("model.safetensors");
        if (ckpt_save(model_path, m, NULL, &(ckpt_state){ .model_version = 42 }) < 0)
                return -1;
        for (int i = 0; i < N_PEERS + N_SPAN; i++) {
                char name[32], *conf, *statedir, layers[32] = "all";
                int port = free_port();
                snprintf(name, sizeof(name), "edged-%d.conf", i);
                if (i >= N_PEERS)
                        snprintf(layers, sizeof(layers), "%d-%d", (i - N_PEERS) * 3, (i - N_PEERS) * 3 + 2);
                /* no data directory below the root: the daemons serve and do not train */
                snprintf(text, sizeof(text),
                         "[Policy]\nIdleWindowSec=1\nMaxForegroundDelayMs=1000\nMinIdlePercent=0\n"
                         "[Inference]\nServe=yes\nListenAddress=127.0.0.1:%d\nToken=" TOKEN "\n"
                         "ModelFile=%s\nSessionIdleSec=30\nLayers=%s\n",
                         port, model_path, layers);
                harness_write(test_tmpdir, name, text);
                conf = test_tmp_path(name);
                snprintf(name, sizeof(name), "state-%d", i);
                statedir = test_tmp_path(name);
                snprintf(name, sizeof(name), "control-%d", i);
                controls[i] = test_tmp_path(name);
                snprintf(name, sizeof(name), "edged-%d.log", i);
                char *log = test_tmp_path(name);
                pids[i] = harness_start(root, conf, statedir, controls[i], log, false);
                if (port < 0 || asprintf(&urls[i], "http://127.0.0.1:%d", port) < 0)
                        return -1;
                free(conf);
                free(statedir);
                free(log);
        }
        free(model_path);
        double t0 = harness_now();
        for (int i = 0; i < N_PEERS + N_SPAN; i++)
                while (!serving(urls[i])) {
                        if (harness_now() - t0 > 20) {
                                fprintf(stderr, "peer %d (%s) does not serve\n", i, urls[i]);
                                return -1;
                        }
                        usleep(50 * 1000);
                }
        printf("%d daemons serving after %.2f s\n", N_PEERS + N_SPAN, harness_now() - t0);
        return 0;
}

static int teardown(void **state) {
        for (int i = 0; i < N_PEERS + N_SPAN; i++) {
                harness_stop(pids[i], SIGKILL);
                free(urls[i]);
                free(controls[i]);
        }
        model_free(m);
        free(root);
        return test_tmpdir_remove(state);
}

typedef struct {
        int seen, kill_at;
        pid_t victim;
} kill_ctx;

static void emit_and_kill(void *ctx, uint8_t tok) {
        kill_ctx *k = ctx;
        if (++k->seen == k->kill_at && k->victim > 0) {
                kill(k->victim, SIGKILL);
                waitpid(k->victim, NULL, 0);
        }
}

static int generate(int n_urls, const sample_opts *so, uint8_t *out, pipeline_stats *st,
                    kill_ctx *k) {
        stage_client_opts o = { .urls = (const char *const *) urls, .n_urls = n_urls,
                                .token = TOKEN, .emit = k ? emit_and_kill : NULL, .emit_ctx = k,
                                /* measured speeds vary with the load (and a sanitizer): the
                                 * speed-weighted split is unit-tested in test-stage */
                                .equal_split = true };
        char err[512] = "";
        int n = stage_client_generate(&o, (const uint8_t *) prompt, strlen(prompt), out, N_OUT, so,
                                      st, err, sizeof(err));
        if (n < 0)
                fprintf(stderr, "generate: %s\n", err);
        return n;
}

static void test_identical(void **state) {
        const sample_opts greedy = { .temperature = 0 }, hot = { .temperature = 0.8f, .top_k = 40, .seed = 7 };
        const sample_opts *modes[2] = { &greedy, &hot };
        uint8_t want[N_OUT], got[N_OUT];
        pipeline_stats st;

        for (int k = 0; k < 2; k++) {
                assert_int_equal(reference(want, modes[k]), N_OUT);
                for (int n = 1; n <= N_PEERS; n++) {
                        double t0 = harness_now();
                        memset(got, 0, sizeof(got));
                        assert_int_equal(generate(n, modes[k], got, &st, NULL), N_OUT);
                        assert_int_equal(st.n_stages, n);
                        assert_int_equal(st.replans, 0);
                        assert_memory_equal(got, want, N_OUT);
                        printf("%s over %d process%s: identical, %.0f ms, %.0f bytes/token\n",
                               k ? "sampled" : "greedy", n, n > 1 ? "es" : "",
                               (harness_now() - t0) * 1e3,
                               (double) (st.bytes_sent + st.bytes_received) / N_OUT);
                }
        }
}

/* edgectl generate prints the prompt, the same continuation, and a newline. */
static void test_edgectl(void **state) {
        const char *bin = getenv("EDGECTL_BIN");
        uint8_t want[N_OUT];
        char cmd[1024], got[1024] = "", expect[1024];
        const sample_opts greedy = { .temperature = 0 };

        assert_int_equal(reference(want, &greedy), N_OUT);
        snprintf(expect, sizeof(expect), "%s%.*s\n", prompt, N_OUT, (const char *) want);
        snprintf(cmd, sizeof(cmd),
                 "EDGED_TOKEN=" TOKEN " %s generate --peers %s,%s,%s --tokens %d --temperature 0 '%s'",
                 bin ? bin : "build/edgectl", urls[0], urls[1], urls[2], N_OUT, prompt);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t n = fread(got, 1, sizeof(got) - 1, p);
        got[n] = 0;
        assert_int_equal(pclose(p), 0);
        assert_memory_equal(got, expect, strlen(expect));
        assert_int_equal(n, strlen(expect));
}

static long post(const char *url, const char *auth, const void *body, size_t size, char *reply,
                 size_t reply_size) {
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        long status = 0;
        FILE *f = fmemopen(reply, reply_size, "w");

        if (auth)
                h = curl_slist_append(h, auth);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long) size);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        fclose(f);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return status;
}

/* A hidden-state message for layers 2..5 of the served model: n positions of width w. */
static void *hidden(uint64_t session, int n, int w, float fill, size_t *size) {
        stage_wire_header h = { .kind = STAGE_WIRE_HIDDEN, .version = 42, .first = 2, .last = 5,
                                .session = session, .n_tokens = (uint32_t) n, .width = (uint32_t) w };
        float *d = calloc((size_t) n * w, sizeof(float));
        void *b = NULL;
        for (int i = 0; i < n * w; i++)
                d[i] = 0.01f * (float) (i % 17);
        assert_int_equal(stage_wire_encode(&h, d, &b, size), 0);
        free(d);
        if (isnan(fill)) /* stage_wire_encode does not check values: plant a NaN */
                memcpy((char *) b + STAGE_WIRE_HEADER + 5 * sizeof(float), &fill, sizeof(float));
        return b;
}

static void test_rejects(void **state) {
        const char *auth = "Authorization: Bearer " TOKEN;
        char url[256], reply[1024];
        size_t size;
        void *b;

        snprintf(url, sizeof(url), "%s/v1/stage/42/2-5", urls[0]);
        b = hidden(11, 3, 64, 0, &size);
        memset(reply, 0, sizeof(reply));
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 200);
        assert_int_equal(post(url, NULL, b, size, reply, sizeof(reply)), 401);
        assert_int_equal(post(url, "Authorization: Bearer wrong-token-wrong-toke", b, size, reply,
                              sizeof(reply)), 401);
        memset(reply, 0, sizeof(reply));
        assert_int_equal(post(url, auth, b, size - 7, reply, sizeof(reply)), 400);
        printf("truncated: %s\n", reply);
        assert_non_null(strstr(reply, "\"error\":\"bad-activations\""));
        free(b);
        /* the model's width is 64 */
        b = hidden(12, 3, 63, 0, &size);
        memset(reply, 0, sizeof(reply));
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 400);
        printf("wrong width: %s\n", reply);
        free(b);
        b = hidden(13, 3, 64, NAN, &size);
        memset(reply, 0, sizeof(reply));
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 400);
        printf("NaN: %s\n", reply);
        assert_non_null(strstr(reply, "NaN"));
        /* larger than a full window of hidden states (96 x 64 floats): refused unread */
        char *big = calloc(1, 30000);
        assert_int_equal(post(url, auth, big, 30000, reply, sizeof(reply)), 413);
        free(big);
        /* a version not served, a span past the model */
        snprintf(url, sizeof(url), "%s/v1/stage/41/2-5", urls[0]);
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 404);
        snprintf(url, sizeof(url), "%s/v1/stage/42/2-9", urls[0]);
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 404);
        free(b);
}

/* Paused by the user: a new session gets 503 with the reason; after resume it is served. */
static void test_paused(void **state) {
        const char *auth = "Authorization: Bearer " TOKEN;
        char url[256], reply[1024];
        size_t size;
        void *b = hidden(21, 2, 64, 0, &size);

        json_decref(harness_request(controls[1], "{\"cmd\":\"pause\"}\n"));
        assert_true(harness_wait_state(controls[1], "paused", "user-paused", 5) >= 0);
        snprintf(url, sizeof(url), "%s/v1/stage/42/2-5", urls[1]);
        memset(reply, 0, sizeof(reply));
        assert_int_equal(post(url, auth, b, size, reply, sizeof(reply)), 503);
        printf("paused: %s\n", reply);
        assert_non_null(strstr(reply, "\"error\":\"paused\""));
        /* a generation over all three leaves the paused one out, with the same text */
        const sample_opts greedy = { .temperature = 0 };
        uint8_t want[N_OUT], got[N_OUT];
        pipeline_stats st;
        assert_int_equal(reference(want, &greedy), N_OUT);
        assert_int_equal(generate(N_PEERS, &greedy, got, &st, NULL), N_OUT);
        assert_int_equal(st.replans, 0);
        assert_int_equal(st.n_stages, 2);
        for (int i = 0; i < st.n_stages; i++)
                assert_int_not_equal(st.plan[i].peer, 1);
        assert_memory_equal(got, want, N_OUT);
        printf("generation while peer 1 is paused: planned over %d stages, identical\n", st.n_stages);
        json_decref(harness_request(controls[1], "{\"cmd\":\"resume\"}\n"));
        double t0 = harness_now();
        long status = 0;
        while (harness_now() - t0 < 5 && (status = post(url, auth, b, size, reply, sizeof(reply))) != 200)
                usleep(100 * 1000);
        assert_int_equal(status, 200);
        free(b);
}

/* Daemons that hold only layers 0-2 and 3-5 (each loads half the weights) chain into the
 * whole model, in whatever order they are listed; a span they do not hold is 404. */
static void test_fixed_spans(void **state) {
        const sample_opts greedy = { .temperature = 0 };
        uint8_t want[N_OUT], got[N_OUT];
        char *order[2] = { urls[N_PEERS + 1], urls[N_PEERS] }, err[512], url[256], reply[512];
        stage_client_opts o = { .urls = (const char *const *) order, .n_urls = 2, .token = TOKEN };
        stage_peer_info pi;
        pipeline_stats st;
        size_t size;

        assert_int_equal(stage_client_info(urls[N_PEERS + 1], TOKEN, &pi, err, sizeof(err)), 0);
        assert_int_equal(pi.first, 3);
        assert_int_equal(pi.last, 5);
        assert_int_equal(reference(want, &greedy), N_OUT);
        assert_int_equal(stage_client_generate(&o, (const uint8_t *) prompt, strlen(prompt), got, N_OUT,
                                               &greedy, &st, err, sizeof(err)), N_OUT);
        assert_int_equal(st.n_stages, 2);
        assert_int_equal(st.plan[0].peer, 1); /* the holder of 0-2, listed second */
        assert_int_equal(st.plan[0].last, 2);
        assert_int_equal(st.plan[1].first, 3);
        assert_memory_equal(got, want, N_OUT);
        printf("layers 0-2 and 3-5 on two daemons: identical\n");

        snprintf(url, sizeof(url), "%s/v1/stage/42/2-5", urls[N_PEERS]);
        void *b = hidden(31, 2, 64, 0, &size);
        assert_int_equal(post(url, "Authorization: Bearer " TOKEN, b, size, reply, sizeof(reply)), 404);
        free(b);
}

/* SIGKILL to the peer holding the middle of the split after 12 tokens: the client re-plans
 * over the two left, replays, and the text is still exactly the single-process text. */
static void test_kill(void **state) {
        const sample_opts greedy = { .temperature = 0 };
        uint8_t want[N_OUT], got[N_OUT];
        kill_ctx k = { .kill_at = 12, .victim = pids[1] };
        pipeline_stats st;

        assert_int_equal(reference(want, &greedy), N_OUT);
        assert_int_equal(generate(N_PEERS, &greedy, got, &st, &k), N_OUT);
        pids[1] = -1;
        assert_int_equal(k.seen, N_OUT);
        assert_int_equal(st.replans, 1);
        assert_int_equal(st.n_stages, 2);
        for (int i = 0; i < st.n_stages; i++)
                assert_int_not_equal(st.plan[i].peer, 1);
        assert_memory_equal(got, want, N_OUT);
        printf("peer 1 killed after %d tokens: identical output over %d stages\n", k.kill_at,
               st.n_stages);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_identical), cmocka_unit_test(test_edgectl),
                cmocka_unit_test(test_rejects),   cmocka_unit_test(test_paused),
                cmocka_unit_test(test_fixed_spans),
                cmocka_unit_test(test_kill),
        };
        test_cpu_group_enter("collab");
        return test_run_group("test-collab", tests, setup, teardown);
}
