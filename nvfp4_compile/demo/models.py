"""Small models with random weights for the demo: a Llama-style decoder and an MoE variant.

They are written like the transformers 5 models (RMSNorm, rotary attention, gate-first SwiGLU MLP, a
router + stacked experts block with `gate_up_proj [E, 2I, H]` / `down_proj [E, H, I]`), so quantize_model
sees the same structure a real checkpoint has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyConfig:
    vocab: int = 512
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    experts: int = 0  # 0: dense MLP; > 0: MoE block with that many experts
    top_k: int = 2
    moe_intermediate: int = 256
    eps: float = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads
        self.head_dim = cfg.hidden // cfg.heads
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.heads * self.head_dim, cfg.hidden, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        ang = torch.arange(t, device=x.device).float()[:, None] * self.inv_freq[None, :]
        cos, sin = torch.cat((ang, ang), -1).cos().to(x.dtype), torch.cat((ang, ang), -1).sin().to(x.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """Stacked experts in the transformers 5 form (MixtralExperts / Qwen3MoeExperts): gate_up_proj
    [E, 2I, H] gate rows first, down_proj [E, H, I], forward(hidden_states, top_k_index, top_k_weights).
    gated=False is the non-gated relu2 form (up_proj [E, I, H]). seed: a private generator (tests), else the
    global RNG."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, gated: bool = True, seed: int | None = None):
        super().__init__()
        g = None if seed is None else torch.Generator().manual_seed(seed)
        self.num_experts, self.gated = num_experts, gated
        rows = 2 * intermediate if gated else intermediate
        up = torch.randn(num_experts, rows, hidden, generator=g) * hidden**-0.5
        if gated:
            self.gate_up_proj = nn.Parameter(up)
            self.act_fn = nn.SiLU()
        else:
            self.up_proj = nn.Parameter(up)
            self.act_fn = lambda t: torch.relu(t).square()
        self.down_proj = nn.Parameter(torch.randn(num_experts, hidden, intermediate, generator=g) * intermediate**-0.5)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        w13 = self.gate_up_proj if self.gated else self.up_proj
        for e in range(self.num_experts):
            tok, slot = torch.where(top_k_index == e)
            h = F.linear(hidden_states[tok], w13[e])
            if self.gated:
                gate, up = h.chunk(2, dim=-1)
                h = self.act_fn(gate) * up
            else:
                h = self.act_fn(h)
            y = F.linear(h, self.down_proj[e])
            out.index_add_(0, tok, (y * top_k_weights[tok, slot, None]).to(out.dtype))
        return out


class SparseMoeBlock(nn.Module):
    """Router (softmax, top-k, renormalized) + stacked experts, as Mixtral / Qwen3-MoE do it."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int, gated: bool = True,
                 seed: int | None = None):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden, intermediate, gated, seed)

    def forward(self, x):
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(h).float(), dim=-1)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        return self.experts(h, idx, w).reshape(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = (SparseMoeBlock(cfg.hidden, cfg.moe_intermediate, cfg.experts, cfg.top_k) if cfg.experts
                    else MLP(cfg.hidden, cfg.intermediate))

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyDecoder(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def build(kind: str = "llama", seed: int = 0, **overrides) -> TinyDecoder:
    """A demo model with random weights: kind "llama" (dense SwiGLU) or "moe" (8 experts, top-2)."""
    cfg = TinyConfig(**({"experts": 8} if kind == "moe" else {}), **overrides)
    torch.manual_seed(seed)
    return TinyDecoder(cfg).eval()
