/* SPDX-License-Identifier: MIT */
#pragma once

/* Training data straight from DataDirectory (DESIGN.md §7): an index of the regular files
 * under it, random windows of T+1 bytes read with io_uring at the idle I/O priority, and a
 * queue of batches prefetched by a SCHED_IDLE thread so the trainer does not wait on disk.
 *
 * Reproducibility: the caller owns the data cursor (an rng_t, saved in checkpoints). Each
 * batch is a pure function of (index, cursor before it); loader_next_batch() advances the
 * caller's cursor to the state after the batch it returns. If the cursor the caller passes
 * is not the one the prefetched queue was drawn from (first call, restored checkpoint), the
 * queue is dropped and refilled from the caller's cursor, so the same cursor always gives
 * the same batches over the same files.
 *
 * Held-out split: a file whose path hash falls in the lowest 5 % of the hash range is for
 * validation only (stable as files come and go). With two or more files and no file in that
 * range, the file with the smallest hash is held out; if every file is held out, the one
 * with the largest hash trains. With a single usable file, its last 5 % of bytes (at least
 * T+1) are held out instead. Files shorter than T+1 bytes cannot hold a window: they are
 * skipped (LOADER_SKIP_TOO_SMALL). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rng.h"

typedef struct loader loader;

typedef enum {
        LOADER_SKIP_SPECIAL,    /* socket, fifo, device */
        LOADER_SKIP_EMPTY,      /* zero-length file */
        LOADER_SKIP_TOO_SMALL,  /* shorter than one window of T+1 bytes */
        LOADER_SKIP_UNREADABLE, /* open() or opendir() refused (EACCES, EIO, ...) */
        LOADER_SKIP_LOOP,       /* directory already visited (symlink loop, bind mount) */
        LOADER_SKIP_DANGLING,   /* symlink whose target does not exist */
        LOADER_SKIP_DUPLICATE,  /* same (dev, ino) reached again (hard link, file symlink) */
        _LOADER_SKIP_MAX,
} loader_skip_reason;

typedef struct {
        const char *data_dir;
        int B, T;                  /* windows per batch, tokens per window */
        unsigned prefetch;         /* batches queued ahead by the thread; 0 = no thread */
        bool force_pread;          /* skip io_uring (tests, or known-broken environments) */
        unsigned check_interval_s; /* thread re-walks the tree this often; 0 = never */
} loader_options;

typedef struct {
        uint64_t n_files, n_train_files, n_val_files;
        uint64_t bytes, train_bytes, val_bytes; /* window-capable ranges, as indexed */
        uint64_t skipped[_LOADER_SKIP_MAX];
        uint64_t vanished;  /* open() failed ENOENT after indexing */
        uint64_t shrunk;    /* read hit EOF before the window ended */
        uint64_t io_errors; /* any other failed open or read */
        uint64_t short_reads, eagain, redraws;
        uint64_t bytes_read, batches, wait_ns, reindexes;
        bool pread_fallback; /* io_uring unavailable: reads go through pread() */
} loader_stats;

/* Where window j of a batch came from: index file number and byte offset. */
typedef struct {
        size_t file;
        uint64_t offset;
} loader_origin;

typedef struct {
        uint64_t wait_ns;       /* time this call blocked for the queue */
        loader_origin *origins; /* caller array of B entries to fill, or NULL */
} loader_batch_info;

/* Indexes opts->data_dir and, if opts->prefetch > 0, starts the prefetch thread. No usable
 * training window at all is -ENODATA. */
int loader_new(const loader_options *opts, loader **ret);
void loader_free(loader *l);

/* Fills tokens and targets (B*T bytes each) from the batch drawn at *cursor, then advances
 * *cursor past it. Blocks only while the prefetch queue is empty; info (may be NULL) gets
 * the time waited and optionally the windows' origins. */
int loader_next_batch(loader *l, rng_t *cursor, uint8_t *tokens, uint8_t *targets,
                      loader_batch_info *info);

/* Held-out batch number i (deterministic for a given index; windows wrap around). Read
 * synchronously with pread() in the caller's thread; it is small and infrequent. */
int loader_val_batch(loader *l, uint64_t i, uint8_t *tokens, uint8_t *targets,
                     loader_origin *origins);

/* Re-walks the directory and swaps in the new index; queued batches are dropped and
 * redrawn from the same cursor. loader_check() re-walks too but swaps only if the file set,
 * sizes or mtimes changed (ret_changed may be NULL). */
int loader_reindex(loader *l);
int loader_check(loader *l, bool *ret_changed);
/* Asks the prefetch thread to run loader_check() soon (e.g. on an inotify event), so the
 * caller's thread never walks the tree. Without a thread, checks in the caller's. */
void loader_request_check(loader *l);

int loader_batch_size(const loader *l); /* B */
int loader_window(const loader *l);     /* T */

void loader_get_stats(loader *l, loader_stats *ret);
/* Relative path of index file number `file`, valid until the next re-index. */
const char *loader_file_path(loader *l, size_t file);
bool loader_file_is_val(loader *l, size_t file);
/* Kernel TID of the prefetch thread (for harvester registration), or 0 without one. */
pid_t loader_thread_tid(loader *l);

const char *loader_skip_reason_to_string(loader_skip_reason r);
