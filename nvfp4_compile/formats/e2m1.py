"""E2M1 (FP4) element codes and the two-per-byte packing.

A code is 4 bits `s e1 e0 m`: bit 3 the sign, bits 2..0 index E2M1_VALUES. Packing puts element 2i in the
low nibble and 2i+1 in the high nibble of byte i (ModelOpt, compressed-tensors, torchao and the Blackwell
kernels all agree; `torch.float4_e2m1fn_x2` holds the same bytes).
"""
from __future__ import annotations

import torch

E2M1_MAX = 6.0
# Magnitudes of the 8 non-negative codes.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Round-to-nearest-even boundaries between consecutive magnitudes. At a tie the even code (m bit 0) wins,
# so the comparison is strict where the lower neighbour is even and inclusive where the upper one is.
_TIES_DOWN = (0.25, 1.25, 2.5, 5.0)  # midpoints whose lower neighbour has the even code
_TIES_UP = (0.75, 1.75, 3.5)  # midpoints whose upper neighbour has the even code


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round float values to E2M1 codes (uint8 in 0..15): RNE, saturating at +-6, sign kept for -0.

    E2M1 has no inf or NaN: both raise (rather than inf silently saturating to +-6), matching the
    quantizer, which rejects them before encoding.
    """
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("e2m1_encode: input contains inf or NaN; E2M1 has no code for them")
    mag = x.abs().float()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for t in _TIES_DOWN:
        code += (mag > t).to(torch.uint8)
    for t in _TIES_UP:
        code += (mag >= t).to(torch.uint8)
    sign = torch.signbit(x.float()).to(torch.uint8) << 3
    return code | sign


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8, low 4 bits used) to float32 values."""
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32, device=codes.device)
    return table[(codes & 0xF).long()]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes -> [..., K/2] uint8, even element in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: last dim must be even, got {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] uint8 -> [..., K] codes (uint8 in 0..15)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_fp4: packed must be uint8, got {packed.dtype}")
    lo = packed & 0xF
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)
