/* SPDX-License-Identifier: MIT */
/* The control commands (docs/control-protocol.md): each reads or changes the manager's
 * state and answers at once; none blocks the event loop for long. */
#include "manager-internal.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "blas.h"
#include "checkpoint.h"
#include "log.h"
#include "macros.h"
#include "quant-sample.h"
#include "sample.h"

#define SAMPLE_MAX_TOKENS 1024
#define SAVE_TIMEOUT_S 60.0

/* NaN (not measured yet) is null in JSON. */
static json_t *number_or_null(double v) {
        return isfinite(v) ? json_real(v) : json_null();
}

static void log_who(manager *m, const char *what) {
        uid_t uid = 0;
        if (control_server_peer(m->control, &uid, NULL) >= 0)
                log_info("%s (asked by uid %u)", what, (unsigned) uid);
        else
                log_info("%s", what);
}

static json_t *data_status(manager *m, const trainer_stats *ts) {
        loader_stats ls = { 0 };
        uint64_t skipped = 0;

        if (m->loader)
                loader_get_stats(m->loader, &ls);
        for (int i = 0; i < _LOADER_SKIP_MAX; i++)
                skipped += ls.skipped[i];
        return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "directory", m->data_dir, "files",
                         (json_int_t) ls.n_files, "bytes", (json_int_t) ls.bytes, "skipped",
                         (json_int_t) skipped, "vanished", (json_int_t) ls.vanished, "reindexes",
                         (json_int_t) ls.reindexes, "wait_pct",
                         ts->step_ns ? json_real(100.0 * (double) ts->data_wait_ns / (double) ts->step_ns)
                                     : json_null());
}

static uint64_t model_version(manager *m) {
        federation_status fs;
        if (!m->fed)
                return 0;
        federation_get_status(m->fed, &fs);
        return fs.base_version;
}

static json_t *aggregator_status(manager *m) {
        federation_status fs;

        if (!m->fed)
                return json_pack("{s:s, s:n, s:i}", "state", "standalone", "url", "pending_updates", 0);
        federation_get_status(m->fed, &fs);
        /* lr: the fleet's rate the trainer runs at since base_version; local_steps: the
         * round's budget from the task */
        return json_pack("{s:s, s:s, s:i, s:o, s:I, s:o, s:o, s:I, s:I, s:I, s:s}", "state",
                         fed_link_to_string(fs.link), "url", m->conf.server, "pending_updates",
                         (int) fs.pending_updates, "version",
                         fs.have_task ? json_integer((json_int_t) fs.version) : json_null(),
                         "base_version", (json_int_t) fs.base_version, "lr",
                         fs.lr > 0 ? json_real(fs.lr) : json_null(), "local_steps",
                         fs.local_steps > 0 ? json_integer(fs.local_steps) : json_null(),
                         "updates_sent", (json_int_t) fs.updates_sent, "updates_acked",
                         (json_int_t) fs.updates_acked, "updates_rejected",
                         (json_int_t) fs.updates_rejected, "last_error", fs.last_error);
}

static int cmd_status(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const sensors_sample_t *s = &m->sample;
        trainer_stats ts = { .loss = NAN, .val_loss = NAN };
        bool user_pause = m->ds.pause_until > time(NULL);

        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        json_t *r = json_pack(
                "{s:s, s:s, s:s, s:o, s:i, s:b, s:s, s:s, s:I, s:I, s:I, s:f, s:o, s:o, s:f, s:f}",
                "version", EDGED_VERSION, "state", policy_mode_name(m->last.mode), "reason",
                policy_reason_name(m->last.reason), "paused_until",
                user_pause ? json_integer(m->ds.pause_until) : json_null(), "cores", m->last.cores,
                /* the decision is instant; the trainer stops after its layer */
                "trainer_parked", !m->trainer || ts.parked, "profile",
                conf_profile_to_string(m->conf.knobs.profile), "model",
                m->trainer ? trainer_model_config(m->trainer)->name : conf_model_to_string(m->conf.model),
                "model_version", (json_int_t) model_version(m), "step",
                (json_int_t) ts.step, "tokens", (json_int_t) ts.tokens, "tokens_per_s",
                m->tokens_per_s, "loss", number_or_null(ts.loss), "val_loss",
                number_or_null(ts.val_loss), "core_seconds_today", m->ds.core_seconds_today,
                "core_seconds_total", m->ds.core_seconds_total);
        if (!r)
                return -ENOMEM;
        json_object_set_new(r, "idle_pct", json_real(s->idle_pct));
        json_object_set_new(r, "max_temp_c", s->have_temp ? json_real(s->max_temp_c) : json_null());
        json_object_set_new(r, "on_ac", s->have_ac_supply ? json_boolean(s->ac_online) : json_null());
        json_object_set_new(r, "battery_pct",
                            s->n_batteries > 0 ? json_real(s->battery_pct) : json_null());
        json_object_set_new(r, "cpu_source",
                            json_string(s->cpu_source == SENSORS_CPU_BPF ? "bpf" : "procfs"));
        json_object_set_new(r, "cpu_source_why", json_string(s->cpu_source_why ? s->cpu_source_why : ""));
        json_object_set_new(r, "foreground_delay_ms_per_s",
                            s->cpu_source == SENSORS_CPU_BPF ? json_real(m->last.delay_ms_per_s)
                                                             : json_null());
        json_object_set_new(r, "blas_kernel", json_string(blas_kernel()));
        json_object_set_new(r, "data", data_status(m, &ts));
        json_object_set_new(r, "aggregator", aggregator_status(m));
        *reply = r;
        return 0;
}

static json_t *reasons_object(const double *secs, const uint64_t *counts) {
        json_t *o = json_object();
        for (int i = 1; o && i < _POLICY_REASON_MAX; i++) {
                const char *name = policy_reason_name((policy_reason) i);
                if (secs && secs[i] > 0)
                        json_object_set_new(o, name, json_real(secs[i]));
                if (counts && counts[i] > 0)
                        json_object_set_new(o, name, json_integer((json_int_t) counts[i]));
        }
        return o;
}

static int cmd_stats(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        json_t *since_j = json_object_get(req, "since");
        int64_t now = (int64_t) time(NULL), since = 0, from;
        trainer_stats ts = { 0 };
        stats_counts c;

        if (since_j && (!json_is_integer(since_j) || json_integer_value(since_j) < 0))
                return control_error(reply, EINVAL, "since must be a Unix time (a whole number)");
        if (since_j)
                since = json_integer_value(since_j);
        if (m->trainer)
                trainer_get_stats(m->trainer, &ts);
        stats_history_sum(&m->history, since, now, &c, &from);
        federation_status fs = { 0 };
        if (m->fed)
                federation_get_status(m->fed, &fs);
        *reply = json_pack("{s:I, s:{s:f, s:f, s:f}, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I}",
                           "since", (json_int_t) from, "seconds_in_state", "running",
                           c.state_s[POLICY_RUNNING], "paused", c.state_s[POLICY_PAUSED], "off",
                           c.state_s[POLICY_OFF], "seconds_paused", reasons_object(c.paused_s, NULL),
                           "times_paused", reasons_object(NULL, c.pauses_begun), "transitions",
                           (json_int_t) c.transitions, "steps", (json_int_t) c.steps, "tokens",
                           (json_int_t) c.tokens, "checkpoints", (json_int_t) c.checkpoints,
                           "steps_abandoned", (json_int_t) ts.steps_abandoned, "core_seconds",
                           c.core_s, "updates_sent", (json_int_t) fs.updates_sent,
                           "updates_acked", (json_int_t) fs.updates_acked);
        return *reply ? 0 : -ENOMEM;
}

/* The state after a pause or resume, decided on the spot rather than at the next sample. */
static json_t *state_reply(manager *m) {
        manager_decide(m);
        bool timed = !m->ds.pause_indefinite && m->ds.pause_until > time(NULL);
        return json_pack("{s:s, s:s, s:o}", "state", policy_mode_name(m->last.mode), "reason",
                         policy_reason_name(m->last.reason), "paused_until",
                         timed ? json_integer(m->ds.pause_until) : json_null());
}

static int cmd_pause(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        json_t *secs = json_object_get(req, "seconds");

        if (secs && (!json_is_integer(secs) || json_integer_value(secs) <= 0 ||
                     json_integer_value(secs) > 366LL * 86400))
                return control_error(reply, EINVAL, "seconds must be a whole number from 1 to 31622400");
        m->ds.pause_indefinite = !secs;
        m->ds.pause_until = secs ? (int64_t) time(NULL) + json_integer_value(secs) : 0;
        /* takes effect now, not at the next sample */
        manager_save_state(m);
        if (secs) {
                char what[64];
                snprintf(what, sizeof(what), "paused by the user for %lld s",
                         (long long) json_integer_value(secs));
                log_who(m, what);
        } else
                log_who(m, "paused by the user");
        *reply = state_reply(m);
        return *reply ? 0 : -ENOMEM;
}

static int cmd_resume(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        m->ds.pause_indefinite = false;
        m->ds.pause_until = 0;
        manager_save_state(m);
        log_who(m, "resumed by the user");
        *reply = state_reply(m);
        return *reply ? 0 : -ENOMEM;
}

static const char *const origin_names[] = {
        [KNOB_BUILTIN] = "builtin", [KNOB_PROFILE] = "profile", [KNOB_FILE] = "file",
        [KNOB_RUNTIME] = "runtime", [KNOB_FLEET] = "fleet",
};

static int cmd_policy_get(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        json_t *knobs = json_array();
        int r = conf_format_show(&m->conf, &text);

        if (r < 0 || !knobs) {
                json_decref(knobs);
                return r < 0 ? r : -ENOMEM;
        }
        for (int k = 0; k < _CONF_KEY_MAX; k++) {
                const conf_provenance *p = &m->conf.prov[k];
                char val[1024];
                conf_format_value(&m->conf, (conf_key) k, val, sizeof(val));
                json_array_append_new(
                        knobs, json_pack("{s:s, s:s, s:s, s:o, s:o, s:b, s:b}", "key",
                                         conf_key_to_string((conf_key) k), "value", val, "origin",
                                         origin_names[p->origin], "file",
                                         p->path ? json_string(p->path) : json_null(), "line",
                                         p->line ? json_integer(p->line) : json_null(), "locked",
                                         (m->conf.locked & (1u << k)) != 0, "policy",
                                         conf_key_is_policy((conf_key) k)));
        }
        *reply = json_pack("{s:s, s:o}", "show", text, "knobs", knobs);
        return *reply ? 0 : -ENOMEM;
}

/* After conf_set_override/conf_reset_override returned r (err set on failure): reload, so
 * the change takes effect now, and turn either failure into the reply. */
static int apply_override(manager *m, int r, const char *err, json_t **reply) {
        if (r < 0)
                return control_error(reply, -r, "%s", err);
        r = manager_load_conf(m);
        return r < 0 ? control_error(reply, -r, "configuration no longer loads; see the log") : 0;
}

static int cmd_policy_set(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const char *key = json_string_value(json_object_get(req, "key"));
        const char *value = json_string_value(json_object_get(req, "value"));
        char err[256], what[512];
        int r;

        if (!key || !value)
                return control_error(reply, EINVAL, "policy-set needs \"key\" and \"value\" strings");
        r = apply_override(m, conf_set_override(m->state_dir, key, value, err, sizeof(err)), err,
                           reply);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "policy: %s=%s (runtime override)", key, value);
        log_who(m, what);
        return 0;
}

static int cmd_policy_reset(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        const char *key = json_string_value(json_object_get(req, "key"));
        char err[256], what[512];
        int r = conf_reset_override(m->state_dir, key, err, sizeof(err));

        r = apply_override(m, r, err, reply);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "policy: %s reset", key ? key : "every override");
        log_who(m, what);
        return 0;
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
        char err[256], what[128];
        int r;

        if (!name)
                return control_error(reply, EINVAL, "profile-set needs a \"name\": quiet, balanced or performance");
        r = apply_override(m, conf_set_override(m->state_dir, "Profile", name, err, sizeof(err)),
                           err, reply);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "profile set to %s", name);
        log_who(m, what);
        return cmd_profile(req, reply, userdata);
}

static int cmd_sample(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        json_t *tok_j = json_object_get(req, "tokens"), *temp_j = json_object_get(req, "temperature");
        json_t *seed_j = json_object_get(req, "seed"), *quant_j = json_object_get(req, "quant");
        const char *prompt = json_string_value(json_object_get(req, "prompt"));
        const char *quant = json_string_value(quant_j);
        sample_opts so = { .temperature = 0.8f, .seed = (uint64_t) time(NULL) };
        json_int_t n = 200;
        quant_kind kind = QUANT_F32;
        quant_model *qm = NULL;
        sampler *s = NULL;
        int r;

        if (!m->trainer)
                return control_error(reply, ENODATA, "no model yet: edged has no training data");
        if (json_object_get(req, "prompt") && !prompt)
                return control_error(reply, EINVAL, "prompt must be a string");
        if (tok_j && (!json_is_integer(tok_j) || (n = json_integer_value(tok_j)) < 1 ||
                      n > SAMPLE_MAX_TOKENS))
                return control_error(reply, EINVAL, "tokens must be a whole number from 1 to %d",
                                     SAMPLE_MAX_TOKENS);
        if (temp_j && (!json_is_number(temp_j) || !(json_number_value(temp_j) >= 0) ||
                       json_number_value(temp_j) > 2))
                return control_error(reply, EINVAL, "temperature must be a number from 0 to 2");
        if (temp_j)
                so.temperature = (float) json_number_value(temp_j);
        if (seed_j && !json_is_integer(seed_j))
                return control_error(reply, EINVAL, "seed must be a whole number");
        if (seed_j)
                so.seed = (uint64_t) json_integer_value(seed_j);
        if (quant_j && (!quant || (strcmp(quant, "int8") != 0 && strcmp(quant, "int4") != 0)))
                return control_error(reply, EINVAL, "quant must be \"int8\" or \"int4\"");
        if (quant)
                kind = strcmp(quant, "int8") == 0 ? QUANT_INT8 : QUANT_INT4;

        const model_config *cfg = trainer_model_config(m->trainer);
        size_t plen = prompt ? strlen(prompt) : 0;
        if (plen >= (size_t) cfg->block_size)
                return control_error(reply, EINVAL, "the prompt must be shorter than %d bytes",
                                     cfg->block_size);
        if (!m->sample_model && (r = model_new(cfg, 1, cfg->block_size, &m->sample_model)) < 0)
                return r;
        r = trainer_copy_params(m->trainer, m->sample_model);
        if (r < 0)
                return r;
        _cleanup_free_ uint8_t *out = malloc((size_t) n);
        if (!out)
                return -ENOMEM;
        /* quantized on the spot from the model as it is now, as 'edged quantize' would (a few
         * ms for tiny, ~40 ms for small, ~0.3 s for medium): a cached copy goes stale with
         * every training step */
        if (kind != QUANT_F32 && (r = quant_model_from_model(m->sample_model, kind, kind, &qm)) < 0)
                return r;
        r = qm ? quant_sampler_new(qm, &s) : sampler_new(m->sample_model, &s);
        if (r < 0) {
                quant_model_free(qm);
                return r;
        }
        /* the model sees at most block_size bytes: the prompt plus what fits after it */
        int got = sample_generate(s, (const uint8_t *) (plen ? prompt : "\n"), plen ? plen : 1, out,
                                  (size_t) n, &so);
        sampler_free(s);
        quant_model_free(qm);
        if (got < 0)
                return got;
        *reply = json_pack("{s:s%, s:i, s:s}", "text", (const char *) out, (size_t) got, "tokens",
                           got, "quant", quant ? quant : "fp32");
        return *reply ? 0 : -ENOMEM;
}

static json_t *checkpoint_entry(const char *path) {
        struct stat st;
        long step = -1;

        if (stat(path, &st) < 0)
                return NULL;
        bool have_step = ckpt_read_step(path, &step) >= 0;
        return json_pack("{s:s, s:o, s:I, s:I}", "path", path,
                         "step", have_step ? json_integer(step) : json_null(), "bytes",
                         (json_int_t) st.st_size, "mtime", (json_int_t) st.st_mtime);
}

static int cmd_checkpoint_list(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        static const char *const suffixes[] = { "", ".prev", ".corrupt" };
        json_t *list = json_array();

        for (size_t i = 0; list && i < ARRAY_SIZE(suffixes); i++) {
                _cleanup_free_ char *p = NULL;
                if (asprintf(&p, "%s%s", m->checkpoint, suffixes[i]) < 0)
                        break;
                json_t *e = checkpoint_entry(p);
                if (e) {
                        json_object_set_new(e, "kind", json_string(i == 0 ? "latest" : suffixes[i] + 1));
                        json_array_append_new(list, e);
                }
        }
        *reply = json_pack("{s:o}", "checkpoints", list);
        return *reply ? 0 : -ENOMEM;
}

static int cmd_checkpoint_save(json_t *req, json_t **reply, void *userdata) {
        manager *m = userdata;
        int r;

        if (!m->trainer)
                return control_error(reply, ENODATA, "no model yet: edged has no training data");
        r = trainer_save_now(m->trainer, SAVE_TIMEOUT_S);
        if (r < 0)
                return control_error(reply, -r, "the checkpoint was not written; see the log");
        log_who(m, "checkpoint saved on request");
        json_t *e = checkpoint_entry(m->checkpoint);
        *reply = json_pack("{s:o}", "checkpoint", e ? e : json_null());
        return *reply ? 0 : -ENOMEM;
}

const control_command manager_commands[] = {
        { "status", false, cmd_status },
        { "stats", false, cmd_stats },
        { "pause", true, cmd_pause },
        { "resume", true, cmd_resume },
        { "profile", false, cmd_profile },
        { "profile-set", true, cmd_profile_set },
        { "policy-get", false, cmd_policy_get },
        { "policy-set", true, cmd_policy_set },
        { "policy-reset", true, cmd_policy_reset },
        { "sample", false, cmd_sample },
        { "checkpoint-list", false, cmd_checkpoint_list },
        { "checkpoint-save", true, cmd_checkpoint_save },
};
const size_t manager_n_commands = ARRAY_SIZE(manager_commands);
