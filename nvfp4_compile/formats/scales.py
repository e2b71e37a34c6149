"""Block scales (FP8 E4M3, one per 16 elements along K) and the per-tensor scale's two conventions.

decode d = amax / (6 * 448)   ModelOpt weight_scale_2 / input_scale, torchao per_tensor_scale
encode g = 1 / d              compressed-tensors *_global_scale, TRT-LLM/FlashInfer fp4_quantize globalScale
Mixing them up is the classic NVFP4 bug, so every API in this package names which one it takes.
"""
from __future__ import annotations

import torch

BLOCK_SIZE = 16
E4M3_MAX = 448.0
E2M1_MAX = 6.0
GLOBAL_AMAX_DIVISOR = E4M3_MAX * E2M1_MAX  # 2688


def decode_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor decode scale amax/2688 in FP32; amax == 0 gives 1.0 (nothing to scale)."""
    amax = amax.float()
    # A tensor divisor keeps CUDA from multiplying by a rounded 1/2688 (see quant.py).
    return torch.where(amax > 0, amax / amax.new_tensor(GLOBAL_AMAX_DIVISOR), torch.ones_like(amax))


def decode_to_encode(decode_scale: torch.Tensor) -> torch.Tensor:
    """ModelOpt-style decode scale -> compressed-tensors / TRT-LLM encode scale (1/d)."""
    d = decode_scale.float()
    if (d <= 0).any() or not torch.isfinite(d).all():
        raise ValueError("decode_to_encode: decode scale must be positive and finite")
    return 1.0 / d


def encode_to_decode(encode_scale: torch.Tensor) -> torch.Tensor:
    """compressed-tensors / TRT-LLM encode scale -> ModelOpt-style decode scale (1/g)."""
    g = encode_scale.float()
    if (g <= 0).any() or not torch.isfinite(g).all():
        raise ValueError("encode_to_decode: encode scale must be positive and finite")
    return 1.0 / g


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """FP32 -> float8_e4m3fn, round-to-nearest-even and saturating at 448 (torch's cast does not saturate)."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def reconcile_shard_scales(block_scales: list[torch.Tensor], decode_scales: list[torch.Tensor]):
    """Fuse shards (q/k/v, gate/up) whose per-tensor decode scales differ.

    Takes d = max(d_i) and rescales each shard's block scales by d_i/d (<= 1, so nothing overflows); the
    result is exact wherever the rescaled block scale is representable in E4M3, which holds unless the
    shards' scales differ by orders of magnitude. Returns (list of block scales, d).
    """
    ds = [d.float().reshape(()) for d in decode_scales]
    d = torch.stack(ds).max()
    out = []
    for sb, di in zip(block_scales, ds):
        out.append(sb if bool(di == d) else to_e4m3(sb.float() * (di / d)))
    return out, d
