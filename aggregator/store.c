/* SPDX-License-Identifier: MIT */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"
#include "macros.h"

struct agg_store {
        sqlite3 *db;
        char *dir;
        pthread_mutex_t lock;
        char stage_token[AGG_SECRET_HEX]; /* "" when it could not be made */
};

static const char schema[] =
        "CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE IF NOT EXISTS tokens(hash TEXT PRIMARY KEY, created_at INTEGER NOT NULL,"
        " expires_at INTEGER, uses_left INTEGER);"
        "CREATE TABLE IF NOT EXISTS devices(id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL,"
        " name TEXT, enrolled_at INTEGER NOT NULL, last_seen INTEGER, telemetry TEXT,"
        " telemetry_at INTEGER);"
        "CREATE TABLE IF NOT EXISTS versions(version INTEGER PRIMARY KEY, blob TEXT NOT NULL,"
        " moments TEXT, created_at INTEGER NOT NULL, val_loss REAL,"
        " n_updates INTEGER NOT NULL DEFAULT 0, merge_seconds REAL);"
        "CREATE TABLE IF NOT EXISTS updates(id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " device TEXT NOT NULL, idem_key TEXT NOT NULL, base_version INTEGER NOT NULL,"
        " tokens INTEGER NOT NULL, steps INTEGER NOT NULL, loss REAL, norm REAL,"
        " scale REAL NOT NULL DEFAULT 1, bytes INTEGER NOT NULL, received_at INTEGER NOT NULL,"
        " merged_into INTEGER, dropped INTEGER NOT NULL DEFAULT 0, body BLOB,"
        " UNIQUE(device, idem_key));"
        "CREATE INDEX IF NOT EXISTS updates_pending ON updates(merged_into, dropped, id);"
        "CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);";

static void stmt_finalizep(sqlite3_stmt **st) {
        if (*st)
                sqlite3_finalize(*st);
}
#define _cleanup_stmt_ _cleanup_(stmt_finalizep)

static void unlockp(agg_store **s) {
        if (*s)
                pthread_mutex_unlock(&(*s)->lock);
}
/* Holds the store's lock until the end of the scope. */
#define LOCKED(s)                                                                                  \
        _cleanup_(unlockp) agg_store *_locked = (pthread_mutex_lock(&(s)->lock), (s))

static int64_t now_s(void) {
        return (int64_t) time(NULL);
}

/* Wall-clock milliseconds: rounds are timed across restarts. */
static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The errno behind the last failure. A full disk must read as -ENOSPC (or -EDQUOT) wherever
 * SQLite notices it: SQLITE_FULL for a short write, an I/O error carrying the system errno
 * for a quota, growing the -shm file, or a failed COMMIT. */
static int sql_errno(agg_store *s) {
        int code = sqlite3_errcode(s->db), sys = sqlite3_system_errno(s->db);

        if (code == SQLITE_FULL)
                return ENOSPC;
        if (code == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT))
                return sys;
        return code == SQLITE_BUSY ? EBUSY : EIO;
}

static int sql_err(agg_store *s, const char *what) {
        log_error("%s/%s: %s: %s", s->dir, AGG_DB_NAME, what, sqlite3_errmsg(s->db));
        return -sql_errno(s);
}

static int exec(agg_store *s, const char *sql) {
        char *msg = NULL;
        if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
                log_error("%s/%s: %s: %s", s->dir, AGG_DB_NAME, sql, msg ? msg : "?");
                sqlite3_free(msg);
                return -sql_errno(s);
        }
        return 0;
}

static int prepare(agg_store *s, const char *sql, sqlite3_stmt **ret) {
        if (sqlite3_prepare_v2(s->db, sql, -1, ret, NULL) != SQLITE_OK)
                return sql_err(s, sql);
        return 0;
}

static int begin(agg_store *s) {
        return exec(s, "BEGIN IMMEDIATE");
}
static int commit(agg_store *s) {
        return exec(s, "COMMIT");
}
static void rollback(agg_store *s) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* The fleet's stage token: made once (random), then read back on every open. A store that
 * cannot write it now (a full disk) goes on without one and tries again at the next open. */
static bool read_stage_token(agg_store *s) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;

        if (prepare(s, "SELECT value FROM meta WHERE key='stage_token'", &q) < 0 ||
            sqlite3_step(q) != SQLITE_ROW)
                return false;
        const char *v = (const char *) sqlite3_column_text(q, 0);
        if (!v || strlen(v) != AGG_SECRET_HEX - 1)
                return false;
        memcpy(s->stage_token, v, AGG_SECRET_HEX);
        return true;
}

/* The fleet's stage token: made once (random), then read back at every open. A store that
 * cannot write it now (a full disk) goes on without one and tries again at the next open. */
static void load_stage_token(agg_store *s) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        char fresh[AGG_SECRET_HEX];

        if (read_stage_token(s) || hash_random_hex(32, fresh) < 0)
                return;
        if (prepare(s, "INSERT OR IGNORE INTO meta(key, value) VALUES('stage_token', ?)", &q) == 0) {
                sqlite3_bind_text(q, 1, fresh, -1, SQLITE_STATIC);
                if (sqlite3_step(q) != SQLITE_DONE)
                        log_warning("%s/%s: cannot store the fleet stage token: %s", s->dir,
                                    AGG_DB_NAME, sqlite3_errmsg(s->db));
        }
        explicit_bzero(fresh, sizeof(fresh));
        (void) read_stage_token(s);
}

/* Columns added after the first stores were made: added, and filled in from the update log,
 * when a store without them is opened. One transaction, checked again inside it, so two
 * processes opening an old store at once do it once. */
static const struct {
        const char *table, *column, *decl, *fill;
} added_columns[] = {
        { "versions", "merged_tokens", "INTEGER NOT NULL DEFAULT 0",
          "UPDATE versions SET merged_tokens = (SELECT coalesce(sum(u.tokens), 0) FROM updates u "
          "WHERE u.merged_into IS NOT NULL AND u.merged_into <= versions.version)" },
        { "devices", "round_started_ms", "INTEGER", NULL }, /* open round: when it began */
        { "devices", "round_steps", "INTEGER", NULL },      /* open round: the budget asked */
        { "devices", "speed", "REAL", NULL },               /* smoothed steps per second */
};

static bool has_column(agg_store *s, const char *table, const char *column) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        char sql[160];

        snprintf(sql, sizeof(sql), "SELECT %s FROM %s LIMIT 0", column, table);
        return sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) == SQLITE_OK;
}

static int migrate(agg_store *s) {
        bool missing = false;
        char sql[256];
        int r;

        for (size_t i = 0; i < ARRAY_SIZE(added_columns); i++)
                missing = missing || !has_column(s, added_columns[i].table, added_columns[i].column);
        if (!missing)
                return 0;
        if ((r = begin(s)) < 0)
                return r;
        for (size_t i = 0; i < ARRAY_SIZE(added_columns); i++) {
                if (has_column(s, added_columns[i].table, added_columns[i].column))
                        continue;
                snprintf(sql, sizeof(sql), "ALTER TABLE %s ADD COLUMN %s %s",
                         added_columns[i].table, added_columns[i].column, added_columns[i].decl);
                if ((r = exec(s, sql)) < 0 ||
                    (added_columns[i].fill && (r = exec(s, added_columns[i].fill)) < 0)) {
                        rollback(s);
                        return r;
                }
        }
        if ((r = commit(s)) < 0) {
                rollback(s);
                return r;
        }
        return 0;
}

static int open_db(const char *dir, bool create, agg_store **ret) {
        _cleanup_free_ char *path = NULL;
        agg_store *s;
        int r;

        if (asprintf(&path, "%s/" AGG_DB_NAME, dir) < 0)
                return log_error_errno(ENOMEM, "out of memory");
        if (!create && access(path, F_OK) < 0)
                return log_error_errno(errno, "%s: no aggregator store here (run 'edge-aggregator "
                                              "init' first)", path);
        s = calloc(1, sizeof(*s));
        if (!s || !(s->dir = strdup(dir))) {
                free(s);
                return log_error_errno(ENOMEM, "out of memory");
        }
        pthread_mutex_init(&s->lock, NULL);
        /* FULLMUTEX, not NOMUTEX: s->lock serialises the transactions, but the statements
         * (_cleanup_stmt_, declared before LOCKED) are finalized after it is released, so
         * SQLite must guard the connection itself. Without it, a finalize racing another
         * thread's transaction lost acknowledged updates and corrupted the database
         * (tests/test-aggregator-crash.c). */
        if (sqlite3_open_v2(path, &s->db,
                            SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) |
                                    SQLITE_OPEN_FULLMUTEX,
                            NULL) != SQLITE_OK) {
                r = log_error_errno(EIO, "%s: %s", path,
                                    s->db ? sqlite3_errmsg(s->db) : "cannot open");
                agg_store_free(s);
                return r;
        }
        sqlite3_busy_timeout(s->db, 10000);
        if ((r = exec(s, "PRAGMA journal_mode=WAL")) < 0 ||
            (r = exec(s, "PRAGMA synchronous=FULL")) < 0 ||
            (r = exec(s, "PRAGMA foreign_keys=ON")) < 0 || (r = exec(s, schema)) < 0) {
                agg_store_free(s);
                return r;
        }
        if ((r = migrate(s)) < 0) {
                agg_store_free(s);
                return r;
        }
        load_stage_token(s);
        *ret = s;
        return 0;
}

int agg_store_create(const char *dir, agg_store **ret) {
        _cleanup_free_ char *db = NULL, *blobs = NULL;

        if (asprintf(&db, "%s/" AGG_DB_NAME, dir) < 0 || asprintf(&blobs, "%s/blobs", dir) < 0)
                return log_error_errno(ENOMEM, "out of memory");
        if (mkdir(dir, 0750) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create the store directory", dir);
        if (access(db, F_OK) == 0)
                return log_error_errno(EEXIST, "%s: a store exists already", db);
        if (mkdir(blobs, 0750) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create", blobs);
        return open_db(dir, true, ret);
}

int agg_store_open(const char *dir, agg_store **ret) {
        return open_db(dir, false, ret);
}

void agg_store_free(agg_store *s) {
        if (!s)
                return;
        if (s->db)
                sqlite3_close(s->db);
        pthread_mutex_destroy(&s->lock);
        explicit_bzero(s->stage_token, sizeof(s->stage_token));
        free(s->dir);
        free(s);
}

const char *agg_store_dir(const agg_store *s) {
        return s->dir;
}

const char *agg_store_stage_token(const agg_store *s) {
        return s->stage_token[0] ? s->stage_token : NULL;
}

static int load_settings_locked(agg_store *s, agg_settings *ret) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        model_config cfg;
        char err[256];
        int r, rc;

        if ((r = prepare(s, "SELECT value FROM settings WHERE key='Model'", &st)) < 0)
                return r;
        if (sqlite3_step(st) != SQLITE_ROW ||
            model_config_by_name((const char *) sqlite3_column_text(st, 0), &cfg) < 0)
                return log_error_errno(EBADMSG, "%s/%s: setting 'Model' missing or invalid", s->dir,
                                       AGG_DB_NAME);
        sqlite3_finalize(st);
        st = NULL;
        agg_settings_default(ret, &cfg);
        if ((r = prepare(s, "SELECT key, value FROM settings ORDER BY key", &st)) < 0)
                return r;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *k = (const char *) sqlite3_column_text(st, 0);
                const char *v = (const char *) sqlite3_column_text(st, 1);
                if (agg_settings_apply(ret, k, v ? v : "", err, sizeof(err)) < 0)
                        /* a newer version's key or a hand edit: say so, keep serving */
                        log_warning("%s/%s: ignoring setting: %s", s->dir, AGG_DB_NAME, err);
        }
        return rc == SQLITE_DONE ? 0 : sql_err(s, "reading settings");
}

int agg_store_load_settings(agg_store *s, agg_settings *ret) {
        LOCKED(s);
        return load_settings_locked(s, ret);
}

static int put_setting(agg_store *s, const char *k, const char *v) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int r;
        if ((r = prepare(s, "INSERT INTO settings(key, value) VALUES(?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         &st)) < 0)
                return r;
        sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
        return sqlite3_step(st) == SQLITE_DONE ? 0 : sql_err(s, "writing a setting");
}

static int del_setting(agg_store *s, const char *k) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int r;
        if ((r = prepare(s, "DELETE FROM settings WHERE key=?", &st)) < 0)
                return r;
        sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
        return sqlite3_step(st) == SQLITE_DONE ? 0 : sql_err(s, "deleting a setting");
}

int agg_store_set(agg_store *s, char *const *kv, size_t n, bool allow_model, char *err,
                  size_t err_size) {
        _cleanup_free_ agg_settings *cur = malloc(sizeof(*cur));
        char gen[32];
        int r;
        LOCKED(s);

        if (!cur)
                return -ENOMEM;
        if (!allow_model) {
                r = load_settings_locked(s, cur);
                if (r < 0)
                        return r;
        } else {
                model_config cfg;
                model_config_by_name("tiny", &cfg);
                agg_settings_default(cur, &cfg);
        }
        for (size_t i = 0; i < n; i++) {
                const char *eq = strchr(kv[i], '=');
                char key[64];
                if (!eq || eq == kv[i] || (size_t) (eq - kv[i]) >= sizeof(key)) {
                        snprintf(err, err_size, "'%s' is not KEY=VALUE", kv[i]);
                        return -EINVAL;
                }
                snprintf(key, sizeof(key), "%.*s", (int) (eq - kv[i]), kv[i]);
                if ((!allow_model && (!strcmp(key, "Model") || !strcmp(key, "Seed"))) ||
                    !strcmp(key, "Generation")) {
                        snprintf(err, err_size, "%s is fixed when the store is created", key);
                        return -EPERM;
                }
                r = agg_settings_apply(cur, key, eq + 1, err, err_size);
                if (r < 0)
                        return r;
        }
        if ((r = begin(s)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const char *eq = strchr(kv[i], '=');
                char key[64];
                snprintf(key, sizeof(key), "%.*s", (int) (eq - kv[i]), kv[i]);
                /* stored under its current name; a row under the old one would linger */
                const char *canon = agg_settings_canonical_key(key),
                           *old = agg_settings_old_key(canon);
                r = (!strncmp(key, "Policy.", 7) && !eq[1]) ? del_setting(s, key)
                                                            : put_setting(s, canon, eq + 1);
                if (r >= 0 && old)
                        r = del_setting(s, old);
                if (r < 0)
                        goto fail;
        }
        snprintf(gen, sizeof(gen), "%llu", (unsigned long long) cur->generation + 1);
        if ((r = put_setting(s, "Generation", gen)) < 0 || (r = commit(s)) < 0)
                goto fail;
        return 0;
fail:
        rollback(s);
        snprintf(err, err_size, "cannot write the settings");
        return r;
}

int agg_store_token_create(agg_store *s, int64_t expires_s, int64_t uses, char ret[AGG_ID_HEX]) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        char hash[HASH_SHA256_HEX];
        int r;
        LOCKED(s);

        if ((r = hash_random_hex(16, ret)) < 0)
                return log_error_errno(r, "cannot get random bytes");
        hash_sha256_hex(ret, strlen(ret), hash);
        if ((r = prepare(s, "INSERT INTO tokens(hash, created_at, expires_at, uses_left) "
                            "VALUES(?, ?, ?, ?)",
                         &st)) < 0)
                return r;
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, now_s());
        if (expires_s > 0)
                sqlite3_bind_int64(st, 3, now_s() + expires_s);
        if (uses > 0)
                sqlite3_bind_int64(st, 4, uses);
        return sqlite3_step(st) == SQLITE_DONE ? 0 : sql_err(s, "storing the token");
}

int agg_store_enroll(agg_store *s, const char *token, const char *name, char ret_id[AGG_ID_HEX],
                     char ret_secret[AGG_SECRET_HEX]) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL, *u = NULL, *ins = NULL;
        char hash[HASH_SHA256_HEX], shash[HASH_SHA256_HEX];
        int r;
        LOCKED(s);

        hash_sha256_hex(token, strlen(token), hash);
        if ((r = hash_random_hex(16, ret_id)) < 0 || (r = hash_random_hex(32, ret_secret)) < 0)
                return log_error_errno(r, "cannot get random bytes");
        hash_sha256_hex(ret_secret, strlen(ret_secret), shash);
        if ((r = begin(s)) < 0)
                return r;
        r = prepare(s, "SELECT expires_at, uses_left FROM tokens WHERE hash=?", &q);
        if (r < 0)
                goto fail;
        sqlite3_bind_text(q, 1, hash, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW ||
            (sqlite3_column_type(q, 0) != SQLITE_NULL && sqlite3_column_int64(q, 0) <= now_s()) ||
            (sqlite3_column_type(q, 1) != SQLITE_NULL && sqlite3_column_int64(q, 1) <= 0)) {
                r = -EACCES;
                goto fail;
        }
        if ((r = prepare(s, "UPDATE tokens SET uses_left = uses_left - 1 WHERE hash=? AND "
                            "uses_left IS NOT NULL",
                         &u)) < 0)
                goto fail;
        sqlite3_bind_text(u, 1, hash, -1, SQLITE_STATIC);
        if (sqlite3_step(u) != SQLITE_DONE) {
                r = sql_err(s, "using the token");
                goto fail;
        }
        if ((r = prepare(s, "INSERT INTO devices(id, secret_hash, name, enrolled_at, last_seen) "
                            "VALUES(?, ?, ?, ?, ?)",
                         &ins)) < 0)
                goto fail;
        sqlite3_bind_text(ins, 1, ret_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, shash, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 3, name ? name : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, now_s());
        sqlite3_bind_int64(ins, 5, now_s());
        if (sqlite3_step(ins) != SQLITE_DONE) {
                r = sql_err(s, "adding the device");
                goto fail;
        }
        return commit(s);
fail:
        rollback(s);
        return r;
}

int agg_store_auth(agg_store *s, const char *device, const char *secret) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL, *u = NULL;
        char shash[HASH_SHA256_HEX];
        int r;
        LOCKED(s);

        hash_sha256_hex(secret, strlen(secret), shash);
        if ((r = prepare(s, "SELECT secret_hash, last_seen FROM devices WHERE id=?", &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, device, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW)
                return -EACCES;
        if (!hash_equal_consttime((const char *) sqlite3_column_text(q, 0), shash))
                return -EACCES;
        /* last_seen at minute granularity: no write (and fsync) on every request */
        if (now_s() - sqlite3_column_int64(q, 1) < 60)
                return 0;
        if (prepare(s, "UPDATE devices SET last_seen=? WHERE id=?", &u) < 0)
                return 0;
        sqlite3_bind_int64(u, 1, now_s());
        sqlite3_bind_text(u, 2, device, -1, SQLITE_STATIC);
        (void) sqlite3_step(u);
        return 0;
}

static void copy_text(char *dst, size_t n, sqlite3_stmt *st, int col) {
        const unsigned char *t = sqlite3_column_text(st, col);
        snprintf(dst, n, "%s", t ? (const char *) t : "");
}

#define VERSION_COLS                                                                               \
        "version, blob, moments, created_at, val_loss, n_updates, merge_seconds, merged_tokens"

static void read_version(sqlite3_stmt *st, agg_version *v) {
        v->version = (uint64_t) sqlite3_column_int64(st, 0);
        copy_text(v->blob, sizeof(v->blob), st, 1);
        copy_text(v->moments, sizeof(v->moments), st, 2);
        v->created_at = sqlite3_column_int64(st, 3);
        v->val_loss = sqlite3_column_type(st, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 4);
        v->n_updates = sqlite3_column_int64(st, 5);
        v->merge_seconds = sqlite3_column_double(st, 6);
        v->merged_tokens = (uint64_t) sqlite3_column_int64(st, 7);
}

int agg_store_current_version(agg_store *s, agg_version *ret) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT " VERSION_COLS " FROM versions ORDER BY version DESC LIMIT 1",
                         &q)) < 0)
                return r;
        if (sqlite3_step(q) != SQLITE_ROW)
                return log_error_errno(ENOENT, "%s/%s: no model version", s->dir, AGG_DB_NAME);
        read_version(q, ret);
        return 0;
}

int agg_store_get_version(agg_store *s, uint64_t version, agg_version *ret) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT " VERSION_COLS " FROM versions WHERE version=?", &q)) < 0)
                return r;
        sqlite3_bind_int64(q, 1, (int64_t) version);
        if (sqlite3_step(q) != SQLITE_ROW)
                return -ENOENT;
        read_version(q, ret);
        return 0;
}

int agg_store_list_versions(agg_store *s, size_t max, agg_version **ret, size_t *ret_n) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        _cleanup_free_ agg_version *v = calloc(max ? max : 1, sizeof(*v));
        size_t n = 0;
        int r;
        LOCKED(s);

        if (!v)
                return -ENOMEM;
        if ((r = prepare(s, "SELECT " VERSION_COLS " FROM versions ORDER BY version DESC LIMIT ?",
                         &q)) < 0)
                return r;
        sqlite3_bind_int64(q, 1, (int64_t) max);
        while (n < max && sqlite3_step(q) == SQLITE_ROW)
                read_version(q, &v[n++]);
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

int agg_store_insert_version0(agg_store *s, const char *blob) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "INSERT INTO versions(version, blob, created_at) VALUES(0, ?, ?)",
                         &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, blob, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, now_s());
        return sqlite3_step(q) == SQLITE_DONE ? 0 : sql_err(s, "adding version 0");
}

static int find_update_locked(agg_store *s, const char *device, const char *key,
                              int64_t *ret_id) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;

        if ((r = prepare(s, "SELECT id FROM updates WHERE device=? AND idem_key=?", &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, device, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW)
                return -ENOENT;
        *ret_id = sqlite3_column_int64(q, 0);
        return 0;
}

int agg_store_find_update(agg_store *s, const char *device, const char *key, int64_t *ret_id) {
        LOCKED(s);
        return find_update_locked(s, device, key, ret_id);
}

static int counter_add_locked(agg_store *s, const char *name, int64_t delta) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        if ((r = prepare(s, "INSERT INTO counters(name, value) VALUES(?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                         &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, delta);
        return sqlite3_step(q) == SQLITE_DONE ? 0 : sql_err(s, "updating a counter");
}

static int round_end_locked(agg_store *s, const char *device, int64_t steps);

int agg_store_insert_update(agg_store *s, const agg_update *u, const char *key, const void *body,
                            size_t size, int64_t *ret_id, bool *ret_duplicate) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = begin(s)) < 0)
                return r;
        if (find_update_locked(s, u->device, key, ret_id) == 0) {
                rollback(s);
                *ret_duplicate = true;
                return 0;
        }
        if ((r = prepare(s, "INSERT INTO updates(device, idem_key, base_version, tokens, steps, "
                            "loss, norm, scale, bytes, received_at, body) "
                            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         &q)) < 0)
                goto fail;
        sqlite3_bind_text(q, 1, u->device, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, (int64_t) u->base_version);
        sqlite3_bind_int64(q, 4, (int64_t) u->tokens);
        sqlite3_bind_int64(q, 5, u->steps);
        sqlite3_bind_double(q, 6, isfinite(u->loss) ? u->loss : 0.0);
        sqlite3_bind_double(q, 7, u->norm);
        sqlite3_bind_double(q, 8, u->scale);
        sqlite3_bind_int64(q, 9, (int64_t) size);
        sqlite3_bind_int64(q, 10, now_s());
        sqlite3_bind_blob64(q, 11, body, size, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_DONE) {
                r = sql_err(s, "storing the update");
                goto fail;
        }
        *ret_id = sqlite3_last_insert_rowid(s->db);
        if ((r = round_end_locked(s, u->device, u->steps)) < 0)
                goto fail;
        if ((r = counter_add_locked(s, "updates.accepted", 1)) < 0 || (r = commit(s)) < 0)
                goto fail;
        *ret_duplicate = false;
        return 0;
fail:
        rollback(s);
        return r;
}

int agg_store_pending(agg_store *s, size_t max, agg_update **ret, size_t *ret_n) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        _cleanup_free_ agg_update *u = calloc(max ? max : 1, sizeof(*u));
        size_t n = 0;
        int r;
        LOCKED(s);

        if (!u)
                return -ENOMEM;
        if ((r = prepare(s, "SELECT id, device, base_version, tokens, steps, loss, norm, scale, "
                            "bytes, received_at FROM updates WHERE merged_into IS NULL AND "
                            "dropped=0 ORDER BY id LIMIT ?",
                         &q)) < 0)
                return r;
        sqlite3_bind_int64(q, 1, (int64_t) max);
        while (n < max && sqlite3_step(q) == SQLITE_ROW) {
                agg_update *x = &u[n++];
                x->id = sqlite3_column_int64(q, 0);
                copy_text(x->device, sizeof(x->device), q, 1);
                x->base_version = (uint64_t) sqlite3_column_int64(q, 2);
                x->tokens = (uint64_t) sqlite3_column_int64(q, 3);
                x->steps = sqlite3_column_int64(q, 4);
                x->loss = sqlite3_column_double(q, 5);
                x->norm = sqlite3_column_double(q, 6);
                x->scale = sqlite3_column_double(q, 7);
                x->bytes = (uint64_t) sqlite3_column_int64(q, 8);
                x->received_at = sqlite3_column_int64(q, 9);
        }
        *ret = TAKE_PTR(u);
        *ret_n = n;
        return 0;
}

static int64_t scalar_locked(agg_store *s, const char *sql, int64_t arg) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        if (prepare(s, sql, &q) < 0)
                return -1;
        if (strchr(sql, '?'))
                sqlite3_bind_int64(q, 1, arg);
        return sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
}

int64_t agg_store_count_pending(agg_store *s) {
        LOCKED(s);
        return scalar_locked(s, "SELECT count(*) FROM updates WHERE merged_into IS NULL AND dropped=0",
                             0);
}

int agg_store_update_body(agg_store *s, int64_t id, void **ret_body, size_t *ret_size) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT body FROM updates WHERE id=?", &q)) < 0)
                return r;
        sqlite3_bind_int64(q, 1, id);
        if (sqlite3_step(q) != SQLITE_ROW || sqlite3_column_type(q, 0) != SQLITE_BLOB)
                return log_error_errno(ENOENT, "%s/%s: update %lld has no body", s->dir,
                                       AGG_DB_NAME, (long long) id);
        size_t n = (size_t) sqlite3_column_bytes(q, 0);
        void *b = malloc(n ? n : 1);
        if (!b)
                return -ENOMEM;
        memcpy(b, sqlite3_column_blob(q, 0), n);
        *ret_body = b;
        *ret_size = n;
        return 0;
}

int agg_store_drop_updates(agg_store *s, const int64_t *ids, size_t n) {
        int r;
        LOCKED(s);

        if ((r = begin(s)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                _cleanup_stmt_ sqlite3_stmt *q = NULL;
                if ((r = prepare(s, "UPDATE updates SET dropped=1, body=NULL WHERE id=? AND "
                                    "merged_into IS NULL",
                                 &q)) < 0)
                        goto fail;
                sqlite3_bind_int64(q, 1, ids[i]);
                if (sqlite3_step(q) != SQLITE_DONE) {
                        r = sql_err(s, "dropping an update");
                        goto fail;
                }
        }
        if ((r = counter_add_locked(s, "updates.dropped-stale", (int64_t) n)) < 0 ||
            (r = commit(s)) < 0)
                goto fail;
        return 0;
fail:
        rollback(s);
        return r;
}

int agg_store_commit_version(agg_store *s, const agg_version *v, const int64_t *ids, size_t n) {
        _cleanup_stmt_ sqlite3_stmt *ins = NULL;
        int r;
        LOCKED(s);

        if ((r = begin(s)) < 0)
                return r;
        if (scalar_locked(s, "SELECT max(version) FROM versions", 0) + 1 != (int64_t) v->version) {
                r = -ESTALE;
                goto fail;
        }
        if ((r = prepare(s, "INSERT INTO versions(version, blob, moments, created_at, val_loss, "
                            "n_updates, merge_seconds) VALUES(?, ?, ?, ?, NULL, ?, ?)",
                         &ins)) < 0)
                goto fail;
        sqlite3_bind_int64(ins, 1, (int64_t) v->version);
        sqlite3_bind_text(ins, 2, v->blob, -1, SQLITE_STATIC);
        if (v->moments[0])
                sqlite3_bind_text(ins, 3, v->moments, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, now_s());
        sqlite3_bind_int64(ins, 5, (int64_t) n);
        sqlite3_bind_double(ins, 6, v->merge_seconds);
        if (sqlite3_step(ins) != SQLITE_DONE) {
                r = sql_err(s, "adding the version");
                goto fail;
        }
        for (size_t i = 0; i < n; i++) {
                _cleanup_stmt_ sqlite3_stmt *q = NULL;
                if ((r = prepare(s, "UPDATE updates SET merged_into=?, body=NULL WHERE id=? AND "
                                    "merged_into IS NULL AND dropped=0",
                                 &q)) < 0)
                        goto fail;
                sqlite3_bind_int64(q, 1, (int64_t) v->version);
                sqlite3_bind_int64(q, 2, ids[i]);
                if (sqlite3_step(q) != SQLITE_DONE) {
                        r = sql_err(s, "marking an update merged");
                        goto fail;
                }
                if (sqlite3_changes(s->db) != 1) {
                        r = -ESTALE; /* never merge an update twice */
                        goto fail;
                }
        }
        {
                /* the schedule's clock: version v-1's tokens plus those merged now */
                _cleanup_stmt_ sqlite3_stmt *q = NULL;
                if ((r = prepare(s, "UPDATE versions SET merged_tokens = (SELECT merged_tokens "
                                    "FROM versions WHERE version = ?1 - 1) + (SELECT "
                                    "coalesce(sum(tokens), 0) FROM updates WHERE merged_into = "
                                    "?1) WHERE version = ?1",
                                 &q)) < 0)
                        goto fail;
                sqlite3_bind_int64(q, 1, (int64_t) v->version);
                if (sqlite3_step(q) != SQLITE_DONE) {
                        r = sql_err(s, "counting the merged tokens");
                        goto fail;
                }
        }
        if ((r = commit(s)) < 0)
                goto fail;
        return 0;
fail:
        rollback(s);
        return r;
}

int agg_store_set_val_loss(agg_store *s, uint64_t version, double loss) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "UPDATE versions SET val_loss=? WHERE version=?", &q)) < 0)
                return r;
        sqlite3_bind_double(q, 1, loss);
        sqlite3_bind_int64(q, 2, (int64_t) version);
        return sqlite3_step(q) == SQLITE_DONE ? 0 : sql_err(s, "recording the validation loss");
}

/* Ends the device's open round, if any, folding its speed into the smoothed one. */
static int round_end_locked(agg_store *s, const char *device, int64_t steps) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL, *u = NULL;
        int r;

        if ((r = prepare(s, "SELECT round_started_ms, round_steps, speed FROM devices WHERE id=?",
                         &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, device, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW || sqlite3_column_type(q, 0) == SQLITE_NULL)
                return 0; /* no round open: nothing to measure */
        double old = sqlite3_column_type(q, 2) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 2);
        double sample = agg_speed_sample(steps, sqlite3_column_int64(q, 1),
                                         now_ms() - sqlite3_column_int64(q, 0));
        double speed = agg_speed_smooth(old, sample, AGG_SPEED_ALPHA);
        if ((r = prepare(s, "UPDATE devices SET round_started_ms=NULL, round_steps=NULL, speed=? "
                            "WHERE id=?",
                         &u)) < 0)
                return r;
        if (isfinite(speed) && speed > 0)
                sqlite3_bind_double(u, 1, speed);
        else
                sqlite3_bind_null(u, 1);
        sqlite3_bind_text(u, 2, device, -1, SQLITE_STATIC);
        return sqlite3_step(u) == SQLITE_DONE ? 0 : sql_err(s, "measuring the device's speed");
}

int agg_store_device_pace(agg_store *s, const char *device, double *ret_speed,
                          bool *ret_round_open) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT speed, round_started_ms IS NOT NULL FROM devices WHERE id=?",
                         &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, device, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW)
                return -ENOENT;
        *ret_speed = sqlite3_column_type(q, 0) == SQLITE_NULL ? NAN : sqlite3_column_double(q, 0);
        *ret_round_open = sqlite3_column_int(q, 1) != 0;
        return 0;
}

int agg_store_round_begin(agg_store *s, const char *device, int steps) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "UPDATE devices SET round_started_ms=?, round_steps=? WHERE id=? AND "
                            "round_started_ms IS NULL",
                         &q)) < 0)
                return r;
        sqlite3_bind_int64(q, 1, now_ms());
        sqlite3_bind_int(q, 2, steps);
        sqlite3_bind_text(q, 3, device, -1, SQLITE_STATIC);
        /* not logged: a task is served without it (a full disk), and asked for again soon */
        return sqlite3_step(q) == SQLITE_DONE ? 0 : -sql_errno(s);
}

int agg_store_telemetry(agg_store *s, const char *device, const char *json) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "UPDATE devices SET telemetry=?, telemetry_at=?, last_seen=? "
                            "WHERE id=?",
                         &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, json, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, now_s());
        sqlite3_bind_int64(q, 3, now_s());
        sqlite3_bind_text(q, 4, device, -1, SQLITE_STATIC);
        return sqlite3_step(q) == SQLITE_DONE ? 0 : sql_err(s, "recording telemetry");
}

int agg_store_list_devices(agg_store *s, agg_device **ret, size_t *ret_n) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        agg_device *d = NULL;
        size_t n = 0, cap = 0;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT d.id, d.name, d.enrolled_at, d.last_seen, d.telemetry_at, "
                            "d.telemetry, (SELECT count(*) FROM updates u WHERE u.device=d.id) "
                            "FROM devices d ORDER BY d.last_seen DESC LIMIT 1000",
                         &q)) < 0)
                return r;
        while (sqlite3_step(q) == SQLITE_ROW) {
                if (n == cap) {
                        cap = cap ? 2 * cap : 16;
                        agg_device *nd = realloc(d, cap * sizeof(*d));
                        if (!nd) {
                                agg_devices_free(d, n);
                                return -ENOMEM;
                        }
                        d = nd;
                }
                agg_device *x = &d[n++];
                memset(x, 0, sizeof(*x));
                copy_text(x->id, sizeof(x->id), q, 0);
                copy_text(x->name, sizeof(x->name), q, 1);
                x->enrolled_at = sqlite3_column_int64(q, 2);
                x->last_seen = sqlite3_column_int64(q, 3);
                x->telemetry_at = sqlite3_column_int64(q, 4);
                if (sqlite3_column_type(q, 5) == SQLITE_TEXT)
                        x->telemetry = strdup((const char *) sqlite3_column_text(q, 5));
                x->n_updates = sqlite3_column_int64(q, 6);
        }
        *ret = d;
        *ret_n = n;
        return 0;
}

void agg_devices_free(agg_device *d, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(d[i].telemetry);
        free(d);
}

int64_t agg_store_count_devices(agg_store *s, int64_t seen_since) {
        LOCKED(s);
        if (seen_since <= 0)
                return scalar_locked(s, "SELECT count(*) FROM devices", 0);
        return scalar_locked(s, "SELECT count(*) FROM devices WHERE telemetry_at >= ?", seen_since);
}

int64_t agg_store_count_updates_since(agg_store *s, int64_t since) {
        LOCKED(s);
        return scalar_locked(s, "SELECT count(*) FROM updates WHERE received_at >= ?", since);
}

int agg_store_update_totals(agg_store *s, int64_t *ret_logged, int64_t *ret_merged,
                            int64_t *ret_dropped) {
        LOCKED(s);
        *ret_logged = scalar_locked(s, "SELECT count(*) FROM updates", 0);
        *ret_merged = scalar_locked(s, "SELECT count(*) FROM updates WHERE merged_into IS NOT NULL",
                                    0);
        *ret_dropped = scalar_locked(s, "SELECT count(*) FROM updates WHERE dropped=1", 0);
        return *ret_logged < 0 || *ret_merged < 0 || *ret_dropped < 0 ? -EIO : 0;
}

int agg_store_counter_get(agg_store *s, const char *name, int64_t *ret) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT value FROM counters WHERE name=?", &q)) < 0)
                return r;
        sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
        *ret = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
        return 0;
}

int agg_store_counters_add(agg_store *s, const char *const *names, const int64_t *deltas,
                           size_t n) {
        int r;
        LOCKED(s);

        if ((r = begin(s)) < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                if (deltas[i] && (r = counter_add_locked(s, names[i], deltas[i])) < 0) {
                        rollback(s);
                        return r;
                }
        if ((r = commit(s)) < 0) {
                rollback(s);
                return r;
        }
        return 0;
}

int agg_store_counters_foreach(agg_store *s, void (*fn)(const char *, int64_t, void *),
                               void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        int r;
        LOCKED(s);

        if ((r = prepare(s, "SELECT name, value FROM counters ORDER BY name", &q)) < 0)
                return r;
        while (sqlite3_step(q) == SQLITE_ROW)
                fn((const char *) sqlite3_column_text(q, 0), sqlite3_column_int64(q, 1), userdata);
        return 0;
}

int agg_store_live_blobs(agg_store *s, size_t keep, char (**ret)[65], size_t *ret_n) {
        _cleanup_stmt_ sqlite3_stmt *q = NULL;
        char(*b)[65] = calloc(2 * keep + 1, 65);
        size_t n = 0;
        int r;
        LOCKED(s);

        if (!b)
                return -ENOMEM;
        if ((r = prepare(s, "SELECT blob, moments FROM versions ORDER BY version DESC LIMIT ?",
                         &q)) < 0) {
                free(b);
                return r;
        }
        sqlite3_bind_int64(q, 1, (int64_t) keep);
        while (sqlite3_step(q) == SQLITE_ROW) {
                copy_text(b[n], 65, q, 0);
                if (b[n][0])
                        n++;
                copy_text(b[n], 65, q, 1);
                if (b[n][0])
                        n++;
        }
        *ret = b;
        *ret_n = n;
        return 0;
}
