"""Source ops (nvfp4::quantize, dequantize, gemm and the fused quant producers): opcheck, exact reference
semantics against nvfp4_compile.formats, and clear errors both eagerly and from the fake kernels."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4, swizzle_scales, unswizzle_scales

ops = torch.ops.nvfp4

# torch's schema check compares inputs before/after with allclose, which has no float8 kernel, so ops that
# take float8 scales run the other opcheck tests and we check "no mutation, no aliasing" ourselves.
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def assert_functional(op, args):
    """The op mutates no input and returns no tensor that shares storage with an input."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    before = [t.clone() for t in tensors]
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for t, b in zip(tensors, before):
        assert same_bytes(t, b), "op mutated an input"
    in_ptrs = {t.untyped_storage().data_ptr() for t in tensors}
    for o in outs:
        assert o.untyped_storage().data_ptr() not in in_ptrs, "op output aliases an input"


def encode_scale(x: torch.Tensor) -> torch.Tensor:
    return (2688.0 / x.float().abs().max()).reshape(())


def linear_scales_of(x_sf, x_fp4, swizzled):
    ksf = x_fp4.shape[-1] // 8
    if not swizzled:
        return x_sf
    return unswizzle_scales(x_sf, x_fp4[..., 0].numel(), ksf).reshape(*x_fp4.shape[:-1], ksf)


QUANT_CONFIGS = [((64,), torch.float32, True), ((5, 32), torch.bfloat16, False), ((2, 3, 48), torch.float16, True),
                 ((130, 16), torch.bfloat16, True)]


# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("shape,dtype,swizzled", QUANT_CONFIGS)
def test_quantize_opcheck(randn, shape, dtype, swizzled):
    x = randn(*shape, dtype=dtype)
    args = (x, encode_scale(x), swizzled)
    torch.library.opcheck(ops.quantize.default, args)
    assert_functional(ops.quantize, args)


@pytest.mark.parametrize("shape,dtype,swizzled", QUANT_CONFIGS)
def test_quantize_matches_the_format_reference_bytes(randn, shape, dtype, swizzled):
    x = randn(*shape, dtype=dtype, scale=5.0)
    g = encode_scale(x)
    x_fp4, x_sf = ops.quantize(x, g, swizzled)
    packed, sf, _ = quantize_nvfp4(x, 1.0 / g)
    assert same_bytes(x_fp4, packed)
    expected_sf = swizzle_scales(sf.reshape(-1, sf.shape[-1])) if swizzled else sf
    assert same_bytes(x_sf, expected_sf)


def test_quantize_default_is_swizzled(randn):
    x = randn(3, 32, dtype=torch.bfloat16)
    assert ops.quantize(x, encode_scale(x))[1].shape == (128, 4)


# -------------------------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("shape,dtype,swizzled", QUANT_CONFIGS)
def test_dequantize_opcheck_and_matches_format_reference(randn, shape, dtype, swizzled):
    x = randn(*shape)
    g = encode_scale(x)
    x_fp4, x_sf = ops.quantize(x, g, swizzled)
    args = (x_fp4, x_sf, 1.0 / g, dtype, swizzled)
    torch.library.opcheck(ops.dequantize.default, args, test_utils=NO_SCHEMA_CHECK)
    assert_functional(ops.dequantize, args)
    out = ops.dequantize(*args)
    expected = dequantize_nvfp4(x_fp4, linear_scales_of(x_sf, x_fp4, swizzled), 1.0 / g, dtype)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, expected)
    # the round trip lands within 4-bit accuracy of the input
    assert float((out.float() - x).norm() / x.norm()) < 0.15


def test_dequantize_defaults_bf16_linear(randn):
    x = randn(4, 32)
    g = encode_scale(x)
    x_fp4, x_sf = ops.quantize(x, g, False)
    out = ops.dequantize(x_fp4, x_sf, 1.0 / g)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, dequantize_nvfp4(x_fp4, x_sf, 1.0 / g, torch.bfloat16))


# -------------------------------------------------------------------------------------------------- gemm


def quantized_operands(randn, a_shape, n, swizzled, seed=0):
    a = randn(*a_shape, scale=2.0, seed=seed)
    b = randn(n, a_shape[-1], scale=0.05, seed=seed + 1)
    ga, gb = encode_scale(a), encode_scale(b)
    a_fp4, a_sf = ops.quantize(a, ga, swizzled)
    b_fp4, b_sf = ops.quantize(b, gb, swizzled)
    alpha = (1.0 / ga) * (1.0 / gb)  # product of the decode scales
    return a_fp4, b_fp4, a_sf, b_sf, alpha, 1.0 / ga, 1.0 / gb


GEMM_CONFIGS = [((5, 64), 24, True), ((5, 64), 24, False), ((2, 3, 64), 40, True), ((130, 32), 8, True)]


@pytest.mark.parametrize("a_shape,n,swizzled", GEMM_CONFIGS)
def test_gemm_opcheck(randn, a_shape, n, swizzled):
    a_fp4, b_fp4, a_sf, b_sf, alpha, _, _ = quantized_operands(randn, a_shape, n, swizzled)
    args = (a_fp4, b_fp4, a_sf, b_sf, alpha, torch.bfloat16, swizzled)
    torch.library.opcheck(ops.gemm.default, args, test_utils=NO_SCHEMA_CHECK)
    assert_functional(ops.gemm, args)


@pytest.mark.parametrize("a_shape,n,swizzled", GEMM_CONFIGS)
def test_gemm_equals_dequantize_then_matmul(randn, a_shape, n, swizzled):
    a_fp4, b_fp4, a_sf, b_sf, alpha, da, db = quantized_operands(randn, a_shape, n, swizzled)
    out = ops.gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, torch.float32, swizzled)
    assert out.shape == (*a_shape[:-1], n) and out.dtype == torch.float32
    a = ops.dequantize(a_fp4, a_sf, da, torch.float32, swizzled).double()
    b = ops.dequantize(b_fp4, b_sf, db, torch.float32, swizzled).double()
    expected = a @ b.T
    # only FP32 rounding separates them (the dequantized products are exact): a few ulps of the row norm
    tol = 1e-6 * (a.abs() @ b.abs().T)
    assert ((out.double() - expected).abs() <= tol).all()


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_gemm_rounds_once_to_out_dtype(randn, out_dtype):
    a_fp4, b_fp4, a_sf, b_sf, alpha, _, _ = quantized_operands(randn, (6, 64), 16, True)
    out32 = ops.gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, torch.float32, True)
    out = ops.gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, out_dtype, True)
    assert out.dtype == out_dtype and torch.equal(out, out32.to(out_dtype))


def test_gemm_swizzled_and_linear_agree_and_leading_dims_flatten(randn):
    a = randn(2, 70, 48)
    b = randn(24, 48, seed=1)
    ga, gb = encode_scale(a), encode_scale(b)
    alpha = 1.0 / (ga * gb)
    results = []
    for swizzled in (True, False):
        a_fp4, a_sf = ops.quantize(a, ga, swizzled)
        b_fp4, b_sf = ops.quantize(b, gb, swizzled)
        results.append(ops.gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, torch.float32, swizzled))
    assert torch.equal(results[0], results[1])
    a_fp4, a_sf = ops.quantize(a.reshape(140, 48), ga, True)
    flat = ops.gemm(a_fp4, b_fp4, a_sf, swizzle_scales(b_sf), alpha, torch.float32, True)
    torch.testing.assert_close(results[0].reshape(140, 24), flat, rtol=1e-6, atol=0)


def test_gemm_alpha_is_applied_in_fp32(randn):
    a_fp4, b_fp4, a_sf, b_sf, _, _, _ = quantized_operands(randn, (4, 32), 8, False)
    one = ops.gemm(a_fp4, b_fp4, a_sf, b_sf, torch.tensor(1.0), torch.float32, False)
    three = ops.gemm(a_fp4, b_fp4, a_sf, b_sf, torch.tensor([3.0]), torch.float32, False)
    assert torch.equal(three, one * 3.0)


# ----------------------------------------------------------------------------------- fused producers
# Reference values written out here independently of the op module: FP32 math, one rounding to x.dtype.


def ref_rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def ref_silu_and_mul(x):
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def ref_relu2(x):
    return (torch.relu(x.float()) ** 2).to(x.dtype)


PRODUCER_CONFIGS = [((2, 3, 64), torch.bfloat16, True), ((7, 32), torch.float16, False), ((130, 48), torch.float32, True)]


def producer_cases(randn, shape, dtype):
    """(op, args without swizzled, the value it must quantize) for every fused producer."""
    x = randn(*shape, dtype=dtype, scale=2.0)
    res = randn(*shape, dtype=dtype, seed=1)
    w = randn(shape[-1], dtype=dtype, seed=2) * 0.2 + 1.0
    eps = 1e-6
    g = torch.tensor(50.0)
    wide = randn(*shape[:-1], 2 * shape[-1], dtype=dtype, seed=3, scale=2.0)
    return {
        "rms_norm_quant": (ops.rms_norm_quant, (x, w, g, eps), ref_rms_norm(x, w, eps)),
        "add_rms_norm_quant": (ops.add_rms_norm_quant, (x, res, w, g, eps), ref_rms_norm(x + res, w, eps)),
        "silu_and_mul_quant": (ops.silu_and_mul_quant, (wide, g), ref_silu_and_mul(wide)),
        "relu2_quant": (ops.relu2_quant, (x, g), ref_relu2(x)),
    }


PRODUCERS = ["rms_norm_quant", "add_rms_norm_quant", "silu_and_mul_quant", "relu2_quant"]


@pytest.mark.parametrize("name", PRODUCERS)
@pytest.mark.parametrize("shape,dtype,swizzled", PRODUCER_CONFIGS[:2])
def test_producer_opcheck(randn, name, shape, dtype, swizzled):
    op, args, _ = producer_cases(randn, shape, dtype)[name]
    torch.library.opcheck(getattr(ops, name).default, (*args, swizzled))
    assert_functional(op, (*args, swizzled))


@pytest.mark.parametrize("name", PRODUCERS)
@pytest.mark.parametrize("shape,dtype,swizzled", PRODUCER_CONFIGS)
def test_producer_equals_quantize_of_the_rounded_value_bit_for_bit(randn, name, shape, dtype, swizzled):
    op, args, value = producer_cases(randn, shape, dtype)[name]
    outs = op(*args, swizzled)
    x_fp4, x_sf = (outs[0], outs[2]) if name == "add_rms_norm_quant" else outs
    g = args[-2] if "norm" in name else args[-1]
    expected_fp4, expected_sf = ops.quantize(value, g, swizzled)
    assert same_bytes(x_fp4, expected_fp4)
    assert same_bytes(x_sf, expected_sf)


def test_add_rms_norm_quant_returns_a_new_residual_sum(randn):
    x = randn(4, 32, dtype=torch.bfloat16)
    res = randn(4, 32, dtype=torch.bfloat16, seed=1)
    _, residual_out, _ = ops.add_rms_norm_quant(x, res, torch.ones(32), torch.tensor(10.0), 1e-5)
    assert torch.equal(residual_out, x + res) and residual_out.dtype == torch.bfloat16
    ptr = residual_out.untyped_storage().data_ptr()
    assert ptr not in (x.untyped_storage().data_ptr(), res.untyped_storage().data_ptr())


def test_rms_norm_value_agrees_with_torch_rms_norm(randn):
    x = randn(6, 64, dtype=torch.bfloat16, scale=3.0)
    w = randn(64, seed=1)
    ours = ref_rms_norm(x, w, 1e-6)
    torch.testing.assert_close(ours, F.rms_norm(x.float(), (64,), w, 1e-6).to(torch.bfloat16))
    from nvfp4_compile.ops.source import rms_norm_value

    assert torch.equal(rms_norm_value(x, w, 1e-6), ours)


def test_silu_and_mul_takes_the_gate_first(randn):
    gate = randn(3, 16, dtype=torch.float32)
    x = torch.cat([gate, torch.ones_like(gate)], dim=-1)  # up = 1: the result is silu(gate) alone
    g = torch.tensor(100.0)
    x_fp4, x_sf = ops.silu_and_mul_quant(x, g, False)
    expected_fp4, expected_sf = ops.quantize(F.silu(gate), g, False)
    assert same_bytes(x_fp4, expected_fp4) and same_bytes(x_sf, expected_sf)
    swapped_fp4, _ = ops.silu_and_mul_quant(torch.cat([torch.ones_like(gate), gate], dim=-1), g, False)
    assert not torch.equal(swapped_fp4, x_fp4)


# ------------------------------------------------------------------------------------------------ errors


def good_args(device):
    """Valid arguments for each op, built with empty tensors on `device` (meta exercises the fake kernels)."""
    def t(*shape, dtype=torch.bfloat16):
        return torch.zeros(shape, dtype=dtype, device=device)

    g = torch.ones((), device=device)
    u8, f8 = torch.uint8, torch.float8_e4m3fn
    return {
        "quantize": (t(5, 32), g, True),
        "dequantize": (t(5, 16, dtype=u8), t(5, 2, dtype=f8), g, torch.bfloat16, False),
        "gemm": (t(2, 5, 16, dtype=u8), t(8, 16, dtype=u8), t(128, 4, dtype=f8), t(128, 4, dtype=f8), g,
                 torch.bfloat16, True),
        "rms_norm_quant": (t(5, 32), t(32), g, 1e-6, True),
        "add_rms_norm_quant": (t(5, 32), t(5, 32), t(32), g, 1e-6, True),
        "silu_and_mul_quant": (t(5, 64), g, False),
        "relu2_quant": (t(5, 32), g, True),
    }


def replace(args, index, value):
    return (*args[:index], value, *args[index + 1:])


def z(*shape, dtype=torch.bfloat16, device="cpu"):
    return torch.zeros(shape, dtype=dtype, device=device)


# (op, argument index, replacement built on a device, exception, text the message must contain)
BAD_CALLS = [
    ("quantize", 0, lambda d: z(5, 33, device=d), ValueError, "x has K=33"),
    ("quantize", 0, lambda d: z(5, 32, dtype=torch.int32, device=d), TypeError, "x must be"),
    ("quantize", 1, lambda d: torch.ones((), dtype=torch.float64, device=d), TypeError, "global_scale must be float32"),
    ("quantize", 1, lambda d: torch.ones(2, device=d), ValueError, "global_scale must hold one"),
    ("dequantize", 0, lambda d: z(5, 16, dtype=torch.int8, device=d), TypeError, "x_fp4 must be uint8"),
    ("dequantize", 0, lambda d: z(5, 12, dtype=torch.uint8, device=d), ValueError, "x_fp4 (K = 2 * last dim) has K=24"),
    ("dequantize", 1, lambda d: z(5, 2, dtype=torch.float16, device=d), TypeError, "x_sf must be float8_e4m3fn"),
    ("dequantize", 1, lambda d: z(128, 4, dtype=torch.float8_e4m3fn, device=d), ValueError, "x_sf has shape (128, 4)"),
    ("dequantize", 3, lambda d: torch.int32, TypeError, "dtype must be"),
    ("gemm", 1, lambda d: z(8, 8, dtype=torch.uint8, device=d), ValueError, "K mismatch: a_fp4"),
    ("gemm", 1, lambda d: z(2, 8, 16, dtype=torch.uint8, device=d), ValueError, "b_fp4 must be 2-D"),
    ("gemm", 0, lambda d: z(2, 5, 16, dtype=torch.float8_e4m3fn, device=d), TypeError, "a_fp4 must be uint8"),
    ("gemm", 2, lambda d: z(10, 2, dtype=torch.float8_e4m3fn, device=d), ValueError, "a_sf has shape (10, 2)"),
    ("gemm", 3, lambda d: z(8, 2, dtype=torch.float8_e4m3fn, device=d), ValueError, "b_sf has shape (8, 2)"),
    ("gemm", 3, lambda d: z(128, 4, dtype=torch.float32, device=d), TypeError, "b_sf must be float8_e4m3fn"),
    ("gemm", 4, lambda d: torch.ones(2, device=d), ValueError, "alpha must hold one"),
    ("gemm", 5, lambda d: torch.int8, TypeError, "out_dtype must be"),
    ("rms_norm_quant", 1, lambda d: z(16, device=d), ValueError, "weight has shape (16,)"),
    ("rms_norm_quant", 0, lambda d: z(5, 40, device=d), ValueError, "x has K=40"),
    ("add_rms_norm_quant", 1, lambda d: z(4, 32, device=d), ValueError, "residual has shape (4, 32)"),
    ("add_rms_norm_quant", 1, lambda d: z(5, 32, dtype=torch.float16, device=d), TypeError, "residual must be bfloat16"),
    ("add_rms_norm_quant", 3, lambda d: torch.ones((), dtype=torch.float16, device=d), TypeError, "global_scale"),
    ("silu_and_mul_quant", 0, lambda d: z(5, 48, device=d), ValueError, "x has last dim 48"),
    ("relu2_quant", 0, lambda d: z(5, 32, dtype=torch.uint8, device=d), TypeError, "x must be"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name,index,bad,exc,text", BAD_CALLS, ids=[f"{c[0]}-{c[4]}" for c in BAD_CALLS])
def test_bad_input_raises_naming_the_tensor(device, name, index, bad, exc, text):
    args = good_args(device)[name]
    getattr(ops, name)(*args)  # the unmodified call is valid
    with pytest.raises(exc) as info:
        getattr(ops, name)(*replace(args, index, bad(device)))
    assert text in str(info.value) and f"nvfp4::{name}" in str(info.value)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("inf")])
def test_non_positive_encode_scale_raises(bad):
    with pytest.raises(ValueError, match="global_scale .encode"):
        ops.quantize(torch.ones(2, 16), torch.tensor(bad))
    with pytest.raises(ValueError, match="global_scale .encode"):
        ops.relu2_quant(torch.ones(2, 16), torch.tensor(bad))


# ------------------------------------------------------------------------------------- under torch.compile


def test_compiled_with_symbolic_m_matches_eager(randn):
    b = randn(24, 64, seed=1)
    b_fp4, b_sf = ops.quantize(b, encode_scale(b), True)
    g = torch.tensor(100.0)
    alpha = (1.0 / (g * encode_scale(b))).reshape(())

    def f(x):
        a_fp4, a_sf = ops.rms_norm_quant(x, torch.ones(64, dtype=x.dtype), g, 1e-6, True)
        return ops.gemm(a_fp4, b_fp4, a_sf, b_sf, alpha, torch.bfloat16, True)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, dynamic=True, fullgraph=True)
    for m in (5, 131, 300):  # one, two and three 128-row blocks of swizzled scales
        x = randn(m, 64, dtype=torch.bfloat16, seed=m)
        assert torch.equal(compiled(x), f(x))
    assert counter.frame_count == 1  # one graph with symbolic M served every size


def test_compile_time_error_names_the_tensor(randn):
    b_fp4 = torch.zeros(8, 24, dtype=torch.uint8)  # K = 48, a has K = 64
    b_sf = torch.zeros(8, 3, dtype=torch.float8_e4m3fn)

    def f(x):
        a_fp4, a_sf = ops.quantize(x, torch.tensor(1.0), False)
        return ops.gemm(a_fp4, b_fp4, a_sf, b_sf, torch.tensor(1.0), torch.bfloat16, False)

    with pytest.raises(Exception, match="K mismatch: a_fp4"):
        torch.compile(f, backend="aot_eager", fullgraph=True)(randn(4, 64))


# ------------------------------------------------------------------------------------------ CUDA vs CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_reference_kernels_match_cpu(randn):
    x = randn(3, 70, 64, dtype=torch.bfloat16, scale=3.0)
    b = randn(40, 64, seed=1)
    g = torch.tensor(30.0)

    def both(op, *args):
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        cpu, gpu = op(*args), op(*cuda_args)
        cpu, gpu = (cpu, gpu) if isinstance(cpu, tuple) else ((cpu,), (gpu,))
        assert all(t.is_cuda for t in gpu)
        return cpu, tuple(t.cpu() for t in gpu)

    # Elementwise math and quantization are bit-identical across devices.
    for op, args in [(ops.quantize, (x, g, True)), (ops.relu2_quant, (x, g, False)),
                     (ops.silu_and_mul_quant, (x, g, True)), (ops.dequantize, (*ops.quantize(x, g, True), 1 / g,
                                                                                torch.float32, True))]:
        cpu, gpu = both(op, *args)
        assert all(same_bytes(c, d) for c, d in zip(cpu, gpu)), op
    # Reductions (the norm's mean, the GEMM's sums) may be ordered differently: compare values.
    cpu, gpu = both(ops.rms_norm_quant, x, torch.ones(64, dtype=torch.bfloat16), g, 1e-6, False)
    deq = [ops.dequantize(fp4, sf, 1 / g, torch.float32) for fp4, sf in (cpu, gpu)]
    torch.testing.assert_close(deq[1], deq[0], rtol=0.2, atol=0.05)
    assert float((deq[1] != deq[0]).float().mean()) < 0.01
    a_fp4, a_sf = ops.quantize(x, g, True)
    b_fp4, b_sf = ops.quantize(b, g, True)
    cpu, gpu = both(ops.gemm, a_fp4, b_fp4, a_sf, b_sf, 1 / (g * g), torch.float32, True)
    torch.testing.assert_close(gpu[0], cpu[0], rtol=1e-5, atol=1e-5 * float(cpu[0].abs().max()))
