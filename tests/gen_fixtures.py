#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Independent PyTorch reference for the C model (kernels/model.c) and AdamW (kernels/adamw.c).

Writes tests/fixtures/tiny_ref.safetensors, which tests/test-reference.c compares against.
Run by hand, from the repository root, with Debian's python3-torch (the interpreter has to be
/usr/bin/python3: a pyenv/venv python3 on PATH usually has no torch):

    /usr/bin/python3 tests/gen_fixtures.py            # writes tests/fixtures/tiny_ref.safetensors
    /usr/bin/python3 tests/gen_fixtures.py --out X    # writes X instead

It never runs at test time. The output is deterministic (no randomness except a fixed numpy seed
for the parameter sample; one torch thread): running it twice gives byte-identical files on the
same torch build.

Model, config "tiny": vocab 256, block size 128, C=128, L=2, H=4 (GPT-2 style, pre-LayerNorm,
GELU (tanh) MLP 4x, tied embeddings, learned positions). Parameters are not stored: both sides
generate them with the "splitmix20-v1" formula below, and metadata `param_sum` / `param_wsum`
(exact float64 sums) let the C side prove it generated the same buffer.

"splitmix20-v1": for flat index i of the parameter buffer (uint64, arithmetic mod 2^64)
    z = i + 0x9e3779b97f4a7c15
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb
    z = z ^ (z >> 31)
    k = z >> 44                                 (20 bits)
    value = offset + (k - 524288) * (scale / 524288)      (exact in float32)
with scale 2^-5, offset 0 for 2-D tensors (wte, wpe, all matrices); scale 2^-3, offset 1 for the
LayerNorm weights; scale 2^-6, offset 0 for all biases (LayerNorm biases included).

Contents of the file (all little-endian; tensors contiguous in this order):
    tokens, targets        I32 (B, T)    B=2, T=64, bytes of a fixed UTF-8 text; targets = next byte
    logits                 F32 (B, T, 256)
    loss                   F32 (1)       mean cross-entropy over all B*T positions
    grad.<name>            F32           d loss / d param, for every parameter view
    adamw.loss             F32 (3)       loss before each of 3 AdamW steps on the same batch
    adamw.grad_norm        F32 (3)       global grad L2 norm before clipping, each step
    adamw.final_loss       F32 (1)       loss after the 3 steps
    adamw.index            I32 (S)       sample of flat parameter indices (sorted) ...
    adamw.value            F32 (S)       ... and their values after the 3 steps
AdamW: torch.optim.AdamW, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on 2-D tensors and 0 on
1-D ones, learning rates 1e-3, 2e-3, 3e-3 for the 3 steps, clip_grad_norm_ over all parameters
before each step with max_norm = 0.5 x the first step's norm (rounded to float32, stored).
Everything stored is computed in float32 (the C engine's precision).

The sample (S = 8192, fixed numpy seed) is drawn only from well-conditioned parameters: AdamW
turns the rounding noise of a gradient that is tiny or changes sign between steps into an O(lr)
change of the parameter, which then perturbs every later gradient, so after 3 steps two correct
float32 implementations disagree by more than 1e-5 on a good part of the parameters (up to
~5e-2 relative). A parameter is eligible when 4 float32 runs (this forward or the independent
one, x torch.optim.AdamW or an llm.c-style AdamW) and 4 float64 runs with noise added to every
gradient all land within tol/10 of a float64 run (see ELIGIBLE_FRACTION_OF_TOL); every view then
contributes 32 indices, the rest is uniform among the eligible ones.

Tolerances used by tests/test-reference.c (TOL below; keep in sync), per compared tensor:
    rel_i = |c_i - ref_i| / max(|ref_i|, floor),  max_i rel_i <= tol
    logits           tol 1e-5, floor 0.5 x max |ref logits|
    loss, adamw.loss, adamw.final_loss, adamw.grad_norm   tol 1e-5 (plain relative)
    grad.<name>      tol 1e-4, floor 0.1 x max |ref| of that view
    adamw.value      tol 1e-5, floor 2^-6 (absolute; the scale of the biases)

Besides writing, the script checks itself and prints: the formula against a pure-Python
splitmix64; the forward and gradients against an independent formulation
(F.layer_norm, F.multi_head_attention_forward, explicit tanh GELU, log-softmax) in float64;
the gradient against a central finite difference along a random direction in float64; its own
AdamW against torch.optim.AdamW in float64; and how far the float32 results stored here are from a
float64 run and from other float32 formulations, under the tolerances the C test uses (it fails
unless they leave at least 4x room, 2x for the leave-one-out AdamW check).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

PARAM_FORMULA = "splitmix20-v1"

CFG = dict(name="tiny", vocab_size=256, block_size=128, n_embd=128, n_layer=2, n_head=4)
B, T = 2, 64
LRS = [1e-3, 2e-3, 3e-3]
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
N_SAMPLE = 8192
MIN_PER_VIEW = 32
SAMPLE_SEED = 20240521
FD_SEED = 7
SIZE_LIMIT = 2_000_000

# Tolerances of tests/test-reference.c (keep in sync): every comparison is
#     rel_i = |c_i - ref_i| / max(|ref_i|, floor),  max_i rel_i <= tol
# with floor = phi * max_j |ref_j| over the tensor (logits; each gradient view separately), or
# an absolute floor (sampled parameters: 2^-6, the scale of the biases). A floor is needed because
# float32 results that come out of cancelling sums (small gradients, logits near 0) carry an
# absolute error set by the size of the summands, not of the result: a 1e-6 absolute floor gives
# relative errors up to ~1e-2 between torch float32 and float64 on this model.
TOL = {  # name: (tol, floor kind, floor value)
    "logits": (1e-5, "max", 0.5),
    "loss": (1e-5, "abs", 0.0),
    "grad": (1e-4, "max", 0.1),
    "adamw.loss": (1e-5, "abs", 0.0),
    "adamw.grad_norm": (1e-5, "abs", 0.0),
    "adamw.value": (1e-5, "abs", 2.0**-6),
}
# AdamW turns the rounding noise of a gradient that is tiny or changes sign between steps into an
# O(lr) change of the parameter, and the parameters that moved differently change every later
# gradient a little: after 3 steps two correct float32 implementations differ by up to ~5e-2
# relative on some parameters. So the sample only holds parameters that are insensitive to that
# noise: a parameter is eligible when, measured with the adamw.value metric, (a) 4 float32 runs
# (2 forward formulations x 2 AdamW formulations) and (b) 4 float64 runs whose gradients get
# Gaussian noise of PERTURB_SIGMA x max |grad| of the view at every step (~4x the typical
# float32 gradient error) all land within tol x ELIGIBLE_FRACTION_OF_TOL of the float64 run.
ELIGIBLE_FRACTION_OF_TOL = 1.0 / 10
PERTURB_SIGMA = 5e-8
PERTURB_SEEDS = (101, 102, 103, 104)

# A fixed English text; includes some multi-byte UTF-8 so tokens >= 128 are exercised.
TEXT = (
    "The café on the corner opened at seven — its owner, a patient naïve optimist, "
    "believed that every morning deserved fresh bread, strong coffee & a kind word. "
    "Customers came for the croissants; they stayed for the conversation."
)


# ---------------------------------------------------------------------------------------------
# Layout and parameters


def layout(cfg):
    """[(name, shape)] in buffer order, and the offsets."""
    C, V, Tb = cfg["n_embd"], cfg["vocab_size"], cfg["block_size"]
    views = [("wte.weight", (V, C)), ("wpe.weight", (Tb, C))]
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        views += [
            (p + "ln_1.weight", (C,)),
            (p + "ln_1.bias", (C,)),
            (p + "attn.qkv.weight", (3 * C, C)),
            (p + "attn.qkv.bias", (3 * C,)),
            (p + "attn.proj.weight", (C, C)),
            (p + "attn.proj.bias", (C,)),
            (p + "ln_2.weight", (C,)),
            (p + "ln_2.bias", (C,)),
            (p + "mlp.fc.weight", (4 * C, C)),
            (p + "mlp.fc.bias", (4 * C,)),
            (p + "mlp.proj.weight", (C, 4 * C)),
            (p + "mlp.proj.bias", (C,)),
        ]
    views += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    out, off = [], 0
    for name, shape in views:
        n = int(np.prod(shape))
        out.append((name, shape, off, n))
        off += n
    return out, off


def is_ln_weight(name):
    return name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))


def scale_offset(name, shape):
    if len(shape) == 2:
        return 2.0**-5, 0.0
    if is_ln_weight(name):
        return 2.0**-3, 1.0
    return 2.0**-6, 0.0


def splitmix20(idx):
    """k (20 bits) for an array of uint64 indices."""
    idx = np.asarray(idx, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = idx + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(44)).astype(np.int64)


def splitmix20_scalar(i):
    """Pure-Python version, to check the vectorised one."""
    M = (1 << 64) - 1
    z = (i + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    z = z ^ (z >> 31)
    return z >> 44


def make_params(views, n_params):
    flat = np.empty(n_params, dtype=np.float32)
    for name, shape, off, n in views:
        scale, offset = scale_offset(name, shape)
        k = splitmix20(np.arange(off, off + n, dtype=np.uint64))
        v64 = offset + (k - 524288).astype(np.float64) * (scale / 524288.0)
        v32 = v64.astype(np.float32)
        assert np.array_equal(v32.astype(np.float64), v64), f"{name}: not exact in float32"
        flat[off : off + n] = v32
    return flat


# ---------------------------------------------------------------------------------------------
# Model: the reference formulation (the one whose float32 results are stored)


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as in GPT-2
    return (x - mean) / torch.sqrt(var + eps) * w + b


def forward(P, tokens, targets, cfg):
    """P: dict name -> tensor. tokens, targets: int64 (B, T). Returns logits (B,T,V), loss."""
    Bn, Tn = tokens.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    hs = C // H
    x = P["wte.weight"][tokens] + P["wpe.weight"][:Tn]
    causal = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for l in range(L):
        p = f"h.{l}."
        h = layer_norm(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])
        qkv = h @ P[p + "attn.qkv.weight"].t() + P[p + "attn.qkv.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(Bn, Tn, H, hs).transpose(1, 2)  # (B,H,T,hs)
        k = k.view(Bn, Tn, H, hs).transpose(1, 2)
        v = v.view(Bn, Tn, H, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~causal, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + y @ P[p + "attn.proj.weight"].t() + P[p + "attn.proj.bias"]
        h = layer_norm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
        h = h @ P[p + "mlp.fc.weight"].t() + P[p + "mlp.fc.bias"]
        h = F.gelu(h, approximate="tanh")
        x = x + h @ P[p + "mlp.proj.weight"].t() + P[p + "mlp.proj.bias"]
    x = layer_norm(x, P["ln_f.weight"], P["ln_f.bias"])
    logits = x @ P["wte.weight"].t()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return logits, loss


def forward_independent(P, tokens, targets, cfg):
    """The same model written with different building blocks, for the cross-check."""
    Bn, Tn = tokens.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    onehot = F.one_hot(tokens, cfg["vocab_size"]).to(P["wte.weight"].dtype)
    x = onehot @ P["wte.weight"] + P["wpe.weight"][torch.arange(Tn)].unsqueeze(0)
    mask = torch.triu(torch.ones(Tn, Tn, dtype=torch.bool), diagonal=1)  # True = masked
    for l in range(L):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps=1e-5)
        hT = h.transpose(0, 1)  # (T,B,C)
        y, _ = F.multi_head_attention_forward(
            hT, hT, hT, C, H,
            P[p + "attn.qkv.weight"], P[p + "attn.qkv.bias"],
            None, None, False, 0.0,
            P[p + "attn.proj.weight"], P[p + "attn.proj.bias"],
            training=False, need_weights=False, attn_mask=mask,
        )
        x = x + y.transpose(0, 1)
        h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps=1e-5)
        h = F.linear(h, P[p + "mlp.fc.weight"], P[p + "mlp.fc.bias"])
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
        x = x + F.linear(h, P[p + "mlp.proj.weight"], P[p + "mlp.proj.bias"])
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps=1e-5)
    logits = torch.einsum("btc,vc->btv", x, P["wte.weight"])
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    loss = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum() / (Bn * Tn)
    return logits, loss


def make_leaves(flat, views, dtype):
    t = torch.from_numpy(flat.astype(np.float64)).to(dtype)
    P = {}
    for name, shape, off, n in views:
        P[name] = t[off : off + n].view(shape).clone().requires_grad_(True)
    return P


def grads_and_logits(flat, views, tokens, targets, dtype, fwd=forward):
    P = make_leaves(flat, views, dtype)
    logits, loss = fwd(P, tokens, targets, CFG)
    loss.backward()
    return P, logits.detach(), loss.detach(), {k: v.grad.detach().clone() for k, v in P.items()}


# ---------------------------------------------------------------------------------------------
# AdamW


# Mistakes an AdamW implementation could make; the stored data has to tell each one apart.
ADAMW_MUTANTS = ("no clipping", "clip at 1.0", "beta2 0.999", "eps 1e-6", "no bias correction",
                 "bias correction t+1", "decay on all", "no decay", "decay after update",
                 "learning rates shifted")


def adamw_run(flat, views, tokens, targets, dtype, max_norm=None, fwd=forward, opt="torch",
              clip_eps=0.0, mutant=None):
    """3 AdamW steps on the same batch.

    opt="torch": torch.optim.AdamW + clip_grad_norm_ (the stored reference).
    opt="manual": the llm.c-style update a C implementation would write, in float32 scalars:
        p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), clip scale max_norm / norm (norm in
        double, + clip_eps: torch adds 1e-6). Used to cross-check torch.optim.AdamW in float64
        and to measure how far another correct float32 implementation lands; mutant (one of
        ADAMW_MUTANTS) plants a mistake in it.
    max_norm=None: 0.5 x the first step's norm, rounded to float32.
    Returns (losses, norms, final_loss, params after as float64 numpy, max_norm)."""
    P = make_leaves(flat, views, dtype)
    plist = [P[name] for name, *_ in views]
    decay = [P[name] for name, shape, *_ in views if len(shape) == 2]
    no_decay = [P[name] for name, shape, *_ in views if len(shape) != 2]
    if opt == "torch":
        optim = torch.optim.AdamW(
            [dict(params=decay, weight_decay=WEIGHT_DECAY),
             dict(params=no_decay, weight_decay=0.0)],
            lr=LRS[0], betas=BETAS, eps=EPS, foreach=False,
        )
    else:
        ms = [torch.zeros_like(p) for p in plist]
        vs = [torch.zeros_like(p) for p in plist]
        f = np.float32 if dtype == torch.float32 else np.float64
    losses, norms = [], []
    for step, lr in enumerate(LRS):
        if mutant == "learning rates shifted":
            lr = LRS[step - 1] if step > 0 else LRS[0] / 2
        for p in plist:
            p.grad = None
        _, loss = fwd(P, tokens, targets, CFG)
        loss.backward()
        if max_norm is None:
            assert step == 0
            with torch.no_grad():
                n0 = torch.norm(torch.stack([torch.norm(p.grad, 2.0) for p in plist]), 2.0)
            max_norm = float(np.float32(0.5 * float(n0)))
        if opt == "torch":
            norm = float(torch.nn.utils.clip_grad_norm_(plist, max_norm))
            for g in optim.param_groups:
                g["lr"] = lr
            optim.step()
        else:
            t = step + 1
            norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in plist))
            clip = {"no clipping": math.inf, "clip at 1.0": 1.0}.get(mutant, max_norm)
            scale = f(min(1.0, clip / (norm + clip_eps)))
            beta1, beta2 = BETAS[0], 0.999 if mutant == "beta2 0.999" else BETAS[1]
            eps = 1e-6 if mutant == "eps 1e-6" else EPS
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            if mutant == "no bias correction":
                bc1 = bc2 = 1.0
            elif mutant == "bias correction t+1":
                bc1, bc2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
            b1, b2 = f(beta1), f(beta2)
            with torch.no_grad():
                for (name, shape, *_), p, m, v in zip(views, plist, ms, vs):
                    g = p.grad * scale
                    m.mul_(b1).add_((f(1) - b1) * g)
                    v.mul_(b2).add_((f(1) - b2) * g * g)
                    mhat = m / f(bc1)
                    vhat = v / f(bc2)
                    decays = {"decay on all": True, "no decay": False}.get(mutant, len(shape) == 2)
                    wd = f(WEIGHT_DECAY if decays else 0.0)
                    if mutant == "decay after update":
                        p.sub_(f(lr) * (mhat / (torch.sqrt(vhat) + f(eps))))
                        p.mul_(f(1) - f(lr) * wd)
                    else:
                        p.sub_(f(lr) * (mhat / (torch.sqrt(vhat) + f(eps)) + wd * p))
        losses.append(float(loss))
        norms.append(norm)
    with torch.no_grad():
        _, final = fwd(P, tokens, targets, CFG)
        after = torch.cat([P[name].detach().reshape(-1) for name, *_ in views])
    return losses, norms, float(final), after.to(torch.float64).numpy(), max_norm


def adamw_numpy(flat, views, tokens, targets, max_norm, sigma=0.0, seed=0):
    """3 AdamW steps in float64 numpy (torch only for the gradients), with Gaussian noise of
    sigma x max |grad| of each view added to every gradient (before clipping) when sigma > 0.
    Returns the parameters after the steps."""
    rng = np.random.default_rng(seed)
    n = len(flat)
    p = flat.astype(np.float64)
    m, v = np.zeros(n), np.zeros(n)
    wd = np.zeros(n)
    for name, shape, off, k in views:
        if len(shape) == 2:
            wd[off : off + k] = WEIGHT_DECAY
    for t, lr in enumerate(LRS, 1):
        pt = torch.from_numpy(p.copy())
        P = {name: pt[off : off + k].view(shape).clone().requires_grad_(True)
             for name, shape, off, k in views}
        _, loss = forward(P, tokens, targets, CFG)
        loss.backward()
        g = torch.cat([P[name].grad.reshape(-1) for name, *_ in views]).numpy()
        if sigma > 0:
            noise = rng.standard_normal(n)
            for name, shape, off, k in views:
                noise[off : off + k] *= sigma * np.abs(g[off : off + k]).max()
            g = g + noise
        norm = math.sqrt(float(g @ g))
        g = g * min(1.0, max_norm / (norm + 1e-6))
        p *= 1.0 - lr * wd
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        p -= lr / (1 - BETAS[0] ** t) * m / (np.sqrt(v) / math.sqrt(1 - BETAS[1] ** t) + EPS)
    return p


def make_sample(views, n_params, eligible):
    """N_SAMPLE sorted flat indices among the eligible ones: MIN_PER_VIEW from every view (all of
    it if smaller), the rest uniform over the remaining eligible indices. Fixed seed."""
    rng = np.random.default_rng(SAMPLE_SEED)
    chosen = []
    for name, shape, off, n in views:
        cand = off + np.flatnonzero(eligible[off : off + n])
        want = min(MIN_PER_VIEW, n)
        assert len(cand) >= want, f"{name}: only {len(cand)} well-conditioned values"
        chosen.extend(rng.choice(cand, want, replace=False).tolist())
    chosen = np.array(sorted(chosen), dtype=np.int64)
    rest = np.setdiff1d(np.flatnonzero(eligible), chosen)
    extra = rng.choice(rest, N_SAMPLE - len(chosen), replace=False)
    idx = np.sort(np.concatenate([chosen, extra]))
    assert len(idx) == N_SAMPLE and len(np.unique(idx)) == N_SAMPLE
    return idx


# ---------------------------------------------------------------------------------------------
# safetensors (written by hand)

DTYPES = {np.dtype("<f4"): "F32", np.dtype("<i4"): "I32"}


def st_write(path, tensors, metadata):
    """tensors: list of (name, np.ndarray of float32/int32). Data laid out in list order."""
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        dt = DTYPES[le.dtype]
        data = le.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def st_read(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = buf[8 + n :]
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        dt = {"F32": "<f4", "I32": "<i4"}[h["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(h["shape"])
    return meta, out, len(buf)


# ---------------------------------------------------------------------------------------------


def rel_err(got, want, key):
    """Max of |got - want| / max(|want|, floor) as the C test computes it; (max rel, index)."""
    tol, kind, val = TOL[key]
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    floor = val * np.abs(want).max() if kind == "max" else val
    rel = np.abs(got - want) / np.maximum(np.abs(want), floor)
    i = int(np.argmax(rel))
    return float(rel[i]), i


def check(what, got, want, key, margin=4.0):
    """Asserts got is within tol/margin of want under the C test's metric, and prints it."""
    tol = TOL[key][0]
    r, i = rel_err(got, want, key)
    flag = "" if r <= tol / margin else "  <-- too close to the tolerance"
    print(f"  {what:36s} max rel {r:.2e} at {i:6d}  (tol {tol:g}){flag}")
    return r <= tol / margin


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "fixtures", "tiny_ref.safetensors"))
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)  # nothing random uses it

    views, n_params = layout(CFG)
    assert n_params == 445952, n_params
    view_names = [v[0] for v in views]

    # -- parameters
    for i in (0, 1, 2, 12345, n_params - 1, 2**40 + 3):
        assert int(splitmix20(np.array([i], dtype=np.uint64))[0]) == splitmix20_scalar(i), i
    flat = make_params(views, n_params)
    param_sum = float(np.sum(flat.astype(np.float64)))
    weights = (np.arange(n_params, dtype=np.int64) % 251 + 1).astype(np.float64)
    param_wsum = float(np.sum(flat.astype(np.float64) * weights))
    # Every value is a multiple of 2^-25 below 2 in magnitude, so both sums are exact in float64
    # whatever the summation order: check against integer arithmetic.
    ints = (flat.astype(np.float64) * 2.0**25).astype(np.int64)
    assert np.array_equal(ints.astype(np.float64), flat.astype(np.float64) * 2.0**25)
    assert int(ints.sum()) * 2.0**-25 == param_sum
    assert int((ints * (np.arange(n_params) % 251 + 1)).sum()) * 2.0**-25 == param_wsum
    print(f"params: {n_params} floats, {PARAM_FORMULA}, sum {param_sum!r}, wsum {param_wsum!r}")
    print(f"  first values: {flat[:4].tolist()}")

    # -- batch
    raw = TEXT.encode("utf-8")
    assert len(raw) >= B * T + 1
    data = np.frombuffer(raw[: B * T + 1], dtype=np.uint8).astype(np.int64)
    tok_np = np.stack([data[b * T : b * T + T] for b in range(B)])
    tgt_np = np.stack([data[b * T + 1 : b * T + T + 1] for b in range(B)])
    assert (tok_np >= 128).any() and (tgt_np >= 128).any()
    tokens, targets = torch.from_numpy(tok_np), torch.from_numpy(tgt_np)

    # -- forward/backward in float32 (stored) and float64 (to measure the float32 noise)
    _, logits32, loss32, g32 = grads_and_logits(flat, views, tokens, targets, torch.float32)
    _, logits64, loss64, g64 = grads_and_logits(flat, views, tokens, targets, torch.float64)
    print(f"loss {float(loss32)!r} (float64 {float(loss64)!r}, ln 256 = {math.log(256):.6f})")

    # -- cross-check against the independent formulation (float64)
    _, li, lossi, gi = grads_and_logits(flat, views, tokens, targets, torch.float64,
                                        fwd=forward_independent)
    d_logits = float((li - logits64).abs().max())
    d_loss = abs(float(lossi) - float(loss64))
    d_grad = max(float(((gi[k] - g64[k]).abs().max()) / (g64[k].abs().max())) for k in g64)
    print(f"cross-check vs independent formulation (float64): max |dlogits| {d_logits:.3e}, "
          f"|dloss| {d_loss:.3e}, max grad diff / view max {d_grad:.3e}")
    assert d_logits < 1e-12 and d_loss < 1e-12 and d_grad < 1e-10

    # -- finite differences along a random direction (float64)
    rng = np.random.default_rng(FD_SEED)
    d = rng.standard_normal(n_params)
    d /= np.linalg.norm(d)  # unit direction: the O(h^2) truncation error shrinks 100x per 10x h
    gflat = torch.cat([g64[k].reshape(-1) for k in view_names]).numpy()
    analytic = float(gflat @ d)
    h = 1e-4
    def loss_at(vec):
        P = {}
        t = torch.from_numpy(vec)
        for name, shape, off, n in views:
            P[name] = t[off : off + n].view(shape)
        with torch.no_grad():
            return float(forward(P, tokens, targets, CFG)[1])
    base = flat.astype(np.float64)
    fd = (loss_at(base + h * d) - loss_at(base - h * d)) / (2 * h)
    print(f"finite difference (float64, h={h}): {fd!r} vs analytic {analytic!r}, "
          f"rel {abs(fd - analytic) / abs(analytic):.3e}")
    assert abs(fd - analytic) / abs(analytic) < 1e-7

    # -- how far other correct float32 computations land, under the C test's metric
    ok = True
    print("float32 stored vs float64, and vs an independent float32 formulation:")
    _, li32, lossi32, gi32 = grads_and_logits(flat, views, tokens, targets, torch.float32,
                                              fwd=forward_independent)
    ok &= check("logits vs f64", logits32, logits64, "logits")
    ok &= check("logits vs indep f32", li32, logits32, "logits")
    ok &= check("loss vs f64", [float(loss32)], [float(loss64)], "loss")
    ok &= check("loss vs indep f32", [float(lossi32)], [float(loss32)], "loss")
    for k in view_names:
        ok &= check(f"grad.{k} vs f64", g32[k], g64[k], "grad")
        ok &= check(f"grad.{k} vs indep f32", gi32[k], g32[k], "grad")

    # -- AdamW: the stored run, a float64 run and 3 other float32 implementations
    runs = {}
    runs["torch"] = adamw_run(flat, views, tokens, targets, torch.float32)
    max_norm = runs["torch"][4]
    runs["f64"] = adamw_run(flat, views, tokens, targets, torch.float64, max_norm)
    runs["f64 manual"] = adamw_run(flat, views, tokens, targets, torch.float64, max_norm,
                                   opt="manual", clip_eps=1e-6)
    runs["indep"] = adamw_run(flat, views, tokens, targets, torch.float32, max_norm,
                              fwd=forward_independent)
    runs["manual"] = adamw_run(flat, views, tokens, targets, torch.float32, max_norm, opt="manual")
    runs["indep manual"] = adamw_run(flat, views, tokens, targets, torch.float32, max_norm,
                                     fwd=forward_independent, opt="manual")
    losses, norms, final, after32, _ = runs["torch"]
    after64 = runs["f64"][3]
    assert losses[0] == float(loss32)
    print(f"adamw: max_norm {max_norm!r}, losses {losses}, norms {norms}, final {final!r}")
    assert all(n > max_norm for n in norms), "clipping should be active on every step"
    d_opt = float(np.abs(runs["f64 manual"][3] - after64).max())
    d_np = float(np.abs(adamw_numpy(flat, views, tokens, targets, max_norm) - after64).max())
    print(f"  llm.c-style AdamW, numpy AdamW vs torch.optim.AdamW in float64: "
          f"max |dparam| {d_opt:.3e}, {d_np:.3e}")
    assert d_opt < 1e-12 and d_np < 1e-12

    tol_p, _, floor_p = TOL["adamw.value"]
    f32_runs = ("torch", "indep", "manual", "indep manual")
    dev = {name: np.abs(runs[name][3] - after64) / np.maximum(np.abs(after64), floor_p)
           for name in f32_runs}
    limit = tol_p * ELIGIBLE_FRACTION_OF_TOL
    eligible = np.max(np.stack([dev[name] for name in f32_runs]), axis=0) <= limit
    n_f32 = int(eligible.sum())
    for seed in PERTURB_SEEDS:
        pert = adamw_numpy(flat, views, tokens, targets, max_norm, PERTURB_SIGMA, seed)
        eligible &= np.abs(pert - after64) / np.maximum(np.abs(after64), floor_p) <= limit
    # Leave-one-out: how a float32 run that took no part in the selection fares against the
    # stored values over everything the other runs select (all parameters, not just the sample).
    print("adamw.value leave-one-out (selection by the other runs, all selected parameters):")
    for out in f32_runs[1:]:
        sel = np.max(np.stack([dev[name] for name in f32_runs if name != out]), axis=0) <= limit
        ok &= check(f"{out} vs stored ({int(sel.sum())} params)", runs[out][3][sel],
                    after32[sel], "adamw.value", margin=2.0)
    print(f"  well-conditioned parameters (within {limit:g} of float64): {n_f32} of {n_params} "
          f"for the float32 runs, {int(eligible.sum())} also with gradient noise "
          f"{PERTURB_SIGMA:g} x view max")
    idx = make_sample(views, n_params, eligible)
    value = after32[idx].astype(np.float32)

    print("adamw, float32 stored vs float64 and vs other float32 implementations:")
    for name in ("f64", "indep", "manual", "indep manual"):
        L, N, Fl, A, _ = runs[name]
        ok &= check(f"adamw.loss vs {name}", L, losses, "adamw.loss")
        ok &= check(f"adamw.grad_norm vs {name}", N, norms, "adamw.grad_norm")
        ok &= check(f"adamw.final_loss vs {name}", [Fl], [final], "adamw.loss")
        ok &= check(f"adamw.value vs {name}", A[idx], value, "adamw.value")
    if not ok:
        sys.exit("error: float32 noise is too close to the C test's tolerances")

    # -- and the same checks catch plausible AdamW mistakes (margin: how many times the tolerance)
    print("adamw mutants (each must fail the C test's checks):")
    for mutant in ADAMW_MUTANTS:
        L, N, Fl, A, _ = adamw_run(flat, views, tokens, targets, torch.float32, max_norm,
                                   opt="manual", mutant=mutant)
        worst_l = max(rel_err(L + [Fl], losses + [final], "adamw.loss")[0] / TOL["adamw.loss"][0],
                      rel_err(N, norms, "adamw.grad_norm")[0] / TOL["adamw.grad_norm"][0])
        worst_p = rel_err(A[idx], value, "adamw.value")[0] / tol_p
        print(f"  {mutant:24s} losses/norms {worst_l:9.2f} x tol, "
              f"sampled params {worst_p:9.2f} x tol")
        assert max(worst_l, worst_p) > 2.0, f"AdamW mutant '{mutant}' goes unnoticed"

    # -- write
    tensors = [
        ("tokens", tok_np.astype(np.int32)),
        ("targets", tgt_np.astype(np.int32)),
        ("logits", logits32.numpy().astype(np.float32)),
        ("loss", np.array([float(loss32)], dtype=np.float32)),
    ]
    for k in view_names:
        tensors.append(("grad." + k, g32[k].numpy().astype(np.float32)))
    tensors += [
        ("adamw.loss", np.array(losses, dtype=np.float32)),
        ("adamw.grad_norm", np.array(norms, dtype=np.float32)),
        ("adamw.final_loss", np.array([final], dtype=np.float32)),
        ("adamw.index", idx.astype(np.int32)),
        ("adamw.value", value),
    ]
    meta = {
        "generator": "tests/gen_fixtures.py (run by hand with /usr/bin/python3; see its docstring)",
        "format_version": "1",
        "config": CFG["name"],
        "vocab_size": str(CFG["vocab_size"]),
        "block_size": str(CFG["block_size"]),
        "n_embd": str(CFG["n_embd"]),
        "n_layer": str(CFG["n_layer"]),
        "n_head": str(CFG["n_head"]),
        "n_params": str(n_params),
        "B": str(B),
        "T": str(T),
        "param_formula": PARAM_FORMULA,
        "param_sum": repr(param_sum),
        "param_wsum": repr(param_wsum),
        "param_wsum_weights": "(i % 251) + 1",
        "layernorm_eps": "1e-05",
        "gelu": "tanh",
        "lrs": ",".join(repr(x) for x in LRS),
        "beta1": repr(BETAS[0]),
        "beta2": repr(BETAS[1]),
        "eps": repr(EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "weight_decay_on": "2-D tensors only",
        "max_norm": repr(max_norm),
        "adamw_steps": str(len(LRS)),
        "adamw_sample": f"{N_SAMPLE} well-conditioned indices, >= {MIN_PER_VIEW} per view, "
                        f"numpy seed {SAMPLE_SEED}",
        "tolerances": "rel=|c-ref|/max(|ref|,floor): logits 1e-5 floor 0.5*max|ref|; "
                      "losses, norms 1e-5; grads 1e-4 floor 0.1*max|ref view|; "
                      "adamw.value 1e-5 floor 2^-6",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    st_write(args.out, tensors, meta)

    # -- read back
    meta2, got, size = st_read(args.out)
    assert meta2 == meta
    for name, arr in tensors:
        assert np.array_equal(got[name], arr), name
    print(f"wrote {args.out}: {len(tensors)} tensors, {size} bytes")
    if size >= SIZE_LIMIT:
        sys.exit(f"error: {args.out} is {size} bytes, limit {SIZE_LIMIT}")


if __name__ == "__main__":
    main()
