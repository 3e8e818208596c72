#!/usr/bin/env python3
"""The PyTorch peer for `tessera bench --train`: the same shapes, one full step
(forward, backward, AdamW) at a time, best step of N after a warm-up step.

Run it in the same session as Tessera's bench (bench/peer/train_vs_pytorch.sh
alternates the two), so the ratio does not depend on how busy a shared machine
is. Needs Debian's python3-torch (1.13); it is not part of the build or tests.

The models follow llama2.c's model.py (Llama: RMSNorm, interleaved RoPE,
SwiGLU, tied classifier) and nanoGPT's (GPT-2: LayerNorm, tanh GELU, learned
positions, biases, tied classifier), in plain idiomatic PyTorch: PyTorch 1.13
has no fused attention on CPU, so attention is the explicit causal softmax.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    # name: arch, dim, layers, heads, kv heads, hidden, vocab, max context
    "15m": ("llama", 288, 6, 6, 6, 768, 32000, 256),
    "260k": ("llama", 64, 5, 8, 4, 172, 512, 512),
    "gpt2-124m": ("gpt2", 768, 12, 12, 12, 3072, 50257, 1024),
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim, seq, theta=10000.0):
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq).float(), freqs)  # [seq, hd/2]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    # x: [B, T, H, hd], pairs (2i, 2i+1) rotated (interleaved convention)
    xr, xi = x.float().reshape(x.shape[:-1] + (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((xr * c - xi * s, xr * s + xi * c), dim=-1).flatten(3)
    return out.type_as(x)


def causal_attention(q, k, v, mask):
    # q: [B, H, T, hd], k/v: [B, H, T, hd] (KV heads already repeated)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    att = att.masked_fill(mask, float("-inf"))
    att = F.softmax(att.float(), dim=-1).type_as(q)
    return att @ v


class LoRALinear(nn.Module):
    """PEFT's LoRA on a frozen nn.Linear: base(x) + (alpha / r) B(A(x)), A Gaussian, B zero."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / r)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


def add_lora(model, r):
    """Freezes every base parameter and wraps each linear layer of the blocks in LoRALinear."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for name, child in list(block.named_children()):
            if isinstance(child, nn.Linear):
                setattr(block, name, LoRALinear(child, r, 2 * r))
    return [p for n, p in model.named_parameters() if "lora_" in n]


class LlamaBlock(nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.attn_norm, self.ffn_norm = RMSNorm(dim), RMSNorm(dim)
        self.wq = nn.Linear(dim, heads * self.hd, bias=False)
        self.wk = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.wv = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(heads * self.hd, dim, bias=False)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, D = x.shape
        h = self.attn_norm(x)
        q = apply_rope(self.wq(h).view(B, T, self.heads, self.hd), cos, sin)
        k = apply_rope(self.wk(h).view(B, T, self.kv_heads, self.hd), cos, sin)
        v = self.wv(h).view(B, T, self.kv_heads, self.hd)
        rep = self.heads // self.kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
        o = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, D))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class GPT2Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.c_fc = nn.Linear(dim, hidden)
        self.mlp_proj = nn.Linear(hidden, dim)

    def forward(self, x, mask):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, self.hd).transpose(1, 2) for t in (q, k, v))
        o = causal_attention(q, k, v, mask)
        x = x + self.c_proj(o.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Model(nn.Module):
    def __init__(self, shape, seq):
        super().__init__()
        arch, dim, layers, heads, kv, hidden, vocab, ctx = SHAPES[shape]
        self.arch = arch
        self.tok = nn.Embedding(vocab, dim)
        if arch == "llama":
            self.blocks = nn.ModuleList(LlamaBlock(dim, heads, kv, hidden) for _ in range(layers))
            self.norm = RMSNorm(dim)
            cos, sin = rope_tables(dim // heads, seq)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        else:
            self.pos = nn.Embedding(ctx, dim)
            self.blocks = nn.ModuleList(GPT2Block(dim, heads, hidden) for _ in range(layers))
            self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.tok.weight  # tied
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x, y):
        B, T = x.shape
        h = self.tok(x)
        if self.arch == "llama":
            for b in self.blocks:
                h = b(h, self.cos[:T], self.sin[:T], self.mask[:T, :T])
        else:
            h = h + self.pos(torch.arange(T))
            for b in self.blocks:
                h = b(h, self.mask[:T, :T])
        logits = self.out(self.norm(h))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="15m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--lora-rank", type=int, default=0, help="LoRA step: rank r on every linear layer, base frozen")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if min(a.batch, a.seq, a.steps, a.threads) <= 0:
        sys.exit("error: --batch, --seq, --steps and --threads must be positive")
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = Model(a.shape, a.seq)
    # Parameters in matrix products, as tessera counts them: 2-D weights with the
    # tied classifier once, not the embedding gathers (token and position tables).
    n_mm = sum(p.numel() for n_, p in model.named_parameters() if p.dim() >= 2 and not n_.startswith("pos."))
    if a.lora_rank > 0:  # only the adapters train (as `tessera bench --train --lora-rank`)
        opt = torch.optim.AdamW(add_lora(model, a.lora_rank), lr=1e-4, weight_decay=0.0, foreach=True)
    else:
        # Decay on matrices only (as Tessera's default), foreach AdamW (PyTorch's faster CPU path).
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=1e-4, foreach=True)
    vocab = SHAPES[a.shape][6]
    n = a.batch * a.seq
    idx = (torch.arange(n) * 7919 + 13) % vocab
    x = idx.view(a.batch, a.seq)
    y = torch.roll(idx, -1).view(a.batch, a.seq)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(x, y)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    best = float("inf")
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    tok_s = n / best
    res = {"peer": "pytorch", "version": torch.__version__, "shape": a.shape, "precision": a.precision,
           "batch": a.batch, "seq": a.seq, "threads": a.threads, "step_s": round(best, 4),
           "train_tok_s": round(tok_s, 1), "lora_rank": a.lora_rank,
           "train_gflops": round((4.0 if a.lora_rank else 6.0) * n_mm * tok_s / 1e9, 1)}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"pytorch {torch.__version__} {a.shape} {a.precision} batch {a.batch} x {a.seq}: "
              f"step {best:.3f} s, {tok_s:.1f} tokens/s, {res['train_gflops']} GFLOP/s (6 N T)")


if __name__ == "__main__":
    main()
