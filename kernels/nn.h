/* SPDX-License-Identifier: MIT */
#pragma once

/* Layer kernels on raw pointers. None allocates, logs or does I/O. Shapes: N = B*T rows,
 * C channels, OC output channels. Backward functions accumulate into parameter gradients;
 * input gradients are overwritten (matmul, attention, gelu) or accumulated (layernorm,
 * encoder), as noted, so the caller needs no zeroing between layers. */

#include <stddef.h>
#include <stdint.h>

void nn_encoder_forward(float *out, const uint8_t *tokens, const float *wte, const float *wpe,
                        int B, int T, int C);
void nn_encoder_backward(float *dwte, float *dwpe, const float *dout, const uint8_t *tokens, int B,
                         int T, int C);

void nn_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *weight, const float *bias, size_t N, int C);
/* dinp += */
void nn_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, const float *mean,
                           const float *rstd, size_t N, int C);

/* out(N,OC) = inp(N,C) @ weight(OC,C)^T + bias(OC); bias may be NULL. */
void nn_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       size_t N, int C, int OC);
/* dinp = dout @ weight (overwritten; skipped if NULL); dweight += dout^T @ inp; dbias += */
void nn_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, size_t N, int C, int OC);

/* qkv (B,T,3C) -> out (B,T,C); att (B,H,T,T) keeps the softmax probabilities. */
void nn_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H);
/* dqkv overwritten; datt is (PAR_MAX_THREADS,T,T) scratch, one slice per pool thread. */
void nn_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                           const float *att, int B, int T, int C, int H);

/* tanh-approximated GELU, as GPT-2. dinp = dout * gelu'(inp), may alias dout. */
void nn_gelu_forward(float *out, const float *inp, size_t n);
void nn_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

void nn_residual_forward(float *out, const float *a, const float *b, size_t n);

/* Softmax over V for each of N rows and the cross-entropy against targets. Returns the
 * mean loss. */
float nn_crossentropy_forward(float *probs, float *losses, const float *logits,
                              const uint8_t *targets, size_t N, int V);
/* dlogits = (probs - onehot(target)) * scale (overwritten). */
void nn_crossentropy_backward(float *dlogits, const float *probs, const uint8_t *targets, size_t N,
                              int V, float scale);

/* exp(x) to about 2 ulp, written so that loops over it vectorise. */
float nn_expf(float x);
