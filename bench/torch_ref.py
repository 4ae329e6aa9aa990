#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""PyTorch reference for bench/train.c: trains the same byte-level GPT-2 (pre-LN, tied
embeddings, GELU tanh, causal attention written out as matmul + mask + softmax, AdamW with
global-norm clipping, float32) on random bytes and prints one machine-readable line:

    TORCH tokens_per_s=<median> min=<tok/s> max=<tok/s> step_ms=<median> steps=<n>
          threads=<n> omp_wait_policy=<value or default> B=<B> T=<T>

Thread count: torch.set_num_threads(n); the caller also sets OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS, since Debian's torch runs OpenBLAS's own threads beside OpenMP's.
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 256
CONFIGS = {
    "tiny": (128, 128, 2, 4),
    "small": (256, 256, 4, 4),
    "medium": (512, 512, 8, 8),
}


class Block(nn.Module):
    def __init__(self, C, H, T, L):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, T, T), persistent=False)
        std = 0.02 / math.sqrt(2 * L)
        for lin in (self.qkv, self.attn_proj, self.fc, self.mlp_proj):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.attn_proj.weight, std=std)
        nn.init.normal_(self.mlp_proj.weight, std=std)

    def attention(self, x):
        B, T, C = x.shape
        hs = C // self.H
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.H, hs).transpose(1, 2)
        k = k.view(B, T, self.H, hs).transpose(1, 2)
        v = v.view(B, T, self.H, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.attn_proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        h = F.gelu(self.fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp_proj(h)


class GPT(nn.Module):
    def __init__(self, T, C, L, H):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, C)
        self.wpe = nn.Embedding(T, C)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.h = nn.ModuleList(Block(C, H, T, L) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied embeddings
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8)


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=0, help="default: the config's block size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="stop timing after this long (at least 2 timed steps)")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args()


def main():
    args = parse_args()
    block, C, L, H = CONFIGS[args.config]
    T = args.T or block
    if T > block or args.B < 1 or args.steps < 1:
        sys.exit("torch_ref: bad shape or step count")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = GPT(block, C, L, H)
    opt = make_optimizer(model)
    data = torch.randint(0, VOCAB, (args.B, T + 1), dtype=torch.long)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    for _ in range(args.warmup):
        train_step(model, opt, x, y)
    times = []
    start = time.perf_counter()
    while len(times) < args.steps:
        t0 = time.perf_counter()
        loss = train_step(model, opt, x, y)
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() - start > args.max_seconds:
            break
    if not math.isfinite(loss.item()):
        sys.exit("torch_ref: loss is not finite")

    tokens = args.B * T
    med = statistics.median(times)
    print(f"TORCH tokens_per_s={tokens / med:.1f} min={tokens / max(times):.1f} "
          f"max={tokens / min(times):.1f} step_ms={med * 1e3:.2f} steps={len(times)} "
          f"threads={torch.get_num_threads()} "
          f"omp_wait_policy={os.environ.get('OMP_WAIT_POLICY', 'default')} "
          f"B={args.B} T={T} loss={loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
