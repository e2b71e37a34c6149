"""Target ops: Marlin W4A16 NVFP4 (docs/design.md, "Target ops"; layout in formats/marlin.py).

    nvfp4::marlin_repack(Tensor w_fp4, Tensor w_sf) -> (Tensor qweight, Tensor scales)
        w_fp4 uint8 [..., N, K/2], w_sf float8_e4m3fn [..., N, K/16] (linear; leading expert dims allowed)
        -> qweight int32 [..., K_pad/16, 2*N_pad], scales uint8 [..., K_pad/16, N_pad] (scale codes)
    nvfp4::marlin_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor global_scale, Tensor? bias,
                       int size_n, int size_k, str gemm="auto") -> Tensor
        x bf16/fp16 [..., size_k] (any strides), one repacked 2-D weight, global_scale fp32 (decode): one
        value, or [size_n] (one per output column: sibling linears merged along N, passes/merge_siblings.py),
        bias [size_n] in x.dtype or None -> [..., size_n] x.dtype
        = (x @ (e2m1 * s_b)^T) * global_scale + bias, FP32 accumulation, one rounding to x.dtype.
        gemm (CUDA only; ignored by the reference): "marlin" the W4A16 kernel, "dequant" the weight
        dequantized to x.dtype + cuBLAS, "auto" the faster of the tactics per shape (ops/gemm_tactics.py).

CPU: the torch reference. CUDA: the csrc kernels when the extension is built (ops/_C.py), otherwise the same
torch reference, so a CUDA machine without the build is still correct, only slower.
"""
from __future__ import annotations

import torch

from ..formats import dequantize_nvfp4
from ..formats.marlin import (
    check_layout,
    check_repack_inputs,
    marlin_padded_sizes,
    marlin_repack_reference,
    marlin_unrepack_reference,
)
from . import _C, gemm_tactics
from .source import check_dtype, check_shape

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------------
# nvfp4::marlin_repack
# ----------------------------------------------------------------------------------------------------


def _check_repack(w_fp4, w_sf):
    return check_repack_inputs(w_fp4, w_sf, "nvfp4::marlin_repack")


def _repack_shapes(w_fp4):
    n, k = w_fp4.shape[-2], 2 * w_fp4.shape[-1]
    n_pad, k_pad = marlin_padded_sizes(n, k)
    lead = tuple(w_fp4.shape[:-2])
    return (*lead, k_pad // 16, 2 * n_pad), (*lead, k_pad // 16, n_pad)


def _marlin_repack_cpu(w_fp4, w_sf):
    _check_repack(w_fp4, w_sf)
    return marlin_repack_reference(w_fp4, w_sf)


def _marlin_repack_cuda(w_fp4, w_sf):
    _check_repack(w_fp4, w_sf)
    if not _C.has_kernel("marlin_repack") or w_fp4.numel() == 0:
        return marlin_repack_reference(w_fp4, w_sf)
    nan = torch.isnan(w_sf.float())
    if bool(nan.any()):  # a host sync, acceptable: repack runs once per weight, at compile time
        raise ValueError(
            f"nvfp4::marlin_repack: w_sf holds {int(nan.sum())} NaN block scale(s); NVFP4 scales must be finite"
        )
    return torch.ops.nvfp4_C.marlin_repack(w_fp4.contiguous(), w_sf.contiguous())


def _marlin_repack_fake(w_fp4, w_sf):
    _check_repack(w_fp4, w_sf)
    q_shape, s_shape = _repack_shapes(w_fp4)
    return w_fp4.new_empty(q_shape, dtype=torch.int32), w_fp4.new_empty(s_shape, dtype=torch.uint8)


torch.library.define(
    "nvfp4::marlin_repack", "(Tensor w_fp4, Tensor w_sf) -> (Tensor qweight, Tensor scales)"
)
# compiler.disable: Dynamo must never trace the kernels' own Python (see ops/source.define_op)
torch.library.impl("nvfp4::marlin_repack", "cpu", torch.compiler.disable(_marlin_repack_cpu))
torch.library.impl("nvfp4::marlin_repack", "cuda", torch.compiler.disable(_marlin_repack_cuda))
torch.library.register_fake("nvfp4::marlin_repack", _marlin_repack_fake)


# ----------------------------------------------------------------------------------------------------
# nvfp4::marlin_gemm
# ----------------------------------------------------------------------------------------------------

_GEMM = "marlin_gemm"


def _check_gemm(x, qweight, scales, global_scale, bias, size_n, size_k, gemm="auto") -> None:
    if gemm not in gemm_tactics.GEMM_CHOICES:
        raise ValueError(f"nvfp4::{_GEMM}: gemm must be one of {gemm_tactics.GEMM_CHOICES}, got {gemm!r}")
    check_dtype(_GEMM, "x", x, ACTIVATION_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"nvfp4::{_GEMM}: x must be [..., K], got a scalar")
    if x.shape[-1] != size_k:
        raise ValueError(f"nvfp4::{_GEMM}: x has K={x.shape[-1]} (last dim), expected size_k={size_k}")
    lead = check_layout(qweight, scales, size_n, size_k, f"nvfp4::{_GEMM}")
    if lead:
        raise ValueError(
            f"nvfp4::{_GEMM}: qweight must be one 2-D repacked weight, got shape {tuple(qweight.shape)} "
            "(expert stacks go through marlin_moe)"
        )
    check_dtype(_GEMM, "global_scale", global_scale, (torch.float32,))
    if global_scale.numel() not in (1, size_n):
        raise ValueError(f"nvfp4::{_GEMM}: global_scale must hold one float32 value or size_n={size_n} (one per "
                         f"output column), got shape {tuple(global_scale.shape)}")
    if bias is not None:
        check_dtype(_GEMM, "bias", bias, (x.dtype,))
        check_shape(_GEMM, "bias", bias, (size_n,), " (one value per output feature)")
    for name, t in (("qweight", qweight), ("scales", scales), ("global_scale", global_scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"nvfp4::{_GEMM}: {name} is on {t.device}, x on {x.device}")


def marlin_gemm_reference(x, qweight, scales, global_scale, bias, size_n: int, size_k: int) -> torch.Tensor:
    """Un-repack, dequantize at global scale 1 in FP32, FP32 matmul, * global_scale (+ bias), round once."""
    w_fp4, w_sf = marlin_unrepack_reference(qweight, scales, size_n, size_k)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    w = dequantize_nvfp4(w_fp4, w_sf, one, torch.float32)  # [N, K]
    acc = x.reshape(-1, size_k).float() @ w.T
    out = acc * global_scale.float().reshape(-1)  # one value, or one per output column
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], size_n)


def _marlin_gemm_cpu(x, qweight, scales, global_scale, bias, size_n, size_k, gemm="auto"):
    _check_gemm(x, qweight, scales, global_scale, bias, size_n, size_k, gemm)  # one kernel on CPU: gemm unused
    return marlin_gemm_reference(x, qweight, scales, global_scale, bias, size_n, size_k)


def _marlin_gemm_cuda(x, qweight, scales, global_scale, bias, size_n, size_k, gemm="auto"):
    _check_gemm(x, qweight, scales, global_scale, bias, size_n, size_k, gemm)
    if not gemm_tactics.available():
        return marlin_gemm_reference(x, qweight, scales, global_scale, bias, size_n, size_k)
    x2 = x.reshape(-1, size_k)
    if x2.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], size_n))
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if x2.data_ptr() % 16:
        x2 = x2.clone()  # the kernel reads rows with 16-byte cp.async; a fresh allocation is aligned
    out = gemm_tactics.run_gemm(
        x2,
        qweight.contiguous(),
        scales.contiguous(),
        global_scale,
        None if bias is None else bias.contiguous(),
        size_n,
        size_k,
        gemm,
    )
    return out.reshape(*x.shape[:-1], size_n)


def _marlin_gemm_fake(x, qweight, scales, global_scale, bias, size_n, size_k, gemm="auto"):
    _check_gemm(x, qweight, scales, global_scale, bias, size_n, size_k, gemm)
    return x.new_empty((*x.shape[:-1], size_n))


torch.library.define(
    "nvfp4::marlin_gemm",
    "(Tensor x, Tensor qweight, Tensor scales, Tensor global_scale, Tensor? bias, int size_n, int size_k, "
    'str gemm="auto") -> Tensor',
)
torch.library.impl("nvfp4::marlin_gemm", "cpu", torch.compiler.disable(_marlin_gemm_cpu))
torch.library.impl("nvfp4::marlin_gemm", "cuda", torch.compiler.disable(_marlin_gemm_cuda))
torch.library.register_fake("nvfp4::marlin_gemm", _marlin_gemm_fake)
