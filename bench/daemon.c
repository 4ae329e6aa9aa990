/* SPDX-License-Identifier: MIT */
/* Daemon benchmark (build/bench/daemon; part 2 needs root for the pause command).
 *
 * 1. Pause latency: a trainer (small model, B=4, T=256, loader over a temporary corpus of
 *    many files) is granted 2 cores, trains for a random 50-300 ms, and is told to stop
 *    (trainer_set_cores(0)), many times over. Two figures per pause: decision -> parked as
 *    the trainer measures it (trainer_wait_parked), and decision -> no harvester thread
 *    runnable, by polling the state of every thread but this one in /proc/self/task/.../stat
 *    every 0.5 ms until none is 'R' and all stay so for QUIET_HOLD_S after the trainer
 *    parked (OpenBLAS workers spinning after a call, or the loader refilling its queue, show
 *    up here and not in the first figure).
 * 2. The real daemon (EDGED_BIN or build/edged) in the foreground against a copy of the fake
 *    sysfs root tests/fixtures/sysfs/laptop-ac, training the small model on the same corpus:
 *    once it trains, its CPU use (utime+stime of all threads from /proc/PID/stat; also the
 *    per-thread schedstat run time, which has ns resolution) and RSS (VmRSS, RssAnon) over a
 *    window while running, then after {"cmd":"pause"} over a window while paused. RSS
 *    excluding the model subtracts params + grads + AdamW m and v (4 * n_params floats) and
 *    the activation arena (acts_capacity floats), both read from model_new(small, 4, 256)
 *    in this process.
 * Targets (DESIGN.md §3, issue "daemon"): pause p99 < 50 ms; while paused < 0.1 % of one core
 * and < 20 MB RSS besides the model. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adamw.h"
#include "batch-source.h"
#include "blas.h"
#include "loader.h"
#include "log.h"
#include "bench-corpus.h"
#include "macros.h"
#include "model.h"
#include "rng.h"
#include "time-util.h"
#include "train-step.h"
#include "trainer.h"

#define BATCH 4
#define SEQ 256
#define CORES 2
#define N_FILES 300
#define FILES_PER_DIR 30
#define MAX_PAUSES 1000
#define MAX_HOOKS 64
#define MAX_GAP_STEPS 64
#define POLL_S 0.0005
#define QUIET_HOLD_S 0.1   /* parked and nothing runnable for this long: settled */
#define QUIET_WINDOW_S 2.0 /* give up looking for quiet after this long */
#define RESUME_TIMEOUT_S 2.0
#define LATENCY_TARGET_S 0.050
#define CPU_TARGET_PCT 0.1
#define RSS_TARGET_MB 20.0
#define STOP_TIMEOUT_S 30.0

static const char *const default_corpus = "../shared/data/tinyshakespeare.txt";

static volatile sig_atomic_t interrupted;
static pid_t daemon_pid; /* the child edged, killed on every way out */

typedef struct {
        const char *corpus, *bin, *fixtures;
        int pauses;
        double measure_s, running_s, settle_s;
        bool quick, no_daemon;
} bench_opts;

/* Time between two calls of the model's yield hook, by position in the step. */
typedef struct {
        int steps, n_pos, n_layer;
        double sum[MAX_HOOKS], max[MAX_HOOKS];
        double step_s, others;
} gap_result;

typedef struct {
        int n, skipped, timeouts, last_loader, last_compute;
        double park[MAX_PAUSES], quiet[MAX_PAUSES];
        double cpu[MAX_PAUSES], rq[MAX_PAUSES]; /* harvester run / run-queue time, ms summed */
        long steps;
        uint64_t abandoned, wait_ns, step_ns;
        double others, seconds;
        size_t threads;
} pause_result;

typedef struct {
        pid_t tid;
        char comm[20];
        unsigned long long run_ns, wait_ns, slices;
} thread_sample;

typedef struct {
        bool ok;
        double seconds, cpu_pct, sched_pct;
        long rss_kib, anon_kib, file_kib;
        int threads;
        long long tokens_before, tokens_after;
        int n_threads;
        thread_sample th[64]; /* per thread over the window: run_ns, slices as deltas */
} usage_result;

typedef struct {
        bool ran;
        double startup_s, stop_s;
        int exit_status;
        char cpu_source[32], state[32], reason[32];
        double model_mb, params_mb, acts_mb;
        usage_result running, paused;
} daemon_result;

typedef struct {
        unsigned long long busy, total;
        double wall, self;
} cpu_snapshot;

static void on_signal(int sig) {
        interrupted = 1;
}

static void install_signals(void) {
        /* a second signal kills at once (the daemon has PR_SET_PDEATHSIG) */
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
}

/* Sleeps s seconds unless interrupted; false if interrupted. */
static bool sleep_s(double s) {
        double end = mono_now_s() + s;

        while (!interrupted) {
                double left = end - mono_now_s();
                if (left <= 0)
                        return true;
                struct timespec ts = { .tv_sec = (time_t) left,
                                       .tv_nsec = (long) ((left - floor(left)) * 1e9) };
                nanosleep(&ts, NULL);
        }
        return false;
}

static double self_cpu_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void cpu_snapshot_take(cpu_snapshot *s) {
        unsigned long long v[8] = { 0 };
        _cleanup_fclose_ FILE *f = fopen("/proc/stat", "re");

        memset(s, 0, sizeof(*s));
        s->wall = mono_now_s();
        s->self = self_cpu_s();
        if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
                s->busy = v[0] + v[1] + v[2] + v[5] + v[6];
                s->total = s->busy + v[3] + v[4] + v[7];
        }
}

/* CPU used by everything but this process (and 'minus_s' more) since 'then', % of all
 * CPUs. */
static double cpu_others_since(const cpu_snapshot *then, double minus_s) {
        cpu_snapshot now;
        double hz = (double) sysconf(_SC_CLK_TCK), ncpu = (double) sysconf(_SC_NPROCESSORS_ONLN);

        cpu_snapshot_take(&now);
        double wall = now.wall - then->wall;
        double others = (double) (now.busy - then->busy) / hz - (now.self - then->self) - minus_s;
        return wall > 0 && others > 0 ? 100.0 * others / (wall * ncpu) : 0.0;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* Nearest rank, of a sorted array. */
static double percentile(const double *v, int n, double q) {
        int k = (int) ceil(q * n) - 1;
        return n > 0 ? v[k < 0 ? 0 : k >= n ? n - 1 : k] : NAN;
}

/* ---- the corpus and the temporary directory ---- */


/* ---- schedstat: time on CPU and waiting on the run queue (ns), times run ---- */

static int read_schedstat(pid_t pid, pid_t tid, thread_sample *ts) {
        char path[96];
        _cleanup_fclose_ FILE *f = NULL;

        snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int) pid, (int) tid);
        f = fopen(path, "re");
        if (!f || fscanf(f, "%llu %llu %llu", &ts->run_ns, &ts->wait_ns, &ts->slices) != 3)
                return -ESRCH;
        ts->tid = tid;
        return 0;
}

/* Every thread of pid (but skip), with its comm; at most max, returns how many. */
static int sample_threads(pid_t pid, pid_t skip, thread_sample *out, int max) {
        char path[64];
        DIR *d;
        int n = 0;

        snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        d = opendir(path);
        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d)) && n < max;) {
                char *end, p[96];
                long tid = strtol(de->d_name, &end, 10);
                if (end == de->d_name || *end || tid == skip)
                        continue;
                if (read_schedstat(pid, (pid_t) tid, &out[n]) < 0)
                        continue;
                snprintf(p, sizeof(p), "/proc/%d/task/%ld/comm", (int) pid, tid);
                _cleanup_fclose_ FILE *f = fopen(p, "re");
                if (!f || !fgets(out[n].comm, sizeof(out[n].comm), f))
                        snprintf(out[n].comm, sizeof(out[n].comm), "?");
                out[n].comm[strcspn(out[n].comm, "\n")] = 0;
                n++;
        }
        closedir(d);
        return n;
}

static void sum_samples(const thread_sample *s, int n, unsigned long long *run,
                        unsigned long long *wait) {
        *run = *wait = 0;
        for (int i = 0; i < n; i++) {
                *run += s[i].run_ns;
                *wait += s[i].wait_ns;
        }
}

/* ---- 1. pause latency ---- */

/* Threads of this process other than 'skip' that are runnable ('R') now; *ret_loader tells
 * whether the loader's thread is one of them. */
static int runnable_threads(pid_t skip, pid_t loader_tid, bool *ret_loader, size_t *ret_n) {
        DIR *d = opendir("/proc/self/task");
        int n = 0;

        *ret_loader = false;
        *ret_n = 0;
        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d));) {
                char path[64], buf[512], *end;
                long tid = strtol(de->d_name, &end, 10);
                if (end == de->d_name || *end || tid == skip)
                        continue;
                (*ret_n)++;
                snprintf(path, sizeof(path), "/proc/self/task/%ld/stat", tid);
                _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
                ssize_t k = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
                if (k <= 0)
                        continue; /* ended meanwhile */
                buf[k] = 0;
                /* "tid (comm) S ...": comm may hold spaces and parentheses */
                char *p = strrchr(buf, ')');
                if (p && p[1] == ' ' && p[2] == 'R') {
                        n++;
                        if (tid == loader_tid)
                                *ret_loader = true;
                }
        }
        closedir(d);
        return n;
}

/* Waits until the trainer runs (not parked) again after a grant; false if it did not within
 * RESUME_TIMEOUT_S (SCHED_IDLE threads on a busy machine). */
static bool wait_running(trainer *t) {
        double t0 = mono_now_s();

        while (!interrupted && mono_now_s() - t0 < RESUME_TIMEOUT_S) {
                trainer_stats ts;
                trainer_get_stats(t, &ts);
                if (!ts.parked)
                        return true;
                sleep_s(0.001);
        }
        return false;
}

/* One pause: decision, then the runnable-thread poll, then the trainer's own figure. */
static int one_pause(trainer *t, pid_t self, pid_t loader_tid, pause_result *res) {
        thread_sample before[64] = { 0 }, after[64] = { 0 };
        unsigned long long run0, wait0, run1 = 0, wait1 = 0;
        double quiet_at = -1, t0;
        bool settled = false, last_loader = false, seen_parked = false;
        size_t n_threads = 0;
        double park;
        int r;

        /* threads that end meanwhile would lose their time: none do during a pause */
        int nb = sample_threads(getpid(), self, before, (int) ARRAY_SIZE(before));
        sum_samples(before, MAX(nb, 0), &run0, &wait0);
        t0 = mono_now_s();
        trainer_set_cores(t, 0);
        while (!interrupted) {
                bool loader_r;
                int n = runnable_threads(self, loader_tid, &loader_r, &n_threads);
                double now = mono_now_s();
                if (n < 0)
                        return n;
                if (n > 0) {
                        quiet_at = -1;
                        last_loader = loader_r && n == 1;
                } else if (quiet_at < 0)
                        quiet_at = now;
                trainer_stats ts;
                trainer_get_stats(t, &ts);
                if (ts.parked && !seen_parked) {
                        int na = sample_threads(getpid(), self, after, (int) ARRAY_SIZE(after));
                        sum_samples(after, MAX(na, 0), &run1, &wait1);
                        seen_parked = true;
                }
                if (ts.parked && quiet_at >= 0 && now - quiet_at >= QUIET_HOLD_S) {
                        settled = true;
                        break;
                }
                if (now - t0 >= QUIET_WINDOW_S)
                        break;
                sleep_s(POLL_S);
        }
        r = trainer_wait_parked(t, 5.0, &park);
        if (r < 0)
                return r;
        if (!seen_parked) {
                int na = sample_threads(getpid(), self, after, (int) ARRAY_SIZE(after));
                sum_samples(after, MAX(na, 0), &run1, &wait1);
        }
        res->threads = MAX(res->threads, n_threads);
        res->park[res->n] = park;
        res->cpu[res->n] = run1 >= run0 ? (double) (run1 - run0) * 1e-9 : 0.0;
        res->rq[res->n] = wait1 >= wait0 ? (double) (wait1 - wait0) * 1e-9 : 0.0;
        if (settled)
                res->quiet[res->n] = quiet_at - t0;
        else {
                res->quiet[res->n] = QUIET_WINDOW_S; /* counted as the whole window */
                res->timeouts++;
        }
        if (last_loader)
                res->last_loader++;
        else
                res->last_compute++;
        res->n++;
        return 0;
}

typedef struct {
        double t[MAX_HOOKS];
        int n;
} hook_log;

static bool log_yield(void *userdata) {
        hook_log *h = userdata;
        if (h->n < MAX_HOOKS)
                h->t[h->n++] = mono_now_s();
        return false;
}

/* The floor under the pause latency, whatever the load: the longest stretch of work between
 * two checks of the pause flag. Steps of the same model and source as the trainer's, run
 * back to back in this thread (normal priority, so other load matters less) with a hook that
 * only takes the time. Positions: 0 from the start of the step to the first check, 1..n-1
 * between checks, n from the last check to the end of the step, where the trainer parks. */
static int yield_gaps(const char *data_dir, int steps, gap_result *res) {
        model_config cfg;
        adamw_hparams hp;
        adamw_state opt = { 0 };
        ckpt_state cs;
        hook_log h = { 0 };
        model *m = NULL;
        loader *l = NULL;
        uint8_t tok[BATCH * SEQ], tgt[BATCH * SEQ];
        int r;

        memset(res, 0, sizeof(*res));
        model_config_by_name("small", &cfg);
        blas_set_threads(CORES);
        r = loader_new(
                &(loader_options){ .data_dir = data_dir, .B = BATCH, .T = SEQ, .prefetch = 4 }, &l);
        if (r < 0)
                return r;
        r = model_new(&cfg, BATCH, SEQ, &m);
        if (r < 0)
                goto out;
        adamw_hparams_default(&hp);
        r = adamw_new(m->layout.n_params, &hp, &opt);
        if (r < 0)
                goto out;
        trainer_fresh(m, 1, &cs);
        m->yield = log_yield;
        m->yield_userdata = &h;
        batch_source src = batch_source_loader(l);
        res->n_layer = cfg.n_layer;
        cpu_snapshot snap;
        cpu_snapshot_take(&snap);
        /* one warm-up step more than measured: BLAS buffers, the loader's first refill */
        for (int i = 0; i <= steps && i < MAX_GAP_STEPS && !interrupted; i++) {
                float loss;
                h.n = 0;
                double t0 = mono_now_s();
                r = trainer_step(m, &opt, &src, BATCH, SEQ, 1, 1e-4f, tok, tgt, &cs, &loss, NULL,
                                 NULL);
                double t1 = mono_now_s();
                if (r < 0)
                        goto out;
                if (i == 0 || h.n < 1 || h.n >= MAX_HOOKS)
                        continue;
                res->n_pos = h.n + 1;
                res->steps++;
                res->step_s += t1 - t0;
                for (int k = 0; k <= h.n; k++) {
                        double g = (k == h.n ? t1 : h.t[k]) - (k == 0 ? t0 : h.t[k - 1]);
                        res->sum[k] += g;
                        res->max[k] = MAX(res->max[k], g);
                }
        }
        res->others = cpu_others_since(&snap, 0.0);
out:
        adamw_free(&opt);
        model_free(m);
        loader_free(l);
        return r;
}

static void print_gaps(const gap_result *g) {
        int L = g->n_layer, last = g->n_pos - 1;

        if (g->steps == 0)
                return;
        printf("\n   time between two checks of the pause flag (model yield hook), %d back-to-back "
               "steps in this thread, %d threads,\n   %.1f ms per step, other processes "
               "used %.0f %% of all CPUs meanwhile:\n",
               g->steps, CORES, g->step_s / g->steps * 1e3, g->others);
        printf("   %-72s %8s %8s\n", "work between the checks", "mean ms", "max ms");
        for (int k = 0; k < g->n_pos; k++) {
                char what[128];
                if (k == 0)
                        snprintf(what, sizeof(what), "step start: zero_grad, batch, embedding");
                else if (k == last)
                        snprintf(what, sizeof(what),
                                 "backward layer 0, embedding backward, AdamW "
                                 "(to the step's end)");
                else if (k <= L - 1)
                        snprintf(what, sizeof(what), "forward layer %d", k - 1);
                else if (k == L)
                        snprintf(what, sizeof(what),
                                 "forward layer %d, final LayerNorm, logits, "
                                 "loss, their backward",
                                 L - 1);
                else
                        snprintf(what, sizeof(what), "backward layer %d", 2 * L - k);
                printf("   %-72s %8.1f %8.1f\n", what, g->sum[k] / g->steps * 1e3, g->max[k] * 1e3);
        }
        printf("   a pause lands in one of these and takes effect at its end (the trainer also "
               "parks between steps)\n");
}

static int pause_bench(const bench_opts *o, const char *data_dir, pause_result *res) {
        pid_t self = (pid_t) syscall(SYS_gettid);
        trainer_config tc = { .B = BATCH, .T = SEQ, .accum = 1, .seed = 1 };
        loader *l = NULL;
        trainer *t = NULL;
        rng_t rng;
        cpu_snapshot snap;
        int r;

        memset(res, 0, sizeof(*res));
        model_config_by_name("small", &tc.cfg);
        tc.sched = (lr_schedule){
                .lr_max = 1e-3f, .lr_min = 1e-4f, .warmup_steps = 100, .total_steps = 1000000
        };
        adamw_hparams_default(&tc.hp);
        /* as the daemon's: prefetch 4, no re-walks during the run */
        r = loader_new(
                &(loader_options){ .data_dir = data_dir, .B = BATCH, .T = SEQ, .prefetch = 4 }, &l);
        if (r < 0)
                return r;
        tc.src = batch_source_loader(l);
        r = trainer_start(&tc, &t);
        if (r < 0) {
                loader_free(l);
                return r;
        }
        trainer_set_cores(t, CORES);
        r = trainer_wait_step(t, 1, 120.0); /* thread start, BLAS buffers, first batch */
        rng_seed(&rng, 42);
        cpu_snapshot_take(&snap);
        double start = mono_now_s();
        for (int i = 0; r >= 0 && i < o->pauses && !interrupted; i++) {
                if (i > 0)
                        trainer_set_cores(t, CORES);
                if (!wait_running(t)) {
                        res->skipped++;
                        continue;
                }
                if (!sleep_s(0.050 + 0.250 * rng_uniform(&rng)))
                        break;
                trainer_stats ts;
                trainer_get_stats(t, &ts);
                if (ts.parked) { /* a failed step waits with the thread parked-looking */
                        res->skipped++;
                        continue;
                }
                r = one_pause(t, self, loader_thread_tid(l), res);
        }
        res->seconds = mono_now_s() - start;
        /* the poller's own CPU is ours too; everything else is other load */
        res->others = cpu_others_since(&snap, 0.0);
        trainer_stats ts;
        trainer_get_stats(t, &ts);
        res->steps = ts.step;
        res->abandoned = ts.steps_abandoned;
        res->wait_ns = ts.data_wait_ns;
        res->step_ns = ts.step_ns;
        trainer_stop(t);
        loader_free(l);
        return r;
}

static const char *verdict(bool ok) {
        return ok ? "PASS" : "MISS";
}

static void print_dist(const char *name, double *v, int n, bool target) {
        qsort(v, (size_t) n, sizeof(*v), cmp_double);
        double p99 = percentile(v, n, 0.99);
        printf("%-44s %4d %8.1f %8.1f %8.1f %8.1f %8.1f %12s %7s\n", name, n,
               percentile(v, n, 0.50) * 1e3, percentile(v, n, 0.90) * 1e3, p99 * 1e3,
               v[n - 1] * 1e3, v[0] * 1e3, target ? "p99 < 50 ms" : "-",
               target ? verdict(p99 < LATENCY_TARGET_S) : "-");
}

static void print_pause(const bench_opts *o, pause_result *res) {
        printf("\n1. pause latency: trainer_set_cores(0) after 50-300 ms of training on %d cores; "
               "small model, B=%d T=%d,\n   loader source (prefetch 4), trainer threads "
               "SCHED_IDLE, this thread polling /proc/self/task every %.1f ms\n",
               CORES, BATCH, SEQ, POLL_S * 1e3);
        if (res->n == 0) {
                printf("no pause measured (%d skipped)\n", res->skipped);
                return;
        }
        printf("%-44s %4s %8s %8s %8s %8s %8s %12s %7s\n", "figure (ms)", "n", "p50", "p90", "p99",
               "max", "min", "target", "verdict");
        print_dist("decision -> trainer parked", res->park, res->n, true);
        print_dist("decision -> no harvester thread runnable", res->quiet, res->n, true);
        print_dist("  harvester CPU time until parked seen", res->cpu, res->n, false);
        print_dist("  harvester run-queue wait until parked seen", res->rq, res->n, false);
        printf("%zu harvester threads (trainer, BLAS, pool, loader); last one runnable before "
               "quiet: compute %d times, loader alone %d times\n",
               res->threads, res->last_compute, res->last_loader);
        printf("%ld steps, %llu cut short by a pause; data wait %.2f %% of step time; %d pauses "
               "skipped (trainer not running), %d never quiet within %.0f s;\n"
               "other processes used %.0f %% of all CPUs meanwhile (SCHED_IDLE yields to them)\n",
               res->steps, (unsigned long long) res->abandoned,
               res->step_ns ? 100.0 * (double) res->wait_ns / (double) res->step_ns : 0.0,
               res->skipped, res->timeouts, QUIET_WINDOW_S, res->others);
}

/* ---- 2. the daemon ---- */

static json_t *request(const char *sock, const char *line) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = 2 };
        char buf[16384];
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ssize_t n = 0, k;

        if (fd < 0)
                return NULL;
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
            write(fd, line, strlen(line)) != (ssize_t) strlen(line))
                return NULL;
        while (n < (ssize_t) sizeof(buf) - 1 &&
               (k = read(fd, buf + n, sizeof(buf) - 1 - (size_t) n)) > 0) {
                n += k;
                if (memchr(buf, '\n', (size_t) n))
                        break;
        }
        buf[n > 0 ? n : 0] = 0;
        return json_loads(buf, 0, NULL);
}

static const char *json_str(json_t *o, const char *key) {
        const char *s = json_string_value(json_object_get(o, key));
        return s ? s : "";
}

static bool daemon_alive(int *ret_status) {
        int status;
        pid_t p;

        if (daemon_pid <= 0)
                return false;
        p = waitpid(daemon_pid, &status, WNOHANG);
        if (p == daemon_pid) {
                daemon_pid = 0;
                if (ret_status)
                        *ret_status = status;
                return false;
        }
        return true;
}

/* SIGTERM (checkpoint and exit), then SIGKILL after STOP_TIMEOUT_S. Returns the seconds it
 * took, < 0 if it had to be killed. */
static double daemon_stop(int *ret_status) {
        double t0 = mono_now_s();
        int status = 0;

        if (daemon_pid <= 0)
                return 0;
        kill(daemon_pid, SIGTERM);
        while (mono_now_s() - t0 < STOP_TIMEOUT_S) {
                pid_t p = waitpid(daemon_pid, &status, WNOHANG);
                if (p == daemon_pid || (p < 0 && errno == ECHILD)) {
                        daemon_pid = 0;
                        if (ret_status)
                                *ret_status = status;
                        return mono_now_s() - t0;
                }
                struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
                nanosleep(&ts, NULL); /* not sleep_s: this runs after an interrupt too */
        }
        kill(daemon_pid, SIGKILL);
        (void) waitpid(daemon_pid, &status, 0);
        daemon_pid = 0;
        if (ret_status)
                *ret_status = status;
        return -1;
}

/* utime + stime of the whole process, in clock ticks. */
static int proc_cpu_ticks(pid_t pid, unsigned long long *ret) {
        char path[64], buf[2048];
        unsigned long long ut, st;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t k = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
        if (k <= 0)
                return -ESRCH;
        buf[k] = 0;
        char *p = strrchr(buf, ')');
        /* fields 3..13 skipped: state ppid pgrp session tty tpgid flags minflt cminflt majflt
         * cmajflt */
        if (!p ||
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
                return -EBADMSG;
        *ret = ut + st;
        return 0;
}

static long status_kib(pid_t pid, const char *key) {
        char path[64], line[256];
        size_t n = strlen(key);
        long v = -1;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        while (f && fgets(line, sizeof(line), f))
                if (strncmp(line, key, n) == 0 && line[n] == ':') {
                        v = strtol(line + n + 1, NULL, 10);
                        break;
                }
        return v;
}

static long long status_tokens(const char *sock) {
        json_t *s = request(sock, "{\"cmd\":\"status\"}\n");
        long long v = s ? (long long) json_integer_value(json_object_get(s, "tokens")) : -1;
        json_decref(s);
        return v;
}

/* CPU and memory of the daemon over 'seconds'; no requests in between (they cost it CPU). */
static int measure_usage(const char *sock, double seconds, usage_result *u) {
        thread_sample before[64];
        unsigned long long tick0, tick1, ns = 0;
        int n0, n1;
        double t0, dt;

        memset(u, 0, sizeof(*u));
        u->tokens_before = status_tokens(sock);
        n0 = sample_threads(daemon_pid, 0, before, (int) ARRAY_SIZE(before));
        if (proc_cpu_ticks(daemon_pid, &tick0) < 0 || n0 < 0)
                return -ESRCH;
        t0 = mono_now_s();
        if (!sleep_s(seconds))
                return -EINTR;
        n1 = sample_threads(daemon_pid, 0, u->th, (int) ARRAY_SIZE(u->th));
        if (!daemon_alive(NULL) || proc_cpu_ticks(daemon_pid, &tick1) < 0 || n1 < 0)
                return -ESRCH;
        dt = mono_now_s() - t0;
        u->seconds = dt;
        u->cpu_pct = 100.0 * (double) (tick1 - tick0) / (double) sysconf(_SC_CLK_TCK) / dt;
        /* per thread; threads that ended in between lose their time here (the tick figure
         * keeps it), threads that started count from zero */
        for (int i = 0; i < n1; i++) {
                thread_sample *a = &u->th[i];
                for (int j = 0; j < n0; j++)
                        if (before[j].tid == a->tid) {
                                a->run_ns -= MIN(a->run_ns, before[j].run_ns);
                                a->wait_ns -= MIN(a->wait_ns, before[j].wait_ns);
                                a->slices -= MIN(a->slices, before[j].slices);
                                break;
                        }
                ns += a->run_ns;
        }
        u->n_threads = u->threads = n1;
        u->sched_pct = 100.0 * (double) ns * 1e-9 / dt;
        u->rss_kib = status_kib(daemon_pid, "VmRSS");
        u->anon_kib = status_kib(daemon_pid, "RssAnon");
        u->file_kib = status_kib(daemon_pid, "RssFile");
        u->tokens_after = status_tokens(sock);
        u->ok = true;
        return 0;
}

static int run_cmd(char *const argv[]) {
        int status;
        pid_t p = fork();

        if (p < 0)
                return -errno;
        if (p == 0) {
                execvp(argv[0], argv);
                _exit(127);
        }
        if (waitpid(p, &status, 0) < 0)
                return -errno;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

static void print_log_tail(const char *log) {
        char *argv[] = { (char *) "tail", (char *) "-n", (char *) "20", (char *) log, NULL };
        printf("--- last lines of %s:\n", log);
        fflush(stdout);
        (void) run_cmd(argv);
}

/* Model memory the daemon holds for small at B=4, T=256, from this process's model_new. */
static int model_sizes(daemon_result *res) {
        model_config cfg;
        model *m = NULL;
        int r;

        model_config_by_name("small", &cfg);
        r = model_new(&cfg, BATCH, SEQ, &m);
        if (r < 0)
                return r;
        res->params_mb = 4.0 * (double) m->layout.n_params * sizeof(float) / 1e6;
        res->acts_mb = (double) m->acts_capacity * sizeof(float) / 1e6;
        res->model_mb = res->params_mb + res->acts_mb;
        model_free(m);
        return 0;
}

static int daemon_bench(const bench_opts *o, const char *tmp, const uint8_t *data, size_t size,
                        daemon_result *res) {
        char root[PATH_MAX], conf[PATH_MAX], state[PATH_MAX], sock[PATH_MAX], log[PATH_MAX],
                src[PATH_MAX], datadir[PATH_MAX + 8], run_s[32];
        int r, n_files;

        memset(res, 0, sizeof(*res));
        res->exit_status = -1;
        r = model_sizes(res);
        if (r < 0)
                return r;
        snprintf(root, sizeof(root), "%s/root", tmp);
        snprintf(conf, sizeof(conf), "%s/edged.conf", tmp);
        snprintf(state, sizeof(state), "%s/state", tmp);
        snprintf(sock, sizeof(sock), "%s/control", tmp);
        snprintf(log, sizeof(log), "%s/edged.log", tmp);
        snprintf(src, sizeof(src), "%s/sysfs/laptop-ac", o->fixtures);
        snprintf(datadir, sizeof(datadir), "%s/data", root);
        char *cp[] = { (char *) "cp", (char *) "-a", src, root, NULL };
        r = run_cmd(cp);
        if (r < 0) {
                printf("cannot copy the fake sysfs root %s\n", src);
                return r;
        }
        r = bench_split_corpus(datadir, data, size, N_FILES / 10, FILES_PER_DIR, 2 * (SEQ + 1), &n_files);
        if (r < 0)
                return r;
        static const char conf_text[] = "[Policy]\nIdleWindowSec=2\nMaxForegroundDelayMs=1000\n"
                                        "[Daemon]\nDataDirectory=/data\nModel=small\n";
        r = bench_write_file(conf, conf_text, sizeof(conf_text) - 1);
        if (r < 0)
                return r;
        /* a bound of its own, should this process die without stopping it */
        snprintf(run_s, sizeof(run_s), "%.0f", 120.0 + o->running_s + o->settle_s + o->measure_s);

        pid_t parent = getpid();
        fflush(NULL);
        daemon_pid = fork();
        if (daemon_pid < 0) {
                daemon_pid = 0;
                return -errno;
        }
        if (daemon_pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(127);
                if (fd >= 0) {
                        dup2(fd, STDOUT_FILENO);
                        dup2(fd, STDERR_FILENO);
                }
                execl(o->bin, "edged", "--root", root, "--config", conf, "--state-dir", state,
                      "--control", sock, "--run-seconds", run_s, (char *) NULL);
                _exit(127);
        }
        res->ran = true;

        /* running and trained a step: the model's memory is all touched */
        double t0 = mono_now_s();
        bool up = false;
        while (!interrupted && mono_now_s() - t0 < 90.0) {
                if (!daemon_alive(&res->exit_status)) {
                        printf("edged exited during start-up\n");
                        print_log_tail(log);
                        return -ECHILD;
                }
                json_t *s = request(sock, "{\"cmd\":\"status\"}\n");
                if (s) {
                        up = strcmp(json_str(s, "state"), "running") == 0 &&
                             json_integer_value(json_object_get(s, "step")) > 0;
                        snprintf(res->cpu_source, sizeof(res->cpu_source), "%s",
                                 json_str(s, "cpu_source"));
                        snprintf(res->state, sizeof(res->state), "%s", json_str(s, "state"));
                        snprintf(res->reason, sizeof(res->reason), "%s", json_str(s, "reason"));
                        json_decref(s);
                        if (up)
                                break;
                }
                sleep_s(0.2);
        }
        if (!up) {
                printf("edged did not train within 90 s (last state %s, reason %s)\n", res->state,
                       res->reason);
                print_log_tail(log);
                return interrupted ? -EINTR : -ETIMEDOUT;
        }
        res->startup_s = mono_now_s() - t0;

        r = measure_usage(sock, o->running_s, &res->running);
        if (r < 0)
                goto fail;

        json_t *p = request(sock, "{\"cmd\":\"pause\"}\n");
        bool paused = p && strcmp(json_str(p, "state"), "paused") == 0;
        if (!paused)
                printf("pause refused: %s\n", p ? json_str(p, "message") : "no reply");
        json_decref(p);
        if (!paused) {
                r = -EPERM;
                goto fail;
        }
        if (!sleep_s(o->settle_s)) {
                r = -EINTR;
                goto fail;
        }
        r = measure_usage(sock, o->measure_s, &res->paused);
        if (r < 0)
                goto fail;
        json_t *s = request(sock, "{\"cmd\":\"status\"}\n");
        if (s) {
                snprintf(res->state, sizeof(res->state), "%s", json_str(s, "state"));
                snprintf(res->reason, sizeof(res->reason), "%s", json_str(s, "reason"));
                json_decref(s);
        }
        res->stop_s = daemon_stop(&res->exit_status);
        return 0;
fail:
        if (r != -EINTR)
                print_log_tail(log);
        return r;
}

static void print_usage_row(const char *name, const usage_result *u, double model_mb) {
        double rss_mb = (double) u->rss_kib * 1024.0 / 1e6,
               anon_mb = (double) u->anon_kib * 1024.0 / 1e6;

        if (!u->ok) {
                printf("%-8s not measured\n", name);
                return;
        }
        printf("%-8s %6.1f %10.3f %10.3f %8.1f %8.1f %8.1f %11.1f %11.1f %8d %12lld\n", name,
               u->seconds, u->cpu_pct, u->sched_pct, rss_mb, anon_mb,
               (double) u->file_kib * 1024.0 / 1e6, rss_mb - model_mb, anon_mb - model_mb,
               u->threads, u->tokens_after - u->tokens_before);
}

static int cmp_run(const void *a, const void *b) {
        const thread_sample *x = a, *y = b;
        return (x->run_ns < y->run_ns) - (x->run_ns > y->run_ns);
}

/* Where the paused daemon's CPU goes: threads that ran during the window. */
static void print_threads(const usage_result *u) {
        thread_sample th[64];
        int n = MIN(u->n_threads, (int) ARRAY_SIZE(th));

        if (!u->ok || n <= 0)
                return;
        memcpy(th, u->th, (size_t) n * sizeof(*th));
        qsort(th, (size_t) n, sizeof(*th), cmp_run);
        printf("paused, per thread (schedstat), threads that ran:\n");
        for (int i = 0; i < n; i++)
                if (th[i].slices > 0)
                        printf("  tid %-8d %-16s %8.3f ms/s on CPU %8.2f runs/s\n", (int) th[i].tid,
                               th[i].comm, (double) th[i].run_ns * 1e-6 / u->seconds,
                               (double) th[i].slices / u->seconds);
}

static void print_daemon(const bench_opts *o, const daemon_result *res) {
        const usage_result *u = &res->paused;

        printf("\n2. the daemon (%s) against a copy of %s/sysfs/laptop-ac, Model=small, "
               "%d data files;\n   started in %.1f s (running and a step done), CPU source %s\n",
               o->bin, o->fixtures, N_FILES / 10, res->startup_s, res->cpu_source);
        printf("model memory subtracted: %.1f MB = %.1f MB params+grads+AdamW m,v (4 * n_params "
               "floats) + %.1f MB activations\n(acts_capacity floats), from model_new(small, B=%d, "
               "T=%d) in this process\n",
               res->model_mb, res->params_mb, res->acts_mb, BATCH, SEQ);
        printf("%-8s %6s %10s %10s %8s %8s %8s %11s %11s %8s %12s\n", "state", "secs", "CPU %",
               "sched %", "RSS MB", "anon MB", "file MB", "RSS-model", "anon-model", "threads",
               "tokens");
        print_usage_row("running", &res->running, res->model_mb);
        print_usage_row("paused", u, res->model_mb);
        print_threads(u);
        printf("CPU %%: utime+stime of all threads (/proc/PID/stat, clock ticks) over the window, "
               "%% of one core;\nsched %%: the same from the live threads' schedstat run time "
               "(ns resolution)\n");
        if (res->stop_s > 0)
                printf("SIGTERM -> exit in %.2f s, status %d; state at the end: %s (%s)\n",
                       res->stop_s,
                       WIFEXITED(res->exit_status) ? WEXITSTATUS(res->exit_status) : -1, res->state,
                       res->reason);
        else if (res->stop_s < 0)
                printf("edged did not exit within %.0f s of SIGTERM: killed\n", STOP_TIMEOUT_S);
}

static void print_summary(pause_result *pr, const daemon_result *dr) {
        printf("\nsummary\n%-50s %12s %12s %7s\n", "figure", "value", "target", "verdict");
        if (pr && pr->n > 0) {
                qsort(pr->park, (size_t) pr->n, sizeof(double), cmp_double);
                qsort(pr->quiet, (size_t) pr->n, sizeof(double), cmp_double);
                double p = percentile(pr->park, pr->n, 0.99),
                       q = percentile(pr->quiet, pr->n, 0.99);
                printf("%-50s %9.1f ms %12s %7s\n", "pause: decision -> parked, p99", p * 1e3,
                       "< 50 ms", verdict(p < LATENCY_TARGET_S));
                printf("%-50s %9.1f ms %12s %7s\n", "pause: decision -> no thread runnable, p99",
                       q * 1e3, "< 50 ms", verdict(q < LATENCY_TARGET_S));
        }
        if (dr && dr->paused.ok) {
                const usage_result *u = &dr->paused;
                double rss = (double) u->rss_kib * 1024.0 / 1e6 - dr->model_mb;
                double anon = (double) u->anon_kib * 1024.0 / 1e6 - dr->model_mb;
                printf("%-50s %10.3f %% %12s %7s\n", "paused daemon CPU (utime+stime), one core",
                       u->cpu_pct, "< 0.1 %", verdict(u->cpu_pct < CPU_TARGET_PCT));
                printf("%-50s %10.3f %% %12s %7s\n", "paused daemon CPU (schedstat), one core",
                       u->sched_pct, "< 0.1 %", verdict(u->sched_pct < CPU_TARGET_PCT));
                printf("%-50s %9.1f MB %12s %7s\n", "paused daemon VmRSS - model", rss, "< 20 MB",
                       verdict(rss < RSS_TARGET_MB));
                printf("%-50s %9.1f MB %12s %7s\n", "paused daemon RssAnon - model", anon,
                       "< 20 MB", verdict(anon < RSS_TARGET_MB));
        }
}

/* ---- options, main ---- */

static void usage(FILE *f) {
        fputs("Usage: daemon [OPTIONS]\n"
              "Pause latency of the trainer and the daemon's cost while paused.\n\n"
              "  --corpus FILE     training text (default ../shared/data/tinyshakespeare.txt;\n"
              "                    missing: the concatenated /usr/share/common-licenses/*)\n"
              "  --pauses N        pauses to time (default 60)\n"
              "  --seconds S       paused measurement window (default 30)\n"
              "  --no-daemon       part 1 only\n"
              "  --quick           20 pauses, 10 s windows\n\n"
              "Environment: EDGED_BIN (default build/edged), EDGED_FIXTURES (default "
              "tests/fixtures)\n",
              f);
}

static int parse_args(int argc, char **argv, bench_opts *o, bool *corpus_set) {
        enum { OPT_CORPUS = 256, OPT_PAUSES, OPT_SECONDS, OPT_NO_DAEMON, OPT_QUICK };
        static const struct option longopts[] = {
                { "corpus", required_argument, NULL, OPT_CORPUS },
                { "pauses", required_argument, NULL, OPT_PAUSES },
                { "seconds", required_argument, NULL, OPT_SECONDS },
                { "no-daemon", no_argument, NULL, OPT_NO_DAEMON },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c, pauses = -1;
        double secs = -1;
        char *end;

        *o = (bench_opts){ .corpus = default_corpus };
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_CORPUS:
                        o->corpus = optarg;
                        *corpus_set = true;
                        break;
                case OPT_PAUSES:
                        pauses = (int) strtol(optarg, &end, 10);
                        if (end == optarg || *end || pauses < 1 || pauses > MAX_PAUSES) {
                                fprintf(stderr, "daemon: --pauses must be 1..%d\n", MAX_PAUSES);
                                return -EINVAL;
                        }
                        break;
                case OPT_SECONDS:
                        secs = strtod(optarg, &end);
                        if (end == optarg || *end || !(secs >= 1 && secs <= 3600)) {
                                fprintf(stderr, "daemon: --seconds must be 1..3600\n");
                                return -EINVAL;
                        }
                        break;
                case OPT_NO_DAEMON:
                        o->no_daemon = true;
                        break;
                case OPT_QUICK:
                        o->quick = true;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "daemon: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        o->pauses = pauses > 0 ? pauses : o->quick ? 20 : 60;
        o->measure_s = secs > 0 ? secs : o->quick ? 10.0 : 30.0;
        o->running_s = o->quick ? 3.0 : 10.0;
        o->settle_s = 3.0;
        o->bin = getenv("EDGED_BIN");
        if (!o->bin || !*o->bin)
                o->bin = "build/edged";
        o->fixtures = getenv("EDGED_FIXTURES");
        if (!o->fixtures || !*o->fixtures)
                o->fixtures = "tests/fixtures";
        return 0;
}

int main(int argc, char **argv) {
        char tmpl[] = "/tmp/edged-bench-daemon-XXXXXX", desc[PATH_MAX + 64], data_dir[PATH_MAX];
        _cleanup_free_ uint8_t *data = NULL;
        pause_result *pr = NULL;
        daemon_result dr = { 0 };
        gap_result gaps = { 0 };
        bench_opts o;
        size_t size = 0;
        bool corpus_set = false, failed = false;
        int n_files = 0, r;
        double t_start = mono_now_s();

        blas_choose_kernel(argv); /* the kernel edged itself would use */
        if (parse_args(argc, argv, &o, &corpus_set) < 0) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        log_set_max_level(LOG_LEVEL_WARNING);
        install_signals();
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (!o.no_daemon && access(o.bin, X_OK) < 0) {
                fprintf(stderr, "daemon: cannot run %s: %m (build it, or set EDGED_BIN)\n", o.bin);
                return EXIT_FAILURE;
        }
        r = bench_load_corpus(o.corpus, corpus_set, &data, &size, desc, sizeof(desc));
        if (r < 0) {
                fprintf(stderr, "daemon: no corpus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        pr = calloc(1, sizeof(*pr));
        if (!pr || !mkdtemp(tmpl)) {
                fprintf(stderr, "daemon: %m\n");
                free(pr);
                return EXIT_FAILURE;
        }
        printf("edged daemon benchmark%s\n", o.quick ? " (--quick)" : "");
        printf("corpus: %s, %zu bytes; temporary directory %s\n", desc, size, tmpl);
        printf("BLAS: %s\n", blas_describe());

        snprintf(data_dir, sizeof(data_dir), "%s/data", tmpl);
        r = bench_split_corpus(data_dir, data, size, N_FILES, FILES_PER_DIR, 2 * (SEQ + 1), &n_files);
        /* first: the trainer later puts every BLAS and pool thread at SCHED_IDLE */
        if (r >= 0)
                r = yield_gaps(data_dir, o.quick ? 4 : 10, &gaps);
        if (r >= 0)
                r = pause_bench(&o, data_dir, pr);
        if (r < 0) {
                printf("pause latency: failed: %s\n", strerror(-r));
                failed = true;
        } else {
                print_pause(&o, pr);
                print_gaps(&gaps);
        }

        if (!o.no_daemon && !interrupted) {
                r = daemon_bench(&o, tmpl, data, size, &dr);
                if (r < 0) {
                        printf("daemon: failed: %s\n", strerror(-r));
                        failed = true;
                }
                if (dr.ran && (dr.running.ok || dr.paused.ok))
                        print_daemon(&o, &dr);
        }
        daemon_stop(NULL); /* still running after a failure or an interrupt */
        if (!interrupted)
                print_summary(pr->n > 0 ? pr : NULL, dr.paused.ok ? &dr : NULL);
        bench_remove_tree(tmpl);
        free(pr);
        if (interrupted) {
                printf("interrupted\n");
                return EXIT_FAILURE;
        }
        printf("\nbenchmark wall time %.0f s\n", mono_now_s() - t_start);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
