"""NVFP4Experts: drop-in NVFP4 replacement for transformers 5 stacked-expert modules.

transformers 5 MoE models (MixtralExperts, Qwen3MoeExperts, NemotronHExperts, ...) keep all experts in two
3-D parameters and are called as `experts(hidden_states [M, H], top_k_index [M, k], top_k_weights [M, k])`:
    gated (SwiGLU):  gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I], act_fn = silu
    non-gated:       up_proj [E, I, H], down_proj [E, H, I], act_fn = relu^2
Layout flags set by transformers' `use_experts_implementation` (is_transposed, has_bias, is_concatenated,
has_post_expert_norm) mark variants this module does not cover; describe_experts says which.

Buffers (the fused_moe operands, decode-convention scales):
    w13 uint8 [E, 2I (or I), H/2], w13_scale e4m3 [E, 2I, H/16], w13_scale_2 fp32 [E]
    w2  uint8 [E, H, I/2],         w2_scale  e4m3 [E, H, I/16],  w2_scale_2  fp32 [E]
    a13_scale, a2_scale fp32 [E]   activation decode scales, act="nvfp4" (W4A4) only
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..formats import BLOCK_SIZE
from ..ops.moe import GATED
from .quant_state import QuantizedBuffers, check_act, input_scale_from_amax, quantize_weight

ACTIVATIONS = ("silu", "relu2")  # silu: gated SwiGLU; relu2: non-gated relu(x)^2


@dataclass(frozen=True)
class FloatExperts:
    """A recognized floating stacked-experts module: its sizes and weights in the NVFP4Experts layout."""

    num_experts: int
    hidden_dim: int
    intermediate_dim: int
    activation: str
    w13: torch.Tensor  # [E, 2I or I, H]
    w2: torch.Tensor  # [E, H, I]


def is_experts_module(module) -> bool:
    """Structural test: 3-D `down_proj` plus 3-D `gate_up_proj` or `up_proj` tensors (not submodules)."""
    down = getattr(module, "down_proj", None)
    up = getattr(module, "gate_up_proj", getattr(module, "up_proj", None))
    return isinstance(down, torch.Tensor) and isinstance(up, torch.Tensor) and down.dim() == 3 and up.dim() == 3


def probe_activation(act_fn) -> str | None:
    """Identify act_fn by its values on a fixed grid: 'silu', 'relu2' or None."""
    x = torch.linspace(-8.0, 8.0, 129)
    try:
        y = act_fn(x)
    except Exception:  # noqa: BLE001  an activation we cannot call on a CPU tensor is one we do not know
        return None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return None
    if torch.allclose(y, F.silu(x), rtol=1e-5, atol=1e-6):
        return "silu"
    if torch.allclose(y, torch.relu(x).square(), rtol=1e-5, atol=1e-6):
        return "relu2"
    return None


def describe_experts(module) -> FloatExperts:
    """Read a transformers-style stacked experts module; ValueError says why one is not supported."""
    if not is_experts_module(module):
        raise ValueError("not a stacked experts module (needs 3-D down_proj and gate_up_proj or up_proj)")
    for flag, bad in (("is_transposed", True), ("has_bias", True), ("is_concatenated", False), ("has_post_expert_norm", True)):
        if getattr(module, flag, not bad) == bad:
            raise ValueError(f"experts layout {flag}={bad} is not supported")
    gated = isinstance(getattr(module, "gate_up_proj", None), torch.Tensor)
    w13 = module.gate_up_proj if gated else module.up_proj
    w2 = module.down_proj
    if not (w13.is_floating_point() and w2.is_floating_point()):
        raise ValueError(f"expert weights are not floating ({w13.dtype}, {w2.dtype})")
    activation = probe_activation(getattr(module, "act_fn", None))
    if activation is None or GATED[activation] != gated:
        kind = "gated (gate_up_proj)" if gated else "non-gated (up_proj)"
        raise ValueError(f"unsupported activation {getattr(module, 'act_fn', None)!r} for {kind} experts "
                         "(supported: silu with gate_up_proj, relu2 with up_proj)")
    e, rows, h = w13.shape
    inter = rows // 2 if gated else rows
    if gated and rows % 2:
        raise ValueError(f"gate_up_proj has an odd number of rows {rows}")
    if tuple(w2.shape) != (e, h, inter):
        raise ValueError(f"down_proj shape {tuple(w2.shape)} does not match {(e, h, inter)} from {tuple(w13.shape)}")
    for what, size in (("hidden size", h), ("intermediate size", inter)):
        if size % BLOCK_SIZE:
            raise ValueError(f"{what} {size} is not a multiple of {BLOCK_SIZE}")
    return FloatExperts(e, h, inter, activation, w13.detach(), w2.detach())


def _quantize_stack(w: torch.Tensor, what: str):
    """Quantize each expert's [rows, K] matrix with its own per-tensor scale."""
    parts = [quantize_weight(w[e], f"{what}[{e}]") for e in range(w.shape[0])]
    return (torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts]))


class NVFP4Experts(QuantizedBuffers):
    def __init__(self, num_experts: int, hidden_dim: int, intermediate_dim: int, activation: str = "silu",
                 act: str = "nvfp4", device=None):
        super().__init__()
        check_act(act)
        if activation not in ACTIVATIONS:
            raise ValueError(f"NVFP4Experts: activation must be one of {ACTIVATIONS}, got {activation!r}")
        for what, size in (("hidden_dim", hidden_dim), ("intermediate_dim", intermediate_dim)):
            if size % BLOCK_SIZE:
                raise ValueError(f"NVFP4Experts: {what}={size} is not a multiple of {BLOCK_SIZE} (the NVFP4 block size)")
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden_dim, intermediate_dim
        self.activation, self.act = activation, act
        e, h, i = num_experts, hidden_dim, intermediate_dim
        rows = 2 * i if GATED[activation] else i
        kw = dict(device=device)
        self.register_buffer("w13", torch.zeros(e, rows, h // 2, dtype=torch.uint8, **kw))
        self.register_buffer("w13_scale", torch.zeros(e, rows, h // BLOCK_SIZE, dtype=torch.float8_e4m3fn, **kw))
        self.register_buffer("w13_scale_2", torch.ones(e, dtype=torch.float32, **kw))
        self.register_buffer("w2", torch.zeros(e, h, i // 2, dtype=torch.uint8, **kw))
        self.register_buffer("w2_scale", torch.zeros(e, h, i // BLOCK_SIZE, dtype=torch.float8_e4m3fn, **kw))
        self.register_buffer("w2_scale_2", torch.ones(e, dtype=torch.float32, **kw))
        if act == "nvfp4":
            self.register_buffer("a13_scale", torch.ones(e, dtype=torch.float32, **kw))
            self.register_buffer("a2_scale", torch.ones(e, dtype=torch.float32, **kw))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        w4a4 = self.act == "nvfp4"
        return torch.ops.nvfp4.fused_moe(
            hidden_states, top_k_index, top_k_weights,
            self.w13, self.w13_scale, self.w13_scale_2,
            self.w2, self.w2_scale, self.w2_scale_2,
            self.a13_scale if w4a4 else None, self.a2_scale if w4a4 else None,
            self.activation,
        )  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_experts(cls, module, act: str = "nvfp4", a13_amax=None, a2_amax=None):
        """Quantize a transformers-style experts module (each expert with its own per-tensor scales).

        a13_amax / a2_amax: calibrated |x| max of the expert inputs and the down-projection inputs (scalar
        or [E], see nn.calibrate); None -> DEFAULT_INPUT_SCALE. Used only for act="nvfp4".
        """
        info = describe_experts(module)
        m = cls(info.num_experts, info.hidden_dim, info.intermediate_dim, info.activation, act, device=info.w13.device)
        for prefix, w in (("w13", info.w13), ("w2", info.w2)):
            q, sf, d = _quantize_stack(w, f"NVFP4Experts.from_experts: {prefix}")
            getattr(m, prefix).copy_(q)
            getattr(m, f"{prefix}_scale").copy_(sf)
            getattr(m, f"{prefix}_scale_2").copy_(d)
        if act == "nvfp4":
            m.a13_scale.copy_(input_scale_from_amax(a13_amax, (info.num_experts,)))
            m.a2_scale.copy_(input_scale_from_amax(a2_amax, (info.num_experts,)))
        return m

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}, "
            f"activation={self.activation!r}, act={self.act!r}"
        )
