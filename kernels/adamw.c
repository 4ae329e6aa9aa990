/* SPDX-License-Identifier: MIT */
#include "adamw.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void adamw_hparams_default(adamw_hparams *hp) {
        *hp = (adamw_hparams){
                .beta1 = 0.9f,
                .beta2 = 0.95f,
                .eps = 1e-8f,
                .weight_decay = 0.1f,
                .grad_clip = 1.0f,
        };
}

int adamw_new(size_t n_params, const adamw_hparams *hp, adamw_state *ret) {
        adamw_state s = { .hp = *hp, .n = n_params };

        s.m = calloc(n_params, sizeof(float));
        s.v = calloc(n_params, sizeof(float));
        if (!s.m || !s.v) {
                adamw_free(&s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void adamw_free(adamw_state *s) {
        free(s->m);
        free(s->v);
        s->m = s->v = NULL;
}

double adamw_grad_norm(const float *grads, size_t n) {
        double sum = 0.0;
        for (size_t i = 0; i < n; i++)
                sum += (double) grads[i] * grads[i];
        return sqrt(sum);
}

/* Same arithmetic as torch.optim.AdamW (single-tensor path): decay first, then the
 * bias-corrected step with eps added after the square root's correction. */
static void update_range(float *p, const float *g, float *m, float *v, size_t n, float lr, float wd,
                         const adamw_hparams *hp, float step_size, float bc2_sqrt, float gscale) {
        float decay = 1.0f - lr * wd;
        for (size_t i = 0; i < n; i++) {
                float gi = g[i] * gscale;
                m[i] = hp->beta1 * m[i] + (1.0f - hp->beta1) * gi;
                v[i] = hp->beta2 * v[i] + (1.0f - hp->beta2) * gi * gi;
                float denom = sqrtf(v[i]) / bc2_sqrt + hp->eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
        }
}

double adamw_step(adamw_state *s, const model_layout *lay, float *params, float *grads, float lr) {
        const adamw_hparams *hp = &s->hp;
        double norm = adamw_grad_norm(grads, s->n);
        float gscale = 1.0f;

        /* torch.nn.utils.clip_grad_norm_: coefficient max/(norm+1e-6), only when below 1 */
        if (hp->grad_clip > 0.0f) {
                double coef = hp->grad_clip / (norm + 1e-6);
                if (coef < 1.0)
                        gscale = (float) coef;
        }
        s->t++;
        float bc1 = 1.0f - powf(hp->beta1, (float) s->t);
        float bc2 = 1.0f - powf(hp->beta2, (float) s->t);
        float step_size = lr / bc1;
        float bc2_sqrt = sqrtf(bc2);

        for (size_t i = 0; i < lay->n_views; i++) {
                const model_view *v = &lay->views[i];
                update_range(params + v->offset, grads + v->offset, s->m + v->offset,
                             s->v + v->offset, v->numel, lr, v->decay ? hp->weight_decay : 0.0f, hp,
                             step_size, bc2_sqrt, gscale);
        }
        return norm;
}

float lr_at(const lr_schedule *s, long step) {
        if (step < s->warmup_steps)
                return s->lr_max * (float) (step + 1) / (float) s->warmup_steps;
        if (step >= s->total_steps)
                return s->lr_min;
        double progress =
                (double) (step - s->warmup_steps) / (double) (s->total_steps - s->warmup_steps);
        double coeff = 0.5 * (1.0 + cos(M_PI * progress));
        return (float) (s->lr_min + coeff * (s->lr_max - s->lr_min));
}
