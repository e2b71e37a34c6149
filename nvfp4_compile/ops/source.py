"""Source ops: the Blackwell-style NVFP4 ops that model code calls (see docs/design.md, "Source ops").

Every op has one reference kernel (plain torch on nvfp4_compile.formats, registered for both "cpu" and
"cuda") with exact semantics, and a fake kernel that only does shape arithmetic so it works with symbolic
M. Shape/dtype validation is shared by both, so a bad call fails the same way eagerly and at compile time.

Dtypes (every op):
    packed FP4          uint8              [..., K/2], even element in the low nibble
    block scales        float8_e4m3fn      linear [..., K/16] or swizzled [Mp, Kp] (leading dims flattened)
    per-tensor scales   float32, one element; `global_scale` of quantize and the fused producers is
                        *encode* (g = 1/d), of dequantize *decode* (d); gemm's `alpha` is d_a * d_w
    activations         bfloat16 / float16 / float32
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..formats import (
    BLOCK_SIZE,
    dequantize_nvfp4,
    quantize_nvfp4_encoded,
    swizzle_scales,
    swizzled_shape,
    unswizzle_scales,
)

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BF16_SCALAR_TYPE = 15  # c10::ScalarType::BFloat16; schema defaults cannot spell dtype names


# ----------------------------------------------------------------------------------------------------
# Validation: shape/dtype only, so it runs unchanged in fake kernels (SymInt comparisons become guards).
# ----------------------------------------------------------------------------------------------------


def check_dtype(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"nvfp4::{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: tuple, what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"nvfp4::{op}: {name} has shape {tuple(t.shape)}, expected {tuple(expected)}{what}")


def check_k(op: str, name: str, k) -> None:
    if k % BLOCK_SIZE != 0:
        raise ValueError(f"nvfp4::{op}: {name} has K={k}, which must be a multiple of {BLOCK_SIZE}")


def check_per_tensor_scale(op: str, name: str, t: torch.Tensor) -> None:
    check_dtype(op, name, t, (torch.float32,))
    if t.numel() != 1:
        raise ValueError(f"nvfp4::{op}: {name} must hold one float32 value, got shape {tuple(t.shape)}")


def check_activation(op: str, name: str, x: torch.Tensor) -> None:
    check_dtype(op, name, x, FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"nvfp4::{op}: {name} must have at least one dim [..., K], got a scalar")


def check_packed(op: str, name: str, t: torch.Tensor):
    """uint8 [..., K/2] with K % 16 == 0; returns K."""
    check_dtype(op, name, t, (torch.uint8,))
    if t.dim() < 1:
        raise ValueError(f"nvfp4::{op}: {name} must have at least one dim [..., K/2], got a scalar")
    k = 2 * t.shape[-1]
    check_k(op, f"{name} (K = 2 * last dim)", k)
    return k


def scale_shape(lead: tuple, k, swizzled: bool) -> tuple:
    """Block-scale shape for values [*lead, K]: linear [*lead, K/16] or swizzled [Mp, Kp]."""
    ksf = k // BLOCK_SIZE
    if not swizzled:
        return (*lead, ksf)
    return swizzled_shape(math.prod(lead), ksf)


def check_scales(op: str, name: str, sf: torch.Tensor, lead: tuple, k, swizzled: bool) -> None:
    check_dtype(op, name, sf, (torch.float8_e4m3fn,))
    layout = "swizzled [ceil(M/128)*128, ceil(K/64)*4]" if swizzled else "linear [..., K/16]"
    check_shape(op, name, sf, scale_shape(lead, k, swizzled), f" ({layout} scales for values {(*lead, k)})")


# ----------------------------------------------------------------------------------------------------
# Helpers of the reference kernels.
# ----------------------------------------------------------------------------------------------------


def _check_encode_scale_value(op: str, g: torch.Tensor) -> None:
    # Data-dependent, so only in the reference kernels: g <= 0 would zero or negate every block scale.
    if not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
        raise ValueError(f"nvfp4::{op}: global_scale (encode, 1/d) must be positive and finite, got {g.item()}")


def _layout_scales(sf_linear: torch.Tensor, swizzled: bool) -> torch.Tensor:
    """Linear [..., K/16] -> the op's output layout (swizzled flattens the leading dims into M)."""
    if not swizzled:
        return sf_linear
    return swizzle_scales(sf_linear.reshape(-1, sf_linear.shape[-1]))


def _linear_scales(sf: torch.Tensor, lead: tuple, k: int, swizzled: bool) -> torch.Tensor:
    """The op's input layout -> linear [*lead, K/16]."""
    if not swizzled:
        return sf
    ksf = k // BLOCK_SIZE
    return unswizzle_scales(sf, math.prod(lead), ksf).reshape(*lead, ksf)


def _quantize_reference(op: str, value: torch.Tensor, global_scale: torch.Tensor, swizzled: bool):
    _check_encode_scale_value(op, global_scale)
    x_fp4, sf = quantize_nvfp4_encoded(value, global_scale)
    return x_fp4, _layout_scales(sf, swizzled)


def _quantize_fake(x: torch.Tensor, swizzled: bool):
    *lead, k = x.shape
    x_fp4 = x.new_empty((*lead, k // 2), dtype=torch.uint8)
    x_sf = x.new_empty(scale_shape(tuple(lead), k, swizzled), dtype=torch.float8_e4m3fn)
    return x_fp4, x_sf


# ----------------------------------------------------------------------------------------------------
# The values the fused producers quantize: computed in FP32, rounded once to x.dtype. Public because the
# fused-quant stripping pass must feed the W4A16 GEMM exactly these values.
# ----------------------------------------------------------------------------------------------------


def rms_norm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()


def silu_and_mul_fp32(x: torch.Tensor) -> torch.Tensor:
    """Gate first: silu(x[..., :I]) * x[..., I:], in FP32."""
    xf = x.float()
    i = xf.shape[-1] // 2
    return F.silu(xf[..., :i]) * xf[..., i:]


def relu2_fp32(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x.float()).square()


def rms_norm_value(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_fp32(x, weight, eps).to(x.dtype)


def add_rms_norm_value(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """Returns (rms_norm(x + residual) * weight, x + residual), both in x.dtype."""
    residual_out = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_value(residual_out, weight, eps), residual_out


def silu_and_mul_value(x: torch.Tensor) -> torch.Tensor:
    return silu_and_mul_fp32(x).to(x.dtype)


def relu2_value(x: torch.Tensor) -> torch.Tensor:
    return relu2_fp32(x).to(x.dtype)


def define_op(name: str, schema: str, reference, fake) -> None:
    """Define nvfp4::<name> with one reference kernel for cpu and cuda and a fake kernel."""
    qualname = f"nvfp4::{name}"
    torch.library.define(qualname, schema)
    # Kernels run eagerly; without disable, Dynamo would compile their Python frames whenever an op runs
    # outside a compiled graph (a skipped or graph-broken frame), with the user's backend.
    torch.library.impl(qualname, ("cpu", "cuda"), torch.compiler.disable(reference))
    torch.library.register_fake(qualname, fake)


# ----------------------------------------------------------------------------------------------------
# nvfp4::quantize(x: bf16/fp16/fp32 [..., K], global_scale: fp32 encode, swizzled)
#     -> (x_fp4 uint8 [..., K/2], x_sf e4m3 [..., K/16] or [Mp, Kp])
# ----------------------------------------------------------------------------------------------------


def _check_quantize(op: str, x: torch.Tensor, global_scale: torch.Tensor) -> None:
    check_activation(op, "x", x)
    check_k(op, "x", x.shape[-1])
    check_per_tensor_scale(op, "global_scale", global_scale)


def _define_quantize_of(op: str, value) -> None:
    """nvfp4::<op>(x, global_scale encode, swizzled) = quantize(value(x)); value keeps x's shape and dtype."""

    def reference(x, global_scale, swizzled=True):
        _check_quantize(op, x, global_scale)
        return _quantize_reference(op, value(x), global_scale, swizzled)

    def fake(x, global_scale, swizzled=True):
        _check_quantize(op, x, global_scale)
        return _quantize_fake(x, swizzled)

    define_op(op, "(Tensor x, Tensor global_scale, bool swizzled=True) -> (Tensor x_fp4, Tensor x_sf)", reference, fake)


_define_quantize_of("quantize", lambda x: x)


# ----------------------------------------------------------------------------------------------------
# nvfp4::dequantize(x_fp4 uint8 [..., K/2], x_sf e4m3 (linear or swizzled), global_scale fp32 decode,
#                   dtype=bf16, swizzled=False) -> dtype [..., K]
# ----------------------------------------------------------------------------------------------------


def _check_dequantize(x_fp4, x_sf, global_scale, dtype, swizzled) -> int:
    k = check_packed("dequantize", "x_fp4", x_fp4)
    check_scales("dequantize", "x_sf", x_sf, tuple(x_fp4.shape[:-1]), k, swizzled)
    check_per_tensor_scale("dequantize", "global_scale", global_scale)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"nvfp4::dequantize: dtype must be bfloat16, float16 or float32, got {dtype}")
    return k


def _dequantize(x_fp4, x_sf, global_scale, dtype=torch.bfloat16, swizzled=False):
    k = _check_dequantize(x_fp4, x_sf, global_scale, dtype, swizzled)
    sf = _linear_scales(x_sf, tuple(x_fp4.shape[:-1]), k, swizzled)
    return dequantize_nvfp4(x_fp4, sf, global_scale.reshape(()), dtype)


def _dequantize_meta(x_fp4, x_sf, global_scale, dtype=torch.bfloat16, swizzled=False):
    k = _check_dequantize(x_fp4, x_sf, global_scale, dtype, swizzled)
    return x_fp4.new_empty((*x_fp4.shape[:-1], k), dtype=dtype)


define_op(
    "dequantize",
    f"(Tensor x_fp4, Tensor x_sf, Tensor global_scale, ScalarType dtype={_BF16_SCALAR_TYPE}, "
    "bool swizzled=False) -> Tensor",
    _dequantize,
    _dequantize_meta,
)


# ----------------------------------------------------------------------------------------------------
# nvfp4::gemm(a_fp4 uint8 [..., K/2], b_fp4 uint8 [N, K/2], a_sf, b_sf e4m3, alpha fp32 (d_a * d_w),
#             out_dtype, swizzled=True) -> out_dtype [..., N]
# Swizzled: a_sf [Mp, Kp] over all leading dims of a flattened, b_sf [Np, Kp]. Linear: [..., K/16], [N, K/16].
# ----------------------------------------------------------------------------------------------------


def _check_gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, swizzled) -> int:
    k = check_packed("gemm", "a_fp4", a_fp4)
    check_packed("gemm", "b_fp4", b_fp4)
    if b_fp4.dim() != 2:
        raise ValueError(f"nvfp4::gemm: b_fp4 must be 2-D [N, K/2], got shape {tuple(b_fp4.shape)}")
    if b_fp4.shape[-1] != a_fp4.shape[-1]:
        raise ValueError(
            f"nvfp4::gemm: K mismatch: a_fp4 {tuple(a_fp4.shape)} has K={k}, "
            f"b_fp4 {tuple(b_fp4.shape)} has K={2 * b_fp4.shape[-1]}"
        )
    check_scales("gemm", "a_sf", a_sf, tuple(a_fp4.shape[:-1]), k, swizzled)
    check_scales("gemm", "b_sf", b_sf, (b_fp4.shape[0],), k, swizzled)
    check_per_tensor_scale("gemm", "alpha", alpha)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"nvfp4::gemm: out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    return k


def _gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, swizzled=True):
    k = _check_gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, swizzled)
    one = torch.ones((), dtype=torch.float32, device=a_fp4.device)
    a = dequantize_nvfp4(a_fp4, _linear_scales(a_sf, tuple(a_fp4.shape[:-1]), k, swizzled), one, torch.float32)
    b = dequantize_nvfp4(b_fp4, _linear_scales(b_sf, (b_fp4.shape[0],), k, swizzled), one, torch.float32)
    # Dequantized values at global scale 1 carry <= 5 significant bits, so even a TF32 matmul sees them
    # exactly; only the FP32 accumulation order is implementation-defined.
    return ((a @ b.T) * alpha.float().reshape(())).to(out_dtype)


def _gemm_meta(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, swizzled=True):
    _check_gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, swizzled)
    return a_fp4.new_empty((*a_fp4.shape[:-1], b_fp4.shape[0]), dtype=out_dtype)


define_op(
    "gemm",
    "(Tensor a_fp4, Tensor b_fp4, Tensor a_sf, Tensor b_sf, Tensor alpha, ScalarType out_dtype, "
    "bool swizzled=True) -> Tensor",
    _gemm,
    _gemm_meta,
)


# ----------------------------------------------------------------------------------------------------
# Fused producers: value in FP32 -> rounded to x.dtype -> quantize(value, global_scale encode).
# ----------------------------------------------------------------------------------------------------


def _check_norm_weight(op: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    check_dtype(op, "weight", weight, FLOAT_DTYPES)
    check_shape(op, "weight", weight, (x.shape[-1],), " (one gain per element of x's last dim)")


# nvfp4::rms_norm_quant(x [..., K], weight [K], global_scale fp32 encode, eps, swizzled) -> (x_fp4, x_sf)


def _check_rms_norm_quant(x, weight, global_scale) -> None:
    _check_quantize("rms_norm_quant", x, global_scale)
    _check_norm_weight("rms_norm_quant", x, weight)


def _rms_norm_quant(x, weight, global_scale, eps, swizzled=True):
    _check_rms_norm_quant(x, weight, global_scale)
    return _quantize_reference("rms_norm_quant", rms_norm_value(x, weight, eps), global_scale, swizzled)


def _rms_norm_quant_meta(x, weight, global_scale, eps, swizzled=True):
    _check_rms_norm_quant(x, weight, global_scale)
    return _quantize_fake(x, swizzled)


define_op(
    "rms_norm_quant",
    "(Tensor x, Tensor weight, Tensor global_scale, float eps, bool swizzled=True) -> (Tensor x_fp4, Tensor x_sf)",
    _rms_norm_quant,
    _rms_norm_quant_meta,
)


# nvfp4::add_rms_norm_quant(x [..., K], residual (x's shape and dtype), weight [K], global_scale fp32 encode,
#     eps, swizzled) -> (x_fp4, residual_out = x + residual (new tensor, x.dtype), x_sf)


def _check_add_rms_norm_quant(x, residual, weight, global_scale) -> None:
    op = "add_rms_norm_quant"
    _check_quantize(op, x, global_scale)
    check_dtype(op, "residual", residual, (x.dtype,))
    check_shape(op, "residual", residual, tuple(x.shape), " (must match x)")
    _check_norm_weight(op, x, weight)


def _add_rms_norm_quant(x, residual, weight, global_scale, eps, swizzled=True):
    _check_add_rms_norm_quant(x, residual, weight, global_scale)
    normed, residual_out = add_rms_norm_value(x, residual, weight, eps)
    x_fp4, x_sf = _quantize_reference("add_rms_norm_quant", normed, global_scale, swizzled)
    return x_fp4, residual_out, x_sf


def _add_rms_norm_quant_meta(x, residual, weight, global_scale, eps, swizzled=True):
    _check_add_rms_norm_quant(x, residual, weight, global_scale)
    x_fp4, x_sf = _quantize_fake(x, swizzled)
    return x_fp4, torch.empty_like(x), x_sf


define_op(
    "add_rms_norm_quant",
    "(Tensor x, Tensor residual, Tensor weight, Tensor global_scale, float eps, bool swizzled=True) "
    "-> (Tensor x_fp4, Tensor residual_out, Tensor x_sf)",
    _add_rms_norm_quant,
    _add_rms_norm_quant_meta,
)


# nvfp4::silu_and_mul_quant(x [..., 2I] gate first, global_scale fp32 encode, swizzled)
#     -> (x_fp4 uint8 [..., I/2], x_sf for [..., I])


def _check_silu_and_mul_quant(x, global_scale) -> None:
    op = "silu_and_mul_quant"
    check_activation(op, "x", x)
    if x.shape[-1] % (2 * BLOCK_SIZE) != 0:
        raise ValueError(
            f"nvfp4::{op}: x has last dim {x.shape[-1]} = 2*I (gate, up); I must be a multiple of {BLOCK_SIZE}"
        )
    check_per_tensor_scale(op, "global_scale", global_scale)


def _silu_and_mul_quant(x, global_scale, swizzled=True):
    _check_silu_and_mul_quant(x, global_scale)
    return _quantize_reference("silu_and_mul_quant", silu_and_mul_value(x), global_scale, swizzled)


def _silu_and_mul_quant_meta(x, global_scale, swizzled=True):
    _check_silu_and_mul_quant(x, global_scale)
    return _quantize_fake(x.new_empty((*x.shape[:-1], x.shape[-1] // 2)), swizzled)


define_op(
    "silu_and_mul_quant",
    "(Tensor x, Tensor global_scale, bool swizzled=True) -> (Tensor x_fp4, Tensor x_sf)",
    _silu_and_mul_quant,
    _silu_and_mul_quant_meta,
)


# nvfp4::relu2_quant(x [..., K], global_scale fp32 encode, swizzled) -> quantize(relu(x)**2)
_define_quantize_of("relu2_quant", relu2_value)
