/* SPDX-License-Identifier: MIT */
#pragma once

/* Byte-level GPT-2-style decoder: vocab 256, learned positions, pre-LayerNorm, GELU MLP 4x,
 * tied embeddings, causal multi-head attention. All parameters live in one contiguous float
 * buffer described by a table of named views; gradients and AdamW moments use buffers of the
 * same layout. Activations live in one arena sized once for (B, T). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MODEL_VOCAB 256
#define MODEL_MAX_VIEWS 256
#define MODEL_NAME_MAX 48

typedef struct {
        char name[16];  /* "tiny", "small", "medium" or "custom" */
        int block_size; /* T: maximum sequence length */
        int n_embd;     /* C */
        int n_layer;    /* L */
        int n_head;     /* H */
} model_config;

/* Per-layer tensors, in the order they are laid out in the buffer. */
enum {
        LP_LN1_W,
        LP_LN1_B,
        LP_QKV_W,
        LP_QKV_B,
        LP_ATTPROJ_W,
        LP_ATTPROJ_B,
        LP_LN2_W,
        LP_LN2_B,
        LP_FC_W,
        LP_FC_B,
        LP_FCPROJ_W,
        LP_FCPROJ_B,
        _LP_MAX
};

typedef struct {
        char name[MODEL_NAME_MAX]; /* safetensors name, e.g. "h.0.attn.qkv.weight" */
        size_t offset;             /* in floats, into the parameter buffer */
        size_t numel;
        int ndim;
        int shape[2];
        bool decay; /* AdamW weight decay applies (matrices and embeddings) */
} model_view;

typedef struct {
        model_config cfg;
        size_t n_params;
        size_t n_views;
        model_view views[MODEL_MAX_VIEWS];
        /* indices into views[] */
        int wte, wpe, lnf_w, lnf_b;
        int layer[64][_LP_MAX];
} model_layout;

/* Named view pointers into one buffer (params or grads). */
typedef struct {
        float *wte, *wpe;
        float *ln1_w[64], *ln1_b[64], *qkv_w[64], *qkv_b[64], *attproj_w[64], *attproj_b[64];
        float *ln2_w[64], *ln2_b[64], *fc_w[64], *fc_b[64], *fcproj_w[64], *fcproj_b[64];
        float *lnf_w, *lnf_b;
} model_tensors;

/* Activations for one micro-batch of shape (B, T). */
typedef struct {
        int B, T;
        size_t n_floats;
        float *arena;
        /* per layer, each [L * ...] */
        float *encoded;   /* (B,T,C) */
        float *ln1;       /* (L,B,T,C) */
        float *ln1_mean;  /* (L,B,T) */
        float *ln1_rstd;  /* (L,B,T) */
        float *qkv;       /* (L,B,T,3C) */
        float *atty;      /* (L,B,T,C) */
        float *att;       /* (L,B,H,T,T) softmax probabilities */
        float *attproj;   /* (L,B,T,C) */
        float *residual2; /* (L,B,T,C) */
        float *ln2;       /* (L,B,T,C) */
        float *ln2_mean, *ln2_rstd;
        float *fch;       /* (L,B,T,4C) */
        float *fch_gelu;  /* (L,B,T,4C) */
        float *fcproj;    /* (L,B,T,C) */
        float *residual3; /* (L,B,T,C) */
        float *lnf;       /* (B,T,C) */
        float *lnf_mean, *lnf_rstd;
        float *logits; /* (B,T,V) */
        float *probs;  /* (B,T,V) */
        float *losses; /* (B,T) */
        /* backward scratch */
        float *dresidual; /* (B,T,C) */
        float *dbt4c;     /* (B,T,4C) */
        float *dbt4c2;    /* (B,T,4C) */
        float *dbtc;      /* (B,T,C) */
        float *dqkv;      /* (B,T,3C) */
        float *datt;      /* (B,H,T,T) */
        float *dlogits;   /* (B,T,V) */
} model_acts;

/* Hook the trainer can set: called between layers and between the attention and MLP halves
 * of each; returning true aborts the pass (-ECANCELED). The daemon's hook blocks while it is
 * paused (nothing is lost) and returns true only to stop, so a pause takes effect within
 * half a layer's time. */
typedef bool (*model_yield_fn)(void *userdata);

/* Time spent per kind of operation, for benchmarks (seconds, accumulated). */
enum {
        PROF_EMBED,
        PROF_LAYERNORM,
        PROF_MATMUL,
        PROF_ATTENTION,
        PROF_GELU,
        PROF_RESIDUAL,
        PROF_LOSS,
        _PROF_MAX
};
typedef struct {
        double fwd[_PROF_MAX], bwd[_PROF_MAX];
} model_profile;
const char *model_prof_name(int kind);

typedef struct {
        model_layout layout;
        float *params, *grads;
        model_tensors p, g;
        model_acts acts;
        model_yield_fn yield;
        void *yield_userdata;
        model_profile *profile; /* NULL: no timing */
        const uint8_t *targets; /* of the last forward */
        int B, T;               /* of the last forward */
        size_t acts_capacity;   /* floats in acts.arena */
} model;

/* Looks up "tiny", "small" or "medium"; -EINVAL otherwise. */
int model_config_by_name(const char *name, model_config *ret);
/* Checks dimensions make sense (C divisible by H, limits). */
int model_config_validate(const model_config *cfg);
void model_layout_init(model_layout *lay, const model_config *cfg);
void model_tensors_bind(model_tensors *t, const model_layout *lay, float *buf);

/* Allocates params and grads (zeroed) and activations for micro-batches of (B, T),
 * T <= block_size. */
int model_new(const model_config *cfg, int B, int T, model **ret);
void model_free(model *m);

/* GPT-2 initialisation (normal(0, 0.02), residual projections scaled by 1/sqrt(2L),
 * LayerNorm 1/0, biases 0), deterministic in seed. */
void model_init_params(model *m, uint64_t seed);

/* Forward over tokens (B,T). If targets is non-NULL, computes the mean cross-entropy.
 * Returns 0, or -ECANCELED when the yield hook asked to stop. *ret_loss is the mean loss. */
int model_forward(model *m, const uint8_t *tokens, const uint8_t *targets, int B, int T,
                  float *ret_loss);
/* Backward of the last forward (which must have had targets); accumulates into grads with
 * the loss scaled by loss_scale (1/accumulation steps). */
int model_backward(model *m, const uint8_t *tokens, float loss_scale);
void model_zero_grad(model *m);

/* FLOPs of one forward+backward per token: 6*N_matmul + 12*L*T*C (attention, full T×T). */
double model_flops_per_token(const model_config *cfg, int T);
