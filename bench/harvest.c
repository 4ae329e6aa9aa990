/* SPDX-License-Identifier: MIT */
/* Harvest benchmark (build/bench/harvest, `make bench-harvest`; root; made for 2 cores).
 *
 * Is edged invisible to the person using the machine, and does it harvest the idle CPU?
 * For each foreground workload, in the same run and interleaved, four configurations:
 *   A alone          the foreground only
 *   B edged          the real daemon (EDGED_BIN, or build/edged next to this binary) on the
 *                    real root (so its eBPF monitor loads), Profile=balanced
 *   C nice19         `nice -n 19 edged train` (SCHED_OTHER, no policy: the BOINC way)
 *   D edged-nobrake  as B with MaxForegroundDelayMs=1000 (the interference brake off)
 * Schedule: for each repeat, for each configuration in the order A B C D, the background is
 * started once (B, D: until the daemon runs and has done a step; C: until it has done two
 * steps), then every workload runs in turn against it, then it is stopped. So A B C D A B C
 * D ... at the block level; each workload's runs of the four configurations are about one
 * block apart. Before each workload under B/D the bench waits (bounded) for the daemon to be
 * running again, restarts it when it is paused for interference (a brake trip lasts 20 s and
 * more, and would otherwise decide the next workload's figures), and records the state it
 * was in at the start. Default: 5 repeats of 1.2 s runs (bursts: 3 s), under 10 minutes on a
 * quiet machine; more when the brake trips and the daemon is restarted often.
 *
 * Workloads (fixed work, sized once at start-up from a calibration run on this machine):
 *   cyclic     cyclictest -S -m -i 1000 (one thread per CPU, SCHED_OTHER): wakeup latency
 *   cyclic-rt  the same at -p 80 (SCHED_FIFO)
 *   pingpong   two threads waking each other through pipes after a 0.5 ms sleep: the
 *              latency from write() to the reader running, both ways
 *   bursts     20 ms of CPU work every 100 ms (typing, scrolling): each burst's completion
 *              time from its scheduled start
 *   xz1, xz2   xz -3 -T1 / -T2 --block-size=1MiB over a file of transformed copies of the
 *              corpus (page cache; no cross-copy matches): wall time
 *   stream1    1 thread memcpy'ing 256 MiB arrays (STREAM copy): wall time and GB/s; the
 *              trainer gets the other core and competes for memory bandwidth
 *   stream     the same with 2 threads
 * Definitions (per run, over the foreground's own window t0..t1, taken inside the forked
 * runner that starts and waits for the workload):
 *   wall            t1 - t0
 *   foreground CPU  rusage of the runner and its waited children over the window
 *   idle available  ncpus * wall - foreground CPU (core-seconds the foreground left)
 *   trainer CPU     B/D: CPU time of the daemon's threads but the main one (the event
 *                   loop, which only samples and talks); C: of all the trainer's threads.
 *                   From a cgroup of the background's own (cgroup-cpu.h: it keeps the time
 *                   of worker threads that end when the core grant shrinks), less the main
 *                   thread's schedstat; else the live threads' schedstat (ns)
 *   harvested       trainer CPU / idle available
 *   tokens/s        B/D: the status "tokens" difference / wall; C: steps from its progress
 *                   line * B*T (4*256) / wall
 *   slowdown        per repeat, the figure / the same repeat's alone figure (wall for xz and
 *                   stream, burst p99 for bursts); median [min-max] over repeats
 *   beyond spread   the configuration's [min, max] of the raw figure does not overlap
 *                   alone's
 *   others          /proc/stat busy (user nice system irq softirq) - foreground - trainer:
 *                   other processes (and edged's event loop), % of all CPUs
 *   PSI             /proc/pressure/{memory,cpu} "some"/"full" total deltas, % of wall
 * Targets (issue 9): xz slowdown with edged <= 2 % and below nice 19's; p99 wakeup latency
 * within +50 us of alone; burst p99 within +5 %; harvested >= 90 % when the foreground
 * leaves a core idle. Memory bandwidth: measured, with what the daemon did about it.
 * Output: tables on stdout, every raw run in a CSV, and an SVG plot through gnuplot. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench-corpus.h"
#include "cgroup-cpu.h"
#include "macros.h"
#include "time-util.h"

#define N_FILES 30
#define TRAIN_B 4
#define TRAIN_T 256
#define BURST_PERIOD_S 0.100
#define BURST_WORK_S 0.020
#define STREAM_THREADS 2             /* at most */
#define STREAM_BYTES (256u << 20)    /* per array, two arrays per thread: far past the LLC */
#define XZ_BLOCK "--block-size=1MiB" /* so -T2 keeps both threads busy to the end */
#define PINGPONG_GAP_NS 500000L      /* the CPUs go idle in between: the trainer takes them */
#define CYCLIC_INTERVAL_US 1000
#define CYCLIC_HIST_US 10000
#define POLL_S 0.5
#define START_TIMEOUT_S 90.0
#define STOP_TIMEOUT_S 15.0
#define MAX_RUNS 2048
#define MAX_REPEAT 50
#define MAX_LAT_SAMPLES (1 << 21)

static const char *const default_corpus = "../shared/data/tinyshakespeare.txt";

typedef enum {
        CFG_ALONE,
        CFG_EDGED,
        CFG_NICE,
        CFG_NOBRAKE,
        _CFG_MAX,
} cfg_id;

static const char *const cfg_names[_CFG_MAX] = { "alone", "edged", "nice19", "edged-nobrake" };

typedef enum {
        KIND_LATENCY,
        KIND_BURSTS,
        KIND_THROUGHPUT,
} wl_kind;

typedef enum {
        WL_CYCLIC,
        WL_CYCLIC_RT,
        WL_PINGPONG,
        WL_BURSTS,
        WL_XZ1,
        WL_STREAM1,
        WL_STREAM,
        WL_XZ2,
        _WL_MAX,
} wl_id;

/* In the order they run: the light ones first, so the daemon starts each block running and
 * the heavy ones that pause it come last. */
typedef struct {
        const char *name, *desc;
        wl_kind kind;
        bool leaves_core; /* the foreground leaves at least one core idle: harvest target */
} wl_info;

static const wl_info workloads[_WL_MAX] = {
        [WL_CYCLIC] = { "cyclic", "cyclictest -S -m -i 1000, SCHED_OTHER", KIND_LATENCY, true },
        [WL_CYCLIC_RT] = { "cyclic-rt", "cyclictest -S -m -i 1000 -p 80, SCHED_FIFO", KIND_LATENCY,
                           true },
        [WL_PINGPONG] = { "pingpong", "pipe wakeups after a 0.5 ms sleep, 2 threads", KIND_LATENCY,
                          true },
        [WL_BURSTS] = { "bursts", "20 ms of CPU every 100 ms, completion time", KIND_BURSTS, true },
        [WL_XZ1] = { "xz1", "xz -3 -T1 of a fixed file, wall time", KIND_THROUGHPUT, true },
        /* leaves a core, but there backing off is what is wanted: no harvest target */
        [WL_STREAM1] = { "stream1", "1 thread memcpy 256 MiB arrays, wall time", KIND_THROUGHPUT,
                         false },
        [WL_STREAM] = { "stream", "2 threads memcpy 256 MiB arrays, wall time", KIND_THROUGHPUT,
                        false },
        [WL_XZ2] = { "xz2", "xz -3 -T2 of a fixed file, wall time", KIND_THROUGHPUT, false },
};

typedef struct {
        const char *corpus, *bin, *csv, *svg;
        bool corpus_set, quick;
        int repeat, idle_window;
        double seconds;
        unsigned wl_mask;
} bench_opts;

/* Work sizes, fixed for the whole run. */
typedef struct {
        uint64_t burst_iters;
        int bursts, stream_passes[STREAM_THREADS + 1]; /* by thread count */
        long cyclic_loops, pingpong_rounds;
        size_t xz1_bytes, xz2_bytes;
        double xz_mb_s, spin_ns;
        bool have_cyclictest;
} calib;

/* What the runner (the forked foreground parent) hands back. */
typedef struct {
        bool ok;
        char msg[160];
        double wall_s, fg_cpu_s, train_cpu_s, busy_s, steal_s;
        double psi_mem_some_s, psi_mem_full_s, psi_cpu_some_s;
        long long tokens;
        double p50, p99, max, mean, gbps; /* us for latency, ms for bursts */
        long samples;
} fg_shared;

typedef struct {
        bool ok;
        int repeat;
        cfg_id cfg;
        wl_id wl;
        double wall_s, fg_cpu_s, idle_avail_s, train_cpu_s, harvest, tok_s, others_pct, steal_pct;
        double psi_mem_some, psi_mem_full, psi_cpu_some, psi_mem_avg10_max;
        double p50, p99, max, mean, gbps;
        long samples;
        /* the daemon over the run, from status polls every POLL_S */
        char state0[96];
        int polls, polls_running, cores_min, cores_max, interference_pauses;
        double delay_max;
        char reasons[96];
} run_result;

static volatile sig_atomic_t interrupted;
static pid_t bg_pid, runner_pid; /* killed on every way out */
static cfg_id bg_cfg;
static char tmpdir[PATH_MAX], sock_path[PATH_MAX + 16], nice_log[PATH_MAX + 16],
        daemon_log[PATH_MAX + 16], state_dir[PATH_MAX + 32], data_dir[PATH_MAX + 16];
static run_result runs[MAX_RUNS];
static int n_runs;
static volatile uint64_t sink;

static void on_signal(int sig) {
        interrupted = 1;
}

static void install_signals(void) {
        /* a second signal kills at once (every child has PR_SET_PDEATHSIG) */
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
}

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

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* Nearest rank, of a sorted array. */
static double percentile(const double *v, long n, double q) {
        long k = (long) ceil(q * (double) n) - 1;
        return n > 0 ? v[k < 0 ? 0 : k >= n ? n - 1 : k] : NAN;
}

/* ---- files, the corpus ---- */

static int write_all_fd(int fd, const void *data, size_t n) {
        const uint8_t *p = data;

        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k < 0 ? -errno : -EIO;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

/* Copies of the corpus, each with its bytes shifted by a different amount: text-like
 * statistics within a copy, no long matches across copies (xz would find those cheaply). */
static int write_xz_input(const char *path, const uint8_t *data, size_t size, size_t bytes) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        _cleanup_free_ uint8_t *copy = malloc(size);
        int r = 0;

        if (fd < 0)
                return -errno;
        if (!copy)
                return -ENOMEM;
        for (size_t done = 0, k = 0; done < bytes && r >= 0; k++) {
                size_t n = MIN(size, bytes - done);
                for (size_t i = 0; i < n; i++)
                        copy[i] = (uint8_t) (data[i] + (uint8_t) (k * 37));
                r = write_all_fd(fd, copy, n);
                done += n;
        }
        return r;
}


/* ---- /proc ---- */

static cgroup_cpu bg_cgroup; /* the background's own cgroup, when one could be made */

static double schedstat_s(pid_t tid) {
        char p[96];
        unsigned long long run;

        snprintf(p, sizeof(p), "/proc/%d/task/%d/schedstat", (int) bg_pid, (int) tid);
        _cleanup_fclose_ FILE *f = fopen(p, "re");
        return f && fscanf(f, "%llu", &run) == 1 ? (double) run * 1e-9 : 0;
}

/* Training CPU of the background in seconds: the daemon's without its main thread (the event
 * loop, which only samples and talks), or every thread of the plain trainer. *live: the
 * schedstat run time (ns) of the live threads, which loses the time of a thread that ends
 * (the trainer stops workers when its core grant shrinks); *all: from the background's
 * cgroup, which keeps it, or -1. utime+stime would do too, but per-thread ticks are scaled
 * apart from the process total, so their difference jitters by a tick or more. */
static void train_cpu_s(double *live, double *all) {
        char path[64];
        DIR *d;

        *live = 0;
        *all = -1;
        if (bg_pid <= 0)
                return;
        *all = cgroup_cpu_usage_s(&bg_cgroup);
        if (*all >= 0 && bg_cfg != CFG_NICE)
                *all -= schedstat_s(bg_pid);
        snprintf(path, sizeof(path), "/proc/%d/task", (int) bg_pid);
        d = opendir(path);
        if (!d)
                return;
        for (struct dirent *de; (de = readdir(d));) {
                char *end;
                long tid = strtol(de->d_name, &end, 10);
                if (end == de->d_name || *end || (bg_cfg != CFG_NICE && tid == bg_pid))
                        continue;
                *live += schedstat_s((pid_t) tid);
        }
        closedir(d);
}

/* The cgroup's figure can only be larger than the live threads' (it adds ended ones); when
 * it is smaller it was read stale (cgroup v2 flushes its statistics lazily on some kernels),
 * and the live threads' figure is the better one. */
static double train_cpu_delta(const double a[2], const double b[2]) {
        double live = b[0] - a[0], all = b[1] - a[1];

        return a[1] >= 0 && b[1] >= 0 && all >= live - 0.005 ? all : live;
}

/* Scheduling of every thread of pid: how many, how many SCHED_IDLE, how many SCHED_OTHER at
 * nice 19. */
static void thread_policies(pid_t pid, int *ret_n, int *ret_idle, int *ret_nice19) {
        char path[64];
        DIR *d;

        *ret_n = *ret_idle = *ret_nice19 = 0;
        snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        d = opendir(path);
        if (!d)
                return;
        for (struct dirent *de; (de = readdir(d));) {
                char p[320], buf[2048], *save = NULL;
                if (de->d_name[0] == '.')
                        continue;
                snprintf(p, sizeof(p), "/proc/%d/task/%s/stat", (int) pid, de->d_name);
                _cleanup_close_ int fd = open(p, O_RDONLY | O_CLOEXEC);
                ssize_t k = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
                if (k <= 0)
                        continue;
                buf[k] = 0;
                char *s = strrchr(buf, ')');
                if (!s)
                        continue;
                /* field 3 (state) is token 0: nice is field 19, policy field 41 */
                long nice = 0, policy = -1;
                int i = 0;
                for (char *t = strtok_r(s + 2, " ", &save); t;
                     t = strtok_r(NULL, " ", &save), i++) {
                        if (i == 16)
                                nice = strtol(t, NULL, 10);
                        if (i == 38) {
                                policy = strtol(t, NULL, 10);
                                break;
                        }
                }
                (*ret_n)++;
                if (policy == SCHED_IDLE)
                        (*ret_idle)++;
                if (policy == SCHED_OTHER && nice == 19)
                        (*ret_nice19)++;
        }
        closedir(d);
}

/* /proc/stat, all CPUs: busy (user nice system irq softirq) and steal, in seconds. */
static void proc_stat_busy(double *ret_busy, double *ret_steal) {
        unsigned long long v[8] = { 0 };
        _cleanup_fclose_ FILE *f = fopen("/proc/stat", "re");
        double hz = (double) sysconf(_SC_CLK_TCK);

        *ret_busy = *ret_steal = 0;
        if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
                *ret_busy = (double) (v[0] + v[1] + v[2] + v[5] + v[6]) / hz;
                *ret_steal = (double) v[7] / hz;
        }
}

/* A pressure file's "some" and "full" totals (seconds) and the "some" avg10 (%). */
static void psi_read(const char *res, double *ret_some, double *ret_full, double *ret_avg10) {
        char path[64], line[256];
        _cleanup_fclose_ FILE *f = NULL;

        *ret_some = *ret_full = *ret_avg10 = 0;
        snprintf(path, sizeof(path), "/proc/pressure/%s", res);
        f = fopen(path, "re");
        while (f && fgets(line, sizeof(line), f)) {
                double a10, a60, a300;
                unsigned long long total;
                bool some = strncmp(line, "some ", 5) == 0;
                if (sscanf(line + 5, "avg10=%lf avg60=%lf avg300=%lf total=%llu", &a10, &a60, &a300,
                           &total) != 4)
                        continue;
                if (some) {
                        *ret_some = (double) total * 1e-6;
                        *ret_avg10 = a10;
                } else
                        *ret_full = (double) total * 1e-6;
        }
}

/* ---- the control socket ---- */

static json_t *request(const char *line) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = 2 };
        char buf[16384];
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ssize_t n = 0, k;

        if (fd < 0)
                return NULL;
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (strlen(sock_path) >= sizeof(sa.sun_path))
                return NULL;
        memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
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

static long long status_int(const char *field) {
        json_t *s = request("{\"cmd\":\"status\"}\n");
        long long v = s ? (long long) json_integer_value(json_object_get(s, field)) : -1;
        json_decref(s);
        return v;
}

static long long interference_pauses(void) {
        json_t *s = request("{\"cmd\":\"stats\"}\n");
        long long v = s ? (long long) json_integer_value(json_object_get(
                                  json_object_get(s, "times_paused"), "interference"))
                        : -1;
        json_decref(s);
        return v;
}

/* Steps of the nice trainer from the last "step N/" of its progress line, or -1. */
static long nice_steps(void) {
        char buf[4096];
        _cleanup_close_ int fd = open(nice_log, O_RDONLY | O_CLOEXEC);
        off_t end = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
        long step = -1;

        if (end < 0)
                return -1;
        ssize_t k = pread(fd, buf, sizeof(buf) - 1, MAX(end - (off_t) sizeof(buf) + 1, 0));
        if (k <= 0)
                return -1;
        buf[k] = 0;
        for (char *p = buf; (p = strstr(p, "step ")); p += 5) {
                char *e;
                long v = strtol(p + 5, &e, 10);
                if (e != p + 5 && *e == '/')
                        step = v;
        }
        return step;
}

static long long bg_tokens(void) {
        if (bg_pid <= 0)
                return 0;
        if (bg_cfg == CFG_NICE) {
                long s = nice_steps();
                return s < 0 ? -1 : (long long) s * TRAIN_B * TRAIN_T;
        }
        return status_int("tokens");
}

/* ---- the workloads (in the runner process) ---- */

static uint64_t spin(uint64_t iters) {
        uint64_t x = 88172645463325252ull;

        for (uint64_t i = 0; i < iters; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
        }
        return x;
}

static void ts_add(struct timespec *t, double s) {
        long ns = t->tv_nsec + (long) (s * 1e9);
        t->tv_sec += ns / 1000000000L;
        t->tv_nsec = ns % 1000000000L;
}

static double ts_s(const struct timespec *t) {
        return (double) t->tv_sec + (double) t->tv_nsec * 1e-9;
}

static void summarise(double *v, long n, fg_shared *sh, double scale) {
        double sum = 0;

        qsort(v, (size_t) n, sizeof(*v), cmp_double);
        for (long i = 0; i < n; i++)
                sum += v[i];
        sh->samples = n;
        sh->p50 = percentile(v, n, 0.50) * scale;
        sh->p99 = percentile(v, n, 0.99) * scale;
        sh->max = n > 0 ? v[n - 1] * scale : NAN;
        sh->mean = n > 0 ? sum / (double) n * scale : NAN;
}

static int wl_bursts(const calib *c, fg_shared *sh) {
        _cleanup_free_ double *v = calloc((size_t) c->bursts, sizeof(double));
        struct timespec next;

        if (!v)
                return -ENOMEM;
        clock_gettime(CLOCK_MONOTONIC, &next);
        for (int i = 0; i < c->bursts; i++) {
                ts_add(&next, BURST_PERIOD_S);
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
                        ;
                sink += spin(c->burst_iters);
                v[i] = mono_now_s() - ts_s(&next);
        }
        summarise(v, c->bursts, sh, 1e3);
        return 0;
}

typedef struct {
        int rd, wr;
        long rounds;
        double *lat;
} pong_arg;

static void *pong_thread(void *p) {
        pong_arg *a = p;

        for (long i = 0; i < a->rounds; i++) {
                double t;
                if (read(a->rd, &t, sizeof(t)) != sizeof(t))
                        break;
                a->lat[i] = mono_now_s() - t;
                t = mono_now_s();
                if (write(a->wr, &t, sizeof(t)) != sizeof(t))
                        break;
        }
        return NULL;
}

static int wl_pingpong(const calib *c, fg_shared *sh) {
        long n = MIN(c->pingpong_rounds, MAX_LAT_SAMPLES / 2);
        _cleanup_free_ double *v = calloc((size_t) (2 * n), sizeof(double));
        int ab[2], ba[2];
        pthread_t th;
        long done = 0;

        if (!v)
                return -ENOMEM;
        if (pipe2(ab, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(ba, O_CLOEXEC) < 0) {
                close(ab[0]);
                close(ab[1]);
                return -errno;
        }
        pong_arg a = { .rd = ab[0], .wr = ba[1], .rounds = n, .lat = v + n };
        int r = -pthread_create(&th, NULL, pong_thread, &a);
        for (long i = 0; r == 0 && i < n; i++) {
                struct timespec gap = { .tv_nsec = PINGPONG_GAP_NS };
                double t;
                nanosleep(&gap, NULL);
                t = mono_now_s();
                if (write(ab[1], &t, sizeof(t)) != sizeof(t) ||
                    read(ba[0], &t, sizeof(t)) != sizeof(t))
                        break;
                v[i] = mono_now_s() - t;
                done++;
        }
        close(ab[1]); /* the reader sees EOF should we have stopped early */
        if (r == 0)
                pthread_join(th, NULL);
        close(ab[0]);
        close(ba[0]);
        close(ba[1]);
        if (r < 0 || done < n)
                return r < 0 ? r : -EIO;
        summarise(v, 2 * n, sh, 1e6);
        return 0;
}

typedef struct {
        uint8_t *src, *dst;
        int passes;
} stream_arg;

static void *stream_thread(void *p) {
        stream_arg *a = p;

        for (int i = 0; i < a->passes; i++)
                memcpy(a->dst, a->src, STREAM_BYTES);
        return NULL;
}

static void stream_free(stream_arg *a) {
        for (int i = 0; i < STREAM_THREADS; i++) {
                free(a[i].src);
                free(a[i].dst);
                a[i].src = a[i].dst = NULL;
        }
}

/* The arrays, touched: the timed window is then the copying only. */
static int stream_setup(stream_arg *a, int threads, int passes) {
        for (int i = 0; i < threads; i++) {
                a[i].src = malloc(STREAM_BYTES);
                a[i].dst = malloc(STREAM_BYTES);
                a[i].passes = passes;
                if (!a[i].src || !a[i].dst) {
                        stream_free(a);
                        return -ENOMEM;
                }
                memset(a[i].src, i + 1, STREAM_BYTES);
                memset(a[i].dst, 0, STREAM_BYTES);
        }
        return 0;
}

/* STREAM copy with 'threads' threads; GB/s counts bytes read and written. */
static int stream_copy(stream_arg *a, int threads, double *ret_gbps) {
        pthread_t th[STREAM_THREADS];
        double t0 = mono_now_s();
        int r = 0, started = 0;

        for (; started < threads; started++) {
                r = -pthread_create(&th[started], NULL, stream_thread, &a[started]);
                if (r < 0)
                        break;
        }
        for (int i = 0; i < started; i++)
                pthread_join(th[i], NULL);
        double wall = mono_now_s() - t0;
        *ret_gbps = 2.0 * STREAM_BYTES * (double) a[0].passes * threads / wall / 1e9;
        return r;
}

/* Runs argv with stdout to out_path (NULL: /dev/null) and waits; 0 if it exited 0. */
static int run_program(char *const argv[], const char *out_path) {
        pid_t parent = getpid(), p;
        int status;

        fflush(NULL);
        p = fork();
        if (p < 0)
                return -errno;
        if (p == 0) {
                int fd = open(out_path ? out_path : "/dev/null",
                              O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(127);
                if (fd >= 0)
                        dup2(fd, STDOUT_FILENO);
                execvp(argv[0], argv);
                _exit(127);
        }
        while (waitpid(p, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* cyclictest's histogram (-h): one line per microsecond, a count per thread. */
static int parse_cyclic(const char *path, fg_shared *sh) {
        _cleanup_free_ long *hist = calloc(CYCLIC_HIST_US + 1, sizeof(long));
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char line[512];
        long total = 0, over = 0;
        double max = 0;

        if (!hist)
                return -ENOMEM;
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                char *p, *e;
                if (line[0] == '#') {
                        bool is_max = strncmp(line, "# Max Latencies:", 16) == 0,
                             is_over = strncmp(line, "# Histogram Overflows:", 22) == 0;
                        if (!is_max && !is_over)
                                continue;
                        for (p = strchr(line, ':') + 1;; p = e) {
                                long v = strtol(p, &e, 10);
                                if (e == p)
                                        break;
                                if (is_max)
                                        max = MAX(max, (double) v);
                                else
                                        over += v;
                        }
                        continue;
                }
                long bucket = strtol(line, &e, 10);
                if (e == line || bucket < 0 || bucket > CYCLIC_HIST_US)
                        continue;
                for (p = e;; p = e) {
                        long v = strtol(p, &e, 10);
                        if (e == p)
                                break;
                        hist[bucket] += v;
                        total += v;
                }
        }
        if (total + over == 0)
                return -ENODATA;
        total += over;
        double q[2] = { 0.50, 0.99 }, out[2] = { max, max }, sum = 0;
        for (int j = 0; j < 2; j++) {
                long need = (long) ceil(q[j] * (double) total), cum = 0;
                for (long b = 0; b <= CYCLIC_HIST_US; b++) {
                        cum += hist[b];
                        if (cum >= need) {
                                out[j] = (double) b;
                                break;
                        }
                }
        }
        for (long b = 0; b <= CYCLIC_HIST_US; b++)
                sum += (double) b * (double) hist[b];
        sh->samples = total;
        sh->p50 = out[0];
        sh->p99 = out[1];
        sh->max = max;
        sh->mean = (sum + max * (double) over) / (double) total; /* overflows counted at max */
        return 0;
}

static int wl_cyclic(const calib *c, bool rt, fg_shared *sh) {
        char loops[32], hist[32], out[PATH_MAX + 32];
        char *argv[] = { (char *) "cyclictest",
                         (char *) "-q",
                         (char *) "-m",
                         (char *) "-S",
                         (char *) "-i",
                         (char *) "1000",
                         (char *) "-l",
                         loops,
                         (char *) "-h",
                         hist,
                         rt ? (char *) "-p" : NULL,
                         (char *) "80",
                         NULL };
        int r;

        snprintf(loops, sizeof(loops), "%ld", c->cyclic_loops);
        snprintf(hist, sizeof(hist), "%d", CYCLIC_HIST_US);
        snprintf(out, sizeof(out), "%s/cyclictest.out", tmpdir);
        r = run_program(argv, out);
        if (r < 0)
                return r;
        return parse_cyclic(out, sh);
}

static int wl_xz(const calib *c, int threads, fg_shared *sh) {
        char in[PATH_MAX + 16];
        char *argv[] = { (char *) "xz",
                         threads == 1 ? (char *) "-T1" : (char *) "-T2",
                         (char *) "-3",
                         (char *) XZ_BLOCK,
                         (char *) "-c",
                         (char *) "-k",
                         in,
                         NULL };

        snprintf(in, sizeof(in), "%s/xz%d.in", tmpdir, threads);
        return run_program(argv, NULL);
}

typedef struct {
        double t, train[2], busy, steal, mem_some, mem_full, cpu_some;
        long long tokens;
} snap;

static void snap_take(snap *s) {
        double a10;

        s->tokens = bg_tokens();
        train_cpu_s(&s->train[0], &s->train[1]);
        proc_stat_busy(&s->busy, &s->steal);
        psi_read("memory", &s->mem_some, &s->mem_full, &a10);
        psi_read("cpu", &s->cpu_some, &a10, &a10);
        s->t = mono_now_s();
}

static double cpu_self_children(bool children) {
        struct rusage ru;
        getrusage(children ? RUSAGE_CHILDREN : RUSAGE_SELF, &ru);
        return (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec * 1e-6 +
               (double) ru.ru_stime.tv_sec + (double) ru.ru_stime.tv_usec * 1e-6;
}

/* The foreground's parent: takes the figures around the workload, runs it, hands back. */
static _Noreturn void runner_main(const calib *c, wl_id wl, fg_shared *sh, pid_t parent) {
        snap a, b;
        int r = 0;

        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
                _exit(127);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);

        stream_arg st[STREAM_THREADS] = {};
        int sthreads = wl == WL_STREAM1 ? 1 : STREAM_THREADS;
        if ((wl == WL_STREAM || wl == WL_STREAM1) &&
            stream_setup(st, sthreads, c->stream_passes[sthreads]) < 0)
                _exit(1);
        snap_take(&a);
        double cpu0 = cpu_self_children(false) + cpu_self_children(true);
        switch (wl) {
        case WL_CYCLIC:
        case WL_CYCLIC_RT:
                r = wl_cyclic(c, wl == WL_CYCLIC_RT, sh);
                break;
        case WL_PINGPONG:
                r = wl_pingpong(c, sh);
                break;
        case WL_BURSTS:
                r = wl_bursts(c, sh);
                break;
        case WL_XZ1:
        case WL_XZ2:
                r = wl_xz(c, wl == WL_XZ1 ? 1 : 2, sh);
                break;
        case WL_STREAM:
        case WL_STREAM1:
                r = stream_copy(st, sthreads, &sh->gbps);
                break;
        default:
                r = -EINVAL;
        }
        double cpu1 = cpu_self_children(false) + cpu_self_children(true);
        snap_take(&b);
        sh->wall_s = b.t - a.t;
        sh->fg_cpu_s = cpu1 - cpu0;
        sh->train_cpu_s = train_cpu_delta(a.train, b.train);
        sh->busy_s = b.busy - a.busy;
        sh->steal_s = b.steal - a.steal;
        sh->psi_mem_some_s = b.mem_some - a.mem_some;
        sh->psi_mem_full_s = b.mem_full - a.mem_full;
        sh->psi_cpu_some_s = b.cpu_some - a.cpu_some;
        sh->tokens = a.tokens >= 0 && b.tokens >= 0 ? b.tokens - a.tokens : -1;
        if (r < 0)
                snprintf(sh->msg, sizeof(sh->msg), "%s failed: %s", workloads[wl].name,
                         strerror(-r));
        sh->ok = r >= 0;
        _exit(r < 0 ? 1 : 0);
}

/* ---- backgrounds ---- */

static bool bg_alive(void) {
        int status;

        if (bg_pid <= 0)
                return false;
        if (waitpid(bg_pid, &status, WNOHANG) == bg_pid) {
                bg_pid = 0;
                return false;
        }
        return true;
}

static void print_log_tail(const char *log) {
        char buf[2048];
        _cleanup_close_ int fd = open(log, O_RDONLY | O_CLOEXEC);
        off_t end = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
        ssize_t k =
                end < 0 ? -1
                        : pread(fd, buf, sizeof(buf) - 1, MAX(end - (off_t) sizeof(buf) + 1, 0));

        buf[k > 0 ? k : 0] = 0;
        /* the progress line rewrites itself with \r: show its last state only */
        for (char *p = buf; (p = strchr(p, '\r'));)
                *p = '\n';
        printf("--- end of %s:\n%s\n---\n", log, buf);
}

/* SIGTERM (the daemon checkpoints and exits) or SIGKILL (the plain trainer has nothing to
 * keep), SIGKILL after STOP_TIMEOUT_S. */
static void bg_stop(void) {
        double t0 = mono_now_s();
        int status;

        if (bg_pid <= 0)
                return;
        kill(bg_pid, bg_cfg == CFG_NICE ? SIGKILL : SIGTERM);
        while (mono_now_s() - t0 < STOP_TIMEOUT_S) {
                pid_t p = waitpid(bg_pid, &status, WNOHANG);
                if (p == bg_pid || (p < 0 && errno == ECHILD)) {
                        bg_pid = 0;
                        break;
                }
                struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
                nanosleep(&ts, NULL); /* not sleep_s: this runs after an interrupt too */
        }
        if (bg_pid > 0) {
                printf("background did not exit within %.0f s: killed\n", STOP_TIMEOUT_S);
                kill(bg_pid, SIGKILL);
                (void) waitpid(bg_pid, &status, 0);
                bg_pid = 0;
        }
        if (state_dir[0]) {
                bench_remove_tree(state_dir);
                state_dir[0] = 0;
        }
}

static int bg_fork(char *const argv[], const char *log) {
        pid_t parent = getpid();

        fflush(NULL);
        bg_pid = fork();
        if (bg_pid < 0) {
                bg_pid = 0;
                return -errno;
        }
        if (bg_pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(127);
                (void) cgroup_cpu_join(&bg_cgroup, getpid());
                if (fd >= 0) {
                        dup2(fd, STDOUT_FILENO);
                        dup2(fd, STDERR_FILENO);
                }
                execvp(argv[0], argv);
                _exit(127);
        }
        return 0;
}

/* The daemon: Profile=balanced, a short idle window so it starts within the warm-up, no
 * periodic checkpoints (their writes would be noise); nobrake: MaxForegroundDelayMs=1000. */
static int start_daemon(const bench_opts *o, cfg_id cfg, int rep, double bound_s, double timeout_s,
                        char *why, size_t why_size) {
        static int n_started;
        char conf[PATH_MAX + 32], text[PATH_MAX + 512], run_s[32];
        int r;

        snprintf(conf, sizeof(conf), "%s/edged-%s.conf", tmpdir, cfg_names[cfg]);
        snprintf(text, sizeof(text),
                 "[Policy]\nProfile=balanced\nIdleWindowSec=%d\n%s"
                 "[Daemon]\nDataDirectory=%s\nModel=small\nCheckpointIntervalSec=86400\n",
                 o->idle_window, cfg == CFG_NOBRAKE ? "MaxForegroundDelayMs=1000\n" : "", data_dir);
        r = bench_write_file(conf, text, strlen(text));
        if (r < 0)
                return r;
        snprintf(state_dir, sizeof(state_dir), "%s/state-%s-%d-%d", tmpdir, cfg_names[cfg], rep,
                 n_started++);
        if (mkdir(state_dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        snprintf(run_s, sizeof(run_s), "%.0f", bound_s);
        (void) unlink(sock_path);
        char *argv[] = { (char *) o->bin,
                         (char *) "--config",
                         conf,
                         (char *) "--state-dir",
                         state_dir,
                         (char *) "--control",
                         sock_path,
                         (char *) "--run-seconds",
                         run_s,
                         NULL };
        bg_cfg = cfg;
        r = bg_fork(argv, daemon_log);
        if (r < 0)
                return r;

        double t0 = mono_now_s();
        while (!interrupted && mono_now_s() - t0 < timeout_s) {
                if (!bg_alive()) {
                        snprintf(why, why_size, "edged exited during start-up");
                        return -ECHILD;
                }
                json_t *s = request("{\"cmd\":\"status\"}\n");
                bool up = false;
                if (s) {
                        up = strcmp(json_str(s, "state"), "running") == 0 &&
                             json_integer_value(json_object_get(s, "step")) > 0;
                        snprintf(why, why_size, "state %s, reason %s, cpu source %s%s%s",
                                 json_str(s, "state"), json_str(s, "reason"),
                                 json_str(s, "cpu_source"),
                                 *json_str(s, "cpu_source_why") ? ": " : "",
                                 json_str(s, "cpu_source_why"));
                        json_decref(s);
                }
                if (up)
                        return 0;
                sleep_s(0.2);
        }
        return interrupted ? -EINTR : -ETIMEDOUT;
}

static int start_nice(const bench_opts *o, char *why, size_t why_size) {
        char *argv[] = { (char *) "nice",
                         (char *) "-n",
                         (char *) "19",
                         (char *) o->bin,
                         (char *) "train",
                         (char *) "--data",
                         data_dir,
                         (char *) "--config",
                         (char *) "small",
                         (char *) "--steps",
                         (char *) "1000000",
                         (char *) "--batch",
                         (char *) "4",
                         (char *) "--checkpoint-every",
                         (char *) "0",
                         (char *) "--sample-tokens",
                         (char *) "0",
                         (char *) "--progress=line",
                         NULL };
        int r;

        (void) unlink(nice_log);
        bg_cfg = CFG_NICE;
        r = bg_fork(argv, nice_log);
        if (r < 0)
                return r;
        double t0 = mono_now_s();
        while (!interrupted && mono_now_s() - t0 < START_TIMEOUT_S) {
                if (!bg_alive()) {
                        snprintf(why, why_size, "edged train exited during start-up");
                        return -ECHILD;
                }
                if (nice_steps() >= 2)
                        return 0;
                sleep_s(0.2);
        }
        snprintf(why, why_size, "no two steps within %.0f s", START_TIMEOUT_S);
        return interrupted ? -EINTR : -ETIMEDOUT;
}

/* Under B/D: wait (bounded) until the daemon runs again; its state at the start. */
static void wait_daemon_running(double timeout_s, char *state, size_t size) {
        double t0 = mono_now_s();

        snprintf(state, size, "?");
        while (!interrupted) {
                json_t *s = request("{\"cmd\":\"status\"}\n");
                bool running = false;
                if (s) {
                        running = strcmp(json_str(s, "state"), "running") == 0;
                        if (running)
                                snprintf(state, size, "running/%lld",
                                         (long long) json_integer_value(
                                                 json_object_get(s, "cores")));
                        else
                                snprintf(state, size, "%s/%s", json_str(s, "state"),
                                         json_str(s, "reason"));
                        json_decref(s);
                }
                if (running || mono_now_s() - t0 >= timeout_s)
                        return;
                sleep_s(0.2);
        }
}

/* A brake pause lasts POLICY_BRAKE_QUIET_SEC (20 s) past the last excess and then gives back
 * one core per 20 s: so that one workload's trip does not decide the next one's harvest, a
 * daemon still paused for interference after a bounded wait is restarted (fresh policy
 * state); the run's start state says so. A not-idle pause ends by itself once the idle
 * window sees the machine idle again (a restart would not help: it waits for that too). */
static void restart_if_stuck(const bench_opts *o, cfg_id cfg, int rep, double bound_s, char *note,
                             size_t size) {
        char st[48], why[256] = "";

        /* no waiting for a brake pause: it lasts 20 s at least */
        wait_daemon_running(0, st, sizeof(st));
        if (!strstr(st, "interference"))
                wait_daemon_running(o->idle_window + 4.0, st, sizeof(st));
        if (interrupted || !strstr(st, "interference"))
                return;
        bg_stop();
        int r = start_daemon(o, cfg, rep, bound_s, 2.0 * o->idle_window + 10.0, why, sizeof(why));
        snprintf(note, size, "restarted(%s)%s", st, r < 0 ? "!" : "");
        if (r < 0)
                printf("  restart of edged after '%s': %s (%s)\n", st, strerror(-r), why);
}

/* ---- one run ---- */

static void add_reason(char *buf, size_t size, const char *reason) {
        size_t n = strlen(buf);
        char *p = strstr(buf, reason);

        /* a list of distinct reasons, "not-idle interference" */
        if (!*reason || (p && (p == buf || p[-1] == ' ') &&
                         (p[strlen(reason)] == 0 || p[strlen(reason)] == ' ')))
                return;
        snprintf(buf + n, size - n, "%s%s", n ? " " : "", reason);
}

static int run_one(const bench_opts *o, const calib *c, cfg_id cfg, wl_id wl, int rep,
                   const char *note, fg_shared *sh, run_result *res) {
        bool daemon = cfg == CFG_EDGED || cfg == CFG_NOBRAKE;
        long long ip0 = -1, ip1;
        double a10_max = 0, last_poll = 0, ncpu = (double) sysconf(_SC_NPROCESSORS_ONLN);
        pid_t parent = getpid();
        int status = 0;

        memset(res, 0, sizeof(*res));
        res->repeat = rep;
        res->cfg = cfg;
        res->wl = wl;
        res->cores_min = INT_MAX;
        res->cores_max = -1;
        snprintf(res->state0, sizeof(res->state0), "-");
        if (daemon) {
                char st[48];
                wait_daemon_running(o->idle_window + 4.0, st, sizeof(st));
                snprintf(res->state0, sizeof(res->state0), "%s%s", note, st);
                ip0 = interference_pauses();
        } else if (cfg == CFG_NICE)
                snprintf(res->state0, sizeof(res->state0), bg_alive() ? "running" : "exited");
        if (!sleep_s(0.2)) /* the previous workload's exit settles */
                return -EINTR;

        memset(sh, 0, sizeof(*sh));
        fflush(NULL);
        runner_pid = fork();
        if (runner_pid < 0) {
                runner_pid = 0;
                return -errno;
        }
        if (runner_pid == 0)
                runner_main(c, wl, sh, parent);

        /* bounded: every workload is sized to o->seconds (bursts: their count) */
        double t0 = mono_now_s(), limit = 10.0 * MAX(o->seconds, c->bursts * BURST_PERIOD_S) + 60;
        while (!interrupted) {
                pid_t p = waitpid(runner_pid, &status, WNOHANG);
                if (p == runner_pid)
                        break;
                double now = mono_now_s();
                if (now - t0 > limit) {
                        printf("  %s/%s: no end after %.0f s: killed\n", workloads[wl].name,
                               cfg_names[cfg], limit);
                        kill(runner_pid, SIGKILL);
                        (void) waitpid(runner_pid, &status, 0);
                        break;
                }
                if (now - last_poll >= POLL_S) {
                        double some, full, a10;
                        last_poll = now;
                        psi_read("memory", &some, &full, &a10);
                        a10_max = MAX(a10_max, a10);
                        json_t *s = daemon ? request("{\"cmd\":\"status\"}\n") : NULL;
                        if (s) {
                                json_t *d = json_object_get(s, "foreground_delay_ms_per_s");
                                int cores = (int) json_integer_value(json_object_get(s, "cores"));
                                res->polls++;
                                if (strcmp(json_str(s, "state"), "running") == 0) {
                                        res->polls_running++;
                                        res->cores_min = MIN(res->cores_min, cores);
                                        res->cores_max = MAX(res->cores_max, cores);
                                } else
                                        add_reason(res->reasons, sizeof(res->reasons),
                                                   json_str(s, "reason"));
                                if (json_is_number(d))
                                        res->delay_max = MAX(res->delay_max, json_number_value(d));
                                json_decref(s);
                        }
                }
                struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
        if (interrupted) {
                kill(runner_pid, SIGKILL);
                (void) waitpid(runner_pid, &status, 0);
                runner_pid = 0;
                return -EINTR;
        }
        runner_pid = 0;
        if (daemon) {
                ip1 = interference_pauses();
                res->interference_pauses = ip0 >= 0 && ip1 >= ip0 ? (int) (ip1 - ip0) : -1;
        }
        if (res->cores_min == INT_MAX)
                res->cores_min = -1;
        if (!sh->ok) {
                printf("  %s/%s: %s\n", workloads[wl].name, cfg_names[cfg],
                       sh->msg[0] ? sh->msg : "the runner died");
                return 0; /* recorded as failed, the bench goes on */
        }
        res->ok = true;
        res->wall_s = sh->wall_s;
        res->fg_cpu_s = sh->fg_cpu_s;
        res->idle_avail_s = ncpu * sh->wall_s - sh->fg_cpu_s;
        res->train_cpu_s = sh->train_cpu_s;
        /* with (almost) nothing left to harvest the ratio is noise: not given */
        res->harvest = cfg == CFG_ALONE || res->idle_avail_s < 0.05 * ncpu * sh->wall_s
                               ? NAN
                               : sh->train_cpu_s / res->idle_avail_s;
        res->tok_s = cfg == CFG_ALONE || sh->tokens < 0 ? NAN : (double) sh->tokens / sh->wall_s;
        res->others_pct =
                100.0 * MAX(0.0, sh->busy_s - sh->fg_cpu_s - sh->train_cpu_s) / (ncpu * sh->wall_s);
        res->steal_pct = 100.0 * sh->steal_s / (ncpu * sh->wall_s);
        res->psi_mem_some = 100.0 * sh->psi_mem_some_s / sh->wall_s;
        res->psi_mem_full = 100.0 * sh->psi_mem_full_s / sh->wall_s;
        res->psi_cpu_some = 100.0 * sh->psi_cpu_some_s / sh->wall_s;
        res->psi_mem_avg10_max = a10_max;
        res->p50 = sh->p50;
        res->p99 = sh->p99;
        res->max = sh->max;
        res->mean = sh->mean;
        res->gbps = sh->gbps;
        res->samples = sh->samples;
        return 0;
}

static void print_run(const run_result *r) {
        printf("  r%d %-13s %-9s ", r->repeat + 1, cfg_names[r->cfg], workloads[r->wl].name);
        if (!r->ok) {
                printf("failed\n");
                return;
        }
        printf("wall %6.2f s fg %5.2f cs", r->wall_s, r->fg_cpu_s);
        if (r->cfg != CFG_ALONE)
                printf(" harvested %5.1f %%", 100.0 * r->harvest);
        switch (workloads[r->wl].kind) {
        case KIND_LATENCY:
                printf(" p50 %5.0f p99 %6.0f max %6.0f us", r->p50, r->p99, r->max);
                break;
        case KIND_BURSTS:
                printf(" burst mean %5.1f p99 %5.1f ms", r->mean, r->p99);
                break;
        case KIND_THROUGHPUT:
                if (r->wl == WL_STREAM || r->wl == WL_STREAM1)
                        printf(" %5.2f GB/s", r->gbps);
                break;
        }
        printf(" others %4.1f %%", r->others_pct);
        if (r->cfg == CFG_EDGED || r->cfg == CFG_NOBRAKE)
                printf(" [start %s, running %d/%d polls%s%s]", r->state0, r->polls_running,
                       r->polls, r->reasons[0] ? ", paused: " : "", r->reasons);
        printf("\n");
}

/* ---- calibration ---- */

static int calibrate(const bench_opts *o, const uint8_t *data, size_t size, calib *c) {
        char path[PATH_MAX + 16];
        double best = INFINITY;
        int r;

        memset(c, 0, sizeof(*c));
        /* the spin loop: the fastest of a few tries (other load only slows it) */
        for (int i = 0; i < 5; i++) {
                double t0 = mono_now_s();
                sink += spin(2000000);
                best = MIN(best, mono_now_s() - t0);
        }
        c->spin_ns = best / 2000000 * 1e9;
        c->burst_iters = (uint64_t) (BURST_WORK_S / (best / 2000000));
        c->bursts = (int) MAX(30.0, o->seconds / BURST_PERIOD_S); /* p99 of 30 is their max */
        c->cyclic_loops = (long) (o->seconds * 1e6 / CYCLIC_INTERVAL_US);
        c->pingpong_rounds = (long) (o->seconds / (PINGPONG_GAP_NS * 1e-9 + 60e-6));

        /* the faster of two tries at each thread count; bytes a pass moves over the rate */
        for (int t = 1; t <= STREAM_THREADS; t++) {
                stream_arg st[STREAM_THREADS] = {};
                double gbps = 0, best_gbps = 0;
                r = stream_setup(st, t, 3);
                for (int k = 0; k < 2 && r >= 0; k++) {
                        r = stream_copy(st, t, &gbps);
                        best_gbps = MAX(best_gbps, gbps);
                }
                stream_free(st);
                if (r < 0)
                        return r;
                c->stream_passes[t] = (int) MAX(
                        2.0, round(o->seconds * best_gbps * 1e9 / (2.0 * STREAM_BYTES * t)));
        }

        /* xz: 2 MiB at -T1, the same flags as the runs */
        snprintf(path, sizeof(path), "%s/xz-cal.in", tmpdir);
        r = write_xz_input(path, data, size, 2u << 20);
        if (r < 0)
                return r;
        char *argv[] = { (char *) "xz", (char *) "-T1", (char *) "-3", (char *) XZ_BLOCK,
                         (char *) "-c", (char *) "-k",  path,          NULL };
        double dt = INFINITY;
        for (int k = 0; k < 2 && r >= 0; k++) { /* the faster of two: other load only slows */
                double t0 = mono_now_s();
                r = run_program(argv, NULL);
                dt = MIN(dt, mono_now_s() - t0);
        }
        (void) unlink(path);
        if (r < 0) {
                printf("xz failed (is xz-utils installed?)\n");
                return r;
        }
        c->xz_mb_s = 2.0 * 1.048576 / dt;
        c->xz1_bytes = (size_t) MAX(4e6, MIN(1e9, c->xz_mb_s * 1e6 * o->seconds));
        c->xz2_bytes = 2 * c->xz1_bytes;
        for (int t = 1; t <= 2 && r >= 0; t++) {
                snprintf(path, sizeof(path), "%s/xz%d.in", tmpdir, t);
                r = write_xz_input(path, data, size, t == 1 ? c->xz1_bytes : c->xz2_bytes);
        }
        c->have_cyclictest = access("/usr/bin/cyclictest", X_OK) == 0 ||
                             access("/usr/sbin/cyclictest", X_OK) == 0;
        return r;
}

/* ---- the report ---- */

typedef struct {
        double v[MAX_REPEAT];
        int n;
} series;

static void series_add(series *s, double x) {
        if (s->n < MAX_REPEAT && isfinite(x))
                s->v[s->n++] = x;
}

static double series_med(const series *s) {
        double t[MAX_REPEAT];
        memcpy(t, s->v, sizeof(double) * (size_t) s->n);
        qsort(t, (size_t) s->n, sizeof(double), cmp_double);
        if (s->n == 0)
                return NAN;
        return s->n % 2 ? t[s->n / 2] : 0.5 * (t[s->n / 2 - 1] + t[s->n / 2]);
}

static double series_min(const series *s) {
        double m = INFINITY;
        for (int i = 0; i < s->n; i++)
                m = MIN(m, s->v[i]);
        return s->n ? m : NAN;
}

static double series_max(const series *s) {
        double m = -INFINITY;
        for (int i = 0; i < s->n; i++)
                m = MAX(m, s->v[i]);
        return s->n ? m : NAN;
}

/* "med [min-max]" with prec decimals. */
static const char *fmt_range(char *buf, size_t size, const series *s, int prec, double scale) {
        if (s->n == 0)
                snprintf(buf, size, "-");
        else
                snprintf(buf, size, "%.*f [%.*f-%.*f]", prec, series_med(s) * scale, prec,
                         series_min(s) * scale, prec, series_max(s) * scale);
        return buf;
}

/* "yes, worse" when the ranges do not overlap (higher = worse for every figure used); with
 * fewer than 3 runs a side there is no spread to speak of. */
static const char *beyond(const series *x, const series *alone) {
        if (x->n == 0 || alone->n == 0)
                return "-";
        if (x->n < 3 || alone->n < 3)
                return "n < 3";
        if (series_min(x) > series_max(alone))
                return "yes, worse";
        if (series_max(x) < series_min(alone))
                return "yes, better";
        return "no";
}

typedef enum {
        F_WALL,
        F_SLOW,
        F_HARVEST,
        F_TOKS,
        F_OTHERS,
        F_P50,
        F_P99,
        F_MAX,
        F_MEAN,
        F_GBPS,
        F_PSI_MEM,
        F_PSI_MEM_FULL,
        F_PSI_CPU,
        F_RUNNING,
        F_DELAY,
        F_STEAL,
} field;

static double run_field(const run_result *r, field f) {
        switch (f) {
        case F_WALL:
                return r->wall_s;
        case F_HARVEST:
                return r->harvest;
        case F_TOKS:
                return r->tok_s;
        case F_OTHERS:
                return r->others_pct;
        case F_P50:
                return r->p50;
        case F_P99:
                return r->p99;
        case F_MAX:
                return r->max;
        case F_MEAN:
                return r->mean;
        case F_GBPS:
                return r->gbps;
        case F_PSI_MEM:
                return r->psi_mem_some;
        case F_PSI_MEM_FULL:
                return r->psi_mem_full;
        case F_PSI_CPU:
                return r->psi_cpu_some;
        case F_RUNNING:
                return r->polls > 0 ? 100.0 * r->polls_running / r->polls : NAN;
        case F_DELAY:
                return r->polls > 0 ? r->delay_max : NAN;
        case F_STEAL:
                return r->steal_pct;
        default:
                return NAN;
        }
}

static const run_result *find_run(wl_id wl, cfg_id cfg, int rep) {
        for (int i = 0; i < n_runs; i++)
                if (runs[i].ok && runs[i].wl == wl && runs[i].cfg == cfg && runs[i].repeat == rep)
                        return &runs[i];
        return NULL;
}

/* The figure a slowdown is a ratio of: wall for throughput, p99 for bursts. */
static field slow_base(wl_id wl) {
        return workloads[wl].kind == KIND_BURSTS ? F_P99 : F_WALL;
}

static void collect(wl_id wl, cfg_id cfg, field f, series *s) {
        memset(s, 0, sizeof(*s));
        for (int i = 0; i < n_runs; i++) {
                const run_result *r = &runs[i];
                if (!r->ok || r->wl != wl || r->cfg != cfg)
                        continue;
                if (f == F_SLOW) {
                        const run_result *a = find_run(wl, CFG_ALONE, r->repeat);
                        if (a)
                                series_add(s, run_field(r, slow_base(wl)) /
                                                      run_field(a, slow_base(wl)));
                } else
                        series_add(s, run_field(r, f));
        }
}

static const char *verdict(bool ok) {
        return ok ? "PASS" : "MISS";
}

static void print_tables(const bench_opts *o) {
        char b1[64], b2[64], b3[64], b4[64], b5[64];
        series s, a, h, t, x;

        printf("\n1. slowdown and harvest: median [min-max] over repeats; slowdown = the "
               "figure / the same repeat's alone\n   (wall for xz and stream, burst p99 for "
               "bursts); harvested = trainer CPU / (ncpus * wall - foreground CPU)\n");
        printf("%-9s %-13s %2s %-24s %-22s %-12s %-19s %-18s %-16s\n", "workload", "config", "n",
               "figure", "slowdown", "beyond spr.", "harvested %", "tokens/s", "others %");
        for (int w = 0; w < _WL_MAX; w++) {
                if (!(o->wl_mask & (1u << w)))
                        continue;
                bool slows = workloads[w].kind != KIND_LATENCY;
                field base = slow_base((wl_id) w);
                collect((wl_id) w, CFG_ALONE, base, &a);
                for (int c = 0; c < _CFG_MAX; c++) {
                        collect((wl_id) w, (cfg_id) c, base, &x);
                        collect((wl_id) w, (cfg_id) c, F_SLOW, &s);
                        collect((wl_id) w, (cfg_id) c, F_HARVEST, &h);
                        collect((wl_id) w, (cfg_id) c, F_TOKS, &t);
                        series oth;
                        collect((wl_id) w, (cfg_id) c, F_OTHERS, &oth);
                        if (slows)
                                snprintf(b1, sizeof(b1), "%s %s",
                                         fmt_range(b5, sizeof(b5), &x, base == F_WALL ? 2 : 1, 1),
                                         base == F_WALL ? "s" : "ms");
                        else {
                                collect((wl_id) w, (cfg_id) c, F_WALL, &x);
                                snprintf(b1, sizeof(b1), "(%s s)",
                                         fmt_range(b5, sizeof(b5), &x, 1, 1));
                        }
                        printf("%-9s %-13s %2d %-24s %-22s %-12s %-19s %-18s %-16s\n",
                               c == 0 ? workloads[w].name : "", cfg_names[c], x.n, b1,
                               slows && c ? fmt_range(b2, sizeof(b2), &s, 3, 1) : "-",
                               slows && c ? beyond(&x, &a) : "-",
                               c ? fmt_range(b3, sizeof(b3), &h, 1, 100) : "-",
                               c ? fmt_range(b4, sizeof(b4), &t, 0, 1) : "-",
                               fmt_range(b5, sizeof(b5), &oth, 1, 1));
                }
        }

        printf("\n2. latency: median [min-max] over repeats of each run's figure (us; bursts: "
               "ms); delta = median - alone's median;\n   beyond spread = the p99 ranges do not "
               "overlap\n");
        printf("%-9s %-13s %-20s %-22s %-24s %-10s %-12s\n", "workload", "config", "p50/mean",
               "p99", "max", "delta p99", "beyond spr.");
        for (int w = 0; w < _WL_MAX; w++) {
                if (!(o->wl_mask & (1u << w)) || workloads[w].kind == KIND_THROUGHPUT)
                        continue;
                bool bursts = workloads[w].kind == KIND_BURSTS;
                int prec = bursts ? 1 : 0;
                collect((wl_id) w, CFG_ALONE, F_P99, &a);
                for (int c = 0; c < _CFG_MAX; c++) {
                        series p50, p99, mx;
                        collect((wl_id) w, (cfg_id) c, bursts ? F_MEAN : F_P50, &p50);
                        collect((wl_id) w, (cfg_id) c, F_P99, &p99);
                        collect((wl_id) w, (cfg_id) c, F_MAX, &mx);
                        if (c && p99.n > 0 && a.n > 0)
                                snprintf(b4, sizeof(b4), "%+.*f", prec,
                                         series_med(&p99) - series_med(&a));
                        else
                                snprintf(b4, sizeof(b4), "-");
                        printf("%-9s %-13s %-20s %-22s %-24s %-10s %-12s\n",
                               c == 0 ? workloads[w].name : "", cfg_names[c],
                               fmt_range(b1, sizeof(b1), &p50, prec, 1),
                               fmt_range(b2, sizeof(b2), &p99, prec, 1),
                               fmt_range(b3, sizeof(b3), &mx, prec, 1), b4,
                               c ? beyond(&p99, &a) : "-");
                }
        }

        printf("\n3. the daemon and pressure: daemon state polled every %.1f s during each run "
               "(start = state when the foreground started);\n   PSI = /proc/pressure 'some' "
               "stall time, %% of wall (median); max avg10 of memory 'some' over all runs\n",
               POLL_S);
        printf("%-9s %-13s %-34s %-13s %-7s %-19s %-8s %-24s %-9s %-9s %-9s %-7s\n", "workload",
               "config", "start states", "running %", "cores", "delay ms/s", "interf.",
               "paused for", "mem some", "mem full", "cpu some", "steal %");
        for (int w = 0; w < _WL_MAX; w++) {
                if (!(o->wl_mask & (1u << w)))
                        continue;
                for (int c = 0; c < _CFG_MAX; c++) {
                        char states[128] = "", reasons[128] = "", cores[32] = "-";
                        int cmin = INT_MAX, cmax = -1, ip = 0, n = 0;
                        double a10 = 0;
                        series run, del, pm, pf, pc, st;
                        collect((wl_id) w, (cfg_id) c, F_RUNNING, &run);
                        collect((wl_id) w, (cfg_id) c, F_DELAY, &del);
                        collect((wl_id) w, (cfg_id) c, F_PSI_MEM, &pm);
                        collect((wl_id) w, (cfg_id) c, F_PSI_MEM_FULL, &pf);
                        collect((wl_id) w, (cfg_id) c, F_PSI_CPU, &pc);
                        collect((wl_id) w, (cfg_id) c, F_STEAL, &st);
                        for (int i = 0; i < n_runs; i++) {
                                const run_result *r = &runs[i];
                                if (!r->ok || (int) r->wl != w || (int) r->cfg != c)
                                        continue;
                                n++;
                                a10 = MAX(a10, r->psi_mem_avg10_max);
                                add_reason(states, sizeof(states), r->state0);
                                add_reason(reasons, sizeof(reasons), r->reasons);
                                if (r->cores_max >= 0) {
                                        cmin = MIN(cmin, r->cores_min);
                                        cmax = MAX(cmax, r->cores_max);
                                }
                                ip += MAX(r->interference_pauses, 0);
                        }
                        if (n == 0)
                                continue;
                        if (cmax >= 0)
                                snprintf(cores, sizeof(cores), "%d-%d", cmin, cmax);
                        bool d = c == CFG_EDGED || c == CFG_NOBRAKE;
                        snprintf(b5, sizeof(b5), "%d", ip);
                        printf("%-9s %-13s %-34s %-13s %-7s %-19s %-8s %-24s %-9.2f %-9.2f "
                               "%-9.2f %-7.1f\n",
                               c == 0 ? workloads[w].name : "", cfg_names[c], d ? states : "-",
                               d ? fmt_range(b1, sizeof(b1), &run, 0, 1) : "-", d ? cores : "-",
                               d ? fmt_range(b2, sizeof(b2), &del, 1, 1) : "-", d ? b5 : "-",
                               d && reasons[0] ? reasons : "-", series_med(&pm), series_med(&pf),
                               series_med(&pc), series_med(&st));
                        (void) a10;
                }
        }
        printf("running %%: share of polls in state running; cores: min-max granted while "
               "running; delay: max foreground_delay_ms_per_s\n(the brake's input, BPF); "
               "interf.: pauses for interference begun during the runs (stats times_paused)\n");
}

/* The targets, with what the figures say. */
static void print_verdicts(const bench_opts *o) {
        series e, n, a, ea;
        char b1[64], b2[64];

        printf("\nsummary (edged = configuration B, balanced profile)\n%-60s %-26s %-14s %s\n",
               "target", "measured (median [min-max])", "beyond spread", "verdict");
        int n_edged = 0;
        for (int i = 0; i < n_runs; i++)
                n_edged += runs[i].ok && runs[i].cfg == CFG_EDGED;
        if (n_edged == 0)
                printf("no run with edged (B) completed: no verdict\n");
        static const wl_id xz[] = { WL_XZ1, WL_XZ2 };
        for (size_t i = 0; i < ARRAY_SIZE(xz); i++) {
                wl_id w = xz[i];
                if (!(o->wl_mask & (1u << w)))
                        continue;
                collect((wl_id) w, CFG_EDGED, F_SLOW, &e);
                collect((wl_id) w, CFG_NICE, F_SLOW, &n);
                collect((wl_id) w, CFG_EDGED, F_WALL, &ea);
                collect((wl_id) w, CFG_ALONE, F_WALL, &a);
                if (e.n == 0)
                        continue;
                snprintf(b2, sizeof(b2), "%s slowdown with edged <= 1.02", workloads[w].name);
                printf("%-60s %-26s %-14s %s\n", b2, fmt_range(b1, sizeof(b1), &e, 3, 1),
                       beyond(&ea, &a), verdict(series_med(&e) <= 1.02));
                if (n.n > 0) {
                        snprintf(b2, sizeof(b2), "%s slowdown with edged < nice 19's (%.3f)",
                                 workloads[w].name, series_med(&n));
                        printf("%-60s %-26s %-14s %s\n", b2, fmt_range(b1, sizeof(b1), &e, 3, 1),
                               "-", verdict(series_med(&e) < series_med(&n)));
                }
        }
        for (int w = WL_CYCLIC; w <= WL_PINGPONG; w++) {
                if (!(o->wl_mask & (1u << w)))
                        continue;
                collect((wl_id) w, CFG_EDGED, F_P99, &e);
                collect((wl_id) w, CFG_ALONE, F_P99, &a);
                if (e.n == 0 || a.n == 0)
                        continue;
                double d = series_med(&e) - series_med(&a);
                snprintf(b2, sizeof(b2), "%s p99 within +50 us of alone (%.0f us)",
                         workloads[w].name, series_med(&a));
                snprintf(b1, sizeof(b1), "%+.0f us", d);
                printf("%-60s %-26s %-14s %s\n", b2, b1, beyond(&e, &a), verdict(d <= 50));
        }
        if (o->wl_mask & (1u << WL_BURSTS)) {
                collect(WL_BURSTS, CFG_EDGED, F_SLOW, &e);
                collect(WL_BURSTS, CFG_EDGED, F_P99, &ea);
                collect(WL_BURSTS, CFG_ALONE, F_P99, &a);
                if (e.n > 0)
                        printf("%-60s %-26s %-14s %s\n", "bursts p99 within +5 % of alone",
                               fmt_range(b1, sizeof(b1), &e, 3, 1), beyond(&ea, &a),
                               verdict(series_med(&e) <= 1.05));
        }
        for (int w = 0; w < _WL_MAX; w++) {
                if (!(o->wl_mask & (1u << w)) || !workloads[w].leaves_core)
                        continue;
                collect((wl_id) w, CFG_EDGED, F_HARVEST, &e);
                if (e.n == 0)
                        continue;
                snprintf(b2, sizeof(b2), "%s harvested >= 90 %% (a core left idle)",
                         workloads[w].name);
                printf("%-60s %-26s %-14s %s\n", b2, fmt_range(b1, sizeof(b1), &e, 1, 100), "-",
                       verdict(series_med(&e) >= 0.90));
        }
        static const wl_id streams[] = { WL_STREAM1, WL_STREAM };
        for (size_t k = 0; k < ARRAY_SIZE(streams); k++) {
                wl_id sw = streams[k];
                if (!(o->wl_mask & (1u << sw)))
                        continue;
                series sl[_CFG_MAX], gb;
                printf("\nmemory bandwidth (%s):", workloads[sw].name);
                for (int c = 0; c < _CFG_MAX; c++) {
                        collect(sw, (cfg_id) c, F_GBPS, &gb);
                        collect(sw, (cfg_id) c, F_SLOW, &sl[c]);
                        printf(" %s %.2f GB/s%s", cfg_names[c], series_med(&gb),
                               c + 1 < _CFG_MAX ? "," : "\n");
                }
                int reacted = 0, polls = 0, n_runs_b = 0;
                double psi = 0;
                for (int i = 0; i < n_runs; i++) {
                        const run_result *r = &runs[i];
                        if (!r->ok || r->wl != sw || r->cfg != CFG_EDGED)
                                continue;
                        n_runs_b++;
                        polls += r->polls;
                        psi = MAX(psi, r->psi_mem_some);
                        if (r->polls_running < r->polls || r->cores_min == 1 ||
                            r->interference_pauses > 0)
                                reacted++;
                }
                printf("slowdown: edged %.3f, nice19 %.3f, edged-nobrake %.3f (median). ",
                       series_med(&sl[CFG_EDGED]), series_med(&sl[CFG_NICE]),
                       series_med(&sl[CFG_NOBRAKE]));
                if (n_runs_b == 0)
                        printf("\n");
                else if (reacted == 0)
                        printf("edged did NOT react to memory-bandwidth interference: it kept "
                               "its full grant in all %d runs (%d polls); PSI memory 'some' "
                               "peaked at %.2f %% of a run.\n",
                               n_runs_b, polls, psi);
                else
                        printf("edged had fewer cores or paused in %d of %d runs (table 3 "
                               "says why: not-idle is the policy seeing busy CPUs, "
                               "interference the brake); PSI memory 'some' peaked at %.2f "
                               "%% of a run.\n",
                               reacted, n_runs_b, psi);
        }
}

static int write_csv(const char *path) {
        _cleanup_fclose_ FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        fprintf(f, "repeat,config,workload,ok,wall_s,fg_cpu_s,idle_avail_core_s,train_cpu_s,"
                   "harvested,tokens_per_s,others_pct,steal_pct,p50,p99,max,mean,latency_unit,"
                   "samples,gbps,psi_mem_some_pct,psi_mem_full_pct,psi_cpu_some_pct,"
                   "psi_mem_avg10_max,daemon_state_at_start,polls,polls_running,cores_min,"
                   "cores_max,delay_max_ms_per_s,interference_pauses,paused_reasons\n");
        for (int i = 0; i < n_runs; i++) {
                const run_result *r = &runs[i];
                fprintf(f,
                        "%d,%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.1f,%.2f,%.2f,%.3f,%.3f,%.3f,%.3f,"
                        "%s,%ld,%.3f,%.3f,%.3f,%.3f,%.2f,%s,%d,%d,%d,%d,%.3f,%d,%s\n",
                        r->repeat + 1, cfg_names[r->cfg], workloads[r->wl].name, r->ok, r->wall_s,
                        r->fg_cpu_s, r->idle_avail_s, r->train_cpu_s, r->harvest, r->tok_s,
                        r->others_pct, r->steal_pct, r->p50, r->p99, r->max, r->mean,
                        workloads[r->wl].kind == KIND_BURSTS    ? "ms"
                        : workloads[r->wl].kind == KIND_LATENCY ? "us"
                                                                : "",
                        r->samples, r->gbps, r->psi_mem_some, r->psi_mem_full, r->psi_cpu_some,
                        r->psi_mem_avg10_max, r->state0, r->polls, r->polls_running, r->cores_min,
                        r->cores_max, r->delay_max, r->interference_pauses, r->reasons);
        }
        return fflush(f) == 0 ? 0 : -errno;
}

/* Slowdown (%) against harvested (%), one point per configuration and workload that has a
 * slowdown, through gnuplot. */
static void write_plot(const bench_opts *o) {
        char dat[PATH_MAX + 8];
        FILE *f, *gp;

        if (access("/usr/bin/gnuplot", X_OK) < 0) {
                printf("plot: gnuplot is not installed (apt-get install gnuplot-nox): no %s\n",
                       o->svg);
                return;
        }
        snprintf(dat, sizeof(dat), "%s.dat", o->svg);
        f = fopen(dat, "we");
        if (!f) {
                printf("plot: %s: %m\n", dat);
                return;
        }
        int n_pts[_CFG_MAX] = { 0 };
        for (int c = 0; c < _CFG_MAX; c++) {
                fprintf(f, "\"%s\"\n", cfg_names[c]);
                for (int w = 0; w < _WL_MAX; w++) {
                        series s, h;
                        if (!(o->wl_mask & (1u << w)) || workloads[w].kind == KIND_LATENCY)
                                continue;
                        collect((wl_id) w, (cfg_id) c, F_SLOW, &s);
                        collect((wl_id) w, (cfg_id) c, F_HARVEST, &h);
                        /* harvest is not given when nothing was left: plotted at 0 */
                        if (c == CFG_ALONE)
                                fprintf(f, "0 0 %s\n", workloads[w].name);
                        else if (s.n > 0)
                                fprintf(f, "%.2f %.2f %s\n", h.n > 0 ? 100.0 * series_med(&h) : 0.0,
                                        100.0 * (series_med(&s) - 1.0), workloads[w].name);
                        else
                                continue;
                        n_pts[c]++;
                }
                fprintf(f, "\n\n");
        }
        fclose(f);
        gp = popen("gnuplot", "w");
        if (!gp) {
                printf("plot: cannot run gnuplot: %m\n");
                return;
        }
        char idx[32] = "", *q = idx;
        for (int c = 0; c < _CFG_MAX; c++)
                if (n_pts[c] > 0)
                        q += sprintf(q, "%d ", c);
        fprintf(gp,
                "set terminal svg size 900,600 dynamic font 'sans,11'\n"
                "set output '%s'\n"
                "set title 'edged harvest benchmark: foreground slowdown vs harvested idle CPU "
                "(medians)'\n"
                "set xlabel 'harvested: trainer CPU / idle CPU left by the foreground (%%)'\n"
                "set ylabel 'foreground slowdown (%%; bursts: p99)'\n"
                "set grid\nset key top left\nset xrange [-5:105]\n"
                "set arrow from -5,2 to 105,2 nohead dt 2 lc rgb 'gray'\n"
                "plot for [i in '%s'] '%s' index int(i) using 1:2 with points pt 7 ps 1.3 "
                "title columnheader(1), \\\n"
                "     for [i in '%s'] '%s' index int(i) using 1:2:3 with labels "
                "offset 0.8,0.6 font ',9' notitle\n",
                o->svg, idx, dat, idx, dat);
        int st = pclose(gp);
        if (st == 0)
                printf("plot: %s (data %s)\n", o->svg, dat);
        else
                printf("plot: gnuplot failed (status %d)\n", st);
}

/* ---- options, main ---- */

static void usage(FILE *f) {
        fputs("Usage: harvest [OPTIONS]   (root)\n"
              "Foreground slowdown, latency and harvested idle CPU: alone, beside edged\n"
              "(balanced), beside nice 19 training, beside edged without its brake.\n\n"
              "  --repeat N        repeats of every configuration (default 5)\n"
              "  --seconds S       length of each foreground run (default 1.2; bursts at least\n"
              "                    30, 3 s)\n"
              "  --only LIST       workloads, comma separated: cyclic,cyclic-rt,pingpong,\n"
              "                    bursts,xz1,stream1,stream,xz2 (default all)\n"
              "  --idle-window S   the daemon's IdleWindowSec (default 3)\n"
              "  --corpus FILE     training text (default ../shared/data/tinyshakespeare.txt;\n"
              "                    missing: the concatenated /usr/share/common-licenses/*)\n"
              "  --csv FILE        every run (default build/bench/harvest.csv)\n"
              "  --svg FILE        the plot (default build/bench/harvest.svg)\n"
              "  --quick           1 repeat (about 2-3 minutes)\n\n"
              "Environment: EDGED_BIN (default: edged next to this binary's directory, or "
              "build/edged)\n",
              f);
}

static int parse_only(const char *list, unsigned *ret) {
        _cleanup_free_ char *copy = strdup(list);
        char *save = NULL;
        unsigned m = 0;

        if (!copy)
                return -ENOMEM;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int w;
                for (w = 0; w < _WL_MAX; w++)
                        if (strcmp(t, workloads[w].name) == 0)
                                break;
                if (w == _WL_MAX) {
                        fprintf(stderr, "harvest: unknown workload '%s'\n", t);
                        return -EINVAL;
                }
                m |= 1u << w;
        }
        *ret = m;
        return m ? 0 : -EINVAL;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
        enum {
                OPT_REPEAT = 256,
                OPT_SECONDS,
                OPT_ONLY,
                OPT_WINDOW,
                OPT_CORPUS,
                OPT_CSV,
                OPT_SVG,
                OPT_QUICK
        };
        static const struct option longopts[] = {
                { "repeat", required_argument, NULL, OPT_REPEAT },
                { "seconds", required_argument, NULL, OPT_SECONDS },
                { "only", required_argument, NULL, OPT_ONLY },
                { "idle-window", required_argument, NULL, OPT_WINDOW },
                { "corpus", required_argument, NULL, OPT_CORPUS },
                { "csv", required_argument, NULL, OPT_CSV },
                { "svg", required_argument, NULL, OPT_SVG },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c, repeat = -1;
        double secs = -1;
        char *end;

        *o = (bench_opts){ .corpus = default_corpus,
                           .csv = "build/bench/harvest.csv",
                           .svg = "build/bench/harvest.svg",
                           .idle_window = 3,
                           .wl_mask = (1u << _WL_MAX) - 1 };
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_REPEAT:
                        repeat = (int) strtol(optarg, &end, 10);
                        if (end == optarg || *end || repeat < 1 || repeat > MAX_REPEAT) {
                                fprintf(stderr, "harvest: --repeat must be 1..%d\n", MAX_REPEAT);
                                return -EINVAL;
                        }
                        break;
                case OPT_SECONDS:
                        secs = strtod(optarg, &end);
                        if (end == optarg || *end || !(secs >= 0.5 && secs <= 600)) {
                                fprintf(stderr, "harvest: --seconds must be 0.5..600\n");
                                return -EINVAL;
                        }
                        break;
                case OPT_ONLY:
                        if (parse_only(optarg, &o->wl_mask) < 0)
                                return -EINVAL;
                        break;
                case OPT_WINDOW:
                        o->idle_window = (int) strtol(optarg, &end, 10);
                        if (end == optarg || *end || o->idle_window < 1 || o->idle_window > 600) {
                                fprintf(stderr, "harvest: --idle-window must be 1..600\n");
                                return -EINVAL;
                        }
                        break;
                case OPT_CORPUS:
                        o->corpus = optarg;
                        o->corpus_set = true;
                        break;
                case OPT_CSV:
                        o->csv = optarg;
                        break;
                case OPT_SVG:
                        o->svg = optarg;
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
                fprintf(stderr, "harvest: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        o->repeat = repeat > 0 ? repeat : o->quick ? 1 : 5;
        /* 8 workloads x 4 configurations x 5 repeats in the 10 minutes: 2 s runs
         * took 656 s, 1.5 s ones 573 and 606 s (most of the rest is daemon starts and
         * restarts after brake trips) */
        o->seconds = secs > 0 ? secs : 1.2;
        return 0;
}

/* EDGED_BIN, else edged in the parent of this binary's directory (build/bench/harvest ->
 * build/edged), else build/edged. */
static const char *find_edged(char *buf, size_t size) {
        const char *env = getenv("EDGED_BIN");
        char exe[PATH_MAX];

        if (env && *env)
                return env;
        if (realpath("/proc/self/exe", exe)) {
                for (int up = 0; up < 2; up++) {
                        char *slash = strrchr(exe, '/');
                        if (slash)
                                *slash = 0;
                }
                snprintf(buf, size, "%s/edged", exe);
                if (access(buf, X_OK) == 0)
                        return buf;
        }
        return "build/edged";
}

static void cleanup(void) {
        if (runner_pid > 0) {
                kill(runner_pid, SIGKILL);
                (void) waitpid(runner_pid, NULL, 0);
                runner_pid = 0;
        }
        bg_stop();
        cgroup_cpu_remove(&bg_cgroup);
        bench_remove_tree(tmpdir);
}

int main(int argc, char **argv) {
        char desc[PATH_MAX + 64], binbuf[PATH_MAX + 8], why[256] = "";
        _cleanup_free_ uint8_t *data = NULL;
        fg_shared *sh;
        bench_opts o;
        calib cal;
        size_t size = 0;
        int r, n_wl = 0, failed = 0;
        double t_start = mono_now_s();

        if (parse_args(argc, argv, &o) < 0) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        if (geteuid() != 0) {
                printf("harvest: needs root (the daemon's eBPF monitor, cyclictest -p 80, "
                       "mlockall): skipped\n");
                return 77;
        }
        o.bin = find_edged(binbuf, sizeof(binbuf));
        if (access(o.bin, X_OK) < 0) {
                fprintf(stderr, "harvest: cannot run %s: %m (build it, or set EDGED_BIN)\n", o.bin);
                return EXIT_FAILURE;
        }
        setvbuf(stdout, NULL, _IOLBF, 0);
        install_signals();
        r = bench_load_corpus(o.corpus, o.corpus_set, &data, &size, desc, sizeof(desc));
        if (r < 0) {
                fprintf(stderr, "harvest: no corpus: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/edged-bench-harvest-XXXXXX");
        if (sh == MAP_FAILED || !mkdtemp(tmpdir)) {
                fprintf(stderr, "harvest: %m\n");
                return EXIT_FAILURE;
        }
        snprintf(sock_path, sizeof(sock_path), "%s/control", tmpdir);
        snprintf(nice_log, sizeof(nice_log), "%s/nice.log", tmpdir);
        snprintf(daemon_log, sizeof(daemon_log), "%s/edged.log", tmpdir);
        snprintf(data_dir, sizeof(data_dir), "%s/data", tmpdir);

        char cg_name[64];
        snprintf(cg_name, sizeof(cg_name), "edged-bench-harvest-%d", (int) getpid());
        r = cgroup_cpu_create(&bg_cgroup, cg_name);
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        printf("edged harvest benchmark%s: %d repeat(s), %.1f s runs, %ld CPUs%s\n",
               o.quick ? " (--quick)" : "", o.repeat, o.seconds, ncpu,
               ncpu != 2 ? " (made for 2: the targets assume it)" : "");
        printf("edged %s; corpus %s, %zu bytes; temporary directory %s\n", o.bin, desc, size,
               tmpdir);
        if (r < 0)
                printf("no cgroup for the background (%s): its CPU time is that of its live "
                       "threads, and that of a thread ending inside a run is lost\n", strerror(-r));
        else
                printf("background CPU time from cgroup %s\n", bg_cgroup.dir);
        r = bench_split_corpus(data_dir, data, size, N_FILES, 0, 2 * (TRAIN_T + 1), NULL);
        if (r >= 0)
                r = calibrate(&o, data, size, &cal);
        if (r < 0) {
                printf("set-up failed: %s\n", strerror(-r));
                cleanup();
                return EXIT_FAILURE;
        }
        if (!cal.have_cyclictest && (o.wl_mask & (3u << WL_CYCLIC))) {
                printf("cyclictest is not installed (apt-get install rt-tests): the cyclic "
                       "workloads are left out; pingpong measures wakeup latency\n");
                o.wl_mask &= ~(3u << WL_CYCLIC);
        }
        for (int w = 0; w < _WL_MAX; w++)
                n_wl += !!(o.wl_mask & (1u << w));
        printf("work per run: xz1 %.0f MB, xz2 %.0f MB (xz -3 -T1 ran at %.1f MB/s), stream %d "
               "(1 thread %d) passes, %d bursts of %.1f M spins (%.2f ns each),\n  cyclictest %ld "
               "loops per "
               "CPU, %ld ping-pong rounds; the daemon's IdleWindowSec=%d\n",
               (double) cal.xz1_bytes / 1e6, (double) cal.xz2_bytes / 1e6, cal.xz_mb_s,
               cal.stream_passes[2], cal.stream_passes[1], cal.bursts,
               (double) cal.burst_iters / 1e6, cal.spin_ns, cal.cyclic_loops, cal.pingpong_rounds,
               o.idle_window);
        printf("configurations: A alone, B edged (balanced), C nice19 (nice -n 19 edged train, "
               "SCHED_OTHER),\n  D edged-nobrake (balanced, MaxForegroundDelayMs=1000); order "
               "per repeat A B C D, each workload in turn within a block\n");
        for (int w = 0; w < _WL_MAX; w++)
                if (o.wl_mask & (1u << w))
                        printf("  %-9s %s\n", workloads[w].name, workloads[w].desc);

        /* a bound of the daemon's own, should this process die without stopping it */
        double block_s = n_wl * (MAX(o.seconds, cal.bursts * BURST_PERIOD_S) + o.idle_window + 6);
        for (int rep = 0; rep < o.repeat && !interrupted; rep++) {
                for (int c = 0; c < _CFG_MAX && !interrupted; c++) {
                        double tb = mono_now_s();
                        why[0] = 0;
                        if (c == CFG_EDGED || c == CFG_NOBRAKE)
                                r = start_daemon(&o, (cfg_id) c, rep, 3 * block_s + 300,
                                                 START_TIMEOUT_S, why, sizeof(why));
                        else if (c == CFG_NICE)
                                r = start_nice(&o, why, sizeof(why));
                        else
                                r = 0;
                        if (r < 0) {
                                printf("r%d %s: the background did not start: %s (%s)\n", rep + 1,
                                       cfg_names[c], strerror(-r), why);
                                print_log_tail(c == CFG_NICE ? nice_log : daemon_log);
                                bg_stop();
                                failed++;
                                continue;
                        }
                        if (c != CFG_ALONE) {
                                int nt, ni, nn;
                                thread_policies(bg_pid, &nt, &ni, &nn);
                                printf("r%d %s: started in %.1f s, %d threads (%d SCHED_IDLE, %d "
                                       "SCHED_OTHER nice 19)%s%s\n",
                                       rep + 1, cfg_names[c], mono_now_s() - tb, nt, ni, nn,
                                       why[0] ? "; " : "", why);
                        }
                        for (int w = 0; w < _WL_MAX && !interrupted; w++) {
                                if (!(o.wl_mask & (1u << w)))
                                        continue;
                                if (n_runs >= MAX_RUNS)
                                        break;
                                char note[64] = "";
                                if (c == CFG_EDGED || c == CFG_NOBRAKE)
                                        restart_if_stuck(&o, (cfg_id) c, rep, 3 * block_s + 300,
                                                         note, sizeof(note));
                                r = run_one(&o, &cal, (cfg_id) c, (wl_id) w, rep, note, sh,
                                            &runs[n_runs]);
                                if (r == -EINTR)
                                        break;
                                if (r < 0)
                                        printf("  %s: %s\n", workloads[w].name, strerror(-r));
                                else {
                                        print_run(&runs[n_runs]);
                                        failed += !runs[n_runs].ok;
                                        n_runs++;
                                }
                                if (c != CFG_ALONE && !bg_alive()) {
                                        printf("  the background exited\n");
                                        print_log_tail(c == CFG_NICE ? nice_log : daemon_log);
                                        failed++;
                                        break;
                                }
                        }
                        bg_stop();
                }
        }
        cleanup();
        if (interrupted) {
                printf("interrupted\n");
                return EXIT_FAILURE;
        }
        print_tables(&o);
        print_verdicts(&o);
        r = write_csv(o.csv);
        if (r < 0)
                printf("csv: %s: %s\n", o.csv, strerror(-r));
        else
                printf("\ncsv: %s (%d runs)\n", o.csv, n_runs);
        write_plot(&o);
        printf("benchmark wall time %.0f s%s\n", mono_now_s() - t_start,
               failed ? "; some runs failed" : "");
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
