/* SPDX-License-Identifier: MIT */
#include "train-step.h"

#include <errno.h>

#define DATA_CURSOR_SALT 0x6461746163757273ULL /* "datacurs": keeps data and init streams apart */

void trainer_fresh(model *m, uint64_t seed, ckpt_state *ret) {
        model_init_params(m, seed);
        *ret = (ckpt_state) { .data_cursor = seed ^ DATA_CURSOR_SALT };
}

int trainer_step(model *m, adamw_state *opt, const batch_source *src, int B, int T, int accum,
                 float lr, uint8_t *tok, uint8_t *tgt, ckpt_state *cs, float *ret_loss,
                 uint64_t *wait_ns, pthread_mutex_t *update_lock) {
        rng_t cursor = { .state = cs->data_cursor };
        float loss = 0.0f;
        int r = 0;

        model_zero_grad(m);
        for (int a = 0; a < accum && r >= 0; a++) {
                float l = 0.0f;
                r = src->train(src->ctx, &cursor, B, T, tok, tgt, wait_ns);
                if (r < 0)
                        break;
                r = model_forward(m, tok, tgt, B, T, &l);
                if (r >= 0)
                        r = model_backward(m, tok, 1.0f / (float) accum);
                loss += l / (float) accum;
        }
        if (r < 0)
                return r;
        /* one more chance to pause (or stop) before the parameters change */
        if (m->yield && m->yield(m->yield_userdata))
                return -ECANCELED;
        if (update_lock)
                pthread_mutex_lock(update_lock);
        adamw_step(opt, &m->layout, m->params, m->grads, lr);
        if (update_lock)
                pthread_mutex_unlock(update_lock);
        cs->step++;
        cs->data_cursor = cursor.state;
        *ret_loss = loss;
        return 0;
}

int trainer_val_loss(model *m, const batch_source *src, int B, int T, uint64_t first, int n,
                     uint8_t *tok, uint8_t *tgt, float *ret_loss) {
        double sum = 0.0;

        for (int i = 0; i < n; i++) {
                float l = 0.0f;
                int r = src->val(src->ctx, first + (uint64_t) i, B, T, tok, tgt);
                if (r < 0)
                        return r;
                r = model_forward(m, tok, tgt, B, T, &l);
                if (r < 0)
                        return r;
                sum += l;
        }
        *ret_loss = (float) (sum / n);
        return 0;
}
