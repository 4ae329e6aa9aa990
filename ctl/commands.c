/* SPDX-License-Identifier: MIT */
/* edgectl's subcommands for the daemon's state: status, pause, resume, profile, policy,
 * stats and sample. Each parses its own arguments, makes its requests and prints. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

/* The status fields of docs/control-protocol.md, in its order: --json always carries every
 * one (null when this daemon does not report it yet), so scripts see one schema. */
static const char *const status_fields[] = {
        "version",
        "state",
        "reason",
        "paused_until",
        "cores",
        "trainer_parked",
        "profile",
        "model",
        "model_version",
        "step",
        "tokens",
        "tokens_per_s",
        "loss",
        "val_loss",
        "core_seconds_today",
        "core_seconds_total",
        "idle_pct",
        "max_temp_c",
        "on_ac",
        "battery_pct",
        "cpu_source",
        "cpu_source_why",
        "foreground_delay_ms_per_s",
        "blas_kernel",
        "data",
        "aggregator",
};

static const char *const profiles[] = { "quiet", "balanced", "performance" };

/* The positional arguments left after getopt: argv[optind..argc). */
static int n_args(int argc) {
        return argc - optind;
}

static int parse_ulong(const char *s, unsigned long min, unsigned long max, unsigned long *ret) {
        char *end;
        errno = 0;
        if (!s || *s == '-' || !*s)
                return -EINVAL;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Options for verbs that take none of their own. */
static int parse_no_options(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { CTL_GLOBAL_OPTIONS, {} };
        int opt, r;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                        return r;
        return CTL_CONTINUE;
}

static int no_extra_args(const ctl_verb *v, int argc, char **argv, int max) {
        if (n_args(argc) > max) {
                ctl_usage_error(v, "unexpected argument '%s'", argv[optind + max]);
                return CTL_EXIT_USAGE;
        }
        return CTL_CONTINUE;
}

int ctl_status(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        json_t *reply = NULL;
        char *text = NULL;
        int r;

        if ((r = parse_no_options(c, v, argc, argv)) != CTL_CONTINUE ||
            (r = no_extra_args(v, argc, argv, 0)) != CTL_CONTINUE)
                return r;
        r = ctl_call(c, json_pack("{s:s}", "cmd", "status"), &reply);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json) {
                for (size_t i = 0; i < ARRAY_SIZE(status_fields); i++)
                        if (!json_object_get(reply, status_fields[i]))
                                json_object_set_new(reply, status_fields[i], json_null());
                r = ctl_print_json(c, reply);
        } else
                r = ctl_print_text(ctl_format_status(reply, &c->style, &text), &text);
        json_decref(reply);
        return r;
}

int ctl_pause(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { { "for", required_argument, NULL, 'f' },
                                              CTL_GLOBAL_OPTIONS,
                                              {} };
        uint64_t seconds = 0;
        json_t *req, *reply = NULL;
        int opt, r;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "hf:", opts, NULL)) >= 0) {
                if (opt == 'f') {
                        if (ctl_parse_duration(optarg, &seconds) < 0 || seconds == 0) {
                                ctl_usage_error(v,
                                                "--for: '%s' is not a duration like 30s, 10m, "
                                                "2h or 1h30m",
                                                optarg);
                                return CTL_EXIT_USAGE;
                        }
                } else if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                        return r;
        }
        if ((r = no_extra_args(v, argc, argv, 0)) != CTL_CONTINUE)
                return r;
        req = seconds ? json_pack("{s:s, s:I}", "cmd", "pause", "seconds", (json_int_t) seconds)
                      : json_pack("{s:s}", "cmd", "pause");
        r = ctl_call(c, req, &reply);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json)
                r = ctl_print_json(c, reply);
        else if (seconds) {
                char d[32];
                printf("Paused for %s; training resumes by itself then, or with 'edgectl "
                       "resume'.\n",
                       ctl_format_duration(seconds, d, sizeof(d)));
        } else
                printf("Paused until 'edgectl resume'.\n");
        json_decref(reply);
        return r;
}

int ctl_resume(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        json_t *reply = NULL;
        int r;

        if ((r = parse_no_options(c, v, argc, argv)) != CTL_CONTINUE ||
            (r = no_extra_args(v, argc, argv, 0)) != CTL_CONTINUE)
                return r;
        r = ctl_call(c, json_pack("{s:s}", "cmd", "resume"), &reply);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json)
                r = ctl_print_json(c, reply);
        else
                printf("Resumed: edged trains again whenever its policy allows.\n");
        json_decref(reply);
        return r;
}

int ctl_profile(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        json_t *reply = NULL, *req;
        const char *name = NULL;
        int r;

        if ((r = parse_no_options(c, v, argc, argv)) != CTL_CONTINUE ||
            (r = no_extra_args(v, argc, argv, 1)) != CTL_CONTINUE)
                return r;
        if (n_args(argc) == 1) {
                name = argv[optind];
                bool known = false;
                for (size_t i = 0; i < ARRAY_SIZE(profiles); i++)
                        known = known || strcmp(profiles[i], name) == 0;
                if (!known) {
                        ctl_usage_error(v, "unknown profile '%s': quiet, balanced or performance",
                                        name);
                        return CTL_EXIT_USAGE;
                }
        }
        req = name ? json_pack("{s:s, s:s}", "cmd", "profile-set", "name", name)
                   : json_pack("{s:s}", "cmd", "profile");
        r = ctl_call(c, req, &reply);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json)
                r = ctl_print_json(c, reply);
        else
                printf("%s\n", json_string_value(json_object_get(reply, "profile")) ?: "-");
        json_decref(reply);
        return r;
}

static int policy_show(ctl_context *c) {
        json_t *reply = NULL;
        char *text = NULL;
        int r = ctl_call(c, json_pack("{s:s}", "cmd", "policy-get"), &reply);

        if (r != CTL_EXIT_OK)
                return r;
        r = c->json ? ctl_print_json(c, reply)
                    : ctl_print_text(ctl_format_policy(reply, &text), &text);
        json_decref(reply);
        return r;
}

/* policy set KEY=VALUE...: checks every argument's shape before sending any. */
static int policy_set(ctl_context *c, const ctl_verb *v, int n, char **args) {
        int r;

        if (n == 0) {
                ctl_usage_error(v, "policy set needs KEY=VALUE arguments");
                return CTL_EXIT_USAGE;
        }
        for (int i = 0; i < n; i++)
                if (!strchr(args[i], '=') || args[i][0] == '=') {
                        ctl_usage_error(v, "'%s' is not KEY=VALUE", args[i]);
                        return CTL_EXIT_USAGE;
                }
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *key = strndup(args[i], strcspn(args[i], "="));
                const char *value = strchr(args[i], '=') + 1;

                if (!key)
                        return CTL_EXIT_FAILURE;
                r = ctl_call(c,
                             json_pack("{s:s, s:s, s:s}", "cmd", "policy-set", "key", key, "value",
                                       value),
                             NULL);
                if (r != CTL_EXIT_OK)
                        return r;
                if (!c->json)
                        printf("%s=%s stored as a runtime override.\n", key, value);
        }
        return c->json ? policy_show(c) : CTL_EXIT_OK;
}

static int policy_reset(ctl_context *c, const ctl_verb *v, int n, char **args) {
        json_t *req;
        int r;

        if (n > 1) {
                ctl_usage_error(v, "policy reset takes at most one KEY");
                return CTL_EXIT_USAGE;
        }
        req = n ? json_pack("{s:s, s:s}", "cmd", "policy-reset", "key", args[0])
                : json_pack("{s:s}", "cmd", "policy-reset");
        r = ctl_call(c, req, NULL);
        if (r != CTL_EXIT_OK)
                return r;
        if (c->json)
                return policy_show(c);
        if (n)
                printf("%s: runtime override dropped.\n", args[0]);
        else
                printf("Every runtime override dropped (profile included).\n");
        return CTL_EXIT_OK;
}

int ctl_policy(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        const char *sub;
        int r;

        if ((r = parse_no_options(c, v, argc, argv)) != CTL_CONTINUE)
                return r;
        sub = n_args(argc) > 0 ? argv[optind] : "show";
        if (strcmp(sub, "show") == 0) {
                if ((r = no_extra_args(v, argc, argv, 1)) != CTL_CONTINUE)
                        return r;
                return policy_show(c);
        }
        if (strcmp(sub, "set") == 0)
                return policy_set(c, v, n_args(argc) - 1, argv + optind + 1);
        if (strcmp(sub, "reset") == 0)
                return policy_reset(c, v, n_args(argc) - 1, argv + optind + 1);
        ctl_usage_error(v, "unknown policy command '%s': show, set or reset", sub);
        return CTL_EXIT_USAGE;
}

int ctl_stats(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { { "since", required_argument, NULL, 's' },
                                              CTL_GLOBAL_OPTIONS,
                                              {} };
        json_t *req, *reply = NULL;
        bool have_since = false;
        time_t since = 0;
        char *text = NULL;
        int opt, r;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "hs:", opts, NULL)) >= 0) {
                if (opt == 's') {
                        if (ctl_parse_since(optarg, time(NULL), &since) < 0) {
                                ctl_usage_error(v,
                                                "--since: '%s' is not a Unix time, a duration "
                                                "ago like -1h, or 'today'",
                                                optarg);
                                return CTL_EXIT_USAGE;
                        }
                        have_since = true;
                } else if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                        return r;
        }
        if ((r = no_extra_args(v, argc, argv, 0)) != CTL_CONTINUE)
                return r;
        req = have_since ? json_pack("{s:s, s:I}", "cmd", "stats", "since", (json_int_t) since)
                         : json_pack("{s:s}", "cmd", "stats");
        r = ctl_call(c, req, &reply);
        if (r != CTL_EXIT_OK)
                return r;
        r = c->json ? ctl_print_json(c, reply)
                    : ctl_print_text(ctl_format_stats(reply, &c->style, &text), &text);
        json_decref(reply);
        return r;
}

int ctl_sample(ctl_context *c, const ctl_verb *v, int argc, char **argv) {
        static const struct option opts[] = { { "tokens", required_argument, NULL, 'n' },
                                              { "temperature", required_argument, NULL, 't' },
                                              { "seed", required_argument, NULL, 's' },
                                              { "quant", required_argument, NULL, 'q' },
                                              CTL_GLOBAL_OPTIONS,
                                              {} };
        unsigned long tokens = 200, seed = 0;
        double temperature = 0.8;
        bool have_seed = false;
        json_t *req, *reply = NULL;
        const char *text, *quant = NULL;
        int opt, r;

        optind = 0;
        while ((opt = getopt_long(argc, argv, "hn:t:s:", opts, NULL)) >= 0) {
                char *end;
                switch (opt) {
                case 'n':
                        if (parse_ulong(optarg, 1, 1024, &tokens) < 0) {
                                ctl_usage_error(v,
                                                "--tokens: '%s' is not a whole number in "
                                                "1..1024",
                                                optarg);
                                return CTL_EXIT_USAGE;
                        }
                        break;
                case 't':
                        errno = 0;
                        temperature = strtod(optarg, &end);
                        if (errno || end == optarg || *end || !(temperature >= 0) ||
                            temperature > 2) {
                                ctl_usage_error(v, "--temperature: '%s' is not a number in 0..2",
                                                optarg);
                                return CTL_EXIT_USAGE;
                        }
                        break;
                case 's':
                        if (parse_ulong(optarg, 0, UINT32_MAX, &seed) < 0) {
                                ctl_usage_error(v, "--seed: '%s' is not a whole number", optarg);
                                return CTL_EXIT_USAGE;
                        }
                        have_seed = true;
                        break;
                case 'q':
                        if (strcmp(optarg, "int8") != 0 && strcmp(optarg, "int4") != 0) {
                                ctl_usage_error(v, "--quant: '%s' is not int8 or int4", optarg);
                                return CTL_EXIT_USAGE;
                        }
                        quant = optarg;
                        break;
                default:
                        if ((r = ctl_global_option(c, v, opt, optarg)) != CTL_CONTINUE)
                                return r;
                }
        }
        if (n_args(argc) == 0) {
                ctl_usage_error(v, "missing PROMPT (\"\" for none)");
                return CTL_EXIT_USAGE;
        }
        if ((r = no_extra_args(v, argc, argv, 1)) != CTL_CONTINUE)
                return r;
        req = json_pack("{s:s, s:s, s:I, s:f}", "cmd", "sample", "prompt", argv[optind], "tokens",
                        (json_int_t) tokens, "temperature", temperature);
        if (req && have_seed)
                json_object_set_new(req, "seed", json_integer((json_int_t) seed));
        if (req && quant)
                json_object_set_new(req, "quant", json_string(quant));
        r = ctl_call(c, req, &reply);
        if (r != CTL_EXIT_OK)
                return r;
        text = json_string_value(json_object_get(reply, "text"));
        if (c->json)
                r = ctl_print_json(c, reply);
        else if (!text) {
                fprintf(stderr, "edgectl: the reply carries no \"text\"\n");
                r = CTL_EXIT_FAILURE;
        } else
                printf("%s%s", text, *text && text[strlen(text) - 1] == '\n' ? "" : "\n");
        json_decref(reply);
        return r;
}
