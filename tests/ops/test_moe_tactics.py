"""The MoE tactics (ops/moe_tactics.py) on the CPU: the dequantize + grouped GEMM tactic against fused_moe's
W4A16 reference (with formats.marlin's dequantization standing in for the CUDA kernel), its handling of expert
ids outside [0, E), the problem key, and the CUDA registration's dispatch to the chosen tactic."""
import pytest
import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats.marlin import marlin_dequantize
from nvfp4_compile.ops import marlin_moe as marlin_moe_module
from nvfp4_compile.ops import moe_tactics
from nvfp4_compile.ops.tactics import ProblemKey, Tactic
from test_marlin_moe import marlin_args, problem

ops = torch.ops.nvfp4
needs_grouped_mm = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def dequant_moe(args):
    return moe_tactics.dequant_grouped_moe(*args, dequantize=marlin_dequantize)


@needs_grouped_mm
@pytest.mark.parametrize("activation", ["silu", "relu2"])
@pytest.mark.parametrize("h,i,e,k,m", [(64, 32, 4, 2, 7), (80, 48, 6, 3, 33), (64, 32, 8, 1, 1)])
def test_dequant_tactic_matches_fused_moe(activation, h, i, e, k, m):
    x, ids, weights, w13s, w2s, act, inter = problem(m=m, h=h, i=i, e=e, k=k, activation=activation, seed=m + e)
    got = dequant_moe(marlin_args(x, ids, weights, w13s, w2s, act, inter))
    want = ops.fused_moe(x, ids, weights, *w13s, *w2s, None, None, act)
    assert got.dtype == x.dtype and got.shape == x.shape
    # bf16 weights (one rounding of e2m1 * s * gs) and bf16 GEMM outputs against an FP32 reference
    assert rel_err(got, want) < 1e-2


@needs_grouped_mm
def test_dequant_tactic_out_of_range_ids_add_nothing():
    x, ids, weights, w13s, w2s, act, inter = problem(m=9, e=4, k=2, seed=3)
    bad = ids.clone()
    bad[::3, 1] = -1
    bad[1::4, 0] = 4
    got = dequant_moe(marlin_args(x, bad, weights, w13s, w2s, act, inter))
    keep = (bad >= 0) & (bad < 4)
    want = ops.fused_moe(x, torch.where(keep, bad, ids), torch.where(keep, weights, torch.zeros_like(weights)),
                         *w13s, *w2s, None, None, act)
    assert torch.isfinite(got).all() and rel_err(got, want) < 1e-2
    assert torch.equal(got[2], dequant_moe(marlin_args(x[2:3], bad[2:3], weights[2:3], w13s, w2s, act, inter))[0])


def test_problem_key_names_the_moe_shape(monkeypatch):
    monkeypatch.setattr(moe_tactics, "device_label", lambda index: "test device")
    x, ids, weights, w13s, w2s, act, inter = problem(m=7, e=4, k=2)
    q13 = marlin_args(x, ids, weights, w13s, w2s, act, inter)[3]
    key = moe_tactics.problem_key(x, ids, q13, act, inter)
    assert key == ProblemKey("test device", inter, 64, 8, "bf16", "E=4,topk=2,silu")
    assert key.entry_name() == "n=32,k=64,m=8,bf16,E=4,topk=2,silu"
    assert ProblemKey("d", 1, 2, 4, "fp16").entry_name() == "n=1,k=2,m=4,fp16"  # dense keys unchanged


@pytest.mark.parametrize("gemm", ["auto", "marlin", "dequant"])
def test_cuda_registration_runs_the_chosen_tactic_on_contiguous_inputs(monkeypatch, gemm):
    seen = {}

    def run(*args):
        seen["args"] = args
        return args[0].new_zeros(args[0].shape)

    def choose(*args):
        seen["choose"] = args
        return Tactic("fake", run)

    monkeypatch.setattr(moe_tactics, "available", lambda: True)
    monkeypatch.setattr(moe_tactics, "choose", choose)
    x, ids, weights, w13s, w2s, act, inter = problem(m=5)
    args = marlin_args(x, ids, weights, w13s, w2s, act, inter)
    x_strided = torch.stack([x, -x], dim=-1)[..., 0]  # same values, non-contiguous
    ids_t = ids.t().contiguous().t()
    out = marlin_moe_module._marlin_moe_cuda(x_strided, ids_t, *args[2:], gemm)
    assert out.shape == x.shape and seen["choose"][-1] == gemm
    ran = seen["args"]
    assert all(t.is_contiguous() for t in ran[:9]) and torch.equal(ran[0], x) and torch.equal(ran[1], ids)
    assert ran[9:] == (act, inter)
    seen.clear()
    empty = marlin_moe_module._marlin_moe_cuda(x[:0], ids[:0], weights[:0], *args[3:], gemm)
    assert empty.shape == (0, x.shape[1]) and not seen, "M = 0 runs no tactic"


def test_cuda_registration_without_the_extension_is_the_reference(monkeypatch):
    monkeypatch.setattr(moe_tactics, "available", lambda: False)
    x, ids, weights, w13s, w2s, act, inter = problem(m=5)
    args = marlin_args(x, ids, weights, w13s, w2s, act, inter)
    assert torch.equal(marlin_moe_module._marlin_moe_cuda(*args, "dequant"), ops.marlin_moe(*args))


@pytest.mark.parametrize("dtype,capability,fused", [("bf16", (9, 0), True), ("bf16", (10, 0), True),
                                                    ("bf16", (8, 0), False), ("fp16", (9, 0), False)])
def test_dequant_tactic_needs_the_fused_grouped_gemm(monkeypatch, dtype, capability, fused):
    """Elsewhere torch._grouped_mm loops over groups with the offsets read on the host (not graph safe)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert moe_tactics.grouped_mm_is_fused(ProblemKey("d", 32, 64, 8, dtype, "E=4,topk=2,silu")) is fused
