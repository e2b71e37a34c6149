"""The tactics of nvfp4::marlin_moe on CUDA and the process-wide selector behind gemm="auto" (docs/moe.md).

    marlin.<tile>  the fused W4A16 MoE kernels (csrc/moe) with the grouped GEMM's row tile forced
                   (nvfp4_C.marlin_moe(..., tile=i); names from nvfp4_C.marlin_moe_tiles())
    dequant        both expert stacks dequantized to x.dtype (nvfp4_C.marlin_dequantize on the stack, exactly
                   formats.marlin.marlin_dequantize) + torch._grouped_mm over the rows sorted by expert: the
                   compute-bound large-M case, where cuBLAS-class grouped GEMMs beat the mma.sync kernel
    marlin         the fallback: the kernel choosing its tile from the routed rows per expert

A problem is (device, I, H, M bucket, dtype, E / top-k / activation); profiling runs every tactic once on
random activations and a random top-k routing with the layer's real expert stacks (ops/tactics.py).
"""
from __future__ import annotations

import functools
import logging

import torch

from . import _C
from .gemm_tactics import DTYPE_NAMES, device_label, extension_build_id, library_version
from .moe import ACTIVATIONS, GATED
from .tactics import ProblemKey, SharedSelector, Tactic, TacticSet, cuda_median_ms, m_bucket

KERNEL_ACTIVATION = {"silu": 0, "relu2": 1}  # the activation argument of torch.ops.nvfp4_C.marlin_moe
# torch._grouped_mm has a fused CUDA kernel for bf16 on SM90+ only; otherwise it takes a per-group loop that reads
# the offsets on the host (a sync: not CUDA-graph safe), so the dequant tactic serves bf16 on SM90+ only.
DEQUANT_DTYPES = ("bf16",)
log = logging.getLogger("nvfp4_compile.tactics")


def available() -> bool:
    """The compiled tactics exist (the MoE kernel with its tile argument and the dequantize kernel)."""
    return _C.has_kernel("marlin_moe") and _C.has_kernel("marlin_moe_tiles") and _C.has_kernel("marlin_dequantize")


def _cuda_dequantize(q, s, gs, size_n: int, size_k: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.ops.nvfp4_C.marlin_dequantize(q, s, gs, size_n, size_k, dtype)


def dequant_grouped_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation: str,
                        inter_size: int, dequantize=_cuda_dequantize) -> torch.Tensor:
    """The MoE with both expert stacks dequantized to x.dtype and two grouped GEMMs over the routed rows sorted
    by expert. Never syncs with the host (CUDA-graph safe). Numerics as the kernel's: GEMM outputs rounded to
    x.dtype, activation and the router-weighted top-k sum in FP32, slots with an expert id outside [0, E) add
    nothing. dequantize(q, s, gs [E], n, k, dtype) -> [E, n, k] (the CUDA kernel; formats.marlin on the CPU)."""
    m, hidden = x.shape
    e, top_k = w13_q.shape[0], topk_ids.shape[1]
    rows13 = 2 * inter_size if GATED[activation] else inter_size
    flat = topk_ids.reshape(-1).long()
    valid = (flat >= 0) & (flat < e)
    bucket = torch.where(valid, flat, e)  # invalid ids sort after every expert and are in no group
    order = torch.argsort(bucket, stable=True)
    counts = torch.zeros(e + 1, dtype=torch.int64, device=x.device).scatter_add_(0, bucket, torch.ones_like(bucket))
    offs = counts[:e].cumsum(0).to(torch.int32)  # group g = rows [offs[g-1], offs[g]) of the sorted rows
    w13 = dequantize(w13_q, w13_s, w13_gs, rows13, hidden, x.dtype)
    h = torch._grouped_mm(x[order // top_k], w13.transpose(-2, -1), offs=offs)
    del w13  # back to the allocator before the second stack is dequantized
    act = ACTIVATIONS[activation](h).to(x.dtype)
    del h
    w2 = dequantize(w2_q, w2_s, w2_gs, hidden, inter_size, x.dtype)
    y = torch._grouped_mm(act, w2.transpose(-2, -1), offs=offs)
    del w2, act
    y = torch.where(valid[order].unsqueeze(1), y, 0)  # rows past offs[-1] are not written by the GEMM
    by_slot = torch.empty_like(y).index_copy_(0, order, y)  # back to (token, slot) order: a fixed-order sum
    weighted = by_slot.view(m, top_k, hidden).float() * topk_weights.float().unsqueeze(-1)
    return weighted.sum(1).to(x.dtype)


def grouped_mm_is_fused(key: ProblemKey) -> bool:
    """torch._grouped_mm runs its fused (graph-safe) kernel for this problem: bf16 on an SM90+ device."""
    return key.dtype in DEQUANT_DTYPES and torch.cuda.get_device_capability()[0] >= 9


@functools.cache
def _warn_dequant_unavailable(dtype: str) -> None:  # once per dtype, not on every call
    log.warning("nvfp4_compile: gemm='dequant' for a %s MoE on this device: torch._grouped_mm has no fused kernel "
                "for it (bf16 on SM90+); running the W4A16 MoE kernel instead", dtype)


def _kernel_tactic(name: str, tile: int) -> Tactic:
    def run(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size):
        return torch.ops.nvfp4_C.marlin_moe(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs,
                                            KERNEL_ACTIVATION[activation], inter_size, tile)

    return Tactic(name, run)


@functools.cache
def tactic_set() -> TacticSet:
    if not available():
        raise RuntimeError(f"nvfp4_compile: MoE tactics need the CUDA extension ({_C.LOAD_ERROR or 'not built'})")
    tiles = list(torch.ops.nvfp4_C.marlin_moe_tiles())
    tactics = [_kernel_tactic(f"marlin.{name}", i) for i, name in enumerate(tiles)]
    tactics.append(Tactic("dequant", dequant_grouped_moe, applies=grouped_mm_is_fused,
                          not_applicable="torch._grouped_mm's fused kernel takes bf16 on SM90+ only"))
    return TacticSet("marlin_moe", tuple(tactics), fallback=_kernel_tactic("marlin", -1), build=extension_build_id())


_shared = SharedSelector(tactic_set, library_version)
selector, set_selector = _shared.get, _shared.set  # the process-wide marlin_moe selector (its own cache scope)


def problem_key(x, topk_ids, w13_q, activation: str, inter_size: int) -> ProblemKey:
    detail = f"E={w13_q.shape[0]},topk={topk_ids.shape[1]},{activation}"
    return ProblemKey(device_label(x.device.index), int(inter_size), int(x.shape[1]), m_bucket(x.shape[0]),
                      DTYPE_NAMES[x.dtype], detail)


def _measure_on_random_routing(key: ProblemKey, x, topk_ids, topk_weights, weights):
    """measure(tactic): median ms on random x [M bucket, H] and a random top-k routing over the real stacks."""
    inputs = None

    def measure(tactic: Tactic) -> float:
        nonlocal inputs
        if inputs is None:
            gen = torch.Generator(device=x.device).manual_seed(key.m_bucket)  # leaves the global RNG alone
            m, e, top_k = key.m_bucket, weights[0].shape[0], topk_ids.shape[1]
            xr = torch.randn(m, x.shape[1], device=x.device, generator=gen).to(x.dtype)
            logits = torch.randn(m, e, device=x.device, generator=gen)
            w, ids = torch.topk(torch.softmax(logits, dim=-1), top_k, dim=-1)
            inputs = (xr, ids.to(topk_ids.dtype), (w / w.sum(-1, keepdim=True)).to(topk_weights.dtype))
        return cuda_median_ms(lambda: tactic.run(*inputs, *weights), x.device)

    return measure


def choose(x, topk_ids, topk_weights, w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation: str, inter_size: int,
           gemm: str = "auto") -> Tactic:
    ts = tactic_set()
    if gemm == "marlin":
        return ts.fallback
    key = problem_key(x, topk_ids, w13_q, activation, inter_size)
    if gemm == "dequant":
        if grouped_mm_is_fused(key):
            return ts.get("dequant")
        _warn_dequant_unavailable(str(x.dtype))
        return ts.fallback
    if topk_ids.shape[1] > w13_q.shape[0]:  # no routing of distinct experts to profile on
        return ts.fallback
    weights = (w13_q, w13_s, w13_gs, w2_q, w2_s, w2_gs, activation, inter_size)
    return selector().select(key, _measure_on_random_routing(key, x, topk_ids, topk_weights, weights))
