/* SPDX-License-Identifier: MIT */
/* The federation client against a fake aggregator in this process: libmicrohttpd on
 * 127.0.0.1 (an ephemeral port), one thread per connection, whose behaviour each test sets
 * (status codes, bodies, ETags, Range support, truncation, delays, a trickling body) and
 * which records what the client sent (headers, bodies). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "test-run.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fedclient.h"
#include "fileio.h"
#include "hash.h"
#include "log.h"
#include "macros.h"
#include "update-codec.h"
#include "test-files.h"

#define TOKEN "fleet-token-0123456789"
#define DEVICE_ID "0123456789abcdef0123456789abcdef"
#define SECRET "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e7abcd"
#define MODEL_SIZE (300 * 1000)

/* ---- the fake aggregator ---- */

typedef struct {
        pthread_mutex_t lock;
        struct MHD_Daemon *d;
        uint16_t port;
        volatile bool stopping;

        /* behaviour */
        const char *task_body, *task_etag;
        int task_status;
        const uint8_t *model;
        size_t model_size;
        bool honor_range;
        size_t truncate_at; /* > 0: the next model body breaks off after this many bytes */
        int update_status;
        const char *update_reply;
        int telemetry_status;
        const char *force_path; /* this path answers force_status + force_body */
        int force_status;
        const char *force_body;
        int early_status;  /* /v1/update answers this before reading the body */
        unsigned delay_ms; /* before any answer */
        bool trickle;      /* bodies come one byte per 50 ms */

        /* what the client sent */
        int n_enroll, n_task, n_model, n_update, n_telemetry;
        char range[64], if_none_match[128], auth[256];
        char key[80], base[32], steps[32], tokens[32], loss[32], ctype[64];
        char body[4096];
        size_t body_size;
} fake_server;

static fake_server srv;
static uint8_t model_blob[MODEL_SIZE];
static char model_hex[HASH_SHA256_HEX];
static char state_dir[128];
static char server_url[64];

typedef struct {
        char *data;
        size_t size;
} upload;

typedef struct {
        char *data;
        size_t size, truncate_at;
        bool trickle;
} body_reader;

static void copy_header(struct MHD_Connection *conn, const char *name, char *dst, size_t size) {
        const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
        snprintf(dst, size, "%s", v ? v : "");
}

static ssize_t read_body(void *cls, uint64_t pos, char *buf, size_t max) {
        body_reader *b = cls;
        size_t n;

        if (srv.stopping)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        if (b->truncate_at > 0 && pos >= b->truncate_at)
                return MHD_CONTENT_READER_END_WITH_ERROR; /* the connection just breaks */
        if (pos >= b->size)
                return MHD_CONTENT_READER_END_OF_STREAM;
        n = MIN(max, b->size - (size_t) pos);
        if (b->truncate_at > 0)
                n = MIN(n, b->truncate_at - (size_t) pos);
        if (b->trickle) {
                usleep(50 * 1000);
                n = 1;
        }
        memcpy(buf, b->data + pos, n);
        return (ssize_t) n;
}

static void free_body(void *cls) {
        body_reader *b = cls;
        free(b->data);
        free(b);
}

static enum MHD_Result respond(struct MHD_Connection *conn, int status, const void *body,
                               size_t size, const char *ctype, const char *h1, const char *v1,
                               const char *h2, const char *v2) {
        body_reader *b = calloc(1, sizeof(*b));
        struct MHD_Response *resp;
        enum MHD_Result ret;

        assert_non_null(b);
        b->data = malloc(size + 1);
        assert_non_null(b->data);
        if (size)
                memcpy(b->data, body, size);
        b->size = size;
        b->trickle = srv.trickle;
        if (srv.truncate_at > 0 && size > srv.truncate_at) {
                b->truncate_at = srv.truncate_at;
                srv.truncate_at = 0; /* only once */
        }
        resp = MHD_create_response_from_callback(size, 4096, read_body, b, free_body);
        assert_non_null(resp);
        if (ctype)
                MHD_add_response_header(resp, "Content-Type", ctype);
        if (h1)
                MHD_add_response_header(resp, h1, v1);
        if (h2)
                MHD_add_response_header(resp, h2, v2);
        ret = MHD_queue_response(conn, (unsigned) status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result respond_json(struct MHD_Connection *conn, int status, const char *body) {
        return respond(conn, status, body, strlen(body), "application/json", NULL, NULL, NULL,
                       NULL);
}

static enum MHD_Result serve_model(struct MHD_Connection *conn) {
        size_t start = 0;
        char cr[96], etag[80];

        snprintf(etag, sizeof(etag), "\"%s\"", model_hex);
        if (srv.honor_range && srv.range[0]) {
                if (sscanf(srv.range, "bytes=%zu-", &start) != 1)
                        return respond_json(conn, 400, "{\"error\":\"bad-request\"}");
                if (start >= srv.model_size)
                        return respond_json(conn, 416, "{\"error\":\"bad-request\"}");
                snprintf(cr, sizeof(cr), "bytes %zu-%zu/%zu", start, srv.model_size - 1,
                         srv.model_size);
                return respond(conn, 206, srv.model + start, srv.model_size - start,
                               "application/octet-stream", "Content-Range", cr, "ETag", etag);
        }
        return respond(conn, 200, srv.model, srv.model_size, "application/octet-stream", "ETag",
                       etag, "Accept-Ranges", "bytes");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls) {
        upload *u = *con_cls;
        char want_auth[256];

        if (!u) {
                u = calloc(1, sizeof(*u));
                *con_cls = u;
                if (u && srv.early_status && strcmp(url, "/v1/update") == 0) {
                        srv.n_update++;
                        return respond_json(conn, srv.early_status, "{\"error\":\"too-large\"}");
                }
                return u ? MHD_YES : MHD_NO;
        }
        if (*upload_data_size > 0) {
                char *n = realloc(u->data, u->size + *upload_data_size + 1);
                if (!n)
                        return MHD_NO;
                u->data = n;
                memcpy(u->data + u->size, upload_data, *upload_data_size);
                u->size += *upload_data_size;
                u->data[u->size] = 0;
                *upload_data_size = 0;
                return MHD_YES;
        }

        pthread_mutex_lock(&srv.lock);
        copy_header(conn, "Range", srv.range, sizeof(srv.range));
        copy_header(conn, "If-None-Match", srv.if_none_match, sizeof(srv.if_none_match));
        copy_header(conn, "Authorization", srv.auth, sizeof(srv.auth));
        copy_header(conn, "Content-Type", srv.ctype, sizeof(srv.ctype));
        if (strcmp(url, "/v1/update") == 0) {
                copy_header(conn, "Idempotency-Key", srv.key, sizeof(srv.key));
                copy_header(conn, "X-Edged-Base-Version", srv.base, sizeof(srv.base));
                copy_header(conn, "X-Edged-Steps", srv.steps, sizeof(srv.steps));
                copy_header(conn, "X-Edged-Tokens", srv.tokens, sizeof(srv.tokens));
                copy_header(conn, "X-Edged-Loss", srv.loss, sizeof(srv.loss));
        }
        srv.body_size = u->size;
        snprintf(srv.body, sizeof(srv.body), "%s", u->data ? u->data : "");
        pthread_mutex_unlock(&srv.lock);

        for (unsigned i = 0; i < srv.delay_ms / 10 && !srv.stopping; i++)
                usleep(10 * 1000);

        if (srv.force_path && strcmp(url, srv.force_path) == 0)
                return respond_json(conn, srv.force_status, srv.force_body);

        if (strcmp(url, "/v1/enroll") == 0 && strcmp(method, "POST") == 0) {
                json_t *j = json_loadb(u->data ? u->data : "", u->size, 0, NULL);
                const char *tok = json_string_value(json_object_get(j, "token"));
                bool ok = tok && strcmp(tok, TOKEN) == 0;
                json_decref(j);
                srv.n_enroll++;
                if (!ok)
                        return respond_json(
                                conn, 401,
                                "{\"error\":\"bad-token\",\"message\":\"unknown token\"}");
                return respond_json(conn, 201,
                                    "{\"device_id\":\"" DEVICE_ID "\",\"secret\":\"" SECRET "\"}");
        }

        snprintf(want_auth, sizeof(want_auth), "Bearer %s:%s", DEVICE_ID, SECRET);
        if (strcmp(srv.auth, want_auth) != 0)
                return respond_json(conn, 401, "{\"error\":\"unauthorized\"}");

        if (strcmp(url, "/v1/task") == 0) {
                srv.n_task++;
                if (srv.task_status)
                        return respond_json(conn, srv.task_status, "{\"error\":\"storage\"}");
                if (srv.task_etag && strcmp(srv.if_none_match, srv.task_etag) == 0)
                        return respond(conn, 304, "", 0, NULL, "ETag", srv.task_etag, NULL, NULL);
                return respond(conn, 200, srv.task_body, strlen(srv.task_body), "application/json",
                               srv.task_etag ? "ETag" : NULL, srv.task_etag, NULL, NULL);
        }
        if (strncmp(url, "/v1/model/", 10) == 0) {
                srv.n_model++;
                return serve_model(conn);
        }
        if (strcmp(url, "/v1/update") == 0) {
                srv.n_update++;
                return respond_json(conn, srv.update_status, srv.update_reply);
        }
        if (strcmp(url, "/v1/telemetry") == 0) {
                srv.n_telemetry++;
                return respond(conn, srv.telemetry_status, "", 0, NULL, NULL, NULL, NULL, NULL);
        }
        return respond_json(conn, 404, "{\"error\":\"not-found\"}");
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
        upload *u = *con_cls;
        if (u) {
                free(u->data);
                free(u);
                *con_cls = NULL;
        }
}

static void server_start(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
        const union MHD_DaemonInfo *info;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        srv.d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0,
                                 NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, &sa,
                                 MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
        assert_non_null(srv.d);
        info = MHD_get_daemon_info(srv.d, MHD_DAEMON_INFO_BIND_PORT);
        assert_non_null(info);
        srv.port = info->port;
        assert_true(srv.port > 0);
        snprintf(server_url, sizeof(server_url), "http://127.0.0.1:%u", (unsigned) srv.port);
}

static void server_stop(void) {
        if (srv.d) {
                srv.stopping = true;
                MHD_stop_daemon(srv.d);
                srv.d = NULL;
        }
}

#define TASK_JSON                                                                                  \
        "{\"version\": 12, \"model\": \"tiny\","                                                   \
        " \"config\": {\"block_size\": 128, \"n_embd\": 128, \"n_layer\": 2, \"n_head\": 4},"      \
        " \"model_sha256\": \"%s\", \"model_bytes\": %d,"                                          \
        " \"local_steps\": 50, \"batch\": 4, \"lr\": 0.001, \"weight_decay\": 0,"                  \
        " \"encoding\": \"int8\", \"topk_fraction\": 0.01,"                                        \
        " \"max_staleness\": 8, \"report_interval_s\": 60,"                                        \
        " \"policy\": {\"MaxCores\": \"1\", \"IdleWindowSec\": \"30\"}}"
static char task_buf[2048];

static int setup(void **state) {
        static int n;

        server_stop();
        pthread_mutex_destroy(&srv.lock);
        memset(&srv, 0, sizeof(srv));
        pthread_mutex_init(&srv.lock, NULL);
        srv.model = model_blob;
        srv.model_size = MODEL_SIZE;
        srv.honor_range = true;
        srv.update_status = 200;
        srv.update_reply =
                "{\"status\":\"accepted\",\"update_id\":345,\"version\":12,\"staleness\":1}";
        srv.telemetry_status = 204;
        snprintf(task_buf, sizeof(task_buf), TASK_JSON, model_hex, MODEL_SIZE);
        srv.task_body = task_buf;
        srv.task_etag = "\"12-3\"";
        server_start();

        snprintf(state_dir, sizeof(state_dir), "%s/state-%d", test_tmpdir, n++);
        assert_int_equal(mkdir(state_dir, 0700), 0);
        return 0;
}

static int teardown(void **state) {
        server_stop();
        return 0;
}

static fed_options opts(const char *token) {
        return (fed_options){
                .server = server_url,
                .enroll_token = token,
                .state_dir = state_dir,
                .device_name = "test-device",
                .timeout_s = 5,
        };
}

static fedclient *client(const char *token) {
        fed_options o = opts(token);
        fedclient *c = NULL;
        assert_int_equal(fed_client_new(&o, &c), 0);
        return c;
}

static char *state_file(const char *name) {
        char *p;
        assert_true(asprintf(&p, "%s/%s", state_dir, name) > 0);
        return p;
}

static bool exists(const char *name) {
        _cleanup_free_ char *p = state_file(name);
        return access(p, F_OK) == 0;
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* A client with an identity already saved. */
static fedclient *enrolled(void) {
        fedclient *c = client(TOKEN);
        char err[256];
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        return c;
}

/* ---- identity ---- */

static void test_enroll(void **state) {
        _cleanup_free_ char *path = state_file("identity");
        _cleanup_free_ void *text = NULL;
        char err[256] = "";
        fedclient *c = client(TOKEN);
        struct stat st;
        size_t size;

        assert_null(fed_device_id(c));
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        assert_string_equal(fed_device_id(c), DEVICE_ID);
        assert_int_equal(srv.n_enroll, 1);
        /* the enrollment request carried the token and the name */
        json_t *j = json_loads(srv.body, 0, NULL);
        assert_string_equal(json_string_value(json_object_get(j, "token")), TOKEN);
        assert_string_equal(json_string_value(json_object_get(j, "name")), "test-device");
        json_decref(j);

        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        assert_int_equal(read_full_file(path, 4096, &text, &size), 0);
        j = json_loads(text, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "server")), server_url);
        assert_string_equal(json_string_value(json_object_get(j, "device_id")), DEVICE_ID);
        assert_string_equal(json_string_value(json_object_get(j, "secret")), SECRET);
        json_decref(j);
        /* calling again does nothing */
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        assert_int_equal(srv.n_enroll, 1);
        fed_client_free(c);

        /* a new client (no token needed now) reuses it and authenticates with it */
        c = client(NULL);
        fed_task t;
        bool changed;
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), 0);
        assert_int_equal(srv.n_enroll, 1);
        assert_string_equal(srv.auth, "Bearer " DEVICE_ID ":" SECRET);
        assert_string_equal(fed_device_id(c), DEVICE_ID);
        fed_client_free(c);

        /* loosened permissions are tightened (with a warning) */
        assert_int_equal(chmod(path, 0644), 0);
        c = client(NULL);
        log_set_max_level(LOG_LEVEL_WARNING);
        test_capture_begin();
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        _cleanup_free_ char *out = test_capture_end();
        log_set_max_level(LOG_LEVEL_ERR);
        assert_non_null(strstr(out, "0644"));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        fed_client_free(c);
}

static void test_identity_other_server(void **state) {
        _cleanup_free_ char *path = state_file("identity");
        const char *other = "{\"server\":\"http://elsewhere.example:1\",\"device_id\":\"" DEVICE_ID
                            "\",\"secret\":\"" SECRET "\"}";
        char err[256] = "";
        fedclient *c;

        assert_int_equal(write_file_atomic(path, 0600, other, strlen(other)), 0);
        /* no token: refused, and the message says why */
        c = client(NULL);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), -ENOKEY);
        assert_non_null(strstr(err, "elsewhere.example"));
        assert_null(strstr(err, SECRET));
        assert_int_equal(srv.n_enroll, 0);
        fed_client_free(c);

        /* with a token: enrolls again with this server */
        c = client(TOKEN);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        assert_int_equal(srv.n_enroll, 1);
        fed_client_free(c);
        c = client(NULL);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        fed_client_free(c);

        /* a damaged identity and no token */
        assert_int_equal(write_file_atomic(path, 0600, "{\"server\":", 10), 0);
        c = client(NULL);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), -EBADMSG);
        fed_client_free(c);
}

static void test_enroll_bad_token(void **state) {
        char err[256] = "";
        fedclient *c = client("wrong-token");

        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), -EACCES);
        assert_non_null(strstr(err, "401"));
        assert_non_null(strstr(err, "bad-token"));
        assert_null(strstr(err, "wrong-token"));
        assert_false(exists("identity"));
        assert_null(fed_device_id(c));
        fed_client_free(c);
}

static void test_no_token(void **state) {
        char err[256] = "";
        fed_task t;
        bool changed;
        fedclient *c = client(NULL);

        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), -ENOKEY);
        assert_true(strlen(err) > 0);
        /* the calls that need an identity say the same */
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -ENOKEY);
        assert_int_equal(srv.n_enroll + srv.n_task, 0);
        fed_client_free(c);
}

/* ---- task ---- */

static void test_task(void **state) {
        fedclient *c = enrolled();
        char err[256] = "";
        fed_task t, t2;
        bool changed = false;

        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), 0);
        assert_true(changed);
        assert_string_equal(srv.if_none_match, "");
        assert_int_equal(t.version, 12);
        assert_string_equal(t.cfg.name, "tiny");
        assert_int_equal(t.cfg.block_size, 128);
        assert_int_equal(t.cfg.n_embd, 128);
        assert_int_equal(t.cfg.n_layer, 2);
        assert_int_equal(t.cfg.n_head, 4);
        assert_string_equal(t.model_sha256, model_hex);
        assert_int_equal(t.model_bytes, MODEL_SIZE);
        assert_int_equal(t.local_steps, 50);
        assert_int_equal(t.batch, 4);
        assert_float_equal(t.lr, 0.001f, 1e-9);
        assert_float_equal(t.weight_decay, 0.0f, 0);
        assert_int_equal(t.encoding, UPD_INT8);
        assert_float_equal(t.topk_fraction, 0.01f, 1e-9);
        assert_int_equal(t.max_staleness, 8);
        assert_int_equal(t.report_interval_s, 60);
        assert_int_equal(t.n_policy, 2);
        assert_string_equal(t.policy_key[0], "MaxCores");
        assert_string_equal(t.policy_value[0], "1");
        assert_string_equal(t.policy_key[1], "IdleWindowSec");
        assert_string_equal(t.policy_value[1], "30");
        assert_string_equal(t.etag, "\"12-3\"");
        assert_string_equal(t.stage_token, ""); /* none in the task */

        /* unchanged: the ETag goes back, 304, the same task */
        memset(&t2, 0xaa, sizeof(t2));
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), 0);
        assert_false(changed);
        assert_string_equal(srv.if_none_match, "\"12-3\"");
        assert_memory_equal(&t, &t2, sizeof(t));
        assert_int_equal(srv.n_task, 2);

        /* a new version */
        static char buf2[2048];
        snprintf(buf2, sizeof(buf2), TASK_JSON, model_hex, MODEL_SIZE);
        memcpy(strstr(buf2, "12,"), "13,", 3);
        srv.task_body = buf2;
        srv.task_etag = "\"13-3\"";
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), 0);
        assert_true(changed);
        assert_string_equal(srv.if_none_match, "\"12-3\"");
        assert_int_equal(t2.version, 13);
        assert_string_equal(t2.etag, "\"13-3\"");

        /* a custom (valid) config, no policy, top-k */
        srv.task_body =
                "{\"version\":0,\"model\":\"custom\",\"config\":{\"block_size\":16,\"n_embd\":16,"
                "\"n_layer\":1,\"n_head\":2},\"model_sha256\":"
                "\"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\","
                "\"model_bytes\":10,\"local_steps\":1,\"batch\":1,\"lr\":1,\"weight_decay\":1,"
                "\"encoding\":\"topk\",\"topk_fraction\":1,\"max_staleness\":0,"
                "\"report_interval_s\":1,\"extra\":\"ignored\"}";
        srv.task_etag = NULL;
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), 0);
        assert_true(changed);
        assert_string_equal(t2.cfg.name, "custom");
        assert_int_equal(t2.cfg.n_layer, 1);
        assert_int_equal(t2.encoding, UPD_TOPK);
        assert_int_equal(t2.n_policy, 0);
        assert_string_equal(t2.etag, "");
        assert_string_equal(t2.model_sha256,
                            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");

        /* errors from the server */
        srv.task_status = 503;
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), -EAGAIN);
        assert_non_null(strstr(err, "503"));
        assert_non_null(strstr(err, "storage"));
        srv.task_status = 429;
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), -EAGAIN);
        srv.task_status = 404;
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), -EPROTO);
        srv.force_path = "/v1/task";
        srv.force_status = 401;
        srv.force_body = "{\"error\":\"unauthorized\"}";
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), -EACCES);
        assert_non_null(strstr(err, "unauthorized"));
        srv.force_status = 302; /* redirects are not followed */
        srv.force_body = "{}";
        assert_int_equal(fed_get_task(c, &t2, &changed, err, sizeof(err)), -EBADMSG);
        fed_client_free(c);
}

static void test_task_malformed(void **state) {
        /* each is the good task with one thing wrong */
        static const struct {
                const char *from, *to;
        } edits[] = {
                { "{\"version\": 12", "[{\"version\": 12" }, /* not JSON */
                { "\"version\": 12", "\"version\": -1" },
                { "\"version\": 12", "\"version\": \"12\"" },
                { "\"version\": 12", "\"version\": 12.5" },
                { "\"model\": \"tiny\",", "" },
                { "\"model\": \"tiny\"", "\"model\": \"huge\"" }, /* unknown and config: fine... */
                { "\"n_head\": 4", "\"n_head\": 3" },             /* 128 % 3 */
                { "\"n_layer\": 2", "\"n_layer\": 3" },           /* not tiny's config */
                { "\"n_layer\": 2", "\"n_layer\": 0" },
                { "\"block_size\": 128", "\"block_size\": 99999999999" },
                { "\"model_bytes\": ", "\"model_bytes\": -" },
                { "\"local_steps\": 50", "\"local_steps\": 0" },
                { "\"local_steps\": 50", "\"local_steps\": 50.0" },
                { "\"batch\": 4", "\"batch\": 100000" },
                { "\"lr\": 0.001", "\"lr\": 0" },
                { "\"lr\": 0.001", "\"lr\": 2" },
                { "\"lr\": 0.001", "\"lr\": \"fast\"" },
                { "\"weight_decay\": 0", "\"weight_decay\": -0.1" },
                { "\"encoding\": \"int8\"", "\"encoding\": \"int4\"" },
                { "\"encoding\": \"int8\"", "\"encoding\": 1" },
                { "\"encoding\": \"int8\", \"topk_fraction\": 0.01", "\"encoding\": \"topk\"" },
                { "\"topk_fraction\": 0.01", "\"topk_fraction\": 1.5" },
                { "\"max_staleness\": 8", "\"max_staleness\": -1" },
                { "\"report_interval_s\": 60", "\"report_interval_s\": 0" },
                { "\"report_interval_s\": 60,", "" },
                { "\"policy\": {", "\"policy\": [" },
                { "\"MaxCores\": \"1\"", "\"MaxCores\": 1" },
                { "\"MaxCores\"", "\"Max Cores\"" },
                { "\"MaxCores\"", "\"AVeryLongPolicyKnobNameThatIsTooLong\"" },
                { "\"version\": 12", "\"version\": 12, \"version\": 13" },
        };
        fedclient *c = enrolled();
        char err[256], buf[4096];
        fed_task t;
        bool changed;
        int n_ok = 0;

        srv.task_etag = NULL;
        for (size_t i = 0; i < ARRAY_SIZE(edits); i++) {
                const char *at = strstr(task_buf, edits[i].from);
                assert_non_null(at);
                snprintf(buf, sizeof(buf), "%.*s%s%s", (int) (at - task_buf), task_buf, edits[i].to,
                         at + strlen(edits[i].from));
                srv.task_body = buf;
                err[0] = 0;
                int r = fed_get_task(c, &t, &changed, err, sizeof(err));
                if (i == 5) { /* "huge" with a valid explicit config is a custom model */
                        assert_int_equal(r, 0);
                        assert_string_equal(t.cfg.name, "huge");
                        n_ok++;
                        continue;
                }
                if (r != -EBADMSG)
                        print_error("edit %zu (%s -> %s): %d\n", i, edits[i].from, edits[i].to, r);
                assert_int_equal(r, -EBADMSG);
                assert_true(strlen(err) > 0);
        }
        assert_int_equal(n_ok, 1);

        /* too many policy knobs */
        size_t n = (size_t) snprintf(buf, sizeof(buf), "%.*s",
                                     (int) (strstr(task_buf, "\"policy\"") - task_buf), task_buf);
        n += (size_t) snprintf(buf + n, sizeof(buf) - n, "\"policy\": {");
        for (int i = 0; i <= FED_MAX_POLICY; i++)
                n += (size_t) snprintf(buf + n, sizeof(buf) - n, "%s\"Knob%d\": \"1\"",
                                       i ? "," : "", i);
        snprintf(buf + n, sizeof(buf) - n, "}}");
        srv.task_body = buf;
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "policy"));
        /* exactly FED_MAX_POLICY is fine */
        *strrchr(buf, ',') = 0;
        strcat(buf, "}}");
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), 0);
        assert_int_equal(t.n_policy, FED_MAX_POLICY);

        /* a reply over 64 KiB is refused */
        _cleanup_free_ char *big = malloc(100 * 1024);
        assert_non_null(big);
        memset(big, ' ', 100 * 1024 - 1);
        big[100 * 1024 - 1] = 0;
        memcpy(big, "{\"pad\":\"", 8);
        srv.task_body = big;
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "larger"));

        /* an empty 200 */
        srv.task_body = "";
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -EBADMSG);
        fed_client_free(c);
}

/* The fleet's stage token: copied when it is 64 lowercase hex digits; anything else is
 * ignored (the task itself still counts). */
static void test_task_stage_token(void **state) {
        static const char good[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        static const char *const bad[] = {
                "\"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"", /* upper */
                "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\"",  /* 63 */
                "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0\"", /* 65 */
                "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\"", /* not hex */
                "\"\"", "12", "null", "[\"0123456789abcdef\"]",
        };
        fedclient *c = enrolled();
        char err[256] = "", buf[4096];
        bool changed = false;
        fed_task t;

        srv.task_etag = NULL;
        snprintf(buf, sizeof(buf), "{\"stage_token\": \"%s\", %s", good, task_buf + 1);
        srv.task_body = buf;
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), 0);
        assert_string_equal(t.stage_token, good);
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                snprintf(buf, sizeof(buf), "{\"stage_token\": %s, %s", bad[i], task_buf + 1);
                memset(&t, 0x55, sizeof(t));
                assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), 0);
                assert_true(changed);
                assert_int_equal(t.version, 12);
                assert_string_equal(t.stage_token, "");
        }
        fed_client_free(c);
}

static void test_task_timeout(void **state) {
        fed_options o = opts(TOKEN);
        fedclient *c = NULL;
        char err[256];
        fed_task t;
        bool changed;
        double t0;

        o.timeout_s = 1;
        assert_int_equal(fed_client_new(&o, &c), 0);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);

        /* no answer at all */
        srv.delay_ms = 4000;
        t0 = now_s();
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -ETIMEDOUT);
        assert_true(now_s() - t0 < 3.0);
        srv.delay_ms = 0;

        /* headers at once, then a body one byte at a time */
        srv.trickle = true;
        t0 = now_s();
        assert_int_equal(fed_get_task(c, &t, &changed, err, sizeof(err)), -ETIMEDOUT);
        assert_true(now_s() - t0 < 3.0);
        fed_client_free(c);
}

static void test_connection_refused(void **state) {
        char err[256] = "";
        fedclient *c;

        server_stop(); /* the port is now closed */
        c = client(TOKEN);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), -ECONNREFUSED);
        assert_true(strlen(err) > 0);
        assert_false(exists("identity"));
        fed_client_free(c);
}

/* ---- model ---- */

static fed_task model_task(void) {
        fed_task t = { .version = 12, .model_bytes = MODEL_SIZE };
        snprintf(t.model_sha256, sizeof(t.model_sha256), "%s", model_hex);
        return t;
}

static void assert_model_file(const char *path) {
        char hex[HASH_SHA256_HEX];
        struct stat st;

        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_size, MODEL_SIZE);
        assert_int_equal(hash_sha256_file_hex(path, hex), 0);
        assert_string_equal(hex, model_hex);
}

static void test_model_full(void **state) {
        fedclient *c = enrolled();
        fed_task t = model_task();
        _cleanup_free_ char *want = state_file("model-12.safetensors");
        char *path = NULL, err[256];

        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        assert_string_equal(path, want);
        assert_model_file(path);
        assert_string_equal(srv.range, "");
        assert_false(exists("model-12.part"));
        assert_int_equal(srv.n_model, 1);
        free(path);

        /* already there: no request */
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        assert_int_equal(srv.n_model, 1);
        free(path);
        /* ...also for a new client, which checks the SHA-256 of the file */
        fedclient *c2 = client(NULL);
        assert_int_equal(fed_fetch_model(c2, &t, &path, err, sizeof(err)), 0);
        assert_int_equal(srv.n_model, 1);
        free(path);
        fed_client_free(c2);

        /* a damaged final file (a new inode: the client remembers what it verified by
         * inode, size and times) is replaced */
        static uint8_t damaged[MODEL_SIZE];
        memcpy(damaged, model_blob, MODEL_SIZE);
        damaged[1000] ^= 1;
        assert_int_equal(write_file_atomic(want, 0600, damaged, MODEL_SIZE), 0);
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        assert_int_equal(srv.n_model, 2);
        assert_model_file(path);
        free(path);

        /* only the newest two are kept (and always the one just fetched) */
        for (int v = 9; v <= 11; v++) {
                char name[256];
                snprintf(name, sizeof(name), "%s/model-%d.safetensors", state_dir, v);
                assert_int_equal(write_file_atomic(name, 0600, "x", 1), 0);
        }
        _cleanup_free_ char *stray = state_file("model-7.part");
        assert_int_equal(write_file_atomic(stray, 0600, "x", 1), 0);
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        free(path);
        assert_true(exists("model-12.safetensors"));
        assert_true(exists("model-11.safetensors"));
        assert_false(exists("model-10.safetensors"));
        assert_false(exists("model-9.safetensors"));
        assert_false(exists("model-7.part"));
        fed_client_free(c);
}

static void test_model_resume(void **state) {
        fedclient *c = enrolled();
        fed_task t = model_task();
        _cleanup_free_ char *part = state_file("model-12.part");
        char *path = NULL, err[256], want_range[64];
        struct stat st;
        int r;

        srv.truncate_at = 100000;
        r = fed_fetch_model(c, &t, &path, err, sizeof(err));
        assert_true(r == -ECONNRESET);
        assert_null(path);
        assert_false(exists("model-12.safetensors"));
        assert_int_equal(stat(part, &st), 0);
        assert_true(st.st_size > 0 && st.st_size <= 100000);
        assert_int_equal(st.st_mode & 07777, 0600);

        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        snprintf(want_range, sizeof(want_range), "bytes=%lld-", (long long) st.st_size);
        assert_string_equal(srv.range, want_range);
        assert_model_file(path);
        assert_false(exists("model-12.part"));
        free(path);
        fed_client_free(c);
}

static void test_model_ignores_range(void **state) {
        fedclient *c = enrolled();
        fed_task t = model_task();
        _cleanup_free_ char *part = state_file("model-12.part");
        char *path = NULL, err[256], junk[5000];

        /* a part whose bytes are wrong: only a restart from 0 gives the right hash */
        memset(junk, 'J', sizeof(junk));
        assert_int_equal(write_file_atomic(part, 0600, junk, sizeof(junk)), 0);
        srv.honor_range = false;
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), 0);
        assert_string_equal(srv.range, "bytes=5000-");
        assert_model_file(path);
        free(path);
        fed_client_free(c);
}

static void test_model_range_past_end(void **state) {
        fedclient *c = enrolled();
        fed_task t = model_task();
        _cleanup_free_ char *part = state_file("model-12.part");
        char *path = NULL, err[256];

        /* the server's blob is shorter than our part claims: 416, then from the start */
        srv.model_size = 1000;
        t.model_bytes = 2000;
        _cleanup_free_ void *junk = calloc(1, 1500);
        assert_int_equal(write_file_atomic(part, 0600, junk, 1500), 0);
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -EBADMSG);
        assert_int_equal(srv.n_model, 2);
        assert_false(exists("model-12.safetensors"));
        fed_client_free(c);
}

static void test_model_bad(void **state) {
        fedclient *c = enrolled();
        fed_task t = model_task();
        char *path = NULL, err[256];

        /* wrong SHA-256: nothing kept */
        t.model_sha256[0] = t.model_sha256[0] == '0' ? '1' : '0';
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "SHA-256"));
        assert_null(path);
        assert_false(exists("model-12.safetensors"));
        assert_false(exists("model-12.part"));

        /* the server sends more than the task says */
        t = model_task();
        t.model_bytes = 1000;
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -EBADMSG);
        assert_false(exists("model-12.safetensors"));

        /* unknown version */
        t = model_task();
        srv.force_path = "/v1/model/12";
        srv.force_status = 404;
        srv.force_body = "{\"error\":\"not-found\",\"message\":\"pruned\"}";
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -EPROTO);
        assert_non_null(strstr(err, "not-found: pruned"));
        srv.force_path = NULL;
        fed_client_free(c);

        /* over max_model_bytes: refused before asking */
        fed_options o = opts(NULL);
        o.max_model_bytes = MODEL_SIZE - 1;
        assert_int_equal(fed_client_new(&o, &c), 0);
        int before = srv.n_model;
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -EFBIG);
        assert_int_equal(srv.n_model, before);
        fed_client_free(c);
}

static void test_model_slow(void **state) {
        fed_options o = opts(TOKEN);
        fedclient *c = NULL;
        fed_task t = model_task();
        char *path = NULL, err[256];
        double t0;

        o.timeout_s = 1;
        assert_int_equal(fed_client_new(&o, &c), 0);
        assert_int_equal(fed_ensure_identity(c, err, sizeof(err)), 0);
        srv.trickle = true; /* 20 bytes/s, far below the low-speed limit */
        t0 = now_s();
        assert_int_equal(fed_fetch_model(c, &t, &path, err, sizeof(err)), -ETIMEDOUT);
        assert_true(now_s() - t0 < 4.0);
        assert_false(exists("model-12.safetensors"));
        fed_client_free(c);
}

/* ---- update and telemetry ---- */

static void test_update(void **state) {
        fedclient *c = enrolled();
        fed_update_meta m = { .base_version = 12, .steps = 50, .tokens = 25600, .loss = 2.5f };
        const char body[] = "EDUP-not-really-zstd";
        fed_ack ack;
        char err[256];

        snprintf(m.idempotency_key, sizeof(m.idempotency_key), "0123456789abcdef0123456789abcdef");
        assert_int_equal(fed_send_update(c, &m, body, sizeof(body), &ack, err, sizeof(err)), 0);
        assert_false(ack.duplicate);
        assert_int_equal(ack.update_id, 345);
        assert_int_equal(ack.version, 12);
        assert_int_equal(ack.staleness, 1);
        assert_string_equal(srv.key, m.idempotency_key);
        assert_string_equal(srv.base, "12");
        assert_string_equal(srv.steps, "50");
        assert_string_equal(srv.tokens, "25600");
        assert_float_equal(strtod(srv.loss, NULL), 2.5, 1e-9);
        assert_string_equal(srv.ctype, "application/octet-stream");
        assert_int_equal(srv.body_size, sizeof(body));
        assert_memory_equal(srv.body, body, sizeof(body));

        srv.update_reply = "{\"status\":\"duplicate\",\"update_id\":345,\"version\":13}";
        assert_int_equal(fed_send_update(c, &m, body, sizeof(body), &ack, err, sizeof(err)), 0);
        assert_true(ack.duplicate);
        assert_int_equal(ack.update_id, 345);
        assert_int_equal(ack.version, 13);

        static const struct {
                int status;
                const char *reply;
                int r;
                const char *in_err;
        } cases[] = {
                { 409, "{\"error\":\"stale\",\"message\":\"base 3 is 9 versions behind\"}", -ESTALE,
                  "stale: base 3 is 9 versions behind" },
                { 409, "{\"error\":\"unknown-base\"}", -ESTALE, "unknown-base" },
                { 500, "{\"error\":\"storage\"}", -EAGAIN, "500" },
                { 507, "{\"error\":\"storage\"}", -EAGAIN, "storage" },
                { 429, "{\"error\":\"rate-limited\"}", -EAGAIN, "rate-limited" },
                { 413, "{\"error\":\"too-large\"}", -EPROTO, "too-large" },
                { 400, "{\"error\":\"wrong-shape\",\"message\":\"tensor 3\"}", -EPROTO,
                  "wrong-shape" },
                { 401, "{\"error\":\"unauthorized\"}", -EACCES, "unauthorized" },
                { 400, "not json", -EPROTO, "400" },
                { 200, "not json", -EBADMSG, "JSON" },
                { 200, "{\"status\":\"maybe\",\"update_id\":1,\"version\":1,\"staleness\":0}",
                  -EBADMSG, "" },
                { 200, "{\"status\":\"accepted\",\"update_id\":1,\"version\":1}", -EBADMSG, "" },
                { 200, "{\"status\":\"accepted\",\"update_id\":-1,\"version\":1,\"staleness\":0}",
                  -EBADMSG, "" },
                { 201, "{\"status\":\"accepted\",\"update_id\":1,\"version\":1,\"staleness\":0}",
                  -EBADMSG, "201" },
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                srv.update_status = cases[i].status;
                srv.update_reply = cases[i].reply;
                err[0] = 0;
                assert_int_equal(fed_send_update(c, &m, body, sizeof(body), &ack, err, sizeof(err)),
                                 cases[i].r);
                if (!strstr(err, cases[i].in_err))
                        print_error("case %zu: err '%s'\n", i, err);
                assert_non_null(strstr(err, cases[i].in_err));
        }

        /* refused before the body was read: the answer counts, not the broken upload */
        _cleanup_free_ char *big = calloc(1, 4 << 20);
        assert_non_null(big);
        srv.early_status = 413;
        int before = srv.n_update;
        assert_int_equal(fed_send_update(c, &m, big, 4 << 20, &ack, err, sizeof(err)), -EPROTO);
        assert_non_null(strstr(err, "413 too-large"));
        assert_int_equal(srv.n_update, before + 1);
        srv.early_status = 0;

        /* refused locally */
        fed_update_meta bad = m;
        bad.tokens = 0;
        assert_int_equal(fed_send_update(c, &bad, body, sizeof(body), &ack, err, sizeof(err)),
                         -EINVAL);
        bad = m;
        snprintf(bad.idempotency_key, sizeof(bad.idempotency_key), "no spaces");
        assert_int_equal(fed_send_update(c, &bad, body, sizeof(body), &ack, err, sizeof(err)),
                         -EINVAL);
        fed_client_free(c);
}

static void test_telemetry(void **state) {
        fedclient *c = enrolled();
        const char *json = "{\"core_seconds\": 12.5, \"tokens\": 12345, \"state\": \"running\"}";
        char err[256];

        assert_int_equal(fed_send_telemetry(c, json, err, sizeof(err)), 0);
        assert_int_equal(srv.n_telemetry, 1);
        assert_string_equal(srv.body, json);
        assert_string_equal(srv.ctype, "application/json");
        srv.telemetry_status = 503;
        assert_int_equal(fed_send_telemetry(c, json, err, sizeof(err)), -EAGAIN);
        srv.telemetry_status = 202;
        assert_int_equal(fed_send_telemetry(c, json, err, sizeof(err)), -EBADMSG);
        assert_int_equal(fed_send_telemetry(c, "[1,2]", err, sizeof(err)), -EINVAL);
        assert_int_equal(fed_send_telemetry(c, "{", err, sizeof(err)), -EINVAL);
        assert_int_equal(srv.n_telemetry, 3);
        fed_client_free(c);
}

/* ---- pending update ---- */

static void test_pending(void **state) {
        fedclient *c = client(NULL);
        _cleanup_free_ char *path = state_file("pending-update");
        fed_update_meta m = { .base_version = 7, .steps = 40, .tokens = 5120, .loss = 3.25f }, got;
        uint8_t body[1000];
        void *b = NULL;
        size_t size = 0;
        struct stat st;
        char key[33];

        for (size_t i = 0; i < sizeof(body); i++)
                body[i] = (uint8_t) (i * 7 + 1);
        assert_int_equal(fed_pending_load(c, &got, &b, &size), -ENOENT);
        assert_int_equal(fed_pending_drop(c), 0);

        assert_int_equal(fed_pending_save(c, &m, body, sizeof(body)), 0);
        assert_int_equal(strlen(m.idempotency_key), 32);
        for (int i = 0; i < 32; i++)
                assert_non_null(strchr("0123456789abcdef", m.idempotency_key[i]));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);

        assert_int_equal(fed_pending_load(c, &got, &b, &size), 0);
        assert_int_equal(got.base_version, 7);
        assert_int_equal(got.steps, 40);
        assert_int_equal(got.tokens, 5120);
        assert_float_equal(got.loss, 3.25f, 0);
        assert_string_equal(got.idempotency_key, m.idempotency_key);
        assert_int_equal(size, sizeof(body));
        assert_memory_equal(b, body, sizeof(body));
        free(b);

        /* a newer delta replaces it, keeping the key it was given */
        memcpy(key, m.idempotency_key, sizeof(key));
        m.steps = 80;
        body[0] ^= 0xff;
        assert_int_equal(fed_pending_save(c, &m, body, sizeof(body)), 0);
        assert_string_equal(m.idempotency_key, key);
        assert_int_equal(fed_pending_load(c, &got, &b, &size), 0);
        assert_int_equal(got.steps, 80);
        assert_string_equal(got.idempotency_key, key);
        assert_memory_equal(b, body, sizeof(body));
        free(b);

        /* a fresh meta gets a fresh key */
        fed_update_meta m2 = m;
        m2.idempotency_key[0] = 0;
        assert_int_equal(fed_pending_save(c, &m2, body, sizeof(body)), 0);
        assert_string_not_equal(m2.idempotency_key, key);

        assert_int_equal(fed_pending_drop(c), 0);
        assert_int_equal(fed_pending_load(c, &got, &b, &size), -ENOENT);

        /* damage: one flipped byte anywhere, or a truncation */
        static const long flips[] = { 0, 9, 40, 75, 90, 111, 112, 600, -1 };
        for (size_t i = 0; i < ARRAY_SIZE(flips); i++) {
                _cleanup_free_ char *corrupt = state_file("pending-update.corrupt");
                assert_int_equal(fed_pending_save(c, &m, body, sizeof(body)), 0);
                if (flips[i] >= 0) {
                        int fd = open(path, O_RDWR);
                        uint8_t x;
                        assert_true(fd >= 0);
                        assert_int_equal(pread(fd, &x, 1, flips[i]), 1);
                        x ^= 0x10;
                        assert_int_equal(pwrite(fd, &x, 1, flips[i]), 1);
                        close(fd);
                } else
                        assert_int_equal(truncate(path, 500), 0);
                (void) unlink(corrupt);
                b = NULL;
                assert_int_equal(fed_pending_load(c, &got, &b, &size), -EBADMSG);
                assert_null(b);
                assert_int_equal(access(corrupt, F_OK), 0);
                assert_int_equal(access(path, F_OK), -1);
        }
        fed_client_free(c);
}

/* ---- backoff ---- */

static void test_backoff(void **state) {
        /* 1 s doubling to 5 min, ±25 %: u = 0.5 is the middle */
        assert_float_equal(fed_backoff_delay(0, 1, 300, 0.25, 0.5), 1.0, 1e-12);
        assert_float_equal(fed_backoff_delay(1, 1, 300, 0.25, 0.5), 2.0, 1e-12);
        assert_float_equal(fed_backoff_delay(3, 1, 300, 0.25, 0.5), 8.0, 1e-12);
        assert_float_equal(fed_backoff_delay(3, 1, 300, 0.25, 0.0), 6.0, 1e-12);
        assert_float_equal(fed_backoff_delay(3, 1, 300, 0.25, 0.75), 9.0, 1e-12);
        assert_float_equal(fed_backoff_delay(8, 1, 300, 0.25, 0.5), 256.0, 1e-12);
        /* the cap applies before the jitter */
        assert_float_equal(fed_backoff_delay(9, 1, 300, 0.25, 0.5), 300.0, 1e-12);
        assert_float_equal(fed_backoff_delay(9, 1, 300, 0.25, 0.0), 225.0, 1e-12);
        assert_float_equal(fed_backoff_delay(100, 1, 300, 0.25, 0.5), 300.0, 1e-12);
        assert_float_equal(fed_backoff_delay(4000, 1, 300, 0.25, 0.5), 300.0, 1e-12);
        assert_float_equal(fed_backoff_delay(UINT32_MAX, 1, 300, 0.25, 0.5), 300.0, 1e-12);
        assert_float_equal(fed_backoff_delay(2, 0.5, 300, 0, 0.9), 2.0, 1e-12);
        assert_float_equal(fed_backoff_delay(2, 0, 300, 0.25, 0.5), 0.0, 0);
}

/* ---- secrets stay secret ---- */

static void test_no_secret_in_output(void **state) {
        fedclient *c;
        char errs[12][256];
        fed_task t;
        bool changed;
        fed_ack ack;
        fed_update_meta m = { .base_version = 1, .steps = 1, .tokens = 1, .loss = 1 };
        char *path = NULL;
        int k = 0;

        memset(errs, 0, sizeof(errs));
        snprintf(m.idempotency_key, sizeof(m.idempotency_key), "abc");
        log_set_max_level(LOG_LEVEL_DEBUG);
        test_capture_begin();

        c = client("bad-" TOKEN);
        (void) fed_ensure_identity(c, errs[k++], sizeof(errs[0]));
        fed_client_free(c);
        c = client(TOKEN);
        (void) fed_ensure_identity(c, errs[k++], sizeof(errs[0]));
        (void) fed_get_task(c, &t, &changed, errs[k++], sizeof(errs[0]));
        /* a server echoing the secret and the token back in its message */
        srv.force_path = "/v1/task";
        srv.force_status = 400;
        srv.force_body =
                "{\"error\":\"bad-request\",\"message\":\"Bearer " DEVICE_ID ":" SECRET "\"}";
        assert_int_equal(fed_get_task(c, &t, &changed, errs[k++], sizeof(errs[0])), -EPROTO);
        srv.force_body = "{\"error\":\"" TOKEN "\"}";
        assert_int_equal(fed_get_task(c, &t, &changed, errs[k++], sizeof(errs[0])), -EPROTO);
        srv.force_path = NULL;
        srv.update_status = 409;
        srv.update_reply = "{\"error\":\"stale\"}";
        (void) fed_send_update(c, &m, "x", 1, &ack, errs[k++], sizeof(errs[0]));
        t = model_task();
        t.model_sha256[5] = t.model_sha256[5] == '0' ? '1' : '0';
        (void) fed_fetch_model(c, &t, &path, errs[k++], sizeof(errs[0]));
        (void) fed_send_telemetry(c, "{}", errs[k++], sizeof(errs[0]));
        fed_client_free(c);

        _cleanup_free_ char *out = test_capture_end();
        log_set_max_level(LOG_LEVEL_ERR);

        assert_non_null(strstr(out, "Enrolled")); /* the capture did see the log */
        assert_null(strstr(out, SECRET));
        assert_null(strstr(out, TOKEN));
        for (int i = 0; i < k; i++) {
                assert_null(strstr(errs[i], SECRET));
                assert_null(strstr(errs[i], TOKEN));
        }
        assert_non_null(strstr(errs[0], "bad-token"));
        assert_non_null(strstr(errs[3], "withheld"));
        assert_non_null(strstr(errs[4], "withheld"));
}

static int setup_group(void **state) {
        for (size_t i = 0; i < sizeof(model_blob); i++)
                model_blob[i] = (uint8_t) ((i * 2654435761u) >> 13);
        hash_sha256_hex(model_blob, sizeof(model_blob), model_hex);
        return test_tmpdir_create("test-fedclient");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_enroll, setup, teardown),
                cmocka_unit_test_setup_teardown(test_identity_other_server, setup, teardown),
                cmocka_unit_test_setup_teardown(test_enroll_bad_token, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_token, setup, teardown),
                cmocka_unit_test_setup_teardown(test_task, setup, teardown),
                cmocka_unit_test_setup_teardown(test_task_malformed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_task_stage_token, setup, teardown),
                cmocka_unit_test_setup_teardown(test_task_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_full, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_resume, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_ignores_range, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_range_past_end, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_bad, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_slow, setup, teardown),
                cmocka_unit_test_setup_teardown(test_update, setup, teardown),
                cmocka_unit_test_setup_teardown(test_telemetry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pending, setup, teardown),
                cmocka_unit_test(test_backoff),
                cmocka_unit_test_setup_teardown(test_no_secret_in_output, setup, teardown),
        };

        log_set_max_level(LOG_LEVEL_ERR);
        return test_run_group("test-fedclient", tests, setup_group, test_tmpdir_remove);
}
