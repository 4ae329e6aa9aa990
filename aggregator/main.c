/* SPDX-License-Identifier: MIT */
/* edge-aggregator: the command line (docs/edge-aggregator.8). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "blobs.h"
#include "log.h"
#include "macros.h"
#include "model.h"
#include "server.h"
#include "store.h"
#include "student.h"
#include "version.h"

#define DEFAULT_STORE "/var/lib/edge-aggregator"

static const char *arg_store = DEFAULT_STORE;

static void usage(FILE *f) {
        fprintf(f,
                "Usage: edge-aggregator [--store DIR] COMMAND [OPTIONS]\n"
                "\n"
                "The federation server for edged devices: enrols them, hands out tasks and model\n"
                "versions, merges their updates (FedBuff), serves /metrics and a status page.\n"
                "\n"
                "  --store DIR   state directory (default " DEFAULT_STORE ")\n"
                "  -h, --help    show this help\n"
                "  -V, --version show the version\n"
                "\n"
                "Commands:\n"
                "  init --config tiny|small|medium [...]   create the store and version 0\n"
                "  set KEY=VALUE...                       change settings\n"
                "  token create [--expires S] [--uses N]  print a new enrolment token\n"
                "  serve [--listen ADDR:PORT] [...]       run the HTTP server\n"
                "  status                                 versions, updates, devices, settings\n"
                "  student publish CKPT [--teacher-version N]\n"
                "                                         publish a distilled student\n"
                "  student show                           the published student\n"
                "\n"
                "Run 'edge-aggregator COMMAND --help' for a command's options.\n");
}

static int parse_ll(const char *opt, const char *s, long long min, long long max, long long *ret) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max) {
                log_error("%s: '%s' is not a whole number in [%lld, %lld]", opt, s, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int apply_set(agg_store *s, char **kv, size_t n, bool init) {
        char err[512];
        int r = agg_store_set(s, kv, n, init, err, sizeof(err));
        if (r < 0)
                log_error("%s/" AGG_DB_NAME ": %s", arg_store, err);
        return r;
}

static void print_kv(const char *k, const char *v, void *userdata) {
        printf("  %-20s %s\n", k, v);
}

static int cmd_init(int argc, char **argv) {
        enum { OPT_CONFIG = 0x100, OPT_SEED, OPT_LOCAL_STEPS, OPT_LR, OPT_ENCODING, OPT_BUFFER,
               OPT_VALIDATION };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "config", required_argument, NULL, OPT_CONFIG },
                { "seed", required_argument, NULL, OPT_SEED },
                { "local-steps", required_argument, NULL, OPT_LOCAL_STEPS },
                { "lr", required_argument, NULL, OPT_LR },
                { "encoding", required_argument, NULL, OPT_ENCODING },
                { "buffer", required_argument, NULL, OPT_BUFFER },
                { "validation", required_argument, NULL, OPT_VALIDATION },
                {}
        };
        static const char *const keys[] = {
                [OPT_CONFIG - 0x100] = "Model",       [OPT_SEED - 0x100] = "Seed",
                [OPT_LOCAL_STEPS - 0x100] = "LocalSteps", [OPT_LR - 0x100] = "LR",
                [OPT_ENCODING - 0x100] = "Encoding",  [OPT_BUFFER - 0x100] = "BufferSize",
                [OPT_VALIDATION - 0x100] = "ValidationFile",
        };
        char *kv[16], bytes[64], norm[64];
        _cleanup_free_ char *vfile = NULL;
        size_t n = 0;
        bool have_config = false;
        model_config cfg;
        uint64_t seed = 1;
        int c, r;

        for (size_t i = 0; i < ARRAY_SIZE(kv); i++)
                kv[i] = NULL;
        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        printf("Usage: edge-aggregator [--store DIR] init --config tiny|small|medium "
                               "[OPTIONS]\n\n"
                               "Creates the store: database, blobs/, version 0 and settings.\n\n"
                               "  --config NAME       model size: tiny, small or medium\n"
                               "  --seed N            initialisation of version 0 (default 1)\n"
                               "  --local-steps N     steps per device round (default 50)\n"
                               "  --lr X              device learning rate (default 0.001)\n"
                               "  --encoding E        fp32, int8 (default) or topk\n"
                               "  --buffer K          updates per merge (default 4)\n"
                               "  --validation FILE   held-out text to evaluate versions on\n");
                        return 0;
                case OPT_CONFIG:
                case OPT_SEED:
                case OPT_LOCAL_STEPS:
                case OPT_LR:
                case OPT_ENCODING:
                case OPT_BUFFER:
                case OPT_VALIDATION: {
                        const char *val = optarg;
                        if (c == OPT_CONFIG) {
                                if (model_config_by_name(optarg, &cfg) < 0) {
                                        log_error("--config: '%s' is not tiny, small or medium",
                                                  optarg);
                                        return 2;
                                }
                                have_config = true;
                        }
                        if (c == OPT_SEED) {
                                long long v;
                                if (parse_ll("--seed", optarg, 0, LLONG_MAX, &v) < 0)
                                        return 2;
                                seed = (uint64_t) v;
                        }
                        if (c == OPT_VALIDATION) {
                                free(vfile);
                                vfile = realpath(optarg, NULL);
                                if (!vfile) {
                                        log_error("--validation: %s: %m", optarg);
                                        return 2;
                                }
                                val = vfile;
                        }
                        if (n + 3 >= ARRAY_SIZE(kv) ||
                            asprintf(&kv[n++], "%s=%s", keys[c - 0x100], val) < 0)
                                return 1;
                        break;
                }
                case '?':
                        return 2;
                }
        }
        if (optind < argc) {
                log_error("init: unexpected argument '%s'", argv[optind]);
                return 2;
        }
        if (!have_config) {
                log_error("init: --config tiny|small|medium is required");
                return 2;
        }
        {
                model_layout *lay = malloc(sizeof(*lay));
                if (!lay)
                        return 1;
                model_layout_init(lay, &cfg);
                snprintf(bytes, sizeof(bytes), "MaxUpdateBytes=%" PRIu64,
                         agg_default_max_update_bytes(lay->n_params));
                snprintf(norm, sizeof(norm), "MaxUpdateNorm=%g",
                         ceil(0.25 * sqrt((double) lay->n_params)));
                free(lay);
                kv[n++] = bytes;
                kv[n++] = norm;
        }

        agg_store *s = NULL;
        model *m = NULL;
        char sha[65];
        r = agg_store_create(arg_store, &s);
        if (r >= 0)
                r = apply_set(s, kv, n, true);
        if (r >= 0 && (r = model_new(&cfg, 1, 1, &m)) >= 0) {
                model_init_params(m, seed);
                r = agg_blob_save_model(arg_store, m, 0, sha);
                if (r >= 0)
                        r = agg_store_insert_version0(s, sha);
                model_free(m);
        }
        if (r >= 0) {
                agg_settings *set = malloc(sizeof(*set));
                if (set && agg_store_load_settings(s, set) >= 0) {
                        printf("Created %s: model %s, version 0 = %s\nSettings:\n", arg_store,
                               cfg.name, sha);
                        agg_settings_foreach(set, print_kv, NULL);
                }
                free(set);
        }
        agg_store_free(s);
        for (size_t i = 0; i < n; i++)
                if (kv[i] != bytes && kv[i] != norm)
                        free(kv[i]);
        return r < 0 ? 1 : 0;
}

static int cmd_set(int argc, char **argv) {
        static const struct option options[] = { { "help", no_argument, NULL, 'h' }, {} };
        agg_store *s;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0) {
                if (c == 'h') {
                        printf("Usage: edge-aggregator [--store DIR] set KEY=VALUE...\n\n"
                               "Changes settings (see edge-aggregator(8) for the keys). A running\n"
                               "server picks them up with its next request. Policy.<Knob>= with\n"
                               "an empty value removes a fleet policy knob.\n");
                        return 0;
                }
                return 2;
        }
        if (optind >= argc) {
                log_error("set: give at least one KEY=VALUE");
                return 2;
        }
        if (agg_store_open(arg_store, &s) < 0)
                return 1;
        r = apply_set(s, argv + optind, (size_t) (argc - optind), false);
        agg_store_free(s);
        return r == -EINVAL || r == -ENOKEY || r == -EPERM ? 2 : r < 0 ? 1 : 0;
}

static int cmd_token(int argc, char **argv) {
        enum { OPT_EXPIRES = 0x100, OPT_USES };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "expires", required_argument, NULL, OPT_EXPIRES },
                { "uses", required_argument, NULL, OPT_USES },
                {}
        };
        long long expires = 0, uses = 0;
        char token[AGG_ID_HEX];
        agg_store *s;
        int c, r;

        if (argc < 2 || strcmp(argv[1], "create") != 0) {
                if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
                        printf("Usage: edge-aggregator [--store DIR] token create [--expires "
                               "SECONDS] [--uses N]\n");
                        return 0;
                }
                log_error("token: expected 'token create'");
                return 2;
        }
        argc--;
        argv++;
        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        printf("Usage: edge-aggregator [--store DIR] token create [--expires "
                               "SECONDS] [--uses N]\n\n"
                               "Prints a new enrolment token for edged's EnrollToken=.\n\n"
                               "  --expires SECONDS   valid for this long (default: forever)\n"
                               "  --uses N            enrols at most N devices (default: any)\n");
                        return 0;
                case OPT_EXPIRES:
                        if (parse_ll("--expires", optarg, 1, 100LL * 365 * 86400, &expires) < 0)
                                return 2;
                        break;
                case OPT_USES:
                        if (parse_ll("--uses", optarg, 1, 1LL << 40, &uses) < 0)
                                return 2;
                        break;
                default:
                        return 2;
                }
        }
        if (optind < argc) {
                log_error("token create: unexpected argument '%s'", argv[optind]);
                return 2;
        }
        if (agg_store_open(arg_store, &s) < 0)
                return 1;
        r = agg_store_token_create(s, expires, uses, token);
        agg_store_free(s);
        if (r < 0)
                return 1;
        printf("%s\n", token);
        return 0;
}

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
        stop_requested = 1;
}

static int cmd_serve(int argc, char **argv) {
        enum { OPT_LISTEN = 0x100, OPT_CERT, OPT_KEY, OPT_INSECURE, OPT_MAX_CONN };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "listen", required_argument, NULL, OPT_LISTEN },
                { "tls-cert", required_argument, NULL, OPT_CERT },
                { "tls-key", required_argument, NULL, OPT_KEY },
                { "insecure-public", no_argument, NULL, OPT_INSECURE },
                { "max-connections", required_argument, NULL, OPT_MAX_CONN },
                {}
        };
        agg_server_options o = {};
        agg_server *srv = NULL;
        agg_store *s = NULL;
        long long v;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        printf("Usage: edge-aggregator [--store DIR] serve [OPTIONS]\n\n"
                               "  --listen ADDR:PORT     address to serve on (default "
                               "127.0.0.1:8080;\n"
                               "                         [::1]:8080 for IPv6; port 0 picks one)\n"
                               "  --tls-cert FILE        PEM certificate: serve HTTPS\n"
                               "  --tls-key FILE         PEM private key for --tls-cert\n"
                               "  --insecure-public      allow plain HTTP on a non-loopback "
                               "address\n"
                               "  --max-connections N    concurrent connections (default 64)\n");
                        return 0;
                case OPT_LISTEN:
                        o.listen = optarg;
                        break;
                case OPT_CERT:
                        o.tls_cert = optarg;
                        break;
                case OPT_KEY:
                        o.tls_key = optarg;
                        break;
                case OPT_INSECURE:
                        o.insecure_public = true;
                        break;
                case OPT_MAX_CONN:
                        if (parse_ll("--max-connections", optarg, 1, 10000, &v) < 0)
                                return 2;
                        o.max_connections = (unsigned) v;
                        break;
                default:
                        return 2;
                }
        }
        if (optind < argc) {
                log_error("serve: unexpected argument '%s'", argv[optind]);
                return 2;
        }
        if (o.listen) {
                struct sockaddr_storage sa;
                unsigned len;
                bool lo;
                if (agg_parse_listen(o.listen, &sa, &len, &lo) < 0) {
                        log_error("--listen: '%s' is not ADDR:PORT or [ADDR]:PORT", o.listen);
                        return 2;
                }
        }
        if (!!o.tls_cert != !!o.tls_key) {
                log_error("serve: --tls-cert and --tls-key go together");
                return 2;
        }
        blas_set_threads(1); /* merges and evaluations are sequential; requests have threads */
        signal(SIGPIPE, SIG_IGN);
        struct sigaction sa = { .sa_handler = on_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        if (agg_store_open(arg_store, &s) < 0)
                return 1;
        r = agg_server_start(s, &o, &srv);
        if (r < 0) {
                agg_store_free(s);
                return r == -EPERM ? 2 : 1;
        }
        printf("edge-aggregator: serving %s on port %u\n", arg_store, agg_server_port(srv));
        fflush(stdout);
        log_info("serving %s on port %u", arg_store, agg_server_port(srv));
        while (!stop_requested)
                pause();
        log_info("stopping");
        agg_server_stop(srv);
        agg_store_free(s);
        return 0;
}

static int cmd_status(int argc, char **argv) {
        _cleanup_free_ agg_version *v = NULL;
        _cleanup_free_ agg_settings *set = malloc(sizeof(*set));
        agg_device *d = NULL;
        size_t nv = 0, nd = 0;
        int64_t logged, merged, dropped;
        agg_store *s;

        if (argc > 1) {
                if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
                        printf("Usage: edge-aggregator [--store DIR] status\n\n"
                               "Prints the versions, update counts, devices and settings.\n");
                        return 0;
                }
                log_error("status: unexpected argument '%s'", argv[1]);
                return 2;
        }
        if (!set || agg_store_open(arg_store, &s) < 0)
                return 1;
        if (agg_store_load_settings(s, set) < 0 || agg_store_list_versions(s, 10, &v, &nv) < 0 ||
            agg_store_list_devices(s, &d, &nd) < 0 ||
            agg_store_update_totals(s, &logged, &merged, &dropped) < 0) {
                agg_store_free(s);
                return 1;
        }
        printf("Store: %s\nModel: %s\nVersion: %" PRIu64 "\n", arg_store, set->cfg.name,
               nv ? v[0].version : 0);
        printf("Updates: %" PRId64 " accepted, %" PRId64 " merged, %" PRId64
               " dropped (stale), %" PRId64 " waiting\n",
               logged, merged, dropped, logged - merged - dropped);
        printf("Merging: %s, server learning rate %g, %d updates a merge",
               set->optimizer == AGG_OPT_FEDADAM    ? "fedadam"
               : set->optimizer == AGG_OPT_NESTEROV ? "nesterov"
                                                    : "fedavg",
               (double) agg_settings_server_lr(set), set->buffer_size);
        if (set->optimizer == AGG_OPT_NESTEROV)
                printf(", momentum %g every %d merges", (double) set->server_momentum,
                       set->server_momentum_period);
        printf("\n");
        printf("Recent versions:\n");
        for (size_t i = 0; i < nv; i++) {
                printf("  v%-6" PRIu64 " %4" PRId64 " updates  loss ", v[i].version,
                       v[i].n_updates);
                if (isnan(v[i].val_loss))
                        printf("-");
                else
                        printf("%.4f", v[i].val_loss);
                printf("  %s\n", v[i].blob);
        }
        printf("Devices: %zu\n", nd);
        for (size_t i = 0; i < nd; i++)
                printf("  %s %-20s %" PRId64 " updates\n", d[i].id,
                       d[i].name[0] ? d[i].name : "-", d[i].n_updates);
        printf("Settings:\n");
        agg_settings_foreach(set, print_kv, NULL);
        agg_devices_free(d, nd);
        agg_store_free(s);
        return 0;
}

static void usage_student(FILE *f) {
        fprintf(f, "Usage: edge-aggregator [--store DIR] student publish CKPT [--teacher-version N]\n"
                   "       edge-aggregator [--store DIR] student show\n"
                   "\n"
                   "Publishes a student distilled from the shared model ('edged distill\n"
                   "--teacher' on a downloaded version) beside it: devices see it in the task and\n"
                   "download it from /v1/student/model. One student at a time; publishing replaces\n"
                   "the previous one. --teacher-version defaults to the current version.\n");
}

static void print_student(const agg_student *st) {
        printf("Student: %s, %" PRIu64 " parameters, %" PRIu64 " bytes, distilled from v%" PRIu64
               "\n  sha256 %s\n",
               st->config, st->n_params, st->bytes, st->teacher_version, st->sha);
}

static int cmd_student(int argc, char **argv) {
        long long tv = -1;
        agg_student st;
        int r;

        if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
                usage_student(argc < 2 ? stderr : stdout);
                return argc < 2 ? 2 : 0;
        }
        if (!strcmp(argv[1], "show") && argc == 2) {
                r = agg_student_read(arg_store, &st);
                if (r == -ENOENT) {
                        printf("No student published.\n");
                        return 0;
                }
                if (r < 0)
                        return 1;
                print_student(&st);
                return 0;
        }
        if (strcmp(argv[1], "publish") || (argc != 3 && argc != 5)) {
                usage_student(stderr);
                return 2;
        }
        if (argc == 5) {
                if (strcmp(argv[3], "--teacher-version")) {
                        log_error("student publish: unknown option '%s'", argv[3]);
                        return 2;
                }
                if (parse_ll("--teacher-version", argv[4], 0, INT64_MAX, &tv) < 0)
                        return 2;
        }
        {
                agg_version v;
                agg_store *s;
                if (agg_store_open(arg_store, &s) < 0)
                        return 1;
                r = tv < 0 ? agg_store_current_version(s, &v)
                           : agg_store_get_version(s, (uint64_t) tv, &v);
                agg_store_free(s);
                if (r < 0) {
                        if (tv >= 0)
                                log_error("student publish: no version %lld in %s", tv, arg_store);
                        return 1;
                }
                tv = (long long) v.version;
        }
        blas_set_threads(1);
        if (agg_student_publish(arg_store, argv[2], (uint64_t) tv, &st) < 0)
                return 1;
        print_student(&st);
        return 0;
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "store", required_argument, NULL, 's' },
                {}
        };
        int c;

        log_open();
        while ((c = getopt_long(argc, argv, "+hV", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("edge-aggregator " EDGED_VERSION "\n");
                        return 0;
                case 's':
                        arg_store = optarg;
                        break;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return 2;
        }
        argc -= optind;
        argv += optind;
        if (!strcmp(argv[0], "init"))
                return cmd_init(argc, argv);
        if (!strcmp(argv[0], "set"))
                return cmd_set(argc, argv);
        if (!strcmp(argv[0], "token"))
                return cmd_token(argc, argv);
        if (!strcmp(argv[0], "serve"))
                return cmd_serve(argc, argv);
        if (!strcmp(argv[0], "status"))
                return cmd_status(argc, argv);
        if (!strcmp(argv[0], "student"))
                return cmd_student(argc, argv);
        log_error("edge-aggregator: unknown command '%s'; see 'edge-aggregator --help'", argv[0]);
        return 2;
}
