/* SPDX-License-Identifier: MIT */
/* Loader for monitor.bpf.c (see monitor.h). Like libbpf-tools' runqlat it carries tp_btf and
 * raw_tp variants of each program and loads one set: tp_btf first, and where that fails to
 * load or attach the object is reopened with the raw_tp set. Within each, latency from
 * sched_info is tried before the wakeup programs. libbpf's own printing is replaced by a
 * callback (process-wide) that keeps quiet and remembers what explains a failure. */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "monitor.h"
#include "monitor.skel.h"

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

#define BTF_PATH "/sys/kernel/btf/vmlinux"
/* In-progress intervals of tasks longer than this are checked against /proc (see monitor_read). */
#define VERIFY_AFTER_NS 10000000ULL

struct monitor {
        struct monitor_bpf *skel;
        struct monitor_cpu *cpus; /* the cpus map, mmapped read-only */
        size_t cpus_len;
        unsigned n_cpus;
        const char *mode;
        const char *latency;
        char fallback[640];
        uint64_t (*last)[MONITOR_N_CLASSES]; /* what monitor_read returned last, per CPU */
};

/* ---- libbpf's messages: silent by default, the useful ones kept for the reason string ---- */

/* libbpf calls the print callback in the thread that called it, so per-thread capture is
 * enough to pair messages with the monitor_open that caused them. */
static __thread struct {
        bool verbose;
        char first[256];    /* first warning since the reset: usually the cause */
        char last[256];     /* last warning */
        char verifier[512]; /* "verifier rejected PROG: LINE" from a program load log */
} capture;

/* snprintf(dst, n, "%s", src) without -Wformat-truncation's complaint: truncation is wanted. */
static void copy_trunc(char *dst, size_t n, const char *src) {
        size_t len = strnlen(src, n - 1);

        memcpy(dst, src, len);
        dst[len] = '\0';
}

static void trim_newlines(char *s) {
        size_t n = strlen(s);

        while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
                s[--n] = '\0';
}

/* From "prog 'NAME': -- BEGIN PROG LOAD LOG --\n...\n-- END PROG LOAD LOG --": the program's
 * name and the last log line that is not a statistic, which is where the verifier says why. */
static void capture_verifier_log(const char *msg) {
        const char *begin = strstr(msg, "-- BEGIN PROG LOAD LOG --");
        const char *end = strstr(msg, "-- END PROG LOAD LOG --");
        const char *name = strstr(msg, "prog '"), *name_end;
        char prog[64] = "program";

        if (!begin || !end || end < begin)
                return;
        if (name && name < begin) {
                name += strlen("prog '");
                name_end = strchr(name, '\'');
                if (name_end && name_end < begin && (size_t) (name_end - name) < sizeof(prog))
                        snprintf(prog, sizeof(prog), "%.*s", (int) (name_end - name), name);
        }
        begin += strlen("-- BEGIN PROG LOAD LOG --");
        for (const char *p = end; p > begin;) {
                const char *e = p, *s;

                while (e > begin && e[-1] == '\n')
                        e--;
                s = e;
                while (s > begin && s[-1] != '\n')
                        s--;
                if (s == e)
                        break;
                p = s;
                if (!strncmp(s, "processed ", 10) || !strncmp(s, "verification time", 17) ||
                    !strncmp(s, "stack depth", 11))
                        continue;
                snprintf(capture.verifier, sizeof(capture.verifier), "verifier rejected %s: %.*s",
                         prog, (int) (e - s), s);
                return;
        }
}

static int print_cb(enum libbpf_print_level level, const char *fmt, va_list ap) {
        char small[512], *big = NULL;
        const char *msg = small;
        va_list aq;
        int n;

        va_copy(aq, ap);
        n = vsnprintf(small, sizeof(small), fmt, aq);
        va_end(aq);
        if (n < 0)
                return 0;
        /* Verifier logs are long and their end matters. */
        if ((size_t) n >= sizeof(small)) {
                big = malloc((size_t) n + 1);
                if (big) {
                        vsnprintf(big, (size_t) n + 1, fmt, ap);
                        msg = big;
                }
        }
        if (capture.verbose)
                fprintf(stderr, "libbpf: %s", msg);
        if (level == LIBBPF_WARN) {
                if (strstr(msg, "-- BEGIN PROG LOAD LOG --")) {
                        capture_verifier_log(msg);
                } else {
                        if (!capture.first[0])
                                copy_trunc(capture.first, sizeof(capture.first), msg);
                        copy_trunc(capture.last, sizeof(capture.last), msg);
                        trim_newlines(capture.first);
                        trim_newlines(capture.last);
                }
        }
        free(big);
        return 0;
}

static void capture_reset(bool verbose) {
        memset(&capture, 0, sizeof(capture));
        capture.verbose = verbose;
        libbpf_set_print(print_cb);
}

/* ---- preconditions, checked first so the common reasons are said plainly ---- */

static bool env_true(const char *name) {
        const char *v = getenv(name);

        return v && *v && strcmp(v, "0") != 0;
}

static bool have_cap(const struct __user_cap_data_struct data[2], int cap) {
        return data[cap / 32].effective & (1U << (cap % 32));
}

static int check_caps(char *why, size_t why_len) {
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[2] = { 0 };

        if (syscall(SYS_capget, &hdr, data) < 0)
                return 0; /* cannot tell: let the load say */
        if (have_cap(data, CAP_SYS_ADMIN) ||
            (have_cap(data, CAP_BPF) && have_cap(data, CAP_PERFMON)))
                return 0;
        if (geteuid() != 0)
                snprintf(why, why_len, "no CAP_BPF (not root)");
        else
                snprintf(why, why_len, "no CAP_BPF and CAP_PERFMON (root, but without them)");
        return -EPERM;
}

static void describe_failure(const char *stage, int err, char *why, size_t why_len) {
        char buf[1024];

        if (capture.verifier[0])
                snprintf(buf, sizeof(buf), "%s", capture.verifier);
        else if (capture.first[0] && strcmp(capture.first, capture.last) != 0)
                snprintf(buf, sizeof(buf), "%s failed: %s; %s (%s)", stage, capture.first,
                         capture.last, strerror(-err));
        else if (capture.first[0])
                snprintf(buf, sizeof(buf), "%s failed: %s (%s)", stage, capture.first,
                         strerror(-err));
        else
                snprintf(buf, sizeof(buf), "%s failed: %s", stage, strerror(-err));
        copy_trunc(why, why_len, buf);
}

/* ---- open ---- */

static void set_autoload(struct monitor_bpf *s, bool tp_btf, bool wakeups) {
        bpf_program__set_autoload(s->progs.monitor_switch, tp_btf);
        bpf_program__set_autoload(s->progs.monitor_wakeup, tp_btf && wakeups);
        bpf_program__set_autoload(s->progs.monitor_wakeup_new, tp_btf && wakeups);
        bpf_program__set_autoload(s->progs.monitor_switch_raw, !tp_btf);
        bpf_program__set_autoload(s->progs.monitor_wakeup_raw, !tp_btf && wakeups);
        bpf_program__set_autoload(s->progs.monitor_wakeup_new_raw, !tp_btf && wakeups);
}

/* Every CPU gets one switch right away, so each knows what it runs even if it then stays idle
 * without switching (NOHZ): the calling thread visits each CPU it may run on and sleeps there
 * briefly. Its affinity is restored afterwards. */
static void prime_cpus(unsigned n_cpus) {
        cpu_set_t saved, one;
        struct timespec nap = { .tv_nsec = 20000 };

        if (sched_getaffinity(0, sizeof(saved), &saved) < 0)
                return;
        for (unsigned cpu = 0; cpu < n_cpus && cpu < CPU_SETSIZE; cpu++) {
                if (!CPU_ISSET(cpu, &saved))
                        continue;
                CPU_ZERO(&one);
                CPU_SET(cpu, &one);
                if (sched_setaffinity(0, sizeof(one), &one) < 0)
                        continue;
                nanosleep(&nap, NULL);
        }
        sched_setaffinity(0, sizeof(saved), &saved);
}

static const char *latency_name(monitor_latency l) {
        return l == MONITOR_LATENCY_SCHED_INFO ? "sched_info"
               : l == MONITOR_LATENCY_WAKEUP   ? "wakeup"
                                               : "off";
}

/* One attempt: attach mode tp_btf or raw_tp, latency from sched_info, wakeup programs or off. */
static int try_open(monitor *m, pid_t tgid, pid_t keep, bool tp_btf, monitor_latency lat, char *why,
                    size_t why_len) {
        struct monitor_bpf *s;
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        void *p;
        int r;

        s = monitor_bpf__open();
        if (!s) {
                r = errno ? -errno : -ENOMEM;
                describe_failure("opening the BPF object", r, why, why_len);
                return r;
        }
        s->rodata->harvester_tgid = (__u32) tgid;
        s->rodata->keep_pid = (__u32) keep;
        s->rodata->track_latency = lat != MONITOR_LATENCY_OFF;
        s->rodata->use_sched_info = lat == MONITOR_LATENCY_SCHED_INFO;
        set_autoload(s, tp_btf, lat == MONITOR_LATENCY_WAKEUP);
        r = bpf_map__set_max_entries(s->maps.cpus, m->n_cpus);
        if (r == 0 && lat != MONITOR_LATENCY_WAKEUP)
                r = bpf_map__set_max_entries(s->maps.wakeups, 1); /* unused */
        if (r < 0) {
                describe_failure("sizing maps", r, why, why_len);
                goto fail;
        }
        r = monitor_bpf__load(s);
        if (r < 0) {
                describe_failure("loading", r, why, why_len);
                goto fail;
        }
        r = monitor_bpf__attach(s);
        if (r < 0) {
                describe_failure("attaching", r, why, why_len);
                goto fail;
        }
        m->cpus_len = ((size_t) m->n_cpus * sizeof(struct monitor_cpu) + page - 1) / page * page;
        p = mmap(NULL, m->cpus_len, PROT_READ, MAP_SHARED, bpf_map__fd(s->maps.cpus), 0);
        if (p == MAP_FAILED) {
                r = -errno;
                snprintf(why, why_len, "mmap of the cpus map failed: %s", strerror(-r));
                goto fail;
        }
        m->cpus = p;
        m->skel = s;
        m->mode = tp_btf ? "tp_btf" : "raw_tp";
        m->latency = latency_name(lat);
        return 0;
fail:
        monitor_bpf__destroy(s);
        return r;
}

int monitor_open(const monitor_opts *opts, monitor **ret, char *why, size_t why_len) {
        static const monitor_opts defaults = { 0 };
        char scratch[256], attach_why[2][256] = { "", "" }, si_why[256] = "";
        bool attaches[2]; /* tp_btf, raw_tp */
        monitor_latency lats[2];
        int n_lats = 0, ncpu, r = -EINVAL;
        monitor *m;
        pid_t tgid;

        if (!why || why_len == 0) {
                why = scratch;
                why_len = sizeof(scratch);
        }
        why[0] = '\0';
        if (!ret)
                return -EINVAL;
        *ret = NULL;
        if (!opts)
                opts = &defaults;
        if (opts->mode < MONITOR_MODE_AUTO || opts->mode > MONITOR_MODE_RAW_TP ||
            opts->latency < MONITOR_LATENCY_AUTO || opts->latency > MONITOR_LATENCY_OFF) {
                snprintf(why, why_len, "invalid monitor options (mode %d, latency %d)",
                         (int) opts->mode, (int) opts->latency);
                return -EINVAL;
        }
        if (opts->force_fail) {
                snprintf(why, why_len, "BPF monitor forced off (monitor_opts.force_fail)");
                return -ECANCELED;
        }
        if (env_true("EDGED_MONITOR_DISABLE")) {
                snprintf(why, why_len, "BPF monitor forced off (EDGED_MONITOR_DISABLE)");
                return -ECANCELED;
        }
        if (access(BTF_PATH, R_OK) < 0) {
                r = -errno;
                snprintf(why, why_len, "kernel has no BTF (%s: %s)", BTF_PATH, strerror(-r));
                return r == -ENOENT ? -EOPNOTSUPP : r;
        }
        r = check_caps(why, why_len);
        if (r < 0)
                return r;
        ncpu = libbpf_num_possible_cpus();
        if (ncpu <= 0) {
                snprintf(why, why_len, "cannot count possible CPUs: %s",
                         strerror(ncpu ? -ncpu : EINVAL));
                return ncpu ? ncpu : -EINVAL;
        }
        tgid = opts->tgid > 0 ? opts->tgid : getpid();

        m = calloc(1, sizeof(*m));
        if (!m) {
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
        }
        m->n_cpus = (unsigned) ncpu;
        m->last = calloc(m->n_cpus, sizeof(*m->last));
        if (!m->last) {
                free(m);
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
        }

        /* tp_btf before raw_tp, sched_info before the wakeup programs: a load or attach
         * failure moves on to the next combination; the first that works is kept. */
        attaches[0] = opts->mode != MONITOR_MODE_RAW_TP;
        attaches[1] = opts->mode != MONITOR_MODE_TP_BTF;
        if (opts->latency == MONITOR_LATENCY_AUTO) {
                lats[n_lats++] = MONITOR_LATENCY_SCHED_INFO;
                lats[n_lats++] = MONITOR_LATENCY_WAKEUP;
        } else
                lats[n_lats++] = opts->latency;
        for (int a = 0; a < 2; a++) {
                if (!attaches[a])
                        continue;
                for (int l = 0; l < n_lats; l++) {
                        capture_reset(opts->verbose || env_true("EDGED_MONITOR_VERBOSE"));
                        r = try_open(m, tgid, opts->keep_tid, a == 0, lats[l], attach_why[a],
                                     sizeof(attach_why[a]));
                        if (r == 0) {
                                if (a == 1 && attaches[0])
                                        snprintf(m->fallback, sizeof(m->fallback), "tp_btf: %s",
                                                 attach_why[0]);
                                if (l > 0) {
                                        size_t n = strlen(m->fallback);

                                        snprintf(m->fallback + n, sizeof(m->fallback) - n,
                                                 "%ssched_info: %s", n ? "; " : "", si_why);
                                }
                                goto done;
                        }
                        if (l == 0 && n_lats > 1 && !si_why[0])
                                copy_trunc(si_why, sizeof(si_why), attach_why[a]);
                }
        }
        if (attaches[0] && attaches[1] && strcmp(attach_why[0], attach_why[1]) != 0)
                snprintf(why, why_len, "tp_btf: %s; raw_tp: %s", attach_why[0], attach_why[1]);
        else
                copy_trunc(why, why_len, attach_why[attaches[0] ? 0 : 1]);
        free(m->last);
        free(m);
        return r;
done:
        prime_cpus(m->n_cpus);
        *ret = m;
        return 0;
}

void monitor_close(monitor *m) {
        if (!m)
                return;
        if (m->cpus)
                munmap(m->cpus, m->cpus_len);
        monitor_bpf__destroy(m->skel);
        free(m->last);
        free(m);
}

const char *monitor_attach_mode(const monitor *m) {
        return m ? m->mode : NULL;
}

const char *monitor_latency_source(const monitor *m) {
        return m ? m->latency : NULL;
}

const char *monitor_fallback_reason(const monitor *m) {
        return m && m->fallback[0] ? m->fallback : NULL;
}

unsigned monitor_n_cpus(const monitor *m) {
        return m ? m->n_cpus : 0;
}

/* ---- harvesters ---- */

static int check_tid(const monitor *m, pid_t tid) {
        char path[64];

        if (!m || tid <= 0)
                return -EINVAL;
        /* The BPF side only considers threads of harvester_tgid; anything else would be
         * registered and silently never counted. */
        snprintf(path, sizeof(path), "/proc/%u/task/%d", (unsigned) m->skel->rodata->harvester_tgid,
                 (int) tid);
        return access(path, F_OK) == 0 ? 0 : -ESRCH;
}

int monitor_add_harvester(monitor *m, pid_t tid) {
        __u32 key = (__u32) tid;
        __u8 one = 1;
        int r;

        r = check_tid(m, tid);
        if (r < 0)
                return r;
        r = bpf_map__update_elem(m->skel->maps.harvesters, &key, sizeof(key), &one, sizeof(one),
                                 BPF_ANY);
        return r < 0 ? r : 0;
}

int monitor_remove_harvester(monitor *m, pid_t tid) {
        __u32 key = (__u32) tid;
        int r;

        if (!m || tid <= 0)
                return -EINVAL;
        r = bpf_map__delete_elem(m->skel->maps.harvesters, &key, sizeof(key), 0);
        return r < 0 ? r : 0;
}

/* ---- reading ---- */

/* A consistent copy of one CPU's element (see the seqlock in monitor-shared.h). The writer's
 * critical section is a few stores, so the retry bound is never reached in practice; if it
 * were, the copy is used as is and monitor_read's clamp keeps the figures monotonic. */
static void snapshot(const struct monitor_cpu *src, struct monitor_cpu *dst) {
        const volatile __u32 *seq = &src->seq;

        for (int tries = 0; tries < 1000; tries++) {
                __u32 s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE), s2;

                if (s1 & 1)
                        continue;
                memcpy(dst, (const void *) src, sizeof(*dst));
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                s2 = __atomic_load_n(seq, __ATOMIC_RELAXED);
                if (s1 == s2)
                        return;
        }
        memcpy(dst, (const void *) src, sizeof(*dst));
}

/* Whether thread tid is on cpu right now, by /proc/<tid>/stat (state R, field 39 the CPU).
 * Unknown (another PID namespace, gone) counts as yes: the recorded class stands. */
static bool thread_on_cpu(__u32 tid, unsigned cpu) {
        char path[64], buf[1024], *p;
        unsigned field = 3;
        ssize_t n;
        int fd;

        snprintf(path, sizeof(path), "/proc/%u/stat", tid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return true;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return true;
        buf[n] = '\0';
        p = strrchr(buf, ')'); /* the command name may hold anything, but not after this */
        if (!p || p[1] != ' ' || !p[2])
                return true;
        if (p[2] != 'R')
                return false;
        for (p += 2; *p && field < 39; p++)
                if (*p == ' ')
                        field++;
        return field != 39 || strtoul(p, NULL, 10) == cpu;
}

static void hist_add(monitor_hist *h, const __u64 *slots, __u64 sum_ns) {
        for (int i = 0; i < MONITOR_HIST_SLOTS; i++) {
                h->slots[i] += slots[i];
                h->count += slots[i];
        }
        h->sum_ns += sum_ns;
}

int monitor_read(monitor *m, monitor_counters *ret) {
        struct timespec ts;
        uint64_t now;

        if (!m || !ret)
                return -EINVAL;
        memset(ret, 0, sizeof(*ret));
        /* Taken before the snapshots: a CPU that switches after it has counted up to that switch,
         * so figures never run ahead of a later read's. */
        if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                return -errno;
        now = (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
        ret->mono_ns = now;
        ret->n_cpus = m->n_cpus < MONITOR_MAX_CPUS ? m->n_cpus : MONITOR_MAX_CPUS;

        for (unsigned cpu = 0; cpu < m->n_cpus; cpu++) {
                struct monitor_cpu c;
                monitor_cpu_counters cc = { 0 };

                snapshot(&m->cpus[cpu], &c);
                if (c.last_ns == 0)
                        continue;
                if (c.cls < MONITOR_N_CLASSES && now > c.last_ns) {
                        __u32 cls = c.cls;

                        /* A task that has run a while may have left without the switch being
                         * reported (see monitor-shared.h); if it is no longer on this CPU the
                         * next report will charge the interval to whatever ran last, nearly
                         * always the idle task, so count it as idle meanwhile. */
                        if (cls != MONITOR_CLASS_IDLE && now - c.last_ns > VERIFY_AFTER_NS &&
                            !thread_on_cpu(c.pid, cpu))
                                cls = MONITOR_CLASS_IDLE;
                        c.ns[cls] += now - c.last_ns;
                }
                for (int k = 0; k < MONITOR_N_CLASSES; k++) {
                        if (c.ns[k] < m->last[cpu][k])
                                c.ns[k] = m->last[cpu][k];
                        m->last[cpu][k] = c.ns[k];
                }
                cc.idle_ns = c.ns[MONITOR_CLASS_IDLE];
                cc.foreground_ns = c.ns[MONITOR_CLASS_FOREGROUND];
                cc.harvester_ns = c.ns[MONITOR_CLASS_HARVESTER];
                cc.preemptions = c.preemptions;
                cc.switches = c.switches;
                cc.missed_switches = c.missed;
                cc.seen = true;
                if (cpu < MONITOR_MAX_CPUS)
                        ret->cpu[cpu] = cc;
                ret->total.idle_ns += cc.idle_ns;
                ret->total.foreground_ns += cc.foreground_ns;
                ret->total.harvester_ns += cc.harvester_ns;
                ret->total.preemptions += cc.preemptions;
                ret->total.switches += cc.switches;
                ret->total.missed_switches += cc.missed_switches;
                ret->total.seen = true;
                hist_add(&ret->latency, c.lat, c.lat_sum_ns);
                hist_add(&ret->interference, c.intf, c.intf_sum_ns);
        }
        return 0;
}

int monitor_prog_stats(const monitor *m, monitor_prog_stat ret[MONITOR_MAX_PROGS], size_t *ret_n) {
        struct bpf_program *prog;
        size_t n = 0;

        if (!m || !ret || !ret_n)
                return -EINVAL;
        bpf_object__for_each_program(prog, m->skel->obj) {
                struct bpf_prog_info info;
                __u32 len = sizeof(info);
                int r;

                if (!bpf_program__autoload(prog) || n >= MONITOR_MAX_PROGS)
                        continue;
                memset(&info, 0, sizeof(info));
                r = bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len);
                if (r < 0)
                        return r;
                snprintf(ret[n].name, sizeof(ret[n].name), "%s", bpf_program__name(prog));
                ret[n].run_cnt = info.run_cnt;
                ret[n].run_time_ns = info.run_time_ns;
                n++;
        }
        *ret_n = n;
        return 0;
}

uint64_t monitor_hist_percentile(const monitor_hist *h, double pct) {
        uint64_t target, seen = 0;

        if (!h || h->count == 0)
                return 0;
        if (pct < 0)
                pct = 0;
        if (pct > 100)
                pct = 100;
        target = (uint64_t) (pct / 100.0 * (double) h->count + 0.999999);
        if (target == 0)
                target = 1;
        for (int i = 0; i < MONITOR_HIST_SLOTS; i++) {
                seen += h->slots[i];
                if (seen >= target)
                        return 1ULL << (i + 1);
        }
        return 1ULL << MONITOR_HIST_SLOTS;
}
