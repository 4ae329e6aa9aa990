/* SPDX-License-Identifier: MIT */
/* edged: the command line. The policy-driven service mode arrives with the daemon loop;
 * today it trains in the foreground and samples from checkpoints. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "checkpoint.h"
#include "distill.h"
#include "log.h"
#include "manager.h"
#include "macros.h"
#include "model.h"
#include "quant-sample.h"
#include "quantize.h"
#include "sample.h"
#include "sense.h"
#include "train.h"

#include "version.h"

static void usage(FILE *f) {
        fprintf(f,
                "Usage: edged [OPTIONS]\n"
                "       edged COMMAND [OPTIONS]\n"
                "\n"
                "Trains a small byte-level language model in a machine's spare CPU time.\n"
                "Without a command it runs the service: samples the machine every second and\n"
                "trains only while the policy allows (idle, cool, on mains power).\n"
                "\n"
                "  --foreground        accepted for compatibility: edged never forks\n"
                "  --config FILE       instead of /etc/edged/edged.conf (drop-ins still apply)\n"
                "  --root DIR          read sysfs, procfs and the standard paths below DIR\n"
                "  --state-dir DIR     checkpoints and runtime overrides (default StateDirectory=)\n"
                "  --control PATH      control socket (default /run/edged/control)\n"
                "  --run-seconds N     stop after N seconds (demos, tests)\n"
                "  --progress          print the status every second\n"
                "\n"
                "Commands:\n"
                "  train    train in the foreground on local files (resumes from --checkpoint)\n"
                "  sample   generate text from a checkpoint or a quantized model\n"
                "  quantize write an int8 or int4 copy of a checkpoint for generation\n"
                "  distill  train a small student on a trained teacher's predictions\n"
                "  sense    print what edged's sensors see (CPU use, temperature, power)\n"
                "\n"
                "Run 'edged COMMAND --help' for a command's options.\n"
                "  -h, --help       show this help\n"
                "  -V, --version    show the version\n");
}

static void usage_train(FILE *f) {
        fprintf(f,
                "Usage: edged train --data PATH [--data PATH...] [OPTIONS]\n"
                "\n"
                "Trains without any idleness policy, showing progress, and resumes from\n"
                "--checkpoint when it exists. Ctrl-C saves the checkpoint and stops.\n"
                "\n"
                "  --data PATH            file or directory of training text (repeatable)\n"
                "  --config NAME          tiny, small (default) or medium\n"
                "  --steps N              total optimizer steps to reach (default 1000)\n"
                "  --checkpoint FILE      safetensors checkpoint to resume from and save to\n"
                "  --checkpoint-every N   also save every N steps (default 200; 0 = at the end)\n"
                "  --batch B              sequences per micro-batch (default 8)\n"
                "  --seq T                sequence length (default: the model's block size)\n"
                "  --accum N              micro-batches per optimizer step (default 1)\n"
                "  --lr LR                peak learning rate (default 1e-3)\n"
                "  --lr-min LR            final learning rate of the cosine schedule (default "
                "1e-4)\n"
                "  --warmup N             warmup steps (default 50)\n"
                "  --eval-every N         held-out loss every N steps (default: at the end)\n"
                "  --threads N            BLAS threads (default: all CPUs)\n"
                "  --seed N               initialisation and data order (default 1)\n"
                "  --sample-tokens N      bytes of sample text printed at the end (default 200)\n"
                "  --progress=auto|line|log  progress display (default auto: a line on a TTY)\n");
}

static void usage_sense(FILE *f) {
        fprintf(f,
                "Usage: edged sense [OPTIONS]\n"
                "\n"
                "Prints a sensor sample every interval: CPU time by class (idle, foreground,\n"
                "harvester) from the eBPF monitor or /proc, the hottest counted thermal zone,\n"
                "AC and battery, pressure (PSI), free memory and load. Attach its output to\n"
                "bug reports.\n"
                "\n"
                "  --interval MS   time between samples (default 1000)\n"
                "  --count N       stop after N samples (default: until Ctrl-C)\n"
                "  --json          one JSON object per line\n"
                "  --root DIR      read sysfs and procfs below DIR (for fixture trees)\n"
                "  --no-bpf        use /proc/stat even where the eBPF monitor would load\n");
}

static void usage_sample(FILE *f) {
        fprintf(f,
                "Usage: edged sample --checkpoint FILE [OPTIONS] [PROMPT]\n"
                "\n"
                "  --checkpoint FILE   model to sample from: a training checkpoint, or a file\n"
                "                      written by 'edged quantize' (recognised by its metadata)\n"
                "  --tokens N          bytes to generate (default 200)\n"
                "  --temperature T     0 = greedy (default 0.8)\n"
                "  --top-k K           sample among the K likeliest bytes (default 40; 0 = all)\n"
                "  --seed N            random seed (default 1)\n");
}

static void usage_quantize(FILE *f) {
        fprintf(f,
                "Usage: edged quantize IN OUT --bits 8|4 [--embed-bits 32|8|4]\n"
                "\n"
                "Writes the checkpoint IN's weights to OUT quantized for generation ('edged\n"
                "sample --checkpoint OUT'): int8 with a scale per row, or int4 in groups of 32\n"
                "with a 16-bit scale per group. LayerNorm weights and biases stay float.\n"
                "\n"
                "  --bits N         8 or 4: the layer matrices\n"
                "  --embed-bits N   32, 8 or 4: the token and position embeddings (default: --bits)\n");
}

static void usage_distill(FILE *f) {
        fprintf(f,
                "Usage: edged distill --teacher CKPT --data PATH [OPTIONS]\n"
                "\n"
                "Trains a student model on a trained teacher's soft predictions (KL divergence\n"
                "at a temperature) mixed with the ordinary next-byte loss, in the foreground,\n"
                "in idle cycles only (SCHED_IDLE, like the service's trainer).\n"
                "Resumes from --checkpoint when it exists; Ctrl-C saves and stops.\n"
                "\n"
                "  --teacher FILE         the teacher's checkpoint\n"
                "  --student-config NAME  tiny (default), small or medium\n"
                "  --data PATH            file or directory of training text (repeatable)\n"
                "  --checkpoint FILE      the student's checkpoint, resumed from and saved to\n"
                "  --steps N              total optimizer steps (default 1000)\n"
                "  --temperature T        softening of both distributions (default 2)\n"
                "  --alpha A              weight of the next-byte loss, 1 - A of the teacher's\n"
                "                         (default 0.5)\n"
                "  --batch B              sequences per batch (default 8)\n"
                "  --seq T                sequence length (default: the smaller block size)\n"
                "  --lr LR, --lr-min LR, --warmup N   schedule (default 1e-3, 1e-4, 50)\n"
                "  --eval-every N         held-out KL every N steps (default: start and end)\n"
                "  --threads N            BLAS threads (default: all CPUs)\n"
                "  --seed N               student initialisation and data order (default 1)\n"
                "  --normal-priority      compete for the CPU like any program (no SCHED_IDLE)\n");
}

/* Parses a whole decimal number in [min, max]; names the option on error. */
static int parse_long(const char *opt, const char *s, long min, long max, long *ret) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max) {
                log_error("%s: '%s' is not a whole number in [%ld, %ld]", opt, s, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_int(const char *opt, const char *s, int min, int max, int *ret) {
        long v = 0;
        int r = parse_long(opt, s, min, max, &v);
        if (r >= 0)
                *ret = (int) v;
        return r;
}

static int parse_float(const char *opt, const char *s, float min, float max, float *ret) {
        char *end;
        errno = 0;
        float v = strtof(s, &end);
        if (errno || end == s || *end || !(v >= min && v <= max)) {
                log_error("%s: '%s' is not a number in [%g, %g]", opt, s, (double) min,
                          (double) max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

enum {
        OPT_DATA = 0x100,
        OPT_CONFIG,
        OPT_STEPS,
        OPT_CHECKPOINT,
        OPT_CHECKPOINT_EVERY,
        OPT_BATCH,
        OPT_SEQ,
        OPT_ACCUM,
        OPT_LR,
        OPT_LR_MIN,
        OPT_WARMUP,
        OPT_EVAL_EVERY,
        OPT_THREADS,
        OPT_SEED,
        OPT_SAMPLE_TOKENS,
        OPT_PROGRESS,
        OPT_TOKENS,
        OPT_TEMPERATURE,
        OPT_TOP_K,
        OPT_ROOT,
        OPT_INTERVAL,
        OPT_COUNT,
        OPT_JSON,
        OPT_NO_BPF,
        OPT_FOREGROUND,
        OPT_CONFIG_FILE,
        OPT_STATE_DIR,
        OPT_CONTROL,
        OPT_RUN_SECONDS,
        OPT_PROGRESS_LINES,
        OPT_BITS,
        OPT_EMBED_BITS,
        OPT_TEACHER,
        OPT_STUDENT_CONFIG,
        OPT_ALPHA,
        OPT_NORMAL_PRIORITY,
};

static int cmd_train(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "data", required_argument, NULL, OPT_DATA },
                { "config", required_argument, NULL, OPT_CONFIG },
                { "steps", required_argument, NULL, OPT_STEPS },
                { "checkpoint", required_argument, NULL, OPT_CHECKPOINT },
                { "checkpoint-every", required_argument, NULL, OPT_CHECKPOINT_EVERY },
                { "batch", required_argument, NULL, OPT_BATCH },
                { "seq", required_argument, NULL, OPT_SEQ },
                { "accum", required_argument, NULL, OPT_ACCUM },
                { "lr", required_argument, NULL, OPT_LR },
                { "lr-min", required_argument, NULL, OPT_LR_MIN },
                { "warmup", required_argument, NULL, OPT_WARMUP },
                { "eval-every", required_argument, NULL, OPT_EVAL_EVERY },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "seed", required_argument, NULL, OPT_SEED },
                { "sample-tokens", required_argument, NULL, OPT_SAMPLE_TOKENS },
                { "progress", required_argument, NULL, OPT_PROGRESS },
                {}
        };
        _cleanup_free_ char **data = calloc((size_t) argc, sizeof(char *));
        trainer_opts o;
        long v = 0;
        int c, r = 0;

        if (!data)
                return log_error_errno(ENOMEM, "out of memory");
        trainer_opts_default(&o);
        o.data_paths = data;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage_train(stdout);
                        return 0;
                case OPT_DATA:
                        data[o.n_data_paths++] = optarg;
                        break;
                case OPT_CONFIG:
                        o.config = optarg;
                        break;
                case OPT_CHECKPOINT:
                        o.checkpoint = optarg;
                        break;
                case OPT_STEPS:
                        r = parse_long("--steps", optarg, 0, LONG_MAX / 2, &o.steps);
                        break;
                case OPT_CHECKPOINT_EVERY:
                        r = parse_long("--checkpoint-every", optarg, 0, LONG_MAX,
                                       &o.checkpoint_every);
                        break;
                case OPT_WARMUP:
                        r = parse_long("--warmup", optarg, 0, LONG_MAX / 2, &o.warmup);
                        break;
                case OPT_EVAL_EVERY:
                        r = parse_long("--eval-every", optarg, 0, LONG_MAX, &o.eval_every);
                        break;
                case OPT_BATCH:
                        r = parse_int("--batch", optarg, 1, 4096, &o.batch);
                        break;
                case OPT_SEQ:
                        r = parse_int("--seq", optarg, 1, 8192, &o.seq);
                        break;
                case OPT_ACCUM:
                        r = parse_int("--accum", optarg, 1, 4096, &o.accum);
                        break;
                case OPT_THREADS:
                        r = parse_int("--threads", optarg, 0, 1024, &o.threads);
                        break;
                case OPT_SEED:
                        r = parse_long("--seed", optarg, 0, LONG_MAX, &v);
                        o.seed = (uint64_t) v;
                        break;
                case OPT_SAMPLE_TOKENS:
                        r = parse_int("--sample-tokens", optarg, 0, 1 << 20, &o.sample_tokens);
                        break;
                case OPT_LR:
                        r = parse_float("--lr", optarg, 0.0f, 10.0f, &o.lr);
                        break;
                case OPT_LR_MIN:
                        r = parse_float("--lr-min", optarg, 0.0f, 10.0f, &o.lr_min);
                        break;
                case OPT_PROGRESS:
                        if (strcmp(optarg, "auto") == 0)
                                o.progress = -1;
                        else if (strcmp(optarg, "log") == 0)
                                o.progress = 0;
                        else if (strcmp(optarg, "line") == 0)
                                o.progress = 1;
                        else {
                                log_error("--progress: '%s' is not auto, line or log", optarg);
                                r = -EINVAL;
                        }
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (optind < argc) {
                log_error("edged train: unexpected argument '%s' (data paths go after --data)",
                          argv[optind]);
                return 2;
        }
        if (o.n_data_paths == 0) {
                log_error("edged train: --data PATH is required (e.g. --data "
                          "/usr/share/common-licenses)");
                return 2;
        }
        if (o.warmup > o.steps)
                o.warmup = o.steps;
        return trainer_run(&o) < 0 ? 1 : 0;
}

static int cmd_sample(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "checkpoint", required_argument, NULL, OPT_CHECKPOINT },
                { "tokens", required_argument, NULL, OPT_TOKENS },
                { "temperature", required_argument, NULL, OPT_TEMPERATURE },
                { "top-k", required_argument, NULL, OPT_TOP_K },
                { "seed", required_argument, NULL, OPT_SEED },
                {}
        };
        sample_opts so = { .temperature = 0.8f, .top_k = 40, .seed = 1 };
        const char *path = NULL, *prompt = "";
        long n_tokens = 200, v = 0;
        model_config cfg;
        model *m = NULL;
        quant_model *qm = NULL;
        sampler *s = NULL;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage_sample(stdout);
                        return 0;
                case OPT_CHECKPOINT:
                        path = optarg;
                        break;
                case OPT_TOKENS:
                        r = parse_long("--tokens", optarg, 1, 1 << 20, &n_tokens);
                        break;
                case OPT_TEMPERATURE:
                        r = parse_float("--temperature", optarg, 0.0f, 100.0f, &so.temperature);
                        break;
                case OPT_TOP_K:
                        r = parse_int("--top-k", optarg, 0, MODEL_VOCAB, &so.top_k);
                        break;
                case OPT_SEED:
                        r = parse_long("--seed", optarg, 0, LONG_MAX, &v);
                        so.seed = (uint64_t) v;
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (!path) {
                log_error("edged sample: --checkpoint FILE is required");
                return 2;
        }
        if (optind < argc)
                prompt = argv[optind++];
        if (optind < argc) {
                log_error("edged sample: one PROMPT only (quote it)");
                return 2;
        }
        /* a file written by 'edged quantize' says so in its metadata */
        r = quant_file_detect(path);
        if (r < 0)
                return 1;
        if (r > 0) {
                if (quant_load(path, &qm) < 0 || quant_sampler_new(qm, &s) < 0) {
                        quant_model_free(qm);
                        return 1;
                }
                cfg = qm->layout.cfg;
        } else {
                if (ckpt_read_config(path, &cfg) < 0)
                        return 1;
                blas_set_threads(1);
                if (model_new(&cfg, 1, 1, &m) < 0 || ckpt_load(path, m, NULL, NULL) < 0 ||
                    sampler_new(m, &s) < 0) {
                        model_free(m);
                        return 1;
                }
        }
        r = 0;
        _cleanup_free_ uint8_t *out = malloc((size_t) n_tokens);
        size_t plen = strlen(prompt);
        if (plen >= (size_t) cfg.block_size) {
                log_error("edged sample: the prompt is longer than the model's %d-byte window",
                          cfg.block_size);
                r = -EINVAL;
        } else if (out) {
                r = sample_generate(s, (const uint8_t *) prompt, plen, out, (size_t) n_tokens, &so);
                if (r >= 0) {
                        fwrite(prompt, 1, plen, stdout);
                        fwrite(out, 1, (size_t) r, stdout);
                        putchar('\n');
                }
        }
        sampler_free(s);
        model_free(m);
        quant_model_free(qm);
        return r < 0 ? 1 : 0;
}

static int cmd_quantize(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "bits", required_argument, NULL, OPT_BITS },
                { "embed-bits", required_argument, NULL, OPT_EMBED_BITS },
                {}
        };
        quantize_opts o = { 0 };
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage_quantize(stdout);
                        return 0;
                case OPT_BITS:
                        r = parse_int("--bits", optarg, 4, 8, &o.bits);
                        if (r >= 0 && o.bits != 8 && o.bits != 4) {
                                log_error("--bits: '%s' is not 8 or 4", optarg);
                                r = -EINVAL;
                        }
                        break;
                case OPT_EMBED_BITS:
                        r = parse_int("--embed-bits", optarg, 4, 32, &o.embed_bits);
                        if (r >= 0 && o.embed_bits != 32 && o.embed_bits != 8 && o.embed_bits != 4) {
                                log_error("--embed-bits: '%s' is not 32, 8 or 4", optarg);
                                r = -EINVAL;
                        }
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (argc - optind != 2) {
                log_error("edged quantize: expected IN and OUT files; see 'edged quantize --help'");
                return 2;
        }
        if (o.bits == 0) {
                log_error("edged quantize: --bits 8 or --bits 4 is required");
                return 2;
        }
        o.input = argv[optind];
        o.output = argv[optind + 1];
        return quantize_run(&o) < 0 ? 1 : 0;
}

static int cmd_distill(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "teacher", required_argument, NULL, OPT_TEACHER },
                { "student-config", required_argument, NULL, OPT_STUDENT_CONFIG },
                { "data", required_argument, NULL, OPT_DATA },
                { "checkpoint", required_argument, NULL, OPT_CHECKPOINT },
                { "steps", required_argument, NULL, OPT_STEPS },
                { "temperature", required_argument, NULL, OPT_TEMPERATURE },
                { "alpha", required_argument, NULL, OPT_ALPHA },
                { "batch", required_argument, NULL, OPT_BATCH },
                { "seq", required_argument, NULL, OPT_SEQ },
                { "lr", required_argument, NULL, OPT_LR },
                { "lr-min", required_argument, NULL, OPT_LR_MIN },
                { "warmup", required_argument, NULL, OPT_WARMUP },
                { "eval-every", required_argument, NULL, OPT_EVAL_EVERY },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "seed", required_argument, NULL, OPT_SEED },
                { "normal-priority", no_argument, NULL, OPT_NORMAL_PRIORITY },
                {}
        };
        _cleanup_free_ char **data = calloc((size_t) argc, sizeof(char *));
        distill_opts o;
        long v = 0;
        int c, r = 0;

        if (!data)
                return log_error_errno(ENOMEM, "out of memory");
        distill_opts_default(&o);
        o.data_paths = data;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage_distill(stdout);
                        return 0;
                case OPT_TEACHER:
                        o.teacher = optarg;
                        break;
                case OPT_STUDENT_CONFIG:
                        o.student_config = optarg;
                        break;
                case OPT_DATA:
                        data[o.n_data_paths++] = optarg;
                        break;
                case OPT_CHECKPOINT:
                        o.checkpoint = optarg;
                        break;
                case OPT_STEPS:
                        r = parse_long("--steps", optarg, 0, LONG_MAX / 2, &o.steps);
                        break;
                case OPT_TEMPERATURE:
                        r = parse_float("--temperature", optarg, 0.05f, 100.0f, &o.temperature);
                        break;
                case OPT_ALPHA:
                        r = parse_float("--alpha", optarg, 0.0f, 1.0f, &o.alpha);
                        break;
                case OPT_BATCH:
                        r = parse_int("--batch", optarg, 1, 4096, &o.batch);
                        break;
                case OPT_SEQ:
                        r = parse_int("--seq", optarg, 1, 8192, &o.seq);
                        break;
                case OPT_LR:
                        r = parse_float("--lr", optarg, 0.0f, 10.0f, &o.lr);
                        break;
                case OPT_LR_MIN:
                        r = parse_float("--lr-min", optarg, 0.0f, 10.0f, &o.lr_min);
                        break;
                case OPT_WARMUP:
                        r = parse_long("--warmup", optarg, 0, LONG_MAX / 2, &o.warmup);
                        break;
                case OPT_EVAL_EVERY:
                        r = parse_long("--eval-every", optarg, 0, LONG_MAX, &o.eval_every);
                        break;
                case OPT_THREADS:
                        r = parse_int("--threads", optarg, 0, 1024, &o.threads);
                        break;
                case OPT_SEED:
                        r = parse_long("--seed", optarg, 0, LONG_MAX, &v);
                        o.seed = (uint64_t) v;
                        break;
                case OPT_NORMAL_PRIORITY:
                        o.normal_priority = true;
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (optind < argc) {
                log_error("edged distill: unexpected argument '%s'", argv[optind]);
                return 2;
        }
        if (!o.teacher || o.n_data_paths == 0) {
                log_error("edged distill: --teacher CKPT and --data PATH are required");
                return 2;
        }
        return distill_run(&o) < 0 ? 1 : 0;
}

static int cmd_sense(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "root", required_argument, NULL, OPT_ROOT },
                { "interval", required_argument, NULL, OPT_INTERVAL },
                { "count", required_argument, NULL, OPT_COUNT },
                { "json", no_argument, NULL, OPT_JSON },
                { "no-bpf", no_argument, NULL, OPT_NO_BPF },
                {}
        };
        sense_opts o = { .root = "/", .interval_ms = 1000 };
        long v = 0;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage_sense(stdout);
                        return 0;
                case OPT_ROOT:
                        o.root = optarg;
                        break;
                case OPT_INTERVAL:
                        r = parse_long("--interval", optarg, 10, 3600 * 1000, &v);
                        o.interval_ms = (unsigned) v;
                        break;
                case OPT_COUNT:
                        r = parse_long("--count", optarg, 0, LONG_MAX, &o.count);
                        break;
                case OPT_JSON:
                        o.json = true;
                        break;
                case OPT_NO_BPF:
                        o.no_bpf = true;
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (optind < argc) {
                log_error("edged sense: unexpected argument '%s'", argv[optind]);
                return 2;
        }
        return sense_run(&o) < 0 ? 1 : 0;
}

static int cmd_daemon(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "foreground", no_argument, NULL, OPT_FOREGROUND },
                { "config", required_argument, NULL, OPT_CONFIG_FILE },
                { "root", required_argument, NULL, OPT_ROOT },
                { "state-dir", required_argument, NULL, OPT_STATE_DIR },
                { "control", required_argument, NULL, OPT_CONTROL },
                { "run-seconds", required_argument, NULL, OPT_RUN_SECONDS },
                { "progress", no_argument, NULL, OPT_PROGRESS_LINES },
                {}
        };
        manager_opts o = { .root = "/" };
        long v = 0;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage(stdout);
                        return 0;
                case OPT_FOREGROUND:
                        break;
                case OPT_CONFIG_FILE:
                        o.config_file = optarg;
                        break;
                case OPT_ROOT:
                        o.root = optarg;
                        break;
                case OPT_STATE_DIR:
                        o.state_dir = optarg;
                        break;
                case OPT_CONTROL:
                        o.control_path = optarg;
                        break;
                case OPT_RUN_SECONDS:
                        r = parse_long("--run-seconds", optarg, 1, 365L * 86400, &v);
                        o.run_seconds = (double) v;
                        break;
                case OPT_PROGRESS_LINES:
                        o.progress = true;
                        break;
                default:
                        return 2;
                }
                if (r < 0)
                        return 2;
        }
        if (optind < argc) {
                log_error("edged: unknown command '%s'; see 'edged --help'", argv[optind]);
                return 2;
        }
        blas_choose_kernel(argv);
        return manager_run(&o) < 0 ? 1 : 0;
}

int main(int argc, char **argv) {
        log_open();
        if (argc < 2 || (argv[1][0] == '-' && strcmp(argv[1], "-h") != 0 &&
                         strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-V") != 0 &&
                         strcmp(argv[1], "--version") != 0))
                return cmd_daemon(argc, argv);
        if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
                usage(stdout);
                return 0;
        }
        if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
                printf("edged %s\n", EDGED_VERSION);
                return 0;
        }
        if (strcmp(argv[1], "train") == 0) {
                blas_choose_kernel(argv);
                return cmd_train(argc - 1, argv + 1);
        }
        if (strcmp(argv[1], "sample") == 0)
                return cmd_sample(argc - 1, argv + 1);
        if (strcmp(argv[1], "sense") == 0)
                return cmd_sense(argc - 1, argv + 1);
        if (strcmp(argv[1], "quantize") == 0)
                return cmd_quantize(argc - 1, argv + 1);
        if (strcmp(argv[1], "distill") == 0) {
                blas_choose_kernel(argv);
                return cmd_distill(argc - 1, argv + 1);
        }
        log_error("edged: unknown command '%s'; see 'edged --help'", argv[1]);
        return 2;
}
