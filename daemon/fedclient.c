/* SPDX-License-Identifier: MIT */
#include "fedclient.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "hash.h"
#include "log.h"
#include "macros.h"
#include "version.h"

#define FED_JSON_MAX (64 * 1024) /* task, enroll, ack and error bodies */
#define FED_IDENTITY_MAX 4096
#define FED_DEFAULT_TIMEOUT_S 30L
#define FED_DEFAULT_MAX_MODEL ((size_t) 1 << 30)
#define FED_LOW_SPEED_BPS 1024L          /* downloads slower than this for timeout_s abort */
#define FED_UPLOAD_FLOOR_BPS (16 * 1024) /* updates get timeout_s + size at this rate */
#define FED_DEVICE_ID_LEN 32
#define FED_SECRET_LEN 64
#define FED_KEY_MAX 32

#define streq(a, b) (strcmp((a), (b)) == 0)

struct fedclient {
        char *server, *enroll_token, *ca_file, *state_dir, *device_name;
        long timeout_s;
        size_t max_model_bytes;
        CURL *curl; /* reused, so keep-alive connections are too */
        char curl_err[CURL_ERROR_SIZE];

        bool have_identity;
        char device_id[FED_DEVICE_ID_LEN + 1];
        char secret[FED_SECRET_LEN + 1];

        bool have_task; /* task holds the last validated task; its etag goes in If-None-Match */
        fed_task task;

        /* the model file last verified, so that asking again does not hash 1 GiB again */
        bool have_verified;
        uint64_t verified_version;
        char verified_sha256[HASH_SHA256_HEX];
        struct stat verified_st;
};

/* One HTTP exchange. Bodies go to memory (capped), or, for a download's 2xx, to fd. */
typedef struct {
        fedclient *c;
        long status;
        char *buf;
        size_t size, max;
        bool overflow;

        int fd;          /* >= 0: a download; 200/206 bodies are written here */
        bool to_file;    /* decided at the first body byte */
        uint64_t offset; /* file position of the next byte */
        uint64_t total;  /* the file's expected final size */
        bool sent_range;
        int error; /* < 0: a callback aborted the transfer for this reason */
        char why[160];

        char etag[96];
        char content_range[96];
} fed_req;

/* ---- small helpers ---- */

static _printf_(3, 4) void seterr(char *err, size_t size, const char *fmt, ...) {
        va_list ap;

        if (!err || size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(err, size, fmt, ap);
        va_end(ap);
}

static void wipe_free(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

static void wipe_freep(char **s) {
        wipe_free(*s);
}
#define _cleanup_wipe_ _cleanup_(wipe_freep)

/* jansson >= 2.9 provides json_decrefp */
#define _cleanup_json_ _cleanup_(json_decrefp)

static void slist_wipe_freep(struct curl_slist **l) {
        /* the Authorization line holds the secret */
        for (struct curl_slist *i = *l; i; i = i->next)
                explicit_bzero(i->data, strlen(i->data));
        curl_slist_free_all(*l);
}

static bool is_hex(const char *s, size_t len) {
        size_t i;

        for (i = 0; s[i]; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
                      (s[i] >= 'A' && s[i] <= 'F')))
                        return false;
        return i == len;
}

static void lowercase(char *s) {
        for (; *s; s++)
                if (*s >= 'A' && *s <= 'Z')
                        *s = (char) (*s - 'A' + 'a');
}

/* Idempotency-Key syntax of the protocol, limited to what fed_update_meta can hold. */
static bool key_valid(const char *k) {
        size_t n = 0;

        for (; k[n]; n++)
                if (!((k[n] >= '0' && k[n] <= '9') || (k[n] >= 'a' && k[n] <= 'z') ||
                      (k[n] >= 'A' && k[n] <= 'Z') || k[n] == '_' || k[n] == '-'))
                        return false;
        return n >= 1 && n <= FED_KEY_MAX;
}

static bool printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || (unsigned char) *s > 0x7e)
                        return false;
        return true;
}

/* Server-supplied text for err: printable ASCII only, bounded, and never our secret. */
static void copy_server_text(const fedclient *c, char *dst, size_t size, const char *src) {
        size_t n = 0;

        /* checked before truncation, which could cut a secret into an unrecognisable prefix */
        if ((c->secret[0] && strstr(src, c->secret)) ||
            (c->enroll_token && strstr(src, c->enroll_token))) {
                snprintf(dst, size, "(withheld)");
                return;
        }
        for (; *src && n + 1 < size; src++)
                dst[n++] =
                        (unsigned char) *src >= 0x20 && (unsigned char) *src <= 0x7e ? *src : '?';
        dst[n] = 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void) {
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *state_path(const fedclient *c, const char *name) {
        char *p;

        if (asprintf(&p, "%s/%s", c->state_dir, name) < 0)
                return NULL;
        return p;
}

/* ---- client ---- */

int fed_client_new(const fed_options *o, fedclient **ret) {
        fedclient *c;
        size_t n;

        if (!o || !ret || !o->server || !o->state_dir || !o->state_dir[0])
                return -EINVAL;
        if (strncmp(o->server, "http://", 7) != 0 && strncmp(o->server, "https://", 8) != 0)
                return -EINVAL;
        pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return -ENOMEM;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->server = strdup(o->server);
        c->state_dir = strdup(o->state_dir);
        c->enroll_token = o->enroll_token && o->enroll_token[0] ? strdup(o->enroll_token) : NULL;
        c->ca_file = o->ca_file && o->ca_file[0] ? strdup(o->ca_file) : NULL;
        c->device_name = o->device_name ? strdup(o->device_name) : NULL;
        c->curl = curl_easy_init();
        if (!c->server || !c->state_dir ||
            (o->enroll_token && o->enroll_token[0] && !c->enroll_token) ||
            (o->ca_file && o->ca_file[0] && !c->ca_file) || (o->device_name && !c->device_name) ||
            !c->curl) {
                fed_client_free(c);
                return -ENOMEM;
        }
        /* paths are appended to it, and the identity compares it */
        n = strlen(c->server);
        while (n > 0 && c->server[n - 1] == '/')
                c->server[--n] = 0;
        c->timeout_s = o->timeout_s > 0 ? o->timeout_s : FED_DEFAULT_TIMEOUT_S;
        c->max_model_bytes = o->max_model_bytes > 0 ? o->max_model_bytes : FED_DEFAULT_MAX_MODEL;

        if (strncmp(c->server, "http://", 7) == 0 && strncmp(c->server, "http://127.", 11) != 0 &&
            strncmp(c->server, "http://localhost", 16) != 0 &&
            strncmp(c->server, "http://[::1]", 12) != 0)
                log_warning("Federation server %s is plain http: the device secret and updates "
                            "travel unencrypted",
                            c->server);
        *ret = c;
        return 0;
}

void fed_client_free(fedclient *c) {
        if (!c)
                return;
        if (c->curl)
                curl_easy_cleanup(c->curl);
        free(c->server);
        wipe_free(c->enroll_token);
        free(c->ca_file);
        free(c->state_dir);
        free(c->device_name);
        explicit_bzero(c->secret, sizeof(c->secret));
        free(c);
}

const char *fed_device_id(const fedclient *c) {
        return c && c->have_identity ? c->device_id : NULL;
}

/* ---- HTTP ---- */

static void req_done(fed_req *q) {
        if (q->buf) {
                explicit_bzero(q->buf, q->size); /* enrollment replies hold the secret */
                free(q->buf);
                q->buf = NULL;
        }
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata) {
        fed_req *q = userdata;
        size_t n = size * nmemb, name_len;
        char *target;
        size_t target_size;

        if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
                /* a new response (after 100 Continue): forget the previous one's headers */
                q->etag[0] = q->content_range[0] = 0;
                return n;
        }
        if (n > 5 && strncasecmp(data, "ETag:", 5) == 0) {
                target = q->etag, target_size = sizeof(q->etag), name_len = 5;
        } else if (n > 14 && strncasecmp(data, "Content-Range:", 14) == 0) {
                target = q->content_range, target_size = sizeof(q->content_range), name_len = 14;
        } else
                return n;

        const char *v = data + name_len, *end = data + n;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
                end--;
        if ((size_t) (end - v) < target_size) {
                memcpy(target, v, (size_t) (end - v));
                target[end - v] = 0;
        } else
                target[0] = 0; /* too long to be one of ours: as if absent */
        return n;
}

/* "bytes S-E/T" (T may be "*": *total = UINT64_MAX). */
static int parse_content_range(const char *s, uint64_t *start, uint64_t *end, uint64_t *total) {
        char *e;

        if (strncasecmp(s, "bytes ", 6) != 0)
                return -EBADMSG;
        s += 6;
        if (*s < '0' || *s > '9')
                return -EBADMSG;
        errno = 0;
        *start = strtoull(s, &e, 10);
        if (errno || *e != '-' || e[1] < '0' || e[1] > '9')
                return -EBADMSG;
        *end = strtoull(e + 1, &e, 10);
        if (errno || *e != '/' || *end < *start)
                return -EBADMSG;
        if (strcmp(e + 1, "*") == 0) {
                *total = UINT64_MAX;
                return 0;
        }
        if (e[1] < '0' || e[1] > '9')
                return -EBADMSG;
        *total = strtoull(e + 1, &e, 10);
        if (errno || *e)
                return -EBADMSG;
        return 0;
}

/* First byte of a 200/206 download body: decides where it goes in the .part file. */
static int download_begin(fed_req *q, long status) {
        curl_off_t len = -1;

        (void) curl_easy_getinfo(q->c->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
        if (status == 206) {
                uint64_t s, e, t;

                if (!q->sent_range || parse_content_range(q->content_range, &s, &e, &t) < 0 ||
                    s != q->offset || e + 1 != q->total || (t != UINT64_MAX && t != q->total)) {
                        snprintf(q->why, sizeof(q->why),
                                 "206 with Content-Range '%.60s', asked for bytes %" PRIu64
                                 "- of %" PRIu64,
                                 q->content_range, q->offset, q->total);
                        return -EBADMSG;
                }
        } else {
                if (q->offset > 0) {
                        /* the server ignored Range: what we have is replaced from byte 0 */
                        log_info("Model server ignored the range request; downloading from the "
                                 "start");
                        if (ftruncate(q->fd, 0) < 0)
                                return -errno;
                        q->offset = 0;
                }
        }
        if (len >= 0 && (uint64_t) len != q->total - q->offset) {
                snprintf(q->why, sizeof(q->why),
                         "server announces %" PRIu64 " bytes from offset %" PRIu64
                         ", the task %" PRIu64 " in all",
                         (uint64_t) len, q->offset, q->total);
                return -EBADMSG;
        }
        if (lseek(q->fd, (off_t) q->offset, SEEK_SET) < 0)
                return -errno;
        return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
        fed_req *q = userdata;
        size_t n = size * nmemb;
        int r;

        if (q->status == 0) {
                (void) curl_easy_getinfo(q->c->curl, CURLINFO_RESPONSE_CODE, &q->status);
                if (q->fd >= 0 && (q->status == 200 || q->status == 206)) {
                        r = download_begin(q, q->status);
                        if (r < 0) {
                                q->error = r;
                                return 0;
                        }
                        q->to_file = true;
                }
        }

        if (q->to_file) {
                if (n > q->total - q->offset) {
                        snprintf(q->why, sizeof(q->why),
                                 "server sent more than the task's %" PRIu64 " bytes", q->total);
                        q->error = -EBADMSG;
                        return 0;
                }
                r = write_full(q->fd, data, n);
                if (r < 0) {
                        snprintf(q->why, sizeof(q->why), "writing the model: %s", strerror(-r));
                        q->error = r;
                        return 0;
                }
                q->offset += n;
                return n;
        }

        if (n > q->max - q->size) {
                q->overflow = true; /* handled after the transfer, by status */
                return 0;
        }
        if (!q->buf) {
                q->buf = malloc(q->max + 1);
                if (!q->buf) {
                        q->error = -ENOMEM;
                        return 0;
                }
        }
        memcpy(q->buf + q->size, data, n);
        q->size += n;
        q->buf[q->size] = 0;
        return n;
}

static int curl_errno(fedclient *c, CURLcode cc) {
        long os = 0;

        switch (cc) {
        case CURLE_COULDNT_CONNECT:
                (void) curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os);
                if (os == ENETUNREACH || os == EHOSTUNREACH || os == ETIMEDOUT ||
                    os == ECONNREFUSED)
                        return (int) -os;
                return os == ENETDOWN ? -ENETUNREACH : -ECONNREFUSED;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return -EHOSTUNREACH;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_URL_MALFORMAT:
        case CURLE_UNSUPPORTED_PROTOCOL:
                return -EINVAL;
        case CURLE_SSL_CACERT_BADFILE:
                return -ENOENT; /* CAFile= unreadable: a local problem */
        default:
                /* the connection broke (reset, truncated, TLS failure): retry later */
                return -ECONNRESET;
        }
}

typedef struct {
        const char *method; /* "GET" or "POST" */
        const char *path;
        bool auth;
        const char *content_type;
        const void *body;
        size_t body_size;
        const char *extra[8]; /* more header lines, NULL-terminated */
        long total_timeout_s; /* 0: none (downloads: low-speed limit instead) */
} fed_call;

/* Performs one exchange. Returns 0 when a response arrived (any status, q->status), or the
 * transport/local errno, with a reason in err. */
static int fed_perform(fedclient *c, const fed_call *k, fed_req *q, const char *what, char *err,
                       size_t err_size) {
        _cleanup_(slist_wipe_freep) struct curl_slist *headers = NULL;
        _cleanup_free_ char *url = NULL;
        CURL *h = c->curl;
        CURLcode cc;

        if (asprintf(&url, "%s%s", c->server, k->path) < 0)
                return -ENOMEM;
        q->c = c;
        if (q->max == 0)
                q->max = FED_JSON_MAX;

        curl_easy_reset(h);
        c->curl_err[0] = 0;
        if (k->auth) {
                _cleanup_wipe_ char *line = NULL;
                if (asprintf(&line, "Authorization: Bearer %s:%s", c->device_id, c->secret) < 0)
                        return -ENOMEM;
                struct curl_slist *l = curl_slist_append(headers, line);
                if (!l)
                        return -ENOMEM;
                headers = l;
        }
        if (k->content_type) {
                char line[128];
                snprintf(line, sizeof(line), "Content-Type: %s", k->content_type);
                struct curl_slist *l = curl_slist_append(headers, line);
                if (!l)
                        return -ENOMEM;
                headers = l;
        }
        for (size_t i = 0; i < ARRAY_SIZE(k->extra) && k->extra[i]; i++) {
                struct curl_slist *l = curl_slist_append(headers, k->extra[i]);
                if (!l)
                        return -ENOMEM;
                headers = l;
        }

        (void) curl_easy_setopt(h, CURLOPT_URL, url);
        (void) curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
        (void) curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        (void) curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        /* never follow a redirect: the Authorization header must not go elsewhere */
        (void) curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        (void) curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
        (void) curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
        if (c->ca_file)
                (void) curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
        (void) curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->timeout_s);
        if (k->total_timeout_s > 0)
                (void) curl_easy_setopt(h, CURLOPT_TIMEOUT, k->total_timeout_s);
        /* stall detection for every transfer: below 1 KiB/s for timeout_s is dead */
        (void) curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, FED_LOW_SPEED_BPS);
        (void) curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->timeout_s);
        (void) curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        (void) curl_easy_setopt(h, CURLOPT_USERAGENT, "edged/" EDGED_VERSION);
        (void) curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
        (void) curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        (void) curl_easy_setopt(h, CURLOPT_HEADERDATA, q);
        (void) curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        (void) curl_easy_setopt(h, CURLOPT_WRITEDATA, q);
        if (headers)
                (void) curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        if (strcmp(k->method, "POST") == 0) {
                (void) curl_easy_setopt(h, CURLOPT_POST, 1L);
                (void) curl_easy_setopt(h, CURLOPT_POSTFIELDS, k->body ? k->body : "");
                (void) curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) k->body_size);
        }

        log_debug("Federation: %s %s", k->method, k->path);
        cc = curl_easy_perform(h);
        if (q->status == 0)
                (void) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &q->status);
        /* the handle keeps pointers to our header list and url: drop them now */
        (void) curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
        (void) curl_easy_setopt(h, CURLOPT_URL, NULL);
        if (q->error < 0) {
                if (q->why[0])
                        seterr(err, err_size, "%s: %s", what, q->why);
                else
                        seterr(err, err_size, "%s: %s", what, strerror(-q->error));
                return q->error;
        }
        if (cc == CURLE_OK || (cc == CURLE_WRITE_ERROR && q->overflow && q->status > 0))
                return 0;
        /* a server refusing early (413 before reading the body) may close while we still
         * send: its answer is what counts, else we would retry a hopeless request */
        if (q->status >= 400 && (cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR ||
                                 cc == CURLE_PARTIAL_FILE || cc == CURLE_GOT_NOTHING))
                return 0;

        int r = curl_errno(c, cc);
        seterr(err, err_size, "%s: %s", what,
               c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc));
        log_debug("Federation: %s %s failed: %s", k->method, k->path, err ? err : "");
        return r;
}

/* Maps a status the caller did not expect to an errno, with the server's reason in err. */
static int status_error(fedclient *c, fed_req *q, const char *what, char *err, size_t err_size) {
        _cleanup_json_ json_t *j = NULL;
        char reason[48] = "", message[200] = "";
        long s = q->status;
        int r;

        if (!q->overflow && q->buf) {
                j = json_loadb(q->buf, q->size, 0, NULL);
                const char *e = json_string_value(json_object_get(j, "error"));
                const char *m = json_string_value(json_object_get(j, "message"));
                if (e)
                        copy_server_text(c, reason, sizeof(reason), e);
                if (m)
                        copy_server_text(c, message, sizeof(message), m);
        }

        if (s == 401)
                r = -EACCES;
        else if (s == 429 || (s >= 500 && s <= 599))
                r = -EAGAIN;
        else if (s >= 400 && s <= 499 && (streq(reason, "stale") || streq(reason, "unknown-base")))
                r = -ESTALE;
        else if (s >= 400 && s <= 499)
                r = -EPROTO;
        else
                r = -EBADMSG; /* a status the protocol does not have here */

        seterr(err, err_size, "%s: HTTP %ld%s%s%s%s", what, s, reason[0] ? " " : "", reason,
               message[0] ? ": " : "", message);
        log_debug("Federation: %s: HTTP %ld %s", what, s, reason);
        return r;
}

/* Parses a 2xx JSON body into an object. */
static int reply_json(fed_req *q, const char *what, json_t **ret, char *err, size_t err_size) {
        json_error_t je;
        json_t *j;

        if (q->overflow) {
                seterr(err, err_size, "%s: reply larger than %d bytes", what, FED_JSON_MAX);
                return -EBADMSG;
        }
        j = q->buf ? json_loadb(q->buf, q->size, JSON_REJECT_DUPLICATES, &je) : NULL;
        if (!j || !json_is_object(j)) {
                seterr(err, err_size, "%s: reply is not a JSON object%s%s", what, j ? "" : ": ",
                       j ? "" : (q->buf ? je.text : "empty"));
                if (j)
                        json_decref(j);
                return -EBADMSG;
        }
        *ret = j;
        return 0;
}

/* ---- identity ---- */

static int identity_load(fedclient *c, bool *ret_other_server, char *err, size_t err_size) {
        _cleanup_free_ char *path = state_path(c, "identity");
        _cleanup_close_ int fd = -1;
        _cleanup_json_ json_t *j = NULL;
        char buf[FED_IDENTITY_MAX + 1];
        size_t size = 0;
        struct stat st;
        int r = 0;

        *ret_other_server = false;
        if (!path)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode)) {
                seterr(err, err_size, "%s is not a regular file", path);
                return -EBADMSG;
        }
        if (st.st_uid != geteuid()) {
                seterr(err, err_size, "%s is owned by uid %u, not by us", path,
                       (unsigned) st.st_uid);
                return -EPERM;
        }
        if (st.st_mode & 0077) {
                /* someone loosened it: tighten, and say the secret may have been read */
                log_warning("%s was accessible to group/others (mode %04o); setting 0600 — "
                            "the device secret may have been exposed, consider re-enrolling",
                            path, (unsigned) (st.st_mode & 07777));
                if (fchmod(fd, 0600) < 0)
                        return -errno;
        }
        while (size < sizeof(buf) - 1) {
                ssize_t k = read(fd, buf + size, sizeof(buf) - 1 - size);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (k == 0)
                        break;
                size += (size_t) k;
        }
        if (r == 0) {
                j = json_loadb(buf, size, JSON_REJECT_DUPLICATES, NULL);
                explicit_bzero(buf, sizeof(buf));
                const char *server = json_string_value(json_object_get(j, "server"));
                const char *id = json_string_value(json_object_get(j, "device_id"));
                const char *secret = json_string_value(json_object_get(j, "secret"));
                if (size >= sizeof(buf) - 1 || !json_is_object(j) || !server || !id || !secret ||
                    !is_hex(id, FED_DEVICE_ID_LEN) || !is_hex(secret, FED_SECRET_LEN)) {
                        seterr(err, err_size, "%s is damaged", path);
                        r = -EBADMSG;
                } else if (!streq(server, c->server)) {
                        *ret_other_server = true;
                        seterr(err, err_size, "%s belongs to server %.100s, not %.100s", path,
                               server, c->server);
                        r = -ENOKEY;
                } else {
                        snprintf(c->device_id, sizeof(c->device_id), "%s", id);
                        snprintf(c->secret, sizeof(c->secret), "%s", secret);
                        lowercase(c->device_id);
                        lowercase(c->secret);
                        c->have_identity = true;
                }
                if (secret)
                        explicit_bzero((char *) secret, strlen(secret));
        }
        explicit_bzero(buf, sizeof(buf));
        return r;
}

static int identity_save(fedclient *c, char *err, size_t err_size) {
        _cleanup_free_ char *path = state_path(c, "identity");
        _cleanup_json_ json_t *j = NULL;
        _cleanup_wipe_ char *text = NULL;
        struct stat st;
        int r;

        if (!path)
                return -ENOMEM;
        j = json_pack("{s:s,s:s,s:s}", "server", c->server, "device_id", c->device_id, "secret",
                      c->secret);
        if (!j)
                return -ENOMEM;
        text = json_dumps(j, JSON_COMPACT);
        /* jansson keeps a copy of the secret in j: wipe it before the decref */
        json_t *s = json_object_get(j, "secret");
        if (s)
                explicit_bzero((char *) json_string_value(s), FED_SECRET_LEN);
        if (!text)
                return -ENOMEM;
        r = write_file_atomic(path, 0600, text, strlen(text));
        if (r < 0) {
                seterr(err, err_size, "saving %s: %s", path, strerror(-r));
                return r;
        }
        if (lstat(path, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (st.st_mode & 07777) != 0600) {
                seterr(err, err_size, "%s has mode %04o after writing, expected 0600", path,
                       (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

static int enroll(fedclient *c, char *err, size_t err_size) {
        _cleanup_json_ json_t *req = NULL, *reply = NULL;
        _cleanup_wipe_ char *body = NULL;
        fed_req q = { .fd = -1 };
        char host[256] = "";
        const char *name = c->device_name;
        int r;

        if (!name) {
                if (gethostname(host, sizeof(host) - 1) < 0)
                        host[0] = 0;
                name = host;
        }
        req = json_pack("{s:s}", "token", c->enroll_token);
        if (!req)
                return -ENOMEM;
        if (name[0] && json_object_set_new(req, "name", json_string(name)) < 0)
                return -ENOMEM;
        body = json_dumps(req, JSON_COMPACT);
        json_t *tok = json_object_get(req, "token");
        if (tok)
                explicit_bzero((char *) json_string_value(tok), strlen(json_string_value(tok)));
        if (!body)
                return -ENOMEM;

        fed_call k = {
                .method = "POST",
                .path = "/v1/enroll",
                .content_type = "application/json",
                .body = body,
                .body_size = strlen(body),
                .total_timeout_s = c->timeout_s,
        };
        r = fed_perform(c, &k, &q, "enroll", err, err_size);
        if (r < 0)
                goto finish;
        if (q.status != 201 && q.status != 200) {
                r = status_error(c, &q, "enroll", err, err_size);
                goto finish;
        }
        r = reply_json(&q, "enroll", &reply, err, err_size);
        if (r < 0)
                goto finish;
        const char *id = json_string_value(json_object_get(reply, "device_id"));
        const char *secret = json_string_value(json_object_get(reply, "secret"));
        if (!id || !secret || !is_hex(id, FED_DEVICE_ID_LEN) || !is_hex(secret, FED_SECRET_LEN)) {
                seterr(err, err_size, "enroll: reply lacks a 32-hex device_id and a 64-hex secret");
                r = -EBADMSG;
        } else {
                snprintf(c->device_id, sizeof(c->device_id), "%s", id);
                snprintf(c->secret, sizeof(c->secret), "%s", secret);
                lowercase(c->device_id);
                lowercase(c->secret);
                r = identity_save(c, err, err_size);
                if (r >= 0) {
                        c->have_identity = true;
                        log_info("Enrolled with %s as device %s", c->server, c->device_id);
                } else
                        explicit_bzero(c->secret, sizeof(c->secret));
        }
        if (secret)
                explicit_bzero((char *) secret, strlen(secret));
finish:
        req_done(&q);
        return r;
}

int fed_ensure_identity(fedclient *c, char *err, size_t err_size) {
        char why[256] = "";
        bool other = false;
        int r;

        seterr(err, err_size, "%s", "");

        if (c->have_identity)
                return 0;
        r = identity_load(c, &other, why, sizeof(why));
        if (r >= 0)
                return 0;
        if (r != -ENOENT && r != -EBADMSG && r != -ENOKEY) {
                seterr(err, err_size, "%s", why[0] ? why : strerror(-r));
                return r;
        }
        if (!c->enroll_token) {
                if (r == -ENOENT)
                        seterr(err, err_size, "no identity in %s and no enrollment token",
                               c->state_dir);
                else
                        seterr(err, err_size, "%s, and there is no enrollment token", why);
                return r == -EBADMSG ? -EBADMSG : -ENOKEY;
        }
        if (r != -ENOENT)
                log_warning("%s; enrolling again", why);
        return enroll(c, err, err_size);
}

/* ---- task ---- */

static int get_int(json_t *o, const char *key, bool required, long long lo, long long hi,
                   long long *ret, char *err, size_t err_size) {
        json_t *v = json_object_get(o, key);

        if (!v) {
                if (!required)
                        return 0;
                seterr(err, err_size, "task: '%s' missing", key);
                return -EBADMSG;
        }
        if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
                seterr(err, err_size, "task: '%s' is not an integer in %lld..%lld", key, lo, hi);
                return -EBADMSG;
        }
        *ret = json_integer_value(v);
        return 1;
}

/* lo_open: the lower bound itself is excluded. */
static int get_float(json_t *o, const char *key, bool required, double lo, bool lo_open, double hi,
                     float *ret, char *err, size_t err_size) {
        json_t *v = json_object_get(o, key);
        double d;

        if (!v) {
                if (!required)
                        return 0;
                seterr(err, err_size, "task: '%s' missing", key);
                return -EBADMSG;
        }
        d = json_number_value(v);
        if (!json_is_number(v) || !isfinite(d) || d < lo || (lo_open && d == lo) || d > hi) {
                seterr(err, err_size, "task: '%s' is not a number in %s%g..%g", key,
                       lo_open ? "(" : "", lo, hi);
                return -EBADMSG;
        }
        *ret = (float) d;
        return 1;
}

static int parse_task(fedclient *c, json_t *j, fed_task *t, char *err, size_t err_size) {
        long long v;
        const char *s;
        int r;

        memset(t, 0, sizeof(*t));

        if ((r = get_int(j, "version", true, 0, INT64_MAX, &v, err, err_size)) < 0)
                return r;
        t->version = (uint64_t) v;

        /* the model: a known name (config optional, but must agree), or any valid config */
        s = json_string_value(json_object_get(j, "model"));
        if (!s || !s[0] || strlen(s) >= sizeof(t->cfg.name) || !printable(s)) {
                seterr(err, err_size, "task: 'model' missing or not a short name");
                return -EBADMSG;
        }
        json_t *cfg = json_object_get(j, "config");
        bool known = model_config_by_name(s, &t->cfg) >= 0;
        if (cfg) {
                model_config mc = { 0 };
                long long x[4];
                const char *keys[4] = { "block_size", "n_embd", "n_layer", "n_head" };

                if (!json_is_object(cfg)) {
                        seterr(err, err_size, "task: 'config' is not an object");
                        return -EBADMSG;
                }
                for (int i = 0; i < 4; i++) {
                        r = get_int(cfg, keys[i], true, 1, INT_MAX, &x[i], err, err_size);
                        if (r < 0)
                                return r;
                }
                mc.block_size = (int) x[0], mc.n_embd = (int) x[1];
                mc.n_layer = (int) x[2], mc.n_head = (int) x[3];
                if (model_config_validate(&mc) < 0) {
                        seterr(err, err_size,
                               "task: config %dx%d, %d layers, %d heads is not valid",
                               mc.block_size, mc.n_embd, mc.n_layer, mc.n_head);
                        return -EBADMSG;
                }
                if (known && (mc.block_size != t->cfg.block_size || mc.n_embd != t->cfg.n_embd ||
                              mc.n_layer != t->cfg.n_layer || mc.n_head != t->cfg.n_head)) {
                        seterr(err, err_size, "task: config does not match model '%s'", s);
                        return -EBADMSG;
                }
                t->cfg = mc;
        } else if (!known) {
                seterr(err, err_size, "task: unknown model '%s' without a config", s);
                return -EBADMSG;
        }
        snprintf(t->cfg.name, sizeof(t->cfg.name), "%s", s);

        s = json_string_value(json_object_get(j, "model_sha256"));
        if (!s || !is_hex(s, 64)) {
                seterr(err, err_size, "task: 'model_sha256' is not 64 hex digits");
                return -EBADMSG;
        }
        snprintf(t->model_sha256, sizeof(t->model_sha256), "%s", s);
        lowercase(t->model_sha256);

        /* bigger than max_model_bytes is a valid task fed_fetch_model refuses (-EFBIG) */
        if ((r = get_int(j, "model_bytes", true, 1, INT64_MAX, &v, err, err_size)) < 0)
                return r;
        t->model_bytes = (uint64_t) v;
        if ((r = get_int(j, "local_steps", true, 1, 1000000, &v, err, err_size)) < 0)
                return r;
        t->local_steps = (int) v;
        if ((r = get_int(j, "batch", true, 1, 4096, &v, err, err_size)) < 0)
                return r;
        t->batch = (int) v;
        if ((r = get_float(j, "lr", true, 0, true, 1, &t->lr, err, err_size)) < 0)
                return r;
        if ((r = get_float(j, "weight_decay", true, 0, false, 1, &t->weight_decay, err, err_size)) <
            0)
                return r;

        s = json_string_value(json_object_get(j, "encoding"));
        r = s ? upd_encoding_from_string(s) : -EINVAL;
        if (r < 0) {
                seterr(err, err_size, "task: 'encoding' is not fp32, int8 or topk");
                return -EBADMSG;
        }
        t->encoding = (upd_encoding) r;
        r = get_float(j, "topk_fraction", t->encoding == UPD_TOPK, 0, true, 1, &t->topk_fraction,
                      err, err_size);
        if (r < 0)
                return r;

        if ((r = get_int(j, "max_staleness", true, 0, 1000000, &v, err, err_size)) < 0)
                return r;
        t->max_staleness = (int) v;
        if ((r = get_int(j, "report_interval_s", true, 1, 86400, &v, err, err_size)) < 0)
                return r;
        t->report_interval_s = (int) v;

        json_t *pol = json_object_get(j, "policy");
        if (pol) {
                const char *key;
                json_t *val;

                if (!json_is_object(pol) || json_object_size(pol) > FED_MAX_POLICY) {
                        seterr(err, err_size, "task: 'policy' is not an object of at most %d knobs",
                               FED_MAX_POLICY);
                        return -EBADMSG;
                }
                json_object_foreach(pol, key, val) {
                        const char *vs = json_string_value(val);
                        size_t kl = strlen(key);
                        bool ok = kl > 0 && kl < sizeof(t->policy_key[0]);

                        for (size_t i = 0; ok && i < kl; i++)
                                ok = (key[i] >= 'A' && key[i] <= 'Z') ||
                                     (key[i] >= 'a' && key[i] <= 'z') ||
                                     (key[i] >= '0' && key[i] <= '9');
                        if (!ok || !vs || strlen(vs) >= sizeof(t->policy_value[0]) ||
                            !printable(vs)) {
                                seterr(err, err_size,
                                       "task: policy knob '%.31s' has a bad name or value",
                                       ok ? key : "?");
                                return -EBADMSG;
                        }
                        memcpy(t->policy_key[t->n_policy], key, kl + 1);
                        snprintf(t->policy_value[t->n_policy], sizeof(t->policy_value[0]), "%s",
                                 vs);
                        t->n_policy++;
                }
        }

        /* optional, and not worth refusing the task for: a bad one is ignored */
        json_t *st = json_object_get(j, "stage_token");
        if (st) {
                s = json_string_value(st);
                bool ok = s && strlen(s) == 64;
                for (size_t i = 0; ok && i < 64; i++)
                        ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
                if (ok)
                        memcpy(t->stage_token, s, 65);
                else
                        log_warning("task: 'stage_token' is not 64 lowercase hex digits; ignored");
        }
        return 0;
}

int fed_get_task(fedclient *c, fed_task *ret, bool *ret_changed, char *err, size_t err_size) {
        _cleanup_json_ json_t *j = NULL;
        fed_req q = { .fd = -1 };
        char inm[128];
        fed_task t;
        int r;

        seterr(err, err_size, "%s", "");

        r = fed_ensure_identity(c, err, err_size);
        if (r < 0)
                return r;

        fed_call k = {
                .method = "GET", .path = "/v1/task", .auth = true, .total_timeout_s = c->timeout_s
        };
        if (c->have_task && c->task.etag[0]) {
                snprintf(inm, sizeof(inm), "If-None-Match: %s", c->task.etag);
                k.extra[0] = inm;
        }
        r = fed_perform(c, &k, &q, "task", err, err_size);
        if (r < 0)
                goto finish;
        if (q.status == 304 && c->have_task) {
                *ret = c->task;
                if (ret_changed)
                        *ret_changed = false;
                goto finish;
        }
        if (q.status != 200) {
                r = status_error(c, &q, "task", err, err_size);
                goto finish;
        }
        r = reply_json(&q, "task", &j, err, err_size);
        if (r < 0)
                goto finish;
        r = parse_task(c, j, &t, err, err_size);
        if (r < 0)
                goto finish;
        /* an ETag we could not send back verbatim is as good as none */
        if (strlen(q.etag) < sizeof(t.etag) && printable(q.etag))
                snprintf(t.etag, sizeof(t.etag), "%s", q.etag);
        c->task = t;
        c->have_task = true;
        *ret = t;
        if (ret_changed)
                *ret_changed = true;
finish:
        req_done(&q);
        return r;
}

/* ---- model ---- */

/* "model-<v><suffix>" -> v. */
static bool parse_model_name(const char *name, const char *suffix, uint64_t *ret) {
        const char *p = name + 6;
        char *e;

        if (strncmp(name, "model-", 6) != 0 || *p < '0' || *p > '9')
                return false;
        errno = 0;
        *ret = strtoull(p, &e, 10);
        return errno == 0 && streq(e, suffix);
}

/* Keeps the model just fetched and the newest other one; drops stale partial downloads. */
static void prune_models(fedclient *c, uint64_t keep) {
        DIR *d = opendir(c->state_dir);
        struct dirent *de;
        uint64_t v, newest_other = 0;
        bool have_other = false;

        if (!d)
                return;
        while ((de = readdir(d)))
                if (parse_model_name(de->d_name, ".safetensors", &v) && v != keep &&
                    (!have_other || v > newest_other)) {
                        newest_other = v;
                        have_other = true;
                }
        rewinddir(d);
        while ((de = readdir(d))) {
                bool drop = (parse_model_name(de->d_name, ".safetensors", &v) && v != keep &&
                             v != newest_other) ||
                            (parse_model_name(de->d_name, ".part", &v) && v != keep);
                if (drop && unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT)
                        (void) log_warning_errno(errno, "Removing old model %s/%s: %m",
                                                 c->state_dir, de->d_name);
                else if (drop)
                        log_debug("Removed old model %s/%s", c->state_dir, de->d_name);
        }
        closedir(d);
}

static bool same_file(const struct stat *a, const struct stat *b) {
        return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
               a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
               a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Trusts a file again only while it is the same inode, size and times (the model files are
 * ours alone; this is against repeated hashing, not against an adversary). */
static void remember_verified(fedclient *c, const fed_task *t, const char *path) {
        c->have_verified = stat(path, &c->verified_st) >= 0;
        c->verified_version = t->version;
        memcpy(c->verified_sha256, t->model_sha256, sizeof(c->verified_sha256));
}

static int file_matches(const char *path, const fed_task *t, bool *ret) {
        char hex[HASH_SHA256_HEX];
        struct stat st;
        int r;

        *ret = false;
        if (stat(path, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != t->model_bytes)
                return 0;
        r = hash_sha256_file_hex(path, hex);
        if (r < 0)
                return r;
        *ret = streq(hex, t->model_sha256);
        return 0;
}

int fed_fetch_model(fedclient *c, const fed_task *t, char **ret_path, char *err, size_t err_size) {
        _cleanup_free_ char *final = NULL, *part = NULL;
        _cleanup_close_ int fd = -1;
        char name[64], hex[HASH_SHA256_HEX], path_v[32], range[64], if_range[96];
        struct stat st;
        bool ok;
        int r;

        seterr(err, err_size, "%s", "");

        if (!t || !ret_path || !is_hex(t->model_sha256, 64) || t->model_bytes == 0)
                return -EINVAL;
        if (t->model_bytes > c->max_model_bytes) {
                seterr(err, err_size,
                       "model: version %" PRIu64 " is %" PRIu64 " bytes, over the limit of %zu",
                       t->version, t->model_bytes, c->max_model_bytes);
                return -EFBIG;
        }
        snprintf(name, sizeof(name), "model-%" PRIu64 ".safetensors", t->version);
        final = state_path(c, name);
        snprintf(name, sizeof(name), "model-%" PRIu64 ".part", t->version);
        part = state_path(c, name);
        if (!final || !part)
                return -ENOMEM;

        if (c->have_verified && c->verified_version == t->version &&
            streq(c->verified_sha256, t->model_sha256) && stat(final, &st) >= 0 &&
            same_file(&st, &c->verified_st))
                goto done;
        c->have_verified = false;
        r = file_matches(final, t, &ok);
        if (r < 0 && r != -ENOENT) {
                seterr(err, err_size, "model: checking %s: %s", final, strerror(-r));
                return r;
        }
        if (r >= 0 && ok) {
                remember_verified(c, t, final);
                goto done;
        }
        if (r >= 0) {
                log_warning("%s does not match the task's size and SHA-256; downloading again",
                            final);
                if (unlink(final) < 0 && errno != ENOENT)
                        return -errno;
        }

        r = fed_ensure_identity(c, err, err_size);
        if (r < 0)
                return r;

        fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0) {
                r = -errno;
                seterr(err, err_size, "model: opening %s: %s", part, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0)
                return -errno;
        if ((uint64_t) st.st_size >= t->model_bytes) {
                /* complete (maybe a rename was interrupted) or longer than it can be */
                r = file_matches(part, t, &ok);
                if (r >= 0 && ok)
                        goto commit;
                if (ftruncate(fd, 0) < 0)
                        return -errno;
                st.st_size = 0;
        }

        snprintf(path_v, sizeof(path_v), "/v1/model/%" PRIu64, t->version);
        for (int attempt = 0;; attempt++) {
                fed_req q = { .fd = fd, .total = t->model_bytes };
                fed_call k = { .method = "GET", .path = path_v, .auth = true };

                if (fstat(fd, &st) < 0)
                        return -errno;
                q.offset = (uint64_t) st.st_size;
                if (q.offset > 0) {
                        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-", q.offset);
                        /* a resumed part must be of this very blob: else the server sends 200 */
                        snprintf(if_range, sizeof(if_range), "If-Range: \"%s\"", t->model_sha256);
                        k.extra[0] = range;
                        k.extra[1] = if_range;
                        q.sent_range = true;
                        log_info("Resuming the download of model %" PRIu64 " at byte %" PRIu64,
                                 t->version, q.offset);
                }
                r = fed_perform(c, &k, &q, "model", err, err_size);
                if (r >= 0 && q.status == 416 && q.sent_range && attempt == 0) {
                        /* the server's blob is shorter than our part: start over, once */
                        req_done(&q);
                        if (ftruncate(fd, 0) < 0)
                                return -errno;
                        continue;
                }
                if (r >= 0 && q.status != 200 && q.status != 206)
                        r = status_error(c, &q, "model", err, err_size);
                else if (r >= 0 && !q.to_file && q.status == 200 && ftruncate(fd, 0) < 0)
                        r = -errno; /* an empty 200: nothing of the old part is valid */
                req_done(&q);
                if (r == -EBADMSG && q.sent_range && ftruncate(fd, 0) < 0)
                        r = -errno; /* a 206 we cannot use: the next attempt starts afresh */
                if (r < 0) {
                        if (fstat(fd, &st) >= 0 && st.st_size > 0)
                                log_debug("Model %" PRIu64 ": keeping %" PRIu64
                                          " bytes in %s to resume",
                                          t->version, (uint64_t) st.st_size, part);
                        return r;
                }
                break;
        }

        if (fstat(fd, &st) < 0)
                return -errno;
        if ((uint64_t) st.st_size != t->model_bytes) {
                seterr(err, err_size, "model: got %" PRIu64 " of %" PRIu64 " bytes",
                       (uint64_t) st.st_size, t->model_bytes);
                return -EBADMSG; /* the part stays, for the next attempt to resume */
        }
        r = hash_sha256_file_hex(part, hex);
        if (r < 0)
                return r;
        if (!streq(hex, t->model_sha256)) {
                (void) unlink(part);
                seterr(err, err_size,
                       "model: SHA-256 of version %" PRIu64 " is %s, the task says %s", t->version,
                       hex, t->model_sha256);
                return -EBADMSG;
        }
commit:
        if (fsync(fd) < 0 || rename(part, final) < 0)
                return -errno;
        r = fsync_parent_dir(final);
        if (r < 0)
                return r;
        log_info("Model version %" PRIu64 " downloaded (%" PRIu64 " bytes)", t->version,
                 t->model_bytes);
        remember_verified(c, t, final);
done:
        prune_models(c, t->version);
        *ret_path = TAKE_PTR(final);
        return 0;
}

/* ---- update and telemetry ---- */

int fed_send_update(fedclient *c, const fed_update_meta *meta, const void *body, size_t size,
                    fed_ack *ret, char *err, size_t err_size) {
        _cleanup_json_ json_t *j = NULL;
        fed_req q = { .fd = -1 };
        char h_key[64], h_base[64], h_steps[64], h_tokens[64], h_loss[64];
        int r;

        seterr(err, err_size, "%s", "");

        if (!meta || !body || size == 0 || !key_valid(meta->idempotency_key) || meta->steps < 0 ||
            meta->tokens == 0 || !isfinite(meta->loss)) {
                seterr(err, err_size, "update: invalid metadata or empty body");
                return -EINVAL;
        }
        r = fed_ensure_identity(c, err, err_size);
        if (r < 0)
                return r;

        snprintf(h_key, sizeof(h_key), "Idempotency-Key: %s", meta->idempotency_key);
        snprintf(h_base, sizeof(h_base), "X-Edged-Base-Version: %" PRIu64, meta->base_version);
        snprintf(h_steps, sizeof(h_steps), "X-Edged-Steps: %ld", meta->steps);
        snprintf(h_tokens, sizeof(h_tokens), "X-Edged-Tokens: %" PRIu64, meta->tokens);
        snprintf(h_loss, sizeof(h_loss), "X-Edged-Loss: %.9g", (double) meta->loss);
        fed_call k = {
                .method = "POST",
                .path = "/v1/update",
                .auth = true,
                .content_type = "application/octet-stream",
                .body = body,
                .body_size = size,
                .extra = { h_key, h_base, h_steps, h_tokens, h_loss },
                .total_timeout_s = c->timeout_s + (long) (size / FED_UPLOAD_FLOOR_BPS),
        };
        r = fed_perform(c, &k, &q, "update", err, err_size);
        if (r < 0)
                goto finish;
        if (q.status != 200) {
                r = status_error(c, &q, "update", err, err_size);
                goto finish;
        }
        r = reply_json(&q, "update", &j, err, err_size);
        if (r < 0)
                goto finish;

        const char *status = json_string_value(json_object_get(j, "status"));
        json_t *id = json_object_get(j, "update_id"), *ver = json_object_get(j, "version"),
               *st = json_object_get(j, "staleness");
        bool dup = status && streq(status, "duplicate");
        if (!status || (!dup && !streq(status, "accepted")) || !json_is_integer(id) ||
            json_integer_value(id) < 0 || !json_is_integer(ver) || json_integer_value(ver) < 0 ||
            (st && (!json_is_integer(st) || json_integer_value(st) < 0 ||
                    json_integer_value(st) > INT_MAX)) ||
            (!dup && !st)) {
                seterr(err, err_size, "update: malformed acknowledgement");
                r = -EBADMSG;
                goto finish;
        }
        if (ret)
                *ret = (fed_ack){
                        .duplicate = dup,
                        .update_id = (uint64_t) json_integer_value(id),
                        .version = (uint64_t) json_integer_value(ver),
                        .staleness = st ? (int) json_integer_value(st) : 0,
                };
finish:
        req_done(&q);
        return r;
}

int fed_send_telemetry(fedclient *c, const char *json, char *err, size_t err_size) {
        _cleanup_json_ json_t *j = NULL;
        fed_req q = { .fd = -1 };
        int r;

        seterr(err, err_size, "%s", "");

        j = json ? json_loads(json, JSON_REJECT_DUPLICATES, NULL) : NULL;
        if (!json_is_object(j)) {
                seterr(err, err_size, "telemetry: not a JSON object");
                return -EINVAL;
        }
        r = fed_ensure_identity(c, err, err_size);
        if (r < 0)
                return r;
        fed_call k = {
                .method = "POST",
                .path = "/v1/telemetry",
                .auth = true,
                .content_type = "application/json",
                .body = json,
                .body_size = strlen(json),
                .total_timeout_s = c->timeout_s,
        };
        r = fed_perform(c, &k, &q, "telemetry", err, err_size);
        if (r >= 0 && q.status != 204 && q.status != 200)
                r = status_error(c, &q, "telemetry", err, err_size);
        req_done(&q);
        return r;
}

/* ---- the pending update ---- */

/* Layout, little-endian:
 *   0 "EDPEND" 0 1   magic with format 1
 *   8 u64 base_version, 16 i64 steps, 24 u64 tokens, 32 u32 loss (IEEE bits)
 *  36 char key[32] (NUL-padded), 68 u32 zero, 72 u64 body size
 *  80 u8 sha256[32] of the whole file with these 32 bytes zeroed
 * 112 body */
#define PENDING_MAGIC "EDPEND\0\1"
#define PENDING_HEADER 112

static void put_le(uint8_t *p, uint64_t v, int n) {
        for (int i = 0; i < n; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
        uint64_t v = 0;

        for (int i = 0; i < n; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

int fed_pending_save(fedclient *c, fed_update_meta *meta, const void *body, size_t size) {
        _cleanup_free_ char *path = state_path(c, "pending-update");
        _cleanup_free_ uint8_t *buf = NULL;
        uint8_t sum[HASH_SHA256_LEN];
        uint32_t loss_bits;
        int r;

        if (!path)
                return -ENOMEM;
        if (!meta || (!body && size > 0) || size > SIZE_MAX - PENDING_HEADER || meta->steps < 0 ||
            !isfinite(meta->loss))
                return -EINVAL;
        if (!meta->idempotency_key[0]) {
                r = hash_random_hex(FED_KEY_MAX / 2, meta->idempotency_key);
                if (r < 0)
                        return r;
        } else if (!key_valid(meta->idempotency_key))
                return -EINVAL;

        buf = calloc(1, PENDING_HEADER + size);
        if (!buf)
                return -ENOMEM;
        memcpy(buf, PENDING_MAGIC, 8);
        put_le(buf + 8, meta->base_version, 8);
        put_le(buf + 16, (uint64_t) meta->steps, 8);
        put_le(buf + 24, meta->tokens, 8);
        memcpy(&loss_bits, &meta->loss, 4);
        put_le(buf + 32, loss_bits, 4);
        memcpy(buf + 36, meta->idempotency_key, strlen(meta->idempotency_key));
        put_le(buf + 72, size, 8);
        if (size > 0)
                memcpy(buf + PENDING_HEADER, body, size);
        hash_sha256(buf, PENDING_HEADER + size, sum);
        memcpy(buf + 80, sum, sizeof(sum));
        return write_file_atomic(path, 0600, buf, PENDING_HEADER + size);
}

static int pending_corrupt(const char *path, const char *why) {
        _cleanup_free_ char *dst = NULL;

        if (asprintf(&dst, "%s.corrupt", path) < 0)
                return -ENOMEM;
        if (rename(path, dst) < 0)
                (void) log_warning_errno(
                        errno, "Pending update %s is damaged (%s), and renaming it failed: %m",
                        path, why);
        else
                log_warning("Pending update %s is damaged (%s); moved to %s", path, why, dst);
        return -EBADMSG;
}

int fed_pending_load(fedclient *c, fed_update_meta *ret_meta, void **ret_body, size_t *ret_size) {
        _cleanup_free_ char *path = state_path(c, "pending-update");
        _cleanup_free_ uint8_t *buf = NULL;
        uint8_t sum[HASH_SHA256_LEN], want[HASH_SHA256_LEN];
        fed_update_meta m = { 0 };
        uint32_t loss_bits;
        size_t size;
        int r;

        if (!path)
                return -ENOMEM;
        r = read_full_file(path, PENDING_HEADER + c->max_model_bytes, (void **) &buf, &size);
        if (r == -EFBIG)
                return pending_corrupt(path, "too large");
        if (r < 0)
                return r;
        if (size < PENDING_HEADER || memcmp(buf, PENDING_MAGIC, 8) != 0)
                return pending_corrupt(path, "bad header");
        if (get_le(buf + 72, 8) != size - PENDING_HEADER)
                return pending_corrupt(path, "truncated");
        memcpy(want, buf + 80, sizeof(want));
        memset(buf + 80, 0, sizeof(want));
        hash_sha256(buf, size, sum);
        if (memcmp(sum, want, sizeof(sum)) != 0)
                return pending_corrupt(path, "checksum mismatch");

        m.base_version = get_le(buf + 8, 8);
        m.steps = (long) (int64_t) get_le(buf + 16, 8);
        m.tokens = get_le(buf + 24, 8);
        loss_bits = (uint32_t) get_le(buf + 32, 4);
        memcpy(&m.loss, &loss_bits, 4);
        memcpy(m.idempotency_key, buf + 36, FED_KEY_MAX);
        m.idempotency_key[FED_KEY_MAX] = 0;
        /* the checksum matched, so these hold only if we wrote them: checked all the same */
        bool bad = m.steps < 0 || !isfinite(m.loss) || !key_valid(m.idempotency_key) ||
                   get_le(buf + 68, 4) != 0;
        for (size_t i = strlen(m.idempotency_key); i < FED_KEY_MAX; i++)
                bad = bad || buf[36 + i] != 0;
        if (bad)
                return pending_corrupt(path, "bad fields");

        size -= PENDING_HEADER;
        memmove(buf, buf + PENDING_HEADER, size);
        if (ret_meta)
                *ret_meta = m;
        if (ret_size)
                *ret_size = size;
        if (ret_body)
                *ret_body = TAKE_PTR(buf);
        return 0;
}

int fed_pending_drop(fedclient *c) {
        _cleanup_free_ char *path = state_path(c, "pending-update");

        if (!path)
                return -ENOMEM;
        if (unlink(path) < 0)
                return errno == ENOENT ? 0 : -errno;
        return fsync_parent_dir(path);
}

/* ---- retry policy ---- */

double fed_backoff_delay(unsigned attempt, double base_s, double max_s, double jitter, double u) {
        double d;

        if (!(base_s > 0) || !(max_s > 0))
                return 0;
        d = ldexp(base_s, (int) MIN(attempt, 4096u)); /* inf beyond the range: capped below */
        if (!(d <= max_s))
                d = max_s;
        jitter = jitter > 0 ? MIN(jitter, 1.0) : 0;
        u = u > 0 ? MIN(u, 1.0) : 0;
        return d * (1 + jitter * (2 * u - 1));
}
