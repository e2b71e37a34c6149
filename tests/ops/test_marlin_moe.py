"""nvfp4::marlin_moe: opcheck, bit-identical to fused_moe's W4A16 path on the same weights (silu/relu2,
padded I and H, int32/int64 ids, fp32/bf16 router weights), symbolic M, and validation errors."""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats import quantize_nvfp4

ops = torch.ops.nvfp4


def experts(e, rows, k, seed):
    gen = torch.Generator().manual_seed(seed)
    qs = [quantize_nvfp4(torch.randn(rows, k, generator=gen) * 0.05) for _ in range(e)]
    return torch.stack([q[0] for q in qs]), torch.stack([q[1] for q in qs]), torch.stack([q[2] for q in qs])


def problem(m=7, h=64, i=32, e=4, k=2, activation="silu", dtype=torch.bfloat16, id_dtype=torch.int64,
            weight_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * i if activation == "silu" else i
    w13, w13_sf, w13_gs = experts(e, rows, h, seed + 1)
    w2, w2_sf, w2_gs = experts(e, h, i, seed + 2)
    x = torch.randn(m, h, generator=gen).to(dtype)
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(m)]).to(id_dtype)
    weights = torch.rand(m, k, generator=gen).to(weight_dtype)
    return x, ids, weights, (w13, w13_sf, w13_gs), (w2, w2_sf, w2_gs), activation, i


def marlin_args(x, ids, weights, w13s, w2s, activation, inter):
    q13, s13 = ops.marlin_repack(w13s[0], w13s[1])
    q2, s2 = ops.marlin_repack(w2s[0], w2s[1])
    return (x, ids, weights, q13, s13, w13s[2], q2, s2, w2s[2], activation, inter)


@pytest.mark.parametrize("activation", ["silu", "relu2"])
@pytest.mark.parametrize("h,i", [(64, 32), (80, 48)])  # the second pads N and K of both stacks
@pytest.mark.parametrize("id_dtype,weight_dtype", [(torch.int64, torch.float32), (torch.int32, torch.bfloat16)])
def test_equals_fused_moe_w4a16(activation, h, i, id_dtype, weight_dtype):
    x, ids, weights, w13s, w2s, act, inter = problem(h=h, i=i, activation=activation, id_dtype=id_dtype,
                                                     weight_dtype=weight_dtype)
    got = ops.marlin_moe(*marlin_args(x, ids, weights, w13s, w2s, act, inter))
    want = ops.fused_moe(x, ids, weights, *w13s, *w2s, None, None, act)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_opcheck(dtype):
    args = marlin_args(*problem(dtype=dtype))
    torch.library.opcheck(ops.marlin_moe.default, args)


def test_symbolic_shapes_fake_kernel():
    args = marlin_args(*problem(m=5))
    gm = make_fx(lambda *t: ops.marlin_moe(*t, *args[9:]), tracing_mode="symbolic")(*args[:9])
    x = [n for n in gm.graph.nodes if n.op == "placeholder"][0].meta["val"]
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0].meta["val"]
    assert out.shape == x.shape and not str(out.shape[0]).isdigit()  # M stays symbolic


def test_errors_name_the_tensor():
    args = list(marlin_args(*problem()))
    bad = list(args)
    bad[0] = args[0].float()
    with pytest.raises(TypeError, match="x must be"):
        ops.marlin_moe(*bad)
    bad = list(args)
    bad[10] = 48  # wrong inter_size for the repacked stacks
    with pytest.raises(ValueError, match="w13"):
        ops.marlin_moe(*bad)
    bad = list(args)
    bad[5] = args[5][:2]
    with pytest.raises(ValueError, match="w13_gs"):
        ops.marlin_moe(*bad)
    bad = list(args)
    bad[9] = "gelu"
    with pytest.raises(ValueError, match="activation"):
        ops.marlin_moe(*bad)
    bad = list(args)
    bad[6], bad[7] = args[6][:3], args[7][:3]
    with pytest.raises(ValueError, match="same E"):
        ops.marlin_moe(*bad)
    with pytest.raises(ValueError, match="gemm must be one of"):
        ops.marlin_moe(*args, "cublas")
