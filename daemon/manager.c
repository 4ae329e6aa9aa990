/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "manager-internal.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "batch-source.h"
#include "log.h"
#include "macros.h"
#include "privileges.h"
#include "signal-pipe.h"

#define SAMPLE_USEC (1000 * 1000)
/* While not training, nothing needs a fast reaction: pausing is what must be quick (and
 * power events and user commands decide at once anyway); resuming a few seconds late costs
 * nothing. Sampling less often keeps a paused daemon under 0.1 % of a core. */
#define PAUSED_SAMPLE_USEC (4 * 1000 * 1000)
#define DATA_RETRY_S 10.0     /* how often to look for data while there is none */
#define DATA_CHECK_S 60       /* the loader re-walks the tree this often (subdirectories) */
#define STATE_SAVE_S 60.0
#define DISK_RETRY_S 10.0 /* while paused disk-full, a checkpoint is tried this often */
#define BATCH 4
#define SERVE_RETRY_S 60.0 /* stage serving that could not start is tried again this often */
#define VAL_EVERY_STEPS 200

static char *below_root(const char *root, const char *path) {
        char *p = NULL;
        if (!root || strcmp(root, "/") == 0 || !*root)
                return strdup(path);
        return asprintf(&p, "%s%s", root, path) < 0 ? NULL : p;
}

int manager_load_conf(manager *m) {
        conf_load_options lo = { .root = m->o->root, .config_file = m->o->config_file,
                                 .state_dir = m->o->state_dir };
        conf c;
        int r = conf_load(&lo, &c);
        if (r < 0) {
                conf_done(&c);
                return r;
        }
        conf_done(&m->conf);
        m->conf = c;
        return 0;
}

void manager_save_state(manager *m) {
        int r = daemon_state_save(m->state_file, &m->ds);
        if (r < 0)
                log_warning_errno(r, "%s: cannot save: %m", m->state_file);
        m->last_state_save = mono_now_s();
}

/* Every thread but the event loop's is a harvester for the monitor (the trainer, its pool,
 * OpenBLAS's workers, the loader and its io_uring workers). They come and go, so the set is
 * refreshed every sample: a worker missed would count as foreground delayed by edged. */
static void register_harvesters(manager *m) {
        pid_t tids[128];
        size_t n = 0;

        trainer_stats ts = { .parked = true };

        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        /* a parked trainer harvests nothing: spare the per-thread reads (procfs fallback) */
        if (!ts.parked && trainer_harvester_tids(m->trainer, tids, ARRAY_SIZE(tids), &n) < 0)
                return;
        (void) sensors_set_harvesters(m->sensors, tids, n);
}

/* Data appears later than the daemon on a fresh install: look again now and then (and at
 * once when inotify says the directory changed), and start training when there is some. */
static int start_training(manager *m) {
        static const char *const models[] = { "tiny", "small", "medium" };
        trainer_config tc = { .B = BATCH, .accum = 1, .seed = 1, .checkpoint = m->checkpoint,
                              .checkpoint_interval_s = m->conf.checkpoint_interval_sec,
                              .val_every_steps = VAL_EVERY_STEPS, .val_batches = 4 };
        int r;

        /* federated: the aggregator's task says which model; nothing to train until then */
        if (m->fed && federation_model_config(m->fed, &tc.cfg) < 0)
                return 0;
        m->last_data_try = mono_now_s();
        m->data_changed = false;
        if (!m->fed)
                model_config_by_name(models[m->conf.model], &tc.cfg);
        tc.T = tc.cfg.block_size;
        r = loader_new(&(loader_options) { .data_dir = m->data_dir, .B = tc.B, .T = tc.T,
                                           .prefetch = 4, .check_interval_s = DATA_CHECK_S },
                       &m->loader);
        if (r == -ENODATA || r == -ENOENT)
                return 0; /* the policy says no-data */
        if (r == -EACCES) {
                /* e.g. run as root without capabilities over a directory owned by edged */
                if (!m->data_denied)
                        log_warning("%s: permission denied; edged reads its data as user "
                                    "'edged' (the unit runs it so): no data until it can",
                                    m->data_dir);
                m->data_denied = true;
                return 0;
        }
        if (r < 0)
                return log_warning_errno(r, "%s: cannot read the training data: %m", m->data_dir);
        tc.src = batch_source_loader(m->loader);
        tc.sched = (lr_schedule) { .lr_max = 1e-3f, .lr_min = 1e-4f, .warmup_steps = 100,
                                   .total_steps = 1000000 };
        adamw_hparams_default(&tc.hp);
        r = trainer_start(&tc, &m->trainer);
        if (r < 0) {
                loader_free(m->loader);
                m->loader = NULL;
                return log_error_errno(r, "cannot start training (%s): %m", m->checkpoint);
        }
        trainer_stats ts;
        trainer_get_stats(m->trainer, &ts);
        m->prev_step = ts.step;
        log_info("training the %s model on %s from step %ld", tc.cfg.name, m->data_dir, ts.step);
        if (m->fed)
                federation_attach(m->fed, m->trainer);
        return 0;
}

static void status_line(manager *m, char *buf, size_t size) {
        trainer_stats ts = { .loss = NAN, .val_loss = NAN };
        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        if (m->last.mode == POLICY_PAUSED)
                snprintf(buf, size, "paused (%s), step %ld, loss %.3f, val %.3f",
                         policy_reason_name(m->last.reason), ts.step, ts.loss, ts.val_loss);
        else
                snprintf(buf, size, "%s, %d cores, %.0f tokens/s, step %ld, loss %.3f, val %.3f",
                         policy_mode_name(m->last.mode), m->last.cores, m->tokens_per_s, ts.step,
                         ts.loss, ts.val_loss);
}

/* For --progress (make demo): one line per sample a person can follow. */
static void progress_line(manager *m, const policy_decision *d) {
        const sensors_sample_t *s = &m->sample;
        trainer_stats ts = { .loss = NAN, .val_loss = NAN };
        char state[64], power[48] = "";

        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        if (d->mode == POLICY_RUNNING)
                snprintf(state, sizeof(state), "running, %d core%s", d->cores, d->cores == 1 ? "" : "s");
        else
                snprintf(state, sizeof(state), "%s (%s)", policy_mode_name(d->mode),
                         policy_reason_name(d->reason));
        if (s->have_temp)
                snprintf(power, sizeof(power), " %.0f C", s->max_temp_c);
        if (s->have_ac_supply || s->n_batteries > 0)
                snprintf(power + strlen(power), sizeof(power) - strlen(power), " %s",
                         s->have_ac_supply && s->ac_online ? "AC" : "battery");
        fprintf(stderr,
                "[%5.0fs] %-22s step %6ld  loss %6.3f  val %6.3f  %6.0f tok/s | cpu idle %3.0f%% "
                "fg %3.0f%% edged %3.0f%% (%s) | delay %.1f ms/s%s\n",
                mono_now_s() - m->started, state, ts.step, ts.loss, ts.val_loss, m->tokens_per_s,
                s->idle_pct, s->foreground_pct, s->harvester_pct,
                s->cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs", d->delay_ms_per_s, power);
}

static double cpu_time_s(clockid_t clock) {
        struct timespec ts;
        return clock_gettime(clock, &ts) < 0 ? 0 : (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static int local_yyyymmdd(time_t now) {
        struct tm lt;
        localtime_r(&now, &lt);
        return (lt.tm_year + 1900) * 10000 + (lt.tm_mon + 1) * 100 + lt.tm_mday;
}

/* One interval's figures into the minute history and the persistent totals. */
static void account(manager *m, const policy_decision *d, bool transition, time_t now) {
        trainer_stats ts = { 0 };
        stats_counts c = { 0 };
        double dt = m->sample.interval_s;

        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        c.state_s[d->mode] = dt;
        if (d->mode == POLICY_PAUSED)
                c.paused_s[d->reason] = dt;
        if (transition) {
                c.transitions = 1;
                if (d->mode == POLICY_PAUSED)
                        c.pauses_begun[d->reason] = 1;
        }
        c.tokens = ts.tokens - m->prev_tokens;
        c.steps = (uint64_t) (ts.step - m->prev_step);
        c.checkpoints = ts.checkpoints - m->prev_checkpoints;
        /* harvested = the process's CPU time but the event loop's: independent of the
         * sensors, so it is right with or without BPF */
        double harvested = cpu_time_s(CLOCK_PROCESS_CPUTIME_ID) - cpu_time_s(CLOCK_THREAD_CPUTIME_ID);
        c.core_s = m->prev_harvested > 0 && harvested > m->prev_harvested ? harvested - m->prev_harvested : 0;
        m->prev_harvested = harvested;
        stats_history_add(&m->history, (int64_t) now, &c);
        daemon_state_add_harvest(&m->ds, local_yyyymmdd(now), c.core_s);
        m->ds.tokens_total += c.tokens;

        double t = mono_now_s();
        if (m->prev_mono > 0 && t > m->prev_mono)
                m->tokens_per_s = (double) c.tokens / (t - m->prev_mono);
        m->prev_mono = t;
        m->prev_tokens = ts.tokens;
        m->prev_step = ts.step;
        m->prev_checkpoints = ts.checkpoints;
        if (t - m->last_state_save >= STATE_SAVE_S)
                manager_save_state(m);
}

/* What the aggregator hears about this device: totals (it computes rates) and the state. */
static void feed_telemetry(manager *m, const federation_status *fs) {
        const sensors_sample_t *s = &m->sample;
        json_t *j = json_pack("{s:f, s:I, s:s, s:s, s:o, s:o, s:o, s:I, s:i}", "core_seconds",
                              m->ds.core_seconds_total, "tokens", (json_int_t) m->ds.tokens_total,
                              "state", policy_mode_name(m->last.mode), "reason",
                              policy_reason_name(m->last.reason), "max_temp_c",
                              s->have_temp ? json_real(s->max_temp_c) : json_null(), "battery_pct",
                              s->n_batteries > 0 ? json_real(s->battery_pct) : json_null(), "on_ac",
                              s->have_ac_supply ? json_boolean(s->ac_online) : json_null(),
                              "version", (json_int_t) fs->base_version, "pending_updates",
                              (int) fs->pending_updates);
        json_t *paused = json_object();
        stats_counts c;
        stats_history_sum(&m->history, 0, (int64_t) time(NULL), &c, NULL);
        for (int i = 1; paused && i < _POLICY_REASON_MAX; i++)
                if (c.paused_s[i] > 0)
                        json_object_set_new(paused, policy_reason_name((policy_reason) i),
                                            json_real(c.paused_s[i]));
        if (j && paused)
                json_object_set_new(j, "paused_seconds", paused); /* over the last week */
        uint64_t stage_version;
        /* collaborative inference: where peers find this device's stage server */
        if (j && stage_server_version(m->stage, &stage_version) == 0) {
                json_object_set_new(j, "stage_url", json_string(stage_server_url(m->stage)));
                json_object_set_new(j, "stage_version", json_integer((json_int_t) stage_version));
        }
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (text)
                federation_set_telemetry(m->fed, text);
        free(text);
        json_decref(j);
}

/* Serving stages yields to the person at the machine like training does, but not for
 * reasons that concern training alone (no data, no task, a full disk). */
static bool serving_paused(const policy_decision *d) {
        if (d->mode == POLICY_OFF)
                return true;
        return d->mode == POLICY_PAUSED && d->reason != POLICY_REASON_NO_DATA &&
               d->reason != POLICY_REASON_NO_TASK && d->reason != POLICY_REASON_DISK_FULL;
}

/* [Inference] Serve=yes: bearer token from Token=, else the fleet identity's secret. */
static int start_serving(manager *m) {
        _cleanup_free_ char *secret = NULL;
        const conf *c = &m->conf;

        if (!c->serve || m->stage)
                return 0;
        m->last_serve_try = mono_now_s();
        if (!c->inference_token)
                secret = stage_server_identity_secret(m->state_dir);
        stage_server_opts so = { .listen = c->listen_address,
                                 .token = c->inference_token ? c->inference_token : secret,
                                 .model_path = c->inference_model, .state_dir = m->state_dir,
                                 .max_bytes = (size_t) c->inference_memory_mib << 20,
                                 .idle_timeout_s = c->session_idle_sec, .max_sessions = 64,
                                 .hold_span = c->layers_first >= 0, .first = c->layers_first,
                                 .last = c->layers_last };
        int r = stage_server_start(&so, &m->stage);
        if (secret)
                explicit_bzero(secret, strlen(secret));
        return r < 0 ? log_warning_errno(r, "not serving inference stages: %m") : 0;
}

void manager_decide(manager *m) {
        policy_input in = { 0 };
        time_t now = time(NULL);
        struct tm lt;
        char line[256];
        int r;

        if (!m->trainer && (m->data_changed || mono_now_s() - m->last_data_try >= DATA_RETRY_S ||
                            m->fed))
                (void) start_training(m);

        /* a device enrolling now has its secret (the serving token) only from now on */
        if (m->conf.serve && !m->stage && mono_now_s() - m->last_serve_try >= SERVE_RETRY_S)
                (void) start_serving(m);
        register_harvesters(m);
        r = sensors_sample(m->sensors, &m->sample);
        in.error = r < 0;
        localtime_r(&now, &lt);
        in.sample = m->sample;
        in.realtime_s = (int64_t) now;
        in.weekday = (lt.tm_wday + 6) % 7;
        in.minute_of_day = lt.tm_hour * 60 + lt.tm_min;
        in.monotonic_s = mono_now_s();
        in.cores_granted = m->last.mode == POLICY_RUNNING ? m->last.cores : 0;
        in.pause_until = m->ds.pause_until;
        in.pause_indefinite = m->ds.pause_indefinite;
        in.have_data = false;
        if (m->trainer) {
                trainer_stats ts;
                trainer_get_stats(m->trainer, &ts);
                in.disk_full = ts.save_error == -ENOSPC || ts.save_error == -EDQUOT;
                /* paused for want of space: try again now and then, resume once it fits */
                if (in.disk_full && mono_now_s() - m->last_save_retry >= DISK_RETRY_S) {
                        m->last_save_retry = mono_now_s();
                        log_debug("disk full: trying a checkpoint again");
                        trainer_request_save(m->trainer);
                }
                loader_stats ls;
                loader_get_stats(m->loader, &ls);
                in.have_data = ls.n_train_files > 0;
        }
        in.have_task = true; /* standalone: the local model is always the task */
        if (m->fed) {
                federation_status fs;
                federation_get_status(m->fed, &fs);
                in.have_task = fs.have_task;
                if (++m->telemetry_ticks % 10 == 1) /* reports go out every minute or so */
                        feed_telemetry(m, &fs);
                if (m->stage) { /* peers of the fleet come with the aggregator's stage token */
                        char fleet_token[65];
                        federation_stage_token(m->fed, fleet_token);
                        stage_server_set_fleet_token(m->stage, fleet_token);
                        explicit_bzero(fleet_token, sizeof(fleet_token));
                }
        }

        policy_decision d = policy_decide(&m->conf.knobs, &in, &m->ps, &m->ps);
        if (m->trainer)
                trainer_set_cores(m->trainer, d.mode == POLICY_RUNNING ? d.cores : 0);
        if (d.transition) {
                const char *mode = policy_mode_name(d.mode), *why = policy_reason_name(d.reason);
                if (d.mode == POLICY_PAUSED)
                        log_state(mode, why, "paused: %s", why);
                else if (d.mode == POLICY_RUNNING)
                        log_state(mode, why, "running on %d core%s", d.cores, d.cores == 1 ? "" : "s");
                else
                        log_state(mode, why, "off");
        }
        m->last = d;
        /* Paused, the tick runs every 4 s; a resume outside it (a command, a power event)
         * must not leave the running daemon sampling at that pace until the next tick. */
        if (d.transition && d.mode == POLICY_RUNNING && m->tick &&
            sd_event_source_set_time_relative(m->tick, SAMPLE_USEC) >= 0)
                (void) sd_event_source_set_enabled(m->tick, SD_EVENT_ONESHOT);
        stage_server_set_paused(m->stage, serving_paused(&d), policy_reason_name(d.reason));
        account(m, &d, d.transition, now);

        status_line(m, line, sizeof(line));
        sd_notifyf(false, "STATUS=%s", line);
        if (m->o->progress)
                progress_line(m, &d);
}

static int on_tick(sd_event_source *src, uint64_t usec, void *userdata) {
        manager *m = userdata;
        int r;

        manager_decide(m);
        if (m->o->run_seconds > 0 && mono_now_s() - m->started >= m->o->run_seconds)
                return sd_event_exit(m->event, 0);
        r = sd_event_source_set_time_relative(
                src, m->last.mode == POLICY_RUNNING ? SAMPLE_USEC : PAUSED_SAMPLE_USEC);
        return r < 0 ? r : sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
}

/* Unplugging must pause now, not at the next sample. */
static void on_power_event(const char *sysname, const char *action, void *userdata) {
        manager *m = userdata;

        log_debug("power supply %s: %s", sysname, action);
        manager_decide(m);
}

static int on_data_dir_change(sd_event_source *s, const struct inotify_event *ev, void *userdata) {
        manager *m = userdata;

        if (m->loader)
                loader_request_check(m->loader);
        else
                m->data_changed = true;
        return 0;
}

static void on_signal(int sig, void *userdata) {
        manager *m = userdata;

        if (sig != SIGHUP) {
                sd_event_exit(m->event, 0);
                return;
        }
        sd_notify(false, "RELOADING=1");
        if (manager_load_conf(m) < 0)
                log_warning("SIGHUP: the configuration does not load; keeping the old one");
        else {
                log_info("configuration reloaded");
                manager_decide(m);
        }
        sd_notify(false, "READY=1");
}

static int setup(manager *m) {
        const manager_opts *o = m->o;
        int r;

        r = manager_load_conf(m);
        if (r < 0)
                return log_error_errno(r, "cannot start: the configuration does not load");
        m->state_dir = o->state_dir ? strdup(o->state_dir) : below_root(o->root, m->conf.state_directory);
        m->data_dir = below_root(o->root, m->conf.data_directory);
        if (!m->state_dir || !m->data_dir ||
            asprintf(&m->checkpoint, "%s/checkpoint.safetensors", m->state_dir) < 0 ||
            asprintf(&m->state_file, "%s/daemon-state.json", m->state_dir) < 0)
                return log_error_errno(ENOMEM, "out of memory");
        if (mkdir(m->state_dir, 0755) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create the state directory: %m", m->state_dir);
        (void) daemon_state_load(m->state_file, &m->ds);
        if (m->ds.pause_indefinite || m->ds.pause_until > time(NULL))
                log_info("still paused by the user, as before the restart");
        r = stats_history_init(&m->history);
        if (r < 0)
                return log_error_errno(r, "out of memory");

        r = sensors_new(&(sensors_opts) { .root = o->root, .keep_tid = gettid() }, &m->sensors);
        if (r < 0)
                return log_error_errno(r, "cannot read the machine's sensors: %m");
        /* the monitor is loaded (or not): no capability is needed from here on */
        r = privileges_drop_all();
        if (r < 0)
                return log_error_errno(r, "cannot drop capabilities: %m");
        r = power_events_new(m->event, on_power_event, m, &m->power);
        if (r < 0)
                log_info("no power supply events (%s); the %g s sample will notice changes",
                         strerror(-r), SAMPLE_USEC / 1e6);

        if (m->conf.server) {
                /* training holds a model four times (parameters, gradients, two moments):
                 * a task's model that could not fit MaxMemoryMiB is not even downloaded */
                fed_options fo = { .server = m->conf.server, .enroll_token = m->conf.enroll_token,
                                   .ca_file = m->conf.ca_file, .state_dir = m->state_dir,
                                   .max_model_bytes = (size_t) m->conf.knobs.max_memory_mib *
                                                      (1024 * 1024 / 4) };
                r = federation_start(&fo, &m->fed);
                if (r < 0)
                        return log_error_errno(r, "cannot start the federation client: %m");
                log_info("federated with %s", m->conf.server);
        }
        (void) start_serving(m);
        r = start_training(m);
        if (r < 0)
                return r;
        if (!m->trainer && !m->fed)
                log_warning("%s: no training data yet (put text files there); waiting", m->data_dir);
        r = sd_event_add_inotify(m->event, &m->inotify, m->data_dir,
                                 IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                         IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF,
                                 on_data_dir_change, m);
        if (r < 0)
                log_debug("%s: not watched (%s); looking every %g s", m->data_dir, strerror(-r),
                          DATA_RETRY_S);

        r = control_server_new(m->event, o->control_path, NULL, manager_commands,
                               manager_n_commands, m, &m->control);
        if (r < 0)
                return log_error_errno(r, "%s: cannot listen on the control socket: %m",
                                       o->control_path ? o->control_path : CONTROL_DEFAULT_PATH);
        return 0;
}

int manager_run(const manager_opts *o) {
        manager m = { .o = o };
        int r;

        r = sd_event_default(&m.event);
        if (r < 0)
                return log_error_errno(r, "cannot create the event loop: %m");
        r = conf_init_builtin(&m.conf);
        if (r >= 0)
                r = setup(&m);
        if (r < 0)
                goto out;

        r = signal_pipe_attach(m.event, on_signal, &m);
        if (r < 0)
                goto out;
        /* pings systemd at half of WatchdogSec= when it is set */
        sd_event_set_watchdog(m.event, true);
        m.started = mono_now_s();
        r = sd_event_add_time_relative(m.event, &m.tick, CLOCK_MONOTONIC, SAMPLE_USEC, 1000, on_tick,
                                       &m);
        if (r < 0)
                goto out;
        sd_notify(false, "READY=1\nSTATUS=starting");
        log_info("edged %s running: data %s, state %s", EDGED_VERSION, m.data_dir, m.state_dir);
        r = sd_event_loop(m.event);
        sd_notify(false, "STOPPING=1\nSTATUS=saving a checkpoint");
        log_info("stopping: saving a checkpoint");
out:
        /* the federation thread may be waiting on the trainer: it goes first; the trainer
         * saves its checkpoint as it stops; the loader feeds it until then */
        federation_stop(m.fed);
        stage_server_stop(m.stage);
        trainer_stop(m.trainer);
        loader_free(m.loader);
        if (m.state_file)
                manager_save_state(&m);
        if (m.sample_model)
                model_free(m.sample_model);
        control_server_free(m.control);
        power_events_free(m.power);
        sd_event_source_unref(m.tick);
        sd_event_source_unref(m.inotify);
        sensors_free(m.sensors);
        stats_history_done(&m.history);
        conf_done(&m.conf);
        free(m.state_dir);
        free(m.data_dir);
        free(m.checkpoint);
        free(m.state_file);
        sd_event_unref(m.event);
        signal_pipe_detach();
        return r < 0 ? r : 0;
}
