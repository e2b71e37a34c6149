"""NVFP4Linear: both forwards against the dequantized reference math, from_linear error bounds vs BF16,
buffer names/dtypes, the swizzled-scale copy kept in step on load, and clear errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nvfp4_compile import NVFP4Linear
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4_encoded
from nvfp4_compile.nn.calibrate import DEFAULT_INPUT_SCALE

from tiny_models import rel_err


def _linear(k, n, randn, bias=True, seed=0, scale=0.05):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(randn(n, k, scale=scale, seed=seed))
        if bias:
            lin.bias.copy_(randn(n, scale=0.1, seed=seed + 100))
    return lin.to(torch.bfloat16)


def _w4a4_reference(x, m: NVFP4Linear):
    """deq(quantize(x, 1/input_scale)) @ deq(W).T at global scale 1, times input_scale*weight_scale_2, FP32."""
    xq, xsf = quantize_nvfp4_encoded(x, 1.0 / m.input_scale)
    one = torch.ones(())
    a = dequantize_nvfp4(xq, xsf, one, torch.float32)
    b = dequantize_nvfp4(m.weight, m.weight_scale, one, torch.float32)
    y = (a @ b.T) * (m.input_scale * m.weight_scale_2)
    return y.to(x.dtype) + m.bias


def test_state_dict_uses_modelopt_names_and_dtypes(randn):
    m = NVFP4Linear.from_linear(_linear(64, 32, randn), act="nvfp4")
    sd = m.state_dict()
    assert sorted(sd) == ["bias", "input_scale", "weight", "weight_scale", "weight_scale_2"]
    assert (sd["weight"].dtype, tuple(sd["weight"].shape)) == (torch.uint8, (32, 32))
    assert (sd["weight_scale"].dtype, tuple(sd["weight_scale"].shape)) == (torch.float8_e4m3fn, (32, 4))
    assert sd["weight_scale_2"].dtype == torch.float32 and sd["weight_scale_2"].shape == ()
    assert sd["bias"].dtype == torch.bfloat16
    assert "input_scale" not in NVFP4Linear.from_linear(_linear(64, 32, randn), act="bf16").state_dict()


@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64)])
def test_bf16_forward_is_linear_of_dequantized_weight(randn, shape):
    m = NVFP4Linear.from_linear(_linear(64, 48, randn), act="bf16")
    x = randn(*shape, dtype=torch.bfloat16, seed=1)
    w = dequantize_nvfp4(m.weight, m.weight_scale, m.weight_scale_2, torch.bfloat16)
    assert torch.equal(m(x), F.linear(x, w, m.bias))


@pytest.mark.parametrize("swizzled", [True, False])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64), (130, 64)])
def test_nvfp4_forward_matches_w4a4_reference(randn, swizzled, shape):
    m = NVFP4Linear.from_linear(_linear(64, 48, randn), act="nvfp4", input_amax=torch.tensor(3.0), swizzled=swizzled)
    x = randn(*shape, dtype=torch.bfloat16, seed=2)
    y = m(x)
    assert y.shape == (*shape[:-1], 48) and y.dtype == torch.bfloat16
    # Equal up to FP32 summation order: at most one BF16 rounding step apart.
    torch.testing.assert_close(y, _w4a4_reference(x, m), rtol=2**-7, atol=1e-6)


def test_swizzled_and_linear_scale_paths_agree(randn):
    lin = _linear(64, 160, randn)  # N = 160 pads to 256 rows in the swizzled layout
    x = randn(7, 64, dtype=torch.bfloat16, seed=3)
    a = NVFP4Linear.from_linear(lin, act="nvfp4", swizzled=True)
    b = NVFP4Linear.from_linear(lin, act="nvfp4", swizzled=False)
    assert torch.equal(a(x), b(x))


def test_load_state_dict_and_hand_written_scales_take_effect(randn):
    src = NVFP4Linear.from_linear(_linear(64, 32, randn, seed=0), act="nvfp4")
    dst = NVFP4Linear.from_linear(_linear(64, 32, randn, seed=5), act="nvfp4")
    x = randn(4, 64, dtype=torch.bfloat16, seed=6)
    assert not torch.equal(dst(x), src(x))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst(x), src(x))
    other = NVFP4Linear.from_linear(_linear(64, 32, randn, seed=7), act="nvfp4")
    for name, t in other.named_buffers():  # written by hand: the swizzled layout is derived per call
        getattr(dst, name).copy_(t)
    dst.bias.copy_(other.bias)
    assert torch.equal(dst(x), other(x))


def test_the_module_holds_each_weight_once(randn):
    m = NVFP4Linear.from_linear(_linear(64, 160, randn), act="nvfp4", swizzled=True)
    assert sorted(n for n, _ in m.named_buffers()) == ["input_scale", "weight", "weight_scale", "weight_scale_2"]
    assert sum(b.untyped_storage().nbytes() for b in m.buffers()) == 160 * 32 + 160 * 4 + 4 + 4


@pytest.mark.parametrize("act", ["bf16", "nvfp4"])
def test_from_linear_error_vs_bf16(randn, act):
    # N(0, 1)-shaped weights: E2M1 values with an E4M3 scale per 16 elements leave a relative RMS error of
    # ~0.095 on the weight (measured 0.094-0.096 over seeds), so a W4A16 output is off by about as much;
    # W4A4 adds an independent error of the same size on x, ~sqrt(2) * 0.095 = 0.134. Bounds leave ~15%
    # margin; the lower bounds show the weight really went through FP4.
    lin = _linear(256, 128, randn, seed=7)
    x = randn(32, 256, dtype=torch.bfloat16, seed=8)
    m = NVFP4Linear.from_linear(lin, act=act, input_amax=x.abs().amax())
    w_err = rel_err(dequantize_nvfp4(m.weight, m.weight_scale, m.weight_scale_2, torch.float32), lin.weight)
    assert 0.08 < w_err < 0.11
    ref = x.float() @ lin.weight.float().T + lin.bias.float()
    err = rel_err(m(x), ref)
    assert (0.08 < err < 0.11) if act == "bf16" else (0.11 < err < 0.155)


def test_input_scale_from_calibrated_amax_and_default(randn):
    lin = _linear(64, 32, randn)
    m = NVFP4Linear.from_linear(lin, act="nvfp4", input_amax=torch.tensor(5.376))
    assert abs(float(m.input_scale) - 5.376 / 2688) < 1e-9
    assert float(NVFP4Linear.from_linear(lin, act="nvfp4").input_scale) == DEFAULT_INPUT_SCALE == 1.0
    # the per-tensor scales survive the encode convention exactly (compressed-tensors stores 1/d)
    for d in (m.input_scale, m.weight_scale_2):
        assert float(1.0 / (1.0 / d)) == float(d)


def test_bias_kept_and_no_bias(randn):
    lin = _linear(64, 32, randn)
    m = NVFP4Linear.from_linear(lin, act="bf16")
    assert torch.equal(m.bias, lin.bias) and not m.bias.requires_grad  # inference-only, like the weight
    m2 = NVFP4Linear.from_linear(_linear(64, 32, randn, bias=False), act="nvfp4")
    assert m2.bias is None and m2(randn(3, 64, dtype=torch.bfloat16)).shape == (3, 32)


def test_to_dtype_keeps_quantized_buffers(randn):
    m = NVFP4Linear.from_linear(_linear(64, 32, randn), act="nvfp4")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.to(torch.float16)
    assert m.weight.dtype == torch.uint8 and m.weight_scale.dtype == torch.float8_e4m3fn
    assert m.weight_scale_2.dtype == torch.float32 and m.input_scale.dtype == torch.float32
    assert m.bias.dtype == torch.float16
    for k in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
        assert torch.equal(m.state_dict()[k], before[k])


def test_errors(randn):
    with pytest.raises(ValueError, match="in_features=24 is not a multiple of 16"):
        NVFP4Linear(24, 32)
    with pytest.raises(ValueError, match="in_features=40 is not a multiple of 16"):
        NVFP4Linear.from_linear(nn.Linear(40, 8))
    with pytest.raises(ValueError, match="act must be"):
        NVFP4Linear(32, 32, act="fp8")
    m = NVFP4Linear.from_linear(_linear(64, 32, randn), act="nvfp4")
    bad = m.state_dict()
    bad["weight_scale"] = bad["weight_scale"].view(torch.uint8)  # same bytes, wrong dtype: must not convert
    with pytest.raises(RuntimeError, match="dtype mismatch for weight_scale"):
        m.load_state_dict(bad)
    bad = m.state_dict()
    bad["weight"] = bad["weight"][:, :16]
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        m.load_state_dict(bad)
