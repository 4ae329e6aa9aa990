/* SPDX-License-Identifier: MIT */
/* Collaborative inference benchmark.
 *
 * 1. The `medium` model (random weights) served by 1, 2 and 3 stage-server processes on
 *    loopback (the HTTP server edged runs with [Inference] Serve=yes): tokens/s after the
 *    first token, time to first token, bytes moved per token, and the overhead against
 *    single-process generation (kernels/sample.c) measured in the same run. The text must be
 *    identical to the single-process text.
 * 2. A model-size table: weights + KV cache of one session for one process, and for the
 *    largest stage of an equal split into k processes, against a per-process cap.
 * 3. The proof behind the table: a model larger than the cap, served by two processes each
 *    started under setrlimit(RLIMIT_DATA, cap) and holding only its layers; one process
 *    under the same cap cannot load it; the split generates the same text as one uncapped
 *    process. */

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blas.h"
#include "checkpoint.h"
#include "model.h"
#include "sample.h"
#include "stage-client.h"
#include "stage-load.h"
#include "stage-plan.h"
#include "stage-server.h"
#include "stage.h"
#include "time-util.h"

#define TOKEN "bench-collab"
#define MAX_SERVERS 3
#define PROMPT "Permission is hereby granted, free of charge, to any person"

static int n_tokens = 64, cap_mib = 512, base_port;
static char tmpdir[64];

static void save_random_model(const model_config *cfg, const char *path, uint64_t seed) {
        model *m;
        if (model_new(cfg, 1, 1, &m) < 0) {
                fprintf(stderr, "out of memory\n");
                exit(1);
        }
        model_init_params(m, seed);
        if (ckpt_save(path, m, NULL, &(ckpt_state){ .model_version = 1 }) < 0)
                exit(1);
        model_free(m);
}

/* A stage server: this program again (a fresh address space, so that a cap counts only what
 * the server allocates), with cap > 0 under RLIMIT_DATA, holding first..last when hold. */
static pid_t spawn_server(const char *path, int port, size_t cap, bool hold, int first, int last) {
        char a[4][32];
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        snprintf(a[0], sizeof(a[0]), "%d", port);
        snprintf(a[1], sizeof(a[1]), "%zu", cap);
        snprintf(a[2], sizeof(a[2]), "%d", hold ? first : -1);
        snprintf(a[3], sizeof(a[3]), "%d", last);
        /* OpenBLAS reserves a 128 MiB buffer per thread (and spins when a cap refuses it) */
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execl("/proc/self/exe", "collab", "--serve", path, a[0], a[1], a[2], a[3], (char *) NULL);
        _exit(127);
}

static int serve(char **argv) {
        const char *path = argv[0];
        int port = atoi(argv[1]), first = atoi(argv[3]), last = atoi(argv[4]);
        size_t cap = strtoull(argv[2], NULL, 10);
        stage_server *s = NULL;
        char listen[32];

        if (cap) {
                struct rlimit rl = { cap, cap };
                if (setrlimit(RLIMIT_DATA, &rl) < 0)
                        return 2;
        }
        blas_set_threads(1);
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
        stage_server_opts o = { .listen = listen, .token = TOKEN, .model_path = path, .state_dir = "/tmp",
                                .max_bytes = (size_t) 8 << 30, .idle_timeout_s = 300, .max_sessions = 8,
                                .hold_span = first >= 0, .first = first, .last = last };
        if (stage_server_start(&o, &s) < 0)
                return 3;
        for (;;)
                pause();
}

static bool wait_serving(const char *url, pid_t pid, double timeout_s) {
        double t0 = mono_now_s();
        stage_peer_info pi;
        char err[256];
        while (mono_now_s() - t0 < timeout_s) {
                if (stage_client_info(url, TOKEN, &pi, err, sizeof(err)) == 0)
                        return true;
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        return false;
                usleep(50 * 1000);
        }
        return false;
}

/* Resident anonymous memory of a process (RssAnon: what the cap limits; the mapped model file is page cache), in MiB. */
static double anon_rss_mib(pid_t pid) {
        char path[64], line[256];
        double kb = -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        FILE *f = fopen(path, "re");
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "RssAnon: %lf kB", &kb) == 1)
                        break;
        if (f)
                fclose(f);
        return kb / 1024;
}

typedef struct {
        double t0, first;
        int n;
} timing;

static void on_token(void *ctx, uint8_t tok) {
        timing *t = ctx;
        if (t->n++ == 0)
                t->first = mono_now_s() - t->t0;
}

/* Single-process generation: ttft, tokens/s after the first, and the text. */
static void single(model *m, uint8_t *out, double *ret_ttft, double *ret_tps) {
        sampler *s;
        float logits[MODEL_VOCAB];
        const sample_opts greedy = { .temperature = 0 };
        size_t plen = strlen(PROMPT);
        rng_t rng;

        rng_seed(&rng, 0);
        if (sampler_new(m, &s) < 0)
                exit(1);
        double t0 = mono_now_s();
        for (size_t i = 0; i < plen; i++)
                sampler_feed(s, (uint8_t) PROMPT[i], logits);
        out[0] = sampler_pick(logits, &greedy, &rng);
        double t1 = mono_now_s();
        for (int i = 1; i < n_tokens; i++) {
                sampler_feed(s, out[i - 1], logits);
                out[i] = sampler_pick(logits, &greedy, &rng);
        }
        double t2 = mono_now_s();
        *ret_ttft = t1 - t0;
        *ret_tps = (n_tokens - 1) / (t2 - t1);
        sampler_free(s);
}

static int throughput(void) {
        model_config cfg;
        char path[128], *urls[MAX_SERVERS];
        pid_t pids[MAX_SERVERS];
        uint8_t want[4096], got[4096];
        double ttft1, tps1;
        model *m;
        int bad = 0;

        model_config_by_name("medium", &cfg);
        snprintf(path, sizeof(path), "%s/medium.safetensors", tmpdir);
        save_random_model(&cfg, path, 11);
        if (model_new(&cfg, 1, 1, &m) < 0 || ckpt_load(path, m, NULL, NULL) < 0)
                return 1;
        single(m, want, &ttft1, &tps1);
        model_free(m);
        for (int i = 0; i < MAX_SERVERS; i++) {
                pids[i] = spawn_server(path, base_port + i, 0, false, 0, 0);
                if (asprintf(&urls[i], "http://127.0.0.1:%d", base_port + i) < 0 ||
                    !wait_serving(urls[i], pids[i], 30)) {
                        fprintf(stderr, "server %d did not start\n", i);
                        return 1;
                }
        }
        printf("medium (T=%d C=%d L=%d, %.1f M parameters), greedy, prompt %zu bytes, %d tokens,\n"
               "one thread per process, %ld cores\n\n",
               cfg.block_size, cfg.n_embd, cfg.n_layer, (double) (12.0 * cfg.n_embd * cfg.n_embd * cfg.n_layer + 256.0 * cfg.n_embd + cfg.block_size * cfg.n_embd) / 1e6,
               strlen(PROMPT), n_tokens, sysconf(_SC_NPROCESSORS_ONLN));
        printf("%-26s %10s %10s %12s %14s %9s %s\n", "", "tokens/s", "TTFT ms", "bytes/token",
               "decode B/token", "overhead", "text");
        printf("%-26s %10.1f %10.2f %12s %14s %9s %s\n", "single process (sample.c)", tps1, ttft1 * 1e3,
               "-", "-", "1.00x", "reference");
        for (int n = 1; n <= MAX_SERVERS; n++) {
                stage_client_opts o = { .urls = (const char *const *) urls, .n_urls = n, .token = TOKEN,
                                        .emit = on_token, .equal_split = true };
                const sample_opts greedy = { .temperature = 0 };
                timing t = { .t0 = mono_now_s() };
                pipeline_stats st;
                char err[512], label[64];
                o.emit_ctx = &t;
                int k = stage_client_generate(&o, (const uint8_t *) PROMPT, strlen(PROMPT), got, (size_t) n_tokens,
                                              &greedy, &st, err, sizeof(err));
                double total = mono_now_s() - t.t0;
                if (k != n_tokens) {
                        fprintf(stderr, "%d stages: %s\n", n, err);
                        return 1;
                }
                bool same = memcmp(got, want, (size_t) n_tokens) == 0;
                bad += !same;
                double tps = (n_tokens - 1) / (total - t.first);
                /* per decoded token each hop carries a header plus one row each way */
                double decode_bytes = 0;
                for (int s = 0; s < st.n_stages; s++) {
                        bool last = st.plan[s].last == cfg.n_layer - 1;
                        decode_bytes += 48 + (s == 0 ? 4 : 4.0 * cfg.n_embd) + 48 +
                                        (last ? 4.0 * MODEL_VOCAB : 4.0 * cfg.n_embd);
                }
                snprintf(label, sizeof(label), "%d stage%s (", n, n > 1 ? "s" : "");
                for (int s = 0; s < st.n_stages; s++)
                        snprintf(label + strlen(label), sizeof(label) - strlen(label), "%s%d-%d",
                                 s ? "," : "", st.plan[s].first, st.plan[s].last);
                strncat(label, ")", sizeof(label) - strlen(label) - 1);
                printf("%-26s %10.1f %10.2f %12.0f %14.0f %8.2fx %s\n", label, tps, t.first * 1e3,
                       (double) (st.bytes_sent + st.bytes_received) / n_tokens, decode_bytes,
                       (total) / ((n_tokens - 1) / tps1 + ttft1), same ? "identical" : "DIFFERENT");
        }
        printf("\noverhead: wall time of the whole generation over the single process's; "
               "bytes/token: all bytes both ways over the tokens (prompt included)\n\n");
        for (int i = 0; i < MAX_SERVERS; i++) {
                kill(pids[i], SIGKILL);
                waitpid(pids[i], NULL, 0);
                free(urls[i]);
        }
        unlink(path);
        return bad;
}

static double mib(double b) {
        return b / (1024.0 * 1024.0);
}

/* The largest stage of an equal split into k (weights + one session's cache). */
static double largest_stage(const model_config *cfg, int k) {
        stage_plan_peer p[8];
        stage_plan_span sp[8];
        stage_plan_cost c = { .layer_bytes = 1 };
        int n = 0;
        double worst = 0;
        for (int i = 0; i < k; i++)
                p[i] = (stage_plan_peer){ .speed = 1, .mem_bytes = UINT64_MAX / 4 };
        if (stage_plan(cfg->n_layer, p, k, &c, sp, &n) < 0)
                return -1;
        for (int i = 0; i < n; i++) {
                double b = (double) stage_param_bytes(cfg, sp[i].first, sp[i].last) +
                           (double) stage_session_bytes(cfg, sp[i].last - sp[i].first + 1);
                worst = b > worst ? b : worst;
        }
        return worst;
}

static void size_table(void) {
        static const model_config cfgs[] = {
                { "medium", 512, 512, 8, 8 },
                { "demo", 256, 1024, 12, 16 },
                { "large", 1024, 1024, 24, 16 },
                { "xl", 1024, 1536, 32, 16 },
        };
        printf("model sizes against a %d MiB cap per process (weights fp32 + KV cache of one "
               "session at the full window)\n\n",
               cap_mib);
        printf("%-8s %6s %6s %4s %10s %12s %12s %12s %12s %s\n", "model", "T", "C", "L", "params M",
               "1 process", "2 stages", "3 stages", "4 stages", "fewest that fit");
        for (size_t i = 0; i < sizeof(cfgs) / sizeof(cfgs[0]); i++) {
                const model_config *c = &cfgs[i];
                double one = largest_stage(c, 1);
                int fits = 0;
                printf("%-8s %6d %6d %4d %10.1f", c->name, c->block_size, c->n_embd, c->n_layer,
                       (double) stage_param_bytes(c, 0, c->n_layer - 1) / 4e6);
                for (int k = 1; k <= 4; k++) {
                        double b = k == 1 ? one : largest_stage(c, k);
                        printf(" %8.0f MiB", mib(b));
                        if (!fits && mib(b) <= cap_mib)
                                fits = k;
                }
                if (fits)
                        printf(" %d\n", fits);
                else
                        printf(" more than 4\n");
        }
        printf("\n");
}

/* A model over the cap, split across two capped processes that each hold half the layers. */
static int over_cap(void) {
        static const model_config cfg = { "demo", 256, 1024, 12, 16 };
        size_t cap = (size_t) cap_mib << 20;
        char path[128], url[2][64];
        pid_t whole, halves[2];
        uint8_t want[256], got[256];
        int status, n = n_tokens < 32 ? n_tokens : 32, r = 0;
        model *m;

        snprintf(path, sizeof(path), "%s/demo.safetensors", tmpdir);
        save_random_model(&cfg, path, 12);
        printf("over the cap: model 'demo' (T=%d C=%d L=%d), %.0f MiB of weights, cap %d MiB "
               "(RLIMIT_DATA) per process\n",
               cfg.block_size, cfg.n_embd, cfg.n_layer, mib((double) stage_param_bytes(&cfg, 0, 11)), cap_mib);

        /* one process under the cap: the whole model does not load */
        whole = fork();
        if (whole == 0) {
                struct rlimit rl = { cap, cap };
                stage_weights w;
                setrlimit(RLIMIT_DATA, &rl);
                _exit(stage_load_span(path, 0, cfg.n_layer - 1, &w) == -ENOMEM ? 0 : 1);
        }
        waitpid(whole, &status, 0);
        bool refused = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        printf("  1 process, all 12 layers:   %s\n", refused ? "cannot load (ENOMEM under the cap)" : "LOADED (the cap did not bind)");
        r += !refused;

        for (int i = 0; i < 2; i++) {
                snprintf(url[i], sizeof(url[i]), "http://127.0.0.1:%d", base_port + 10 + i);
                halves[i] = spawn_server(path, base_port + 10 + i, cap, true, i * 6, i * 6 + 5);
                if (!wait_serving(url[i], halves[i], 60)) {
                        fprintf(stderr, "capped server %d did not start\n", i);
                        return 1;
                }
        }
        /* the reference, uncapped, in this process */
        if (model_new(&cfg, 1, 1, &m) < 0 || ckpt_load(path, m, NULL, NULL) < 0)
                return 1;
        sampler *s;
        const sample_opts greedy = { .temperature = 0 };
        sampler_new(m, &s);
        sample_generate(s, (const uint8_t *) PROMPT, strlen(PROMPT), want, (size_t) n, &greedy);
        sampler_free(s);
        model_free(m);

        const char *urls[2] = { url[0], url[1] };
        stage_client_opts o = { .urls = urls, .n_urls = 2, .token = TOKEN, .equal_split = true };
        pipeline_stats st;
        char err[512];
        double t0 = mono_now_s();
        int k = stage_client_generate(&o, (const uint8_t *) PROMPT, strlen(PROMPT), got, (size_t) n, &greedy,
                                      &st, err, sizeof(err));
        double dt = mono_now_s() - t0;
        bool same = k == n && memcmp(got, want, (size_t) n) == 0;
        printf("  2 processes, 6 layers each: anonymous RSS %.0f and %.0f MiB; %d tokens in %.2f s; %s\n",
               anon_rss_mib(halves[0]), anon_rss_mib(halves[1]), k, dt,
               k < 0 ? err : same ? "text identical to one uncapped process" : "TEXT DIFFERS");
        r += !same;
        for (int i = 0; i < 2; i++) {
                kill(halves[i], SIGKILL);
                waitpid(halves[i], NULL, 0);
        }
        unlink(path);
        return r;
}

int main(int argc, char **argv) {
        static const struct option opts[] = { { "tokens", required_argument, NULL, 'n' },
                                              { "cap-mib", required_argument, NULL, 'c' },
                                              { "no-demo", no_argument, NULL, 'd' },
                                              {} };
        bool demo = true;
        int c, r = 0;

        if (argc == 7 && !strcmp(argv[1], "--serve"))
                return serve(argv + 2);

        while ((c = getopt_long(argc, argv, "n:c:d", opts, NULL)) >= 0) {
                if (c == 'n')
                        n_tokens = atoi(optarg);
                else if (c == 'c')
                        cap_mib = atoi(optarg);
                else if (c == 'd')
                        demo = false;
                else
                        return 2;
        }
        if (n_tokens < 2 || n_tokens > 256 || cap_mib < 64) {
                fprintf(stderr, "--tokens 2..256, --cap-mib >= 64\n");
                return 2;
        }
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/bench-collab.XXXXXX");
        if (!mkdtemp(tmpdir))
                return 1;
        base_port = 30000 + (int) (getpid() % 20000);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        blas_set_threads(1);
        signal(SIGPIPE, SIG_IGN);
        r += throughput();
        size_table();
        if (demo)
                r += over_cap();
        rmdir(tmpdir);
        printf("\n%s\n", r ? "FAIL" : "PASS: every split generated the single-process text");
        return r ? 1 : 0;
}
