/* SPDX-License-Identifier: MIT */
/* What the device believes from the aggregator and from its own state directory, without a
 * network: fedclient.c is included so that its static parsers can be called directly. The
 * first byte picks the target (the rest is its input):
 *   0  GET /v1/task JSON → parse_task (every field validated, then checked again here)
 *   1  response header lines → on_header, then parse_content_range on what it kept
 *   2  <state>/identity → identity_load (a 0600 file in our /tmp directory)
 *   3  <state>/pending-update → fed_pending_load, with the checksum at bytes 80..111 made
 *      to match so that mutations reach the field checks */
#include "../daemon/fedclient.c"

#include "fuzz-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64];
static fedclient client;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        fuzz_quiet();
        snprintf(dir, sizeof(dir), "%s", fuzz_tmpdir("task"));
        client.server = (char *) "http://127.0.0.1:8080";
        client.state_dir = dir;
        client.max_model_bytes = 1 << 20;
        client.timeout_s = 1;
        return 0;
}

static void fuzz_parse_task(const uint8_t *data, size_t size) {
        json_t *j = json_loadb((const char *) data, size, JSON_REJECT_DUPLICATES, NULL);
        char err[256];
        fed_task t;

        if (!j)
                return;
        if (parse_task(&client, j, &t, err, sizeof(err)) == 0) {
                if (model_config_validate(&t.cfg) < 0 || t.local_steps < 1 || t.batch < 1 ||
                    !(t.lr > 0 && t.lr <= 1) || !(t.weight_decay >= 0 && t.weight_decay <= 1) ||
                    t.encoding >= _UPD_ENCODING_MAX || t.n_policy > FED_MAX_POLICY ||
                    strlen(t.model_sha256) != 64 || t.report_interval_s < 1)
                        abort();
                if (t.encoding == UPD_TOPK && !(t.topk_fraction > 0 && t.topk_fraction <= 1))
                        abort();
        }
        json_decref(j);
}

static void fuzz_headers(const uint8_t *data, size_t size) {
        fed_req q = { .c = &client, .fd = -1 };
        uint64_t a, b, total;

        /* curl hands over one header line at a time, CRLF included, not NUL-terminated */
        for (size_t off = 0; off < size;) {
                const uint8_t *nl = memchr(data + off, '\n', size - off);
                size_t n = nl ? (size_t) (nl - (data + off)) + 1 : size - off;
                char *line = malloc(n);

                if (!line)
                        abort();
                memcpy(line, data + off, n);
                if (on_header(line, 1, n, &q) != n)
                        abort();
                free(line);
                off += n;
        }
        if (parse_content_range(q.content_range, &a, &b, &total) == 0 && b < a)
                abort();
}

static void write_state_file(const char *name, const uint8_t *data, size_t size) {
        _cleanup_free_ char *path = state_path(&client, name);
        _cleanup_close_ int fd = -1;

        if (!path)
                abort();
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                abort();
        for (size_t off = 0; off < size;) {
                ssize_t k = write(fd, data + off, size - off);
                if (k <= 0)
                        abort();
                off += (size_t) k;
        }
}

static void fuzz_identity(const uint8_t *data, size_t size) {
        char err[256];
        bool other;

        client.have_identity = false;
        write_state_file("identity", data, size);
        if (identity_load(&client, &other, err, sizeof(err)) == 0 &&
            (!client.have_identity || strlen(client.device_id) != FED_DEVICE_ID_LEN ||
             strlen(client.secret) != FED_SECRET_LEN))
                abort();
}

static void fuzz_pending(const uint8_t *data, size_t size) {
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_free_ void *body = NULL;
        fed_update_meta m;
        size_t body_size;

        buf = malloc(size ? size : 1);
        if (!buf)
                abort();
        memcpy(buf, data, size);
        if (size >= PENDING_HEADER) {
                uint8_t sum[HASH_SHA256_LEN];
                memset(buf + 80, 0, HASH_SHA256_LEN);
                hash_sha256(buf, size, sum);
                memcpy(buf + 80, sum, HASH_SHA256_LEN);
        }
        write_state_file("pending-update", buf, size);
        if (fed_pending_load(&client, &m, &body, &body_size) == 0 &&
            (m.steps < 0 || !isfinite(m.loss) || !key_valid(m.idempotency_key)))
                abort();
        /* a damaged file is renamed aside: keep the directory from filling */
        _cleanup_free_ char *corrupt = state_path(&client, "pending-update.corrupt");
        if (corrupt)
                (void) unlink(corrupt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > 256 * 1024)
                return -1;
        switch (data[0] & 3) {
        case 0:
                fuzz_parse_task(data + 1, size - 1);
                break;
        case 1:
                fuzz_headers(data + 1, size - 1);
                break;
        case 2:
                fuzz_identity(data + 1, size - 1);
                break;
        default:
                fuzz_pending(data + 1, size - 1);
                break;
        }
        return 0;
}
