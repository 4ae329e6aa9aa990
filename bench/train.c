/* SPDX-License-Identifier: MIT */
/* Training throughput benchmark (make bench).
 *
 * For each config and BLAS thread count, in a forked child so peak RSS and BLAS state are
 * per run: warm-up steps, timed steps (zero_grad, forward with targets, backward, AdamW) on
 * random bytes, a separate profiled pass (per-op times, since timing each kernel costs), and
 * the square-sgemm peak at the same thread count before and after. Reports tokens/s (median,
 * min-max), achieved GFLOPS, MFU, peak RSS and, when /usr/bin/python3 has torch, the same training
 * in PyTorch (bench/torch_ref.py) at its best and its default thread setting. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "time-util.h"
#include "adamw.h"
#include "blas.h"
#include "macros.h"
#include "model.h"
#include "rng.h"
#include "sgemm_peak.h"

#define MAX_CONFIGS 4
#define MAX_THREAD_COUNTS 8
#define MAX_THREADS 64
#define MAX_SGEMM 2
#define MAX_STEPS 1000
#define DATA_SEED 1234
#define LR 3e-4f

typedef struct {
        char configs[MAX_CONFIGS][16];
        int n_configs;
        int threads[MAX_THREAD_COUNTS];
        int n_threads;
        int B, T;                         /* 0: per config */
        int steps, warmup, profile_steps; /* -1: per config */
        int torch_steps, torch_warmup;
        double max_seconds, torch_max_seconds;
        int sgemm_n[MAX_SGEMM], sgemm_reps[MAX_SGEMM];
        int n_sgemm;
        bool torch, quick;
        const char *csv;
        const char *argv0;
} bench_opts;

typedef struct {
        model_config cfg;
        int B, T, warmup, steps, profile_steps;
} bench_plan;

/* What a child reports back through its pipe. */
typedef struct {
        int ok; /* 1, or a negative errno */
        int steps;
        double step_med, step_min, step_max; /* seconds */
        double sgemm[MAX_SGEMM];             /* GFLOPS per size, best of before and after */
        double peak;                         /* best of sgemm[] */
        double peak_before, peak_after;      /* the same, measured before / after training */
        long rss_base_kib, rss_peak_kib;
        double alloc_mib; /* params, grads, AdamW moments and activations */
        float loss;
        int prof_steps;
        model_profile prof; /* summed over prof_steps */
        double prof_zero, prof_fwd, prof_bwd, prof_adamw, prof_step;
        char kernel[32];
} c_result;

typedef struct {
        bool ok;
        double tok_s, tok_min, tok_max;
        long rss_kib;
        double others; /* CPU use of other processes during the run, % of all CPUs */
} torch_result;

/* System-wide CPU time from /proc/stat, to tell how busy the machine was besides us. */
typedef struct {
        unsigned long long busy, total, steal; /* clock ticks */
        double wall;
} cpu_snapshot;

typedef struct {
        bench_plan plan;
        int threads;
        c_result c;
        double others, steal; /* % of all CPUs, during the C run */
        double peak;          /* best sgemm GFLOPS of the whole run at this thread count */
        bool torch_ok;
        double torch_best, torch_default;
        char torch_best_setting[32];
        long torch_best_rss_kib;
} bench_row;

static long max_rss_kib(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return ru.ru_maxrss;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static void cpu_snapshot_take(cpu_snapshot *s) {
        unsigned long long v[8] = { 0 };
        FILE *f = fopen("/proc/stat", "re");

        memset(s, 0, sizeof(*s));
        s->wall = mono_now_s();
        if (!f)
                return;
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8) {
                s->busy = v[0] + v[1] + v[2] + v[5] + v[6]; /* user nice system irq softirq */
                s->steal = v[7];
                s->total = s->busy + v[3] + v[4] + v[7];
        }
        fclose(f);
}

/* Since 'then': CPU used by everything but 'ru' (our child), and stolen by the hypervisor,
 * both in % of all CPUs. */
static void cpu_snapshot_since(const cpu_snapshot *then, const struct rusage *ru,
                               double *ret_others, double *ret_steal) {
        cpu_snapshot now;
        double hz = (double) sysconf(_SC_CLK_TCK), ncpu = (double) sysconf(_SC_NPROCESSORS_ONLN);
        double child = (double) ru->ru_utime.tv_sec + ru->ru_utime.tv_usec * 1e-6 +
                       (double) ru->ru_stime.tv_sec + ru->ru_stime.tv_usec * 1e-6;

        cpu_snapshot_take(&now);
        double wall = now.wall - then->wall, others = (double) (now.busy - then->busy) / hz - child;
        *ret_others = wall > 0 && others > 0 ? 100.0 * others / (wall * ncpu) : 0.0;
        *ret_steal = now.total > then->total ? 100.0 * (double) (now.steal - then->steal) /
                                                       (double) (now.total - then->total)
                                             : 0.0;
}

/* ---- options ---- */

static void usage(FILE *f) {
        fputs("Usage: train [OPTIONS]\n"
              "Training throughput, MFU and the PyTorch comparison.\n\n"
              "  --configs LIST      configs to run (default small,medium)\n"
              "  --threads LIST      BLAS thread counts (default 1,2)\n"
              "  -B, --batch N       micro-batch size (default small 8, medium 4)\n"
              "  -T, --seq-len N     sequence length (default: the config's block size)\n"
              "  --steps N           timed steps (default small 10, medium 5)\n"
              "  --warmup N          warm-up steps (default small 2, medium 1)\n"
              "  --profile-steps N   steps of the profiled pass (default small 2, medium 1)\n"
              "  --max-seconds S     stop timing after S s, keeping >= 3 steps (default 60)\n"
              "  --torch-steps N     timed PyTorch steps per setting (default 3)\n"
              "  --no-torch          skip the PyTorch comparison\n"
              "  --quick             small only, few steps, sgemm n=1024 (under a minute)\n"
              "  --csv FILE          also write the figures as CSV\n"
              "                      (default build/bench/train.csv if that directory exists)\n\n"
              "Environment: PYTHON (default /usr/bin/python3), EDGED_BENCH_DIR (torch_ref.py)\n",
              f);
}

static int parse_int(const char *s, int lo, int hi, int *ret) {
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < lo || v > hi)
                return -EINVAL;
        *ret = (int) v;
        return 0;
}

static int parse_threads(const char *s, bench_opts *o) {
        char buf[128], *save = NULL;

        snprintf(buf, sizeof(buf), "%s", s);
        o->n_threads = 0;
        for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (o->n_threads == MAX_THREAD_COUNTS ||
                    parse_int(tok, 1, MAX_THREADS, &o->threads[o->n_threads]) < 0)
                        return -EINVAL;
                o->n_threads++;
        }
        return o->n_threads > 0 ? 0 : -EINVAL;
}

static int parse_configs(const char *s, bench_opts *o) {
        char buf[128], *save = NULL;
        model_config cfg;

        snprintf(buf, sizeof(buf), "%s", s);
        o->n_configs = 0;
        for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (o->n_configs == MAX_CONFIGS || model_config_by_name(tok, &cfg) < 0)
                        return -EINVAL;
                snprintf(o->configs[o->n_configs++], sizeof(o->configs[0]), "%s", tok);
        }
        return o->n_configs > 0 ? 0 : -EINVAL;
}

/* Defaults that depend on --quick, applied where no option set them. */
static void opts_finish(bench_opts *o, bool configs_set, bool threads_set) {
        if (!configs_set)
                parse_configs(o->quick ? "small" : "small,medium", o);
        if (!threads_set)
                parse_threads("1,2", o);
        if (o->torch_steps < 0)
                o->torch_steps = o->quick ? 2 : 3;
        o->torch_warmup = 1;
        o->torch_max_seconds = o->quick ? 8.0 : 20.0;
        o->sgemm_n[0] = 1024;
        o->sgemm_reps[0] = o->quick ? 3 : 5;
        o->n_sgemm = 1;
        if (!o->quick) {
                o->sgemm_n[1] = 2048;
                o->sgemm_reps[1] = 3;
                o->n_sgemm = 2;
        }
        if (!o->csv) {
                struct stat st;
                if (stat("build/bench", &st) == 0 && S_ISDIR(st.st_mode))
                        o->csv = "build/bench/train.csv";
        }
}

static int parse_args(int argc, char **argv, bench_opts *o) {
        enum {
                OPT_CONFIGS = 256,
                OPT_THREADS,
                OPT_STEPS,
                OPT_WARMUP,
                OPT_PROFILE,
                OPT_MAXSEC,
                OPT_TORCH_STEPS,
                OPT_NO_TORCH,
                OPT_QUICK,
                OPT_CSV
        };
        static const struct option longopts[] = {
                { "configs", required_argument, NULL, OPT_CONFIGS },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "batch", required_argument, NULL, 'B' },
                { "seq-len", required_argument, NULL, 'T' },
                { "steps", required_argument, NULL, OPT_STEPS },
                { "warmup", required_argument, NULL, OPT_WARMUP },
                { "profile-steps", required_argument, NULL, OPT_PROFILE },
                { "max-seconds", required_argument, NULL, OPT_MAXSEC },
                { "torch-steps", required_argument, NULL, OPT_TORCH_STEPS },
                { "no-torch", no_argument, NULL, OPT_NO_TORCH },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "csv", required_argument, NULL, OPT_CSV },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        bool configs_set = false, threads_set = false;
        int c, r = 0, secs = 0;

        *o = (bench_opts){ .steps = -1,
                           .warmup = -1,
                           .profile_steps = -1,
                           .torch_steps = -1,
                           .max_seconds = 60.0,
                           .torch = true,
                           .argv0 = argv[0] };
        while ((c = getopt_long(argc, argv, "B:T:h", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_CONFIGS:
                        r = parse_configs(optarg, o);
                        configs_set = true;
                        break;
                case OPT_THREADS:
                        r = parse_threads(optarg, o);
                        threads_set = true;
                        break;
                case 'B':
                        r = parse_int(optarg, 1, 4096, &o->B);
                        break;
                case 'T':
                        r = parse_int(optarg, 1, 8192, &o->T);
                        break;
                case OPT_STEPS:
                        r = parse_int(optarg, 1, MAX_STEPS, &o->steps);
                        break;
                case OPT_WARMUP:
                        r = parse_int(optarg, 0, MAX_STEPS, &o->warmup);
                        break;
                case OPT_PROFILE:
                        r = parse_int(optarg, 0, MAX_STEPS, &o->profile_steps);
                        break;
                case OPT_MAXSEC:
                        r = parse_int(optarg, 1, 86400, &secs);
                        o->max_seconds = secs;
                        break;
                case OPT_TORCH_STEPS:
                        r = parse_int(optarg, 1, MAX_STEPS, &o->torch_steps);
                        break;
                case OPT_NO_TORCH:
                        o->torch = false;
                        break;
                case OPT_QUICK:
                        o->quick = true;
                        break;
                case OPT_CSV:
                        o->csv = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        return -EINVAL;
                }
                if (r < 0) {
                        fprintf(stderr, "train: invalid value '%s'\n", optarg ? optarg : "");
                        return r;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "train: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        opts_finish(o, configs_set, threads_set);
        return 0;
}

/* Micro-batches of 2048 tokens: B=8 at T=256, B=4 at T=512. */
static int plan_init(const bench_opts *o, const char *name, bench_plan *p) {
        bool big;

        if (model_config_by_name(name, &p->cfg) < 0)
                return -EINVAL;
        big = p->cfg.n_layer * p->cfg.n_embd >= 8 * 512;
        p->T = o->T > 0 ? o->T : p->cfg.block_size;
        if (p->T > p->cfg.block_size) {
                fprintf(stderr, "train: T=%d exceeds %s's block size %d\n", p->T, name,
                        p->cfg.block_size);
                return -EINVAL;
        }
        p->B = o->B > 0 ? o->B : (p->T >= 2048 ? 1 : 2048 / p->T);
        p->steps = o->steps >= 0 ? o->steps : o->quick ? 3 : big ? 5 : 10;
        p->warmup = o->warmup >= 0 ? o->warmup : o->quick || big ? 1 : 2;
        p->profile_steps = o->profile_steps >= 0 ? o->profile_steps : o->quick || big ? 1 : 2;
        return 0;
}

/* ---- one C run (in a child) ---- */

typedef struct {
        double zero, fwd, bwd, adamw;
} step_times;

static int train_step(model *m, adamw_state *opt, const uint8_t *data, int B, int T,
                      float *ret_loss, step_times *st) {
        double t0 = mono_now_s(), t1, t2, t3;
        int r;

        model_zero_grad(m);
        t1 = mono_now_s();
        r = model_forward(m, data, data + 1, B, T, ret_loss);
        if (r < 0)
                return r;
        t2 = mono_now_s();
        r = model_backward(m, data, 1.0f);
        if (r < 0)
                return r;
        t3 = mono_now_s();
        adamw_step(opt, &m->layout, m->params, m->grads, LR);
        if (st) {
                st->zero += t1 - t0;
                st->fwd += t2 - t1;
                st->bwd += t3 - t2;
                st->adamw += mono_now_s() - t3;
        }
        return 0;
}

/* Targets are the tokens shifted by one: data holds B*T+1 bytes. */
static uint8_t *random_bytes(size_t n) {
        uint8_t *d = malloc(n);
        rng_t rng;

        if (!d)
                return NULL;
        rng_seed(&rng, DATA_SEED);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) rng_below(&rng, 256);
        return d;
}

static int timed_steps(model *m, adamw_state *opt, const uint8_t *data, const bench_plan *p,
                       double max_seconds, c_result *res) {
        double times[MAX_STEPS], start = mono_now_s();
        int n = 0, r;

        for (int i = 0; i < p->warmup; i++) {
                r = train_step(m, opt, data, p->B, p->T, &res->loss, NULL);
                if (r < 0)
                        return r;
        }
        while (n < p->steps) {
                double t0 = mono_now_s();
                r = train_step(m, opt, data, p->B, p->T, &res->loss, NULL);
                if (r < 0)
                        return r;
                times[n++] = mono_now_s() - t0;
                if (n >= 3 && mono_now_s() - start > max_seconds)
                        break;
        }
        qsort(times, (size_t) n, sizeof(times[0]), cmp_double);
        res->steps = n;
        res->step_min = times[0];
        res->step_max = times[n - 1];
        res->step_med = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
        return 0;
}

static int profiled_steps(model *m, adamw_state *opt, const uint8_t *data, const bench_plan *p,
                          c_result *res) {
        step_times st = { 0 };
        int r = 0;

        memset(&res->prof, 0, sizeof(res->prof));
        m->profile = &res->prof;
        double t0 = mono_now_s();
        for (int i = 0; i < p->profile_steps && r >= 0; i++)
                r = train_step(m, opt, data, p->B, p->T, &res->loss, &st);
        res->prof_step = mono_now_s() - t0;
        m->profile = NULL;
        res->prof_steps = p->profile_steps;
        res->prof_zero = st.zero;
        res->prof_fwd = st.fwd;
        res->prof_bwd = st.bwd;
        res->prof_adamw = st.adamw;
        return r;
}

/* Keeps the best per size over calls; returns this call's best. */
static double measure_peak(const bench_opts *o, c_result *res) {
        double best = 0.0;

        for (int i = 0; i < o->n_sgemm; i++) {
                double g = sgemm_peak_gflops(o->sgemm_n[i], o->sgemm_reps[i]);
                if (g > res->sgemm[i])
                        res->sgemm[i] = g;
                if (g > best)
                        best = g;
        }
        if (best > res->peak)
                res->peak = best;
        return best;
}

static int run_training(const bench_opts *o, const bench_plan *p, int threads, c_result *res) {
        _cleanup_free_ uint8_t *data = NULL;
        adamw_hparams hp;
        adamw_state opt = { 0 };
        model *m = NULL;
        int r;

        blas_set_threads(threads);
        snprintf(res->kernel, sizeof(res->kernel), "%s", blas_kernel());
        /* the sgemm buffers (48 MiB at n=2048) are freed before the model's, far larger,
         * allocations, so they do not raise the peak RSS */
        res->peak_before = measure_peak(o, res);
        res->rss_base_kib = max_rss_kib();
        data = random_bytes((size_t) p->B * p->T + 1);
        if (!data)
                return -ENOMEM;
        r = model_new(&p->cfg, p->B, p->T, &m);
        if (r < 0)
                return r;
        model_init_params(m, 42);
        adamw_hparams_default(&hp);
        r = adamw_new(m->layout.n_params, &hp, &opt);
        if (r < 0)
                goto out;
        res->alloc_mib = ((double) m->layout.n_params * 4.0 + (double) m->acts_capacity) *
                         sizeof(float) / (1024.0 * 1024.0);
        r = timed_steps(m, &opt, data, p, o->max_seconds, res);
        if (r >= 0)
                r = profiled_steps(m, &opt, data, p, res);
        res->rss_peak_kib = max_rss_kib();
out:
        adamw_free(&opt);
        model_free(m);
        if (r >= 0)
                res->peak_after = measure_peak(o, res);
        return r;
}

static int write_all(int fd, const void *buf, size_t n) {
        const char *p = buf;
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -errno;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

static int read_all(int fd, void *buf, size_t n) {
        char *p = buf;
        while (n > 0) {
                ssize_t k = read(fd, p, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k == 0 ? -EPIPE : -errno;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

/* Forks so every run starts from the same small process: peak RSS is the run's own and
 * BLAS threads and buffers of one run do not carry over into the next. */
static int run_in_child(const bench_opts *o, const bench_plan *p, int threads, bench_row *row) {
        c_result *res = &row->c;
        struct rusage ru;
        cpu_snapshot snap;
        int fds[2], status, r;
        pid_t pid;

        cpu_snapshot_take(&snap);
        if (pipe(fds) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                r = -errno;
                close(fds[0]);
                close(fds[1]);
                return r;
        }
        if (pid == 0) {
                c_result cr = { 0 };
                close(fds[0]);
                r = run_training(o, p, threads, &cr);
                cr.ok = r < 0 ? r : 1;
                _exit(write_all(fds[1], &cr, sizeof(cr)) < 0 ? 1 : 0);
        }
        close(fds[1]);
        memset(res, 0, sizeof(*res));
        r = read_all(fds[0], res, sizeof(*res));
        close(fds[0]);
        while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
                ;
        cpu_snapshot_since(&snap, &ru, &row->others, &row->steal);
        if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return r < 0 ? -ECHILD : -EIO;
        return res->ok < 0 ? res->ok : 0;
}

/* ---- PyTorch reference ---- */

static const char *python_path(void) {
        const char *py = getenv("PYTHON");
        return py && *py ? py : "/usr/bin/python3";
}

/* EDGED_BENCH_DIR, else bench/ next to the build directory holding argv[0], else ./bench. */
static void find_torch_ref(const char *argv0, char *buf, size_t size) {
        const char *env = getenv("EDGED_BENCH_DIR");
        const char *const ups[] = { "/../..", "/../../.." };
        char dir[1024];
        const char *slash = strrchr(argv0, '/');

        if (env && *env) {
                snprintf(buf, size, "%s/torch_ref.py", env);
                return;
        }
        if (slash) {
                snprintf(dir, sizeof(dir), "%.*s", (int) (slash - argv0), argv0);
                for (size_t i = 0; i < ARRAY_SIZE(ups); i++) {
                        int k = snprintf(buf, size, "%s%s/bench/torch_ref.py", dir, ups[i]);
                        if (k > 0 && (size_t) k < size && access(buf, R_OK) == 0)
                                return;
                }
        }
        snprintf(buf, size, "bench/torch_ref.py");
}

static void set_env_int(const char *name, int v) {
        char s[16];
        snprintf(s, sizeof(s), "%d", v);
        setenv(name, s, 1);
}

/* Runs argv with stdout into *ret_fd (if non-NULL; else /dev/null, as stderr then too). */
static pid_t spawn(char *const argv[], int threads, bool passive, int *ret_fd) {
        int fds[2] = { -1, -1 };
        pid_t pid;

        if (ret_fd && pipe(fds) < 0)
                return -1;
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
                int out = ret_fd ? fds[1] : open("/dev/null", O_WRONLY);
                dup2(out, STDOUT_FILENO);
                if (!ret_fd)
                        dup2(out, STDERR_FILENO);
                if (threads > 0) {
                        set_env_int("OMP_NUM_THREADS", threads);
                        set_env_int("OPENBLAS_NUM_THREADS", threads);
                }
                if (passive)
                        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
                else
                        unsetenv("OMP_WAIT_POLICY");
                execvp(argv[0], argv);
                _exit(127);
        }
        if (ret_fd) {
                close(fds[1]);
                *ret_fd = fds[0];
                if (pid < 0)
                        close(fds[0]);
        }
        return pid;
}

static bool torch_available(void) {
        char *argv[] = { (char *) python_path(), (char *) "-c", (char *) "import torch", NULL };
        int status;
        pid_t pid = spawn(argv, 0, false, NULL);

        if (pid < 0)
                return false;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static bool parse_torch_line(const char *line, torch_result *res) {
        const char *s = strstr(line, "tokens_per_s="), *mn = strstr(line, " min="),
                   *mx = strstr(line, " max=");

        if (strncmp(line, "TORCH ", 6) != 0 || !s || !mn || !mx)
                return false;
        res->tok_s = strtod(s + strlen("tokens_per_s="), NULL);
        res->tok_min = strtod(mn + strlen(" min="), NULL);
        res->tok_max = strtod(mx + strlen(" max="), NULL);
        return res->tok_s > 0.0;
}

static int torch_run(const bench_opts *o, const bench_plan *p, int threads, bool passive,
                     torch_result *res) {
        char script[1024], b[16], t[16], th[16], wu[16], st[16], ms[16], line[512];
        char *argv[] = { (char *) python_path(),
                         script,
                         (char *) "--config",
                         (char *) p->cfg.name,
                         (char *) "--B",
                         b,
                         (char *) "--T",
                         t,
                         (char *) "--threads",
                         th,
                         (char *) "--warmup",
                         wu,
                         (char *) "--steps",
                         st,
                         (char *) "--max-seconds",
                         ms,
                         NULL };
        struct rusage ru;
        cpu_snapshot snap;
        double steal;
        FILE *f;
        int fd, status;
        pid_t pid;

        cpu_snapshot_take(&snap);
        find_torch_ref(o->argv0, script, sizeof(script));
        snprintf(b, sizeof(b), "%d", p->B);
        snprintf(t, sizeof(t), "%d", p->T);
        snprintf(th, sizeof(th), "%d", threads);
        snprintf(wu, sizeof(wu), "%d", o->torch_warmup);
        snprintf(st, sizeof(st), "%d", o->torch_steps);
        snprintf(ms, sizeof(ms), "%.0f", o->torch_max_seconds);
        memset(res, 0, sizeof(*res));
        pid = spawn(argv, threads, passive, &fd);
        if (pid < 0)
                return -errno;
        f = fdopen(fd, "r");
        while (f && fgets(line, sizeof(line), f))
                if (parse_torch_line(line, res))
                        res->ok = true;
        if (f)
                fclose(f);
        else
                close(fd);
        while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
                ;
        res->rss_kib = ru.ru_maxrss;
        cpu_snapshot_since(&snap, &ru, &res->others, &steal);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                res->ok = false;
        return res->ok ? 0 : -EIO;
}

/* Results per (threads, wait policy) for one config; 1-thread runs serve the 2-thread row too. */
typedef struct {
        bool done[MAX_THREADS + 1][2];
        torch_result r[MAX_THREADS + 1][2];
} torch_cache;

static const torch_result *torch_get(const bench_opts *o, const bench_plan *p, torch_cache *tc,
                                     int threads, bool passive) {
        torch_result *res = &tc->r[threads][passive];

        if (!tc->done[threads][passive]) {
                tc->done[threads][passive] = true;
                if (torch_run(o, p, threads, passive, res) < 0)
                        printf("  torch %-6s %d thread%s %-22s failed\n", p->cfg.name, threads,
                               threads > 1 ? "s" : " ",
                               passive ? "OMP_WAIT_POLICY=PASSIVE" : "default");
                else
                        printf("  torch %-6s %d thread%s %-23s %6.0f tok/s (%.0f-%.0f), "
                               "RSS %.0f MiB, other load %.0f%%\n",
                               p->cfg.name, threads, threads > 1 ? "s" : " ",
                               passive ? "OMP_WAIT_POLICY=PASSIVE" : "default", res->tok_s,
                               res->tok_min, res->tok_max, (double) res->rss_kib / 1024.0,
                               res->others);
        }
        return res->ok ? res : NULL;
}

/* Default: torch.set_num_threads(n) and nothing else; best: over the wait policies and, at
 * n > 1 threads, over 1 thread as well. With one thread there is no OpenMP or OpenBLAS worker
 * to wait, so the policy is not tried there. */
static void torch_compare(const bench_opts *o, torch_cache *tc, bench_row *row) {
        const int counts[] = { row->threads, 1 };
        int n_counts = row->threads > 1 ? 2 : 1;
        const torch_result *def = torch_get(o, &row->plan, tc, row->threads, false);

        row->torch_ok = false;
        row->torch_default = def ? def->tok_s : 0.0;
        row->torch_best = 0.0;
        for (int i = 0; i < n_counts; i++) {
                int n_policies = counts[i] > 1 ? 2 : 1;
                for (int passive = 0; passive < n_policies; passive++) {
                        const torch_result *tr = torch_get(o, &row->plan, tc, counts[i], passive);
                        if (!tr || tr->tok_s <= row->torch_best)
                                continue;
                        row->torch_ok = true;
                        row->torch_best = tr->tok_s;
                        row->torch_best_rss_kib = tr->rss_kib;
                        snprintf(row->torch_best_setting, sizeof(row->torch_best_setting), "%dt%s",
                                 counts[i], passive ? " passive" : "");
                }
        }
}

/* ---- output ---- */

static double row_tok_s(const bench_row *r) {
        return (double) r->plan.B * r->plan.T / r->c.step_med;
}

static double row_gflops(const bench_row *r) {
        return row_tok_s(r) * model_flops_per_token(&r->plan.cfg, r->plan.T) * 1e-9;
}

static double n_matmul(const model_config *cfg) {
        double C = cfg->n_embd, L = cfg->n_layer;
        return 12.0 * L * C * C + MODEL_VOCAB * C;
}

/* "AMD EPYC, 2 CPUs, AVX2 AVX-512": what the BLAS kernel choice can be judged against. */
static void cpu_describe(char *buf, size_t size) {
        char line[4096], model_name[128] = "?";
        bool avx2 = false, avx512 = false;
        FILE *f = fopen("/proc/cpuinfo", "re");

        while (f && fgets(line, sizeof(line), f)) {
                char *colon = strchr(line, ':');
                if (!colon)
                        continue;
                if (strncmp(line, "model name", 10) == 0 && strcmp(model_name, "?") == 0)
                        snprintf(model_name, sizeof(model_name), "%s", colon + 2);
                else if (strncmp(line, "flags", 5) == 0 || strncmp(line, "Features", 8) == 0) {
                        avx2 = avx2 || strstr(colon, " avx2") != NULL;
                        avx512 = avx512 || strstr(colon, " avx512f") != NULL;
                }
        }
        if (f)
                fclose(f);
        model_name[strcspn(model_name, "\n")] = '\0';
        snprintf(buf, size, "%s, %ld CPUs online, %s%s", model_name, sysconf(_SC_NPROCESSORS_ONLN),
                 avx512 ? "AVX-512F " : "", avx2 ? "AVX2" : "no AVX2");
}

static void print_header(const bench_opts *o) {
        char cpu[256];

        cpu_describe(cpu, sizeof(cpu));
        printf("edged training benchmark\n");
        printf("CPU: %s\n", cpu);
        printf("BLAS: %s\n", blas_describe());
        printf("FLOPs/token = 6*N_matmul + 12*L*T*C, N_matmul = 12*L*C^2 + V*C (V=%d)\n",
               MODEL_VOCAB);
        printf("GFLOPS = tok/s * FLOPs/token; MFU = GFLOPS / square-sgemm peak (n=");
        for (int i = 0; i < o->n_sgemm; i++)
                printf("%s%d", i ? "," : "", o->sgemm_n[i]);
        printf(", best of several before and after\n  each run) at the same thread count, "
               "best over this whole run\n");
        printf("step = model_zero_grad + model_forward(targets) + model_backward + adamw_step, "
               "random bytes (seed %d)\n\n",
               DATA_SEED);
}

static void print_plan(const bench_plan *p) {
        const model_config *c = &p->cfg;
        printf("%s: T=%d C=%d L=%d H=%d, B=%d (%d tokens/step), N_matmul=%.3f M, "
               "FLOPs/token=%.1f M, warmup %d, timed %d, profiled %d\n",
               c->name, p->T, c->n_embd, c->n_layer, c->n_head, p->B, p->B * p->T,
               n_matmul(c) * 1e-6, model_flops_per_token(c, p->T) * 1e-6, p->warmup, p->steps,
               p->profile_steps);
}

static void print_progress(const bench_row *r) {
        const c_result *c = &r->c;
        double tok = (double) r->plan.B * r->plan.T;

        printf("  C     %-6s %d thread%s %6.0f tok/s (%.0f-%.0f) over %d steps, %.1f GFLOPS, "
               "sgemm peak %.1f (before %.1f, after %.1f), RSS %.0f MiB (allocated %.0f), "
               "other load %.0f%%, steal %.0f%%\n",
               r->plan.cfg.name, r->threads, r->threads > 1 ? "s" : " ", row_tok_s(r),
               tok / c->step_max, tok / c->step_min, c->steps, row_gflops(r), c->peak,
               c->peak_before, c->peak_after, (double) c->rss_peak_kib / 1024.0, c->alloc_mib,
               r->others, r->steal);
}

static void print_table(const bench_row *rows, int n) {
        printf("\n%-7s %3s %8s %20s %7s %7s %6s %27s %13s %8s %6s\n", "config", "thr", "BxT",
               "tok/s med (min-max)", "GFLOPS", "sgemm", "MFU", "torch tok/s best (set)/def",
               "C/torch b/d", "RSS MiB", "other");
        for (int i = 0; i < n; i++) {
                const bench_row *r = &rows[i];
                const c_result *c = &r->c;
                double tok = (double) r->plan.B * r->plan.T;
                char bxt[24], toks[40], torch[64] = "-", ratio[32] = "-";

                snprintf(bxt, sizeof(bxt), "%dx%d", r->plan.B, r->plan.T);
                if (c->ok <= 0) {
                        printf("%-7s %3d %8s  failed: %s\n", r->plan.cfg.name, r->threads, bxt,
                               strerror(-c->ok));
                        continue;
                }
                snprintf(toks, sizeof(toks), "%.0f (%.0f-%.0f)", row_tok_s(r), tok / c->step_max,
                         tok / c->step_min);
                if (r->torch_ok) {
                        snprintf(torch, sizeof(torch), "%.0f (%s) / %.0f", r->torch_best,
                                 r->torch_best_setting, r->torch_default);
                        snprintf(ratio, sizeof(ratio), "%.2fx/%.2fx", row_tok_s(r) / r->torch_best,
                                 r->torch_default > 0 ? row_tok_s(r) / r->torch_default : 0.0);
                }
                printf("%-7s %3d %8s %20s %7.1f %7.1f %5.1f%% %27s %13s %8.0f %5.0f%%\n",
                       r->plan.cfg.name, r->threads, bxt, toks, row_gflops(r), r->peak,
                       100.0 * row_gflops(r) / r->peak, torch, ratio,
                       (double) c->rss_peak_kib / 1024.0, r->others);
        }
        printf("sgemm: best peak GFLOPS of this run at that thread count\n"
               "torch best setting: <threads>t, passive = OMP_WAIT_POLICY=PASSIVE\n"
               "RSS: peak of the forked C run (model, AdamW moments, activations, libraries)\n"
               "other: CPU used by other processes during the C run, %% of all CPUs "
               "(high: noisy figures)\n");
}

/* fwd or bwd < 0: not applicable (left blank). */
static void print_op_line(const char *name, double fwd, double bwd, double step) {
        char f[16] = "", b[16] = "";
        double total = (fwd > 0 ? fwd : 0) + (bwd > 0 ? bwd : 0);

        if (fwd >= 0)
                snprintf(f, sizeof(f), "%.4f", fwd);
        if (bwd >= 0)
                snprintf(b, sizeof(b), "%.4f", bwd);
        printf("  %-17s %9s %9s %9.4f %6.1f%%\n", name, f, b, total, 100.0 * total / step);
}

/* Achieved rate of the matmuls (6*N_matmul per token) and of attention (12*L*T*C per token:
 * the kernels compute the full TxT scores, masked after), from the profiled times. */
static void print_op_rates(const bench_row *r, double n) {
        const c_result *c = &r->c;
        const model_config *cfg = &r->plan.cfg;
        double tok = (double) r->plan.B * r->plan.T;
        double mm = (c->prof.fwd[PROF_MATMUL] + c->prof.bwd[PROF_MATMUL]) / n;
        double att = (c->prof.fwd[PROF_ATTENTION] + c->prof.bwd[PROF_ATTENTION]) / n;
        double mm_gflops = 6.0 * n_matmul(cfg) * tok / mm * 1e-9;
        double att_gflops = 12.0 * cfg->n_layer * r->plan.T * cfg->n_embd * tok / att * 1e-9;

        printf("  matmul %.1f GFLOPS (%.0f%% of sgemm peak), attention %.1f GFLOPS "
               "(12*L*T*C per token, full TxT)\n",
               mm_gflops, 100.0 * mm_gflops / r->peak, att_gflops);
}

static void print_breakdown(const bench_row *r) {
        const c_result *c = &r->c;
        double n = c->prof_steps, step, sum_f = 0, sum_b = 0;

        if (c->ok <= 0 || c->prof_steps <= 0)
                return;
        step = c->prof_step / n;
        printf("\n%s, %d thread%s: profiled pass of %d step%s, %.4f s/step (timed median %.4f s)\n",
               r->plan.cfg.name, r->threads, r->threads > 1 ? "s" : "", c->prof_steps,
               c->prof_steps > 1 ? "s" : "", step, c->step_med);
        printf("  %-17s %9s %9s %9s %7s\n", "op", "fwd s", "bwd s", "total s", "% step");
        for (int k = 0; k < _PROF_MAX; k++) {
                print_op_line(model_prof_name(k), c->prof.fwd[k] / n, c->prof.bwd[k] / n, step);
                sum_f += c->prof.fwd[k] / n;
                sum_b += c->prof.bwd[k] / n;
        }
        print_op_line("adamw", -1, c->prof_adamw / n, step);
        print_op_line("zero_grad", -1, c->prof_zero / n, step);
        print_op_line("untimed (fwd/bwd)", c->prof_fwd / n - sum_f, c->prof_bwd / n - sum_b, step);
        print_op_rates(r, n);
}

static void csv_header(FILE *f, const bench_opts *o) {
        fputs("config,threads,B,T,tokens_per_step,steps,tok_s_median,tok_s_min,tok_s_max,"
              "flops_per_token,gflops,sgemm_peak_gflops",
              f);
        for (int i = 0; i < o->n_sgemm; i++)
                fprintf(f, ",sgemm_%d_gflops", o->sgemm_n[i]);
        fputs(",mfu,torch_best_tok_s,torch_best_setting,torch_default_tok_s,ratio_best,"
              "ratio_default,peak_rss_mib,torch_best_rss_mib,alloc_mib,kernel,sgemm_peak_before,"
              "sgemm_peak_after,other_load_pct,steal_pct,prof_steps,prof_step_s",
              f);
        for (int k = 0; k < _PROF_MAX; k++)
                fprintf(f, ",fwd_%s_s,bwd_%s_s", model_prof_name(k), model_prof_name(k));
        fputs(",adamw_s,zero_grad_s\n", f);
}

static void csv_row(FILE *f, const bench_opts *o, const bench_row *r) {
        const c_result *c = &r->c;
        double tok = (double) r->plan.B * r->plan.T, n = c->prof_steps > 0 ? c->prof_steps : 1;

        fprintf(f, "%s,%d,%d,%d,%.0f,%d,%.1f,%.1f,%.1f,%.0f,%.2f,%.2f", r->plan.cfg.name,
                r->threads, r->plan.B, r->plan.T, tok, c->steps, row_tok_s(r), tok / c->step_max,
                tok / c->step_min, model_flops_per_token(&r->plan.cfg, r->plan.T), row_gflops(r),
                r->peak);
        for (int i = 0; i < o->n_sgemm; i++)
                fprintf(f, ",%.2f", c->sgemm[i]);
        fprintf(f, ",%.4f", row_gflops(r) / r->peak);
        if (r->torch_ok)
                fprintf(f, ",%.1f,%s,%.1f,%.3f,%.3f", r->torch_best, r->torch_best_setting,
                        r->torch_default, row_tok_s(r) / r->torch_best,
                        r->torch_default > 0 ? row_tok_s(r) / r->torch_default : 0.0);
        else
                fputs(",,,,,", f);
        fprintf(f, ",%.1f,%.1f,%.1f,%s,%.2f,%.2f,%.1f,%.1f,%d,%.5f",
                (double) c->rss_peak_kib / 1024.0,
                r->torch_ok ? (double) r->torch_best_rss_kib / 1024.0 : 0.0, c->alloc_mib,
                c->kernel, c->peak_before, c->peak_after, r->others, r->steal, c->prof_steps,
                c->prof_step / n);
        for (int k = 0; k < _PROF_MAX; k++)
                fprintf(f, ",%.5f,%.5f", c->prof.fwd[k] / n, c->prof.bwd[k] / n);
        fprintf(f, ",%.5f,%.5f\n", c->prof_adamw / n, c->prof_zero / n);
}

static int write_csv(const bench_opts *o, const bench_row *rows, int n) {
        FILE *f = fopen(o->csv, "we");

        if (!f) {
                fprintf(stderr, "train: cannot write %s: %m\n", o->csv);
                return -errno;
        }
        csv_header(f, o);
        for (int i = 0; i < n; i++)
                if (rows[i].c.ok > 0)
                        csv_row(f, o, &rows[i]);
        if (fclose(f) != 0) {
                fprintf(stderr, "train: writing %s: %m\n", o->csv);
                return -EIO;
        }
        printf("\nCSV: %s\n", o->csv);
        return 0;
}

/* The machine is shared: a peak measured while something else ran is low, and MFU against it
 * would be high. The best of all measurements at a thread count is the closest to what the
 * machine can do. */
static void fill_peaks(bench_row *rows, int n) {
        for (int i = 0; i < n; i++) {
                rows[i].peak = 0.0;
                for (int j = 0; j < n; j++)
                        if (rows[j].threads == rows[i].threads && rows[j].c.ok > 0 &&
                            rows[j].c.peak > rows[i].peak)
                                rows[i].peak = rows[j].c.peak;
        }
}

/* ---- main ---- */

static int run_config(const bench_opts *o, const char *name, bool torch, bench_row *rows,
                      int *n_rows) {
        torch_cache *tc = NULL;
        bench_plan plan;
        int first = *n_rows;

        if (plan_init(o, name, &plan) < 0)
                return -EINVAL;
        print_plan(&plan);
        for (int i = 0; i < o->n_threads; i++) {
                bench_row *r = &rows[(*n_rows)++];
                *r = (bench_row){ .plan = plan, .threads = o->threads[i] };
                int k = run_in_child(o, &plan, r->threads, r);
                if (k < 0) {
                        r->c.ok = k;
                        printf("  C     %-6s %d threads: failed: %s\n", name, r->threads,
                               strerror(-k));
                        continue;
                }
                print_progress(r);
        }
        if (torch) {
                tc = calloc(1, sizeof(*tc));
                for (int i = first; tc && i < *n_rows; i++)
                        torch_compare(o, tc, &rows[i]);
                free(tc);
        }
        return 0;
}

int main(int argc, char **argv) {
        bench_row rows[MAX_CONFIGS * MAX_THREAD_COUNTS];
        bench_opts o;
        bool torch;
        int n_rows = 0;
        double t0 = mono_now_s();

        /* the kernel edged itself would use (EDGED_BLAS_CORETYPE=... to compare another);
         * PyTorch's runs inherit the same environment */
        blas_choose_kernel(argv);
        if (parse_args(argc, argv, &o) < 0) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        print_header(&o);
        torch = o.torch && torch_available();
        if (o.torch)
                printf("PyTorch: %s %s\n\n", python_path(),
                       torch ? "has torch: comparing (torch.set_num_threads(n), OMP_NUM_THREADS=n, "
                               "OPENBLAS_NUM_THREADS=n;\n  default: OMP_WAIT_POLICY unset; best of "
                               "that, OMP_WAIT_POLICY=PASSIVE and, for n > 1, 1 thread)"
                             : "cannot import torch: no comparison");
        for (int i = 0; i < o.n_configs; i++)
                if (run_config(&o, o.configs[i], torch, rows, &n_rows) < 0)
                        return EXIT_FAILURE;

        fill_peaks(rows, n_rows);
        print_table(rows, n_rows);
        for (int i = 0; i < n_rows; i++)
                print_breakdown(&rows[i]);
        if (o.csv)
                write_csv(&o, rows, n_rows);
        printf("\nbenchmark wall time %.0f s\n", mono_now_s() - t0);
        return EXIT_SUCCESS;
}
