"""nvfp4::fused_moe: the Blackwell-style NVFP4 mixture-of-experts op (docs/design.md, "Source ops").

    fused_moe(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs,
              activation="silu") -> Tensor (x's shape and dtype)

    x             bf16/fp16/fp32 [M, H]
    topk_ids      int32/int64 [M, k], each in [0, E)
    topk_weights  fp32 or x.dtype [M, k]
    w13           uint8 [E, 2I, H/2] gate rows then up rows ("silu"); [E, I, H/2] for "relu2"
    w13_sf        float8_e4m3fn [E, 2I (or I), H/16], linear layout
    w13_gs        fp32 [E], decode
    w2, w2_sf     uint8 [E, H, I/2], float8_e4m3fn [E, H, I/16]
    w2_gs         fp32 [E], decode
    a13_gs, a2_gs fp32 decode, one value or [E]; both given -> W4A4 (activations quantized with
                  g = 1/a_gs before each GEMM), both None -> W4A16

Per (token, slot) with expert e: h = x @ deq(w13[e]).T in FP32 -> activation -> rounded to x.dtype ->
y = h @ deq(w2[e]).T in FP32 -> out += topk_weight * y in FP32 -> out rounded to x.dtype.
"""
from __future__ import annotations

import torch

from ..formats import BLOCK_SIZE, dequantize_nvfp4, quantize_nvfp4
from .source import FLOAT_DTYPES, check_dtype, check_k, check_shape, define_op, relu2_fp32, silu_and_mul_fp32

OP = "fused_moe"
ACTIVATIONS = {"silu": silu_and_mul_fp32, "relu2": relu2_fp32}
GATED = {"silu": True, "relu2": False}  # silu: w13 = [gate; up] rows (2I); relu2: up rows only (I)


def _check_expert_weight(name: str, w, sf, gs, e, rows, k) -> None:
    """One GEMM's expert stack: w uint8 [E, rows, k/2], sf e4m3 [E, rows, k/16], gs fp32 [E]."""
    check_dtype(OP, name, w, (torch.uint8,))
    check_dtype(OP, f"{name}_sf", sf, (torch.float8_e4m3fn,))
    check_dtype(OP, f"{name}_gs", gs, (torch.float32,))
    check_shape(OP, name, w, (e, rows, k // 2), " ([E, rows, K/2] packed FP4)")
    check_shape(OP, f"{name}_sf", sf, (e, rows, k // BLOCK_SIZE), " ([E, rows, K/16] linear block scales)")
    check_shape(OP, f"{name}_gs", gs, (e,), " (one decode scale per expert)")


def _check_activation_scale(name: str, a_gs, e) -> None:
    check_dtype(OP, name, a_gs, (torch.float32,))
    if a_gs.numel() != 1 and tuple(a_gs.shape) != (e,):
        raise ValueError(f"nvfp4::{OP}: {name} must hold one value or one per expert ({e},), got {tuple(a_gs.shape)}")


def _check_fused_moe(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs, activation):
    """Shape/dtype validation shared by the fake and reference kernels; returns (E, I, w4a4)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"nvfp4::{OP}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    check_dtype(OP, "x", x, FLOAT_DTYPES)
    if x.dim() != 2:
        raise ValueError(f"nvfp4::{OP}: x must be 2-D [M, H], got shape {tuple(x.shape)}")
    m, h = x.shape
    check_k(OP, "x (hidden size H)", h)
    check_dtype(OP, "topk_ids", topk_ids, (torch.int32, torch.int64))
    if topk_ids.dim() != 2 or topk_ids.shape[0] != m:
        raise ValueError(f"nvfp4::{OP}: topk_ids must be [M, k] with M={m}, got shape {tuple(topk_ids.shape)}")
    check_dtype(OP, "topk_weights", topk_weights, (torch.float32,) if x.dtype == torch.float32 else (torch.float32, x.dtype))
    check_shape(OP, "topk_weights", topk_weights, tuple(topk_ids.shape), " (must match topk_ids)")

    check_dtype(OP, "w13", w13, (torch.uint8,))
    if w13.dim() != 3:
        raise ValueError(f"nvfp4::{OP}: w13 must be 3-D [E, 2I or I, H/2], got shape {tuple(w13.shape)}")
    e, rows13 = w13.shape[0], w13.shape[1]
    gated = GATED[activation]
    if gated and rows13 % 2 != 0:
        raise ValueError(f"nvfp4::{OP}: w13 for 'silu' must have 2I rows (gate, up), got {rows13}")
    inter = rows13 // 2 if gated else rows13
    check_k(OP, "w2 (intermediate size I)", inter)
    _check_expert_weight("w13", w13, w13_sf, w13_gs, e, rows13, h)
    _check_expert_weight("w2", w2, w2_sf, w2_gs, e, h, inter)

    if (a13_gs is None) != (a2_gs is None):
        raise ValueError(f"nvfp4::{OP}: give both a13_gs and a2_gs (W4A4) or neither (W4A16)")
    w4a4 = a13_gs is not None
    if w4a4:
        _check_activation_scale("a13_gs", a13_gs, e)
        _check_activation_scale("a2_gs", a2_gs, e)
    return e, inter, w4a4


def _per_expert(name: str, a_gs: torch.Tensor, e: int) -> torch.Tensor:
    """[E] decode scales from a scalar or [E] argument; data-dependent check, so reference kernel only."""
    if not bool((a_gs > 0).all()) or not bool(torch.isfinite(a_gs).all()):
        raise ValueError(f"nvfp4::{OP}: {name} (decode) must be positive and finite, got {a_gs.tolist()}")
    return a_gs.reshape(-1).expand(e) if a_gs.numel() == 1 else a_gs


def _fake_quant(x: torch.Tensor, decode_scale: torch.Tensor) -> torch.Tensor:
    """The FP32 values a W4A4 GEMM sees: x quantized with g = 1/d and dequantized."""
    packed, sf, d = quantize_nvfp4(x, decode_scale)
    return dequantize_nvfp4(packed, sf, d, torch.float32)


def _fused_moe(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs, activation="silu"):
    e, _, w4a4 = _check_fused_moe(
        x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs, activation
    )
    ids = topk_ids.long()
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= e).any())):
        bad = ids[(ids < 0) | (ids >= e)]
        raise ValueError(f"nvfp4::{OP}: topk_ids holds expert ids outside [0, {e}): {bad.unique().tolist()[:8]}")
    if w4a4:
        a13, a2 = _per_expert("a13_gs", a13_gs, e), _per_expert("a2_gs", a2_gs, e)
    act = ACTIVATIONS[activation]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    # One pass per expert that received tokens: gather its (token, slot) pairs, run both GEMMs on them.
    for expert in ids.unique().tolist():
        tokens, slots = (ids == expert).nonzero(as_tuple=True)
        xe = x[tokens]
        a = _fake_quant(xe, a13[expert]) if w4a4 else xe.float()
        hidden = a @ dequantize_nvfp4(w13[expert], w13_sf[expert], w13_gs[expert], torch.float32).T
        hidden = act(hidden).to(x.dtype)
        a = _fake_quant(hidden, a2[expert]) if w4a4 else hidden.float()
        y = a @ dequantize_nvfp4(w2[expert], w2_sf[expert], w2_gs[expert], torch.float32).T
        out.index_add_(0, tokens, y * topk_weights[tokens, slots].float().unsqueeze(-1))
    return out.to(x.dtype)


def _fused_moe_meta(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs, activation="silu"):
    _check_fused_moe(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, a13_gs, a2_gs, activation)
    return x.new_empty(x.shape)


define_op(
    OP,
    "(Tensor x, Tensor topk_ids, Tensor topk_weights, Tensor w13, Tensor w13_sf, Tensor w13_gs, "
    "Tensor w2, Tensor w2_sf, Tensor w2_gs, Tensor? a13_gs, Tensor? a2_gs, str activation=\"silu\") -> Tensor",
    _fused_moe,
    _fused_moe_meta,
)
