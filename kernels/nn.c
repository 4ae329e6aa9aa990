/* SPDX-License-Identifier: MIT */
#include "nn.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "macros.h"
#include "nn-exp.h"
#include "parallel.h"

/* Hot loops get an AVX2+FMA clone picked at load time, so the portable build still runs
 * them at full width on the machines that can. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NN_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NN_HOT
#endif

#define LN_EPS 1e-5f
/* elementwise work per thread below which waking another thread costs more than it saves */
#define ELEMENT_GRAIN 32768
#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBIC 0.044715f

/* Reductions in 8 independent lanes: the compiler may not reorder float sums itself, and a
 * single accumulator would serialise on the add latency. */
static inline float sum_floats(const float *x, size_t n) {
        float acc[8] = { 0 };
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
                for (int l = 0; l < 8; l++)
                        acc[l] += x[i + l];
        for (; i < n; i++)
                acc[0] += x[i];
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static inline float dot_floats(const float *x, const float *y, size_t n) {
        float acc[8] = { 0 };
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
                for (int l = 0; l < 8; l++)
                        acc[l] += x[i + l] * y[i + l];
        for (; i < n; i++)
                acc[0] += x[i] * y[i];
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float nn_expf(float x) {
        return nn_exp_fast(x);
}

void nn_encoder_forward(float *out, const uint8_t *tokens, const float *wte, const float *wpe,
                        int B, int T, int C) {
        for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                        float *o = out + ((size_t) b * T + t) * C;
                        const float *we = wte + (size_t) tokens[b * T + t] * C;
                        const float *pe = wpe + (size_t) t * C;
                        for (int i = 0; i < C; i++)
                                o[i] = we[i] + pe[i];
                }
}

void nn_encoder_backward(float *dwte, float *dwpe, const float *dout, const uint8_t *tokens, int B,
                         int T, int C) {
        for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                        const float *d = dout + ((size_t) b * T + t) * C;
                        float *dwe = dwte + (size_t) tokens[b * T + t] * C;
                        float *dpe = dwpe + (size_t) t * C;
                        for (int i = 0; i < C; i++) {
                                dwe[i] += d[i];
                                dpe[i] += d[i];
                        }
                }
}

typedef struct {
        float *out, *mean, *rstd;
        const float *inp, *weight, *bias;
        int C;
} layernorm_args;

NN_HOT static void layernorm_forward_rows(void *ctx, long begin, long end, int worker) {
        const layernorm_args *a = ctx;
        const float *restrict weight = a->weight, *restrict bias = a->bias;
        int C = a->C;
        for (long n = begin; n < end; n++) {
                const float *restrict x = a->inp + n * C;
                float *restrict o = a->out + n * C;
                float m = sum_floats(x, (size_t) C) / (float) C, v = 0.0f;
                for (int i = 0; i < C; i++) {
                        float d = x[i] - m;
                        v += d * d;
                }
                v /= (float) C;
                float s = 1.0f / sqrtf(v + LN_EPS);
                for (int i = 0; i < C; i++)
                        o[i] = (x[i] - m) * s * weight[i] + bias[i];
                a->mean[n] = m;
                a->rstd[n] = s;
        }
}

void nn_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *weight, const float *bias, size_t N, int C) {
        layernorm_args a = { .out = out, .mean = mean, .rstd = rstd, .inp = inp,
                             .weight = weight, .bias = bias, .C = C };
        par_for((long) N, ELEMENT_GRAIN / C + 1, layernorm_forward_rows, &a, 0);
}

typedef struct {
        float *dinp, *dweight, *dbias;
        const float *dout, *inp, *weight, *mean, *rstd;
        size_t N;
        int C;
} layernorm_back_args;

/* dx, row by row: each row needs only its own two means. */
NN_HOT static void layernorm_backward_rows(void *ctx, long begin, long end, int worker) {
        const layernorm_back_args *a = ctx;
        const float *weight = a->weight;
        int C = a->C;

        for (long n = begin; n < end; n++) {
                const float *d = a->dout + n * C;
                const float *x = a->inp + n * C;
                float *dx = a->dinp + n * C;
                float m = a->mean[n], s = a->rstd[n];
                float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;

                for (int i = 0; i < C; i++) {
                        float norm = (x[i] - m) * s;
                        float dnorm = weight[i] * d[i];
                        dnorm_mean += dnorm;
                        dnorm_norm_mean += dnorm * norm;
                }
                dnorm_mean /= (float) C;
                dnorm_norm_mean /= (float) C;
                for (int i = 0; i < C; i++) {
                        float norm = (x[i] - m) * s;
                        float dnorm = weight[i] * d[i];
                        dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
                }
        }
}

/* dweight and dbias, by columns: every column still sums its rows in order 0..N-1, so the
 * result does not depend on the number of threads. */
NN_HOT static void layernorm_backward_cols(void *ctx, long begin, long end, int worker) {
        const layernorm_back_args *a = ctx;
        int C = a->C;

        for (size_t n = 0; n < a->N; n++) {
                const float *d = a->dout + n * C;
                const float *x = a->inp + n * C;
                float m = a->mean[n], s = a->rstd[n];

                for (long i = begin; i < end; i++) {
                        float norm = (x[i] - m) * s;
                        a->dbias[i] += d[i];
                        a->dweight[i] += norm * d[i];
                }
        }
}

void nn_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, const float *mean,
                           const float *rstd, size_t N, int C) {
        layernorm_back_args a = { .dinp = dinp, .dweight = dweight, .dbias = dbias,
                                  .dout = dout, .inp = inp, .weight = weight, .mean = mean,
                                  .rstd = rstd, .N = N, .C = C };

        par_for((long) N, ELEMENT_GRAIN / C + 1, layernorm_backward_rows, &a, 0);
        /* 16 floats: one cache line per thread boundary at least */
        par_for(C, MAX(16, (long) (ELEMENT_GRAIN / (N ? N : 1))), layernorm_backward_cols, &a, 0);
}

void nn_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       size_t N, int C, int OC) {
        if (bias)
                for (size_t n = 0; n < N; n++)
                        memcpy(out + n * OC, bias, sizeof(float) * OC);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) N, OC, C, 1.0f, inp, C, weight,
                    C, bias ? 1.0f : 0.0f, out, OC);
}

void nn_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, size_t N, int C, int OC) {
        if (dinp)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) N, C, OC, 1.0f, dout,
                            OC, weight, C, 0.0f, dinp, C);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, (int) N, 1.0f, dout, OC, inp, C,
                    1.0f, dweight, C);
        if (dbias)
                for (size_t n = 0; n < N; n++) {
                        const float *d = dout + n * OC;
                        for (int o = 0; o < OC; o++)
                                dbias[o] += d[o];
                }
}

/* Row i of a causal score matrix: softmax over columns 0..i, zeros up to n. */
static void causal_softmax_row(float *row, int i, int n) {
        float mx = row[0];
        for (int j = 1; j <= i; j++)
                mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j <= i; j++)
                row[j] = nn_exp_fast(row[j] - mx);
        float inv = 1.0f / sum_floats(row, (size_t) i + 1);
        for (int j = 0; j <= i; j++)
                row[j] *= inv;
        for (int j = i + 1; j < n; j++)
                row[j] = 0.0f;
}

/* Attention works on row blocks of ATT_BLOCK queries: block r only needs keys 0..end of the
 * block, so the masked upper triangle is never computed (about half the work at T = 512).
 * Heads are independent, so the pool takes them in parallel, each with single-threaded
 * BLAS: per-head products are too small for BLAS's own threads to pay off. */
#define ATT_BLOCK 64

typedef struct {
        float *out, *att, *dqkv, *datt;
        const float *qkv, *dout, *att_in;
        int B, T, C, H;
} attention_args;

NN_HOT static void attention_forward_heads(void *ctx, long begin, long end, int worker) {
        const attention_args *x = ctx;
        int T = x->T, C = x->C, H = x->H, hs = C / H, C3 = 3 * C;
        float scale = 1.0f / sqrtf((float) hs);

        for (long bh = begin; bh < end; bh++) {
                int b = (int) (bh / H), h = (int) (bh % H);
                const float *q = x->qkv + (size_t) b * T * C3 + h * hs;
                const float *k = q + C;
                const float *v = q + 2 * C;
                float *a = x->att + (size_t) bh * T * T;
                float *o = x->out + (size_t) b * T * C + h * hs;

                for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                        int rows = MIN(ATT_BLOCK, T - i0), n = i0 + rows;
                        float *ab = a + (size_t) i0 * T;

                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hs, scale,
                                    q + (size_t) i0 * C3, C3, k, C3, 0.0f, ab, T);
                        for (int i = 0; i < rows; i++)
                                causal_softmax_row(ab + (size_t) i * T, i0 + i, n);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, n, 1.0f,
                                    ab, T, v, C3, 0.0f, o + (size_t) i0 * C, C);
                }
        }
}

void nn_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
        attention_args x = { .out = out, .att = att, .qkv = qkv, .B = B, .T = T, .C = C, .H = H };
        par_for((long) B * H, 1, attention_forward_heads, &x, 1);
}

NN_HOT static void attention_backward_heads(void *ctx, long begin, long end, int worker) {
        const attention_args *x = ctx;
        int T = x->T, C = x->C, H = x->H, hs = C / H, C3 = 3 * C;
        float scale = 1.0f / sqrtf((float) hs);
        float *datt = x->datt + (size_t) worker * T * T;

        for (long bh = begin; bh < end; bh++) {
                int b = (int) (bh / H), h = (int) (bh % H);
                const float *q = x->qkv + (size_t) b * T * C3 + h * hs;
                const float *k = q + C;
                const float *v = q + 2 * C;
                float *dq = x->dqkv + (size_t) b * T * C3 + h * hs;
                float *dk = dq + C;
                float *dv = dq + 2 * C;
                const float *a = x->att_in + (size_t) bh * T * T;
                const float *dy = x->dout + (size_t) b * T * C + h * hs;

                /* dK and dV collect contributions from every row block below them */
                for (int t = 0; t < T; t++) {
                        memset(dk + (size_t) t * C3, 0, (size_t) hs * sizeof(float));
                        memset(dv + (size_t) t * C3, 0, (size_t) hs * sizeof(float));
                }
                for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                        int rows = MIN(ATT_BLOCK, T - i0), n = i0 + rows;
                        const float *ab = a + (size_t) i0 * T;
                        const float *dyb = dy + (size_t) i0 * C;

                        /* dP = dY V^T, dV += P^T dY */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hs, 1.0f,
                                    dyb, C, v, C3, 0.0f, datt, n);
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hs, rows, 1.0f, ab,
                                    T, dyb, C, 1.0f, dv, C3);
                        /* softmax backward: dS = P * (dP - rowsum(P * dP)) */
                        for (int i = 0; i < rows; i++) {
                                const float *p = ab + (size_t) i * T;
                                float *d = datt + (size_t) i * n;
                                int last = i0 + i;
                                float dot = dot_floats(p, d, (size_t) last + 1);
                                for (int j = 0; j <= last; j++)
                                        d[j] = p[j] * (d[j] - dot);
                                for (int j = last + 1; j < n; j++)
                                        d[j] = 0.0f;
                        }
                        /* dQ = scale dS K, dK += scale dS^T Q */
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, n, scale,
                                    datt, n, k, C3, 0.0f, dq + (size_t) i0 * C3, C3);
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hs, rows, scale,
                                    datt, n, q + (size_t) i0 * C3, C3, 1.0f, dk, C3);
                }
        }
}

void nn_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                           const float *att, int B, int T, int C, int H) {
        attention_args x = { .dqkv = dqkv, .datt = datt, .dout = dout, .qkv = qkv,
                             .att_in = att, .B = B, .T = T, .C = C, .H = H };
        par_for((long) B * H, 1, attention_backward_heads, &x, 1);
}

/* gelu(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3). The
 * sigmoid goes through exp(-|z|) <= 1 so no lane ever divides by a huge number: that would
 * make subnormal results, which cost a microcode assist per element on some CPUs. */
static inline float sigmoid(float z) {
        float e = nn_exp_fast(-fabsf(z));
        float s = 1.0f / (1.0f + e);
        return z >= 0.0f ? s : e * s;
}

typedef struct {
        float *out;
        const float *inp, *dout;
} elementwise_args;

NN_HOT static void gelu_forward_range(void *ctx, long begin, long end, int worker) {
        const elementwise_args *a = ctx;
        /* locals: stores through a->out could otherwise alias *a and stop vectorisation */
        float *restrict out = a->out;
        const float *restrict inp = a->inp;
        for (long i = begin; i < end; i++) {
                float x = inp[i];
                float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
                out[i] = x * sigmoid(2.0f * u);
        }
}

void nn_gelu_forward(float *out, const float *inp, size_t n) {
        elementwise_args a = { .out = out, .inp = inp };
        par_for((long) n, ELEMENT_GRAIN, gelu_forward_range, &a, 0);
}

NN_HOT static void gelu_backward_range(void *ctx, long begin, long end, int worker) {
        const elementwise_args *a = ctx;
        /* dinp may alias dout (in place), so only inp is restrict */
        float *out = a->out;
        const float *dout = a->dout;
        const float *restrict inp = a->inp;
        for (long i = begin; i < end; i++) {
                float x = inp[i];
                float u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
                float sg = sigmoid(2.0f * u);
                float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
                out[i] = dout[i] * (sg + x * sg * (1.0f - sg) * 2.0f * du);
        }
}

void nn_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
        elementwise_args a = { .out = dinp, .inp = inp, .dout = dout };
        par_for((long) n, ELEMENT_GRAIN, gelu_backward_range, &a, 0);
}

NN_HOT void nn_residual_forward(float *out, const float *a, const float *b, size_t n) {
        for (size_t i = 0; i < n; i++)
                out[i] = a[i] + b[i];
}

NN_HOT float nn_crossentropy_forward(float *probs, float *losses, const float *logits,
                                     const uint8_t *targets, size_t N, int V) {
        double total = 0.0;

        for (size_t n = 0; n < N; n++) {
                const float *l = logits + n * V;
                float *p = probs + n * V;
                float mx = l[0];
                for (int i = 1; i < V; i++)
                        mx = l[i] > mx ? l[i] : mx;
                for (int i = 0; i < V; i++)
                        p[i] = nn_exp_fast(l[i] - mx);
                /* >= 1: the maximum's own term is exp(0) */
                float sum = sum_floats(p, (size_t) V);
                float inv = 1.0f / sum;
                for (int i = 0; i < V; i++)
                        p[i] *= inv;
                /* log-sum-exp form: exact for tiny probabilities, unlike -log(p) */
                // cppcheck-suppress invalidFunctionArg
                losses[n] = logf(sum) - (l[targets[n]] - mx);
                total += losses[n];
        }
        return (float) (total / (double) N);
}

void nn_crossentropy_backward(float *dlogits, const float *probs, const uint8_t *targets, size_t N,
                              int V, float scale) {
        for (size_t n = 0; n < N; n++) {
                const float *p = probs + n * V;
                float *d = dlogits + n * V;
                for (int i = 0; i < V; i++)
                        d[i] = p[i] * scale;
                d[targets[n]] -= scale;
        }
}
