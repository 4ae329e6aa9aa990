/* SPDX-License-Identifier: MIT */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macros.h"

#define MAX_COUNTERS 128

struct agg_metrics {
        pthread_mutex_t lock;
        size_t n;
        char name[MAX_COUNTERS][48];
        int64_t delta[MAX_COUNTERS];
};

int agg_metrics_new(agg_metrics **ret) {
        agg_metrics *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        pthread_mutex_init(&m->lock, NULL);
        *ret = m;
        return 0;
}

void agg_metrics_free(agg_metrics *m) {
        if (!m)
                return;
        pthread_mutex_destroy(&m->lock);
        free(m);
}

void agg_metrics_add(agg_metrics *m, const char *name, int64_t delta) {
        size_t i;

        pthread_mutex_lock(&m->lock);
        for (i = 0; i < m->n; i++)
                if (!strcmp(m->name[i], name))
                        break;
        if (i == m->n && m->n < MAX_COUNTERS)
                snprintf(m->name[m->n++], sizeof(m->name[0]), "%s", name);
        if (i < m->n)
                m->delta[i] += delta;
        pthread_mutex_unlock(&m->lock);
}

int agg_metrics_flush(agg_metrics *m, agg_store *s) {
        const char *names[MAX_COUNTERS];
        int64_t deltas[MAX_COUNTERS];
        char copy[MAX_COUNTERS][48];
        size_t n;
        int r;

        pthread_mutex_lock(&m->lock);
        n = m->n;
        for (size_t i = 0; i < n; i++) {
                memcpy(copy[i], m->name[i], sizeof(copy[i]));
                names[i] = copy[i];
                deltas[i] = m->delta[i];
                m->delta[i] = 0;
        }
        pthread_mutex_unlock(&m->lock);
        r = agg_store_counters_add(s, names, deltas, n);
        if (r < 0) /* put them back: counted later */
                for (size_t i = 0; i < n; i++)
                        agg_metrics_add(m, names[i], deltas[i]);
        return r;
}

/* The persistent counters plus the unflushed deltas, as one list. */
typedef struct {
        size_t n;
        char name[2 * MAX_COUNTERS][48];
        int64_t value[2 * MAX_COUNTERS];
} snapshot;

static void snap_add(snapshot *sn, const char *name, int64_t v) {
        for (size_t i = 0; i < sn->n; i++)
                if (!strcmp(sn->name[i], name)) {
                        sn->value[i] += v;
                        return;
                }
        if (sn->n == ARRAY_SIZE(sn->name))
                return;
        snprintf(sn->name[sn->n], sizeof(sn->name[0]), "%s", name);
        sn->value[sn->n++] = v;
}

static void snap_cb(const char *name, int64_t v, void *userdata) {
        snap_add(userdata, name, v);
}

static int snapshot_take(agg_metrics *m, agg_store *s, snapshot *sn) {
        sn->n = 0;
        int r = agg_store_counters_foreach(s, snap_cb, sn);
        if (r < 0)
                return r;
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->n; i++)
                snap_add(sn, m->name[i], m->delta[i]);
        pthread_mutex_unlock(&m->lock);
        return 0;
}

static int64_t snap_get(const snapshot *sn, const char *name) {
        for (size_t i = 0; i < sn->n; i++)
                if (!strcmp(sn->name[i], name))
                        return sn->value[i];
        return 0;
}

int64_t agg_metrics_get(agg_metrics *m, agg_store *s, const char *name) {
        _cleanup_free_ snapshot *sn = malloc(sizeof(*sn));
        if (!sn || snapshot_take(m, s, sn) < 0)
                return -1;
        return snap_get(sn, name);
}

int agg_metrics_render(agg_metrics *m, agg_store *s, char **ret, size_t *ret_size) {
        static const int le[] = { 0, 1, 2, 4, 8, 16, 32 };
        _cleanup_free_ snapshot *sn = malloc(sizeof(*sn));
        char *buf = NULL;
        size_t size = 0;
        agg_version cur;
        FILE *f;
        int r;

        if (!sn)
                return -ENOMEM;
        if ((r = snapshot_take(m, s, sn)) < 0 || (r = agg_store_current_version(s, &cur)) < 0)
                return r;
        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;

        fputs("# HELP edge_updates_total Updates received, by outcome (accepted, duplicate or "
              "the refusal reason; dropped-stale at merge time).\n"
              "# TYPE edge_updates_total counter\n",
              f);
        fprintf(f, "edge_updates_total{result=\"accepted\"} %" PRId64 "\n",
                snap_get(sn, "updates.accepted"));
        for (size_t i = 0; i < sn->n; i++)
                if (!strncmp(sn->name[i], "updates.", 8) && strcmp(sn->name[i], "updates.accepted") != 0)
                        fprintf(f, "edge_updates_total{result=\"%s\"} %" PRId64 "\n",
                                sn->name[i] + 8, sn->value[i]);

        fputs("# HELP edge_http_errors_total Error responses, by reason.\n"
              "# TYPE edge_http_errors_total counter\n",
              f);
        for (size_t i = 0; i < sn->n; i++)
                if (!strncmp(sn->name[i], "errors.", 7))
                        fprintf(f, "edge_http_errors_total{reason=\"%s\"} %" PRId64 "\n",
                                sn->name[i] + 7, sn->value[i]);

        fputs("# HELP edge_update_staleness Versions behind the current model, of accepted "
              "updates.\n# TYPE edge_update_staleness histogram\n",
              f);
        int64_t cum = 0, total = 0, sum = 0;
        for (size_t i = 0; i < sn->n; i++)
                if (!strncmp(sn->name[i], "staleness.", 10)) {
                        int64_t tau = strtoll(sn->name[i] + 10, NULL, 10);
                        total += sn->value[i];
                        sum += tau * sn->value[i];
                }
        for (size_t b = 0; b < ARRAY_SIZE(le); b++) {
                cum = 0;
                for (size_t i = 0; i < sn->n; i++)
                        if (!strncmp(sn->name[i], "staleness.", 10) &&
                            strtoll(sn->name[i] + 10, NULL, 10) <= le[b])
                                cum += sn->value[i];
                fprintf(f, "edge_update_staleness_bucket{le=\"%d\"} %" PRId64 "\n", le[b], cum);
        }
        fprintf(f, "edge_update_staleness_bucket{le=\"+Inf\"} %" PRId64 "\n", total);
        fprintf(f, "edge_update_staleness_sum %" PRId64 "\n", sum);
        fprintf(f, "edge_update_staleness_count %" PRId64 "\n", total);

        fprintf(f,
                "# HELP edge_model_version The current model version.\n"
                "# TYPE edge_model_version gauge\nedge_model_version %llu\n",
                (unsigned long long) cur.version);
        fprintf(f,
                "# HELP edge_devices_active Devices that sent telemetry in the last 10 minutes.\n"
                "# TYPE edge_devices_active gauge\nedge_devices_active %" PRId64 "\n",
                agg_store_count_devices(s, (int64_t) time(NULL) - 600));
        fprintf(f,
                "# HELP edge_devices_enrolled Devices enrolled.\n"
                "# TYPE edge_devices_enrolled gauge\nedge_devices_enrolled %" PRId64 "\n",
                agg_store_count_devices(s, 0));
        fprintf(f,
                "# HELP edge_updates_pending Accepted updates waiting for a merge.\n"
                "# TYPE edge_updates_pending gauge\nedge_updates_pending %" PRId64 "\n",
                agg_store_count_pending(s));
        fprintf(f,
                "# HELP edge_http_bytes_received_total Request body bytes received.\n"
                "# TYPE edge_http_bytes_received_total counter\n"
                "edge_http_bytes_received_total %" PRId64 "\n",
                snap_get(sn, "http.bytes_received"));
        fprintf(f,
                "# HELP edge_http_bytes_sent_total Response body bytes sent.\n"
                "# TYPE edge_http_bytes_sent_total counter\n"
                "edge_http_bytes_sent_total %" PRId64 "\n",
                snap_get(sn, "http.bytes_sent"));
        fprintf(f,
                "# HELP edge_merge_seconds Time to merge a buffer into a new version.\n"
                "# TYPE edge_merge_seconds summary\n"
                "edge_merge_seconds_sum %.6f\nedge_merge_seconds_count %" PRId64 "\n",
                (double) snap_get(sn, "merge.microseconds") * 1e-6, snap_get(sn, "merge.count"));
        fputs("# HELP edge_merge_failures_total Merges that failed, by reason (disk-full or "
              "error); the updates stay pending and the merge is retried.\n"
              "# TYPE edge_merge_failures_total counter\n",
              f);
        for (size_t i = 0; i < sn->n; i++)
                if (!strncmp(sn->name[i], "merge-failures.", 15))
                        fprintf(f, "edge_merge_failures_total{reason=\"%s\"} %" PRId64 "\n",
                                sn->name[i] + 15, sn->value[i]);
        fputs("# HELP edge_validation_loss Held-out loss of the newest evaluated version.\n"
              "# TYPE edge_validation_loss gauge\n",
              f);
        {
                _cleanup_free_ agg_version *vs = NULL;
                size_t n = 0;
                if (agg_store_list_versions(s, 64, &vs, &n) >= 0)
                        for (size_t i = 0; i < n; i++)
                                if (!isnan(vs[i].val_loss)) {
                                        fprintf(f, "edge_validation_loss %.6f\n", vs[i].val_loss);
                                        break;
                                }
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        *ret_size = size;
        return 0;
}
