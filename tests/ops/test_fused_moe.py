"""nvfp4::fused_moe against a naive per-(token, slot) loop built on nvfp4_compile.formats only."""
import pytest
import torch
import torch.nn.functional as F

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4

ops = torch.ops.nvfp4
NO_SCHEMA_CHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")  # float8 inputs
E, H, I = 4, 64, 32


def quantize_stack(w: torch.Tensor):
    """[E, rows, K] -> (packed [E, rows, K/2], scales [E, rows, K/16], decode scales [E]), one scale per expert."""
    per_expert = [quantize_nvfp4(w[e]) for e in range(w.shape[0])]
    return tuple(torch.stack(parts) for parts in zip(*per_expert))


def make_experts(randn, activation, seed=0):
    rows = 2 * I if activation == "silu" else I
    spread = torch.tensor([1.0, 0.3, 2.0, 0.7]).view(E, 1, 1)  # different per-expert global scales
    w13, w13_sf, w13_gs = quantize_stack(randn(E, rows, H, scale=0.2, seed=seed) * spread)
    w2, w2_sf, w2_gs = quantize_stack(randn(E, H, I, scale=0.2, seed=seed + 1) * spread)
    return w13, w13_sf, w13_gs, w2, w2_sf, w2_gs


def act_fp32(h, activation):
    if activation == "silu":
        gate, up = h.chunk(2, dim=-1)  # gate rows come first in w13
        return F.silu(gate) * up
    return torch.relu(h) ** 2


def fake_quant(v, d):
    packed, sf, d = quantize_nvfp4(v, d)
    return dequantize_nvfp4(packed, sf, d, torch.float32)


def naive_moe(x, ids, weights, experts, a13_gs, a2_gs, activation):
    w13, w13_sf, w13_gs, w2, w2_sf, w2_gs = experts
    w4a4 = a13_gs is not None
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            xt = x[t : t + 1]
            a = fake_quant(xt, a13_gs.reshape(-1)[e % a13_gs.numel()]) if w4a4 else xt.float()
            h = act_fp32(a @ dequantize_nvfp4(w13[e], w13_sf[e], w13_gs[e], torch.float32).T, activation)
            h = h.to(x.dtype)
            a = fake_quant(h, a2_gs.reshape(-1)[e % a2_gs.numel()]) if w4a4 else h.float()
            out[t] += weights[t, j].float() * (a @ dequantize_nvfp4(w2[e], w2_sf[e], w2_gs[e], torch.float32).T)[0]
    return out.to(x.dtype)


def activation_scales(x, experts, activation):
    """Decode scales calibrated like an exporter would: amax / 2688 of x (scalar) and of each expert's hidden."""
    w13, w13_sf, w13_gs = experts[:3]
    hidden_amax = torch.stack([
        act_fp32(x.float() @ dequantize_nvfp4(w13[e], w13_sf[e], w13_gs[e], torch.float32).T, activation).abs().max()
        for e in range(E)
    ])
    return x.float().abs().max() / 2688.0, hidden_amax / 2688.0


def routing(randint, randn, m, topk, seed=0):
    """Top-k routing over experts 0..E-2 only: expert E-1 never receives a token."""
    ids = torch.stack([torch.randperm(E - 1, generator=torch.Generator().manual_seed(seed + t))[:topk] for t in range(m)])
    weights = torch.softmax(randn(m, topk, seed=seed + 100), dim=-1)
    return ids, weights


def moe_args(x, ids, weights, experts, a_scales, activation):
    a13, a2 = a_scales if a_scales is not None else (None, None)
    return (x, ids, weights, *experts, a13, a2, activation)


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("w4a4", [False, True], ids=["w4a16", "w4a4"])
@pytest.mark.parametrize("activation", ["silu", "relu2"])
def test_matches_naive_loop_fp32(randn, randint, activation, w4a4, topk):
    x = randn(9, H)
    ids, weights = routing(randint, randn, 9, topk)
    experts = make_experts(randn, activation)
    a_scales = activation_scales(x, experts, activation) if w4a4 else None
    out = ops.fused_moe(*moe_args(x, ids, weights, experts, a_scales, activation))
    expected = naive_moe(x, ids, weights, experts, *(a_scales or (None, None)), activation)
    assert out.shape == x.shape and out.dtype == torch.float32
    # Only the FP32 summation order differs (per row vs gathered rows).
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("w4a4", [False, True], ids=["w4a16", "w4a4"])
@pytest.mark.parametrize("activation", ["silu", "relu2"])
def test_matches_naive_loop_bf16(randn, randint, activation, w4a4):
    x = randn(9, H, dtype=torch.bfloat16)
    ids, weights = routing(randint, randn, 9, 2, seed=5)
    experts = make_experts(randn, activation, seed=3)
    a_scales = activation_scales(x, experts, activation) if w4a4 else None
    out = ops.fused_moe(*moe_args(x, ids, weights.to(torch.bfloat16), experts, a_scales, activation))
    expected = naive_moe(x, ids, weights.to(torch.bfloat16), experts, *(a_scales or (None, None)), activation)
    assert out.dtype == torch.bfloat16
    # one BF16 ulp (2^-8 relative), from an FP32 difference that lands on the other side of a rounding
    torch.testing.assert_close(out, expected, rtol=2**-8, atol=2**-8 * float(expected.abs().max()))
    assert float((out.float() - expected.float()).abs().max()) < 2**-7 * float(expected.float().abs().max())


def test_w4a4_is_close_to_but_not_the_same_as_w4a16(randn, randint):
    x = randn(16, H)
    ids, weights = routing(randint, randn, 16, 2)
    experts = make_experts(randn, "silu")
    w4a16 = ops.fused_moe(*moe_args(x, ids, weights, experts, None, "silu"))
    w4a4 = ops.fused_moe(*moe_args(x, ids, weights, experts, activation_scales(x, experts, "silu"), "silu"))
    rel = float((w4a4 - w4a16).norm() / w4a16.norm())
    assert 0.01 < rel < 0.25  # 4-bit activations cost accuracy, but not all of it


def test_scalar_and_per_expert_activation_scales_agree(randn, randint):
    x = randn(8, H)
    ids, weights = routing(randint, randn, 8, 2)
    experts = make_experts(randn, "relu2")
    a13, a2 = activation_scales(x, experts, "relu2")
    a2_scalar = a2.max()
    out_scalar = ops.fused_moe(*moe_args(x, ids, weights, experts, (a13, a2_scalar), "relu2"))
    out_vector = ops.fused_moe(*moe_args(x, ids, weights, experts, (a13.expand(E), a2_scalar.expand(E)), "relu2"))
    assert torch.equal(out_scalar, out_vector)


def test_expert_without_tokens_is_never_read(randn, randint):
    x = randn(6, H, dtype=torch.bfloat16)
    ids, weights = routing(randint, randn, 6, 2)
    assert not (ids == E - 1).any()
    experts = make_experts(randn, "silu")
    out = ops.fused_moe(*moe_args(x, ids, weights, experts, None, "silu"))
    w13, w13_sf, *rest = experts
    w13, w13_sf = w13.clone(), w13_sf.clone()
    w13[E - 1] = 0x77  # every element +6
    w13_sf[E - 1] = 448.0
    assert torch.equal(ops.fused_moe(*moe_args(x, ids, weights, (w13, w13_sf, *rest), None, "silu")), out)


def test_int32_and_int64_ids_agree_and_repeated_experts_add_up(randn, randint):
    x = randn(5, H)
    experts = make_experts(randn, "silu")
    ids = torch.tensor([[0, 0], [1, 2], [2, 1], [0, 2], [1, 1]])
    weights = torch.full((5, 2), 0.5)
    out64 = ops.fused_moe(*moe_args(x, ids, weights, experts, None, "silu"))
    out32 = ops.fused_moe(*moe_args(x, ids.to(torch.int32), weights, experts, None, "silu"))
    assert torch.equal(out64, out32)
    torch.testing.assert_close(out64, naive_moe(x, ids, weights, experts, None, None, "silu"), rtol=1e-5, atol=1e-6)
    # routing a token twice to the same expert with weight 1/2 each equals routing it once with weight 1
    once = ops.fused_moe(*moe_args(x[:1], ids[:1, :1], torch.ones(1, 1), experts, None, "silu"))
    # (the same FP32 products, but a 1-row and a 3-row matmul may sum them in different orders)
    torch.testing.assert_close(out64[:1], once, rtol=1e-5, atol=1e-5 * float(once.abs().max()))


def test_no_tokens_gives_an_empty_output(randn):
    experts = make_experts(randn, "silu")
    x = torch.zeros(0, H, dtype=torch.bfloat16)
    out = ops.fused_moe(*moe_args(x, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2), experts, None, "silu"))
    assert out.shape == (0, H) and out.dtype == torch.bfloat16


OPCHECK_CONFIGS = [("silu", False, torch.bfloat16, torch.int64), ("relu2", True, torch.float32, torch.int32),
                   ("silu", True, torch.float16, torch.int32)]


@pytest.mark.parametrize("activation,w4a4,dtype,id_dtype", OPCHECK_CONFIGS)
def test_opcheck(randn, randint, activation, w4a4, dtype, id_dtype):
    x = randn(7, H, dtype=dtype)
    ids, weights = routing(randint, randn, 7, 2)
    experts = make_experts(randn, activation)
    a_scales = activation_scales(x, experts, activation) if w4a4 else None
    args = moe_args(x, ids.to(id_dtype), weights, experts, a_scales, activation)
    torch.library.opcheck(ops.fused_moe.default, args, test_utils=NO_SCHEMA_CHECK)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = ops.fused_moe(*args)
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))  # no mutation
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


# ------------------------------------------------------------------------------------------------ errors


def empty_args(device, activation="silu", w4a4=False):
    """Valid shapes (M=3, k=2) with zero-filled tensors on `device` (meta exercises the fake kernel)."""
    def t(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=device)

    rows = 2 * I if activation == "silu" else I
    u8, f8 = torch.uint8, torch.float8_e4m3fn
    a = (t() + 1, t(E) + 1) if w4a4 else (None, None)
    return [t(3, H, dtype=torch.bfloat16), t(3, 2, dtype=torch.int64), t(3, 2),
            t(E, rows, H // 2, dtype=u8), t(E, rows, H // 16, dtype=f8), t(E),
            t(E, H, I // 2, dtype=u8), t(E, H, I // 16, dtype=f8), t(E), *a, activation]


def z(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(shape, dtype=dtype, device=device)


ARG = {name: i for i, name in enumerate(
    ["x", "topk_ids", "topk_weights", "w13", "w13_sf", "w13_gs", "w2", "w2_sf", "w2_gs", "a13_gs", "a2_gs", "activation"])}

# (argument, replacement on a device, exception, text the message must contain)
BAD_SHAPES = [
    ("activation", lambda d: "gelu", ValueError, "activation must be one of"),
    ("x", lambda d: z(3, 1, H, dtype=torch.bfloat16, device=d), ValueError, "x must be 2-D"),
    ("x", lambda d: z(3, H, dtype=torch.int32, device=d), TypeError, "x must be"),
    ("topk_ids", lambda d: z(3, 2, device=d), TypeError, "topk_ids must be int32 or int64"),
    ("topk_ids", lambda d: z(4, 2, dtype=torch.int64, device=d), ValueError, "topk_ids must be [M, k] with M=3"),
    ("topk_weights", lambda d: z(3, 1, device=d), ValueError, "topk_weights has shape (3, 1)"),
    ("topk_weights", lambda d: z(3, 2, dtype=torch.float16, device=d), TypeError, "topk_weights must be"),
    ("w13", lambda d: z(E, 2 * I, H, dtype=torch.uint8, device=d), ValueError, "w13 has shape"),
    ("w13", lambda d: z(E, 2 * I, H // 2, dtype=torch.int8, device=d), TypeError, "w13 must be uint8"),
    ("w13_sf", lambda d: z(E, 2 * I, H // 16, device=d), TypeError, "w13_sf must be float8_e4m3fn"),
    ("w13_sf", lambda d: z(E, I, H // 16, dtype=torch.float8_e4m3fn, device=d), ValueError, "w13_sf has shape"),
    ("w13_gs", lambda d: z(1, device=d), ValueError, "w13_gs has shape (1,)"),
    ("w2", lambda d: z(E, H, I, dtype=torch.uint8, device=d), ValueError, "w2 has shape"),
    ("w2_sf", lambda d: z(E + 1, H, I // 16, dtype=torch.float8_e4m3fn, device=d), ValueError, "w2_sf has shape"),
    ("w2_gs", lambda d: z(E, dtype=torch.float16, device=d), TypeError, "w2_gs must be float32"),
    ("a13_gs", lambda d: z(device=d), ValueError, "give both a13_gs and a2_gs"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("arg,bad,exc,text", BAD_SHAPES, ids=[c[0] + "-" + c[3][:20] for c in BAD_SHAPES])
def test_bad_input_raises_naming_the_tensor(device, arg, bad, exc, text):
    args = empty_args(device)
    ops.fused_moe(*args)  # the unmodified call is valid
    args[ARG[arg]] = bad(device)
    with pytest.raises(exc) as info:
        ops.fused_moe(*args)
    assert text in str(info.value) and "nvfp4::fused_moe" in str(info.value)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_relu2_weights_given_to_silu_and_bad_activation_scale_shape(device):
    args = empty_args(device, "relu2")  # w13 has I rows: for "silu" that means I/2 intermediate, w2 mismatches
    args[ARG["activation"]] = "silu"
    with pytest.raises(ValueError, match="w2 .intermediate size I. has K=16|w2 has shape"):
        ops.fused_moe(*args)
    args = empty_args(device, "silu", w4a4=True)
    ops.fused_moe(*args)
    args[ARG["a2_gs"]] = z(E + 1, device=device)
    with pytest.raises(ValueError, match="a2_gs must hold one value or one per expert"):
        ops.fused_moe(*args)


@pytest.mark.parametrize("bad_id", [E, -1, 100])
def test_out_of_range_expert_id_raises(bad_id):
    args = empty_args("cpu")
    args[ARG["topk_ids"]] = torch.tensor([[0, 1], [2, bad_id], [3, 0]])
    with pytest.raises(ValueError, match=rf"topk_ids holds expert ids outside \[0, {E}\): \[{bad_id}\]"):
        ops.fused_moe(*args)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_non_positive_activation_scale_raises(bad):
    args = empty_args("cpu", w4a4=True)
    args[ARG["a2_gs"]] = torch.tensor([1.0, 1.0, bad, 1.0])
    with pytest.raises(ValueError, match="a2_gs .decode. must be positive and finite"):
        ops.fused_moe(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("w4a4", [False, True], ids=["w4a16", "w4a4"])
def test_cuda_reference_kernel_matches_cpu(randn, randint, w4a4):
    x = randn(9, H)
    ids, weights = routing(randint, randn, 9, 2)
    experts = make_experts(randn, "silu")
    args = moe_args(x, ids, weights, experts, activation_scales(x, experts, "silu") if w4a4 else None, "silu")
    cpu = ops.fused_moe(*args)
    gpu = ops.fused_moe(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5 * float(cpu.abs().max()))
