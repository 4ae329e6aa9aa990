/* SPDX-License-Identifier: MIT */
#pragma once

/* A model whose matrices are quantized (kernels/quant.h), and generation from it with the
 * KV-cache sampler of kernels/sample.h: only the matrix-vector products and the embedding
 * lookup differ from the float model. The 1-D tensors (LayerNorm weights, biases) stay float. */

#include <stddef.h>

#include "model.h"
#include "quant.h"
#include "sample.h"

typedef struct {
        model_layout layout;           /* names and shapes, as the float model */
        quant_kind kind, embed_kind;   /* of the layer matrices; of wte and wpe */
        quant_matrix wte, wpe;         /* wte is also the (tied) output projection */
        quant_matrix qkv[64], attproj[64], fc[64], fcproj[64];
        float *vecs;                   /* every 1-D view, in layout order */
        size_t n_vecs;                 /* floats in vecs */
        model_tensors p;               /* the 1-D views bound into vecs; matrices NULL */
} quant_model;

/* An empty model of config cfg (matrices allocated, zeroed), for loading. */
int quant_model_new(const model_config *cfg, quant_kind kind, quant_kind embed_kind,
                    quant_model **ret);
/* Quantizes m's parameters. */
int quant_model_from_model(const model *m, quant_kind kind, quant_kind embed_kind,
                           quant_model **ret);
void quant_model_free(quant_model *q);

/* The matrix of layout view index vi, or NULL for a 1-D view. */
quant_matrix *quant_model_matrix(quant_model *q, int vi);
/* The 1-D view vi inside vecs, or NULL for a matrix. */
float *quant_model_vec(quant_model *q, int vi);

/* Bytes of all weights as held in memory (data, scales, the int8 kernels' row sums and the
 * float 1-D tensors). */
size_t quant_model_weight_bytes(const quant_model *q);

/* Generation from q (not copied; q must outlive the sampler). Completes the matrices'
 * derived data first (quant_matrix_finish()), so a model filled from a file needs no more. */
int quant_sampler_new(quant_model *q, sampler **ret);

/* Cross-entropy of the sampler's predictions over one window: feeds tok[0..n) from an empty
 * cache and adds -log p(tgt[i] | tok[0..i]) to *sum (nats). Any sampler (float or quantized). */
int sampler_window_loss(sampler *s, const uint8_t *tok, const uint8_t *tgt, int n, double *sum);
