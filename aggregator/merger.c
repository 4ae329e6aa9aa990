/* SPDX-License-Identifier: MIT */
#include "merger.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "blobs.h"
#include "eval.h"
#include "log.h"
#include "macros.h"
#include "merge.h"
#include "time-util.h"
#include "update-codec.h"

#define FLUSH_INTERVAL_S 10
#define DB_HEADROOM_BYTES (256 * 1024) /* the commit's WAL frames, generously */

struct agg_merger {
        agg_store *store;
        agg_metrics *metrics;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool kicked, stop;
        bool disk_full; /* the last merge failed for want of space */
};

static void model_freep(model **m) {
        model_free(*m);
}

typedef struct {
        size_t k;
        float **deltas;
} delta_set;

static void delta_set_done(delta_set *d) {
        for (size_t i = 0; i < d->k; i++)
                free(d->deltas[i]);
        free(d->deltas);
}

static int evaluate(agg_store *s, const agg_settings *set, model *m, uint64_t version) {
        double loss;
        int r;

        if (!set->validation_file[0])
                return 0;
        r = agg_eval_file(m, set->validation_file, &loss);
        if (r < 0)
                return r;
        log_info("version %llu: validation loss %.4f", (unsigned long long) version, loss);
        return agg_store_set_val_loss(s, version, loss);
}

int agg_merge_eval_current(agg_store *s) {
        _cleanup_(model_freep) model *m = NULL;
        _cleanup_free_ agg_settings *set = malloc(sizeof(*set));
        agg_version cur;
        int r;

        if (!set)
                return -ENOMEM;
        if ((r = agg_store_load_settings(s, set)) < 0 || (r = agg_store_current_version(s, &cur)) < 0)
                return r;
        if (!set->validation_file[0] || !isnan(cur.val_loss))
                return 0;
        if ((r = model_new(&set->cfg, 1, set->cfg.block_size, &m)) < 0 ||
            (r = agg_blob_load_model(agg_store_dir(s), cur.blob, m)) < 0)
                return r;
        return evaluate(s, set, m, cur.version);
}

/* The server optimizer's state is saved with each version, as the blob its row names in
 * 'moments' (content-addressed, written and fsync'd before the commit like the model blob),
 * and loaded from the current version at the next merge:
 *     fedadam    m[n] v[n]                       8n bytes
 *     nesterov   m[n] acc[n] "EDNM" count        8n + 8 bytes
 * floats and the uint32 count in host byte order (little-endian on every supported machine);
 * count is how many merges acc holds (agg_nesterov). The size tells the two apart: after a
 * ServerOptimizer change the other optimizer's state is left alone and the new one starts
 * from zero. fedavg keeps none. */
#define NESTEROV_MAGIC "EDNM"
#define NESTEROV_TRAILER 8 /* magic, count */

static size_t state_bytes(agg_optimizer opt, size_t n) {
        switch (opt) {
        case AGG_OPT_FEDADAM:
                return 2 * n * sizeof(float);
        case AGG_OPT_NESTEROV:
                return 2 * n * sizeof(float) + NESTEROV_TRAILER;
        default:
                return 0;
        }
}

static bool state_is(agg_optimizer opt, size_t n, const void *buf, size_t size) {
        if (size != state_bytes(opt, n))
                return false;
        return opt != AGG_OPT_NESTEROV ||
               !memcmp((const uint8_t *) buf + 2 * n * sizeof(float), NESTEROV_MAGIC, 4);
}

/* Fills state (2n floats) and *ret_count from the state saved with version cur: zeros when
 * there is none or it is another optimizer's. */
static int state_load(const char *dir, const agg_version *cur, agg_optimizer opt, size_t n,
                      float *state, uint32_t *ret_count) {
        _cleanup_free_ void *buf = NULL;
        size_t size;
        int r;

        memset(state, 0, 2 * n * sizeof(float));
        *ret_count = 0;
        if (!cur->moments[0])
                return 0;
        r = agg_blob_load_bytes(dir, cur->moments, 2 * n * sizeof(float) + NESTEROV_TRAILER, &buf,
                                &size);
        if (r < 0)
                return r;
        if (state_is(opt, n, buf, size)) {
                memcpy(state, buf, 2 * n * sizeof(float));
                if (opt == AGG_OPT_NESTEROV)
                        memcpy(ret_count, (const uint8_t *) buf + 2 * n * sizeof(float) + 4,
                               sizeof(*ret_count));
                return 0;
        }
        if (state_is(AGG_OPT_FEDADAM, n, buf, size) || state_is(AGG_OPT_NESTEROV, n, buf, size)) {
                log_info("version %llu holds another server optimizer's state: the new one "
                         "starts from zero",
                         (unsigned long long) cur->version);
                return 0;
        }
        return log_error_errno(EBADMSG, "version %llu: optimizer state %s: %zu bytes, not a "
                                        "state of this model",
                               (unsigned long long) cur->version, cur->moments, size);
}

static int state_save(const char *dir, agg_optimizer opt, size_t n, float *state, uint32_t count,
                      char ret_sha[65]) {
        if (opt == AGG_OPT_NESTEROV) {
                uint8_t *trailer = (uint8_t *) (state + 2 * n);
                memcpy(trailer, NESTEROV_MAGIC, 4);
                memcpy(trailer + 4, &count, sizeof(count));
        }
        return agg_blob_save_bytes(dir, state, state_bytes(opt, n), ret_sha);
}

/* -ENOSPC when the store's file system cannot take a new version (its model blob, the
 * optimizer state, the commit): checked before the work of a merge, which a full disk would only
 * throw away at the first write. Unknown sizes pass: the writes themselves decide then. */
static int check_space(const char *dir, const agg_version *cur, size_t moments_bytes) {
        _cleanup_free_ char *path = NULL;
        struct statvfs vfs;
        struct stat st;

        if (agg_blob_path(dir, cur->blob, &path) < 0 || stat(path, &st) < 0 ||
            statvfs(dir, &vfs) < 0)
                return 0;
        /* root may use the reserved blocks, and so may a store run as root */
        uint64_t avail = (uint64_t) (geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail) * vfs.f_frsize;
        uint64_t need = (uint64_t) st.st_size + moments_bytes + DB_HEADROOM_BYTES;
        return avail < need ? -ENOSPC : 0;
}

/* After a failed merge: removes the blobs written for a version that was never committed,
 * so a full disk does not fill further with them. Not after -ESTALE: another merger may
 * have published the same content. */
static void discard_unpublished(const char *dir, const agg_version *cur, const agg_version *next,
                                int r) {
        const char *shas[] = { next->blob, next->moments };

        if (r == -ESTALE)
                return;
        for (size_t i = 0; i < ARRAY_SIZE(shas); i++) {
                _cleanup_free_ char *path = NULL;
                if (!shas[i][0] || !strcmp(shas[i], cur->blob) || !strcmp(shas[i], cur->moments))
                        continue;
                if (agg_blob_path(dir, shas[i], &path) >= 0 && unlink(path) < 0 && errno != ENOENT)
                        log_warning("%s: cannot remove: %m", path);
        }
}

int agg_merge_once(agg_store *s, agg_metrics *metrics, bool *ret_merged) {
        _cleanup_(model_freep) model *m = NULL;
        _cleanup_free_ agg_settings *set = malloc(sizeof(*set));
        _cleanup_free_ model_layout *lay = malloc(sizeof(*lay));
        _cleanup_free_ agg_update *u = NULL;
        _cleanup_free_ float *agg = NULL, *state = NULL;
        _cleanup_free_ int64_t *ids = NULL, *stale_ids = NULL;
        _cleanup_free_ uint64_t *tokens = NULL, *staleness = NULL;
        _cleanup_free_ double *w = NULL;
        delta_set ds = {};
        agg_version cur, next = {};
        size_t n = 0, k = 0, n_stale = 0, K;
        double t0 = mono_now_s();
        int r;

        *ret_merged = false;
        if (!set || !lay)
                return -ENOMEM;
        if ((r = agg_store_load_settings(s, set)) < 0 || (r = agg_store_current_version(s, &cur)) < 0)
                return r;
        K = (size_t) set->buffer_size;
        int64_t pending = agg_store_count_pending(s);
        if (pending < 0)
                /* a failing store must be heard of, not look like "not enough updates yet" */
                return log_error_errno(EIO, "cannot count the updates waiting to be merged; "
                                            "merging is stopped until the store answers");
        if (pending < (int64_t) K)
                return 0;
        /* more than K so that dropping a too-stale one still leaves a full buffer */
        if ((r = agg_store_pending(s, 4 * K, &u, &n)) < 0)
                return r;
        ids = calloc(n, sizeof(*ids));
        stale_ids = calloc(n, sizeof(*stale_ids));
        tokens = calloc(n, sizeof(*tokens));
        staleness = calloc(n, sizeof(*staleness));
        w = calloc(n, sizeof(*w));
        if (!ids || !stale_ids || !tokens || !staleness || !w)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                uint64_t tau = cur.version >= u[i].base_version ? cur.version - u[i].base_version : 0;
                if (tau > (uint64_t) set->max_staleness) {
                        stale_ids[n_stale++] = u[i].id;
                        continue;
                }
                if (k < K) {
                        u[k] = u[i]; /* compact: k <= i */
                        ids[k] = u[k].id;
                        tokens[k] = u[k].tokens;
                        staleness[k] = tau;
                        k++;
                }
        }
        if (n_stale > 0) {
                if ((r = agg_store_drop_updates(s, stale_ids, n_stale)) < 0)
                        return r;
                log_info("dropped %zu update(s) more than %d versions behind", n_stale,
                         set->max_staleness);
        }
        if (k < K) {
                /* dropping made room: more may be waiting behind them, look again at once
                 * instead of at the next upload or flush tick */
                *ret_merged = n_stale > 0;
                return 0;
        }

        model_layout_init(lay, &set->cfg);
        r = check_space(agg_store_dir(s), &cur, state_bytes(set->optimizer, lay->n_params));
        if (r < 0)
                return r; /* the buffer stays pending; the worker retries */
        if ((r = model_new(&set->cfg, 1, set->cfg.block_size, &m)) < 0)
                return log_error_errno(r, "cannot allocate the model");
        if ((r = agg_blob_load_model(agg_store_dir(s), cur.blob, m)) < 0)
                return r;
        ds.deltas = calloc(MAX(k, (size_t) 1), sizeof(float *));
        agg = malloc(lay->n_params * sizeof(float));
        if (!ds.deltas || !agg)
                return -ENOMEM;
        for (size_t i = 0; i < k; i++) {
                _cleanup_free_ void *body = NULL;
                size_t size;
                upd_info info;
                char err[256];

                ds.deltas[ds.k] = malloc(lay->n_params * sizeof(float));
                if (!ds.deltas[ds.k]) {
                        r = -ENOMEM;
                        goto out;
                }
                ds.k++;
                if ((r = agg_store_update_body(s, u[i].id, &body, &size)) < 0)
                        goto out;
                r = upd_decode(body, size, lay, agg_max_raw_bytes(lay), ds.deltas[i], &info, err,
                               sizeof(err));
                if (r < 0) { /* validated on arrival: this is a damaged database */
                        log_error("update %lld no longer decodes: %s", (long long) u[i].id, err);
                        goto out;
                }
                if (u[i].scale != 1.0)
                        for (size_t j = 0; j < lay->n_params; j++)
                                ds.deltas[i][j] *= (float) u[i].scale;
        }
        if ((r = agg_weights(tokens, staleness, k, w)) < 0 ||
            (r = agg_aggregate((const float *const *) ds.deltas, w, k, lay->n_params,
                               set->trim_fraction, agg)) < 0)
                goto out;
        if (set->optimizer == AGG_OPT_FEDADAM || set->optimizer == AGG_OPT_NESTEROV) {
                size_t np = lay->n_params;
                uint32_t count;
                /* 2n floats and room for the Nesterov trailer */
                state = calloc(2 * np + NESTEROV_TRAILER / sizeof(float), sizeof(float));
                if (!state) {
                        r = -ENOMEM;
                        goto out;
                }
                if ((r = state_load(agg_store_dir(s), &cur, set->optimizer, np, state, &count)) < 0)
                        goto out;
                if (set->optimizer == AGG_OPT_FEDADAM)
                        agg_fedadam(m->params, state, state + np, agg, np,
                                    agg_settings_server_lr(set), set->server_adam_eps);
                else
                        agg_nesterov(m->params, state, state + np, &count, agg, np,
                                     &(agg_nesterov_params){
                                             .lr = agg_settings_server_lr(set),
                                             .mu = set->server_momentum,
                                             .period = (uint32_t) set->server_momentum_period,
                                     });
                if ((r = state_save(agg_store_dir(s), set->optimizer, np, state, count,
                                    next.moments)) < 0)
                        goto out;
        } else
                agg_fedavg(m->params, agg, lay->n_params, agg_settings_server_lr(set));

        next.version = cur.version + 1;
        if ((r = agg_blob_save_model(agg_store_dir(s), m, next.version, next.blob)) < 0)
                goto out;
        next.merge_seconds = mono_now_s() - t0;
        /* the commit point: before it the old version stands, after it the new one */
        if ((r = agg_store_commit_version(s, &next, ids, k)) < 0) {
                log_error_errno(r, "cannot commit version %llu", (unsigned long long) next.version);
                goto out;
        }
        *ret_merged = true;
        if (metrics) {
                agg_metrics_add(metrics, "merge.count", 1);
                agg_metrics_add(metrics, "merge.microseconds", (int64_t) (next.merge_seconds * 1e6));
        }
        log_info("published version %llu from %zu update(s) in %.3f s",
                 (unsigned long long) next.version, k, next.merge_seconds);
        if (evaluate(s, set, m, next.version) < 0)
                log_warning("version %llu: no validation loss", (unsigned long long) next.version);
        {
                char(*keep)[65] = NULL;
                size_t n_keep = 0;
                if (agg_store_live_blobs(s, (size_t) set->max_staleness + 1, &keep, &n_keep) >= 0)
                        agg_blob_prune(agg_store_dir(s), keep, n_keep);
                free(keep);
        }
        r = 0;
out:
        if (r < 0)
                discard_unpublished(agg_store_dir(s), &cur, &next, r);
        delta_set_done(&ds);
        return r;
}

/* Merges while full buffers wait. A failure leaves every update pending (nothing is
 * committed before the last step) and is retried at the next kick or flush tick; a full
 * disk is said once when it starts and once when it ends, not at every retry. */
static void merge_all(agg_merger *w) {
        bool merged = true;
        int r;

        while (merged && !w->stop) {
                r = agg_merge_once(w->store, w->metrics, &merged);
                if (r >= 0) {
                        if (merged && w->disk_full)
                                log_info("the store has room again: merging resumes");
                        w->disk_full = w->disk_full && !merged;
                        continue;
                }
                bool full = r == -ENOSPC || r == -EDQUOT;
                if (full && !w->disk_full)
                        log_warning("the store's disk is full: %lld update(s) wait, kept, until "
                                    "there is room for the next version",
                                    (long long) agg_store_count_pending(w->store));
                const char *name = full ? "merge-failures.disk-full" : "merge-failures.error";
                if (w->metrics)
                        agg_metrics_add(w->metrics, name, 1);
                w->disk_full = full;
                merged = false;
        }
}

static void *worker(void *userdata) {
        agg_merger *w = userdata;
        double last_flush = mono_now_s();

        if (agg_merge_eval_current(w->store) < 0)
                log_warning("cannot evaluate the current version");
        pthread_mutex_lock(&w->lock);
        w->kicked = true; /* updates may be waiting from before a restart */
        while (!w->stop) {
                if (!w->kicked) {
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        ts.tv_sec += FLUSH_INTERVAL_S;
                        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
                }
                bool kicked = w->kicked;
                w->kicked = false;
                pthread_mutex_unlock(&w->lock);
                if (kicked)
                        merge_all(w);
                if (mono_now_s() - last_flush >= FLUSH_INTERVAL_S) {
                        agg_metrics_flush(w->metrics, w->store);
                        last_flush = mono_now_s();
                        pthread_mutex_lock(&w->lock);
                        w->kicked = true; /* also retries a merge that failed */
                        pthread_mutex_unlock(&w->lock);
                }
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        agg_metrics_flush(w->metrics, w->store);
        return NULL;
}

int agg_merger_start(agg_store *s, agg_metrics *metrics, agg_merger **ret) {
        agg_merger *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        w->store = s;
        w->metrics = metrics;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        r = pthread_create(&w->thread, NULL, worker, w);
        if (r != 0) {
                free(w);
                return log_error_errno(r, "cannot start the merge thread");
        }
        *ret = w;
        return 0;
}

void agg_merger_kick(agg_merger *w) {
        pthread_mutex_lock(&w->lock);
        w->kicked = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

void agg_merger_stop(agg_merger *w) {
        if (!w)
                return;
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
}
