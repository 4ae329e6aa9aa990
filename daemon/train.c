/* SPDX-License-Identifier: MIT */
#include "time-util.h"
#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adamw.h"
#include "blas.h"
#include "checkpoint.h"
#include "corpus.h"
#include "log.h"
#include "macros.h"
#include "model.h"
#include "sample.h"
#include "train-step.h"

#define VAL_BATCHES 4

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
        stop_requested = sig;
}

static bool yield_on_signal(void *userdata) {
        return stop_requested != 0;
}

void trainer_opts_default(trainer_opts *o) {
        *o = (trainer_opts){
                .steps = 1000,
                .batch = 8,
                .accum = 1,
                .lr = 1e-3f,
                .lr_min = 1e-4f,
                .warmup = 50,
                .seed = 1,
                .checkpoint_every = 200,
                .sample_tokens = 200,
                .max_data_bytes = 256u << 20,
                .progress = -1,
        };
}

static void format_duration(double s, char *buf, size_t n) {
        long t = s < 0 || !isfinite(s) ? 0 : (long) (s + 0.5);
        if (t >= 3600)
                snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
        else
                snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static int pick_config(const trainer_opts *o, model_config *cfg) {
        model_config from_ckpt;
        bool have_ckpt = o->checkpoint && access(o->checkpoint, F_OK) == 0;
        int r;

        if (have_ckpt) {
                r = ckpt_read_config(o->checkpoint, &from_ckpt);
                if (r < 0)
                        return log_error_errno(r,
                                               "%s: cannot resume from this checkpoint; move it "
                                               "away to start afresh",
                                               o->checkpoint);
        }
        if (o->config) {
                r = model_config_by_name(o->config, cfg);
                if (r < 0)
                        return log_error_errno(
                                r, "--config: unknown model '%s' (tiny, small, medium)", o->config);
                if (have_ckpt &&
                    (cfg->block_size != from_ckpt.block_size || cfg->n_embd != from_ckpt.n_embd ||
                     cfg->n_layer != from_ckpt.n_layer || cfg->n_head != from_ckpt.n_head))
                        return log_error_errno(EINVAL,
                                               "%s holds a '%s' model but --config %s was given",
                                               o->checkpoint, from_ckpt.name, o->config);
        } else if (have_ckpt)
                *cfg = from_ckpt;
        else
                return model_config_by_name("small", cfg);
        return 0;
}

static float validation_loss(model *m, const batch_source *src, int B, int T, uint8_t *tok,
                             uint8_t *tgt) {
        float loss = NAN;
        return trainer_val_loss(m, src, B, T, 0, VAL_BATCHES, tok, tgt, &loss) < 0 ? NAN : loss;
}

static void print_sample(model *m, int n_tokens, uint64_t seed) {
        const char *prompt = "The ";
        sampler *s = NULL;
        uint8_t *out = malloc((size_t) n_tokens);

        if (!out || sampler_new(m, &s) < 0) {
                free(out);
                return;
        }
        sample_opts so = { .temperature = 0.8f, .top_k = 40, .seed = seed };
        int n = sample_generate(s, (const uint8_t *) prompt, strlen(prompt), out, (size_t) n_tokens,
                                &so);
        if (n > 0) {
                printf("--- sample (temperature 0.8, top-k 40) ---\n%s", prompt);
                /* bytes the model made up may not be printable; show them escaped */
                for (int i = 0; i < n; i++) {
                        uint8_t ch = out[i];
                        if (ch == '\n' || ch == '\t' || (ch >= 0x20 && ch < 0x7f) || ch >= 0x80)
                                putchar(ch);
                        else
                                printf("\\x%02x", ch);
                }
                printf("\n---\n");
        }
        fflush(stdout);
        sampler_free(s);
        free(out);
}

typedef struct {
        bool tty;
        double start, last_print, window_start;
        long window_tokens, first_step;
        float tok_per_sec;
        bool val_unprinted; /* log lines show a held-out loss once, when it is new */
} progress;

static void progress_report(progress *p, const trainer_opts *o, long step, float loss, float val,
                            float lr, long tokens_per_step) {
        double now = mono_now_s();
        char eta[32];

        p->window_tokens += tokens_per_step;
        if (now - p->window_start >= 1.0 || p->tok_per_sec == 0.0f) {
                p->tok_per_sec = (float) (p->window_tokens / fmax(now - p->window_start, 1e-9));
                p->window_start = now;
                p->window_tokens = 0;
        }
        double per_step = (now - p->start) / (double) (step - p->first_step);
        format_duration(per_step * (double) (o->steps - step), eta, sizeof(eta));

        if (p->tty) {
                if (now - p->last_print < 0.1 && step < o->steps)
                        return;
                fprintf(stderr, "\r\033[Kstep %ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s",
                        step, o->steps, loss, lr, p->tok_per_sec, eta);
                if (isfinite(val))
                        fprintf(stderr, "  val %.4f", val);
        } else {
                long every = MAX(1L, o->steps / 20);
                if (step % every != 0 && now - p->last_print < 30.0 && !p->val_unprinted)
                        return;
                fprintf(stderr, "step %ld/%ld loss %.4f lr %.2e %.0f tok/s ETA %s", step, o->steps,
                        loss, lr, p->tok_per_sec, eta);
                if (p->val_unprinted && isfinite(val))
                        fprintf(stderr, " val %.4f", val);
                p->val_unprinted = false;
                fputc('\n', stderr);
        }
        p->last_print = now;
}

int trainer_run(const trainer_opts *o) {
        _cleanup_free_ uint8_t *tok = NULL, *tgt = NULL;
        model_config cfg = { 0 };
        model *m = NULL;
        adamw_state opt = { 0 };
        adamw_hparams hp;
        corpus data = { 0 };
        batch_source src = batch_source_corpus(&data);
        ckpt_state cs = { 0 };
        int r, B = o->batch, T;

        r = pick_config(o, &cfg);
        if (r < 0)
                return r;
        T = o->seq > 0 ? o->seq : cfg.block_size;
        if (T < 1 || T > cfg.block_size || B < 1 || o->accum < 1)
                return log_error_errno(
                        EINVAL, "--seq must be at most %d for '%s', --batch and --accum at least 1",
                        cfg.block_size, cfg.name);

        r = corpus_load(&data, o->data_paths, o->n_data_paths, o->max_data_bytes);
        if (r == -ENODATA)
                return log_error_errno(r, "no training data: the --data paths hold less than 4 KiB "
                                          "of readable files");
        if (r < 0)
                return r;
        if (data.size - data.train_size < (size_t) T + 1) {
                r = log_error_errno(ENODATA, "too little data (%zu bytes) for windows of %d bytes",
                                    data.size, T);
                goto out;
        }

        blas_set_threads(o->threads > 0 ? o->threads : (int) sysconf(_SC_NPROCESSORS_ONLN));
        r = model_new(&cfg, B, T, &m);
        if (r < 0) {
                log_error_errno(r, "cannot allocate the '%s' model for batch %dx%d: %m", cfg.name,
                                B, T);
                goto out;
        }
        adamw_hparams_default(&hp);
        r = adamw_new(m->layout.n_params, &hp, &opt);
        if (r < 0)
                goto out;
        tok = malloc((size_t) B * T);
        tgt = malloc((size_t) B * T);
        if (!tok || !tgt) {
                r = -ENOMEM;
                goto out;
        }

        if (o->checkpoint && access(o->checkpoint, F_OK) == 0) {
                r = ckpt_load(o->checkpoint, m, &opt, &cs);
                if (r < 0) {
                        log_error("%s: cannot resume from this checkpoint; move it away to start "
                                  "afresh",
                                  o->checkpoint);
                        goto out;
                }
                log_info("resuming from %s at step %ld", o->checkpoint, cs.step);
        } else
                trainer_fresh(m, o->seed, &cs);
        log_info("model %s: %zu parameters (T=%d C=%d L=%d H=%d); data: %zu files, %zu bytes (%zu "
                 "held out)%s",
                 cfg.name, m->layout.n_params, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head,
                 data.n_files, data.size, data.size - data.train_size,
                 data.n_skipped ? ", some paths skipped" : "");
        log_info("batch %dx%d x%d, %d threads, %s", B, T, o->accum, blas_get_threads(),
                 blas_describe());

        struct sigaction sa = { .sa_handler = on_stop_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        m->yield = yield_on_signal;

        lr_schedule sched = { .lr_max = o->lr,
                              .lr_min = o->lr_min,
                              .warmup_steps = o->warmup,
                              .total_steps = o->steps };
        long tokens_per_step = (long) B * T * o->accum;
        progress prog = { .tty = o->progress < 0 ? isatty(STDERR_FILENO) : o->progress == 1,
                          .first_step = cs.step };
        prog.start = prog.window_start = prog.last_print = mono_now_s();
        float loss = NAN, val = NAN;

        while (cs.step < o->steps && !stop_requested) {
                float lr = lr_at(&sched, cs.step);

                r = trainer_step(m, &opt, &src, B, T, o->accum, lr, tok, tgt, &cs, &loss, NULL, NULL);
                if (r == -ECANCELED)
                        break; /* the interrupted step never happened */
                if (r < 0)
                        goto out;
                if (!isfinite(loss)) {
                        r = log_error_errno(ERANGE, "loss became %f at step %ld; lower --lr", loss,
                                            cs.step);
                        goto out;
                }
                bool eval = o->eval_every > 0 && cs.step % o->eval_every == 0;
                if (eval) {
                        val = validation_loss(m, &src, B, T, tok, tgt);
                        prog.val_unprinted = true;
                }
                progress_report(&prog, o, cs.step, loss, val, lr, tokens_per_step);
                if (o->checkpoint && o->checkpoint_every > 0 &&
                    cs.step % o->checkpoint_every == 0 && cs.step < o->steps) {
                        r = ckpt_save(o->checkpoint, m, &opt, &cs);
                        if (r < 0)
                                goto out;
                }
        }
        m->yield = NULL;
        val = validation_loss(m, &src, B, T, tok, tgt);
        if (prog.tty)
                fputc('\n', stderr);
        char took[32];
        format_duration(mono_now_s() - prog.start, took, sizeof(took));
        log_info("step %ld: training loss %.4f, held-out loss %.4f (%s)", cs.step, loss, val, took);
        if (o->checkpoint) {
                r = ckpt_save(o->checkpoint, m, &opt, &cs);
                if (r < 0)
                        goto out;
                log_info("saved %s at step %ld", o->checkpoint, cs.step);
        }
        if (stop_requested)
                log_info("interrupted; run the same command again to resume");
        else if (o->sample_tokens > 0)
                print_sample(m, MIN(o->sample_tokens, cfg.block_size - 4), o->seed);
        r = 0;
out:
        model_free(m);
        adamw_free(&opt);
        corpus_free(&data);
        return r;
}
