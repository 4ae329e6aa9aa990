/* SPDX-License-Identifier: MIT */
/* Discovery for collaborative inference: the real edge-aggregator lists the stage servers
 * that enrolled devices announced in their telemetry (GET /v1/peers), filtered by version,
 * only to enrolled devices; the client side (stage_client_fleet_peers, which edgectl
 * generate --fleet uses) reads the list back with a device identity file. */
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
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test-files.h"
#include "daemon-harness.h"

#include "checkpoint.h"
#include "fileio.h"

#include "macros.h"
#include "stage-client.h"

static char agg_bin[512], store[256], base[64];
static pid_t agg_pid;

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

static int sh(const char *cmd, char *out, size_t size) {
        FILE *p = popen(cmd, "r");
        size_t n = 0;
        if (!p)
                return -1;
        if (out) {
                n = fread(out, 1, size - 1, p);
                out[n] = 0;
        } else {
                char sink[256];
                while (fread(sink, 1, sizeof(sink), p) > 0) {
                }
        }
        return pclose(p);
}

/* One HTTP request to root (base: the aggregator); the reply body into out; the status. */
static long http_to(const char *root, const char *method, const char *path, const char *auth,
                    const char *body, char *out, size_t size) {
        char url[512];
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        FILE *f = fmemopen(out, size, "w");
        long status = 0;

        memset(out, 0, size);
        snprintf(url, sizeof(url), "%s%s", root, path);
        if (auth)
                h = curl_slist_append(h, auth);
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        if (body)
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        fclose(f);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return status;
}

static long http(const char *method, const char *path, const char *auth, const char *body, char *out,
                 size_t size) {
        return http_to(base, method, path, auth, body, out, size);
}

/* Runs edge-aggregator serve on a port of its choosing; base is its URL. */
static int start_aggregator(void) {
        char buf[2048], out_path[300];

        snprintf(out_path, sizeof(out_path), "%s/aggregator.out", test_tmpdir);
        (void) unlink(out_path); /* not the port of the last run */
        fflush(NULL);
        agg_pid = fork();
        if (agg_pid == 0) {
                if (!freopen(out_path, "w", stdout))
                        _exit(126);
                execl(agg_bin, "edge-aggregator", "--store", store, "serve", "--listen", "127.0.0.1:0",
                      (char *) NULL);
                _exit(127);
        }
        for (int tries = 0; tries < 100; tries++) {
                FILE *f = fopen(out_path, "re");
                size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
                buf[n] = 0;
                if (f)
                        fclose(f);
                const char *p = strstr(buf, "on port ");
                if (p) {
                        snprintf(base, sizeof(base), "http://127.0.0.1:%d", atoi(p + 8));
                        return 0;
                }
                usleep(50 * 1000);
        }
        return -1;
}

static void stop_aggregator(void) {
        if (agg_pid > 0) {
                kill(agg_pid, SIGTERM);
                waitpid(agg_pid, NULL, 0);
        }
        agg_pid = 0;
}

static int setup(void **state) {
        const char *edged = getenv("EDGED_BIN"), *agg = getenv("AGGREGATOR_BIN");
        char buf[2048];

        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (test_tmpdir_create("test-peers") < 0)
                return -1;
        if (agg)
                snprintf(agg_bin, sizeof(agg_bin), "%s", agg);
        else {
                snprintf(buf, sizeof(buf), "%s", edged ? edged : "build/edged");
                snprintf(agg_bin, sizeof(agg_bin), "%s/edge-aggregator", dirname(buf));
        }
        snprintf(store, sizeof(store), "%s/aggregator", test_tmpdir);
        snprintf(buf, sizeof(buf), "'%s' --store '%s' init --config tiny 2>&1", agg_bin, store);
        if (sh(buf, NULL, 0) != 0)
                return -1;
        return start_aggregator();
}

static int teardown(void **state) {
        stop_aggregator();
        return test_tmpdir_remove(state);
}

/* The fleet's stage token from GET /v1/task with these device credentials. */
static void task_stage_token(const char *auth, char ret[65]) {
        char reply[4096];
        assert_int_equal(http("GET", "/v1/task", auth, NULL, reply, sizeof(reply)), 200);
        json_t *j = json_loads(reply, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "stage_token"));
        assert_non_null(t);
        assert_int_equal(strlen(t), 64);
        assert_int_equal(strspn(t, "0123456789abcdef"), 64);
        snprintf(ret, 65, "%s", t);
        json_decref(j);
}

/* Whether the file holds needle. */
static bool file_contains(const char *path, const char *needle) {
        _cleanup_free_ char *text = NULL;
        size_t n;
        if (read_full_file(path, 64 << 20, (void **) &text, &n) < 0)
                return false;
        return memmem(text, n, needle, strlen(needle)) != NULL;
}

/* Enrolls a device; "Authorization: Bearer ID:SECRET" into auth, and an identity file. */
static void enroll(const char *token, char *auth, size_t size, const char *identity_path) {
        char body[256], reply[1024];
        snprintf(body, sizeof(body), "{\"token\":\"%s\"}", token);
        assert_int_equal(http("POST", "/v1/enroll", NULL, body, reply, sizeof(reply)), 201);
        json_t *j = json_loads(reply, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "device_id"));
        const char *secret = json_string_value(json_object_get(j, "secret"));
        assert_non_null(id);
        assert_non_null(secret);
        snprintf(auth, size, "Authorization: Bearer %s:%s", id, secret);
        if (identity_path) {
                FILE *f = fopen(identity_path, "we");
                assert_non_null(f);
                fprintf(f, "{\"server\":\"%s\",\"device_id\":\"%s\",\"secret\":\"%s\"}\n", base, id, secret);
                fclose(f);
        }
        json_decref(j);
}

static void test_peers(void **state) {
        char token[128], cmd[2048], a1[256], a2[256], a3[256], reply[4096];
        _cleanup_free_ char *identity = test_tmp_path("identity");
        char *urls[8] = { NULL }, err[256], ftok[65], task_token[65], other[65];
        int n = 0;

        snprintf(cmd, sizeof(cmd), "'%s' --store '%s' token create --uses 5", agg_bin, store);
        assert_int_equal(sh(cmd, token, sizeof(token)), 0);
        token[strcspn(token, "\n")] = 0;
        enroll(token, a1, sizeof(a1), NULL);
        enroll(token, a2, sizeof(a2), NULL);
        enroll(token, a3, sizeof(a3), identity);

        /* two devices serve (versions 7 and 8), one does not; a bogus URL is not listed */
        assert_int_equal(http("POST", "/v1/telemetry", a1,
                              "{\"state\":\"running\",\"stage_url\":\"http://10.0.0.1:7878\",\"stage_version\":7}",
                              reply, sizeof(reply)), 204);
        assert_int_equal(http("POST", "/v1/telemetry", a2,
                              "{\"state\":\"paused\",\"stage_url\":\"http://10.0.0.2:7878\",\"stage_version\":8}",
                              reply, sizeof(reply)), 204);
        assert_int_equal(http("POST", "/v1/telemetry", a3,
                              "{\"state\":\"running\",\"stage_url\":\"javascript:alert(1)\",\"stage_version\":7}",
                              reply, sizeof(reply)), 204);

        assert_int_equal(http("GET", "/v1/peers", NULL, NULL, reply, sizeof(reply)), 401);
        assert_int_equal(http("GET", "/v1/peers", a3, NULL, reply, sizeof(reply)), 200);
        printf("all: %s\n", reply);
        assert_non_null(strstr(reply, "http://10.0.0.1:7878"));
        assert_non_null(strstr(reply, "http://10.0.0.2:7878"));
        assert_null(strstr(reply, "javascript"));
        assert_int_equal(http("GET", "/v1/peers?version=7", a3, NULL, reply, sizeof(reply)), 200);
        printf("version 7: %s\n", reply);
        assert_non_null(strstr(reply, "http://10.0.0.1:7878"));
        assert_null(strstr(reply, "http://10.0.0.2:7878"));
        assert_int_equal(http("GET", "/v1/peers?version=x", a3, NULL, reply, sizeof(reply)), 400);

        /* the client edgectl generate --fleet uses, with the identity file */
        _cleanup_free_ char *cred = stage_client_identity_credentials(identity);
        assert_non_null(cred);
        assert_int_equal(stage_client_fleet_peers(base, cred, 8, urls, 8, &n, ftok, err, sizeof(err)), 0);
        assert_int_equal(n, 1);
        assert_string_equal(urls[0], "http://10.0.0.2:7878");
        free(urls[0]);
        /* with the fleet's stage token: the one every device's task has */
        task_stage_token(a3, task_token);
        task_stage_token(a1, other);
        assert_string_equal(other, task_token);
        assert_int_equal(strlen(ftok), 64);
        assert_string_equal(ftok, task_token);
        memset(ftok, 'x', sizeof(ftok));
        assert_int_equal(stage_client_fleet_peers(base, "00:00", 0, urls, 8, &n, ftok, err, sizeof(err)), -EHOSTUNREACH);
        assert_string_equal(ftok, ""); /* not told to strangers */
        printf("without an identity: %s\n", err);

        /* the two stop serving: the peers list is empty again (for the daemon's test) */
        assert_int_equal(http("POST", "/v1/telemetry", a1, "{\"state\":\"running\"}", reply, sizeof(reply)), 204);
        assert_int_equal(http("POST", "/v1/telemetry", a2, "{\"state\":\"running\"}", reply, sizeof(reply)), 204);
        assert_int_equal(http("GET", "/v1/peers", a3, NULL, reply, sizeof(reply)), 200);
        assert_null(strstr(reply, "http://10.0.0."));

        /* the token is the store's: the same after a restart */
        stop_aggregator();
        assert_int_equal(start_aggregator(), 0);
        task_stage_token(a3, other);
        assert_string_equal(other, task_token);
        _cleanup_free_ char *agg_out = test_tmp_path("aggregator.out");
        assert_false(file_contains(agg_out, task_token));
}

/* Runs cmd; its stdout into out; the exit status. */
static int run(const char *cmd, char *out, size_t size) {
        int st = sh(cmd, out, size);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A real edged with [Inference] Serve=yes and a federation link announces its stage server
 * in telemetry, and the aggregator lists it under the version it serves. Its stage server
 * accepts the fleet's stage token from the task (as well as its Token=), so edgectl generate
 * --fleet with only a device identity runs on it. */
static void test_daemon_announces(void **state) {
        static const model_config cfg = { "custom", 32, 32, 2, 4 };
        char token[128], cmd[2048], text[2048], auth[256], reply[4096];
        _cleanup_free_ char *model_path = test_tmp_path("served.safetensors");
        _cleanup_free_ char *conf = test_tmp_path("edged.conf");
        _cleanup_free_ char *statedir = test_tmp_path("state");
        _cleanup_free_ char *control = test_tmp_path("control");
        _cleanup_free_ char *log = test_tmp_path("edged.log");
        _cleanup_free_ char *identity = test_tmp_path("identity2");
        _cleanup_free_ char *token_file = test_tmp_path("peers-token");
        char *root = NULL, stage_url[64], fleet_token[65], wrong[128], bearer[128];
        static char with_fleet[4096], with_token[4096];
        int port = free_port();
        model *m;

        assert_int_equal(model_new(&cfg, 1, 1, &m), 0);
        model_init_params(m, 5);
        assert_int_equal(ckpt_save(model_path, m, NULL, &(ckpt_state){ .model_version = 5 }), 0);
        model_free(m);
        snprintf(cmd, sizeof(cmd), "'%s' --store '%s' set ReportIntervalSec=1 >/dev/null 2>&1 && '%s' --store '%s' token create --uses 2",
                 agg_bin, store, agg_bin, store);
        assert_int_equal(sh(cmd, token, sizeof(token)), 0);
        token[strcspn(token, "\n")] = 0;
        assert_int_equal(harness_make_root("laptop-ac", &root), 0);
        snprintf(stage_url, sizeof(stage_url), "http://127.0.0.1:%d", port);
        snprintf(text, sizeof(text),
                 "[Policy]\nIdleWindowSec=1\nMaxForegroundDelayMs=1000\nMinIdlePercent=0\n"
                 "[Federation]\nServer=%s\nEnrollToken=%s\n"
                 "[Inference]\nServe=yes\nListenAddress=127.0.0.1:%d\nToken=peers-token\nModelFile=%s\n",
                 base, token, port, model_path);
        harness_write(test_tmpdir, "edged.conf", text);
        pid_t pid = harness_start(root, conf, statedir, control, log, false);
        assert_true(pid > 0);

        /* ask as another enrolled device */
        enroll(token, auth, sizeof(auth), identity);
        bool listed = false;
        double t0 = harness_now();
        while (!listed && harness_now() - t0 < 30) {
                assert_int_equal(http("GET", "/v1/peers?version=5", auth, NULL, reply, sizeof(reply)), 200);
                listed = strstr(reply, stage_url) != NULL;
                if (!listed)
                        usleep(200 * 1000);
        }
        printf("after %.1f s: %s\n", harness_now() - t0, reply);

        /* the fleet's token, as the serving device got it in its task; the stage server
         * takes it up at its next policy decision */
        task_stage_token(auth, fleet_token);
        snprintf(bearer, sizeof(bearer), "Authorization: Bearer %s", fleet_token);
        long st = 0;
        t0 = harness_now();
        while (listed && harness_now() - t0 < 30 &&
               (st = http_to(stage_url, "GET", "/v1/stage/info", bearer, NULL, reply, sizeof(reply))) != 200)
                usleep(200 * 1000);
        printf("fleet token: %ld after %.1f s\n", st, harness_now() - t0);
        long st_config = http_to(stage_url, "GET", "/v1/stage/info", "Authorization: Bearer peers-token", NULL,
                                 reply, sizeof(reply));
        snprintf(wrong, sizeof(wrong), "Authorization: Bearer %.63s%c", fleet_token,
                 fleet_token[63] == '0' ? '1' : '0');
        long st_wrong = http_to(stage_url, "GET", "/v1/stage/info", wrong, NULL, reply, sizeof(reply));
        long st_wrong_post = http_to(stage_url, "POST", "/v1/stage/5/0-1", wrong, "x", reply, sizeof(reply));
        long st_secret = http_to(stage_url, "GET", "/v1/stage/info", auth, NULL, reply, sizeof(reply));

        /* edgectl generate --fleet with the identity alone, against --peers with Token= */
        snprintf(cmd, sizeof(cmd), "env -u EDGED_TOKEN '%s' generate --fleet %s --identity '%s' --tokens 24 "
                 "--temperature 0 'the fleet' 2>&1", getenv("EDGECTL_BIN") ? getenv("EDGECTL_BIN") : "build/edgectl",
                 base, identity);
        int rc_fleet = run(cmd, with_fleet, sizeof(with_fleet));
        harness_write(test_tmpdir, "peers-token", "peers-token\n");
        snprintf(cmd, sizeof(cmd), "env -u EDGED_TOKEN '%s' generate --peers %s --token-file '%s' --tokens 24 "
                 "--temperature 0 'the fleet' 2>&1", getenv("EDGECTL_BIN") ? getenv("EDGECTL_BIN") : "build/edgectl",
                 stage_url, token_file);
        int rc_token = run(cmd, with_token, sizeof(with_token));
        printf("--fleet (%d): %s--token-file (%d): %s", rc_fleet, with_fleet, rc_token, with_token);
        harness_stop(pid, SIGTERM);
        free(root);
        if (!listed) { /* the daemon's side of the story */
                snprintf(cmd, sizeof(cmd), "cat '%s' >&2", log);
                (void) sh(cmd, NULL, 0);
        }
        assert_true(listed);
        assert_int_equal(http("GET", "/v1/peers?version=6", auth, NULL, reply, sizeof(reply)), 200);
        assert_null(strstr(reply, stage_url));

        assert_int_equal(st, 200);
        assert_int_equal(st_config, 200);
        assert_int_equal(st_wrong, 401);
        assert_int_equal(st_wrong_post, 401);
        assert_int_equal(st_secret, 401); /* another device's credentials are not a token */
        assert_int_equal(rc_token, 0);
        assert_int_equal(rc_fleet, 0);
        assert_int_equal(strncmp(with_token, "the fleet", 9), 0);
        assert_true(strlen(with_token) == 9 + 24 + 1);
        assert_string_equal(with_fleet, with_token);
        /* the secret is nowhere in the daemon's log */
        assert_false(file_contains(log, fleet_token));
}

int main(void) {
        const struct CMUnitTest tests[] = { cmocka_unit_test(test_peers),
                                            cmocka_unit_test(test_daemon_announces) };
        test_cpu_group_enter("peers");
        return test_run_group("test-peers", tests, setup, teardown);
}
