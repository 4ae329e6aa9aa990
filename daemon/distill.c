/* SPDX-License-Identifier: MIT */
#include "distill.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "corpus.h"
#include "idle-sched.h"
#include "log.h"
#include "macros.h"
#include "time-util.h"
#include "train-step.h"

#define V MODEL_VOCAB
#define EVAL_BATCHES 4

/* log-softmax of x / temp into out; returns nothing, sums in double. */
static void log_softmax(double *out, const float *x, float temp) {
        float mx = x[0];
        for (int i = 1; i < V; i++)
                mx = x[i] > mx ? x[i] : mx;
        double z = 0.0;
        for (int i = 0; i < V; i++) {
                out[i] = ((double) x[i] - (double) mx) / temp;
                z += exp(out[i]);
        }
        double lz = log(z);
        for (int i = 0; i < V; i++)
                out[i] -= lz;
}

double distill_loss(float *dlogits, const float *s_logits, const float *t_logits,
                    const uint8_t *targets, size_t N, float temperature, float alpha) {
        double ls[V], lsT[V], ltT[V], total = 0.0, T = temperature;

        for (size_t n = 0; n < N; n++) {
                const float *z = s_logits + n * V, *t = t_logits + n * V;
                double kl = 0.0;

                log_softmax(ls, z, 1.0f);
                log_softmax(lsT, z, temperature);
                log_softmax(ltT, t, temperature);
                for (int i = 0; i < V; i++)
                        kl += exp(ltT[i]) * (ltT[i] - lsT[i]);
                total += alpha * -ls[targets[n]] + (1.0 - alpha) * T * T * kl;
                if (!dlogits)
                        continue;
                float *d = dlogits + n * V;
                for (int i = 0; i < V; i++) {
                        double g = alpha * (exp(ls[i]) - (i == targets[n])) +
                                   (1.0 - alpha) * T * (exp(lsT[i]) - exp(ltT[i]));
                        d[i] = (float) (g / (double) N);
                }
        }
        return total / (double) N;
}

int distill_grad(model *student, model *teacher, const uint8_t *tok, const uint8_t *tgt, int B,
                 int T, float temperature, float alpha, float loss_scale, float *scratch,
                 double *ret_loss) {
        size_t N = (size_t) B * T;
        float loss_ce;
        int r;

        r = model_forward(teacher, tok, NULL, B, T, NULL);
        if (r < 0)
                return r;
        r = model_forward(student, tok, tgt, B, T, &loss_ce);
        if (r < 0)
                return r;
        *ret_loss = distill_loss(scratch, student->acts.logits, teacher->acts.logits, tgt, N,
                                 temperature, alpha);
        /* the gradient as pseudo-probabilities for the cross-entropy backward (see header) */
        float *p = student->acts.probs;
        for (size_t n = 0; n < N; n++) {
                for (int i = 0; i < V; i++)
                        p[n * V + i] = scratch[n * V + i] * (float) N;
                p[n * V + tgt[n]] += 1.0f;
        }
        return model_backward(student, tok, loss_scale);
}

int distill_eval(model *student, model *teacher, const batch_source *src, int B, int T, int n,
                 uint8_t *tok, uint8_t *tgt, double *ret_kl, double *ret_ce) {
        double kl = 0.0, ce = 0.0;

        for (int i = 0; i < n; i++) {
                float l = 0.0f;
                int r = src->val(src->ctx, (uint64_t) i, B, T, tok, tgt);
                if (r >= 0)
                        r = model_forward(teacher, tok, NULL, B, T, NULL);
                if (r >= 0)
                        r = model_forward(student, tok, tgt, B, T, &l);
                if (r < 0)
                        return r;
                /* alpha 0, temperature 1: exactly the mean KL */
                kl += distill_loss(NULL, student->acts.logits, teacher->acts.logits, tgt,
                                   (size_t) B * T, 1.0f, 0.0f);
                ce += l;
        }
        *ret_kl = kl / n;
        if (ret_ce)
                *ret_ce = ce / n;
        return 0;
}

void distill_opts_default(distill_opts *o) {
        *o = (distill_opts){
                .student_config = "tiny",
                .steps = 1000,
                .batch = 8,
                .lr = 1e-3f,
                .lr_min = 1e-4f,
                .warmup = 50,
                .temperature = 2.0f,
                .alpha = 0.5f,
                .seed = 1,
                .max_data_bytes = 256u << 20,
        };
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
        stop_requested = sig;
}

static int load_teacher(const distill_opts *o, int B, int *T, model **ret) {
        model_config cfg;
        int r = ckpt_read_config(o->teacher, &cfg);

        if (r < 0)
                return log_error_errno(r, "%s: cannot read the teacher", o->teacher);
        *T = MIN(*T, cfg.block_size);
        r = model_new(&cfg, B, *T, ret);
        if (r < 0)
                return log_error_errno(r, "cannot allocate the teacher '%s': %m", cfg.name);
        r = ckpt_load(o->teacher, *ret, NULL, NULL);
        if (r < 0) {
                model_free(*ret);
                *ret = NULL;
        }
        return r;
}

int distill_run(const distill_opts *o) {
        _cleanup_free_ uint8_t *tok = NULL, *tgt = NULL;
        _cleanup_free_ float *scratch = NULL;
        model *teacher = NULL, *student = NULL;
        adamw_state opt = { 0 };
        adamw_hparams hp;
        corpus data = { 0 };
        batch_source src = batch_source_corpus(&data);
        ckpt_state cs = { 0 };
        model_config cfg;
        double kl = NAN, ce = NAN, loss = NAN;
        int r, B = o->batch, T;

        r = model_config_by_name(o->student_config, &cfg);
        if (r < 0)
                return log_error_errno(r, "--student-config: unknown model '%s' (tiny, small, medium)",
                                       o->student_config);
        if (!(o->temperature > 0.0f) || !(o->alpha >= 0.0f && o->alpha <= 1.0f))
                return log_error_errno(EINVAL, "--temperature must be > 0, --alpha in [0, 1]");
        T = o->seq > 0 ? MIN(o->seq, cfg.block_size) : cfg.block_size;
        blas_set_threads(o->threads > 0 ? o->threads : (int) sysconf(_SC_NPROCESSORS_ONLN));
        /* after the BLAS pool has its threads: they do the work */
        if (!o->normal_priority) {
                r = idle_sched_all_threads(0);
                if (r < 0)
                        log_warning_errno(r, "cannot run at SCHED_IDLE, going on at normal "
                                             "priority: %m");
                else
                        log_info("running at SCHED_IDLE: only CPU time nothing else wants");
        }
        r = load_teacher(o, B, &T, &teacher);
        if (r < 0)
                return r;
        r = corpus_load(&data, o->data_paths, o->n_data_paths, o->max_data_bytes);
        if (r < 0) {
                log_error_errno(r, "no usable training data under the --data paths");
                goto out;
        }
        if (data.size - data.train_size < (size_t) T + 1) {
                r = log_error_errno(ENODATA, "too little data (%zu bytes) for windows of %d bytes",
                                    data.size, T);
                goto out;
        }
        r = model_new(&cfg, B, T, &student);
        if (r < 0) {
                log_error_errno(r, "cannot allocate the student '%s': %m", cfg.name);
                goto out;
        }
        adamw_hparams_default(&hp);
        r = adamw_new(student->layout.n_params, &hp, &opt);
        tok = malloc((size_t) B * T);
        tgt = malloc((size_t) B * T);
        scratch = malloc((size_t) B * T * V * sizeof(float));
        if (r < 0 || !tok || !tgt || !scratch) {
                r = -ENOMEM;
                goto out;
        }
        if (o->checkpoint && access(o->checkpoint, F_OK) == 0) {
                r = ckpt_load(o->checkpoint, student, &opt, &cs);
                if (r < 0) {
                        log_error("%s: cannot resume the student; move it away to start afresh",
                                  o->checkpoint);
                        goto out;
                }
                log_info("resuming the student from %s at step %ld", o->checkpoint, cs.step);
        } else
                trainer_fresh(student, o->seed, &cs);
        log_info("teacher %s (%zu parameters), student %s (%zu parameters), batch %dx%d, "
                 "temperature %g, alpha %g",
                 teacher->layout.cfg.name, teacher->layout.n_params, cfg.name,
                 student->layout.n_params, B, T, (double) o->temperature, (double) o->alpha);

        r = distill_eval(student, teacher, &src, B, T, EVAL_BATCHES, tok, tgt, &kl, &ce);
        if (r < 0)
                goto out;
        log_info("step %ld: held-out KL(teacher||student) %.4f nats/byte, student loss %.4f",
                 cs.step, kl, ce);

        struct sigaction sa = { .sa_handler = on_stop_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        lr_schedule sched = { .lr_max = o->lr,
                              .lr_min = o->lr_min,
                              .warmup_steps = MIN(o->warmup, o->steps),
                              .total_steps = o->steps };
        double start = mono_now_s(), last = start;
        while (cs.step < o->steps && !stop_requested) {
                rng_t cursor = { .state = cs.data_cursor };
                r = src.train(src.ctx, &cursor, B, T, tok, tgt, NULL);
                if (r < 0)
                        goto out;
                model_zero_grad(student);
                r = distill_grad(student, teacher, tok, tgt, B, T, o->temperature, o->alpha, 1.0f,
                                 scratch, &loss);
                if (r < 0)
                        goto out;
                if (!isfinite(loss)) {
                        r = log_error_errno(ERANGE, "loss became %f at step %ld; lower --lr", loss,
                                            cs.step);
                        goto out;
                }
                adamw_step(&opt, &student->layout, student->params, student->grads,
                           lr_at(&sched, cs.step));
                cs.step++;
                cs.data_cursor = cursor.state;
                if (o->eval_every > 0 && cs.step % o->eval_every == 0) {
                        r = distill_eval(student, teacher, &src, B, T, EVAL_BATCHES, tok, tgt, &kl,
                                         &ce);
                        if (r < 0)
                                goto out;
                        log_info("step %ld/%ld: loss %.4f, held-out KL %.4f, student loss %.4f",
                                 cs.step, o->steps, loss, kl, ce);
                } else if (mono_now_s() - last >= 10.0) {
                        log_info("step %ld/%ld: loss %.4f", cs.step, o->steps, loss);
                        last = mono_now_s();
                }
        }
        r = distill_eval(student, teacher, &src, B, T, EVAL_BATCHES, tok, tgt, &kl, &ce);
        if (r < 0)
                goto out;
        log_info("step %ld: held-out KL(teacher||student) %.4f nats/byte, student loss %.4f "
                 "(%.0f s)",
                 cs.step, kl, ce, mono_now_s() - start);
        if (o->checkpoint) {
                r = ckpt_save(o->checkpoint, student, &opt, &cs);
                if (r < 0) {
                        log_error_errno(r, "cannot save %s: %m", o->checkpoint);
                        goto out;
                }
                log_info("saved the student to %s at step %ld", o->checkpoint, cs.step);
        }
        if (stop_requested)
                log_info("interrupted; run the same command again to resume");
        r = 0;
out:
        model_free(teacher);
        model_free(student);
        adamw_free(&opt);
        corpus_free(&data);
        return r;
}
