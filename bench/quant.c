/* SPDX-License-Identifier: MIT */
/* Quantized inference and distillation benchmark.
 *
 * On a checkpoint trained on tinyshakespeare (given with --checkpoint, or trained here with
 * the foreground trainer's step for a bounded time), in one run: held-out loss in bits per
 * byte of fp32, int8 and int4; bytes of weights; generation tokens/s at one thread. Every
 * loss comes from the generation path itself (KV cache, one position at a time), so the
 * quantized losses are those of the arithmetic that generates. Then a tiny student distilled
 * from the checkpoint against a tiny trained from scratch on the same batches: held-out
 * KL(teacher || student). Generation speeds are the best of rounds that take turns, by the
 * wall clock (the verdict) and by the thread's CPU time (for a busy machine). Targets
 * (PASS/MISS): int8 loss within 1 % of fp32 and >= 2x the fp32 generator's tokens/s; int4
 * loss within 3 % at >= 6x fewer weight bytes; the distilled student closer to the teacher
 * than the scratch one. */

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adamw.h"
#include "batch-source.h"
#include "blas.h"
#include "checkpoint.h"
#include "corpus.h"
#include "distill.h"
#include "macros.h"
#include "model.h"
#include "quant-sample.h"
#include "time-util.h"
#include "train-step.h"

#define DATA "/work/shared/data/tinyshakespeare.txt"
#define B 8

typedef struct {
        const char *checkpoint, *data;
        bool quick;
        double train_seconds;
        int windows, distill_steps;
} bench_opts;

static int train_teacher(const bench_opts *o, const char *path, const batch_source *src) {
        model_config cfg;
        model *m;
        adamw_state opt;
        adamw_hparams hp;
        ckpt_state cs;
        float loss = NAN;
        int T, r;

        model_config_by_name("tiny", &cfg);
        T = cfg.block_size;
        _cleanup_free_ uint8_t *tok = malloc(B * T), *tgt = malloc(B * T);
        if ((r = model_new(&cfg, B, T, &m)) < 0)
                return r;
        adamw_hparams_default(&hp);
        if ((r = adamw_new(m->layout.n_params, &hp, &opt)) < 0)
                return r;
        trainer_fresh(m, 1, &cs);
        /* the schedule assumes about 30 ms a step; the clock stops training either way */
        long steps = (long) (o->train_seconds / 0.03);
        lr_schedule sched = { .lr_max = 2e-3f, .lr_min = 1e-4f, .warmup_steps = 50,
                              .total_steps = steps };
        double t0 = mono_now_s();
        while (cs.step < steps && mono_now_s() - t0 < o->train_seconds) {
                r = trainer_step(m, &opt, src, B, T, 1, lr_at(&sched, cs.step), tok, tgt, &cs,
                                 &loss, NULL, NULL);
                if (r < 0)
                        return r;
        }
        printf("teacher: tiny trained %ld steps in %.0f s (training loss %.3f), saved to %s\n",
               cs.step, mono_now_s() - t0, (double) loss, path);
        r = ckpt_save(path, m, &opt, &cs);
        model_free(m);
        adamw_free(&opt);
        return r;
}

/* Mean held-out loss in bits per byte through the sampler, over o->windows windows. */
static double window_bpb(sampler *s, const corpus *c, int T, int n) {
        _cleanup_free_ uint8_t *tok = malloc(T), *tgt = malloc(T);
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
                corpus_val_batch(c, (size_t) i, 1, T, tok, tgt);
                if (sampler_window_loss(s, tok, tgt, T, &sum) < 0)
                        return NAN;
        }
        return sum / ((double) n * T) / log(2.0);
}

static double thread_cpu_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* Generation speed of n samplers, in rounds that take turns (so that a burst of other load
 * hits all of them alike), each round 5 generations of block_size - 8 bytes per sampler; the
 * best round of each, by the wall clock and by the thread's CPU time (what the machine's
 * other work does not inflate). */
static void gen_speeds(sampler *const *s, int n, int T, int rounds, double *wall, double *cpu) {
        _cleanup_free_ uint8_t *out = malloc(T);
        sample_opts so = { .temperature = 0.8f, .top_k = 40, .seed = 1 };

        for (int k = 0; k < n; k++)
                wall[k] = cpu[k] = 0.0;
        for (int rep = 0; rep < rounds; rep++)
                for (int k = 0; k < n; k++) {
                        double t0 = mono_now_s(), c0 = thread_cpu_s();
                        long tokens = 0;
                        for (int g = 0; g < 5; g++)
                                tokens += sample_generate(s[k], (const uint8_t *) "ROMEO:", 6, out,
                                                          (size_t) T - 8, &so);
                        wall[k] = fmax(wall[k], tokens / (mono_now_s() - t0));
                        cpu[k] = fmax(cpu[k], tokens / (thread_cpu_s() - c0));
                }
}

static const char *verdict(bool ok) {
        return ok ? "PASS" : "MISS";
}

/* Students of config tiny from the same seed on the same batches: alpha 0 at temperature 1
 * (distilled) or alpha 1 (from scratch). Returns the held-out KL to the teacher. */
static double student_kl(model *teacher, const batch_source *src, int steps, float alpha,
                         double *ret_ce) {
        model_config cfg;
        model *s;
        adamw_state opt;
        adamw_hparams hp;
        ckpt_state cs;
        int T = 128;
        double kl = NAN, loss;

        model_config_by_name("tiny", &cfg);
        T = teacher->layout.cfg.block_size < T ? teacher->layout.cfg.block_size : T;
        _cleanup_free_ uint8_t *tok = malloc(B * T), *tgt = malloc(B * T);
        _cleanup_free_ float *scratch = malloc(sizeof(float) * B * T * MODEL_VOCAB);
        if (model_new(&cfg, B, T, &s) < 0)
                return NAN;
        adamw_hparams_default(&hp);
        adamw_new(s->layout.n_params, &hp, &opt);
        trainer_fresh(s, 7, &cs);
        lr_schedule sched = { .lr_max = 2e-3f, .lr_min = 1e-4f, .warmup_steps = 20,
                              .total_steps = steps };
        for (int step = 0; step < steps; step++) {
                rng_t cursor = { .state = cs.data_cursor };
                if (src->train(src->ctx, &cursor, B, T, tok, tgt, NULL) < 0)
                        goto out;
                cs.data_cursor = cursor.state;
                model_zero_grad(s);
                if (distill_grad(s, teacher, tok, tgt, B, T, 1.0f, alpha, 1.0f, scratch, &loss) < 0)
                        goto out;
                adamw_step(&opt, &s->layout, s->params, s->grads, lr_at(&sched, step));
        }
        distill_eval(s, teacher, src, B, T, 8, tok, tgt, &kl, ret_ce);
out:
        model_free(s);
        adamw_free(&opt);
        return kl;
}

int main(int argc, char **argv) {
        enum { OPT_CKPT = 256, OPT_QUICK, OPT_SECONDS, OPT_WINDOWS, OPT_DSTEPS };
        static const struct option longopts[] = {
                { "checkpoint", required_argument, NULL, OPT_CKPT },
                { "quick", no_argument, NULL, OPT_QUICK },
                { "train-seconds", required_argument, NULL, OPT_SECONDS },
                { "windows", required_argument, NULL, OPT_WINDOWS },
                { "distill-steps", required_argument, NULL, OPT_DSTEPS },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        bench_opts o = { .data = DATA };
        double seconds = 0;
        int c, windows = 0, dsteps = 0;

        blas_choose_kernel(argv);
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_CKPT:
                        o.checkpoint = optarg;
                        break;
                case OPT_QUICK:
                        o.quick = true;
                        break;
                case OPT_SECONDS:
                        seconds = atof(optarg);
                        break;
                case OPT_WINDOWS:
                        windows = atoi(optarg);
                        break;
                case OPT_DSTEPS:
                        dsteps = atoi(optarg);
                        break;
                case 'h':
                        printf("Usage: quant [--checkpoint FILE] [--quick] [--train-seconds S] "
                               "[--windows N] [--distill-steps N]\n"
                               "Without --checkpoint, trains a tiny model on %s first\n"
                               "(120 s; --quick: 25 s and fewer windows and steps, about a "
                               "minute in all).\n",
                               DATA);
                        return 0;
                default:
                        return 2;
                }
        }
        o.train_seconds = seconds > 0 ? seconds : o.quick ? 25 : 120;
        o.windows = windows > 0 ? windows : o.quick ? 24 : 96;
        o.distill_steps = dsteps > 0 ? dsteps : o.quick ? 60 : 300;

        corpus data = { 0 };
        char *paths[] = { (char *) o.data };
        if (corpus_load(&data, paths, 1, 64u << 20) < 0) {
                fprintf(stderr, "quant: cannot read %s\n", o.data);
                return 1;
        }
        batch_source src = batch_source_corpus(&data);
        char trained[256];
        struct stat st;
        if (!o.checkpoint) {
                snprintf(trained, sizeof(trained), "%s/quant-teacher.safetensors",
                         stat("build/bench", &st) == 0 ? "build/bench" : "/tmp");
                blas_set_threads((int) sysconf(_SC_NPROCESSORS_ONLN));
                if (train_teacher(&o, trained, &src) < 0)
                        return 1;
                o.checkpoint = trained;
        }

        model_config cfg;
        model *m;
        if (ckpt_read_config(o.checkpoint, &cfg) < 0 || model_new(&cfg, B, cfg.block_size, &m) < 0 ||
            ckpt_load(o.checkpoint, m, NULL, NULL) < 0)
                return 1;
        blas_set_threads(1);
        int T = cfg.block_size;
        printf("model: %s (%zu parameters) from %s; %d held-out windows of %d bytes; kernels %s, "
               "1 thread\n",
               cfg.name, m->layout.n_params, o.checkpoint, o.windows, T, quant_simd_name());

        static const quant_kind kinds[] = { QUANT_F32, QUANT_INT8, QUANT_INT4 };
        static const char *const names[] = { "fp32 (sgemm generator)", "fp32 (quant kernels)",
                                             "int8 per-row", "int4 group-32 (f16 scale)" };
        size_t bytes[4] = { m->layout.n_params * sizeof(float) };
        quant_model *q[4] = { NULL };
        sampler *s[4];
        double bpb[4], wall[4], cpu[4];
        if (sampler_new(m, &s[0]) < 0)
                return 1;
        for (int k = 1; k < 4; k++) {
                if (quant_model_from_model(m, kinds[k - 1], kinds[k - 1], &q[k]) < 0 ||
                    quant_sampler_new(q[k], &s[k]) < 0)
                        return 1;
                bytes[k] = quant_model_weight_bytes(q[k]);
        }
        for (int k = 0; k < 4; k++)
                bpb[k] = window_bpb(s[k], &data, T, o.windows);
        gen_speeds(s, 4, T, o.quick ? 8 : 20, wall, cpu);
        printf("%-26s %9s %8s %12s %7s %10s %10s\n", "", "bits/byte", "vs fp32", "weight bytes",
               "smaller", "tokens/s", "tok/cpu-s");
        for (int k = 0; k < 4; k++)
                printf("%-26s %9.4f %+7.2f%% %12zu %6.2fx %10.0f %10.0f\n", names[k], bpb[k],
                       100.0 * (bpb[k] / bpb[0] - 1.0), bytes[k], (double) bytes[0] / bytes[k],
                       wall[k], cpu[k]);
        printf("int8: loss %+.2f%% (target within 1%%) %s; generation %.2fx the fp32 generator "
               "(%.2fx by CPU time; target >= 2x) %s; %.2fx fp32 through the same kernels\n",
               100.0 * (bpb[2] / bpb[0] - 1.0), verdict(bpb[2] <= 1.01 * bpb[0]), wall[2] / wall[0],
               cpu[2] / cpu[0], verdict(wall[2] >= 2.0 * wall[0]), wall[2] / wall[1]);
        printf("int4: loss %+.2f%% (target within 3%%) %s; weights %.2fx smaller (target >= 6x) %s; "
               "generation %.2fx the fp32 generator (%.2fx by CPU time)\n",
               100.0 * (bpb[3] / bpb[0] - 1.0), verdict(bpb[3] <= 1.03 * bpb[0]),
               (double) bytes[0] / bytes[3], verdict((double) bytes[0] / bytes[3] >= 6.0),
               wall[3] / wall[0], cpu[3] / cpu[0]);
        for (int k = 0; k < 4; k++) {
                sampler_free(s[k]);
                quant_model_free(q[k]);
        }

        /* distillation: the checkpoint teaches a fresh tiny */
        blas_set_threads((int) sysconf(_SC_NPROCESSORS_ONLN));
        model *teacher;
        int TT = T < 128 ? T : 128;
        if (model_new(&cfg, B, TT, &teacher) < 0 || ckpt_load(o.checkpoint, teacher, NULL, NULL) < 0)
                return 1;
        double t0 = mono_now_s(), ce_d = NAN, ce_s = NAN;
        double kl_d = student_kl(teacher, &src, o.distill_steps, 0.0f, &ce_d);
        double kl_s = student_kl(teacher, &src, o.distill_steps, 1.0f, &ce_s);
        printf("distillation: tiny students, %d steps of %dx%d on the same batches (%.0f s): "
               "held-out KL(teacher||student) distilled %.4f vs from scratch %.4f nats/byte "
               "(student loss %.3f vs %.3f nats) %s\n",
               o.distill_steps, B, TT, mono_now_s() - t0, kl_d, kl_s, ce_d, ce_s,
               verdict(kl_d < kl_s));
        model_free(teacher);
        model_free(m);
        corpus_free(&data);
        return 0;
}
