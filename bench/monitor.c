/* SPDX-License-Identifier: MIT */
/* What the BPF scheduler monitor costs (build/bench/monitor; needs root).
 *
 * 1. Context switches: two threads of a child process, pinned to one CPU, bounce a byte over
 *    two pipes; every round trip is two switches and two wakeups. Runs without the monitor,
 *    with it (counters + latency) and with counters only are interleaved in every round, in
 *    a rotating order, so drift on this noisy VM hits all three alike. Reports ns per switch
 *    (median, min-max over rounds) and the median added cost, also paired per round.
 * 2. The programs' own run time as the kernel counts it (BPF_ENABLE_STATS): during the
 *    ping-pong (ns per invocation) and over an idle window (% of one core).
 * 3. monitor_read and monitor_open as the daemon would call them.
 * Targets (issue 4): <= 100 ns added per switch, <= 0.1 % of one core while idle. */

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "monitor.h"

#define MAX_ROUNDS 101
#define N_CONFIGS 5
#define CFG_FLOOR 4

typedef struct {
        int iters, rounds, cpu;
        double idle_seconds;
} bench_opts;

static const char *const config_names[N_CONFIGS] = { "off", "on (sched_info)", "on (wakeup progs)",
                                                     "on, latency off", "empty program" };

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static int pin_self(int cpu) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        return sched_setaffinity(0, sizeof(set), &set);
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;

        return (x > y) - (x < y);
}

static double median(const double *v, int n) {
        double s[MAX_ROUNDS * N_CONFIGS];

        memcpy(s, v, (size_t) n * sizeof(*s));
        qsort(s, (size_t) n, sizeof(*s), cmp_double);
        return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void min_max(const double *v, int n, double *lo, double *hi) {
        *lo = *hi = v[0];
        for (int i = 1; i < n; i++) {
                if (v[i] < *lo)
                        *lo = v[i];
                if (v[i] > *hi)
                        *hi = v[i];
        }
}

/* ---- the ping-pong child: commands in (round trips, 0 to quit), elapsed ns out ---- */

typedef struct {
        int rfd, wfd, cpu;
        int iters;
} pong_arg;

static void *pong_main(void *p) {
        pong_arg *a = p;
        char c;

        pin_self(a->cpu);
        for (int i = 0; i < a->iters; i++)
                if (read(a->rfd, &c, 1) != 1 || write(a->wfd, &c, 1) != 1)
                        break;
        return NULL;
}

/* iters round trips; returns elapsed ns or 0 on error. */
static uint64_t ping_pong(int cpu, int iters) {
        int ab[2], ba[2];
        pong_arg a = { .cpu = cpu, .iters = iters };
        pthread_t th;
        uint64_t t0, t1 = 0;
        char c = 'x';

        if (pipe(ab) < 0 || pipe(ba) < 0)
                return 0;
        a.rfd = ab[0];
        a.wfd = ba[1];
        if (pthread_create(&th, NULL, pong_main, &a) != 0)
                return 0;
        /* Let the partner block in read first, so every round trip is alike. */
        usleep(1000);
        t0 = now_ns();
        for (int i = 0; i < iters; i++)
                if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1)
                        goto out;
        t1 = now_ns();
out:
        pthread_join(th, NULL);
        close(ab[0]);
        close(ab[1]);
        close(ba[0]);
        close(ba[1]);
        return t1 ? t1 - t0 : 0;
}

static void child_main(int cmd_fd, int res_fd, int cpu) {
        int iters;

        if (pin_self(cpu) < 0)
                _exit(1);
        while (read(cmd_fd, &iters, sizeof(iters)) == (ssize_t) sizeof(iters) && iters > 0) {
                uint64_t ns = ping_pong(cpu, iters);

                if (write(res_fd, &ns, sizeof(ns)) != (ssize_t) sizeof(ns))
                        break;
        }
        _exit(0);
}

typedef struct {
        pid_t pid;
        int cmd_fd, res_fd;
} child;

static int child_start(child *ch, int cpu) {
        int cmd[2], res[2];

        *ch = (child){ .pid = -1, .cmd_fd = -1, .res_fd = -1 };
        if (pipe(cmd) < 0)
                return -EMFILE;
        if (pipe(res) < 0) {
                close(cmd[0]);
                close(cmd[1]);
                return -EMFILE;
        }
        ch->pid = fork();
        if (ch->pid < 0)
                return -EAGAIN;
        if (ch->pid == 0) {
                close(cmd[1]);
                close(res[0]);
                child_main(cmd[0], res[1], cpu);
        }
        close(cmd[0]);
        close(res[1]);
        ch->cmd_fd = cmd[1];
        ch->res_fd = res[0];
        return 0;
}

/* ns per context switch of one run in the child, or a negative value on error. */
static double child_run(child *ch, int iters) {
        uint64_t ns;

        if (write(ch->cmd_fd, &iters, sizeof(iters)) != (ssize_t) sizeof(iters) ||
            read(ch->res_fd, &ns, sizeof(ns)) != (ssize_t) sizeof(ns) || ns == 0)
                return -1;
        return (double) ns / (2.0 * iters);
}

static void child_stop(child *ch) {
        int zero = 0, status;

        if (write(ch->cmd_fd, &zero, sizeof(zero)) < 0)
                kill(ch->pid, SIGTERM);
        waitpid(ch->pid, &status, 0);
        close(ch->cmd_fd);
        close(ch->res_fd);
}

/* ---- monitor helpers ---- */

static monitor *open_or_die(const monitor_opts *o, double *ret_ms) {
        char why[512];
        monitor *m;
        uint64_t t0 = now_ns();
        int r = monitor_open(o, &m, why, sizeof(why));

        if (r < 0) {
                fprintf(stderr, "monitor: cannot open the BPF monitor: %s\n", why);
                exit(r == -EPERM || r == -EOPNOTSUPP ? 77 : 1);
        }
        if (ret_ms)
                *ret_ms = (double) (now_ns() - t0) / 1e6;
        return m;
}

/* Other monitor_switch programs attached right now (another test or daemon): they add their
 * own cost to every measurement here. */
static int count_monitor_progs(void) {
        __u32 id = 0;
        int n = 0;

        while (bpf_prog_get_next_id(id, &id) == 0) {
                struct bpf_prog_info info;
                __u32 len = sizeof(info);
                int fd = bpf_prog_get_fd_by_id(id);

                if (fd < 0)
                        continue;
                memset(&info, 0, sizeof(info));
                if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 &&
                    strncmp(info.name, "monitor_switch", 14) == 0)
                        n++;
                close(fd);
        }
        return n;
}

/* The floor: a two-instruction tp_btf program on sched_switch, as libbpf-tools' probe_tp_btf
 * loads it. What the monitor adds beyond this is its own work; the rest is the kernel's cost
 * of running any BPF program on the tracepoint. Returns the attachment's fd or -errno. */
static int attach_empty(void) {
        const struct bpf_insn insns[] = {
                { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
                { .code = BPF_JMP | BPF_EXIT },
        };
        struct bpf_prog_load_opts opts = { .sz = sizeof(opts),
                                           .expected_attach_type = BPF_TRACE_RAW_TP };
        int prog, link;

        opts.attach_btf_id = libbpf_find_vmlinux_btf_id("sched_switch", BPF_TRACE_RAW_TP);
        if (opts.attach_btf_id <= 0)
                return -ENOENT;
        prog = bpf_prog_load(BPF_PROG_TYPE_TRACING, "empty_switch", "GPL", insns,
                             sizeof(insns) / sizeof(insns[0]), &opts);
        if (prog < 0)
                return -errno;
        link = bpf_raw_tracepoint_open(NULL, prog);
        close(prog); /* the attachment holds the program */
        return link < 0 ? -errno : link;
}

typedef struct {
        monitor_prog_stat s[MONITOR_MAX_PROGS];
        size_t n;
} prog_stats;

/* Prints one row per program and a total; returns the total's runs per second and % of a core. */
static void stats_delta(const prog_stats *a, const prog_stats *b, double seconds, const char *what,
                        double *ret_runs, double *ret_pct) {
        uint64_t total_ns = 0, total_cnt = 0;

        for (size_t i = 0; i < b->n && i < a->n; i++) {
                uint64_t cnt = b->s[i].run_cnt - a->s[i].run_cnt;
                uint64_t ns = b->s[i].run_time_ns - a->s[i].run_time_ns;

                printf("  %-22s %-20s %12.0f %14.1f %14.4f\n", what, b->s[i].name,
                       (double) cnt / seconds, cnt ? (double) ns / (double) cnt : 0.0,
                       100.0 * (double) ns / (seconds * 1e9));
                total_ns += ns;
                total_cnt += cnt;
        }
        printf("  %-22s %-20s %12.0f %14.1f %14.4f\n", what, "all", (double) total_cnt / seconds,
               total_cnt ? (double) total_ns / (double) total_cnt : 0.0,
               100.0 * (double) total_ns / (seconds * 1e9));
        if (ret_runs)
                *ret_runs = (double) total_cnt / seconds;
        if (ret_pct)
                *ret_pct = 100.0 * (double) total_ns / (seconds * 1e9);
}

/* ---- options ---- */

static void usage(FILE *f) {
        fputs("Usage: monitor [OPTIONS]\n"
              "Cost of the BPF scheduler monitor on context switches and while idle (root).\n\n"
              "  --iters N          round trips per run (default 30000)\n"
              "  --rounds N         runs of each configuration (default 11)\n"
              "  --cpu N            CPU for the ping-pong (default: the last one)\n"
              "  --idle-seconds S   idle window for the programs' run time (default 5)\n"
              "  --quick            5000 round trips, 3 rounds, 1 s idle\n",
              f);
}

static int parse_args(int argc, char **argv, bench_opts *o) {
        static const struct option longopts[] = {
                { "iters", required_argument, NULL, 'i' },
                { "rounds", required_argument, NULL, 'r' },
                { "cpu", required_argument, NULL, 'c' },
                { "idle-seconds", required_argument, NULL, 's' },
                { "quick", no_argument, NULL, 'q' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int c;

        *o = (bench_opts){ .iters = 30000,
                           .rounds = 11,
                           .cpu = ncpu > 1 ? (int) ncpu - 1 : 0,
                           .idle_seconds = 5.0 };
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
                switch (c) {
                case 'i':
                        o->iters = atoi(optarg);
                        break;
                case 'r':
                        o->rounds = atoi(optarg);
                        break;
                case 'c':
                        o->cpu = atoi(optarg);
                        break;
                case 's':
                        o->idle_seconds = atof(optarg);
                        break;
                case 'q':
                        o->iters = 5000;
                        o->rounds = 3;
                        o->idle_seconds = 1.0;
                        break;
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
        if (optind < argc || o->iters < 100 || o->iters > 10000000 || o->rounds < 1 ||
            o->rounds > MAX_ROUNDS || o->cpu < 0 || o->cpu >= ncpu || o->idle_seconds < 0.1 ||
            o->idle_seconds > 600) {
                usage(stderr);
                return -EINVAL;
        }
        return 0;
}

int main(int argc, char **argv) {
        static const monitor_opts cfg_opts[N_CONFIGS] = {
                {},
                { .latency = MONITOR_LATENCY_SCHED_INFO },
                { .latency = MONITOR_LATENCY_WAKEUP },
                { .latency = MONITOR_LATENCY_OFF },
                {},
        };
        double per_switch[N_CONFIGS][MAX_ROUNDS], paired[N_CONFIGS][MAX_ROUNDS];
        double open_ms[MAX_ROUNDS * N_CONFIGS], med[N_CONFIGS];
        double idle_runs = -1, idle_pct = -1;
        static monitor_counters cnt;
        prog_stats a, b;
        bench_opts o;
        child ch;
        monitor *m;
        int n_open = 0, others;
        uint64_t t0;
        int sfd;

        if (parse_args(argc, argv, &o) < 0)
                return 2;
        setvbuf(stdout, NULL, _IOLBF, 0);
        /* The parent keeps off the ping-pong CPU where it can. */
        if (o.cpu != 0)
                pin_self(0);
        /* Fail early, with the reason, before anything is measured. */
        m = open_or_die(NULL, NULL);
        printf("monitor: attach mode %s, %u possible CPUs; ping-pong on cpu%d, %d round trips "
               "(%d switches) per run, %d rounds\n",
               monitor_attach_mode(m), monitor_n_cpus(m), o.cpu, o.iters, 2 * o.iters, o.rounds);
        monitor_close(m);
        others = count_monitor_progs();
        if (others > 0)
                printf("note: %d other monitor program(s) attached: every figure includes their "
                       "cost\n",
                       others);

        if (child_start(&ch, o.cpu) < 0) {
                fprintf(stderr, "monitor: fork: %s\n", strerror(errno));
                return 1;
        }
        /* Warm-up: page in, settle the CPU frequency. */
        if (child_run(&ch, o.iters / 5 + 1) < 0) {
                fprintf(stderr, "monitor: ping-pong failed\n");
                child_stop(&ch);
                return 1;
        }
        for (int r = 0; r < o.rounds; r++) {
                for (int k = 0; k < N_CONFIGS; k++) {
                        int cfg = (r + k) % N_CONFIGS;
                        double v;

                        int empty = -1;

                        if (cfg == CFG_FLOOR) {
                                m = NULL;
                                empty = attach_empty();
                                if (empty < 0) {
                                        fprintf(stderr, "monitor: empty program: %s\n",
                                                strerror(-empty));
                                        child_stop(&ch);
                                        return 1;
                                }
                        } else
                                m = cfg ? open_or_die(&cfg_opts[cfg], &open_ms[n_open++]) : NULL;
                        v = child_run(&ch, o.iters);
                        monitor_close(m);
                        if (empty >= 0)
                                close(empty);
                        if (v < 0) {
                                fprintf(stderr, "monitor: ping-pong failed\n");
                                child_stop(&ch);
                                return 1;
                        }
                        per_switch[cfg][r] = v;
                }
                for (int cfg = 0; cfg < N_CONFIGS; cfg++)
                        paired[cfg][r] = per_switch[cfg][r] - per_switch[0][r];
        }

        printf("\nContext-switch ping-pong (ns per switch; each switch also has one wakeup)\n");
        printf("  %-18s %10s %10s %10s %14s %16s\n", "monitor", "median", "min", "max",
               "added (median)", "added (paired)");
        for (int cfg = 0; cfg < N_CONFIGS; cfg++) {
                double lo, hi;

                med[cfg] = median(per_switch[cfg], o.rounds);
                min_max(per_switch[cfg], o.rounds, &lo, &hi);
                if (cfg == 0)
                        printf("  %-18s %10.1f %10.1f %10.1f %14s %16s\n", config_names[cfg],
                               med[cfg], lo, hi, "-", "-");
                else {
                        double plo, phi;

                        min_max(paired[cfg], o.rounds, &plo, &phi);
                        printf("  %-18s %10.1f %10.1f %10.1f %14.1f %7.1f [%.0f, %.0f]\n",
                               config_names[cfg], med[cfg], lo, hi, med[cfg] - med[0],
                               median(paired[cfg], o.rounds), plo, phi);
                }
        }

        /* The programs' own time, by the kernel's accounting. Statistics cost a clock read or
         * two per invocation themselves, so they stay off during the runs above. */
        sfd = bpf_enable_stats(BPF_STATS_RUN_TIME);
        if (sfd < 0) {
                printf("\n(BPF run-time statistics unavailable: %s)\n", strerror(errno));
        } else {
                double secs;

                printf("\nBPF programs' own run time (kernel statistics)\n");
                printf("  %-22s %-20s %12s %14s %14s\n", "phase", "program", "runs/s", "ns/run",
                       "% of one core");
                for (int cfg = 1; cfg <= 2; cfg++) {
                        char what[32];

                        m = open_or_die(&cfg_opts[cfg], NULL);
                        snprintf(what, sizeof(what), "ping-pong, %s", monitor_latency_source(m));
                        monitor_prog_stats(m, a.s, &a.n);
                        t0 = now_ns();
                        if (child_run(&ch, o.iters) < 0)
                                fprintf(stderr, "monitor: ping-pong failed\n");
                        secs = (double) (now_ns() - t0) / 1e9;
                        monitor_prog_stats(m, b.s, &b.n);
                        stats_delta(&a, &b, secs, what, NULL, NULL);
                        monitor_close(m);
                }

                m = open_or_die(NULL, NULL);
                monitor_prog_stats(m, a.s, &a.n);
                t0 = now_ns();
                usleep((useconds_t) (o.idle_seconds * 1e6));
                secs = (double) (now_ns() - t0) / 1e9;
                monitor_prog_stats(m, b.s, &b.n);
                monitor_read(m, &cnt);
                stats_delta(&a, &b, secs, "idle machine", &idle_runs, &idle_pct);
                printf("  (%s: the monitor as edged opens it)\n", monitor_latency_source(m));
                printf("  (over the idle window the machine was %.1f %% idle by the monitor)\n",
                       100.0 * (double) cnt.total.idle_ns /
                               (double) (cnt.total.idle_ns + cnt.total.foreground_ns +
                                         cnt.total.harvester_ns + 1));
                monitor_close(m);
                close(sfd);
        }
        child_stop(&ch);

        /* The user-space side, as the daemon calls it once per sample. */
        m = open_or_die(NULL, NULL);
        t0 = now_ns();
        for (int i = 0; i < 1000; i++)
                monitor_read(m, &cnt);
        printf("\nUser space\n");
        printf("  monitor_read        %8.1f µs per call (%u CPUs)\n",
               (double) (now_ns() - t0) / 1000 / 1e3, monitor_n_cpus(m));
        monitor_close(m);
        {
                double lo, hi;

                min_max(open_ms, n_open, &lo, &hi);
                printf("  monitor_open        %8.1f ms median (min %.1f, max %.1f; load, verify, "
                       "attach, prime each CPU)\n",
                       median(open_ms, n_open), lo, hi);
        }

        {
                double added = med[1] - med[0], floor = med[CFG_FLOOR] - med[0];
                /* Idle cost: the programs' run time plus, per run, the dispatch cost an empty
                 * program adds (the floor), which the statistics do not see. */
                double idle_all = idle_pct + idle_runs * (floor > 0 ? floor : 0) / 1e9 * 100.0;

                double own[MAX_ROUNDS] = { 0 };

                for (int r = 0; r < o.rounds; r++)
                        own[r] = per_switch[1][r] - per_switch[CFG_FLOOR][r];
                printf("\nSummary (edged's configuration: tp_btf, latency from sched_info)\n");
                printf("  added per context switch   %8.1f ns   target <= 100 ns: %s\n", added,
                       added <= 100 ? "met" : "NOT met");
                printf("    of which any program     %8.1f ns   (empty tp_btf program on "
                       "sched_switch)\n",
                       floor);
                printf("    of which the monitor     %8.1f ns   (paired per round: median %.1f)\n",
                       added - floor, median(own, o.rounds));
                if (idle_pct >= 0)
                        printf("  idle machine               %8.4f %% of one core (%.0f runs/s; "
                               "with dispatch %.4f %%)   target <= 0.1 %%: %s\n",
                               idle_pct, idle_runs, idle_all, idle_all <= 0.1 ? "met" : "NOT met");
        }
        return 0;
}
