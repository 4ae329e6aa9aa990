/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "manager.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "control.h"
#include "corpus.h"
#include "log.h"
#include "macros.h"
#include "policy.h"
#include "sensors.h"
#include "signal-pipe.h"
#include "trainer.h"

#define SAMPLE_USEC (1000 * 1000)
#define MAX_DATA_BYTES (256u << 20)

typedef struct {
        const manager_opts *o;
        sd_event *event;
        conf conf;
        char *state_dir, *data_dir, *checkpoint;
        corpus data;
        bool have_data;
        sensors *sensors;
        trainer *trainer;
        control_server *control;
        policy_state ps;
        policy_decision last;
        int64_t pause_until;
        bool pause_indefinite;
        uint64_t prev_tokens;
        double prev_mono, tokens_per_s, started;
        sensors_sample_t sample;
} manager;

static char *below_root(const char *root, const char *path) {
        char *p = NULL;
        if (!root || strcmp(root, "/") == 0 || !*root)
                return strdup(path);
        return asprintf(&p, "%s%s", root, path) < 0 ? NULL : p;
}

static int load_conf(manager *m) {
        conf_load_options lo = { .root = m->o->root, .config_file = m->o->config_file,
                                 .state_dir = m->o->state_dir };
        conf c;
        int r = conf_load(&lo, &c);
        if (r < 0)
                return r;
        conf_done(&m->conf);
        m->conf = c;
        return 0;
}

/* Threads the trainer and BLAS have now are harvesters for the monitor; registering one
 * twice is harmless. */
static void register_harvesters(manager *m) {
        pid_t tids[64];
        size_t n = 0;

        if (!m->trainer || trainer_harvester_tids(m->trainer, tids, ARRAY_SIZE(tids), &n) < 0)
                return;
        for (size_t i = 0; i < n; i++) {
                sensors_remove_harvester(m->sensors, tids[i]);
                sensors_add_harvester(m->sensors, tids[i]);
        }
}

static void status_line(manager *m, char *buf, size_t size) {
        trainer_stats ts = { 0 };
        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        if (m->last.mode == POLICY_PAUSED)
                snprintf(buf, size, "paused (%s), step %ld, loss %.3f", policy_reason_name(m->last.reason),
                         ts.step, ts.loss);
        else
                snprintf(buf, size, "%s, %d cores, %.0f tokens/s, step %ld, loss %.3f",
                         policy_mode_name(m->last.mode), m->last.cores, m->tokens_per_s, ts.step,
                         ts.loss);
}

static int on_tick(sd_event_source *src, uint64_t usec, void *userdata) {
        manager *m = userdata;
        policy_input in = { 0 };
        time_t now = time(NULL);
        struct tm lt;
        char line[256];
        int r;

        r = sensors_sample(m->sensors, &m->sample);
        in.error = r < 0;
        localtime_r(&now, &lt);
        in.sample = m->sample;
        in.realtime_s = (int64_t) now;
        in.weekday = (lt.tm_wday + 6) % 7;
        in.minute_of_day = lt.tm_hour * 60 + lt.tm_min;
        in.monotonic_s = mono_now_s();
        in.cores_granted = m->last.mode == POLICY_RUNNING ? m->last.cores : 0;
        in.pause_until = m->pause_until;
        in.pause_indefinite = m->pause_indefinite;
        in.have_data = m->have_data;
        in.have_task = true; /* standalone: the local model is always the task */

        policy_decision d = policy_decide(&m->conf.knobs, &in, &m->ps, &m->ps);
        if (m->trainer)
                trainer_set_cores(m->trainer, d.mode == POLICY_RUNNING ? d.cores : 0);
        if (d.transition || d.cores_changed)
                register_harvesters(m);
        if (d.transition) {
                if (d.mode == POLICY_PAUSED)
                        log_info("paused: %s", policy_reason_name(d.reason));
                else
                        log_info("%s%s", policy_mode_name(d.mode),
                                 d.mode == POLICY_RUNNING ? " (training)" : "");
        }
        m->last = d;

        trainer_stats ts = { 0 };
        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        double t = mono_now_s();
        if (m->prev_mono > 0 && t > m->prev_mono)
                m->tokens_per_s = (double) (ts.tokens - m->prev_tokens) / (t - m->prev_mono);
        m->prev_tokens = ts.tokens;
        m->prev_mono = t;

        status_line(m, line, sizeof(line));
        sd_notifyf(false, "STATUS=%s", line);
        if (m->o->progress)
                fprintf(stderr, "%s | cpu idle %.0f%% fg %.0f%% harvest %.0f%% (%s)\n", line,
                        m->sample.idle_pct, m->sample.foreground_pct, m->sample.harvester_pct,
                        m->sample.cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs");
        if (m->o->run_seconds > 0 && t - m->started >= m->o->run_seconds)
                return sd_event_exit(m->event, 0);
        r = sd_event_source_set_time_relative(src, SAMPLE_USEC);
        return r < 0 ? r : sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
}

/* ---- control commands ---- */

static int cmd_status(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        trainer_stats ts = { 0 };
        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        *reply = json_pack("{s:s, s:s, s:i, s:b, s:f, s:I, s:I, s:f, s:s, s:f, s:f, s:f}",
                           "state", policy_mode_name(m->last.mode), "reason",
                           policy_reason_name(m->last.reason), "cores", m->last.cores,
                           /* the decision is instant; the trainer stops after its layer */
                           "trainer_parked", !m->trainer || ts.parked,
                           "tokens_per_s", m->tokens_per_s, "step", (json_int_t) ts.step,
                           "tokens", (json_int_t) ts.tokens, "loss", (double) ts.loss,
                           "cpu_source",
                           m->sample.cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs",
                           "idle_pct", m->sample.idle_pct, "max_temp_c", m->sample.max_temp_c,
                           "battery_pct", m->sample.battery_pct);
        return *reply ? 0 : -ENOMEM;
}

static int cmd_pause(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        json_t *secs = json_object_get(req, "seconds");

        if (secs && (!json_is_integer(secs) || json_integer_value(secs) <= 0))
                return control_error(reply, EINVAL, "seconds must be a positive whole number");
        m->pause_indefinite = !secs;
        m->pause_until = secs ? (int64_t) time(NULL) + json_integer_value(secs) : 0;
        log_info("paused by the user%s", secs ? " for a while" : "");
        return 0;
}

static int cmd_resume(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        m->pause_indefinite = false;
        m->pause_until = 0;
        log_info("resumed by the user");
        return 0;
}

static int cmd_policy_get(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        int r = conf_format_show(&m->conf, &text);
        if (r < 0)
                return r;
        *reply = json_pack("{s:s}", "show", text);
        return *reply ? 0 : -ENOMEM;
}

/* After conf_set_override/conf_reset_override returned r (err set on failure): reload, so
 * the change takes effect now, and turn either failure into the reply. */
static int apply_override(manager *m, int r, const char *err, json_t **reply) {
        if (r < 0)
                return control_error(reply, -r, "%s", err);
        r = load_conf(m);
        return r < 0 ? control_error(reply, -r, "configuration no longer loads; see the log") : 0;
}

static int cmd_policy_set(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const char *key = json_string_value(json_object_get(req, "key"));
        const char *value = json_string_value(json_object_get(req, "value"));
        char err[256];
        int r;

        if (!key || !value)
                return control_error(reply, EINVAL, "policy-set needs \"key\" and \"value\" strings");
        r = conf_set_override(m->state_dir, key, value, err, sizeof(err));
        return apply_override(m, r, err, reply);
}

static int cmd_policy_reset(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const char *key = json_string_value(json_object_get(req, "key"));
        char err[256];
        int r = conf_reset_override(m->state_dir, key, err, sizeof(err));

        return apply_override(m, r, err, reply);
}

static int cmd_profile(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        *reply = json_pack("{s:s}", "profile", conf_profile_to_string(m->conf.knobs.profile));
        return *reply ? 0 : -ENOMEM;
}

/* A runtime override, like policy-set: survives restarts until policy-reset. */
static int cmd_profile_set(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const char *name = json_string_value(json_object_get(req, "name"));
        char err[256];
        int r;

        if (!name)
                return control_error(reply, EINVAL, "profile-set needs a \"name\": quiet, balanced or performance");
        r = apply_override(m, conf_set_override(m->state_dir, "Profile", name, err, sizeof(err)),
                           err, reply);
        if (r < 0)
                return r;
        log_info("profile set to %s", name);
        return cmd_profile(req, reply, userdata);
}

static int cmd_stats(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        trainer_stats ts = { 0 };
        json_t *paused = json_object();

        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        for (int i = 0; paused && i < _POLICY_REASON_MAX; i++)
                if (m->ps.n_paused[i] > 0)
                        json_object_set_new(paused, policy_reason_name((policy_reason) i),
                                            json_integer((json_int_t) m->ps.n_paused[i]));
        *reply = json_pack("{s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:I}", "transitions",
                           (json_int_t) m->ps.n_transitions, "times_running",
                           (json_int_t) m->ps.n_running, "times_off", (json_int_t) m->ps.n_off,
                           "times_paused", paused, "steps", (json_int_t) ts.step, "tokens",
                           (json_int_t) ts.tokens, "checkpoints", (json_int_t) ts.checkpoints,
                           "steps_abandoned", (json_int_t) ts.steps_abandoned);
        return *reply ? 0 : -ENOMEM;
}

static const control_command commands[] = {
        { "profile", false, cmd_profile },
        { "profile-set", true, cmd_profile_set },
        { "stats", false, cmd_stats },
        { "status", false, cmd_status },
        { "pause", true, cmd_pause },
        { "resume", true, cmd_resume },
        { "policy-get", false, cmd_policy_get },
        { "policy-set", true, cmd_policy_set },
        { "policy-reset", true, cmd_policy_reset },
};

static void on_signal(int sig, void *userdata) {
        manager *m = userdata;

        if (sig != SIGHUP) {
                sd_event_exit(m->event, 0);
                return;
        }
        if (load_conf(m) < 0)
                log_warning("SIGHUP: the configuration does not load; keeping the old one");
        else
                log_info("configuration reloaded");
}

static int setup(manager *m) {
        const manager_opts *o = m->o;
        static const char *const models[] = { "tiny", "small", "medium" };
        int r;

        r = load_conf(m);
        if (r < 0)
                return log_error_errno(r, "cannot start: the configuration does not load");
        m->state_dir = o->state_dir ? strdup(o->state_dir) : below_root(o->root, m->conf.state_directory);
        m->data_dir = below_root(o->root, m->conf.data_directory);
        if (!m->state_dir || !m->data_dir ||
            asprintf(&m->checkpoint, "%s/checkpoint.safetensors", m->state_dir) < 0)
                return log_error_errno(ENOMEM, "out of memory");
        if (mkdir(m->state_dir, 0755) < 0 && errno != EEXIST)
                return log_error_errno(errno, "%s: cannot create the state directory: %m", m->state_dir);

        r = sensors_new(&(sensors_opts) { .root = o->root }, &m->sensors);
        if (r < 0)
                return log_error_errno(r, "cannot read the machine's sensors: %m");

        char *paths[] = { m->data_dir };
        m->have_data = corpus_load(&m->data, paths, 1, MAX_DATA_BYTES) >= 0;
        if (!m->have_data)
                log_warning("%s: no training data yet (put text files there); waiting", m->data_dir);
        else {
                trainer_config tc = { .B = 4, .accum = 1, .seed = 1, .data = &m->data,
                                      .checkpoint = m->checkpoint,
                                      .checkpoint_interval_s = m->conf.checkpoint_interval_sec };
                model_config_by_name(models[m->conf.model], &tc.cfg);
                tc.T = tc.cfg.block_size;
                tc.sched = (lr_schedule) { .lr_max = 1e-3f, .lr_min = 1e-4f, .warmup_steps = 100,
                                           .total_steps = 1000000 };
                adamw_hparams_default(&tc.hp);
                r = trainer_start(&tc, &m->trainer);
                if (r < 0)
                        return log_error_errno(r, "cannot start training (%s): %m", m->checkpoint);
        }

        r = control_server_new(m->event, o->control_path, NULL, commands, ARRAY_SIZE(commands), m,
                               &m->control);
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
        r = sd_event_add_time_relative(m.event, NULL, CLOCK_MONOTONIC, SAMPLE_USEC, 0, on_tick, &m);
        if (r < 0)
                goto out;
        sd_notify(false, "READY=1\nSTATUS=starting");
        log_info("edged running: data %s, state %s", m.data_dir, m.state_dir);
        r = sd_event_loop(m.event);
        sd_notify(false, "STOPPING=1\nSTATUS=saving a checkpoint");
        log_info("stopping: saving a checkpoint");
out:
        /* the trainer saves its checkpoint as it stops */
        trainer_stop(m.trainer);
        control_server_free(m.control);
        sensors_free(m.sensors);
        corpus_free(&m.data);
        conf_done(&m.conf);
        free(m.state_dir);
        free(m.data_dir);
        free(m.checkpoint);
        sd_event_unref(m.event);
        signal_pipe_detach();
        return r < 0 ? r : 0;
}
