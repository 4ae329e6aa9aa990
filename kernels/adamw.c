/* SPDX-License-Identifier: MIT */
#include "adamw.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "macros.h"
#include "parallel.h"

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
static void update_range(float *restrict p, const float *restrict g, float *restrict m,
                         float *restrict v, size_t n, float lr, float wd, const adamw_hparams *hp,
                         float step_size, float bc2_sqrt, float gscale) {
        const float decay = 1.0f - lr * wd, b1 = hp->beta1, b2 = hp->beta2, eps = hp->eps;
        for (size_t i = 0; i < n; i++) {
                float gi = g[i] * gscale;
                m[i] = b1 * m[i] + (1.0f - b1) * gi;
                v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
                float denom = sqrtf(v[i]) / bc2_sqrt + eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
        }
}

typedef struct {
        adamw_state *s;
        const model_layout *lay;
        float *params, *grads;
        float lr, step_size, bc2_sqrt, gscale;
} adamw_args;

/* Updates the flat range [begin, end), view by view since weight decay differs. */
static void adamw_range(void *ctx, long begin, long end, int worker) {
        const adamw_args *a = ctx;
        const adamw_hparams *hp = &a->s->hp;

        for (size_t i = 0; i < a->lay->n_views; i++) {
                const model_view *v = &a->lay->views[i];
                long lo = MAX((long) v->offset, begin);
                long hi = MIN((long) (v->offset + v->numel), end);
                if (lo >= hi)
                        continue;
                update_range(a->params + lo, a->grads + lo, a->s->m + lo, a->s->v + lo,
                             (size_t) (hi - lo), a->lr, v->decay ? hp->weight_decay : 0.0f, hp,
                             a->step_size, a->bc2_sqrt, a->gscale);
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
        adamw_args a = { .s = s, .lay = lay, .params = params, .grads = grads, .lr = lr,
                         .step_size = lr / bc1, .bc2_sqrt = sqrtf(bc2), .gscale = gscale };

        par_for((long) s->n, 1L << 16, adamw_range, &a, 0);
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
