/* SPDX-License-Identifier: MIT */
#include "loader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macros.h"

/* Not every libc/kernel header set has these; the values are ABI. */
#ifndef IOPRIO_CLASS_SHIFT
#define IOPRIO_CLASS_SHIFT 13
#endif
#ifndef IOPRIO_PRIO_VALUE
#define IOPRIO_PRIO_VALUE(class, data) (((class) << IOPRIO_CLASS_SHIFT) | (data))
#endif
#define LOADER_IOPRIO_CLASS_IDLE 3
#define LOADER_IOPRIO_WHO_PROCESS 1

#define MAX_DEPTH 64         /* deeper than this is treated as a loop */
#define MAX_REDRAW_ROUNDS 64 /* rounds of redraws for failed windows before giving up */
#define MAX_EAGAIN 1000      /* retries of one read before it counts as an I/O error */

typedef struct {
        char *path; /* relative to the data directory */
        dev_t dev;
        ino_t ino;
        uint64_t size, mtime_ns, hash;
        uint64_t train_end; /* training windows lie in [0, train_end) */
        uint64_t val_start; /* held-out windows lie in [val_start, size) */
        bool dead;          /* vanished or shrank since indexing: never drawn again */
} lfile;

typedef struct {
        int root_fd;
        lfile *files;
        size_t n, cap;
        uint64_t *train_cum, *val_cum; /* prefix sums of window start positions, n+1 each */
        uint64_t skipped[_LOADER_SKIP_MAX];
        uint64_t signature;
        dev_t *dirs_dev; /* visited directories, for loop detection during the walk */
        ino_t *dirs_ino;
        size_t n_dirs, cap_dirs;
} lindex;

typedef struct {
        uint8_t *win; /* B*(T+1) */
        loader_origin *org;
        rng_t before, after;
        int status;
} lslot;

struct loader {
        char *data_dir;
        int B, T;
        unsigned prefetch, check_interval_s;

        /* idx_lock: the index, the ring, the scratch slot and the production stats. */
        pthread_mutex_t idx_lock;
        lindex *idx;
        struct io_uring ring;
        bool have_ring;
        lslot scratch;
        loader_stats st;

        /* q_lock: the queue, its cursor bookkeeping and the consumer stats. */
        pthread_mutex_t q_lock;
        pthread_cond_t nonempty, space;
        lslot *slots;
        unsigned head, count;
        rng_t next; /* cursor the next produced batch starts from */
        uint64_t gen;
        bool stop, thread_started, check_requested;
        pid_t tid;
        pthread_t thread;
        uint64_t batches, wait_ns;
};

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

/* FNV-1a over the relative path, finished with splitmix so the top bits are uniform. */
static uint64_t path_hash(const char *p) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (; *p; p++)
                h = (h ^ (uint8_t) *p) * 0x100000001b3ULL;
        return rng_splitmix64(&h);
}

static uint64_t mix(uint64_t h, uint64_t v) {
        h ^= v;
        return rng_splitmix64(&h);
}

const char *loader_skip_reason_to_string(loader_skip_reason r) {
        static const char *const names[_LOADER_SKIP_MAX] = {
                [LOADER_SKIP_SPECIAL] = "special",     [LOADER_SKIP_EMPTY] = "empty",
                [LOADER_SKIP_TOO_SMALL] = "too-small", [LOADER_SKIP_UNREADABLE] = "unreadable",
                [LOADER_SKIP_LOOP] = "loop",           [LOADER_SKIP_DANGLING] = "dangling",
                [LOADER_SKIP_DUPLICATE] = "duplicate",
        };
        return (unsigned) r < _LOADER_SKIP_MAX ? names[r] : NULL;
}

static void index_free(lindex *ix) {
        if (!ix)
                return;
        for (size_t i = 0; i < ix->n; i++)
                free(ix->files[i].path);
        free(ix->files);
        free(ix->train_cum);
        free(ix->val_cum);
        free(ix->dirs_dev);
        free(ix->dirs_ino);
        if (ix->root_fd >= 0)
                close(ix->root_fd);
        free(ix);
}

/* Returns true if the directory was seen before; records it otherwise. */
static int visit_dir(lindex *ix, dev_t dev, ino_t ino, bool *ret_seen) {
        for (size_t i = 0; i < ix->n_dirs; i++)
                if (ix->dirs_dev[i] == dev && ix->dirs_ino[i] == ino) {
                        *ret_seen = true;
                        return 0;
                }
        if (ix->n_dirs == ix->cap_dirs) {
                size_t cap = MAX(ix->cap_dirs * 2, (size_t) 16);
                dev_t *d = realloc(ix->dirs_dev, cap * sizeof(*d));
                if (!d)
                        return -ENOMEM;
                ix->dirs_dev = d;
                ino_t *in = realloc(ix->dirs_ino, cap * sizeof(*in));
                if (!in)
                        return -ENOMEM;
                ix->dirs_ino = in;
                ix->cap_dirs = cap;
        }
        ix->dirs_dev[ix->n_dirs] = dev;
        ix->dirs_ino[ix->n_dirs++] = ino;
        *ret_seen = false;
        return 0;
}

static int add_file(lindex *ix, char *path, const struct stat *st) {
        if (ix->n == ix->cap) {
                size_t cap = MAX(ix->cap * 2, (size_t) 64);
                lfile *f = realloc(ix->files, cap * sizeof(*f));
                if (!f)
                        return -ENOMEM;
                ix->files = f;
                ix->cap = cap;
        }
        ix->files[ix->n++] = (lfile){
                .path = path,
                .dev = st->st_dev,
                .ino = st->st_ino,
                .size = (uint64_t) st->st_size,
                .mtime_ns = (uint64_t) st->st_mtim.tv_sec * 1000000000ULL +
                            (uint64_t) st->st_mtim.tv_nsec,
                .hash = path_hash(path),
        };
        return 0;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static void free_names(char **names, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

/* Walks the directory dfd (owned) in sorted name order, depth first, so the index is the
 * same on every run over the same tree. */
static int walk(lindex *ix, int dfd, const char *rel, int depth, int T) {
        DIR *d = fdopendir(dfd);
        char **names = NULL;
        size_t n = 0, cap = 0;
        int r = 0;

        if (!d) {
                close(dfd);
                return -errno;
        }
        for (struct dirent *de; (errno = 0, de = readdir(d));) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                        continue;
                if (n == cap) {
                        cap = MAX(cap * 2, (size_t) 32);
                        char **nn = realloc(names, cap * sizeof(*nn));
                        if (!nn) {
                                r = -ENOMEM;
                                goto out;
                        }
                        names = nn;
                }
                if (!(names[n] = strdup(de->d_name))) {
                        r = -ENOMEM;
                        goto out;
                }
                n++;
        }
        if (n > 0)
                qsort(names, n, sizeof(*names), cmp_str);

        for (size_t i = 0; i < n; i++) {
                const char *name = names[i];
                struct stat st;
                char *child;

                if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        ix->skipped[LOADER_SKIP_UNREADABLE]++; /* gone or not stat-able */
                        continue;
                }
                if (S_ISLNK(st.st_mode) && fstatat(dirfd(d), name, &st, 0) < 0) {
                        ix->skipped[errno == ELOOP    ? LOADER_SKIP_LOOP
                                    : errno == ENOENT ? LOADER_SKIP_DANGLING
                                                      : LOADER_SKIP_UNREADABLE]++;
                        continue;
                }
                if (S_ISDIR(st.st_mode)) {
                        bool seen;
                        r = visit_dir(ix, st.st_dev, st.st_ino, &seen);
                        if (r < 0)
                                goto out;
                        if (seen || depth >= MAX_DEPTH) {
                                ix->skipped[LOADER_SKIP_LOOP]++;
                                continue;
                        }
                        int cfd = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        if (cfd < 0) {
                                ix->skipped[LOADER_SKIP_UNREADABLE]++;
                                continue;
                        }
                        if (asprintf(&child, "%s%s%s", rel, *rel ? "/" : "", name) < 0) {
                                close(cfd);
                                r = -ENOMEM;
                                goto out;
                        }
                        r = walk(ix, cfd, child, depth + 1, T);
                        free(child);
                        if (r == -ENOMEM)
                                goto out;
                        if (r < 0)
                                ix->skipped[LOADER_SKIP_UNREADABLE]++;
                        r = 0;
                        continue;
                }
                if (!S_ISREG(st.st_mode)) {
                        ix->skipped[LOADER_SKIP_SPECIAL]++;
                        continue;
                }
                if (st.st_size == 0) {
                        ix->skipped[LOADER_SKIP_EMPTY]++;
                        continue;
                }
                if ((uint64_t) st.st_size < (uint64_t) T + 1) {
                        ix->skipped[LOADER_SKIP_TOO_SMALL]++;
                        continue;
                }
                /* Try the open now, so permission problems are found (and counted) once
                 * here rather than as read errors on every draw. Root reads mode 000. */
                int ffd = openat(dirfd(d), name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                if (ffd < 0) {
                        ix->skipped[LOADER_SKIP_UNREADABLE]++;
                        continue;
                }
                close(ffd);
                if (asprintf(&child, "%s%s%s", rel, *rel ? "/" : "", name) < 0) {
                        r = -ENOMEM;
                        goto out;
                }
                r = add_file(ix, child, &st);
                if (r < 0) {
                        free(child);
                        goto out;
                }
        }
out:
        free_names(names, n);
        closedir(d);
        return r;
}

static int cmp_devino(const void *a, const void *b, void *arg) {
        const lfile *f = arg;
        const lfile *x = &f[*(const size_t *) a], *y = &f[*(const size_t *) b];
        if (x->dev != y->dev)
                return x->dev < y->dev ? -1 : 1;
        if (x->ino != y->ino)
                return x->ino < y->ino ? -1 : 1;
        return *(const size_t *) a < *(const size_t *) b ? -1 : 1;
}

/* Hard links and symlinks to files would count one file twice: keep the first in walk
 * order, which is deterministic. */
static int dedupe(lindex *ix) {
        if (ix->n < 2)
                return 0;
        size_t *order = malloc(ix->n * sizeof(*order));
        bool *drop = calloc(ix->n, sizeof(*drop));
        if (!order || !drop) {
                free(order);
                free(drop);
                return -ENOMEM;
        }
        for (size_t i = 0; i < ix->n; i++)
                order[i] = i;
        qsort_r(order, ix->n, sizeof(*order), cmp_devino, ix->files);
        for (size_t i = 1; i < ix->n; i++) {
                const lfile *p = &ix->files[order[i - 1]], *c = &ix->files[order[i]];
                if (p->dev == c->dev && p->ino == c->ino)
                        drop[order[i]] = true;
        }
        size_t k = 0;
        for (size_t i = 0; i < ix->n; i++) {
                if (drop[i]) {
                        free(ix->files[i].path);
                        ix->skipped[LOADER_SKIP_DUPLICATE]++;
                } else
                        ix->files[k++] = ix->files[i];
        }
        ix->n = k;
        free(order);
        free(drop);
        return 0;
}

static void split(lindex *ix, int T) {
        const uint64_t threshold = UINT64_MAX / 20; /* 5 % of the hash range */
        const uint64_t W = (uint64_t) T + 1;

        if (ix->n == 1) {
                lfile *f = &ix->files[0];
                uint64_t hold = MAX(f->size / 20, W);
                if (f->size >= 2 * hold && f->size - hold >= W) {
                        f->train_end = f->size - hold;
                        f->val_start = f->train_end;
                } else {
                        f->train_end = f->size; /* too short to split: no validation */
                        f->val_start = f->size;
                }
                return;
        }
        size_t n_val = 0, lo = 0, hi = 0;
        for (size_t i = 0; i < ix->n; i++) {
                lfile *f = &ix->files[i];
                bool val = f->hash < threshold;
                f->train_end = val ? 0 : f->size;
                f->val_start = val ? 0 : f->size;
                n_val += val;
                if (f->hash < ix->files[lo].hash)
                        lo = i;
                if (f->hash > ix->files[hi].hash)
                        hi = i;
        }
        if (ix->n >= 2 && n_val == 0) {
                ix->files[lo].train_end = 0;
                ix->files[lo].val_start = 0;
        } else if (ix->n >= 2 && n_val == ix->n) {
                ix->files[hi].train_end = ix->files[hi].size;
                ix->files[hi].val_start = ix->files[hi].size;
        }
}

static uint64_t positions(uint64_t len, int T) {
        return len >= (uint64_t) T + 1 ? len - (uint64_t) T : 0;
}

static int index_build(const char *dir, int T, lindex **ret) {
        lindex *ix = calloc(1, sizeof(*ix));
        struct stat st;
        int r;

        if (!ix)
                return -ENOMEM;
        ix->root_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (ix->root_fd < 0 || fstat(ix->root_fd, &st) < 0) {
                r = -errno;
                index_free(ix);
                return r;
        }
        bool seen;
        r = visit_dir(ix, st.st_dev, st.st_ino, &seen);
        if (r >= 0) {
                int dfd = fcntl(ix->root_fd, F_DUPFD_CLOEXEC, 3);
                r = dfd < 0 ? -errno : walk(ix, dfd, "", 0, T);
        }
        if (r >= 0)
                r = dedupe(ix);
        if (r >= 0) {
                ix->train_cum = calloc(ix->n + 1, sizeof(uint64_t));
                ix->val_cum = calloc(ix->n + 1, sizeof(uint64_t));
                if (!ix->train_cum || !ix->val_cum)
                        r = -ENOMEM;
        }
        if (r < 0) {
                index_free(ix);
                return r;
        }
        split(ix, T);
        uint64_t sig = 0x5eed;
        for (size_t i = 0; i < ix->n; i++) {
                const lfile *f = &ix->files[i];
                ix->train_cum[i + 1] = ix->train_cum[i] + positions(f->train_end, T);
                ix->val_cum[i + 1] = ix->val_cum[i] + positions(f->size - f->val_start, T);
                sig = mix(mix(mix(mix(sig, f->hash), f->size), f->mtime_ns), f->ino);
        }
        for (size_t i = 0; i < _LOADER_SKIP_MAX; i++)
                sig = mix(sig, ix->skipped[i]);
        ix->signature = sig;
        free(ix->dirs_dev); /* only needed during the walk */
        free(ix->dirs_ino);
        ix->dirs_dev = NULL;
        ix->dirs_ino = NULL;
        *ret = ix;
        return 0;
}

/* The i with cum[i] <= u < cum[i+1]; zero-width entries are never returned. */
static size_t find_file(const uint64_t *cum, size_t n, uint64_t u) {
        size_t lo = 0, hi = n; /* cum[lo] <= u < cum[hi] */
        while (hi - lo > 1) {
                size_t mid = lo + (hi - lo) / 2;
                if (cum[mid] <= u)
                        lo = mid;
                else
                        hi = mid;
        }
        return lo;
}

static bool index_has_live_train(const lindex *ix) {
        for (size_t i = 0; i < ix->n; i++)
                if (!ix->files[i].dead && ix->train_cum[i + 1] > ix->train_cum[i])
                        return true;
        return false;
}

/* One draw from the cursor: file weighted by its number of window starts, offset uniform.
 * Files marked dead are redrawn, still from the cursor, so the result stays reproducible. */
static int draw(loader *l, lindex *ix, rng_t *cur, loader_origin *ret) {
        uint64_t total = ix->train_cum[ix->n];
        if (total == 0)
                return -ENODATA;
        for (unsigned tries = 0;; tries++) {
                uint64_t u = rng_below(cur, total);
                size_t f = find_file(ix->train_cum, ix->n, u);
                if (!ix->files[f].dead) {
                        *ret = (loader_origin){ .file = f, .offset = u - ix->train_cum[f] };
                        return 0;
                }
                l->st.redraws++;
                if (tries % 64 == 63 && !index_has_live_train(ix))
                        return -ENODATA;
        }
}

static void mark_dead(loader *l, lindex *ix, size_t f, int err) {
        if (ix->files[f].dead)
                return;
        ix->files[f].dead = true;
        if (err == -ENOENT)
                l->st.vanished++;
        else if (err == -ENODATA)
                l->st.shrunk++;
        else
                l->st.io_errors++;
        log_debug("loader: %s: dropped until re-index (%s)", ix->files[f].path,
                  err == -ENODATA ? "shrank" : strerror(-err));
}

typedef struct {
        int fd;
        size_t done;
        int err;
        unsigned eagain;
} wstate;

/* Accounts one read result for a window; returns true if the window needs another read. */
static bool account(loader *l, wstate *w, ssize_t res, size_t W) {
        if (res == -EAGAIN || res == -EINTR) {
                l->st.eagain++;
                if (++w->eagain > MAX_EAGAIN)
                        w->err = -EIO;
                return w->err == 0;
        }
        if (res < 0) {
                w->err = (int) res;
                return false;
        }
        if (res == 0) { /* EOF before the window ended: the file shrank */
                w->err = -ENODATA;
                return false;
        }
        w->done += (size_t) res;
        l->st.bytes_read += (uint64_t) res;
        if (w->done < W) {
                l->st.short_reads++;
                return true;
        }
        return false;
}

static void read_pread(loader *l, const loader_origin *org, uint8_t *win, wstate *ws,
                       const int *slot, int n, size_t W) {
        for (int k = 0; k < n; k++) {
                wstate *w = &ws[k];
                uint8_t *buf = win + (size_t) slot[k] * W;
                if (w->err)
                        continue;
                for (;;) {
                        ssize_t res = pread(w->fd, buf + w->done, W - w->done,
                                            (off_t) (org[slot[k]].offset + w->done));
                        if (!account(l, w, res < 0 ? -errno : res, W))
                                break;
                }
        }
}

static void prep(loader *l, struct io_uring_sqe *sqe, const loader_origin *o, uint8_t *buf,
                 wstate *w, int k, size_t W) {
        io_uring_prep_read(sqe, w->fd, buf + w->done, (unsigned) (W - w->done),
                           o->offset + w->done);
        /* Idle I/O class: the owner's own disk traffic always goes first. */
        sqe->ioprio = IOPRIO_PRIO_VALUE(LOADER_IOPRIO_CLASS_IDLE, 0);
        io_uring_sqe_set_data64(sqe, (uint64_t) k);
}

/* All windows' reads go out in one submission; short reads and -EAGAIN are resubmitted for
 * the remainder until every window is complete or failed. */
static int read_uring(loader *l, const loader_origin *org, uint8_t *win, wstate *ws,
                      const int *slot, int n, size_t W) {
        unsigned inflight = 0;
        for (int k = 0; k < n; k++) {
                if (ws[k].err)
                        continue;
                struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
                if (!sqe)
                        return -EBUSY; /* ring sized for B: cannot happen */
                prep(l, sqe, &org[slot[k]], win + (size_t) slot[k] * W, &ws[k], k, W);
                inflight++;
        }
        while (inflight > 0) {
                int r = io_uring_submit_and_wait(&l->ring, 1);
                if (r < 0 && r != -EINTR && r != -EAGAIN)
                        return r;
                struct io_uring_cqe *cqe;
                unsigned head, seen = 0;
                io_uring_for_each_cqe(&l->ring, head, cqe) {
                        int k = (int) io_uring_cqe_get_data64(cqe);
                        seen++;
                        inflight--;
                        if (account(l, &ws[k], cqe->res, W)) {
                                struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
                                if (!sqe) {
                                        ws[k].err = -EBUSY;
                                        continue;
                                }
                                prep(l, sqe, &org[slot[k]], win + (size_t) slot[k] * W, &ws[k], k,
                                     W);
                                inflight++;
                        }
                }
                io_uring_cq_advance(&l->ring, seen);
        }
        return 0;
}

/* Draws and reads one batch of B windows into s->win. Windows whose file vanished or shrank
 * are redrawn from the cursor (slot order), so the batch is still a function of the cursor
 * and the files on disk. Caller holds idx_lock. */
static int produce(loader *l, rng_t *cur, lslot *s) {
        lindex *ix = l->idx;
        const size_t W = (size_t) l->T + 1;
        int *todo = malloc((size_t) l->B * sizeof(int));
        wstate *ws = malloc((size_t) l->B * sizeof(wstate));
        int n = l->B, r = 0;

        if (!todo || !ws) {
                r = -ENOMEM;
                goto out;
        }
        s->before = *cur;
        for (int j = 0; j < l->B; j++)
                todo[j] = j;
        for (unsigned round = 0; n > 0; round++) {
                if (round >= MAX_REDRAW_ROUNDS) {
                        r = -EIO;
                        goto out;
                }
                for (int k = 0; k < n; k++) {
                        r = draw(l, ix, cur, &s->org[todo[k]]);
                        if (r < 0)
                                goto out;
                        if (round > 0)
                                l->st.redraws++;
                }
                for (int k = 0; k < n; k++) {
                        const lfile *f = &ix->files[s->org[todo[k]].file];
                        ws[k] = (wstate){ .fd = -1 };
                        if (f->dead) { /* killed earlier in this round */
                                ws[k].err = -ENOENT;
                                continue;
                        }
                        ws[k].fd = openat(ix->root_fd, f->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                        if (ws[k].fd < 0)
                                ws[k].err = -errno;
                }
                if (l->have_ring)
                        r = read_uring(l, s->org, s->win, ws, todo, n, W);
                else
                        read_pread(l, s->org, s->win, ws, todo, n, W);
                int m = 0;
                for (int k = 0; k < n; k++) {
                        if (ws[k].fd >= 0)
                                close(ws[k].fd);
                        if (r >= 0 && ws[k].err == 0)
                                continue;
                        if (ws[k].err)
                                mark_dead(l, ix, s->org[todo[k]].file, ws[k].err);
                        todo[m++] = todo[k];
                }
                if (r < 0)
                        goto out;
                n = m;
        }
        s->after = *cur;
out:
        s->status = r;
        free(todo);
        free(ws);
        return r;
}

static void copy_out(const loader *l, const lslot *s, uint8_t *tokens, uint8_t *targets,
                     loader_origin *origins) {
        const size_t T = (size_t) l->T, W = T + 1;
        for (int j = 0; j < l->B; j++) {
                memcpy(tokens + (size_t) j * T, s->win + (size_t) j * W, T);
                memcpy(targets + (size_t) j * T, s->win + (size_t) j * W + 1, T);
        }
        if (origins)
                memcpy(origins, s->org, (size_t) l->B * sizeof(*origins));
}

static int slot_init(lslot *s, int B, int T) {
        /* Zeroed: io_uring fills it behind valgrind's back, which would otherwise flag
         * every byte read as uninitialised. */
        s->win = calloc((size_t) B, (size_t) T + 1);
        s->org = calloc((size_t) B, sizeof(*s->org));
        return s->win && s->org ? 0 : -ENOMEM;
}

static void slot_swap(lslot *a, lslot *b) {
        lslot t = *a;
        *a = *b;
        *b = t;
}

static void *producer(void *arg) {
        loader *l = arg;
        struct sched_param sp = { 0 };
        uint64_t last_check = now_ns();

        /* Part of the harvester: only spare CPU and spare disk time. */
        if (sched_setscheduler(0, SCHED_IDLE, &sp) < 0)
                log_warning_errno(errno, "loader: cannot set SCHED_IDLE: %m");
        if (syscall(SYS_ioprio_set, LOADER_IOPRIO_WHO_PROCESS, 0,
                    IOPRIO_PRIO_VALUE(LOADER_IOPRIO_CLASS_IDLE, 0)) < 0)
                log_debug("loader: ioprio_set failed: %s", strerror(errno));

        pthread_mutex_lock(&l->q_lock);
        l->tid = (pid_t) syscall(SYS_gettid);
        pthread_cond_broadcast(&l->nonempty);
        while (!l->stop) {
                uint64_t now = now_ns();
                if (l->check_requested ||
                    (l->check_interval_s &&
                     now - last_check >= (uint64_t) l->check_interval_s * 1000000000ULL)) {
                        last_check = now;
                        l->check_requested = false;
                        pthread_mutex_unlock(&l->q_lock);
                        (void) loader_check(l, NULL);
                        pthread_mutex_lock(&l->q_lock);
                        continue;
                }
                if (l->count == l->prefetch) {
                        if (l->check_interval_s) {
                                /* sleep until the next check is due, not a second at a time:
                                 * a paused daemon should not wake up for nothing */
                                uint64_t due = last_check + (uint64_t) l->check_interval_s * 1000000000ULL;
                                uint64_t wait = due > now ? due - now : 0;
                                struct timespec ts;
                                clock_gettime(CLOCK_REALTIME, &ts);
                                ts.tv_sec += (time_t) (wait / 1000000000ULL);
                                ts.tv_nsec += (long) (wait % 1000000000ULL);
                                if (ts.tv_nsec >= 1000000000L) {
                                        ts.tv_sec++;
                                        ts.tv_nsec -= 1000000000L;
                                }
                                pthread_cond_timedwait(&l->space, &l->q_lock, &ts);
                        } else
                                pthread_cond_wait(&l->space, &l->q_lock);
                        continue;
                }
                rng_t cur = l->next;
                uint64_t gen = l->gen;
                pthread_mutex_unlock(&l->q_lock);

                pthread_mutex_lock(&l->idx_lock);
                (void) produce(l, &cur, &l->scratch);
                pthread_mutex_unlock(&l->idx_lock);

                pthread_mutex_lock(&l->q_lock);
                if (gen != l->gen) /* consumer changed cursor or index changed: stale */
                        continue;
                /* scratch is only touched by the producer outside idx_lock in sync mode,
                 * which has no thread, so swapping it here is safe. */
                lslot *dst = &l->slots[(l->head + l->count) % l->prefetch];
                slot_swap(dst, &l->scratch);
                l->count++;
                l->next = dst->status < 0 ? dst->before : dst->after;
                pthread_cond_signal(&l->nonempty);
                if (dst->status < 0) /* e.g. no data: wait for the consumer or a re-index */
                        pthread_cond_wait(&l->space, &l->q_lock);
        }
        pthread_mutex_unlock(&l->q_lock);
        return NULL;
}

int loader_new(const loader_options *opts, loader **ret) {
        loader *l;
        int r;

        if (!opts || !opts->data_dir || opts->B <= 0 || opts->T <= 0 || !ret)
                return -EINVAL;
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->B = opts->B;
        l->T = opts->T;
        l->prefetch = opts->prefetch;
        l->check_interval_s = opts->check_interval_s;
        pthread_mutex_init(&l->idx_lock, NULL);
        pthread_mutex_init(&l->q_lock, NULL);
        pthread_cond_init(&l->nonempty, NULL);
        pthread_cond_init(&l->space, NULL);
        l->data_dir = strdup(opts->data_dir);
        if (!l->data_dir || slot_init(&l->scratch, l->B, l->T) < 0) {
                r = -ENOMEM;
                goto fail;
        }
        if (l->prefetch) {
                l->slots = calloc(l->prefetch, sizeof(*l->slots));
                if (!l->slots) {
                        r = -ENOMEM;
                        goto fail;
                }
                for (unsigned i = 0; i < l->prefetch; i++)
                        if (slot_init(&l->slots[i], l->B, l->T) < 0) {
                                r = -ENOMEM;
                                goto fail;
                        }
        }
        r = index_build(l->data_dir, l->T, &l->idx);
        if (r < 0) {
                log_error_errno(r, "loader: cannot index %s: %m", l->data_dir);
                goto fail;
        }
        if (l->idx->train_cum[l->idx->n] == 0) {
                r = log_error_errno(ENODATA, "loader: %s: no file holds a window of %d bytes",
                                    l->data_dir, l->T + 1);
                goto fail;
        }
        unsigned entries = 1;
        while (entries < (unsigned) l->B)
                entries *= 2;
        if (opts->force_pread)
                r = -ENOSYS;
        else
                r = io_uring_queue_init(entries, &l->ring, 0);
        if (r < 0) {
                /* qemu-user, seccomp filters, old kernels: still works, just slower. */
                log_info("loader: io_uring unavailable (%s), reading with pread()", strerror(-r));
                l->st.pread_fallback = true;
        } else
                l->have_ring = true;
        log_info("loader: %s: %zu files, %" PRIu64 " training windows", l->data_dir, l->idx->n,
                 l->idx->train_cum[l->idx->n]);

        if (l->prefetch) {
                r = -pthread_create(&l->thread, NULL, producer, l);
                if (r < 0) {
                        log_error_errno(r, "loader: cannot start prefetch thread: %m");
                        goto fail;
                }
                l->thread_started = true;
                pthread_mutex_lock(&l->q_lock);
                while (l->tid == 0)
                        pthread_cond_wait(&l->nonempty, &l->q_lock);
                pthread_mutex_unlock(&l->q_lock);
        }
        *ret = l;
        return 0;
fail:
        loader_free(l);
        return r;
}

void loader_free(loader *l) {
        if (!l)
                return;
        if (l->thread_started) {
                pthread_mutex_lock(&l->q_lock);
                l->stop = true;
                pthread_cond_broadcast(&l->space);
                pthread_mutex_unlock(&l->q_lock);
                pthread_join(l->thread, NULL);
        }
        if (l->have_ring)
                io_uring_queue_exit(&l->ring);
        if (l->slots)
                for (unsigned i = 0; i < l->prefetch; i++) {
                        free(l->slots[i].win);
                        free(l->slots[i].org);
                }
        free(l->slots);
        free(l->scratch.win);
        free(l->scratch.org);
        index_free(l->idx);
        pthread_cond_destroy(&l->nonempty);
        pthread_cond_destroy(&l->space);
        pthread_mutex_destroy(&l->q_lock);
        pthread_mutex_destroy(&l->idx_lock);
        free(l->data_dir);
        free(l);
}

int loader_next_batch(loader *l, rng_t *cursor, uint8_t *tokens, uint8_t *targets,
                      loader_batch_info *info) {
        int r;

        if (!l || !cursor || !tokens || !targets)
                return -EINVAL;
        if (!l->prefetch) {
                rng_t cur = *cursor;
                pthread_mutex_lock(&l->idx_lock);
                r = produce(l, &cur, &l->scratch);
                if (r >= 0) {
                        copy_out(l, &l->scratch, tokens, targets, info ? info->origins : NULL);
                        *cursor = cur;
                }
                pthread_mutex_unlock(&l->idx_lock);
                pthread_mutex_lock(&l->q_lock);
                l->batches += r >= 0;
                pthread_mutex_unlock(&l->q_lock);
                if (info)
                        info->wait_ns = 0;
                return r;
        }

        pthread_mutex_lock(&l->q_lock);
        rng_t want = l->count ? l->slots[l->head].before : l->next;
        if (want.state != cursor->state) {
                /* First call or restored checkpoint: refill from the caller's cursor. */
                l->count = 0;
                l->gen++;
                l->next = *cursor;
                pthread_cond_signal(&l->space);
        }
        uint64_t t0 = now_ns(), waited = 0;
        while (l->count == 0 && !l->stop)
                pthread_cond_wait(&l->nonempty, &l->q_lock);
        if (l->count == 0) {
                pthread_mutex_unlock(&l->q_lock);
                return -ESHUTDOWN;
        }
        waited = now_ns() - t0;
        lslot *s = &l->slots[l->head];
        r = s->status;
        if (r >= 0) {
                copy_out(l, s, tokens, targets, info ? info->origins : NULL);
                *cursor = s->after;
                l->batches++;
        }
        l->head = (l->head + 1) % l->prefetch;
        l->count--;
        l->wait_ns += waited;
        pthread_cond_signal(&l->space);
        pthread_mutex_unlock(&l->q_lock);
        if (info)
                info->wait_ns = waited;
        return r;
}

int loader_val_batch(loader *l, uint64_t i, uint8_t *tokens, uint8_t *targets,
                     loader_origin *origins) {
        const size_t T = (size_t) l->T, W = T + 1;
        int r = 0;

        if (!tokens || !targets)
                return -EINVAL;
        uint8_t *buf = malloc(W);
        if (!buf)
                return -ENOMEM;
        pthread_mutex_lock(&l->idx_lock);
        lindex *ix = l->idx;
        uint64_t total = ix->val_cum[ix->n];
        for (int j = 0; j < l->B && r >= 0; j++) {
                /* Window k is a pure function of k, so "batch i" means the same bytes on
                 * every call; failures step to the next draw of the same stream. */
                rng_t g = { .state = 0x7a1dULL ^ ((i * (uint64_t) l->B + (uint64_t) j) *
                                                  0x9e3779b97f4a7c15ULL) };
                bool ok = false;
                if (total == 0) {
                        r = -ENODATA;
                        break;
                }
                for (unsigned tries = 0; tries < 64 && !ok; tries++) {
                        uint64_t u = rng_below(&g, total);
                        size_t f = find_file(ix->val_cum, ix->n, u);
                        const lfile *lf = &ix->files[f];
                        uint64_t off = lf->val_start + (u - ix->val_cum[f]);
                        if (lf->dead)
                                continue;
                        _cleanup_close_ int fd =
                                openat(ix->root_fd, lf->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                        if (fd < 0) {
                                mark_dead(l, ix, f, -errno);
                                continue;
                        }
                        wstate w = { .fd = fd };
                        for (;;) {
                                ssize_t res =
                                        pread(fd, buf + w.done, W - w.done, (off_t) (off + w.done));
                                if (!account(l, &w, res < 0 ? -errno : res, W))
                                        break;
                        }
                        if (w.err) {
                                mark_dead(l, ix, f, w.err);
                                continue;
                        }
                        memcpy(tokens + (size_t) j * T, buf, T);
                        memcpy(targets + (size_t) j * T, buf + 1, T);
                        if (origins)
                                origins[j] = (loader_origin){ .file = f, .offset = off };
                        ok = true;
                }
                if (!ok)
                        r = -EIO;
        }
        pthread_mutex_unlock(&l->idx_lock);
        free(buf);
        return r;
}

static int swap_index(loader *l, lindex *nix) {
        pthread_mutex_lock(&l->idx_lock);
        lindex *old = l->idx;
        l->idx = nix;
        l->st.reindexes++;
        pthread_mutex_unlock(&l->idx_lock);
        index_free(old);

        if (l->prefetch) {
                /* Queued batches came from the old index: redraw them from the same cursor. */
                pthread_mutex_lock(&l->q_lock);
                if (l->count)
                        l->next = l->slots[l->head].before;
                l->count = 0;
                l->gen++;
                pthread_cond_broadcast(&l->space);
                pthread_mutex_unlock(&l->q_lock);
        }
        log_info("loader: re-indexed %s: %zu files", l->data_dir, nix->n);
        return 0;
}

int loader_reindex(loader *l) {
        lindex *nix = NULL;
        int r = index_build(l->data_dir, l->T, &nix);
        if (r >= 0 && !nix)
                r = -ENODATA;
        if (r < 0)
                return log_warning_errno(
                        r, "loader: re-index of %s failed, keeping the old one: %m", l->data_dir);
        return swap_index(l, nix);
}

int loader_check(loader *l, bool *ret_changed) {
        lindex *nix = NULL;
        int r = index_build(l->data_dir, l->T, &nix);
        if (r < 0)
                return log_warning_errno(r, "loader: check of %s failed: %m", l->data_dir);
        if (!nix) /* every usable file is gone: keep the old index, its reads count them */
                return log_warning_errno(ENODATA, "loader: %s has no usable files now; "
                                                  "keeping the old index", l->data_dir);
        pthread_mutex_lock(&l->idx_lock);
        bool dead = false;
        for (size_t i = 0; i < l->idx->n && !dead; i++)
                dead = l->idx->files[i].dead;
        bool changed = nix->signature != l->idx->signature || dead;
        pthread_mutex_unlock(&l->idx_lock);
        if (ret_changed)
                *ret_changed = changed;
        if (!changed) {
                index_free(nix);
                return 0;
        }
        return swap_index(l, nix);
}

void loader_get_stats(loader *l, loader_stats *ret) {
        pthread_mutex_lock(&l->idx_lock);
        *ret = l->st;
        const lindex *ix = l->idx;
        ret->n_files = ix->n;
        for (size_t i = 0; i < ix->n; i++) {
                const lfile *f = &ix->files[i];
                bool val = f->train_end == 0;
                ret->n_train_files += !val;
                ret->n_val_files += val || f->val_start < f->size;
                ret->bytes += f->size;
                ret->train_bytes += f->train_end;
                ret->val_bytes += f->size - f->val_start;
        }
        memcpy(ret->skipped, ix->skipped, sizeof(ret->skipped));
        pthread_mutex_unlock(&l->idx_lock);
        pthread_mutex_lock(&l->q_lock);
        ret->batches = l->batches;
        ret->wait_ns = l->wait_ns;
        pthread_mutex_unlock(&l->q_lock);
}

const char *loader_file_path(loader *l, size_t file) {
        return file < l->idx->n ? l->idx->files[file].path : NULL;
}

bool loader_file_is_val(loader *l, size_t file) {
        return file < l->idx->n && l->idx->files[file].train_end == 0;
}

void loader_request_check(loader *l) {
        if (!l->prefetch) {
                (void) loader_check(l, NULL);
                return;
        }
        pthread_mutex_lock(&l->q_lock);
        l->check_requested = true;
        pthread_cond_broadcast(&l->space);
        pthread_mutex_unlock(&l->q_lock);
}

int loader_batch_size(const loader *l) {
        return l->B;
}

int loader_window(const loader *l) {
        return l->T;
}

pid_t loader_thread_tid(loader *l) {
        return l->thread_started ? l->tid : 0;
}
