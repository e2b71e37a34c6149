"""NVFP4 quantize / dequantize in plain torch (the exact reference every kernel is checked against).

    g   = 1/d                      (d: decode global scale, amax/2688 when computed here)
    s_b = e4m3_rne_satfinite(amax(|x_block|) / 6 * g)
    q   = e2m1_rne_satfinite(x * g / s_b)        all-zero blocks (s_b == 0) give zero codes
    x^  = e2m1(q) * s_b * d
"""
from __future__ import annotations

import torch

from .e2m1 import E2M1_MAX, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4
from .scales import BLOCK_SIZE, decode_scale_from_amax, to_e4m3


def _check_k(name: str, k: int) -> None:
    if k % BLOCK_SIZE:
        raise ValueError(f"{name}: last dim K={k} must be a multiple of {BLOCK_SIZE} (the NVFP4 block size)")


def quantize_nvfp4_encoded(x: torch.Tensor, encode_scale: torch.Tensor):
    """Quantize with an *encode* global scale g. Returns (packed uint8 [..., K/2], block scales e4m3 [..., K/16])."""
    if not x.is_floating_point():
        raise TypeError(f"quantize: x must be a floating tensor, got {x.dtype}")
    _check_k("quantize: x", x.shape[-1])
    xf = x.float()
    if not torch.isfinite(xf).all():
        raise ValueError("quantize: x contains inf or NaN; NVFP4 cannot represent them")
    g = encode_scale.float().reshape(()).to(x.device)
    blocks = xf.reshape(*x.shape[:-1], x.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    amax = blocks.abs().amax(dim=-1)
    # Divide by a tensor, not a Python float: CUDA turns division by a CPU scalar into multiplication by
    # its rounded reciprocal, which flips block scales against the CPU (and the spec's amax / 6).
    block_scale = to_e4m3(amax / amax.new_tensor(E2M1_MAX) * g)
    s = block_scale.float().unsqueeze(-1)
    # Divide (as ModelOpt does) rather than multiply by a reciprocal; zero-scale blocks encode as zero.
    scaled = torch.where(s > 0, blocks * g / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(blocks))
    codes = e2m1_encode(scaled.reshape(x.shape))
    return pack_fp4(codes), block_scale


def quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor | None = None):
    """Quantize x [..., K] to NVFP4.

    global_scale is the per-tensor *decode* scale (ModelOpt weight_scale_2 = amax/2688); computed from x
    when None. Returns (packed uint8 [..., K/2], block_scale float8_e4m3fn [..., K/16], global_scale fp32
    scalar, decode convention).
    """
    if global_scale is None:
        if not x.is_floating_point():
            raise TypeError(f"quantize_nvfp4: x must be a floating tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("quantize_nvfp4: x contains inf or NaN; NVFP4 cannot represent them")
        global_scale = decode_scale_from_amax(x.abs().amax() if x.numel() else x.new_zeros(()))
    d = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).reshape(())
    if not (d > 0) or not torch.isfinite(d):
        raise ValueError(f"quantize_nvfp4: global_scale (decode) must be positive and finite, got {d.item()}")
    packed, block_scale = quantize_nvfp4_encoded(x, 1.0 / d)
    return packed, block_scale, d


def dequantize_nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, global_scale, dtype=torch.bfloat16):
    """Exact inverse of the encoding: e2m1(q) * s_b * d, computed in FP32 and rounded once to dtype.

    packed uint8 [..., K/2]; block_scale float8_e4m3fn [..., K/16] (linear layout); global_scale decode,
    a scalar or a tensor broadcastable against the leading dims (e.g. [E, 1, 1] for expert stacks).
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"dequantize: packed weight must be uint8, got {packed.dtype}")
    if block_scale.dtype != torch.float8_e4m3fn:
        raise TypeError(f"dequantize: block_scale must be float8_e4m3fn, got {block_scale.dtype}")
    k = packed.shape[-1] * 2
    _check_k("dequantize: packed (K = 2 * last dim)", k)
    if tuple(block_scale.shape) != (*packed.shape[:-1], k // BLOCK_SIZE):
        raise ValueError(
            f"dequantize: block_scale shape {tuple(block_scale.shape)} does not match packed shape "
            f"{tuple(packed.shape)} (expected {(*packed.shape[:-1], k // BLOCK_SIZE)})"
        )
    vals = e2m1_decode(unpack_fp4(packed))
    vals = vals.reshape(*packed.shape[:-1], k // BLOCK_SIZE, BLOCK_SIZE) * block_scale.float().unsqueeze(-1)
    d = torch.as_tensor(global_scale, dtype=torch.float32, device=packed.device)
    return (vals.reshape(*packed.shape[:-1], k) * d).to(dtype)
