/* SPDX-License-Identifier: MIT */
/* edgectl generate: text from a model run across several devices (collaborative inference).
 * Talks to the peers' stage servers over HTTP, not to the local daemon. */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "fileio.h"
#include "stage-client.h"

#define MAX_URLS PIPELINE_MAX_PEERS

typedef struct {
        const char *prompt;
        bool started;
} stream;

/* The prompt goes out with the first byte, so a run that fails at once prints nothing. */
static void emit_stdout(void *ctx, uint8_t tok) {
        stream *st = ctx;
        if (!st->started)
                fputs(st->prompt, stdout);
        st->started = true;
        fputc(tok, stdout);
        fflush(stdout);
}

static void on_event(void *ctx, const char *what) {
        fprintf(stderr, "edgectl generate: %s\n", what);
}

/* The token: --token-file, else $EDGED_TOKEN. */
static char *read_token(const char *file) {
        if (!file) {
                const char *e = getenv("EDGED_TOKEN");
                return e ? strdup(e) : NULL;
        }
        FILE *f = fopen(file, "re");
        char buf[300] = "";
        if (!f)
                return NULL;
        if (!fgets(buf, sizeof(buf), f))
                buf[0] = 0;
        fclose(f);
        buf[strcspn(buf, "\r\n")] = 0;
        char *t = buf[0] ? strdup(buf) : NULL;
        explicit_bzero(buf, sizeof(buf));
        return t;
}

static int split_urls(char *list, char **urls, int *n) {
        char *save = NULL;
        for (char *u = strtok_r(list, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
                size_t len = strlen(u);
                if (*n >= MAX_URLS || (strncmp(u, "http://", 7) && strncmp(u, "https://", 8)))
                        return -EINVAL;
                while (len > 0 && u[len - 1] == '/')
                        u[--len] = 0;
                urls[(*n)++] = strdup(u);
        }
        return *n > 0 ? 0 : -EINVAL;
}

int ctl_generate(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        enum { OPT_PEERS = 0x200, OPT_FLEET, OPT_TOKEN_FILE, OPT_TOP_K, OPT_IDENTITY };
        static const struct option opts[] = { { "peers", required_argument, NULL, OPT_PEERS },
                                              { "fleet", required_argument, NULL, OPT_FLEET },
                                              { "token-file", required_argument, NULL, OPT_TOKEN_FILE },
                                              { "identity", required_argument, NULL, OPT_IDENTITY },
                                              { "tokens", required_argument, NULL, 'n' },
                                              { "temperature", required_argument, NULL, 't' },
                                              { "top-k", required_argument, NULL, OPT_TOP_K },
                                              { "seed", required_argument, NULL, 's' },
                                              CTL_GLOBAL_OPTIONS,
                                              {} };
        sample_opts so = { .temperature = 0.8f, .top_k = 40, .seed = 1 };
        char *urls[MAX_URLS] = { NULL }, *peers = NULL, err[512] = "", fleet_token[65] = "";
        const char *fleet = NULL, *token_file = NULL, *identity = "/var/lib/edged/identity";
        unsigned long tokens = 200;
        int n_urls = 0, opt, r = CTL_EXIT_USAGE;
        _cleanup_free_ char *token = NULL;
        _cleanup_free_ uint8_t *out = NULL;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "hn:t:s:", opts, NULL)) >= 0) {
                char *end;
                errno = 0;
                switch (opt) {
                case OPT_PEERS:
                        free(peers);
                        peers = strdup(optarg);
                        break;
                case OPT_FLEET:
                        fleet = optarg;
                        break;
                case OPT_TOKEN_FILE:
                        token_file = optarg;
                        break;
                case OPT_IDENTITY:
                        identity = optarg;
                        break;
                case 'n':
                        tokens = strtoul(optarg, &end, 10);
                        if (errno || *end || *optarg == '-' || tokens < 1 || tokens > 4096) {
                                ctl_usage_error(v, "--tokens: '%s' is not a whole number in 1..4096", optarg);
                                goto out;
                        }
                        break;
                case 't':
                        so.temperature = strtof(optarg, &end);
                        if (errno || end == optarg || *end || !(so.temperature >= 0) || so.temperature > 2) {
                                ctl_usage_error(v, "--temperature: '%s' is not a number in 0..2", optarg);
                                goto out;
                        }
                        break;
                case OPT_TOP_K:
                        so.top_k = (int) strtol(optarg, &end, 10);
                        if (errno || *end || so.top_k < 0 || so.top_k > MODEL_VOCAB) {
                                ctl_usage_error(v, "--top-k: '%s' is not a whole number in 0..256", optarg);
                                goto out;
                        }
                        break;
                case 's':
                        so.seed = strtoull(optarg, &end, 10);
                        if (errno || *end || *optarg == '-' || end == optarg) {
                                ctl_usage_error(v, "--seed: '%s' is not a whole number", optarg);
                                goto out;
                        }
                        break;
                default:
                        if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                                goto out;
                        r = CTL_EXIT_USAGE;
                }
        }
        if (argc - optind != 1) {
                ctl_usage_error(v, argc - optind ? "one PROMPT only (quote it)" : "missing PROMPT (\"\" for none)");
                goto out;
        }
        if (!peers == !fleet) {
                ctl_usage_error(v, "give either --peers URL,... or --fleet URL");
                goto out;
        }
        if (peers && split_urls(peers, urls, &n_urls) < 0) {
                ctl_usage_error(v, "--peers: expected up to %d http:// or https:// URLs, comma-separated", MAX_URLS);
                goto out;
        }
        r = CTL_EXIT_FAILURE;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        if (fleet) {
                /* the aggregator lists peers to enrolled devices only */
                _cleanup_free_ char *cred = stage_client_identity_credentials(identity);
                if (!cred) {
                        fprintf(stderr, "edgectl generate: %s: cannot read the device identity (--identity FILE)\n", identity);
                        goto out;
                }
                r = stage_client_fleet_peers(fleet, cred, 0, urls, MAX_URLS, &n_urls, fleet_token,
                                             err, sizeof(err));
                explicit_bzero(cred, strlen(cred));
                if (r < 0) {
                        fprintf(stderr, "edgectl generate: %s\n", err);
                        r = CTL_EXIT_FAILURE;
                        goto out;
                }
                r = CTL_EXIT_FAILURE;
        }
        if (n_urls == 0) {
                fprintf(stderr, "edgectl generate: the fleet lists no stage servers\n");
                goto out;
        }
        token = read_token(token_file);
        /* with --fleet, the token the aggregator hands its enrolled devices will do */
        if (!token && fleet_token[0])
                token = strdup(fleet_token);
        if (!token) {
                fprintf(stderr, "edgectl generate: no token: set EDGED_TOKEN or --token-file FILE%s\n",
                        fleet ? " (the aggregator gave none)" : "");
                goto out;
        }
        out = malloc(tokens);
        if (!out)
                goto out;
        const char *prompt = argv[optind];
        stream sm = { .prompt = prompt };
        stage_client_opts co = { .urls = (const char *const *) urls, .n_urls = n_urls, .token = token,
                                 .emit = c->json ? NULL : emit_stdout, .emit_ctx = &sm,
                                 .on_event = on_event };
        pipeline_stats st;
        int n = stage_client_generate(&co, (const uint8_t *) prompt, strlen(prompt), out, tokens, &so,
                                      &st, err, sizeof(err));
        if (sm.started)
                putchar('\n');
        if (n < 0) {
                fprintf(stderr, "edgectl generate: %s\n", err);
                goto out;
        }
        if (c->json) {
                json_t *stages = json_array();
                for (int i = 0; i < st.n_stages; i++)
                        json_array_append_new(stages, json_pack("{s:s, s:i, s:i}", "url", urls[st.plan[i].peer],
                                                                "first", st.plan[i].first, "last", st.plan[i].last));
                json_t *j = json_pack("{s:s, s:s%, s:o, s:i, s:I, s:I, s:f}", "prompt", prompt, "text",
                                      (const char *) out, (size_t) n, "stages", stages, "replans",
                                      st.replans, "bytes_sent", (json_int_t) st.bytes_sent,
                                      "bytes_received", (json_int_t) st.bytes_received,
                                      "first_token_s", st.first_token_s);
                if (!j) {
                        fprintf(stderr, "edgectl generate: the text is not valid UTF-8 for --json\n");
                        goto out;
                }
                ctl_print_json(c, j);
                json_decref(j);
        }
        r = CTL_EXIT_OK;
out:
        explicit_bzero(fleet_token, sizeof(fleet_token));
        if (token)
                explicit_bzero(token, strlen(token));
        for (int i = 0; i < MAX_URLS; i++)
                free(urls[i]);
        free(peers);
        return r;
}
