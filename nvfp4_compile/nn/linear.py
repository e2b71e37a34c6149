"""NVFP4Linear: a linear layer holding an NVFP4 weight, written the way Blackwell NVFP4 model code is.

Buffers (ModelOpt checkpoint names, so a ModelOpt state dict loads as is):
    weight          uint8 [N, K/2]            packed E2M1, even element in the low nibble
    weight_scale    float8_e4m3fn [N, K/16]   block scales, linear layout (as checkpoints store them)
    weight_scale_2  fp32 scalar               per-tensor decode scale amax_w / 2688
    input_scale     fp32 scalar               per-tensor decode scale of the activations (act="nvfp4" only)

With swizzled=True the W4A4 GEMM reads the 128x4-swizzled layout, derived from weight_scale in forward and
not stored: the module holds each weight once. Compiled with nvfp4_marlin the swizzle (and the unswizzle the
Marlin rewrite puts after it) is weight-only and evaluated once at compile time; eager pays one small copy
per call.

act="nvfp4" (W4A4): quantize x with g = 1/input_scale, nvfp4::gemm with alpha = input_scale * weight_scale_2.
act="bf16"  (W4A16): F.linear(x, nvfp4::dequantize(weight, ...)).
Both forwards are plain tensor code (no .item(), no data-dependent branches), so Dynamo captures them whole.
`dtype` is the bias dtype; the output takes x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import BLOCK_SIZE, swizzle_scales
from .quant_state import QuantizedBuffers, check_act, input_scale_from_amax, quantize_weight


def check_in_features(in_features: int, what: str = "NVFP4Linear") -> None:
    if in_features % BLOCK_SIZE:
        raise ValueError(
            f"{what}: in_features={in_features} is not a multiple of {BLOCK_SIZE} (the NVFP4 block size); "
            "this layer cannot be quantized to NVFP4"
        )


class NVFP4Linear(QuantizedBuffers):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        act: str = "nvfp4",
        dtype: torch.dtype = torch.bfloat16,
        swizzled: bool = True,
        device=None,
    ):
        super().__init__()
        check_act(act)
        check_in_features(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.act, self.swizzled = act, swizzled
        n, k = out_features, in_features
        self.register_buffer("weight", torch.zeros(n, k // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.zeros(n, k // BLOCK_SIZE, dtype=torch.float8_e4m3fn, device=device))
        self.register_buffer("weight_scale_2", torch.ones((), dtype=torch.float32, device=device))
        if act == "nvfp4":
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        # Frozen like the quantized weight: the nvfp4 ops have no autograd formula, so nothing here trains.
        self.bias = nn.Parameter(torch.zeros(n, dtype=dtype, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "bf16":
            w = torch.ops.nvfp4.dequantize(self.weight, self.weight_scale, self.weight_scale_2, x.dtype, False)
            return F.linear(x, w, self.bias)
        x_fp4, x_sf = torch.ops.nvfp4.quantize(x, 1.0 / self.input_scale, self.swizzled)
        w_sf = swizzle_scales(self.weight_scale) if self.swizzled else self.weight_scale
        alpha = self.input_scale * self.weight_scale_2
        y = torch.ops.nvfp4.gemm(x_fp4, self.weight, x_sf, w_sf, alpha, x.dtype, self.swizzled)
        if self.bias is not None:
            y = y + self.bias
        return y

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, act: str = "nvfp4", input_amax=None, swizzled: bool = True):
        """Quantize an nn.Linear's weight (per-tensor scale from its amax). act="nvfp4" takes the input
        scale from `input_amax` (a calibrated |x| max, see nn.calibrate); None -> DEFAULT_INPUT_SCALE."""
        w = linear.weight.detach()
        check_in_features(linear.in_features, "NVFP4Linear.from_linear")
        q, sf, d = quantize_weight(w, "NVFP4Linear.from_linear: weight")
        m = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            act=act,
            dtype=w.dtype,
            swizzled=swizzled,
            device=w.device,
        )
        m.weight.copy_(q)
        m.weight_scale.copy_(sf)
        m.weight_scale_2.copy_(d)
        if act == "nvfp4":
            m.input_scale.copy_(input_scale_from_amax(input_amax))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"act={self.act!r}, swizzled={self.swizzled}"
        )
