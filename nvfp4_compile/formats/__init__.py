"""NVFP4 format math: pure torch, no torch.library. One definition of every layout the package uses."""
from .e2m1 import E2M1_MAX, E2M1_VALUES, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4
from .quant import dequantize_nvfp4, quantize_nvfp4, quantize_nvfp4_encoded
from .scales import (
    BLOCK_SIZE,
    E4M3_MAX,
    decode_scale_from_amax,
    decode_to_encode,
    encode_to_decode,
    reconcile_shard_scales,
    to_e4m3,
)
from .swizzle import swizzle_scales, swizzled_shape, unswizzle_scales

__all__ = [n for n in dir() if not n.startswith("_")]
