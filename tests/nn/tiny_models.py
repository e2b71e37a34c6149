"""Small models for the nn tests: transformers-5-style stacked experts, an MoE block, and a tiny network
with every case quantize_model must handle (biased linear, router, non-multiple-of-16 layer, lm_head)."""
import torch
from torch import nn

from nvfp4_compile.demo.models import Experts, SparseMoeBlock


# The demo's experts and MoE block are the transformers 5 form these tests need (gated or relu2).
StackedExperts = Experts
MoEBlock = SparseMoeBlock


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
