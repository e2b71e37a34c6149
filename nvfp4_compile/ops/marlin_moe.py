"""nvfp4::marlin_moe: W4A16 mixture of experts on Marlin-repacked expert stacks (docs/design.md, "Target ops").

    marlin_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size,
               gemm="auto")

    x             bf16/fp16 [M, H]
    topk_ids      int32/int64 [M, k]; topk_weights fp32 or x.dtype [M, k]
    w13_q, w13_s  marlin_repack of w13 [E, 2I, H/2] ("silu", gate rows first) or [E, I, H/2] ("relu2")
    w13_gs        fp32 [E] decode
    w2_q, w2_s    marlin_repack of w2 [E, H, I/2];  w2_gs fp32 [E] decode
    inter_size    I (logical; the repacked stacks are padded)
    gemm          "auto" | "marlin" | "dequant": the CUDA tactic (ops/moe_tactics.py; unused on the CPU)
    -> [M, H] x.dtype

Numerics are fused_moe's W4A16 path exactly (FP32 GEMMs, activation rounded to x.dtype, FP32 top-k sum,
one final rounding): the reference kernel un-repacks the stacks (formats.marlin, which dequantize to the
same values as the originals) and runs fused_moe's reference on them. CUDA runs the tactic `gemm` names or
"auto" selects (ops/moe_tactics.py: the csrc/moe kernels with one of their tiles, or dequantize + grouped
GEMM; docs/moe.md) when the extension is built, else the same reference. Both CUDA tactics round the first
GEMM's output and the second GEMM's per-slot output to x.dtype (the reference keeps them in FP32): close, not
bit-identical. They never sync with the host, so they cannot raise on expert ids outside [0, E): those slots
add nothing.
"""
from __future__ import annotations

import torch

from ..formats.marlin import check_layout, marlin_unrepack_reference
from . import moe_tactics
from .moe import ACTIVATIONS, GATED, _fused_moe
from .source import check_dtype, check_shape

OP = "marlin_moe"
GEMM_CHOICES = ("auto", "marlin", "dequant")


def _check_marlin_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size,
                      gemm="auto"):
    """Shape/dtype validation shared by the fake and reference kernels; returns (E, H, rows of w13)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"nvfp4::{OP}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if gemm not in GEMM_CHOICES:
        raise ValueError(f"nvfp4::{OP}: gemm must be one of {GEMM_CHOICES}, got {gemm!r}")
    check_dtype(OP, "x", x, (torch.bfloat16, torch.float16))
    if x.dim() != 2:
        raise ValueError(f"nvfp4::{OP}: x must be 2-D [M, H], got shape {tuple(x.shape)}")
    m, h = x.shape
    check_dtype(OP, "topk_ids", topk_ids, (torch.int32, torch.int64))
    if topk_ids.dim() != 2 or topk_ids.shape[0] != m:
        raise ValueError(f"nvfp4::{OP}: topk_ids must be [M, k] with M={m}, got shape {tuple(topk_ids.shape)}")
    check_dtype(OP, "topk_weights", topk_weights, (torch.float32, x.dtype))
    check_shape(OP, "topk_weights", topk_weights, tuple(topk_ids.shape), " (must match topk_ids)")
    if inter_size < 1:
        raise ValueError(f"nvfp4::{OP}: inter_size must be positive, got {inter_size}")
    rows13 = 2 * inter_size if GATED[activation] else inter_size
    try:
        lead13 = check_layout(w13_q, w13_s, rows13, h, f"nvfp4::{OP} (w13)")
        lead2 = check_layout(w2_q, w2_s, h, inter_size, f"nvfp4::{OP} (w2)")
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc)) from None
    if len(lead13) != 1 or lead13 != lead2:
        raise ValueError(
            f"nvfp4::{OP}: w13_q and w2_q must be expert stacks [E, ...] with the same E, got shapes "
            f"{tuple(w13_q.shape)} and {tuple(w2_q.shape)}"
        )
    e = lead13[0]
    for name, gs in (("w13_gs", w13_gs), ("w2_gs", w2_gs)):
        check_dtype(OP, name, gs, (torch.float32,))
        check_shape(OP, name, gs, (e,), " (one decode scale per expert)")
    return e, h, rows13


def _marlin_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size,
                gemm="auto"):
    _, h, rows13 = _check_marlin_moe(
        x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size, gemm
    )  # one implementation on the CPU: gemm is validated, not used
    w13, w13_sf = marlin_unrepack_reference(w13_q, w13_s, rows13, h)
    w2, w2_sf = marlin_unrepack_reference(w2_q, w2_s, h, inter_size)
    return _fused_moe(x, topk_ids, topk_weights, w13, w13_sf, w13_gs, w2, w2_sf, w2_gs, None, None, activation)


def _marlin_moe_cuda(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size,
                     gemm="auto"):
    args = (x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size)
    _check_marlin_moe(*args, gemm)
    if not moe_tactics.available():
        return _marlin_moe(*args)
    if x.shape[0] == 0:
        return x.new_empty(x.shape)
    x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()  # the kernel reads rows with 16-byte cp.async; a fresh allocation is aligned
    args = (x, *(t.contiguous() for t in args[1:9]), activation, inter_size)
    return moe_tactics.choose(*args, gemm).run(*args)


def _marlin_moe_fake(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size,
                     gemm="auto"):
    _check_marlin_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size, gemm)
    return x.new_empty(x.shape)


torch.library.define(
    f"nvfp4::{OP}",
    "(Tensor x, Tensor topk_ids, Tensor topk_weights, Tensor w13_q, Tensor w13_s, Tensor w13_gs, "
    "Tensor w2_q, Tensor w2_s, Tensor w2_gs, str activation, int inter_size, str gemm=\"auto\") -> Tensor",
)
# Kernels run eagerly: disabled for Dynamo as source.define_op does (a graph-broken frame must not compile them).
torch.library.impl(f"nvfp4::{OP}", "cpu", torch.compiler.disable(_marlin_moe))
torch.library.impl(f"nvfp4::{OP}", "cuda", torch.compiler.disable(_marlin_moe_cuda))
torch.library.register_fake(f"nvfp4::{OP}", _marlin_moe_fake)
