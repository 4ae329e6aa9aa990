/* SPDX-License-Identifier: MIT */
#pragma once

/* Configuration (DESIGN.md §5): INI files, runtime overrides and fleet policy, merged into
 * the policy knobs and the daemon's settings, with where every value came from.
 *
 * Layers, lowest to highest precedence:
 *   built-in < <root>/usr/lib/edged/edged.conf < <root>/etc/edged/edged.conf (or --config)
 *   < <root>/etc/edged/edged.conf.d/<any>.conf (strcmp order) < <state>/overrides.conf
 *   < fleet policy (key/value pairs from the caller),
 * except that fleet policy never changes a knob named in Locked=.
 *
 * Profile= picks the base values; any individual key set in any layer wins over the preset,
 * whichever layer set Profile= (the last Profile= in precedence order picks the preset).
 *
 *   knob                  quiet   balanced  performance
 *   MinIdlePercent           80         45           25
 *   IdleWindowSec            60         30           15
 *   MaxCores                  1          0            0   (0 = all idle ones)
 *   MaxTemperatureC          65         75           85
 *   ResumeTemperatureC       55         65           75
 *   RequireACPower          yes        yes           no
 *   MinBatteryPercent        80         80           50
 *   MaxForegroundDelayMs      2          5           10
 *   MaxMemoryMiB           1024       1024         1024  (set by the model, not the mood)
 *   ActiveHours          always     always       always
 *   PauseOnUserActive       yes         no           no
 *
 * Syntax: "[Section]" and "Key=Value" lines; blank lines and lines starting with '#' or ';'
 * are ignored; keys and values are trimmed. No inline comments or continuation lines.
 * [Policy]: the knobs above, plus Locked= (knob names separated by spaces or commas; each
 *   Locked= adds to the set, an empty Locked= clears it).
 * [Daemon]: DataDirectory= and StateDirectory= (absolute paths, below the root),
 *   CheckpointIntervalSec= (10..86400), Model= (tiny|small|medium), Lenient= (boolean).
 * [Federation]: Server= (http:// or https:// URL of the aggregator; empty = standalone),
 *   EnrollToken= (the fleet's enrollment token; shown as "(set)", never printed),
 *   CAFile= (absolute path of extra CA certificates for https).
 * [Inference]: Serve= (boolean, no), ListenAddress= (IPv4 ADDR:PORT, 127.0.0.1:7878),
 *   Token= (bearer token peers present; empty: the device secret), ModelFile= (absolute
 *   path; empty: the federated task's model, else the checkpoint), SessionIdleSec= (1..86400,
 *   60), MemoryMiB= (16..1048576, 512: weights plus every session's KV cache), Layers=
 *   (FIRST-LAST: load and serve only these layers; empty or "all" = the whole model).
 * Booleans: yes/no, true/false, 1/0, on/off.
 * ActiveHours: "always", or windows "[days] HH:MM-HH:MM" separated by commas or spaces.
 *   days: Mon..Sun (any case), single or ranges (wrapping: "Fri-Mon"), several allowed
 *   ("Sat,Sun 10:00-18:00"); no days = every day; days with no time range = all day.
 *   end <= start runs overnight into the next day; 24:00 is allowed as an end.
 *
 * Diagnostics name "file:line: Key: ..." and go to the log. Unknown sections and keys are
 * warnings. A bad value or a malformed line fails the load (-EINVAL), unless Lenient=yes
 * was set in any file: then it is a warning and the key keeps its previous value. An
 * invalid Lenient= itself is always an error. Fleet pairs that are locked, invalid or not
 * policy knobs are refused with a warning (never fatal) and reported in fleet_refused. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knobs.h"

typedef enum {
        /* [Policy] */
        CONF_KEY_PROFILE,
        CONF_KEY_MIN_IDLE_PERCENT,
        CONF_KEY_IDLE_WINDOW_SEC,
        CONF_KEY_MAX_CORES,
        CONF_KEY_MAX_TEMPERATURE_C,
        CONF_KEY_RESUME_TEMPERATURE_C,
        CONF_KEY_REQUIRE_AC_POWER,
        CONF_KEY_MIN_BATTERY_PERCENT,
        CONF_KEY_MAX_FOREGROUND_DELAY_MS,
        CONF_KEY_MAX_MEMORY_MIB,
        CONF_KEY_ACTIVE_HOURS,
        CONF_KEY_PAUSE_ON_USER_ACTIVE,
        _CONF_POLICY_KEY_MAX,
        /* [Daemon] */
        CONF_KEY_DATA_DIRECTORY = _CONF_POLICY_KEY_MAX,
        CONF_KEY_STATE_DIRECTORY,
        CONF_KEY_CHECKPOINT_INTERVAL_SEC,
        CONF_KEY_MODEL,
        /* [Federation] */
        CONF_KEY_SERVER,
        CONF_KEY_ENROLL_TOKEN,
        CONF_KEY_CA_FILE,
        /* [Inference] */
        CONF_KEY_SERVE,
        CONF_KEY_LISTEN_ADDRESS,
        CONF_KEY_INFERENCE_TOKEN,
        CONF_KEY_INFERENCE_MODEL_FILE,
        CONF_KEY_SESSION_IDLE_SEC,
        CONF_KEY_INFERENCE_MEMORY_MIB,
        CONF_KEY_INFERENCE_LAYERS,
        _CONF_KEY_MAX,
        _CONF_KEY_INVALID = -EINVAL,
} conf_key;

typedef enum {
        CONF_MODEL_TINY,
        CONF_MODEL_SMALL,
        CONF_MODEL_MEDIUM,
        _CONF_MODEL_MAX,
} conf_model;

#define CONF_DEFAULT_DATA_DIRECTORY "/var/lib/edged/data"
#define CONF_DEFAULT_STATE_DIRECTORY "/var/lib/edged"
#define CONF_DEFAULT_CHECKPOINT_INTERVAL_SEC 300
#define CONF_DEFAULT_MODEL CONF_MODEL_SMALL
#define CONF_DEFAULT_LISTEN_ADDRESS "127.0.0.1:7878"
#define CONF_DEFAULT_SESSION_IDLE_SEC 60
#define CONF_DEFAULT_INFERENCE_MEMORY_MIB 512

typedef struct {
        knob_origin origin;
        const char *path; /* KNOB_FILE / KNOB_RUNTIME: owned by the conf; NULL otherwise */
        unsigned line;
} conf_provenance;

typedef struct {
        policy_knobs knobs;
        char *data_directory;  /* as configured, without the root prefix */
        char *state_directory; /* likewise */
        int checkpoint_interval_sec;
        conf_model model;
        char *server;       /* [Federation] Server=: aggregator URL; NULL = standalone */
        char *enroll_token; /* secret: never logged or shown */
        char *ca_file;
        /* [Inference]: collaborative inference stage serving (daemon/stage-server.h) */
        bool serve;
        char *listen_address;   /* IPv4 "ADDR:PORT" */
        char *inference_token;  /* secret; NULL: the device secret of the fleet identity */
        char *inference_model;  /* ModelFile=; NULL: the task's model or the checkpoint */
        int session_idle_sec;
        int inference_memory_mib;
        int layers_first, layers_last; /* Layers=: held span; -1, -1 = the whole model */
        bool lenient;
        uint32_t locked;        /* bit (1u << conf_key) per knob named in Locked= */
        uint32_t fleet_refused; /* bit per fleet knob that was not applied */
        conf_provenance prov[_CONF_KEY_MAX];
        char *overrides_path; /* the overrides.conf that was (or would be) read */
        char **files;         /* every path considered, in order; owned, provenance
                               * points here */
        size_t n_files;
} conf;

typedef struct {
        const char *key, *value;
} conf_pair;

typedef struct {
        const char *root;        /* prefix for the standard paths; NULL, "" or "/" = none */
        const char *config_file; /* replaces <root>/etc/edged/edged.conf; used as given */
        const char *state_dir;   /* where overrides.conf lives, used as given; NULL = the
                                  * configured StateDirectory= below the root */
        const conf_pair *fleet;  /* fleet policy, highest precedence */
        size_t n_fleet;
} conf_load_options;

/* ---- pure functions: no I/O, no logging ---- */

/* Key name <-> enum. conf_key_from_string() is case-sensitive ("MaxCores") and returns
 * -EINVAL for anything else (Locked and Lenient are not knobs). conf_key_section() is
 * "Policy", "Daemon", "Federation" or "Inference". */
const char *conf_key_section(conf_key k);
const char *conf_key_to_string(conf_key k);
conf_key conf_key_from_string(const char *s);
bool conf_key_is_policy(conf_key k);
const char *conf_profile_to_string(policy_profile p);
const char *conf_model_to_string(conf_model m);

/* The knob values of a profile preset (the table above). */
void conf_profile_preset(policy_profile p, policy_knobs *ret);

/* Built-in configuration: balanced, daemon defaults, every origin KNOB_BUILTIN. */
int conf_init_builtin(conf *ret);
void conf_done(conf *c);

/* Parses a boolean as described above. 0 or -EINVAL. */
int conf_parse_bool(const char *s, bool *ret);

/* Parses ActiveHours. On -EINVAL (or -E2BIG for more than ACTIVE_WINDOWS_MAX windows),
 * reason gets a short explanation ("bad time '25:00'"). Nothing written to ret on error. */
int conf_parse_active_hours(const char *s, active_window ret[ACTIVE_WINDOWS_MAX], int *ret_n,
                            char *reason, size_t reason_size);

/* Canonical text of the windows ("always", "Mon-Fri 19:00-08:00, Sat,Sun 10:00-12:00"),
 * which conf_parse_active_hours() reads back to the same windows. */
int conf_format_active_hours(const active_window *w, int n, char *buf, size_t size);

/* Checks one value for one key without applying it: 0, or -EINVAL with reason set to the
 * user message without location ("MaxCores: '-3' is not a whole number in [0, 1024]"). */
int conf_check_value(conf_key k, const char *value, char *reason, size_t reason_size);

/* One line of an INI text. */
typedef enum {
        CONF_LINE_SECTION, /* "[name]": section = name */
        CONF_LINE_ASSIGN,  /* "key=value": section = the current section or NULL */
        CONF_LINE_BAD,     /* neither */
} conf_line_kind;

typedef struct {
        conf_line_kind kind;
        unsigned line; /* 1-based */
        char *section, *key, *value;
} conf_line;

typedef struct {
        conf_line *lines;
        size_t n;
} conf_ini;

/* Splits text into meaningful lines (blank and comment lines dropped). -ENOMEM only. */
int conf_ini_parse(const char *text, conf_ini *ret);
void conf_ini_done(conf_ini *ini);

/* ---- loading ---- */

/* Reads every layer and fills ret (which the caller releases with conf_done, also after a
 * failure). Logs diagnostics. -EINVAL on a configuration error, other errnos on I/O errors
 * (an unreadable file, not a missing one). */
int conf_load(const conf_load_options *opts, conf *ret);

/* The value of key k as "policy show" prints it (and the parser reads back). */
void conf_format_value(const conf *c, conf_key k, char *buf, size_t size);

/* "edgectl policy show": one line per knob and daemon setting, e.g.
 * "MaxCores = 2 (/etc/edged/edged.conf.d/10-x.conf:3)", with "(built-in)",
 * "(profile quiet)", "(runtime override <file>:<line>)" or "(fleet policy)", and
 * " [locked]" for knobs in Locked=. Returns a malloc'd string. */
int conf_format_show(const conf *c, char **ret);

/* ---- runtime overrides (<state_dir>/overrides.conf, used as given) ---- */

/* Validates key (a [Policy] knob) and value and atomically rewrites overrides.conf with the
 * key set. On error, err (if not NULL) gets the message; nothing is logged. */
int conf_set_override(const char *state_dir, const char *key, const char *value, char *err,
                      size_t err_size);

/* Removes key from overrides.conf, or every override if key is NULL. Removing a key that
 * is not overridden is not an error. */
int conf_reset_override(const char *state_dir, const char *key, char *err, size_t err_size);
