"""Small models for the nn tests: transformers-5-style stacked experts, an MoE block, and a tiny network
with every case quantize_model must handle (biased linear, router, non-multiple-of-16 layer, lm_head)."""
import torch
import torch.nn.functional as F
from torch import nn


class StackedExperts(nn.Module):
    """The transformers 5 experts form (MixtralExperts / Qwen3MoeExperts): gate_up_proj [E, 2I, H] gate
    rows first, down_proj [E, H, I], forward(hidden_states, top_k_index, top_k_weights)."""

    def __init__(self, num_experts, hidden, inter, gated=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_experts = num_experts
        rows = 2 * inter if gated else inter
        up = torch.randn(num_experts, rows, hidden, generator=g) * hidden**-0.5
        if gated:
            self.gate_up_proj = nn.Parameter(up)
            self.act_fn = nn.SiLU()
        else:
            self.up_proj = nn.Parameter(up)
            self.act_fn = lambda t: torch.relu(t).square()
        self.down_proj = nn.Parameter(torch.randn(num_experts, hidden, inter, generator=g) * inter**-0.5)
        self.gated = gated

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


class MoEBlock(nn.Module):
    def __init__(self, hidden, inter, num_experts, top_k, gated=True, seed=0):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = StackedExperts(num_experts, hidden, inter, gated, seed)

    def forward(self, x):
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(h).float(), dim=-1)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        return self.experts(h, idx, w).reshape(shape)


class TinyNet(nn.Module):
    def __init__(self, hidden=64, inter=32, num_experts=4, top_k=2, vocab=48, gated=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj_in = nn.Linear(hidden, hidden, bias=True)
        self.mlp = MoEBlock(hidden, inter, num_experts, top_k, gated, seed)
        self.narrow = nn.Linear(hidden, 24)
        self.widen = nn.Linear(24, hidden)  # in_features 24: not a multiple of 16, stays floating
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, x):
        h = self.proj_in(x)
        h = h + self.mlp(h)
        h = h + self.widen(self.narrow(h))
        return self.lm_head(h)


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()
