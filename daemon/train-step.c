/* SPDX-License-Identifier: MIT */
#include "train-step.h"

#define DATA_CURSOR_SALT 0x6461746163757273ULL /* "datacurs": keeps data and init streams apart */

void trainer_fresh(model *m, uint64_t seed, ckpt_state *ret) {
        model_init_params(m, seed);
        *ret = (ckpt_state) { .data_cursor = seed ^ DATA_CURSOR_SALT };
}

int trainer_step(model *m, adamw_state *opt, const corpus *data, int B, int T, int accum,
                 float lr, uint8_t *tok, uint8_t *tgt, ckpt_state *cs, float *ret_loss) {
        rng_t cursor = { .state = cs->data_cursor };
        float loss = 0.0f;
        int r = 0;

        model_zero_grad(m);
        for (int a = 0; a < accum && r >= 0; a++) {
                float l = 0.0f;
                corpus_train_batch(data, &cursor, B, T, tok, tgt);
                r = model_forward(m, tok, tgt, B, T, &l);
                if (r >= 0)
                        r = model_backward(m, tok, 1.0f / (float) accum);
                loss += l / (float) accum;
        }
        if (r < 0)
                return r;
        adamw_step(opt, &m->layout, m->params, m->grads, lr);
        cs->step++;
        cs->data_cursor = cursor.state;
        *ret_loss = loss;
        return 0;
}
