"""The 128x4 swizzled block-scale layout that Blackwell FP4 GEMMs read.

A [M, Ksf] scale matrix is padded to Mp = ceil(M/128)*128 rows and Kp = ceil(Ksf/4)*4 columns and stored
as [Mp/128, Kp/4, 32, 4, 4]: element (m, k) lands at
    (m//128)*(Kp/4)*512 + (k//4)*512 + (m%32)*16 + ((m%128)//32)*4 + k%4.
We keep the swizzled bytes in a 2-D [Mp, Kp] tensor (row-major over that flat order) so shapes stay
readable; leading batch/expert dims are kept.
"""
from __future__ import annotations

import torch


def _ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def swizzled_shape(m: int, ksf: int) -> tuple[int, int]:
    return _ceil_to(m, 128), _ceil_to(ksf, 4)


def swizzle_scales(sf: torch.Tensor) -> torch.Tensor:
    """[..., M, Ksf] linear-layout scales -> [..., Mp, Kp] in the 128x4 swizzled order (padding is zero)."""
    *batch, m, ksf = sf.shape
    mp, kp = swizzled_shape(m, ksf)
    # Functional padding (no in-place write), so a compiled graph can evaluate it once as a weight-only
    # value; 1-byte scales are padded as their bytes (torch has no constant_pad for float8; byte 0 is +0.0).
    raw = sf.view(torch.uint8) if sf.element_size() == 1 else sf
    padded = torch.nn.functional.pad(raw, (0, kp - ksf, 0, mp - m)).view(sf.dtype)
    # m = mb*128 + i*32 + j and k = kb*4 + kk  ->  order (mb, kb, j, i, kk)
    t = padded.reshape(*batch, mp // 128, 4, 32, kp // 4, 4)
    nb = len(batch)
    t = t.permute(*range(nb), nb, nb + 3, nb + 2, nb + 1, nb + 4)
    return t.reshape(*batch, mp, kp)


def unswizzle_scales(sf: torch.Tensor, m: int, ksf: int) -> torch.Tensor:
    """Inverse of swizzle_scales: [..., Mp, Kp] swizzled -> [..., m, ksf] linear layout."""
    *batch, mp, kp = sf.shape
    if (mp, kp) != swizzled_shape(m, ksf):
        raise ValueError(
            f"unswizzle_scales: swizzled scales of shape {tuple(sf.shape)} do not match M={m}, K/16={ksf} "
            f"(expected [..., {swizzled_shape(m, ksf)[0]}, {swizzled_shape(m, ksf)[1]}])"
        )
    nb = len(batch)
    t = sf.reshape(*batch, mp // 128, kp // 4, 32, 4, 4)
    t = t.permute(*range(nb), nb, nb + 3, nb + 2, nb + 1, nb + 4)
    return t.reshape(*batch, mp, kp)[..., :m, :ksf]
