/* SPDX-License-Identifier: MIT */
#include "settings.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "merge.h"

uint64_t agg_default_max_update_bytes(size_t n_params) {
        /* an fp32 update plus zstd's worst-case expansion and the per-tensor headers */
        return 4 * (uint64_t) n_params + n_params / 64 + 65536;
}

size_t agg_max_raw_bytes(const model_layout *lay) {
        /* fp32 is the largest dense encoding; int8 is smaller, top-k at sane fractions too */
        return 4 * lay->n_params + 64 + lay->n_views * (2 + MODEL_NAME_MAX + 8 + 4);
}

void agg_settings_default(agg_settings *s, const model_config *cfg) {
        model_layout *lay = malloc(sizeof(*lay));

        *s = (agg_settings){
                .cfg = *cfg,
                .seed = 1,
                .buffer_size = 4,
                .optimizer = AGG_OPT_FEDAVG,
                /* measured with bench/fed-learning (README, "Federated learning") */
                .server_momentum = 0.7f,
                .server_momentum_period = 2,
                .server_adam_eps = AGG_ADAM_EPS_DEFAULT,
                .max_staleness = 8,
                .trim_fraction = 0.0,
                .local_steps = 50,
                .batch = 4,
                .lr = 1e-3f,
                .lr_schedule = AGG_LR_COSINE,
                .lr_warmup_tokens = 1000000,
                .lr_horizon_tokens = 1000000000,
                .local_steps_min = 1,
                .topk_fraction = 0.01f,
                .encoding = UPD_INT8,
                .report_interval_s = 60,
                .rate_per_s = 5.0,
                .rate_burst = 30,
        };
        if (lay) {
                model_layout_init(lay, cfg);
                s->max_update_bytes = agg_default_max_update_bytes(lay->n_params);
                /* a per-coordinate RMS change of 0.25 is far beyond any honest local run */
                s->max_update_norm = ceil(0.25 * sqrt((double) lay->n_params));
                free(lay);
        } else {
                s->max_update_bytes = 64u << 20;
                s->max_update_norm = 1000;
        }
}

float agg_settings_server_lr(const agg_settings *s) {
        if (s->server_lr > 0)
                return s->server_lr;
        switch (s->optimizer) {
        case AGG_OPT_FEDADAM:
                return 0.01f;
        case AGG_OPT_NESTEROV:
                return 0.5f;
        default:
                /* FedBuff's server rate; 0.7 learnt 0.7-0.8 % better than 1 in
                 * bench/fed-learning over three seeds */
                return 0.7f;
        }
}

/* older spellings still accepted: { old, canonical } */
static const char *const key_aliases[][2] = {
        { "ServerLR", "ServerLearningRate" },
};

const char *agg_settings_canonical_key(const char *key) {
        for (size_t i = 0; i < sizeof(key_aliases) / sizeof(key_aliases[0]); i++)
                if (!strcmp(key, key_aliases[i][0]))
                        return key_aliases[i][1];
        return key;
}

const char *agg_settings_old_key(const char *key) {
        for (size_t i = 0; i < sizeof(key_aliases) / sizeof(key_aliases[0]); i++)
                if (!strcmp(key, key_aliases[i][1]))
                        return key_aliases[i][0];
        return NULL;
}

static int bad(char *err, size_t n, const char *key, const char *value, const char *what) {
        snprintf(err, n, "%s: '%s' is not %s", key, value, what);
        return -EINVAL;
}

static int parse_ll(const char *v, long long min, long long max, long long *ret) {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || x < min || x > max)
                return -EINVAL;
        *ret = x;
        return 0;
}

static int parse_d(const char *v, double min, double max, double *ret) {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !(x >= min && x <= max))
                return -EINVAL;
        *ret = x;
        return 0;
}

static int parse_bool(const char *v, bool *ret) {
        if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
            !strcasecmp(v, "on"))
                *ret = true;
        else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
                 !strcasecmp(v, "off"))
                *ret = false;
        else
                return -EINVAL;
        return 0;
}

static bool policy_key_ok(const char *k) {
        size_t n = strlen(k);
        if (n == 0 || n >= 32)
                return false;
        for (const char *p = k; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9')))
                        return false;
        return true;
}

static bool printable(const char *v) {
        for (const unsigned char *p = (const unsigned char *) v; *p; p++)
                if (*p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

int agg_settings_apply(agg_settings *s, const char *key, const char *value, char *err,
                       size_t err_size) {
        long long i;
        double d;

#define INT_KEY(name, field, min, max)                                                             \
        if (!strcmp(key, name)) {                                                                  \
                if (parse_ll(value, min, max, &i) < 0)                                             \
                        return bad(err, err_size, key, value,                                      \
                                   "a whole number in [" #min ", " #max "]");                      \
                s->field = i;                                                                      \
                return 0;                                                                          \
        }
#define DBL_KEY(name, field, min, max, what)                                                       \
        if (!strcmp(key, name)) {                                                                  \
                if (parse_d(value, min, max, &d) < 0)                                              \
                        return bad(err, err_size, key, value, what);                               \
                s->field = d;                                                                      \
                return 0;                                                                          \
        }
        if (!strcmp(key, "Model")) {
                model_config cfg;
                if (model_config_by_name(value, &cfg) < 0)
                        return bad(err, err_size, key, value, "tiny, small or medium");
                s->cfg = cfg;
                return 0;
        }
        INT_KEY("Seed", seed, 0, 9223372036854775807LL)
        INT_KEY("BufferSize", buffer_size, 1, 1024)
        INT_KEY("MaxStaleness", max_staleness, 0, 100000)
        INT_KEY("MaxUpdateBytes", max_update_bytes, 1024, 1LL << 40)
        INT_KEY("LocalSteps", local_steps, 1, 1000000)
        INT_KEY("Batch", batch, 1, 4096)
        INT_KEY("ReportIntervalSec", report_interval_s, 1, 86400)
        INT_KEY("RateLimitBurst", rate_burst, 1, 1000000)
        INT_KEY("Generation", generation, 0, 9223372036854775807LL)
        DBL_KEY("MaxUpdateNorm", max_update_norm, 0.0, 1e30, "a number >= 0 (0: no bound)")
        DBL_KEY("TrimFraction", trim_fraction, 0.0, 0.49, "a fraction in [0, 0.49]")
        DBL_KEY("LR", lr, 0.0, 10.0, "a number in [0, 10]")
        INT_KEY("LRWarmupTokens", lr_warmup_tokens, 0, 1000000000000000LL)
        INT_KEY("LRHorizonTokens", lr_horizon_tokens, 1, 1000000000000000LL)
        DBL_KEY("LRMin", lr_min, 0.0, 10.0, "a number in [0, 10] (0: LR/10)")
        if (!strcmp(key, "LRSchedule")) {
                int k = agg_lr_kind_from_string(value);
                if (k < 0)
                        return bad(err, err_size, key, value, "cosine or constant");
                s->lr_schedule = (agg_lr_kind) k;
                return 0;
        }
        DBL_KEY("RoundSeconds", round_seconds, 0.0, 604800.0,
                "a number of seconds in [0, 604800] (0: off)")
        INT_KEY("LocalStepsMin", local_steps_min, 1, 1000000)
        INT_KEY("MaxLocalSteps", max_local_steps, 0, 1000000)
        DBL_KEY("WeightDecay", weight_decay, 0.0, 10.0, "a number in [0, 10]")
        DBL_KEY("RateLimitPerSec", rate_per_s, 0.001, 1e6, "a rate in [0.001, 1e6]")
        if (!strcmp(key, "TopkFraction")) {
                if (parse_d(value, 0.0, 1.0, &d) < 0 || d <= 0)
                        return bad(err, err_size, key, value, "a fraction in (0, 1]");
                s->topk_fraction = (float) d;
                return 0;
        }
        if (!strcmp(key, "ServerOptimizer")) {
                if (!strcmp(value, "fedavg"))
                        s->optimizer = AGG_OPT_FEDAVG;
                else if (!strcmp(value, "fedadam"))
                        s->optimizer = AGG_OPT_FEDADAM;
                else if (!strcmp(value, "nesterov"))
                        s->optimizer = AGG_OPT_NESTEROV;
                else
                        return bad(err, err_size, key, value, "fedavg, fedadam or nesterov");
                return 0;
        }
        if (!strcmp(agg_settings_canonical_key(key), "ServerLearningRate")) {
                if (parse_d(value, 0.0, 100.0, &d) < 0)
                        return bad(err, err_size, key, value,
                                   "a number in [0, 100] (0: the optimizer's default)");
                s->server_lr = (float) d;
                return 0;
        }
        if (!strcmp(key, "ServerMomentum")) {
                if (parse_d(value, 0.0, 1.0, &d) < 0 || d >= 1.0)
                        return bad(err, err_size, key, value, "a number in [0, 1)");
                s->server_momentum = (float) d;
                return 0;
        }
        INT_KEY("ServerMomentumPeriod", server_momentum_period, 1, 10000)
        if (!strcmp(key, "ServerAdamEpsilon")) {
                if (parse_d(value, 0.0, 1.0, &d) < 0 || d <= 0)
                        return bad(err, err_size, key, value, "a number in (0, 1]");
                s->server_adam_eps = (float) d;
                return 0;
        }
        if (!strcmp(key, "ClipUpdates")) {
                if (parse_bool(value, &s->clip_updates) < 0)
                        return bad(err, err_size, key, value, "yes or no");
                return 0;
        }
        if (!strcmp(key, "Encoding")) {
                int e = upd_encoding_from_string(value);
                if (e < 0)
                        return bad(err, err_size, key, value, "fp32, int8 or topk");
                s->encoding = (upd_encoding) e;
                return 0;
        }
        if (!strcmp(key, "ValidationFile")) {
                if (strlen(value) >= sizeof(s->validation_file) ||
                    (value[0] && value[0] != '/') || !printable(value))
                        return bad(err, err_size, key, value, "an absolute path (or empty)");
                snprintf(s->validation_file, sizeof(s->validation_file), "%s", value);
                return 0;
        }
        if (!strncmp(key, "Policy.", 7)) {
                const char *k = key + 7;
                size_t j;
                if (!policy_key_ok(k))
                        return bad(err, err_size, key, value,
                                   "for a knob name of letters and digits (Policy.MaxCores)");
                if (strlen(value) >= sizeof(s->policy_value[0]) || !printable(value))
                        return bad(err, err_size, key, value,
                                   "a printable value of at most 127 characters");
                for (j = 0; j < s->n_policy; j++)
                        if (!strcmp(s->policy_key[j], k))
                                break;
                if (!value[0]) { /* empty value: remove the knob */
                        if (j < s->n_policy) {
                                s->n_policy--;
                                memmove(s->policy_key[j], s->policy_key[j + 1],
                                        (s->n_policy - j) * sizeof(s->policy_key[0]));
                                memmove(s->policy_value[j], s->policy_value[j + 1],
                                        (s->n_policy - j) * sizeof(s->policy_value[0]));
                        }
                        return 0;
                }
                if (j == s->n_policy) {
                        if (s->n_policy == AGG_MAX_POLICY) {
                                snprintf(err, err_size, "%s: at most %d policy knobs", key,
                                         AGG_MAX_POLICY);
                                return -E2BIG;
                        }
                        s->n_policy++;
                }
                snprintf(s->policy_key[j], sizeof(s->policy_key[j]), "%s", k);
                snprintf(s->policy_value[j], sizeof(s->policy_value[j]), "%s", value);
                return 0;
        }
#undef INT_KEY
#undef DBL_KEY
        snprintf(err, err_size, "unknown setting '%s'", key);
        return -ENOKEY;
}

void agg_settings_foreach(const agg_settings *s, agg_settings_fn fn, void *userdata) {
        char b[64];

#define EMIT(k, fmt, ...)                                                                          \
        do {                                                                                       \
                snprintf(b, sizeof(b), fmt, __VA_ARGS__);                                          \
                fn(k, b, userdata);                                                                \
        } while (0)
        fn("Model", s->cfg.name, userdata);
        EMIT("Seed", "%" PRIu64, s->seed);
        EMIT("BufferSize", "%d", s->buffer_size);
        fn("ServerOptimizer",
           s->optimizer == AGG_OPT_FEDADAM    ? "fedadam"
           : s->optimizer == AGG_OPT_NESTEROV ? "nesterov"
                                              : "fedavg",
           userdata);
        EMIT("ServerLearningRate", "%g", (double) s->server_lr);
        EMIT("ServerMomentum", "%g", (double) s->server_momentum);
        EMIT("ServerMomentumPeriod", "%d", s->server_momentum_period);
        EMIT("ServerAdamEpsilon", "%g", (double) s->server_adam_eps);
        EMIT("MaxStaleness", "%d", s->max_staleness);
        EMIT("MaxUpdateBytes", "%" PRIu64, s->max_update_bytes);
        EMIT("MaxUpdateNorm", "%g", s->max_update_norm);
        fn("ClipUpdates", s->clip_updates ? "yes" : "no", userdata);
        EMIT("TrimFraction", "%g", s->trim_fraction);
        EMIT("LocalSteps", "%d", s->local_steps);
        EMIT("LR", "%g", (double) s->lr);
        fn("LRSchedule", agg_lr_kind_to_string(s->lr_schedule), userdata);
        EMIT("LRWarmupTokens", "%" PRIu64, s->lr_warmup_tokens);
        EMIT("LRHorizonTokens", "%" PRIu64, s->lr_horizon_tokens);
        EMIT("LRMin", "%g", (double) s->lr_min);
        EMIT("RoundSeconds", "%g", s->round_seconds);
        EMIT("LocalStepsMin", "%d", s->local_steps_min);
        EMIT("MaxLocalSteps", "%d", s->max_local_steps);
        EMIT("WeightDecay", "%g", (double) s->weight_decay);
        EMIT("Batch", "%d", s->batch);
        fn("Encoding", upd_encoding_to_string(s->encoding), userdata);
        EMIT("TopkFraction", "%g", (double) s->topk_fraction);
        EMIT("ReportIntervalSec", "%d", s->report_interval_s);
        fn("ValidationFile", s->validation_file, userdata);
        EMIT("RateLimitPerSec", "%g", s->rate_per_s);
        EMIT("RateLimitBurst", "%d", s->rate_burst);
        for (size_t i = 0; i < s->n_policy; i++) {
                char k[40];
                snprintf(k, sizeof(k), "Policy.%s", s->policy_key[i]);
                fn(k, s->policy_value[i], userdata);
        }
#undef EMIT
}

void agg_settings_lr_schedule(const agg_settings *s, agg_lr_schedule *ret) {
        *ret = (agg_lr_schedule){ .kind = s->lr_schedule,
                                  .lr = s->lr,
                                  .lr_min = s->lr_min,
                                  .warmup_tokens = s->lr_warmup_tokens,
                                  .horizon_tokens = s->lr_horizon_tokens };
}

void agg_settings_budget(const agg_settings *s, agg_budget_params *ret) {
        *ret = (agg_budget_params){ .round_seconds = s->round_seconds,
                                    .local_steps = s->local_steps,
                                    .min_steps = s->local_steps_min,
                                    .max_steps = s->max_local_steps };
}
