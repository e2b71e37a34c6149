"""nvfp4::marlin_repack / nvfp4::marlin_gemm: opcheck, reference numerics against dequantize + float64
matmul, any leading dims / strides of x, symbolic-M fake kernels, and validation errors."""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4
from nvfp4_compile.formats.marlin import marlin_repack_reference

ops = torch.ops.nvfp4
# opcheck's schema test compares float8 tensors with allclose, which float8 lacks on CPU: repack (which takes
# e4m3 scales) runs the other opcheck tests and we check "inputs untouched" ourselves.
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def quantized_weight(n, k, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, generator=g) * scale)
    return w, sf, gs


def activations(*shape, dtype=torch.bfloat16, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def float64_reference(x, w, sf, gs, bias=None):
    wd = dequantize_nvfp4(w, sf, torch.tensor(1.0), torch.float64)
    out = x.double() @ wd.T * float(gs)
    return out if bias is None else out + bias.double()


def test_repack_op_matches_the_layout_reference_and_opcheck():
    w, sf, _ = quantized_weight(100, 80)
    q, s = ops.marlin_repack(w, sf)
    q_ref, s_ref = marlin_repack_reference(w, sf)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    stack = torch.stack([w, w.flip(0)]), torch.stack([sf, sf.flip(0)])
    for args in ((w, sf), stack):
        before = [a.clone() for a in args]
        torch.library.opcheck(ops.marlin_repack.default, args, test_utils=NO_SCHEMA_CHECK)
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(args, before))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 64, 64), (5, 100, 80), (33, 192, 208), (17, 64, 1856)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_reference_matches_float64(dtype, m, n, k, with_bias):
    w, sf, gs = quantized_weight(n, k, seed=m + n)
    q, s = ops.marlin_repack(w, sf)
    x = activations(m, k, dtype=dtype, seed=k)
    bias = activations(n, dtype=dtype, seed=3) if with_bias else None
    out = ops.marlin_gemm(x, q, s, gs, bias, n, k)
    assert out.dtype == dtype and tuple(out.shape) == (m, n)
    ref = float64_reference(x, w, sf, gs, bias)
    # One rounding of an FP32 result: within half an ulp of dtype plus FP32 accumulation noise.
    assert torch.allclose(out.double(), ref, rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10, atol=1e-5)
    assert torch.equal(out, ref.float().to(dtype)) or (out.double() - ref).abs().max() < 1e-2 * ref.abs().max()


def test_gemm_any_leading_dims_and_strides():
    n, k = 72, 96
    w, sf, gs = quantized_weight(n, k, seed=4)
    q, s = ops.marlin_repack(w, sf)
    x3 = activations(2, 3, k, seed=5)
    out3 = ops.marlin_gemm(x3, q, s, gs, None, n, k)
    assert tuple(out3.shape) == (2, 3, n)
    assert torch.equal(out3.reshape(6, n), ops.marlin_gemm(x3.reshape(6, k), q, s, gs, None, n, k))
    xt = activations(k, 7, seed=6).t()  # non-contiguous [7, K]
    assert torch.equal(ops.marlin_gemm(xt, q, s, gs, None, n, k), ops.marlin_gemm(xt.contiguous(), q, s, gs, None, n, k))
    empty = ops.marlin_gemm(activations(0, k), q, s, gs, None, n, k)
    assert tuple(empty.shape) == (0, n)


def test_gemm_small_and_large_scales_are_exact():
    """Subnormal block scales (2^-9 .. 7*2^-9) and the largest (448) dequantize exactly: the op equals the
    float64 product of the exact dequantized weight."""
    n, k = 64, 64
    g = torch.Generator().manual_seed(9)
    w = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    for pool in ([2.0**-9, 3 * 2.0**-9, 7 * 2.0**-9], [448.0, 416.0, -448.0]):
        sf = torch.tensor(pool)[torch.randint(0, 3, (n, k // 16), generator=g)].to(torch.float8_e4m3fn)
        q, s = ops.marlin_repack(w, sf)
        x = activations(3, k, seed=10)
        gs = torch.tensor(1.0)
        out = ops.marlin_gemm(x, q, s, gs, None, n, k)
        ref = float64_reference(x, w, sf, gs)
        assert (out.double() - ref).norm() / ref.norm() < 1e-2
        assert torch.allclose(out.double(), ref, rtol=2 ** -7, atol=ref.abs().max().item() * 1e-6)


def test_gemm_opcheck():
    n, k = 64, 48
    w, sf, gs = quantized_weight(n, k, seed=11)
    q, s = ops.marlin_repack(w, sf)
    per_column = torch.linspace(0.5, 2.0, n)  # one global scale per output column (merged siblings)
    for x, bias in [(activations(4, k), None), (activations(2, 3, k, dtype=torch.float16), activations(n, dtype=torch.float16))]:
        torch.library.opcheck(ops.marlin_gemm, (x, q, s, gs, bias, n, k))
        torch.library.opcheck(ops.marlin_gemm, (x, q, s, per_column, bias, n, k))


def test_fake_kernels_trace_with_symbolic_m():
    n, k = 64, 64
    w, sf, gs = quantized_weight(n, k, seed=12)

    def f(x, w, sf, gs):
        q, s = ops.marlin_repack(w, sf)
        return ops.marlin_gemm(x, q, s, gs, None, n, k)

    gm = make_fx(f, tracing_mode="symbolic")(activations(5, k), w, sf, gs)
    x = activations(9, k, seed=13)
    assert torch.equal(gm(x, w, sf, gs), f(x, w, sf, gs))
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    assert isinstance(placeholders[0].meta["val"].shape[0], torch.SymInt)


def test_cuda_kernels_are_registered():
    for name in ("marlin_repack", "marlin_gemm"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"nvfp4::{name}", "CUDA")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"nvfp4::{name}", "CPU")


def test_gemm_validation_errors():
    n, k = 64, 64
    w, sf, gs = quantized_weight(n, k)
    q, s = ops.marlin_repack(w, sf)
    x = activations(2, k)
    cases = [
        ((x.float(), q, s, gs, None, n, k), TypeError, "x must be bfloat16 or float16"),
        ((x[:, :48], q, s, gs, None, n, k), ValueError, "expected size_k=64"),
        ((x, q[:, :64], s, gs, None, n, k), ValueError, "qweight has shape"),
        ((x, q, s.to(torch.int32), gs, None, n, k), TypeError, "scales must be uint8"),
        ((x, q.view(torch.float32), s, gs, None, n, k), TypeError, "qweight must be int32"),
        ((x, q, s, gs.reshape(1).repeat(2), None, n, k), ValueError, "global_scale must hold one"),
        ((x, q, s, gs.double(), None, n, k), TypeError, "global_scale must be float32"),
        ((x, q, s, gs, activations(n + 1), n, k), ValueError, "bias has shape"),
        ((x, q, s, gs, activations(n, dtype=torch.float16), n, k), TypeError, "bias must be bfloat16"),
        ((x, q.unsqueeze(0), s.unsqueeze(0), gs, None, n, k), ValueError, "one 2-D repacked weight"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ops.marlin_gemm(*args)
    with pytest.raises(ValueError, match="NaN"):
        bad = sf.clone()
        bad.view(torch.uint8)[0, 0] = 0xFF
        ops.marlin_repack(w, bad)
