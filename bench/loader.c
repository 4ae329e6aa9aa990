/* SPDX-License-Identifier: MIT */
/* Data loader benchmark (build/bench/loader; cold-cache passes need root).
 *
 * The corpus (tinyshakespeare, or the licence texts) is cut into ~300 files under a
 * temporary directory, as a DataDirectory of many small files would look.
 * 1. Raw throughput: loader_next_batch in a tight loop (B=4, T=256, prefetch 4), io_uring
 *    and force_pread, each once right after dropping the page cache (cold) and once with
 *    every file cached (warm). Reports bytes/s and batches/s of windows delivered, the
 *    fraction of the corpus cached at the start (mincore) and the files the pass touched.
 * 2. Training: real AdamW steps of the small model through trainer_step(), 2 threads, every
 *    thread SCHED_IDLE as in the daemon, from the loader and from the in-memory corpus
 *    (the baseline) in alternating rounds, so drift on this shared machine hits both alike;
 *    then a cold-cache loader run. Reports the data-wait fraction sum(wait) / sum(step time)
 *    and tokens/s, loader against corpus.
 * Targets (DESIGN.md §7: the trainer never waits on the disk in steady state): data wait
 * < 1 % of step time; loader tokens/s within 5 % of the in-memory corpus. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamw.h"
#include "batch-source.h"
#include "blas.h"
#include "corpus.h"
#include "loader.h"
#include "log.h"
#include "bench-corpus.h"
#include "macros.h"
#include "model.h"
#include "time-util.h"
#include "train-step.h"

#define BATCH 4
#define SEQ 256
#define PREFETCH 4
#define THREADS 2
#define DEFAULT_FILES 300
#define MAX_FILES 10000
#define FILES_PER_DIR 30
#define SEED 1
#define LR 3e-4f
#define WAIT_TARGET_PCT 1.0
#define MAX_STEPS 1000
#define RATIO_TARGET 0.95

static const char *const default_corpus = "../shared/data/tinyshakespeare.txt";

static volatile sig_atomic_t interrupted;

typedef struct {
        const char *corpus;
        int files;
        bool quick;
        /* raw passes */
        long cold_batches;
        double warm_seconds;
        /* training */
        int warmup_steps, rounds, round_steps, cold_steps;
        double train_seconds, cold_seconds;
} bench_opts;

typedef struct {
        bool ran, cold;
        bool force_pread, pread_fallback;
        double cached_pct; /* of the corpus's pages at the start; < 0 unknown */
        double index_s, seconds, max_wait_s;
        long batches;
        uint64_t wait_ns;
        size_t touched, n_files;
        loader_stats st;
} raw_result;

typedef struct {
        const char *name;
        bool ran;
        int steps;
        double step_s, max_wait_s, first_wait_s;
        uint64_t wait_ns;
        float loss;
        double others;     /* CPU use of other processes, % of all CPUs */
        double cached_pct; /* cold run: corpus pages cached at its start */
        double times[MAX_STEPS];
} train_result;

/* System-wide CPU time, to tell how busy the machine was besides us (as bench/train). */
typedef struct {
        unsigned long long busy, total;
        double wall, self;
} cpu_snapshot;

static void on_signal(int sig) {
        interrupted = 1;
}

static void install_signals(void) {
        /* a second signal kills at once */
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
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

/* CPU used by everything but this process since 'then', in % of all CPUs. */
static double cpu_others_since(const cpu_snapshot *then) {
        cpu_snapshot now;
        double hz = (double) sysconf(_SC_CLK_TCK), ncpu = (double) sysconf(_SC_NPROCESSORS_ONLN);

        cpu_snapshot_take(&now);
        double wall = now.wall - then->wall;
        double others = (double) (now.busy - then->busy) / hz - (now.self - then->self);
        return wall > 0 && others > 0 ? 100.0 * others / (wall * ncpu) : 0.0;
}

/* ---- the corpus and its temporary directory ---- */

/* Page-cache residency of every file under a directory, by mincore(). */
static uint64_t res_pages, all_pages;

static int count_resident(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        long page = sysconf(_SC_PAGESIZE);

        if (type != FTW_F || !S_ISREG(st->st_mode) || st->st_size == 0)
                return 0;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        size_t n = ((size_t) st->st_size + (size_t) page - 1) / (size_t) page;
        void *p = mmap(NULL, (size_t) st->st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                return 0;
        _cleanup_free_ unsigned char *vec = malloc(n);
        if (vec && mincore(p, (size_t) st->st_size, vec) == 0) {
                for (size_t i = 0; i < n; i++)
                        res_pages += vec[i] & 1;
                all_pages += n;
        }
        munmap(p, (size_t) st->st_size);
        return 0;
}

static double cached_pct(const char *dir) {
        res_pages = all_pages = 0;
        if (nftw(dir, count_resident, 16, FTW_PHYS) < 0 || all_pages == 0)
                return -1.0;
        return 100.0 * (double) res_pages / (double) all_pages;
}

static int read_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        uint8_t *buf = NULL;
        size_t len = 0;

        if (type == FTW_F && S_ISREG(st->st_mode))
                (void) bench_read_whole(path, &buf, &len, BENCH_MAX_CORPUS);
        free(buf);
        return 0;
}

static void warm_cache(const char *dir) {
        (void) nftw(dir, read_one, 16, FTW_PHYS);
}

/* Writes back and drops the page cache (and dentries, inodes): root only. */
static int drop_caches(void) {
        if (geteuid() != 0)
                return -EPERM;
        sync();
        _cleanup_close_ int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (write(fd, "3\n", 2) != 2)
                return -errno;
        return 0;
}

/* ---- 1. raw loader throughput ---- */

static int raw_pass(const char *dir, bool force_pread, bool cold, long max_batches, double max_s,
                    raw_result *res) {
        _cleanup_free_ uint8_t *tok = malloc((size_t) BATCH * SEQ),
                               *tgt = malloc((size_t) BATCH * SEQ);
        _cleanup_free_ bool *touched = NULL;
        loader_origin org[BATCH];
        loader *l = NULL;
        rng_t cur;
        int r;

        memset(res, 0, sizeof(*res));
        res->cold = cold;
        res->force_pread = force_pread;
        if (!tok || !tgt)
                return -ENOMEM;
        if (cold) {
                r = drop_caches();
                if (r < 0)
                        return r;
        } else
                warm_cache(dir);
        res->cached_pct = cached_pct(dir);

        double t0 = mono_now_s();
        r = loader_new(&(loader_options){ .data_dir = dir,
                                          .B = BATCH,
                                          .T = SEQ,
                                          .prefetch = PREFETCH,
                                          .force_pread = force_pread },
                       &l);
        if (r < 0)
                return r;
        res->index_s = mono_now_s() - t0;
        loader_get_stats(l, &res->st);
        res->n_files = res->st.n_files;
        res->pread_fallback = res->st.pread_fallback;
        touched = calloc(res->n_files, sizeof(bool));
        if (!touched) {
                loader_free(l);
                return -ENOMEM;
        }

        /* the queue is first filled from a zero cursor: asking for that one uses it */
        rng_seed(&cur, 0);
        t0 = mono_now_s();
        while (res->batches < max_batches && !interrupted) {
                loader_batch_info info = { .origins = org };
                r = loader_next_batch(l, &cur, tok, tgt, &info);
                if (r < 0)
                        break;
                res->batches++;
                res->wait_ns += info.wait_ns;
                res->max_wait_s = MAX(res->max_wait_s, (double) info.wait_ns * 1e-9);
                for (int j = 0; j < BATCH; j++)
                        if (org[j].file < res->n_files && !touched[org[j].file]) {
                                touched[org[j].file] = true;
                                res->touched++;
                        }
                if (mono_now_s() - t0 >= max_s)
                        break;
        }
        res->seconds = mono_now_s() - t0;
        loader_get_stats(l, &res->st);
        loader_free(l);
        res->ran = r >= 0 && res->batches > 0;
        return r < 0 ? r : 0;
}

static double raw_mb_s(const raw_result *r) {
        return (double) r->batches * BATCH * (SEQ + 1) / r->seconds / 1e6;
}

static double raw_batches_s(const raw_result *r) {
        return (double) r->batches / r->seconds;
}

static void print_raw(const raw_result *rows, int n) {
        printf("\n1. raw loader throughput: loader_next_batch in a tight loop, B=%d T=%d, "
               "prefetch %d\n",
               BATCH, SEQ, PREFETCH);
        printf("%-9s %-5s %8s %8s %7s %8s %10s %9s %9s %13s %9s\n", "reads", "cache", "cached@0",
               "index ms", "batches", "seconds", "MB/s", "batches/s", "wait ms", "files touched",
               "errors");
        for (int i = 0; i < n; i++) {
                const raw_result *r = &rows[i];
                char cached[16] = "?", touched[32];
                if (!r->ran) {
                        printf("%-9s %-5s %s\n", r->force_pread ? "pread" : "io_uring",
                               r->cold ? "cold" : "warm", "not run");
                        continue;
                }
                if (r->cached_pct >= 0)
                        snprintf(cached, sizeof(cached), "%.0f%%", r->cached_pct);
                snprintf(touched, sizeof(touched), "%zu/%zu", r->touched, r->n_files);
                printf("%-9s %-5s %8s %8.1f %7ld %8.3f %10.1f %9.0f %9.1f %13s %9llu\n",
                       r->pread_fallback ? "pread" : "io_uring", r->cold ? "cold" : "warm", cached,
                       r->index_s * 1e3, r->batches, r->seconds, raw_mb_s(r), raw_batches_s(r),
                       (double) r->wait_ns * 1e-6, touched,
                       (unsigned long long) r->st.io_errors + r->st.vanished + r->st.shrunk);
        }
        printf("MB/s: window bytes delivered, batches * B * (T+1); cached@0: corpus pages in the "
               "page cache at the start (mincore);\nwait ms: time loader_next_batch blocked in "
               "all; index: loader_new (walk, stat, open test, start of the thread)\n");
}

/* ---- 2. training through trainer_step ---- */

/* Every thread of the process at SCHED_IDLE, as the daemon's harvester threads are. */
static int all_threads_idle(void) {
        DIR *d = opendir("/proc/self/task");
        struct sched_param sp = { 0 };
        int r = 0;

        if (!d)
                return -errno;
        for (struct dirent *de; (de = readdir(d));) {
                char *end;
                long tid = strtol(de->d_name, &end, 10);
                if (end == de->d_name || *end)
                        continue;
                if (sched_setscheduler((pid_t) tid, SCHED_IDLE, &sp) < 0 && errno != ESRCH)
                        r = -errno;
        }
        closedir(d);
        return r;
}

typedef struct {
        model *m;
        adamw_state opt;
        uint8_t *tok, *tgt;
} trainer_ctx;

static int run_steps(trainer_ctx *tc, const batch_source *src, ckpt_state *cs, int n, double max_s,
                     bool count, train_result *res) {
        double start = mono_now_s();

        for (int i = 0; i < n && !interrupted; i++) {
                uint64_t w = 0;
                float loss;
                double t0 = mono_now_s();
                int r = trainer_step(tc->m, &tc->opt, src, BATCH, SEQ, 1, LR, tc->tok, tc->tgt, cs,
                                     &loss, &w, NULL);
                double dt = mono_now_s() - t0;
                if (r < 0)
                        return r;
                if (res->first_wait_s < 0)
                        res->first_wait_s = (double) w * 1e-9;
                if (count && res->steps < MAX_STEPS) {
                        res->ran = true;
                        res->times[res->steps] = dt;
                        res->steps++;
                        res->step_s += dt;
                        res->wait_ns += w;
                        res->max_wait_s = MAX(res->max_wait_s, (double) w * 1e-9);
                        res->loss = loss;
                }
                if (mono_now_s() - start >= max_s)
                        break;
        }
        return 0;
}

static int new_loader(const char *dir, loader **ret) {
        return loader_new(
                &(loader_options){ .data_dir = dir, .B = BATCH, .T = SEQ, .prefetch = PREFETCH },
                ret);
}

/* Alternating rounds of corpus and loader steps (ABBA), then a cold-cache loader run.
 * res[0] corpus, res[1] loader warm, res[2] loader cold. */
static int train_bench(const bench_opts *o, const char *dir, train_result *res,
                       const char **cold_note) {
        char *paths[] = { (char *) dir };
        trainer_ctx tc = { 0 };
        corpus cp = { 0 };
        loader *l = NULL;
        ckpt_state cs_corpus, cs_loader;
        model_config cfg;
        adamw_hparams hp;
        cpu_snapshot snap[2];
        double busy_s[2] = { 0 };
        int r;

        res[0] = (train_result){ .name = "corpus (in memory)", .first_wait_s = -1 };
        res[1] = (train_result){ .name = "loader, warm cache", .first_wait_s = -1 };
        res[2] = (train_result){ .name = "loader, cold cache", .first_wait_s = -1 };
        model_config_by_name("small", &cfg);
        blas_set_threads(THREADS);
        r = all_threads_idle();
        if (r < 0)
                printf("note: cannot put every thread at SCHED_IDLE: %s\n", strerror(-r));

        r = corpus_load(&cp, paths, 1, BENCH_MAX_CORPUS);
        if (r < 0)
                return r;
        r = model_new(&cfg, BATCH, SEQ, &tc.m);
        if (r < 0)
                goto out;
        adamw_hparams_default(&hp);
        r = adamw_new(tc.m->layout.n_params, &hp, &tc.opt);
        if (r < 0)
                goto out;
        tc.tok = malloc((size_t) BATCH * SEQ);
        tc.tgt = malloc((size_t) BATCH * SEQ);
        if (!tc.tok || !tc.tgt) {
                r = -ENOMEM;
                goto out;
        }
        trainer_fresh(tc.m, SEED, &cs_corpus);
        cs_loader = cs_corpus;
        warm_cache(dir);
        r = new_loader(dir, &l);
        if (r < 0)
                goto out;

        batch_source src[2] = { batch_source_corpus(&cp), batch_source_loader(l) };
        ckpt_state *cs[2] = { &cs_corpus, &cs_loader };
        /* warm-up, not counted: BLAS buffers, page faults, the loader's first refill */
        for (int s = 0; s < 2 && r >= 0; s++)
                r = run_steps(&tc, &src[s], cs[s], o->warmup_steps, o->train_seconds, false,
                              &res[s]);
        double start = mono_now_s();
        for (int round = 0; round < o->rounds && r >= 0 && !interrupted; round++) {
                if (mono_now_s() - start >= o->train_seconds)
                        break;
                for (int k = 0; k < 2 && r >= 0; k++) {
                        int s = (round + k) % 2 == 0 ? 0 : 1; /* ABBA: C L L C C L ... */
                        double t0 = mono_now_s();
                        cpu_snapshot_take(&snap[s]);
                        r = run_steps(&tc, &src[s], cs[s], o->round_steps, o->train_seconds, true,
                                      &res[s]);
                        double dt = mono_now_s() - t0;
                        res[s].others += cpu_others_since(&snap[s]) * dt;
                        busy_s[s] += dt;
                }
        }
        for (int s = 0; s < 2; s++)
                res[s].others = busy_s[s] > 0 ? res[s].others / busy_s[s] : 0.0;
        if (r < 0 || interrupted)
                goto out;

        /* cold: the loader starts from an empty page cache; one corpus step first faults the
         * code dropped with the cache (OpenBLAS) back in, so the steps measure data alone */
        loader_free(l);
        l = NULL;
        r = drop_caches();
        if (r < 0) {
                *cold_note = r == -EPERM ? "not root: cannot drop the page cache, cold run skipped"
                                         : "cannot drop the page cache, cold run skipped";
                r = 0;
                goto out;
        }
        r = run_steps(&tc, &src[0], cs[0], 1, o->cold_seconds, false, &res[0]);
        if (r < 0)
                goto out;
        res[2].cached_pct = cached_pct(dir);
        r = new_loader(dir, &l);
        if (r < 0)
                goto out;
        src[1] = batch_source_loader(l);
        cpu_snapshot_take(&snap[0]);
        double t0 = mono_now_s();
        r = run_steps(&tc, &src[1], cs[1], o->cold_steps, o->cold_seconds, true, &res[2]);
        if (mono_now_s() > t0)
                res[2].others = cpu_others_since(&snap[0]);
out:
        loader_free(l);
        corpus_free(&cp);
        adamw_free(&tc.opt);
        model_free(tc.m);
        free(tc.tok);
        free(tc.tgt);
        return r;
}

static double tok_s(const train_result *r) {
        return r->step_s > 0 ? (double) r->steps * BATCH * SEQ / r->step_s : 0.0;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* From the median step: a burst of other load on a few steps does not tip the ratio. */
static double tok_s_median(const train_result *r) {
        double t[MAX_STEPS];
        int n = r->steps;

        if (n <= 0)
                return 0.0;
        memcpy(t, r->times, (size_t) n * sizeof(*t));
        qsort(t, (size_t) n, sizeof(*t), cmp_double);
        double med = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
        return (double) BATCH * SEQ / med;
}

static double wait_pct(const train_result *r) {
        return r->step_s > 0 ? 100.0 * (double) r->wait_ns * 1e-9 / r->step_s : 0.0;
}

static void print_train(const bench_opts *o, const train_result *res, const char *cold_note) {
        printf("\n2. training: small model, B=%d T=%d, %d threads, AdamW steps through "
               "trainer_step(), every thread SCHED_IDLE\n",
               BATCH, SEQ, THREADS);
        printf("   %d warm-up steps per source uncounted; corpus and warm loader in alternating "
               "rounds of %d steps\n",
               o->warmup_steps, o->round_steps);
        printf("%-20s %5s %8s %9s %9s %10s %8s %13s %12s %6s %8s %7s\n", "source", "steps",
               "step ms", "tokens/s", "median", "wait ms", "wait %", "1st batch ms", "max wait ms",
               "loss", "cached@0", "other");
        for (int i = 0; i < 3; i++) {
                const train_result *r = &res[i];
                char cached[16] = "", first[16] = "-";
                if (!r->ran) {
                        printf("%-20s %s\n", r->name, i == 2 && cold_note ? cold_note : "not run");
                        continue;
                }
                if (i == 2 && r->cached_pct >= 0)
                        snprintf(cached, sizeof(cached), "%.0f%%", r->cached_pct);
                if (i > 0 && r->first_wait_s >= 0)
                        snprintf(first, sizeof(first), "%.2f", r->first_wait_s * 1e3);
                printf("%-20s %5d %8.1f %9.0f %9.0f %10.2f %7.3f%% %13s %12.2f %6.3f %8s "
                       "%6.0f%%\n",
                       r->name, r->steps, r->step_s / r->steps * 1e3, tok_s(r), tok_s_median(r),
                       (double) r->wait_ns * 1e-6, wait_pct(r), first, r->max_wait_s * 1e3,
                       (double) r->loss, cached, r->others);
        }
        printf("tokens/s: from the sum of step times; median: from the median step; wait %%: sum "
               "of the "
               "waits\ntrainer_step reported / sum of step times; 1st batch: "
               "the wait of the loader's first\nbatch (a queue refill: not counted in the warm "
               "row, counted in the cold one); other: CPU used by other\nprocesses meanwhile, %% "
               "of all CPUs (SCHED_IDLE yields to them: high means noisy figures)\n");
}

static const char *verdict(bool ok) {
        return ok ? "PASS" : "MISS";
}

static void print_summary(const raw_result *raw, int n_raw, const train_result *res) {
        const raw_result *uw = NULL, *pw = NULL, *uc = NULL, *pc = NULL;
        char v[32];

        for (int i = 0; i < n_raw; i++) {
                const raw_result *r = &raw[i];
                if (!r->ran)
                        continue;
                if (r->force_pread)
                        *(r->cold ? &pc : &pw) = r;
                else
                        *(r->cold ? &uc : &uw) = r;
        }
        printf("\nsummary\n%-50s %12s %10s %7s\n", "figure", "value", "target", "verdict");
        if (uc && pc)
                printf("%-50s %11.2fx %10s %7s\n", "raw batches/s, io_uring / pread, cold cache",
                       raw_batches_s(uc) / raw_batches_s(pc), "-", "-");
        if (uw && pw)
                printf("%-50s %11.2fx %10s %7s\n", "raw batches/s, io_uring / pread, warm cache",
                       raw_batches_s(uw) / raw_batches_s(pw), "-", "-");
        if (uw && res[1].ran)
                printf("%-50s %11.0fx %10s %7s\n",
                       "headroom: raw warm batches/s / training steps/s",
                       raw_batches_s(uw) * res[1].step_s / res[1].steps, "-", "-");
        for (int i = 1; i < 3; i++) {
                if (!res[i].ran)
                        continue;
                snprintf(v, sizeof(v), "%.3f %%", wait_pct(&res[i]));
                printf("%-36s %-13s %12s %10s %7s\n", "data-wait fraction, training,",
                       i == 1 ? "warm cache" : "cold cache", v, "< 1 %",
                       verdict(wait_pct(&res[i]) < WAIT_TARGET_PCT));
        }
        if (res[0].ran && res[1].ran) {
                double ratio = tok_s_median(&res[1]) / tok_s_median(&res[0]);
                printf("%-50s %12.3f %10s %7s\n", "tokens/s (median step), loader warm / corpus",
                       ratio, ">= 0.95", verdict(ratio >= RATIO_TARGET));
                printf("%-50s %12.3f %10s %7s\n", "tokens/s (mean), loader warm / corpus",
                       tok_s(&res[1]) / tok_s(&res[0]), "-", "-");
        }
        if (res[0].ran && res[2].ran)
                printf("%-50s %12.3f %10s %7s\n", "tokens/s (median step), loader cold / corpus",
                       tok_s_median(&res[2]) / tok_s_median(&res[0]), "-", "-");
}

/* ---- options, main ---- */

static void usage(FILE *f) {
        fputs("Usage: loader [OPTIONS]\n"
              "Loader throughput and the trainer's data-wait fraction on a corpus cut into many "
              "files.\n\n"
              "  --corpus FILE   text to cut up (default ../shared/data/tinyshakespeare.txt;\n"
              "                  missing: the concatenated /usr/share/common-licenses/*)\n"
              "  --files N       number of files (default 300)\n"
              "  --quick         short passes (about 20 s)\n\n"
              "Cold-cache passes drop the page cache and need root.\n",
              f);
}

static int parse_args(int argc, char **argv, bench_opts *o, bool *corpus_set) {
        enum { OPT_CORPUS = 256, OPT_FILES, OPT_QUICK };
        static const struct option longopts[] = {
                { "corpus", required_argument, NULL, OPT_CORPUS },
                { "files", required_argument, NULL, OPT_FILES },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        *o = (bench_opts){ .corpus = default_corpus, .files = DEFAULT_FILES };
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_CORPUS:
                        o->corpus = optarg;
                        *corpus_set = true;
                        break;
                case OPT_FILES: {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (end == optarg || *end || v < 2 || v > MAX_FILES) {
                                fprintf(stderr, "loader: invalid --files '%s'\n", optarg);
                                return -EINVAL;
                        }
                        o->files = (int) v;
                        break;
                }
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
                fprintf(stderr, "loader: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        o->cold_batches = o->quick ? 64 : 150;
        o->warm_seconds = o->quick ? 1.0 : 4.0;
        o->warmup_steps = 2;
        /* short rounds: load on this shared machine drifts within seconds */
        o->rounds = o->quick ? 4 : 12;
        o->round_steps = o->quick ? 3 : 4;
        o->train_seconds = o->quick ? 10.0 : 60.0;
        o->cold_steps = o->quick ? 8 : 30;
        o->cold_seconds = o->quick ? 5.0 : 30.0;
        return 0;
}

int main(int argc, char **argv) {
        char tmpl[] = "/tmp/edged-bench-loader-XXXXXX", desc[PATH_MAX + 64];
        _cleanup_free_ uint8_t *data = NULL;
        const char *cold_note = NULL;
        raw_result raw[4];
        train_result res[3];
        bench_opts o;
        size_t size = 0;
        bool corpus_set = false, failed = false;
        int n_files = 0, n_raw = 0, r;
        double t_start = mono_now_s();

        blas_choose_kernel(argv); /* the kernel edged itself would use */
        if (parse_args(argc, argv, &o, &corpus_set) < 0) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        log_set_max_level(LOG_LEVEL_WARNING);
        install_signals();
        setvbuf(stdout, NULL, _IOLBF, 0);

        r = bench_load_corpus(o.corpus, corpus_set, &data, &size, desc, sizeof(desc));
        if (r < 0) {
                fprintf(stderr, "loader: no corpus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        if (!mkdtemp(tmpl)) {
                fprintf(stderr, "loader: mkdtemp: %m\n");
                return EXIT_FAILURE;
        }
        r = bench_split_corpus(tmpl, data, size, o.files, FILES_PER_DIR, 2 * (SEQ + 1), &n_files);
        if (r < 0) {
                fprintf(stderr, "loader: cannot write the corpus under %s: %s\n", tmpl,
                        strerror(-r));
                bench_remove_tree(tmpl);
                return EXIT_FAILURE;
        }
        printf("edged loader benchmark%s\n", o.quick ? " (--quick)" : "");
        printf("corpus: %s, %zu bytes, cut into %d files (%d per directory) under %s\n", desc, size,
               n_files, FILES_PER_DIR, tmpl);
        printf("BLAS: %s\n", blas_describe());
        r = drop_caches();
        bool can_drop = r >= 0;
        if (!can_drop)
                printf("note: cannot drop the page cache (%s): cold-cache passes skipped\n",
                       r == -EPERM ? "not root" : strerror(-r));

        for (int mode = 0; mode < 2 && !interrupted; mode++)
                for (int cold = can_drop ? 1 : 0; cold >= 0 && !interrupted; cold--) {
                        raw_result *rr = &raw[n_raw++];
                        r = raw_pass(tmpl, mode == 1, cold, cold ? o.cold_batches : LONG_MAX,
                                     o.warm_seconds, rr);
                        if (r < 0) {
                                printf("raw pass (%s, %s) failed: %s\n",
                                       mode ? "pread" : "io_uring", cold ? "cold" : "warm",
                                       strerror(-r));
                                failed = true;
                        }
                }
        print_raw(raw, n_raw);

        if (!interrupted) {
                r = train_bench(&o, tmpl, res, &cold_note);
                if (r < 0) {
                        printf("training failed: %s\n", strerror(-r));
                        failed = true;
                }
                print_train(&o, res, cold_note);
                print_summary(raw, n_raw, res);
        }
        bench_remove_tree(tmpl);
        if (interrupted) {
                printf("interrupted\n");
                return EXIT_FAILURE;
        }
        printf("\nbenchmark wall time %.0f s\n", mono_now_s() - t_start);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
