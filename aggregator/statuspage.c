/* SPDX-License-Identifier: MIT */
/* GET /: one static HTML page, no JavaScript and no external resources, readable in a text
 * browser: the model version, an inline SVG chart of validation loss per version, the
 * devices with their last telemetry, and the update rate. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macros.h"
#include "server-internal.h"

#define CHART_VERSIONS 200
#define W 640
#define H 240
#define PAD 40

static void put_escaped(FILE *f, const char *s) {
        for (; s && *s; s++)
                switch (*s) {
                case '<':
                        fputs("&lt;", f);
                        break;
                case '>':
                        fputs("&gt;", f);
                        break;
                case '&':
                        fputs("&amp;", f);
                        break;
                case '"':
                        fputs("&quot;", f);
                        break;
                default:
                        fputc(*s, f);
                }
}

static void put_time(FILE *f, int64_t t) {
        char b[32];
        struct tm tm;
        time_t tt = (time_t) t;
        if (t <= 0) {
                fputs("never", f);
                return;
        }
        gmtime_r(&tt, &tm);
        strftime(b, sizeof(b), "%Y-%m-%d %H:%M:%SZ", &tm);
        fputs(b, f);
}

static void chart(FILE *f, const agg_version *v, size_t n) {
        double lo = INFINITY, hi = -INFINITY;
        uint64_t vmin = UINT64_MAX, vmax = 0;
        size_t pts = 0;

        for (size_t i = 0; i < n; i++)
                if (!isnan(v[i].val_loss)) {
                        lo = fmin(lo, v[i].val_loss);
                        hi = fmax(hi, v[i].val_loss);
                        vmin = MIN(vmin, v[i].version);
                        vmax = MAX(vmax, v[i].version);
                        pts++;
                }
        fprintf(f,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"validation loss per version\">\n"
                "<title>Validation loss per version</title>\n"
                "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fff\" stroke=\"#ccc\"/>\n",
                W, H, W, H, W, H);
        if (pts == 0) {
                fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"14\">no validation loss yet (set "
                           "ValidationFile)</text>\n</svg>\n",
                        PAD, H / 2);
                return;
        }
        if (hi - lo < 1e-9) {
                hi += 0.5;
                lo -= 0.5;
        }
        double xs = vmax > vmin ? (double) (W - 2 * PAD) / (double) (vmax - vmin) : 0;
        double ys = (double) (H - 2 * PAD) / (hi - lo);
        fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"");
        for (size_t i = n; i-- > 0;) /* oldest first */
                if (!isnan(v[i].val_loss))
                        fprintf(f, "%.1f,%.1f ",
                                PAD + (vmax > vmin ? (double) (v[i].version - vmin) * xs
                                                   : (W - 2 * PAD) / 2.0),
                                H - PAD - (v[i].val_loss - lo) * ys);
        fprintf(f, "\"/>\n");
        fprintf(f,
                "<text x=\"4\" y=\"%d\" font-size=\"12\">%.3f</text>\n"
                "<text x=\"4\" y=\"%d\" font-size=\"12\">%.3f</text>\n"
                "<text x=\"%d\" y=\"%d\" font-size=\"12\">v%" PRIu64 "</text>\n"
                "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"end\">v%" PRIu64
                "</text>\n</svg>\n",
                PAD - 8, hi, H - PAD + 4, lo, PAD, H - 10, vmin, W - PAD, H - 10, vmax);
}

int agg_status_page_render(agg_store *s, agg_metrics *m, char **ret, size_t *ret_size) {
        _cleanup_free_ agg_version *v = NULL;
        agg_device *d = NULL;
        size_t nv = 0, nd = 0, size = 0;
        char *buf = NULL;
        int64_t now = (int64_t) time(NULL);
        FILE *f;
        int r;

        if ((r = agg_store_list_versions(s, CHART_VERSIONS, &v, &nv)) < 0 || nv == 0)
                return r < 0 ? r : -ENOENT;
        if ((r = agg_store_list_devices(s, &d, &nd)) < 0)
                return r;
        f = open_memstream(&buf, &size);
        if (!f) {
                agg_devices_free(d, nd);
                return -ENOMEM;
        }
        int64_t last10 = agg_store_count_updates_since(s, now - 600);
        fprintf(f,
                "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                "<meta http-equiv=\"refresh\" content=\"30\">\n"
                "<title>edge-aggregator: version %" PRIu64 "</title>\n"
                "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
                "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
                "text-align:left;vertical-align:top}code{font-size:90%%}</style>\n"
                "</head><body>\n<h1>edge-aggregator</h1>\n<ul>\n"
                "<li>Model version: <strong>%" PRIu64 "</strong></li>\n",
                v[0].version, v[0].version);
        fprintf(f, "<li>Validation loss: ");
        if (isnan(v[0].val_loss))
                fprintf(f, "not evaluated");
        else
                fprintf(f, "%.4f", v[0].val_loss);
        fprintf(f,
                "</li>\n<li>Updates per minute (last 10 min): %.1f</li>\n"
                "<li>Updates waiting for a merge: %" PRId64 "</li>\n"
                "<li>Devices: %zu enrolled, %" PRId64 " active (telemetry in the last 10 "
                "min)</li>\n</ul>\n",
                (double) last10 / 10.0, agg_store_count_pending(s), nd,
                agg_store_count_devices(s, now - 600));
        fprintf(f, "<h2>Validation loss per version</h2>\n");
        chart(f, v, nv);
        fprintf(f, "<h2>Versions</h2>\n<table>\n<tr><th>version</th><th>created</th><th>updates "
                   "merged</th><th>validation loss</th></tr>\n");
        for (size_t i = 0; i < MIN(nv, (size_t) 20); i++) {
                fprintf(f, "<tr><td>%" PRIu64 "</td><td>", v[i].version);
                put_time(f, v[i].created_at);
                fprintf(f, "</td><td>%" PRId64 "</td><td>", v[i].n_updates);
                if (isnan(v[i].val_loss))
                        fputs("-", f);
                else
                        fprintf(f, "%.4f", v[i].val_loss);
                fputs("</td></tr>\n", f);
        }
        fprintf(f, "</table>\n<h2>Devices</h2>\n");
        if (nd == 0)
                fprintf(f, "<p>No device has enrolled yet.</p>\n");
        else {
                fprintf(f, "<table>\n<tr><th>device</th><th>name</th><th>last seen</th>"
                           "<th>updates</th><th>last telemetry</th></tr>\n");
                for (size_t i = 0; i < nd; i++) {
                        fprintf(f, "<tr><td><code>%.8s</code></td><td>", d[i].id);
                        put_escaped(f, d[i].name);
                        fputs("</td><td>", f);
                        put_time(f, d[i].last_seen);
                        fprintf(f, "</td><td>%" PRId64 "</td><td>", d[i].n_updates);
                        if (d[i].telemetry) {
                                put_time(f, d[i].telemetry_at);
                                fputs(": <code>", f);
                                put_escaped(f, d[i].telemetry);
                                fputs("</code>", f);
                        } else
                                fputs("-", f);
                        fputs("</td></tr>\n", f);
                }
                fputs("</table>\n", f);
        }
        fprintf(f, "<p>Metrics for Prometheus: <a href=\"/metrics\">/metrics</a>. Accepted "
                   "updates in total: %" PRId64 ".</p>\n</body></html>\n",
                agg_metrics_get(m, s, "updates.accepted"));
        agg_devices_free(d, nd);
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        *ret_size = size;
        return 0;
}
